//! The wire protocol: messages and their framing.
//!
//! Every frame is `[len: u32 big-endian][version: u8][body: postcard]`, where `len` counts the
//! version byte and the body. A frame longer than [`MAX_FRAME_LEN`] is refused before any of
//! it is buffered, so a hostile peer cannot make us allocate more than that per stream.
//! The body encoding is postcard (compact, non-self-describing, well kept); the version byte
//! lets a later release change it without guessing.
//!
//! One request and one response travel on each bidirectional QUIC stream. This module only
//! encodes and decodes bytes; reading them off streams is the shell's job.

use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::claim::Claim;
use crate::id::NodeId;
use crate::kv::sync::{
    KvRequest, KvResponse, MAX_SYMBOLS_PER_MESSAGE, MAX_TUPLE_BYTES_PER_MESSAGE,
    MAX_WANT_PER_MESSAGE,
};
use crate::reach::{ConnMode, NatType};
use crate::signal::{Countersign, MAX_SIGNAL_HOPS, SIGNATURE_LEN, Signal};

/// The protocol version this build speaks (and writes).
/// Version 2 added the optional trace context to `Signal` and `RelayOpen`; version 3 added
/// the dial-back requests (`DialBack`, `DialBackVia`, `DialBackSent`) and node claims
/// (`Claim`, `GetClaims`, `Claimed`, `Claims`); version 4 added key-value sync (`Kv`).
pub const PROTOCOL_VERSION: u8 = 4;
/// The oldest version this build still reads. Versions 3 and 4 only appended enum
/// variants, which postcard numbers in order, so every version-2 frame decodes unchanged;
/// an older peer refuses our newer frames, and then only that stream fails.
pub const OLDEST_READABLE_VERSION: u8 = 2;
/// Most claims one `Claims` answer carries.
pub const MAX_CLAIMS_PER_RESPONSE: usize = 32;

/// Largest frame accepted, version byte and body included (64 KiB).
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;
/// Largest echo payload: leaves room for the envelope inside [`MAX_FRAME_LEN`].
pub const MAX_ECHO_LEN: usize = 60 * 1024;
/// Most contacts a `Nodes` response may carry.
pub const MAX_NODES_PER_RESPONSE: usize = 32;
/// Most addresses per contact on the wire.
pub const MAX_ADDRS_PER_PEER: usize = 5;

/// A W3C trace context (the `traceparent` fields): which span sent a request, so the
/// receiver's spans join the sender's trace. The core never reads it; the shell fills it in
/// when tracing is on and leaves it `None` otherwise. Any value is harmless: a receiver that
/// finds it invalid (all-zero ids) starts a trace of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    /// The trace's id.
    pub trace_id: [u8; 16],
    /// The sending span's id.
    pub span_id: [u8; 8],
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
}

/// A request, sent first on a fresh bidirectional stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness and RTT probe; the answer says which address the request came from.
    Ping {
        /// Echoed back in the [`Response::Pong`].
        nonce: u64,
    },
    /// Kademlia FIND_NODE: the responder's closest contacts to `target`.
    FindNode {
        /// The id being looked up.
        target: NodeId,
    },
    /// Peer exchange: "introduce me to random peers you know".
    Introduce {
        /// How many peers the requester wants, at most [`MAX_NODES_PER_RESPONSE`].
        max: u8,
    },
    /// Echo the payload back; used by the echo task and throughput benchmarks.
    Echo {
        /// At most [`MAX_ECHO_LEN`] bytes.
        payload: Vec<u8>,
    },
    /// Carry a hole-punching signal towards `signal.to` (or act on it, if we are `to`).
    /// Answered with [`Response::SignalAnswer`] once the target accepted it.
    Signal {
        /// The requester's signed request.
        signal: Signal,
        /// One countersignature per node that carried it so far, first carrier first.
        hops: Vec<Countersign>,
        /// The sender's span, so every hop's span joins the requester's trace.
        trace: Option<TraceContext>,
    },
    /// Open a relay circuit to `target`. On [`Response::RelayAccepted`] the stream stays
    /// open and carries the requester's QUIC datagrams to `target`, length-prefixed.
    RelayOpen {
        /// The node to reach through the responder.
        target: NodeId,
        /// The requester's span, so the relay's circuit span joins its trace.
        trace: Option<TraceContext>,
    },
    /// Sent by a relay to the circuit's target: `from` wants to reach you through me. On
    /// [`Response::RelayAccepted`] the stream stays open and carries `from`'s datagrams.
    RelayIncoming {
        /// The node at the other end of the circuit.
        from: NodeId,
    },
    /// Reachability test (RFC 5780 filtering, libp2p AutoNAT style): have probes carrying
    /// `token` sent to the address a hello datagram with the same token came from (the
    /// requester's fresh test socket, as its NAT maps it). With `other_port` the responder
    /// sends them itself from another port of its IP; otherwise it asks another node it is
    /// connected to, on another IP, to send them. The hello must come from the IP this
    /// connection comes from, so the request cannot aim probes at a third party. Answered
    /// with [`Response::DialBackSent`] once the probes left.
    DialBack {
        /// Carried in the hello and every probe.
        token: u64,
        /// Probe from the responder's IP, another port.
        other_port: bool,
    },
    /// Sent by a node serving a [`Request::DialBack`] to the helper it chose: send probes
    /// carrying `token` to `to`. Answered with [`Response::DialBackSent`].
    DialBackVia {
        /// Carried in every probe.
        token: u64,
        /// Where the requester was observed.
        to: SocketAddr,
    },
    /// A claim offer: `claim.a` (the requester) signed it; countersign and keep it.
    /// Answered with [`Response::Claimed`].
    Claim {
        /// The singly signed offer.
        claim: Claim,
    },
    /// The claims the responder holds. Answered with [`Response::Claims`].
    GetClaims,
    /// One step of a key-value sync session (the responder keeps no session state).
    /// Answered with [`Response::Kv`].
    Kv(KvRequest),
}

/// A peer as described on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's id.
    pub id: NodeId,
    /// Addresses it was reached at, most recent first, at most [`MAX_ADDRS_PER_PEER`].
    pub addrs: Vec<SocketAddr>,
    /// How the sender is connected to it.
    pub mode: ConnMode,
    /// The NAT type it advertised.
    pub nat: NatType,
    /// The sender holds a live connection to it (so it can carry signals and relay to it).
    pub live: bool,
}

/// Why a request was refused by its responder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request was well-formed but its values are out of range.
    BadRequest,
    /// The responder is shedding load.
    Busy,
    /// A signature did not verify, or a signal was replayed.
    Forbidden,
    /// The responder has no way towards the requested node.
    NoRoute,
    /// The requester went over its rate limit.
    RateLimited,
    /// The responder does not accept this (relay full, relaying disabled).
    Refused,
}

impl ErrorCode {
    /// Bounded label, for spans and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Busy => "busy",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NoRoute => "no_route",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Refused => "refused",
        }
    }
}

/// A response, the only frame the responder writes on a request's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Ping`].
    Pong {
        /// The request's nonce.
        nonce: u64,
        /// The address the responder sees the requester at.
        observed: Option<SocketAddr>,
        /// The responder's own NAT type, as it classifies itself.
        nat: NatType,
    },
    /// Answer to [`Request::FindNode`] and [`Request::Introduce`].
    Nodes {
        /// At most [`MAX_NODES_PER_RESPONSE`].
        peers: Vec<PeerInfo>,
    },
    /// Answer to [`Request::Echo`].
    Echo {
        /// The request's payload.
        payload: Vec<u8>,
    },
    /// Answer to [`Request::Signal`]: the target accepted it and is punching.
    SignalAnswer {
        /// The target's NAT type.
        target_nat: NatType,
        /// The target's address as seen by the node that delivered the signal to it; filled
        /// in by that node.
        target_addr: Option<SocketAddr>,
        /// Where the target believes it can be reached, public (mapped) address first.
        target_addrs: Vec<SocketAddr>,
        /// The node that delivered the signal (it holds a live connection to the target, so
        /// it can also relay).
        via: Option<NodeId>,
    },
    /// Answer to [`Request::RelayOpen`] and [`Request::RelayIncoming`]: the circuit is open
    /// within these limits.
    RelayAccepted {
        /// Bytes the circuit may carry, both directions together.
        max_bytes: u64,
        /// How long the circuit may stay open, in milliseconds.
        max_duration_ms: u64,
    },
    /// The request was refused.
    Error {
        /// Why.
        code: ErrorCode,
    },
    /// Answer to [`Request::DialBack`] and [`Request::DialBackVia`]: the probes were sent.
    DialBackSent,
    /// Answer to [`Request::Claim`]: the claim, countersigned.
    Claimed {
        /// Doubly signed.
        claim: Claim,
    },
    /// Answer to [`Request::GetClaims`]: at most [`MAX_CLAIMS_PER_RESPONSE`], newest first.
    Claims {
        /// Each one doubly signed (the requester checks).
        claims: Vec<Claim>,
    },
    /// Answer to [`Request::Kv`].
    Kv(KvResponse),
}

/// Connection-level hello, sent once by each side on its first unidirectional stream.
/// On private networks it carries the membership proofs (see the agent's `tls` module).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// HMAC-SHA256 proofs, one per network key the sender holds (at most 4).
    pub proofs: Vec<[u8; 32]>,
    /// Addresses the sender listens on, at most [`MAX_ADDRS_PER_PEER`].
    pub listen_addrs: Vec<SocketAddr>,
}

/// Why bytes are not a valid frame. Each maps to a bounded metric label.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length prefix announces more than [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    Oversize(usize),
    /// The stream ended inside a frame, or the frame is empty.
    #[error("truncated frame")]
    Truncated,
    /// The version byte is not one this build speaks.
    #[error("unknown protocol version {0}")]
    UnknownVersion(u8),
    /// The body does not decode as the expected message, or breaks a limit.
    #[error("malformed frame body: {0}")]
    Malformed(String),
}

impl DecodeError {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            DecodeError::Oversize(_) => "oversize",
            DecodeError::Truncated => "truncated",
            DecodeError::UnknownVersion(_) => "unknown_version",
            DecodeError::Malformed(_) => "malformed",
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded frame would exceed [`MAX_FRAME_LEN`].
    #[error("message of {0} bytes exceeds the frame limit")]
    TooLarge(usize),
    /// The serializer failed.
    #[error("encode failed: {0}")]
    Serialize(String),
}

/// Limits a decoded message must respect beyond its shape.
pub trait Validate {
    /// `Err` with a reason when a field breaks a limit.
    fn validate(&self) -> Result<(), String>;
}

impl Request {
    /// Bounded label of the request's kind, for spans and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Ping { .. } => "ping",
            Request::FindNode { .. } => "find_node",
            Request::Introduce { .. } => "introduce",
            Request::Echo { .. } => "echo",
            Request::Signal { .. } => "signal",
            Request::RelayOpen { .. } => "relay_open",
            Request::RelayIncoming { .. } => "relay_incoming",
            Request::DialBack { .. } => "dial_back",
            Request::DialBackVia { .. } => "dial_back_via",
            Request::Claim { .. } => "claim",
            Request::GetClaims => "get_claims",
            Request::Kv(KvRequest::Symbols { .. }) => "kv_symbols",
            Request::Kv(KvRequest::Fetch { .. }) => "kv_fetch",
        }
    }
}

impl Validate for Request {
    fn validate(&self) -> Result<(), String> {
        match self {
            Request::Echo { payload } if payload.len() > MAX_ECHO_LEN => {
                Err(format!("echo payload of {} bytes", payload.len()))
            }
            Request::Introduce { max } if usize::from(*max) > MAX_NODES_PER_RESPONSE => {
                Err(format!("introduce max {max}"))
            }
            Request::Signal { hops, .. } if hops.len() > MAX_SIGNAL_HOPS => {
                Err(format!("signal with {} hops", hops.len()))
            }
            Request::Signal { signal, .. } if signal.from_addrs.len() > MAX_ADDRS_PER_PEER => Err(
                format!("signal claims {} addresses", signal.from_addrs.len()),
            ),
            Request::Signal { signal, hops, .. }
                if signal.sig.len() != SIGNATURE_LEN
                    || hops.iter().any(|h| h.sig.len() != SIGNATURE_LEN) =>
            {
                Err("signature of the wrong length".into())
            }
            Request::Claim { claim } if !claim.well_formed() => {
                Err("claim signature of the wrong length".into())
            }
            Request::Kv(KvRequest::Symbols { count, .. })
                if usize::from(*count) > MAX_SYMBOLS_PER_MESSAGE =>
            {
                Err(format!("{count} symbols asked for"))
            }
            Request::Kv(KvRequest::Fetch { want, .. }) if want.len() > MAX_WANT_PER_MESSAGE => {
                Err(format!("{} items asked for", want.len()))
            }
            Request::Kv(KvRequest::Fetch { push, .. })
                if tuple_bytes(push) > MAX_TUPLE_BYTES_PER_MESSAGE =>
            {
                Err("pushed tuples over the message budget".into())
            }
            _ => Ok(()),
        }
    }
}

impl Validate for Response {
    fn validate(&self) -> Result<(), String> {
        match self {
            Response::Nodes { peers } if peers.len() > MAX_NODES_PER_RESPONSE => {
                Err(format!("{} peers in one response", peers.len()))
            }
            Response::SignalAnswer { target_addrs, .. }
                if target_addrs.len() > MAX_ADDRS_PER_PEER =>
            {
                Err(format!("answer claims {} addresses", target_addrs.len()))
            }
            Response::Nodes { peers }
                if peers.iter().any(|p| p.addrs.len() > MAX_ADDRS_PER_PEER) =>
            {
                Err("peer with too many addresses".into())
            }
            Response::Echo { payload } if payload.len() > MAX_ECHO_LEN => {
                Err(format!("echo payload of {} bytes", payload.len()))
            }
            Response::Claims { claims } if claims.len() > MAX_CLAIMS_PER_RESPONSE => {
                Err(format!("{} claims in one response", claims.len()))
            }
            Response::Claimed { claim } if !claim.well_formed() => {
                Err("claim signature of the wrong length".into())
            }
            Response::Claims { claims } if claims.iter().any(|c| !c.well_formed()) => {
                Err("claim signature of the wrong length".into())
            }
            Response::Kv(KvResponse::Symbols { symbols, .. })
                if symbols.len() > MAX_SYMBOLS_PER_MESSAGE =>
            {
                Err(format!("{} symbols in one answer", symbols.len()))
            }
            Response::Kv(KvResponse::Tuples { tuples })
                if tuple_bytes(tuples) > MAX_TUPLE_BYTES_PER_MESSAGE =>
            {
                Err("tuples over the message budget".into())
            }
            _ => Ok(()),
        }
    }
}

/// The message-budget size of `tuples` (signatures and sizes are checked on merge).
fn tuple_bytes(tuples: &[crate::kv::tuple::Tuple]) -> usize {
    tuples.iter().map(crate::kv::sync::tuple_size).sum()
}

impl Validate for Hello {
    fn validate(&self) -> Result<(), String> {
        if self.proofs.len() > 4 {
            return Err(format!("{} proofs", self.proofs.len()));
        }
        if self.listen_addrs.len() > MAX_ADDRS_PER_PEER {
            return Err(format!("{} listen addresses", self.listen_addrs.len()));
        }
        Ok(())
    }
}

/// Encodes `msg` as one complete frame, header included.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0u8; HEADER_LEN];
    out.push(PROTOCOL_VERSION);
    let out = postcard::to_extend(msg, out).map_err(|e| EncodeError::Serialize(e.to_string()))?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(EncodeError::TooLarge(len));
    }
    let mut out = out;
    // `len <= MAX_FRAME_LEN` was checked just above, so it fits in a u32.
    out[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Reads the length prefix and checks it against [`MAX_FRAME_LEN`]. Returns how many bytes
/// follow the header.
pub fn frame_len(header: [u8; HEADER_LEN]) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::Oversize(len));
    }
    if len == 0 {
        return Err(DecodeError::Truncated);
    }
    Ok(len)
}

/// Decodes the part of a frame after its header (version byte and body).
pub fn decode_body<T: DeserializeOwned + Validate>(body: &[u8]) -> Result<T, DecodeError> {
    let (&version, rest) = body.split_first().ok_or(DecodeError::Truncated)?;
    if !(OLDEST_READABLE_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(DecodeError::UnknownVersion(version));
    }
    let (msg, trailing): (T, &[u8]) = postcard::take_from_bytes(rest).map_err(|e| match e {
        postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated,
        other => DecodeError::Malformed(other.to_string()),
    })?;
    if !trailing.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes",
            trailing.len()
        )));
    }
    msg.validate().map_err(DecodeError::Malformed)?;
    Ok(msg)
}

/// Decodes one complete frame, header included.
pub fn decode<T: DeserializeOwned + Validate>(frame: &[u8]) -> Result<T, DecodeError> {
    if frame.len() < HEADER_LEN {
        return Err(DecodeError::Truncated);
    }
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&frame[..HEADER_LEN]);
    let len = frame_len(header)?;
    let body = &frame[HEADER_LEN..];
    match body.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(DecodeError::Truncated),
        std::cmp::Ordering::Greater => Err(DecodeError::Malformed("bytes after frame".into())),
        std::cmp::Ordering::Equal => decode_body(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_node_id() -> impl Strategy<Value = NodeId> {
        any::<[u8; 32]>().prop_map(NodeId)
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            (any::<[u16; 8]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        ]
    }

    fn arb_mode() -> impl Strategy<Value = ConnMode> {
        prop_oneof![
            Just(ConnMode::Direct),
            Just(ConnMode::Punched),
            Just(ConnMode::Relayed)
        ]
    }

    fn arb_nat() -> impl Strategy<Value = NatType> {
        prop::sample::select(NatType::ALL.to_vec())
    }

    fn arb_peer() -> impl Strategy<Value = PeerInfo> {
        (
            arb_node_id(),
            prop::collection::vec(arb_addr(), 0..=MAX_ADDRS_PER_PEER),
            arb_mode(),
            arb_nat(),
        )
            .prop_map(|(id, addrs, mode, nat)| PeerInfo {
                id,
                addrs,
                mode,
                nat,
                live: id.0[0] & 1 == 1,
            })
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            any::<u64>().prop_map(|nonce| Request::Ping { nonce }),
            arb_node_id().prop_map(|target| Request::FindNode { target }),
            (0u8..=32).prop_map(|max| Request::Introduce { max }),
            prop::collection::vec(any::<u8>(), 0..2048)
                .prop_map(|payload| Request::Echo { payload }),
            (
                any::<[u8; 32]>(),
                arb_node_id(),
                any::<u64>(),
                arb_addr(),
                0usize..=4
            )
                .prop_map(|(seed, to, nonce, observed, n)| {
                    let key = crate::signal::SecretKey::from_bytes(seed);
                    let signal = Signal::with_addrs(
                        &key,
                        to,
                        nonce,
                        nonce >> 20,
                        NatType::Cone,
                        vec![observed],
                    );
                    let hops = (0..n)
                        .map(|i| Countersign::new(&key, &signal, i, observed))
                        .collect();
                    let trace = (n % 2 == 0).then_some(TraceContext {
                        trace_id: [seed[0]; 16],
                        span_id: [seed[1]; 8],
                        flags: 1,
                    });
                    Request::Signal {
                        signal,
                        hops,
                        trace,
                    }
                }),
            (
                arb_node_id(),
                proptest::option::of(any::<([u8; 16], [u8; 8], u8)>())
            )
                .prop_map(|(target, t)| Request::RelayOpen {
                    target,
                    trace: t.map(|(trace_id, span_id, flags)| TraceContext {
                        trace_id,
                        span_id,
                        flags
                    }),
                }),
            arb_node_id().prop_map(|from| Request::RelayIncoming { from }),
            (any::<u64>(), any::<bool>())
                .prop_map(|(token, other_port)| Request::DialBack { token, other_port }),
            (any::<u64>(), arb_addr()).prop_map(|(token, to)| Request::DialBackVia { token, to }),
            (any::<[u8; 32]>(), arb_node_id(), any::<u64>()).prop_map(|(seed, b, t)| {
                let key = crate::signal::SecretKey::from_bytes(seed);
                Request::Claim {
                    claim: Claim::offer(&key, b, t),
                }
            }),
            Just(Request::GetClaims),
            (any::<[u8; 32]>(), any::<u64>(), 0u16..=1024).prop_map(|(digest, start, count)| {
                Request::Kv(KvRequest::Symbols {
                    digest,
                    start,
                    count,
                })
            }),
            (prop::collection::vec(any::<[u8; 32]>(), 0..8), 0usize..3).prop_map(|(want, n)| {
                Request::Kv(KvRequest::Fetch {
                    want,
                    push: arb_tuples(n),
                })
            }),
        ]
    }

    fn arb_tuples(n: usize) -> Vec<crate::kv::tuple::Tuple> {
        let key = crate::signal::SecretKey::from_bytes([3; 32]);
        (0..n)
            .map(|i| {
                crate::kv::tuple::Tuple::sign(&key, "net", &format!("k{i}"), "v", i as u64)
                    .expect("within limits")
            })
            .collect()
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            (any::<u64>(), prop::option::of(arb_addr()), arb_nat()).prop_map(
                |(nonce, observed, nat)| Response::Pong {
                    nonce,
                    observed,
                    nat
                }
            ),
            (
                arb_nat(),
                prop::option::of(arb_addr()),
                prop::option::of(arb_node_id())
            )
                .prop_map(|(target_nat, target_addr, via)| Response::SignalAnswer {
                    target_nat,
                    target_addr,
                    target_addrs: target_addr.into_iter().collect(),
                    via
                }),
            (any::<u64>(), any::<u64>()).prop_map(|(max_bytes, max_duration_ms)| {
                Response::RelayAccepted {
                    max_bytes,
                    max_duration_ms,
                }
            }),
            prop::collection::vec(arb_peer(), 0..=MAX_NODES_PER_RESPONSE)
                .prop_map(|peers| Response::Nodes { peers }),
            prop::collection::vec(any::<u8>(), 0..2048)
                .prop_map(|payload| Response::Echo { payload }),
            prop_oneof![
                Just(ErrorCode::BadRequest),
                Just(ErrorCode::Busy),
                Just(ErrorCode::Forbidden),
                Just(ErrorCode::NoRoute),
                Just(ErrorCode::RateLimited),
                Just(ErrorCode::Refused)
            ]
            .prop_map(|code| Response::Error { code }),
            Just(Response::DialBackSent),
            (
                any::<[u8; 32]>(),
                any::<[u8; 32]>(),
                any::<u64>(),
                0usize..=3
            )
                .prop_map(|(sa, sb, t, n)| {
                    let (ka, kb) = (
                        crate::signal::SecretKey::from_bytes(sa),
                        crate::signal::SecretKey::from_bytes(sb),
                    );
                    let mut claim = Claim::offer(&ka, kb.node_id(), t);
                    claim.countersign(&kb);
                    if n == 0 {
                        Response::Claimed { claim }
                    } else {
                        Response::Claims {
                            claims: vec![claim; n],
                        }
                    }
                }),
            (
                any::<[u8; 32]>(),
                prop::collection::vec((any::<[u8; 32]>(), any::<u64>(), any::<i64>()), 0..16)
            )
                .prop_map(|(digest, s)| Response::Kv(KvResponse::Symbols {
                    digest,
                    symbols: s
                        .into_iter()
                        .map(|(sum, checksum, count)| crate::kv::riblt::CodedSymbol {
                            sum,
                            checksum,
                            count
                        })
                        .collect(),
                })),
            (0usize..4).prop_map(|n| Response::Kv(KvResponse::Tuples {
                tuples: arb_tuples(n)
            })),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(req in arb_request()) {
            let frame = encode(&req).expect("encodes");
            prop_assert_eq!(decode::<Request>(&frame), Ok(req));
        }

        #[test]
        fn responses_round_trip(resp in arb_response()) {
            let frame = encode(&resp).expect("encodes");
            prop_assert_eq!(decode::<Response>(&frame), Ok(resp));
        }

        #[test]
        fn hellos_round_trip(proofs in prop::collection::vec(any::<[u8; 32]>(), 0..=4),
                             listen_addrs in prop::collection::vec(arb_addr(), 0..=5)) {
            let hello = Hello { proofs, listen_addrs };
            let frame = encode(&hello).expect("encodes");
            prop_assert_eq!(decode::<Hello>(&frame), Ok(hello));
        }

        #[test]
        fn every_truncation_is_an_error(resp in arb_response(), cut in any::<prop::sample::Index>()) {
            let frame = encode(&resp).expect("encodes");
            let cut = cut.index(frame.len());
            prop_assert!(decode::<Response>(&frame[..cut]).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
            let _ = decode::<Hello>(&bytes);
        }
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let header = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert_eq!(
            frame_len(header),
            Err(DecodeError::Oversize(MAX_FRAME_LEN + 1))
        );
        let big = Request::Echo {
            payload: vec![0; MAX_FRAME_LEN],
        };
        assert!(matches!(encode(&big), Err(EncodeError::TooLarge(_))));
    }

    #[test]
    fn unknown_version_is_named() {
        let mut frame = encode(&Request::Ping { nonce: 1 }).expect("encodes");
        frame[HEADER_LEN] = 99;
        assert_eq!(
            decode::<Request>(&frame),
            Err(DecodeError::UnknownVersion(99))
        );
    }

    #[test]
    fn version_2_frames_still_decode() {
        let mut frame = encode(&Request::Ping { nonce: 7 }).expect("encodes");
        frame[HEADER_LEN] = 2;
        assert_eq!(decode::<Request>(&frame), Ok(Request::Ping { nonce: 7 }));
        frame[HEADER_LEN] = 1;
        assert_eq!(
            decode::<Request>(&frame),
            Err(DecodeError::UnknownVersion(1))
        );
    }

    #[test]
    fn limits_are_enforced_on_decode() {
        // An echo payload just over the limit still fits a frame, so validation must catch it.
        let req = Request::Echo {
            payload: vec![1; MAX_ECHO_LEN + 1],
        };
        let frame = encode(&req).expect("fits in a frame");
        assert!(matches!(
            decode::<Request>(&frame),
            Err(DecodeError::Malformed(_))
        ));
        let mut frame = encode(&Request::Ping { nonce: 1 }).expect("encodes");
        frame.push(0);
        assert!(decode::<Request>(&frame).is_err());
    }
}
