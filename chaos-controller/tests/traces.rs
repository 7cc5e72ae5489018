//! Traces across nodes in the real NAT lab, as root. Agents export spans (scenario
//! `agent.otlp_endpoint`) to a real OTLP/HTTP receiver bound inside the lab's internet
//! namespace at 198.18.0.1, decoded with the OpenTelemetry project's own protobuf types.
//!
//! - A cold connect from a port-restricted to a symmetric site punches, and arrives as one
//!   trace across processes: the requester's `connect` span (mode punched) over its `lookup` and its
//!   `signal` request, then a `signal_hop` span on every node the signal reached, each the
//!   child of the previous hop's request, the last one on the target, with the target's
//!   `punch` span under it.
//! - A symmetric-to-symmetric connect relays, and the relay's `relay_circuit` span joins the
//!   requester's trace once the circuit ends.

mod common;

use std::time::{Duration, Instant};

use chaos_controller::apply::in_netns;
use chaos_controller::lab::RunState;
use chaos_controller::plan::NsRole;

use common::cli::{agent_bin, run, text};
use common::otlp::{self, Received, Span};
use common::require_root;

/// Where the receiver listens, inside the internet namespace.
const RECEIVER: &str = "198.18.0.1:4318";

/// Runs one cold pair with `chaosnet matrix`; returns the mode it reached and the dialer.
fn cold_pair(runs: &std::path::Path, from: &str, to: &str) -> (String, String) {
    let o = run(
        runs,
        &["matrix", "--json", "--cold", "--from", from, "--to", to],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    let pair = &v["pairs"][0];
    let mode = pair["outcome"]["mode"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("failed: {}", text(&o)));
    (
        mode,
        pair["from"]["agent"].as_str().unwrap_or("?").to_string(),
    )
}

/// Waits (bounded) until `pick` finds what it looks for among the received spans.
fn wait_for<T>(received: &Received, what: &str, pick: impl Fn(&[Span]) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let spans = received.spans();
        if let Some(t) = pick(&spans) {
            return t;
        }
        if Instant::now() > deadline {
            let names: std::collections::BTreeSet<&str> =
                spans.iter().map(|g| g.name.as_str()).collect();
            panic!(
                "{what}: not received within 40 s ({} spans, names {names:?})",
                spans.len()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn signalling_and_relaying_join_the_requesters_trace_across_nodes() {
    if !require_root() {
        return;
    }
    let _lab = common::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = dir.path().join("runs");
    let scenario = dir.path().join("traces.yaml");
    std::fs::write(
        &scenario,
        format!(
            "name: traces\nseed: 11\nseeds: 2\n\
             agent: {{task_rate: 0, otlp_endpoint: \"http://{RECEIVER}/v1/traces\"}}\n\
             sites:\n\
             \x20 - {{name: home, nat: port-restricted-cone, agents: 2}}\n\
             \x20 - {{name: office, nat: restricted-cone, agents: 1}}\n\
             \x20 - {{name: sym1, nat: symmetric, agents: 1}}\n\
             \x20 - {{name: sym2, nat: symmetric, agents: 1}}\n"
        ),
    )
    .expect("write scenario");
    // No task loop: background connects between the two sites could leave NAT state that
    // turns the cold pair's punch into a plain dial.
    let bin = agent_bin();
    let o = run(
        &runs,
        &[
            "up",
            "-f",
            scenario.to_str().expect("utf-8"),
            "--agent-bin",
            bin.to_str().expect("utf-8"),
        ],
    );
    assert!(o.status.success(), "up failed:\n{}", text(&o));
    let down = Down(&runs);

    // The receiver's socket lives in the internet namespace; it is served from here.
    let state = RunState::load(&runs.join("current")).expect("run state");
    let inet = state
        .plan
        .namespaces
        .iter()
        .find(|n| n.role == NsRole::Internet)
        .expect("an internet namespace")
        .name
        .clone();
    let listener = in_netns(&inet, || std::net::TcpListener::bind(RECEIVER))
        .expect("enter the internet namespace")
        .expect("bind the receiver at 198.18.0.1");
    let rt = otlp::runtime();
    let received = otlp::serve(&rt, listener);

    // --- signalling: port-restricted -> symmetric must punch (birthday probing). A pair
    // of cones could have met by accident (simultaneous dials during bootstrap punch too),
    // and their live connection would keep their NATs warm; these two cannot have. Birthday
    // punches succeed ~95% of the time (tests/connectivity.rs measures that); this test
    // needs one, so it tries up to three times.
    let modes: Vec<String> = (0..3)
        .map(|_| cold_pair(&runs, "home", "sym1").0)
        .scan(false, |punched, m| {
            (!*punched).then(|| {
                *punched = m == "punched";
                m
            })
        })
        .collect();
    assert_eq!(
        modes.last().map(String::as_str),
        Some("punched"),
        "a cold home -> sym1 connect punches: {modes:?}"
    );
    let (connect, hops) = wait_for(&received, "a punched connect with its signal hops", |s| {
        s.iter()
            .filter(|g| g.name == "connect" && g.attr("mode") == Some("punched"))
            .find_map(|c| {
                let hops: Vec<Span> = s
                    .iter()
                    .filter(|g| g.name == "signal_hop" && g.trace_id == c.trace_id)
                    .cloned()
                    .collect();
                // A carrier and the target at least.
                (hops.len() >= 2).then(|| (c.clone(), hops))
            })
    });
    let all = received.spans();
    let in_trace: Vec<&Span> = all
        .iter()
        .filter(|g| g.trace_id == connect.trace_id)
        .collect();
    for g in &in_trace {
        let parent = in_trace
            .iter()
            .find(|p| p.span_id == g.parent_span_id)
            .map_or("-", |p| p.name.as_str());
        eprintln!(
            "trace: {} (kind {:?}, path {:?}, mode {:?}, outcome {:?}) under {parent}",
            g.name,
            g.attr("kind"),
            g.attr("path"),
            g.attr("mode"),
            g.attr("outcome")
        );
    }
    let signal = in_trace
        .iter()
        .find(|g| {
            g.name == "request"
                && g.attr("kind") == Some("signal")
                && g.parent_span_id == connect.span_id
        })
        .unwrap_or_else(|| {
            panic!("the requester's signal request under its connect: {in_trace:?}")
        });
    assert!(
        hops.iter().any(|h| h.parent_span_id == signal.span_id),
        "the first carrier's hop is the child of the requester's signal request: {hops:?}"
    );
    for h in &hops {
        let parent = in_trace
            .iter()
            .find(|g| g.span_id == h.parent_span_id)
            .unwrap_or_else(|| panic!("the parent of {h:?} is in the trace"));
        assert_eq!(
            (parent.name.as_str(), parent.attr("kind")),
            ("request", Some("signal")),
            "every hop hangs under the signal request that reached it"
        );
    }
    assert!(
        hops.iter().any(|h| h.attr("outcome") == Some("ok")),
        "the target accepted it: {hops:?}"
    );
    assert!(
        in_trace
            .iter()
            .any(|g| g.name == "connect_attempt" && g.attr("path") == Some("punched")),
        "the punch attempt is in the trace"
    );
    // The target's side of the punch hangs under its signal_hop. Its span ends when the
    // punch does, so it may arrive after the rest.
    wait_for(
        &received,
        "the target's punch span under its signal_hop",
        |s| {
            s.iter()
                .find(|g| {
                    g.name == "punch"
                        && g.trace_id == connect.trace_id
                        && hops.iter().any(|h| h.span_id == g.parent_span_id)
                })
                .cloned()
        },
    );

    // --- relaying: symmetric -> symmetric can only relay.
    let (mode, dialer) = cold_pair(&runs, "sym1", "sym2");
    assert_eq!(mode, "relayed", "symmetric pairs relay");
    // A span is exported when it ends, and a circuit lives as long as its connection: end
    // it by restarting the dialer (SIGTERM closes its connections at once).
    let o = run(&runs, &["restart", &dialer]);
    assert!(o.status.success(), "restart {dialer}:\n{}", text(&o));
    wait_for(
        &received,
        "a relay_circuit span in a relayed connect's trace",
        |s| {
            s.iter()
                .filter(|g| g.name == "connect" && g.attr("mode") == Some("relayed"))
                .find(|c| {
                    s.iter()
                        .any(|g| g.name == "relay_circuit" && g.trace_id == c.trace_id)
                })
                .cloned()
        },
    );
    drop(down);
}

/// Takes the lab down when dropped, also when an assertion fails.
struct Down<'a>(&'a std::path::Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let o = run(self.0, &["down"]);
        if !o.status.success() {
            eprintln!("down failed:\n{}", text(&o));
        }
    }
}
