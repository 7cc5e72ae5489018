//! Relay circuits: the requester's and the target's ends, and the relay's splice.
//!
//! A circuit is one bidirectional QUIC stream from the requester A to the relay R, and one
//! from R to the target T. After the open handshake (a [`Request::RelayOpen`] /
//! [`Request::RelayIncoming`] frame answered by [`Response::RelayAccepted`]), each stream
//! carries A's and T's QUIC datagrams, each prefixed with its length (u16, big-endian; the
//! framing is [`chaosnet_proto::CircuitDecoder`]'s). R
//! copies bytes between the two streams within the advertised limits and cannot read or
//! forge anything: A and T run their own QUIC handshake end to end through the circuit,
//! with the same certificate checks as a direct connection (the NodeId is the key).
//!
//! At each end, [`attach`] gives the circuit a stand-in address on the socket
//! ([`SocketHandle::circuit_addr`]) and routes datagrams for it into the stream, so quinn
//! sees an ordinary path. A circuit end that stays silent, or stops inside a datagram, is
//! closed after a bounded time, and [`IncomingCircuits`] bounds how many circuits relays may
//! bring us at once, so circuits that are opened and never used cannot hold the socket's
//! routes. Admission of a circuit through us as a relay, and its counting, are the core's
//! decision; this module only moves bytes and enforces the byte and time limits it is given.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chaosnet_proto::{CircuitDecoder, MAX_CIRCUIT_DATAGRAM, NodeId, Response, frame_datagram};
use tokio::sync::mpsc;

use crate::socket::{MAX_ROUTES, Route, SocketHandle};

/// Datagrams queued towards a circuit's stream; beyond this they are dropped (QUIC copes).
const CIRCUIT_QUEUE: usize = 512;
/// A circuit end that carried nothing for this long is closed. QUIC keepalives (5 s) keep a
/// live connection's circuit busy.
const CIRCUIT_IDLE: Duration = Duration::from_secs(60);
/// A circuit end that has carried nothing since it opened is closed after this long: the
/// requester starts its handshake as soon as the circuit is accepted (and gives up on it
/// after the core's relay timeout, 8 s), so a circuit silent for longer is not in use.
const CIRCUIT_FIRST_DATAGRAM: Duration = Duration::from_secs(10);
/// Once a datagram has begun, all of it must arrive within this long (a datagram is at most
/// 64 KiB); a circuit that stops, or drips, inside one is closed.
const CIRCUIT_DATAGRAM_BODY: Duration = Duration::from_secs(5);
/// Circuits one relay may bring us (as their target) at once.
pub const MAX_INCOMING_PER_RELAY: usize = 8;
/// Circuits all relays together may bring us at once: a quarter of the socket's routes, so
/// circuits alone never leave birthday punching or our own relayed dials without one.
pub const MAX_INCOMING: usize = MAX_ROUTES / 4;

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

/// The incoming circuits (this node their target) open now, per relay that brought them;
/// at most [`MAX_INCOMING_PER_RELAY`] per relay and [`MAX_INCOMING`] in all.
#[derive(Debug, Default)]
pub struct IncomingCircuits {
    held: Mutex<HashMap<NodeId, usize>>,
}

/// One incoming circuit's place in [`IncomingCircuits`], given back when dropped.
#[derive(Debug)]
pub struct CircuitSlot {
    owner: Arc<IncomingCircuits>,
    relay: NodeId,
}

impl IncomingCircuits {
    /// A place for one more circuit from `relay`, or `None` when that relay or all relays
    /// together are at their limit.
    pub fn try_take(self: &Arc<Self>, relay: NodeId) -> Option<CircuitSlot> {
        let mut held = self.lock();
        let total: usize = held.values().sum();
        let mine = held.get(&relay).copied().unwrap_or(0);
        if total >= MAX_INCOMING || mine >= MAX_INCOMING_PER_RELAY {
            return None;
        }
        held.insert(relay, mine + 1);
        Some(CircuitSlot {
            owner: self.clone(),
            relay,
        })
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().values().sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, usize>> {
        // A poisoned lock only means a panic elsewhere mid-update of a counter; still usable.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for CircuitSlot {
    fn drop(&mut self) {
        let mut held = self.owner.lock();
        if let Some(n) = held.get_mut(&self.relay) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.relay);
            }
        }
    }
}

/// Makes the circuit carried by `send`/`recv` a path of `socket`: returns its stand-in
/// address. Datagrams quinn sends there go into `send`; datagrams read from `recv` come
/// back from that address. `slot`, for a circuit a relay brought us, is held until the
/// circuit ends. Errors when the socket has no route left.
pub fn attach(
    socket: &SocketHandle,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    slot: Option<CircuitSlot>,
) -> Result<SocketAddr, crate::socket::RouteError> {
    let addr = socket.circuit_addr();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CIRCUIT_QUEUE);
    socket.add_route(addr, Route::Circuit(tx))?;
    tokio::spawn(async move {
        while let Some(d) = rx.recv().await {
            // quinn never sends a datagram over 64 KiB; one would be dropped, as on a path
            // with a smaller MTU.
            let Some(frame) = frame_datagram(&d) else {
                continue;
            };
            if send.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
    });
    let handle = socket.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let mut decoder = CircuitDecoder::new();
        let mut idle = CIRCUIT_FIRST_DATAGRAM;
        // When the datagram we are inside began, if we are inside one.
        let mut begun: Option<tokio::time::Instant> = None;
        loop {
            let wait = match begun {
                Some(t) => (t + CIRCUIT_DATAGRAM_BODY)
                    .saturating_duration_since(tokio::time::Instant::now()),
                None => idle,
            };
            let chunk =
                match tokio::time::timeout(wait, recv.read_chunk(MAX_CIRCUIT_DATAGRAM, true)).await
                {
                    Ok(Ok(Some(c))) => c,
                    _ => break,
                };
            decoder.push(&chunk.bytes);
            let mut completed = false;
            while let Some(d) = decoder.next_datagram() {
                completed = true;
                handle.inject(addr, d);
            }
            if completed {
                idle = CIRCUIT_IDLE;
                begun = None;
            }
            if decoder.inside_datagram() {
                begun = begun.or(Some(tokio::time::Instant::now()));
            }
        }
        // Dropping the route drops the sender, which ends the writer task; dropping `recv`
        // stops the other side's sending.
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    #[test]
    fn incoming_circuits_are_bounded_per_relay_and_in_all_and_given_back() {
        let c = Arc::new(IncomingCircuits::default());
        let mut slots: Vec<CircuitSlot> = (0..MAX_INCOMING_PER_RELAY)
            .map(|_| c.try_take(id(1)).unwrap())
            .collect();
        assert!(c.try_take(id(1)).is_none(), "one relay over its limit");
        let mut relay = 2u8;
        while c.open() < MAX_INCOMING {
            match c.try_take(id(relay)) {
                Some(s) => slots.push(s),
                None => relay += 1,
            }
        }
        assert!(
            c.try_take(id(250)).is_none(),
            "a fresh relay over the total"
        );
        slots.remove(0);
        assert!(
            c.try_take(id(250)).is_some(),
            "a dropped slot is given back"
        );
        drop(slots);
        assert_eq!(c.open(), 0, "every slot is given back");
    }
}
