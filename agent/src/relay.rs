//! Relay circuits: the requester's and the target's ends, and the relay's splice.
//!
//! A circuit is one bidirectional QUIC stream from the requester A to the relay R, and one
//! from R to the target T. After the open handshake (a [`Request::RelayOpen`] /
//! [`Request::RelayIncoming`] frame answered by [`Response::RelayAccepted`]), each stream
//! carries A's and T's QUIC datagrams, each prefixed with its length (u16, big-endian). R
//! copies bytes between the two streams within the advertised limits and cannot read or
//! forge anything: A and T run their own QUIC handshake end to end through the circuit,
//! with the same certificate checks as a direct connection (the NodeId is the key).
//!
//! At each end, [`attach`] gives the circuit a stand-in address on the socket
//! ([`SocketHandle::circuit_addr`]) and routes datagrams for it into the stream, so quinn
//! sees an ordinary path. Admission and counting are the core's decision; this module only
//! moves bytes and enforces the byte and time limits it is given.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chaosnet_proto::Response;
use tokio::sync::mpsc;

use crate::socket::{Route, SocketHandle};

/// Datagrams queued towards a circuit's stream; beyond this they are dropped (QUIC copes).
const CIRCUIT_QUEUE: usize = 512;
/// A circuit end that carried nothing for this long is closed. QUIC keepalives (5 s) keep a
/// live connection's circuit busy.
const CIRCUIT_IDLE: Duration = Duration::from_secs(60);
/// Largest datagram a circuit carries.
const MAX_DATAGRAM: usize = u16::MAX as usize;

/// Why a circuit ended at the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpliceEnd {
    /// One side closed its stream.
    Closed,
    /// The byte limit was reached.
    BytesLimit,
    /// The duration limit was reached.
    TimeLimit,
}

/// Makes the circuit carried by `send`/`recv` a path of `socket`: returns its stand-in
/// address. Datagrams quinn sends there go into `send`; datagrams read from `recv` come
/// back from that address. Errors when the socket has no route left.
pub fn attach(
    socket: &SocketHandle,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<SocketAddr, crate::socket::RouteError> {
    let addr = socket.circuit_addr();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CIRCUIT_QUEUE);
    socket.add_route(addr, Route::Circuit(tx))?;
    tokio::spawn(async move {
        while let Some(d) = rx.recv().await {
            // Every datagram quinn sends fits a u16 length (it never exceeds 64 KiB).
            let len = u16::try_from(d.len()).unwrap_or(u16::MAX);
            let mut frame = Vec::with_capacity(2 + d.len());
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&d[..usize::from(len)]);
            if send.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
    });
    let handle = socket.clone();
    tokio::spawn(async move {
        let mut len = [0u8; 2];
        loop {
            match tokio::time::timeout(CIRCUIT_IDLE, recv.read_exact(&mut len)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
            let n = usize::from(u16::from_be_bytes(len));
            let mut d = vec![0u8; n.min(MAX_DATAGRAM)];
            if recv.read_exact(&mut d).await.is_err() {
                break;
            }
            handle.inject(addr, d);
        }
        // Dropping the route drops the sender, which ends the writer task.
        handle.remove_route(&addr);
    });
    Ok(addr)
}

/// Copies bytes both ways between the requester's and the target's streams until one side
/// closes or a limit is reached. Returns why it ended and the bytes carried. `on_carried`
/// is told every chunk as it is written (at most 16 KiB, so at least every 16 KiB), which
/// lets metrics show a long-lived circuit's bytes while it is open; the returned total is
/// the sum of those chunks, not more to add.
pub async fn splice<F: Fn(u64) + Sync>(
    a: (quinn::SendStream, quinn::RecvStream),
    t: (quinn::SendStream, quinn::RecvStream),
    max_bytes: u64,
    max_duration: Duration,
    on_carried: F,
) -> (SpliceEnd, u64) {
    let (a_send, a_recv) = a;
    let (t_send, t_recv) = t;
    let budget = Arc::new(AtomicU64::new(max_bytes));
    let carried = Arc::new(AtomicU64::new(0));
    let both = async {
        let (x, y) = tokio::join!(
            copy(a_recv, t_send, budget.clone(), carried.clone(), &on_carried),
            copy(t_recv, a_send, budget.clone(), carried.clone(), &on_carried),
        );
        if x == SpliceEnd::BytesLimit || y == SpliceEnd::BytesLimit {
            SpliceEnd::BytesLimit
        } else {
            SpliceEnd::Closed
        }
    };
    let end = tokio::time::timeout(max_duration, both)
        .await
        .unwrap_or(SpliceEnd::TimeLimit);
    (end, carried.load(Ordering::Relaxed))
}

/// One direction of a splice. A byte limit hit in either direction ends both: the other
/// copy sees its stream reset when this one stops reading and finishes.
async fn copy<F: Fn(u64) + Sync>(
    mut from: quinn::RecvStream,
    mut to: quinn::SendStream,
    budget: Arc<AtomicU64>,
    carried: Arc<AtomicU64>,
    on_carried: &F,
) -> SpliceEnd {
    let mut buf = vec![0u8; 16 * 1024];
    let end = loop {
        let n = match from.read(&mut buf).await {
            Ok(Some(n)) => n,
            _ => break SpliceEnd::Closed,
        };
        let n64 = n as u64;
        let ok = budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(n64)
            })
            .is_ok();
        if !ok {
            break SpliceEnd::BytesLimit;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break SpliceEnd::Closed;
        }
        carried.fetch_add(n64, Ordering::Relaxed);
        on_carried(n64);
    };
    let code = quinn::VarInt::from_u32(0);
    if end == SpliceEnd::BytesLimit {
        let _ = to.reset(code);
    } else {
        let _ = to.finish();
    }
    let _ = from.stop(code);
    end
}

/// Whether a response admits a circuit, with its limits.
pub fn accepted(r: &Response) -> Option<(u64, Duration)> {
    match r {
        Response::RelayAccepted {
            max_bytes,
            max_duration_ms,
        } => Some((*max_bytes, Duration::from_millis(*max_duration_ms))),
        _ => None,
    }
}
