//! Tier 2: node claims between real agents on loopback. `POST /claim` runs the
//! cross-signing exchange; both agents keep the doubly signed claim (across a restart),
//! `GET /claims/{id}` fetches a peer's claims over the network and checks them, and the
//! claims metrics count what happened.

mod common;

use std::time::Duration;

use chaosnet_proto::{Claim, NodeId};
use common::{Agent, AgentConfig, metric_sum};
use serde_json::Value;

/// A claim from its JSON form, checked for shape.
fn parse(v: &Value) -> Claim {
    let id = |k: &str| {
        v[k].as_str()
            .and_then(|s| s.parse::<NodeId>().ok())
            .expect("node id")
    };
    let sig = |k: &str| hex::decode(v[k].as_str().expect("hex")).expect("hex");
    Claim {
        a: id("a"),
        b: id("b"),
        issued_ms: v["issued_ms"].as_u64().expect("issued_ms"),
        sig_a: sig("sig_a"),
        sig_b: sig("sig_b"),
    }
}

/// The `claims` list of a `GET /claims[/{id}]` answer.
fn claims_of(r: &common::HttpResponse) -> Vec<Claim> {
    r.json()["claims"]
        .as_array()
        .unwrap_or_else(|| panic!("no claims list: {}", r.body))
        .iter()
        .map(parse)
        .collect()
}

#[test]
fn two_agents_cross_sign_a_claim_keep_it_and_fetch_each_others() {
    let seed = Agent::start_ready("seed", AgentConfig::mainnet(71));
    let mut peer = Agent::start_ready("peer", AgentConfig::mainnet(72).seed(&seed));
    peer.wait_status("joined", Duration::from_secs(30), |s| s["joined"] == true);

    let body = format!(r#"{{"node_id": "{}"}}"#, seed.node_id);
    let r = peer
        .post("/claim", &body, Duration::from_secs(60))
        .expect("POST /claim");
    assert_eq!(r.status, 200, "{}", r.body);
    let claim = parse(&r.json());
    assert_eq!(
        claim.check(),
        Ok(()),
        "the answer is doubly signed: {}",
        r.body
    );
    assert_eq!(claim.a.to_hex(), peer.node_id);
    assert_eq!(claim.b.to_hex(), seed.node_id);

    // Both sides hold it.
    for a in [&seed, &peer] {
        let r = a.get("/claims").expect("GET /claims");
        let held = claims_of(&r);
        assert_eq!(held, vec![claim.clone()], "{}: {}", a.name, r.body);
    }

    // The peer fetches the seed's claims over the network and checks them.
    let r = peer
        .get(&format!("/claims/{}", seed.node_id))
        .expect("GET /claims/{id}");
    assert_eq!(r.status, 200, "{}", r.body);
    let fetched = claims_of(&r);
    assert_eq!(fetched, vec![claim.clone()]);
    let m = peer.metrics();
    assert_eq!(
        metric_sum(&m, "chaosnet_claims_total", &[("outcome", "stored")]),
        1.0
    );
    assert_eq!(
        metric_sum(&m, "chaosnet_claims_total", &[("outcome", "verified")]),
        1.0
    );
    assert_eq!(
        metric_sum(&m, "chaosnet_claims_total", &[("outcome", "forged")]),
        0.0
    );

    // A bad id is a 400, not a panic or a hang.
    let r = peer.get("/claims/not-an-id").expect("GET");
    assert_eq!(r.status, 400, "{}", r.body);

    // The claim survives a restart (kept in RocksDB next to the node graph).
    let cfg = AgentConfig::mainnet(72).seed(&seed);
    peer.restart_with(cfg);
    peer.wait_ready();
    let r = peer.get("/claims").expect("GET /claims");
    let held = claims_of(&r);
    assert_eq!(held, vec![claim], "after a restart: {}", r.body);
}
