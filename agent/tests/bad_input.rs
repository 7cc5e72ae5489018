//! Tier 2: hostile input against a live agent. Garbage UDP datagrams on its P2P port, and
//! broken frames on a real, authenticated QUIC connection built with the agent's own library.
//! The agent must stay up, keep serving, close only the offending stream, and count it all.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use chaosnet_proto::{MAX_FRAME_LEN, PROTOCOL_VERSION, Request, Response, decode, encode};
use common::{Agent, AgentConfig, XorShift, metric_sum};
use serde_json::Value;

const DECODE_ERRORS: &str = "chaosnet_decode_errors_total";

#[test]
fn garbage_datagrams_are_dropped_and_counted() {
    let a = Agent::start_ready("target", AgentConfig::mainnet(1));
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    let mut rng = XorShift::new(42);
    let mut sent_without_fixed_bit = 0u64;
    for i in 0..1000u32 {
        let len = 1 + (rng.next_u64() % 1400) as usize;
        let mut d = rng.bytes(len);
        if i % 4 == 3 {
            // The QUIC fixed bit set: these reach quinn, which must drop them too.
            d[0] |= 0x40;
        } else {
            d[0] &= !0x40;
            // Not by chance a probe (0x00 "CNP1").
            if d[0] == 0 {
                d[0] = 0x01;
            }
            sent_without_fixed_bit += 1;
        }
        let _ = sock.send_to(&d, a.p2p);
        if i % 50 == 49 {
            // Loopback drops what overflows the receive buffer; pace a little.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let m = a.wait_metrics("garbage datagrams counted", Duration::from_secs(15), |m| {
        metric_sum(
            m,
            "chaosnet_udp_datagrams_dropped_total",
            &[("reason", "garbage")],
        ) > 0.0
    });
    let garbage = metric_sum(
        &m,
        "chaosnet_udp_datagrams_dropped_total",
        &[("reason", "garbage")],
    );
    if garbage > sent_without_fixed_bit as f64 {
        a.fail(&format!(
            "counted {garbage} garbage datagrams but only {sent_without_fixed_bit} were sent"
        ));
    }
    // Still up, still answering, and still a working peer.
    if !a.is_alive() {
        a.fail("the agent died from garbage datagrams");
    }
    let st = a.status();
    if st["socket"]["rx_garbage"].as_u64().unwrap_or(0) == 0 {
        a.fail(&format!(
            "/status.socket.rx_garbage is 0 after the flood: {st}"
        ));
    }
    let b = Agent::start_ready("peer", AgentConfig::mainnet(2).seed(&a));
    common::wait_all_joined(&[&b], Duration::from_secs(30));
    match b.connect(&a.node_id) {
        Ok(r) if r.status == 200 && r.json()["mode"] == "direct" => {}
        Ok(r) => b.fail(&format!(
            "/connect after the flood: {} {}",
            r.status, r.body
        )),
        Err(e) => b.fail(&format!("/connect after the flood: {e}")),
    }
    if !a.is_alive() {
        a.fail("the agent died");
    }
}

/// What became of a stream we sent a bad frame on.
#[derive(Debug)]
enum StreamEnd {
    /// The agent reset or stopped it (what it should do).
    Reset,
    /// It finished the stream with these bytes (empty is acceptable, an answer is not).
    Finished(Vec<u8>),
    /// Nothing happened within the bound.
    Hung,
}

async fn send_raw(conn: &quinn::Connection, bytes: &[u8]) -> StreamEnd {
    let (mut send, mut recv) = conn.open_bi().await.expect("open a bi stream");
    // The agent may stop the stream before we are done writing; that is fine.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    match tokio::time::timeout(Duration::from_secs(15), recv.read_to_end(MAX_FRAME_LEN * 2)).await {
        Ok(Ok(b)) => StreamEnd::Finished(b),
        Ok(Err(_)) => StreamEnd::Reset,
        Err(_) => StreamEnd::Hung,
    }
}

fn frame_with_len(len: u32, rest: &[u8]) -> Vec<u8> {
    let mut f = len.to_be_bytes().to_vec();
    f.extend_from_slice(rest);
    f
}

fn decode_errors(m: &str, reason: &str) -> f64 {
    metric_sum(m, DECODE_ERRORS, &[("reason", reason)])
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_frames_close_only_their_stream() {
    let a = tokio::task::block_in_place(|| Agent::start_ready("target", AgentConfig::mainnet(1)));
    let before = tokio::task::block_in_place(|| a.metrics());

    let hello = common::plain_hello();
    let (_ep, conn, me) = common::raw_connection(&a, &hello).await;
    // The agent registers the connection once it has our hello.
    tokio::task::block_in_place(|| {
        a.wait_status(
            "the agent lists the test client",
            Duration::from_secs(15),
            |st| {
                st["connections"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["node_id"] == Value::String(me.to_hex())))
            },
        )
    });

    let mut rng = XorShift::new(5);
    let ping = encode(&Request::Ping { nonce: 1 }).expect("encode ping");
    let mut with_trailing = ping.clone();
    with_trailing.extend_from_slice(&[0xde, 0xad]);
    let fixed_len = (with_trailing.len() - 4) as u32;
    with_trailing[..4].copy_from_slice(&fixed_len.to_be_bytes());
    let mut garbage_body = vec![PROTOCOL_VERSION, 0x7f]; // enum tag 127: no such request
    garbage_body.extend(rng.bytes(40));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", frame_with_len(100, &rng.bytes(10))),
        (
            "oversize",
            frame_with_len(MAX_FRAME_LEN as u32 + 1, &rng.bytes(64)),
        ),
        (
            "unknown version",
            frame_with_len(5, &[PROTOCOL_VERSION.wrapping_add(98), 0, 1, 2, 3]),
        ),
        (
            "garbage body",
            frame_with_len(garbage_body.len() as u32, &garbage_body),
        ),
        ("trailing bytes", with_trailing),
        ("zero length", frame_with_len(0, &[])),
        ("empty stream", Vec::new()),
    ];
    for (what, bytes) in &cases {
        match send_raw(&conn, bytes).await {
            StreamEnd::Reset => {}
            StreamEnd::Finished(b) if b.is_empty() => {}
            other => a.fail(&format!(
                "{what}: expected the stream to be reset, got {other:?}"
            )),
        }
        if let Some(e) = conn.close_reason() {
            a.fail(&format!(
                "{what}: the bad frame closed the whole connection: {e}"
            ));
        }
    }

    // The connection still works: a valid ping gets its pong.
    let (mut send, mut recv) = conn.open_bi().await.expect("open a stream for the ping");
    send.write_all(&encode(&Request::Ping { nonce: 4242 }).expect("encode"))
        .await
        .expect("write ping");
    send.finish().expect("finish ping");
    let answer = tokio::time::timeout(Duration::from_secs(15), recv.read_to_end(MAX_FRAME_LEN))
        .await
        .unwrap_or_else(|_| a.fail("no answer to a valid ping after the bad frames"))
        .unwrap_or_else(|e| a.fail(&format!("the ping stream failed: {e}")));
    match decode::<Response>(&answer) {
        Ok(Response::Pong { nonce: 4242, .. }) => {}
        other => a.fail(&format!("expected Pong{{nonce: 4242}}, got {other:?}")),
    }

    // Every bad frame was counted under its reason.
    let after = tokio::task::block_in_place(|| a.metrics());
    let expected = [
        ("truncated", 3.0),
        ("oversize", 1.0),
        ("unknown_version", 1.0),
        ("malformed", 2.0),
    ];
    for (reason, n) in expected {
        let delta = decode_errors(&after, reason) - decode_errors(&before, reason);
        if delta < n {
            a.fail(&format!(
                "{DECODE_ERRORS}{{reason=\"{reason}\"}} rose by {delta}, expected at least {n}"
            ));
        }
    }
    if !a.is_alive() {
        a.fail("the agent died");
    }
    conn.close(quinn::VarInt::from_u32(0), b"done");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_garbage_hello_is_counted_and_the_agent_survives() {
    let a = tokio::task::block_in_place(|| Agent::start_ready("target", AgentConfig::mainnet(3)));
    // A frame whose body is not a Hello (and a second one after it).
    let mut junk = frame_with_len(6, &[PROTOCOL_VERSION, 0xff, 0xff, 0xff, 0xff, 0xff]);
    junk.extend_from_slice(&[1, 2, 3]);
    let (_ep, conn, me) = common::raw_connection(&a, &junk).await;
    // The agent gives up on this connection: it never lists it.
    tokio::task::block_in_place(|| {
        a.wait_metrics("the bad hello is counted", Duration::from_secs(15), |m| {
            metric_sum(m, DECODE_ERRORS, &[]) > 0.0
        })
    });
    let st = tokio::task::block_in_place(|| a.status());
    if st["connections"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["node_id"] == Value::String(me.to_hex())))
    {
        a.fail(&format!("a peer with a garbage hello was accepted: {st}"));
    }
    drop(conn);
    // A well-behaved client still gets in.
    let hello = common::plain_hello();
    let (_ep2, conn2, me2) = common::raw_connection(&a, &hello).await;
    tokio::task::block_in_place(|| {
        a.wait_status(
            "a good client is accepted after a bad one",
            Duration::from_secs(15),
            |st| {
                st["connections"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["node_id"] == Value::String(me2.to_hex()))
                })
            },
        )
    });
    conn2.close(quinn::VarInt::from_u32(0), b"done");
}
