//! Tier 2: peers that try to pin an agent's memory or its slots. Each attacker is a real,
//! authenticated QUIC connection built with the agent's own library (see
//! `common::raw_connection`) that speaks valid-looking frames and then stops: it opens every
//! stream it may, starts frames it never finishes, brings circuits it never uses. The agent
//! must bound what that costs it and keep serving honest peers.

mod common;

use std::time::{Duration, Instant};

use chaosnet_agent::relay::MAX_INCOMING_PER_RELAY;
use chaosnet_agent::tls::{MAX_BIDI_STREAMS, MAX_UNI_STREAMS};
use chaosnet_proto::NodeId;
use chaosnet_proto::{MAX_FRAME_LEN, PROTOCOL_VERSION, Request, Response, encode};
use common::{
    Agent, AgentConfig, fail_fleet, metric_sum, plain_hello, raw_connection, rss_kib,
    wait_all_joined,
};
use tokio::task::{JoinSet, block_in_place};

/// Attacking connections, each under its own identity.
const ATTACKERS: usize = 20;
/// What 20 stalled connections may add to the target's resident memory: 48 MiB. Each may
/// pin its connection receive window (1 MiB) plus the request bodies it has started (256
/// KiB); the rest is slack for quinn's per-stream state and the allocator.
const RSS_BOUND_KIB: u64 = 48 * 1024;
/// How long the attack holds before it is judged: below the agent's 10 s request deadline,
/// so every stalled stream is still open while memory is sampled.
const ATTACK_HOLD: Duration = Duration::from_secs(8);

/// `POST /echo` from `from` to `to`: `count` echoes of 1,000 bytes; the echoes that came
/// back, or the error.
fn echo(from: &Agent, to: &Agent, count: u32) -> Result<u64, String> {
    let body = serde_json::json!({ "node_id": to.node_id, "bytes": 1000, "count": count });
    match from.post("/echo", &body.to_string(), Duration::from_secs(60)) {
        Ok(r) if r.status == 200 => Ok(r.json()["echoes"].as_u64().unwrap_or(0)),
        Ok(r) => Err(format!("/echo answered {}: {}", r.status, r.body)),
        Err(e) => Err(format!("/echo failed: {e}")),
    }
}

/// 20 connections open every bidirectional stream they may, each with the largest frame
/// short of its last byte, and every unidirectional stream, each with 2 MiB; then they stall.
/// The target's RSS grows by at most [`RSS_BOUND_KIB`], and an honest peer's echoes and a
/// fresh connect still succeed during the attack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_streams_cannot_pin_memory() {
    let t = block_in_place(|| Agent::start_ready("target", AgentConfig::mainnet(11)));
    let h = block_in_place(|| Agent::start_ready("honest", AgentConfig::mainnet(12).seed(&t)));
    block_in_place(|| wait_all_joined(&[&h], Duration::from_secs(30)));
    // The baseline includes what an honest exchange costs.
    if let Err(e) = block_in_place(|| echo(&h, &t, 5)) {
        h.fail(&format!("echo before the attack: {e}"));
    }
    let pid = t.pid().expect("target runs");
    let base = rss_kib(pid);

    let mut conns = Vec::new();
    let mut streams = JoinSet::new();
    for _ in 0..ATTACKERS {
        let (ep, conn, _) = raw_connection(&t, &plain_hello()).await;
        for _ in 0..MAX_BIDI_STREAMS {
            let conn = conn.clone();
            streams.spawn(async move {
                let Ok((mut send, recv)) = conn.open_bi().await else {
                    return;
                };
                let mut frame = (MAX_FRAME_LEN as u32).to_be_bytes().to_vec();
                frame.push(PROTOCOL_VERSION);
                frame.resize(4 + MAX_FRAME_LEN - 1, 0xab);
                let _ = send.write_all(&frame).await;
                // Hold the stream open, never finishing the frame.
                let _keep = (send, recv);
                std::future::pending::<()>().await;
            });
        }
        for _ in 0..MAX_UNI_STREAMS {
            let conn = conn.clone();
            streams.spawn(async move {
                let Ok(mut send) = conn.open_uni().await else {
                    return;
                };
                let _ = send.write_all(&vec![0x5a; 2 << 20]).await;
                let _keep = send;
                std::future::pending::<()>().await;
            });
        }
        conns.push((ep, conn));
    }

    let start = Instant::now();
    let mut peak = base;
    let mut honest: Option<Result<(), String>> = None;
    while start.elapsed() < ATTACK_HOLD {
        peak = peak.max(rss_kib(pid));
        if honest.is_none() && start.elapsed() > ATTACK_HOLD / 2 {
            honest = Some(block_in_place(|| {
                let echoes = echo(&h, &t, 5)?;
                if echoes != 5 {
                    return Err(format!("{echoes} of 5 echoes came back"));
                }
                match h.post(
                    "/connect",
                    &serde_json::json!({ "node_id": t.node_id, "fresh": true }).to_string(),
                    Duration::from_secs(70),
                ) {
                    Ok(r) if r.status == 200 => Ok(()),
                    Ok(r) => Err(format!("fresh /connect answered {}: {}", r.status, r.body)),
                    Err(e) => Err(format!("fresh /connect failed: {e}")),
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    peak = peak.max(rss_kib(pid));
    let grown = peak.saturating_sub(base);
    println!(
        "target RSS: {base} KiB before, {peak} KiB peak under {ATTACKERS} stalled connections \
         (+{grown} KiB, bound {RSS_BOUND_KIB} KiB)"
    );
    streams.abort_all();
    for (_, c) in &conns {
        c.close(quinn::VarInt::from_u32(0), b"done");
    }
    if !t.is_alive() {
        t.fail("the target died under the attack");
    }
    if let Some(Err(e)) = honest {
        h.fail(&format!("honest request during the attack: {e}"));
    }
    if grown > RSS_BOUND_KIB {
        t.fail(&format!(
            "RSS grew by {grown} KiB under {ATTACKERS} stalled connections, bound {RSS_BOUND_KIB} KiB"
        ));
    }
    block_in_place(|| t.status());
}

/// Reads one frame off `recv` (header, then body), bounded by `GUARD`.
async fn read_answer(recv: &mut quinn::RecvStream) -> Option<Response> {
    tokio::time::timeout(GUARD, common::read_frame::<Response>(recv))
        .await
        .ok()
        .flatten()
}

/// Guard against a hang in the test's own reads; not a timing assertion.
const GUARD: Duration = Duration::from_secs(20);

/// `/connect` through `relay` only; `Ok(mode)` or the answer.
fn connect_via(from: &Agent, to: &Agent, relay: &Agent) -> Result<String, String> {
    let body = serde_json::json!({ "node_id": to.node_id, "via": relay.node_id });
    match from.post("/connect", &body.to_string(), Duration::from_secs(70)) {
        Ok(r) if r.status == 200 => Ok(r.json()["mode"].as_str().unwrap_or("").to_string()),
        Ok(r) => Err(format!("{} {}", r.status, r.body)),
        Err(e) => Err(e.to_string()),
    }
}

/// Four peers posing as relays each bring the target 64 circuits (4×64 = every route of its
/// socket) and stall each one inside its first datagram. The target admits at most
/// `MAX_INCOMING_PER_RELAY` per relay, closes every stalled one after its timeout, and an
/// honest relayed connect to it works afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_incoming_circuits_do_not_hold_the_routes() {
    const FAKE_RELAYS: usize = 4;
    let r = block_in_place(|| Agent::start_ready("relay", AgentConfig::mainnet(21)));
    let t = block_in_place(|| Agent::start_ready("target", AgentConfig::mainnet(22).seed(&r)));
    let c = block_in_place(|| Agent::start_ready("requester", AgentConfig::mainnet(23).seed(&r)));
    block_in_place(|| wait_all_joined(&[&t, &c], Duration::from_secs(30)));

    let mut conns = Vec::new();
    let mut circuits = JoinSet::new();
    let mut rng = common::XorShift::new(9);
    for fake in 0..FAKE_RELAYS {
        let (ep, conn, _) = raw_connection(&t, &plain_hello()).await;
        for _ in 0..MAX_BIDI_STREAMS {
            let conn = conn.clone();
            let from = NodeId(rng.bytes(32).try_into().expect("32 bytes"));
            circuits.spawn(async move {
                let (mut send, mut recv) = conn.open_bi().await.ok()?;
                let open = encode(&Request::RelayIncoming { from }).ok()?;
                send.write_all(&open).await.ok()?;
                match read_answer(&mut recv).await? {
                    Response::RelayAccepted { .. } => {}
                    _ => return Some((fake, false, true, None)),
                }
                // The length of a 65,535-byte datagram and 10 of its bytes: then silence.
                let mut stall = vec![0xff, 0xff];
                stall.extend_from_slice(&[0u8; 10]);
                send.write_all(&stall).await.ok()?;
                // The target ends the circuit by stopping its stream: our read then ends. The
                // streams are kept (returned) until the end, so only the target can end them.
                let mut buf = [0u8; 64];
                let closed = loop {
                    match tokio::time::timeout(Duration::from_secs(30), recv.read(&mut buf)).await {
                        Ok(Ok(Some(_))) => continue,
                        Ok(_) => break true,
                        Err(_) => break false,
                    }
                };
                Some((fake, true, closed, Some((send, recv))))
            });
        }
        conns.push((ep, conn));
    }
    let mut accepted = [0usize; FAKE_RELAYS];
    let mut still_open = 0usize;
    let mut held = Vec::new();
    while let Some(done) = circuits.join_next().await {
        if let Ok(Some((fake, was_accepted, closed, streams))) = done {
            accepted[fake] += usize::from(was_accepted);
            still_open += usize::from(was_accepted && !closed);
            held.extend(streams);
        }
    }
    println!(
        "stalled incoming circuits accepted per fake relay: {accepted:?}; still open after 30 s: {still_open}"
    );
    let relayed = block_in_place(|| connect_via(&c, &t, &r));
    drop(held);
    for (_, conn) in &conns {
        conn.close(quinn::VarInt::from_u32(0), b"done");
    }
    match relayed {
        Ok(mode) if mode == "relayed" => {}
        Ok(mode) => c.fail(&format!("connect via the relay came back {mode}")),
        Err(e) => c.fail(&format!(
            "relayed connect after the stalled circuits' timeout failed: {e} \
             (accepted per fake relay {accepted:?}, still open {still_open})"
        )),
    }
    if still_open > 0 {
        t.fail(&format!(
            "{still_open} stalled circuits were still open after 30 s"
        ));
    }
    if let Some(n) = accepted.iter().find(|&&n| n > MAX_INCOMING_PER_RELAY) {
        t.fail(&format!(
            "one fake relay had {n} circuits accepted, limit {MAX_INCOMING_PER_RELAY}"
        ));
    }
}

/// The relay is paused (SIGSTOP) for 15 s while relayed connects go through it. Relayed
/// connects succeed again once it resumes (no circuit slot is left held by a circuit that
/// died), and once the requester has gone the relay counts no open circuit: every circuit it
/// admitted, whether it opened, failed or was admitted too late, was closed in its core.
#[test]
fn a_paused_relay_ends_with_no_open_circuits() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    let r = Agent::start_ready("relay", AgentConfig::mainnet(31));
    let a = Agent::start_ready("target", AgentConfig::mainnet(32).seed(&r));
    let mut c = Agent::start_ready("requester", AgentConfig::mainnet(33).seed(&r));
    wait_all_joined(&[&a, &c], Duration::from_secs(30));

    let (stop, resumed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    // Successes of connects started before and after the relay resumed, and failures.
    let counts = Arc::new([AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)]);
    let (api, body) = (
        c.api,
        serde_json::json!({ "node_id": a.node_id, "via": r.node_id }).to_string(),
    );
    let loops: Vec<_> = (0..3)
        .map(|_| {
            let (stop, resumed, counts, body) =
                (stop.clone(), resumed.clone(), counts.clone(), body.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let after = resumed.load(Ordering::Relaxed);
                    let r = common::http(api, "POST", "/connect", Some(&body), GUARD * 4);
                    if r.is_ok_and(|r| r.status == 200) {
                        counts[usize::from(after)].fetch_add(1, Ordering::Relaxed);
                    } else {
                        counts[2].fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    r.signal("STOP");
    std::thread::sleep(Duration::from_secs(15));
    r.signal("CONT");
    resumed.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        let _ = l.join();
    }
    let [before, after, failed] = [0, 1, 2].map(|i| counts[i].load(Ordering::Relaxed));
    println!(
        "relayed connects: {before} ok before the relay resumed, {after} ok after, {failed} failed"
    );
    if after == 0 {
        fail_fleet(
            &format!(
                "no relayed connect succeeded in the 10 s after the relay resumed \
                 ({before} before, {failed} failed)"
            ),
            &[&r, &a, &c],
        );
    }
    // The requester's exit closes its connections, so the relay's splices end.
    c.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.exited().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = r.wait_status(
        "the relay's open circuits back at 0",
        Duration::from_secs(60),
        |st| st["relay_circuits"] == 0,
    );
    let m = r.metrics();
    let opened = metric_sum(&m, "chaosnet_relay_circuits_total", &[("kind", "opened")]);
    let closed = metric_sum(&m, "chaosnet_relay_circuits_total", &[("kind", "closed")]);
    println!(
        "relay: {opened} circuits opened, {closed} closed; open now {}",
        st["relay_circuits"]
    );
    if opened != closed {
        r.fail(&format!("{opened} circuits opened but {closed} closed"));
    }
}
