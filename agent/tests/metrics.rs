//! Tier 2: the `/metrics` body of live agents passes `promtool check metrics` and carries the
//! main metric families.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Agent, AgentConfig, wait_all_joined};

/// The main families. Every one should be declared (HELP and TYPE) from the start, even
/// before its first sample; see [`every_main_family_is_declared_before_its_first_sample`].
const FAMILIES: &[&str] = &[
    "chaosnet_connections_opened_total",
    "chaosnet_tasks_total",
    "chaosnet_rtt_seconds",
    "chaosnet_lookup_hops",
    "chaosnet_node_graph_contacts",
    "chaosnet_node_graph_buckets",
    "chaosnet_handshake_refusals_total",
    "chaosnet_decode_errors_total",
    "chaosnet_udp_bytes_total",
];

fn promtool_available() -> bool {
    Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `promtool check metrics` with `body` on stdin: (success, combined output).
fn promtool_check(body: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("wait for promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The families of `FAMILIES` without a `# HELP` line in `body`.
fn undeclared<'a>(body: &str, families: &[&'a str]) -> Vec<&'a str> {
    families
        .iter()
        .copied()
        .filter(|f| !body.lines().any(|l| l.starts_with(&format!("# HELP {f} "))))
        .collect()
}

/// A busy pair of agents (tasks running, a wrong-network dialer refused) passes promtool and
/// shows the main families.
#[test]
fn metrics_pass_promtool_and_have_the_main_families() {
    let use_promtool = promtool_available();
    if !use_promtool {
        if std::env::var("CHAOSNET_SKIP_PROMTOOL").as_deref() == Ok("1") {
            eprintln!("promtool not found; its check is skipped because CHAOSNET_SKIP_PROMTOOL=1");
        } else {
            panic!(
                "promtool is not on PATH: install the Debian package `prometheus` \
                 (apt-get install prometheus; CI does), or set CHAOSNET_SKIP_PROMTOOL=1 to skip"
            );
        }
    }
    let seed = Agent::start_ready("seed", AgentConfig::mainnet(1).task_rate(10.0));
    let peer = Agent::start_ready("peer", AgentConfig::mainnet(2).task_rate(10.0).seed(&seed));
    // A testnet agent knocking at the mainnet seed: a handshake refusal on both.
    let stranger = Agent::start_ready("stranger", AgentConfig::on("testnet", 3).seed(&seed));
    wait_all_joined(&[&seed, &peer], Duration::from_secs(30));
    // Let some tasks and lookups finish so labelled families have samples too.
    peer.wait_metrics("tasks and RTTs recorded", Duration::from_secs(30), |m| {
        common::metric_sum(m, "chaosnet_tasks_total", &[]) > 0.0
            && common::metric_sum(m, "chaosnet_rtt_seconds_count", &[]) > 0.0
    });
    for a in [&seed, &stranger] {
        a.wait_metrics(
            "the stranger's refusal counted",
            Duration::from_secs(30),
            |m| {
                common::metric_sum(
                    m,
                    "chaosnet_handshake_refusals_total",
                    &[("reason", "wrong_network")],
                ) > 0.0
            },
        );
    }

    for a in [&seed, &peer, &stranger] {
        let body = a.metrics();
        // Every family is declared up front, with or without samples.
        let missing = undeclared(&body, FAMILIES);
        if !missing.is_empty() {
            a.fail(&format!("/metrics lacks the families {missing:?}:\n{body}"));
        }
        // Families with samples by now.
        if a.name != "stranger" {
            for f in [
                "chaosnet_connections_opened_total",
                "chaosnet_udp_bytes_total",
                "chaosnet_node_graph_contacts",
            ] {
                if common::metric_sum(&body, f, &[]) <= 0.0 {
                    a.fail(&format!(
                        "{f} has no positive sample after joining:\n{body}"
                    ));
                }
            }
        }

        if !use_promtool {
            continue;
        }
        let (ok, out) = promtool_check(&body);
        if !ok {
            a.fail(&format!(
                "promtool check metrics failed:\n{out}\n--- body ---\n{body}"
            ));
        }
    }
}

/// A fresh agent with no peers and no tasks still declares every main family, so dashboards
/// and alerts find them (at 0) before the first event. prometheus-client 0.25 leaves out a
/// labelled `Family` until one of its label sets is created.
#[test]
fn every_main_family_is_declared_before_its_first_sample() {
    let a = Agent::start_ready("fresh", AgentConfig::mainnet(9));
    let body = a.metrics();
    let missing = undeclared(&body, FAMILIES);
    if !missing.is_empty() {
        a.fail(&format!(
            "a fresh agent does not declare {missing:?}:\n{body}"
        ));
    }
    if promtool_available() {
        let (ok, out) = promtool_check(&body);
        if !ok {
            a.fail(&format!(
                "promtool check metrics failed on a fresh agent:\n{out}"
            ));
        }
    }
}

/// Bytes of one relayed echo run (60,000 bytes each way, 20 times).
const ECHO_BYTES: u64 = 60_000;
const ECHO_COUNT: u64 = 20;

/// A relay counts the bytes it carries as they pass: they show in its `/metrics` while the
/// circuit is still open, not only when it closes. The requester reaches the target through
/// the relay (`"via"`), echoes over that connection, and the relay's `relay_bytes_total`
/// covers the echoes while `relay_circuits_open` still says 1 and no circuit has closed; the
/// close adds no second count.
#[test]
fn relay_bytes_show_while_the_circuit_is_open() {
    let relay = Agent::start_ready("relay", AgentConfig::mainnet(21));
    let x = Agent::start_ready("x", AgentConfig::mainnet(22).seed(&relay));
    let y = Agent::start_ready("y", AgentConfig::mainnet(23).seed(&relay));
    wait_all_joined(&[&relay, &x, &y], Duration::from_secs(30));
    // The requester is the smaller NodeId: then its relayed connection always replaces a
    // direct one the two may already share (when both exist, each side keeps the one the
    // smaller NodeId dialed), and the echoes below take the circuit. Lowercase hex of equal
    // length sorts as the bytes do.
    let (requester, target) = if x.node_id < y.node_id {
        (&x, &y)
    } else {
        (&y, &x)
    };
    let fleet = [&relay, target, requester];

    // The relay needs a live connection to the target to open the circuit's second leg.
    let r = relay.connect(&target.node_id).expect("POST /connect");
    if r.status != 200 {
        common::fail_fleet(
            &format!("relay -> target answered {} {}", r.status, r.body),
            &fleet,
        );
    }
    let body = serde_json::json!({ "node_id": target.node_id, "via": relay.node_id }).to_string();
    let r = requester
        .post("/connect", &body, Duration::from_secs(70))
        .expect("POST /connect via the relay");
    if r.status != 200 || r.json()["mode"] != "relayed" {
        common::fail_fleet(
            &format!("connect via the relay answered {} {}", r.status, r.body),
            &fleet,
        );
    }
    let m = relay.metrics();
    let before = common::metric_sum(&m, "chaosnet_relay_bytes_total", &[]);

    // Echoes go over the requester's current connection to the target: the relayed one.
    let body = serde_json::json!({
        "node_id": target.node_id,
        "bytes": ECHO_BYTES,
        "count": ECHO_COUNT,
    })
    .to_string();
    let r = requester
        .post("/echo", &body, Duration::from_secs(60))
        .expect("POST /echo");
    if r.status != 200 || r.json()["echoes"] != ECHO_COUNT {
        common::fail_fleet(
            &format!(
                "echo over the relayed connection answered {} {}",
                r.status, r.body
            ),
            &fleet,
        );
    }

    let m = relay.metrics();
    let after = common::metric_sum(&m, "chaosnet_relay_bytes_total", &[]);
    let open = common::metric_sum(&m, "chaosnet_relay_circuits_open", &[]);
    let closed = common::metric_sum(&m, "chaosnet_relay_circuits_total", &[("kind", "closed")]);
    eprintln!(
        "relay: {before} bytes after the handshake, {after} after {ECHO_COUNT} echoes of \
         {ECHO_BYTES} bytes; {open} circuit(s) open, {closed} closed"
    );
    if open != 1.0 || closed != 0.0 {
        common::fail_fleet(
            &format!("the circuit should still be open: {open} open, {closed} closed"),
            &fleet,
        );
    }
    // Both directions carry the payload; QUIC framing only adds to it.
    let payload = (2 * ECHO_BYTES * ECHO_COUNT) as f64;
    if after - before < payload {
        common::fail_fleet(
            &format!(
                "the open circuit's relay_bytes_total grew by {} bytes over {payload} bytes of \
                 echoes (before {before}, after {after})",
                after - before
            ),
            &fleet,
        );
    }

    // Closing the circuit adds nothing it did not count already: the requester shuts down
    // (SIGTERM closes its connections), the relay's splice ends, and the total stays within
    // what the last QUIC packets add, far below a second count of the echoes.
    let pid = requester.pid().expect("the requester runs");
    let term = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(term.success(), "kill -TERM {pid} failed");
    let m = relay.wait_metrics("the circuit closes", Duration::from_secs(60), |m| {
        common::metric_sum(m, "chaosnet_relay_circuits_total", &[("kind", "closed")]) >= 1.0
    });
    let closed_total = common::metric_sum(&m, "chaosnet_relay_bytes_total", &[]);
    eprintln!("relay: {closed_total} bytes once the circuit closed");
    if closed_total - after >= payload / 2.0 {
        common::fail_fleet(
            &format!(
                "relay_bytes_total jumped from {after} to {closed_total} when the circuit \
                 closed: bytes counted twice"
            ),
            &fleet,
        );
    }
}
