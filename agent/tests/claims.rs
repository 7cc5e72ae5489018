//! Tier 2: node claims between real agents on loopback. `POST /claim` runs the
//! cross-signing exchange; both agents keep the doubly signed claim (across a restart),
//! `GET /claims/{id}` fetches a peer's claims over the network and checks them, and the
//! claims metrics count what happened. A hostile peer's forged offer, and the forged and
//! singly signed claims it serves when asked for its own, are refused and counted.

mod common;

use std::time::Duration;

use chaosnet_proto::{Claim, NodeId, Request, Response, SecretKey, encode};
use common::{Agent, AgentConfig, ask_raw, metric_sum, plain_hello, raw_connection, read_frame};
use serde_json::Value;
use tokio::task::block_in_place;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_peers_forged_and_singly_signed_claims_are_refused_and_counted() {
    let a = block_in_place(|| Agent::start_ready("target", AgentConfig::mainnet(73)));
    let target: NodeId = a.node_id.parse().expect("node id");
    let (_ep, conn, hostile) = raw_connection(&a, &plain_hello()).await;
    let stranger = SecretKey::from_bytes([0x33; 32]);

    // 1. An offer from the hostile peer in a stranger's name (signed by the stranger).
    let offer = Claim::offer(&stranger, target, 0);
    let req = Request::Claim { claim: offer };
    match ask_raw(&conn, &req).await {
        Ok(Response::Error { .. }) => {}
        other => a.fail(&format!("a forged offer must be refused, got {other:?}")),
    }

    // 2. The target fetches the hostile peer's claims; the peer serves a singly signed one
    //    and one whose second signature is garbage.
    let mut singly = Claim::offer(&stranger, hostile, 1);
    singly.sig_b.clear();
    let mut forged = Claim::offer(&stranger, hostile, 2);
    forged.sig_b = vec![7; 64];
    let serve = {
        let conn = conn.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                    return false;
                };
                if let Some(Request::GetClaims) = read_frame::<Request>(&mut recv).await {
                    let resp = Response::Claims {
                        claims: vec![singly.clone(), forged.clone()],
                    };
                    let _ = send.write_all(&encode(&resp).expect("encode")).await;
                    let _ = send.finish();
                    return true;
                }
            }
        })
    };
    let r = block_in_place(|| a.get(&format!("/claims/{}", hostile.to_hex())))
        .expect("GET /claims/{id}");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(claims_of(&r), Vec::<Claim>::new(), "{}", r.body);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), serve)
            .await
            .is_ok_and(|j| j.unwrap_or(false)),
        "the target asked the hostile peer for its claims"
    );

    block_in_place(|| {
        let m = a.metrics();
        let n = |o: &str| metric_sum(&m, "chaosnet_claims_total", &[("outcome", o)]);
        assert_eq!(
            n("forged"),
            2.0,
            "the offer and the bad countersignature:\n{m}"
        );
        assert_eq!(n("singly_signed"), 1.0, "{m}");
        assert_eq!(n("stored") + n("verified"), 0.0, "{m}");
        let r = a.get("/claims").expect("GET /claims");
        assert_eq!(
            claims_of(&r),
            Vec::<Claim>::new(),
            "nothing kept: {}",
            r.body
        );
    });
    conn.close(quinn::VarInt::from_u32(0), b"done");
}
