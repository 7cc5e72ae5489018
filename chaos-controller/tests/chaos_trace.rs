//! `chaosnet --otlp-endpoint URL run`: the chaos run reaches a real OTLP/HTTP receiver as one
//! `chaos_run` span carrying its run id and verdict, with the faults it injected and healed as
//! span events (decoded with the OpenTelemetry project's own protobuf types). As root: it runs
//! the smoke scenario in the lab.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

use common::cli::{agent_bin, run, text};
use common::require_root;

/// A received span: name, attributes as key=value strings, event names.
type Span = (String, Vec<(String, String)>, Vec<String>);
type Received = Arc<Mutex<Vec<Span>>>;

async fn traces(State(rx): State<Received>, body: Bytes) -> &'static str {
    if let Ok(req) = ExportTraceServiceRequest::decode(body) {
        let mut out = rx.lock().unwrap_or_else(|p| p.into_inner());
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
                    let events = span.events.iter().map(|e| e.name.clone()).collect();
                    out.push((span.name, attrs, events));
                }
            }
        }
    }
    ""
}

#[test]
fn a_chaos_run_is_one_trace_with_its_faults_as_events() {
    if !require_root() {
        return;
    }
    let _lab = common::shared();
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

    let dir = tempfile::tempdir().expect("tempdir");
    let runs = dir.path().join("runs");
    let smoke = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/smoke.yaml");
    let bin = agent_bin();
    let endpoint = format!("http://127.0.0.1:{port}/v1/traces");
    let o = run(
        &runs,
        &[
            "--otlp-endpoint",
            &endpoint,
            "run",
            smoke,
            "--agent-bin",
            bin.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // The process flushed its spans when it exited; give the receiver a moment (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spans = received.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some((_, attrs, events)) = spans.iter().find(|(n, _, _)| n == "chaos_run") {
            let attr = |k: &str| {
                attrs
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
            };
            assert_eq!(attr("verdict").as_deref(), Some("pass"), "{attrs:?}");
            assert!(
                attr("run_id").is_some_and(|r| r.len() == 6),
                "run id: {attrs:?}"
            );
            assert!(
                events.iter().any(|e| e == "fault injected"),
                "inject event: {events:?}"
            );
            assert!(
                events.iter().any(|e| e == "fault healed"),
                "heal event: {events:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no chaos_run span reached the receiver; got {spans:?}\n{}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
