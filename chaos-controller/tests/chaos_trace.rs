//! `chaosnet --otlp-endpoint URL run`: the chaos run reaches a real OTLP/HTTP receiver as one
//! `chaos_run` span carrying its run id and verdict, with the faults it injected and healed as
//! span events (decoded with the OpenTelemetry project's own protobuf types). As root: it runs
//! the smoke scenario in the lab.

mod common;

use std::time::{Duration, Instant};

use common::cli::{agent_bin, run, text};
use common::otlp;
use common::require_root;

#[test]
fn a_chaos_run_is_one_trace_with_its_faults_as_events() {
    if !require_root() {
        return;
    }
    let _lab = common::shared();
    let rt = otlp::runtime();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    let port = listener.local_addr().expect("addr").port();
    let received = otlp::serve(&rt, listener);

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
        let spans = received.spans();
        if let Some(span) = spans.iter().find(|s| s.name == "chaos_run") {
            let (attrs, events) = (&span.attrs, &span.events);
            let attr = |k: &str| span.attr(k).map(str::to_string);
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
