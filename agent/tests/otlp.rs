//! `--otlp-endpoint`: spans reach a real OTLP/HTTP receiver, decoded with the OpenTelemetry
//! project's own protobuf types.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::{Agent, AgentConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

/// Every span received: (name, attributes as key=value strings).
type Received = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

async fn traces(State(rx): State<Received>, body: Bytes) -> &'static str {
    if let Ok(req) = ExportTraceServiceRequest::decode(body) {
        let mut out = rx.lock().expect("lock");
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let attrs = span
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                                Some(AnyValue::StringValue(s)) => s,
                                Some(other) => format!("{other:?}"),
                                None => String::new(),
                            };
                            (kv.key.clone(), v)
                        })
                        .collect();
                    out.push((span.name, attrs));
                }
            }
        }
    }
    ""
}

#[test]
fn connect_spans_reach_an_otlp_receiver_with_their_mode() {
    let received: Received = Arc::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind receiver");
    let port = listener.local_addr().expect("addr").port();
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(received.clone());
    rt.spawn(async move { axum::serve(listener, app).await });

    let seed = Agent::start_ready("seed", AgentConfig::mainnet(1));
    let mut cfg = AgentConfig::mainnet(2).seed(&seed);
    cfg.extra = vec![
        "--otlp-endpoint".into(),
        format!("http://127.0.0.1:{port}/v1/traces"),
    ];
    let traced = Agent::start_ready("traced", cfg);
    let resp = traced.connect(&seed.node_id).expect("POST /connect");
    assert_eq!(resp.status, 200, "{}", resp.body);

    // The batch processor exports every few seconds; wait for the connect span (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = received.lock().expect("lock").clone();
        let connect = spans.iter().find(|(name, attrs)| {
            name == "connect" && attrs.iter().any(|(k, v)| k == "mode" && v == "direct")
        });
        if let Some((_, attrs)) = connect {
            assert!(
                attrs.iter().any(|(k, v)| k == "outcome" && v == "ok"),
                "{attrs:?}"
            );
            assert!(
                spans.iter().any(|(name, _)| name == "request"),
                "request spans are exported too"
            );
            break;
        }
        if Instant::now() > deadline {
            traced.fail(&format!(
                "no connect span with mode=direct reached the receiver; got {spans:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
