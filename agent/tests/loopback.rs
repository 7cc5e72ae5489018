//! Tier 2: a 20-agent mainnet on loopback with real QUIC. Every agent joins through one seed,
//! every agent connects directly to every other through the control API, and the API's JSON
//! shapes and error answers are what the README documents.

mod common;

use std::time::Duration;

use common::{Agent, AgentConfig, XorShift, fail_fleet, wait_all_joined, wait_all_ready};
use serde_json::Value;

const AGENTS: usize = 20;

fn is_hex_id(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn check_status_shape(a: &Agent, st: &Value) {
    let problems: Vec<String> = [
        ("node_id is 64 hex chars", is_hex_id(&st["node_id"])),
        (
            "node_id matches keygen",
            st["node_id"] == Value::String(a.node_id.clone()),
        ),
        ("network is mainnet", st["network"] == "mainnet"),
        (
            "listen_addrs holds the P2P address",
            st["listen_addrs"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x == &Value::String(a.p2p.to_string()))),
        ),
        (
            "observed_addrs is a list of strings",
            st["observed_addrs"]
                .as_array()
                .is_some_and(|l| l.iter().all(Value::is_string)),
        ),
        ("nat_type is a string", st["nat_type"].is_string()),
        (
            "contacts is a number > 0",
            st["contacts"].as_u64().is_some_and(|n| n > 0),
        ),
        ("joined is true", st["joined"] == Value::Bool(true)),
        (
            "connections are {node_id, mode, rtt_ms}",
            st["connections"].as_array().is_some_and(|l| {
                l.iter().all(|c| {
                    is_hex_id(&c["node_id"])
                        && c["mode"]
                            .as_str()
                            .is_some_and(|m| ["direct", "punched", "relayed"].contains(&m))
                        && (c["rtt_ms"].is_number() || c["rtt_ms"].is_null())
                        && c.get("rtt_ms").is_some()
                })
            }),
        ),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(what, _)| what.to_string())
    .collect();
    if !problems.is_empty() {
        a.fail(&format!(
            "/status breaks the documented shape: {problems:?}\nstatus: {st}"
        ));
    }
}

#[test]
fn twenty_agents_join_and_connect_directly_to_each_other() {
    let seed = Agent::start_ready("seed", AgentConfig::mainnet(1));
    let mut agents = vec![seed];
    for i in 1..AGENTS {
        let cfg = AgentConfig::mainnet(1 + i as u64).seed(&agents[0]);
        agents.push(Agent::spawn(&format!("a{i:02}"), cfg));
    }
    wait_all_ready(&agents);
    let all: Vec<&Agent> = agents.iter().collect();
    wait_all_joined(&all, Duration::from_secs(45));

    // The documented /status and /peers shapes, on every agent.
    for a in &agents {
        let st = a.status();
        check_status_shape(a, &st);
        let peers = a.get("/peers").expect("GET /peers");
        assert_eq!(
            peers.status, 200,
            "{}: /peers answered {}",
            a.name, peers.status
        );
        let list = peers.json();
        match list.as_array() {
            Some(l) if !l.is_empty() => {
                for p in l {
                    if !is_hex_id(&p["node_id"]) || p["node_id"] == Value::String(a.node_id.clone())
                    {
                        a.fail(&format!("/peers entry has a bad node_id: {p}"));
                    }
                }
            }
            _ => a.fail(&format!(
                "/peers is not a non-empty JSON array: {}",
                peers.body
            )),
        }
    }

    // Everyone connects to everyone: 380 calls, one thread per source agent.
    let ids: Vec<String> = agents.iter().map(|a| a.node_id.clone()).collect();
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = agents
            .iter()
            .map(|a| {
                let ids = &ids;
                s.spawn(move || {
                    let mut bad = Vec::new();
                    for target in ids.iter().filter(|t| **t != a.node_id) {
                        match a.connect(target) {
                            Ok(r) => {
                                let j = r.json();
                                let ok = r.status == 200
                                    && j["mode"] == "direct"
                                    && j["elapsed_ms"].is_number()
                                    && j["node_id"] == Value::String(target.clone());
                                if !ok {
                                    bad.push(format!(
                                        "{} -> {}: {} {}",
                                        a.name,
                                        &target[..8],
                                        r.status,
                                        r.body
                                    ));
                                }
                            }
                            Err(e) => bad.push(format!("{} -> {}: {e}", a.name, &target[..8])),
                        }
                    }
                    bad
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("connect thread panicked"))
            .collect()
    });
    if !failures.is_empty() {
        let shown: Vec<&String> = failures.iter().take(20).collect();
        fail_fleet(
            &format!(
                "{} of {} connects failed, e.g.:\n{}",
                failures.len(),
                AGENTS * (AGENTS - 1),
                shown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            &all[..4],
        );
    }

    // Error answers of /connect.
    let a = &agents[3];
    for bad_id in ["xyz", &"zz".repeat(32), &a.node_id[..63]] {
        let r = a.connect(bad_id).expect("POST /connect");
        if r.status != 400 || !r.json()["reason"].is_string() {
            a.fail(&format!(
                "/connect {bad_id:?} answered {} {}, expected 400 with a reason",
                r.status, r.body
            ));
        }
    }
    let r = a
        .post("/connect", "{not json", Duration::from_secs(10))
        .expect("POST /connect");
    if r.status != 400 || !r.json()["reason"].is_string() {
        a.fail(&format!(
            "/connect with a broken body answered {} {}",
            r.status, r.body
        ));
    }
    let mut rng = XorShift::new(7);
    let unknown = hex::encode(rng.bytes(32));
    let r = a.connect(&unknown).expect("POST /connect to an unknown id");
    let j = r.json();
    if r.status != 404 || j["reason"] != "not_found" {
        a.fail(&format!(
            "/connect to an unknown node answered {} {}, expected 404 with reason not_found",
            r.status, r.body
        ));
    }

    // Still all up.
    for a in &agents {
        a.status();
    }
}
