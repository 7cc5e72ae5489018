//! Tier 2: the event stream of real agents on loopback. A subscriber of `GET /events` sees
//! a peer connect, the link's impairment change and the peer go away, as Server-Sent
//! Events whose JSON carries the documented fields.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Agent, AgentConfig, http};
use serde_json::Value;

/// Subscribes to `a`'s event stream; every `(event name, JSON data)` goes to the channel.
fn subscribe(a: &Agent) -> mpsc::Receiver<(String, Value)> {
    let mut s = TcpStream::connect(a.api).expect("connect to the API");
    s.write_all(b"GET /events HTTP/1.1\r\nHost: agent\r\nAccept: text/event-stream\r\n\r\n")
        .expect("send");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut name = String::new();
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { return };
            // Chunk-size lines of the chunked body never start with these.
            if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                let v = serde_json::from_str(d).unwrap_or(Value::Null);
                if tx.send((name.clone(), v)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The next event named `kind` whose data satisfies `ok`, within 30 s.
fn wait_for(
    rx: &mpsc::Receiver<(String, Value)>,
    kind: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((name, data)) if name == kind && data["kind"] == kind && ok(&data) => return data,
            Ok(other) => seen.push(other),
            Err(_) => break,
        }
    }
    panic!("no {kind} event in 30 s; saw {seen:?}");
}

#[test]
fn a_subscriber_sees_peers_come_and_go_and_faults_change() {
    let seed = Agent::start_ready("seed", AgentConfig::mainnet(61));
    let events = subscribe(&seed);
    let mut peer = Agent::start_ready("peer", AgentConfig::mainnet(62).seed(&seed));

    let up = wait_for(&events, "peer_connected", |d| {
        d["peer"] == peer.node_id.as_str()
    });
    assert_eq!(up["mode"], "direct", "{up}");
    assert!(up["at_unix_ms"].as_u64().is_some_and(|t| t > 0), "{up}");

    let body = r#"{"loss_pct": 2.5, "delay_ms": 40, "jitter_ms": 10}"#;
    let r = http(
        seed.api,
        "PUT",
        "/impairment",
        Some(body),
        Duration::from_secs(5),
    )
    .expect("PUT /impairment");
    assert_eq!(r.status, 200, "{}", r.body);
    let fault = wait_for(&events, "fault_observed", |d| d["delay_ms"] == 40);
    assert_eq!(
        (fault["loss_pct"].as_f64(), fault["jitter_ms"].as_u64()),
        (Some(2.5), Some(10))
    );
    let healed = r#"{"loss_pct": 0, "delay_ms": 0, "jitter_ms": 0}"#;
    let r = http(
        seed.api,
        "PUT",
        "/impairment",
        Some(healed),
        Duration::from_secs(5),
    )
    .expect("PUT /impairment");
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for(&events, "fault_observed", |d| d["delay_ms"] == 0);

    // The peer stops cleanly: its connection closes and the seed says so.
    let pid = peer.pid().expect("running");
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(term.success(), "kill -TERM {pid} failed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while peer.exited().is_none() {
        assert!(
            Instant::now() < deadline,
            "the peer did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let down = wait_for(&events, "peer_disconnected", |d| {
        d["peer"] == peer.node_id.as_str()
    });
    assert_eq!(down["mode"], "direct", "{down}");
}
