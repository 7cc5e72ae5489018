//! Tier 2: key-value sync between real agents on loopback (QUIC, RocksDB). A write at one
//! agent reaches the others through their periodic Rateless IBLT sessions; tuples survive
//! `kill -9`; bad writes get a reason; a forged tuple pushed by a hostile peer is refused,
//! counted, and never reaches anyone else.

mod common;

use std::time::{Duration, Instant};

use chaosnet_proto::kv::sync::{KvRequest, KvResponse};
use chaosnet_proto::kv::tuple::Tuple;
use chaosnet_proto::{Request, Response, SecretKey};
use common::{Agent, AgentConfig, ask_raw, http_with, metric_sum, plain_hello, raw_connection};
use serde_json::Value;
use tokio::task::block_in_place;

/// Fast sync rounds, so convergence takes seconds.
fn quick(mut c: AgentConfig) -> AgentConfig {
    c.extra
        .extend(["--kv-sync-interval-ms".into(), "300".into()]);
    c
}

fn put(a: &Agent, key: &str, body: &str) -> common::HttpResponse {
    let token = a.config.token.as_deref();
    http_with(
        a.api,
        "PUT",
        &format!("/kv/{key}"),
        Some(body),
        token,
        Duration::from_secs(15),
    )
    .unwrap_or_else(|e| a.fail(&format!("PUT /kv/{key}: {e}")))
}

fn summary(a: &Agent) -> (u64, String) {
    let r = a
        .get("/kv")
        .unwrap_or_else(|e| a.fail(&format!("GET /kv: {e}")));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    (
        v["count"].as_u64().unwrap_or(u64::MAX),
        v["digest"].as_str().unwrap_or("").to_string(),
    )
}

/// Waits until every agent reports `count` keys and one digest.
fn wait_converged(agents: &[&Agent], count: u64, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let s: Vec<(u64, String)> = agents.iter().map(|a| summary(a)).collect();
        if s.iter().all(|x| x.0 == count && x.1 == s[0].1) {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            common::fail_fleet(
                &format!("no convergence on {count} keys in {timeout:?}: {s:?}"),
                agents,
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_write_spreads_survives_kill_9_and_bad_writes_get_reasons() {
    let seed = Agent::start_ready("seed", quick(AgentConfig::mainnet(81)));
    let a = Agent::start_ready("a", quick(AgentConfig::mainnet(82).seed(&seed)));
    let mut b = Agent::start_ready("b", quick(AgentConfig::mainnet(83).seed(&seed)));
    common::wait_all_joined(&[&a, &b], Duration::from_secs(30));

    let r = put(&a, "greeting", r#"{"value": "hello"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = r.json();
    assert_eq!(
        (v["version"].as_u64(), v["author"].as_str()),
        (Some(1), Some(a.node_id.as_str()))
    );
    let r = put(&a, "greeting", r#"{"value": "hello again"}"#);
    assert_eq!(r.json()["version"], 2, "{}", r.body);

    // Bad writes: a reason each, nothing stored.
    let long = format!(r#"{{"value": "{}"}}"#, "x".repeat(4097));
    for (body, status, reason) in [
        (long.as_str(), 400, "value_too_long"),
        (r#"{"value": 5}"#, 400, "bad_request"),
        (r#"{"valeu": "x"}"#, 400, "bad_request"),
        ("not json", 400, "bad_request"),
    ] {
        let r = put(&a, "other", body);
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(r.json()["reason"], reason, "{body}: {}", r.body);
    }
    let r = put(&a, &"k".repeat(300), r#"{"value": "x"}"#);
    assert_eq!(r.json()["reason"], "key_too_long", "{}", r.body);
    let r = a.get("/kv/other").expect("GET /kv/other");
    assert_eq!(r.status, 404, "{}", r.body);

    let took = wait_converged(&[&seed, &a, &b], 1, Duration::from_secs(60));
    eprintln!("one write reached 3 agents in {took:?}");
    let r = b.get("/kv/greeting").expect("GET /kv/greeting");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["value"], "hello again");
    assert_eq!(r.json()["author"], a.node_id.as_str());

    // kill -9, then restart with syncing off: what b holds came from its own RocksDB.
    let mut off = b.config.clone();
    off.extra = vec!["--kv-sync-interval-ms".into(), "0".into()];
    b.restart_with(off);
    b.wait_ready();
    let r = b
        .get("/kv/greeting")
        .expect("GET /kv/greeting after restart");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], 2, "{}", r.body);

    let m = a.metrics();
    assert_eq!(metric_sum(&m, "chaosnet_kv_tuples", &[]), 1.0);
    assert!(metric_sum(&m, "chaosnet_kv_bytes_total", &[("direction", "out")]) > 0.0);
    let rounds: f64 = [&seed, &a]
        .iter()
        .map(|x| {
            metric_sum(
                &x.metrics(),
                "chaosnet_kv_sync_rounds_total",
                &[("outcome", "reconciled")],
            )
        })
        .sum();
    assert!(rounds >= 1.0, "some session reconciled:\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_tuple_from_a_hostile_peer_is_refused_counted_and_never_forwarded() {
    let t = block_in_place(|| Agent::start_ready("target", quick(AgentConfig::mainnet(91))));
    let h =
        block_in_place(|| Agent::start_ready("honest", quick(AgentConfig::mainnet(92).seed(&t))));
    block_in_place(|| common::wait_all_joined(&[&h], Duration::from_secs(30)));

    // The attacker signs with its own key but names the honest agent as the author.
    let attacker = SecretKey::from_bytes([0x5a; 32]);
    let mut forged = Tuple::sign(&attacker, "mainnet", "forged", "evil", 7).expect("sign");
    forged.author = h.node_id.parse().expect("node id");
    let valid = Tuple::sign(&attacker, "mainnet", "valid", "fine", 1).expect("sign");
    let other_net = Tuple::sign(&attacker, "testnet", "other-net", "x", 1).expect("sign");

    let (_ep, conn, _) = raw_connection(&t, &plain_hello()).await;
    let req = Request::Kv(KvRequest::Fetch {
        want: vec![],
        push: vec![forged.clone(), valid.clone(), other_net],
    });
    match ask_raw(&conn, &req).await {
        Ok(Response::Kv(KvResponse::Tuples { tuples })) => assert!(tuples.is_empty()),
        other => t.fail(&format!("expected an empty Tuples answer, got {other:?}")),
    }

    block_in_place(|| {
        let m = t.metrics();
        assert_eq!(
            metric_sum(
                &m,
                "chaosnet_kv_rejected_total",
                &[("reason", "bad_signature")]
            ),
            2.0,
            "the forgery and the other network's tuple:\n{m}"
        );
        assert_eq!(t.get("/kv/forged").expect("GET").status, 404);
        assert_eq!(t.get("/kv/other-net").expect("GET").status, 404);
        assert_eq!(t.get("/kv/valid").expect("GET").status, 200);
        // The valid tuple spreads; the forgery never does.
        wait_converged(&[&t, &h], 1, Duration::from_secs(60));
        assert_eq!(h.get("/kv/forged").expect("GET").status, 404);
        assert_eq!(h.get("/kv/valid").expect("GET").status, 200);
        let hm = h.metrics();
        assert_eq!(
            metric_sum(&hm, "chaosnet_kv_rejected_total", &[]),
            0.0,
            "nothing bad was forwarded to the honest agent:\n{hm}"
        );
    });
    conn.close(quinn::VarInt::from_u32(0), b"done");
}

#[test]
fn a_full_replica_refuses_new_keys_but_takes_new_versions() {
    let mut c = AgentConfig::mainnet(95);
    c.extra.extend(["--kv-max-tuples".into(), "1".into()]);
    let a = Agent::start_ready("small", c);
    assert_eq!(put(&a, "one", r#"{"value": "1"}"#).status, 200);
    let r = put(&a, "two", r#"{"value": "2"}"#);
    assert_eq!(
        (r.status, r.json()["reason"].clone()),
        (400, "full".into()),
        "{}",
        r.body
    );
    let r = put(&a, "one", r#"{"value": "1b"}"#);
    assert_eq!(r.json()["version"], 2, "{}", r.body);
    assert_eq!(summary(&a).0, 1);
}
