//! `--otlp-endpoint`: spans reach a real OTLP/HTTP receiver, decoded with the OpenTelemetry
//! project's own protobuf types, nested as the core's activities are: a connect over its
//! attempts, a lookup over its requests. (Signal hops across nodes need NATs: the
//! controller's lab test `traces.rs` covers them.)

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

/// One span as received.
#[derive(Clone, Debug)]
struct Got {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attrs: Vec<(String, String)>,
}

impl Got {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every span received.
type Received = Arc<Mutex<Vec<Got>>>;

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
                    out.push(Got {
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                        attrs,
                    });
                }
            }
        }
    }
    ""
}

#[test]
fn connect_and_lookup_spans_reach_an_otlp_receiver_as_trees() {
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
        let connect = spans
            .iter()
            .find(|g| g.name == "connect" && g.attr("mode") == Some("direct"));
        if let Some(connect) = connect {
            assert_eq!(connect.attr("outcome"), Some("ok"), "{connect:?}");
            // The path tried hangs under the whole connect, in the same trace.
            let attempt = spans
                .iter()
                .find(|g| g.name == "connect_attempt" && g.parent_span_id == connect.span_id)
                .unwrap_or_else(|| panic!("no connect_attempt under {connect:?}: {spans:?}"));
            assert_eq!(attempt.trace_id, connect.trace_id);
            assert_eq!(attempt.attr("path"), Some("direct"), "{attempt:?}");
            // Joining ran a bootstrap lookup, its find_node requests under it.
            let lookup = spans
                .iter()
                .find(|g| g.name == "lookup" && g.attr("purpose") == Some("bootstrap"))
                .unwrap_or_else(|| panic!("no bootstrap lookup span: {spans:?}"));
            assert!(
                spans.iter().any(|g| g.name == "request"
                    && g.attr("kind") == Some("find_node")
                    && g.parent_span_id == lookup.span_id
                    && g.trace_id == lookup.trace_id),
                "find_node requests hang under their lookup: {spans:?}"
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
