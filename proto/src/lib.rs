//! Sans-io protocol core of the chaosnet agent.
//!
//! This crate holds every protocol decision the agent makes: the Kademlia node graph
//! ([`RoutingTable`]), iterative lookups, bootstrap, peer exchange, RTT and uptime
//! bookkeeping, peer choice, connecting (direct, signalled punch, relay) and the autonomous
//! task scheduler ([`Node`]), the signed punch signals ([`Signal`]), the versioned wire
//! codec ([`encode`], [`decode`]) and the framing of datagrams on relay circuits
//! ([`CircuitDecoder`]).
//!
//! It does **not** touch the world: no sockets, no tokio, no clock and no OS randomness.
//! Time comes in as [`Time`] arguments, randomness from a seed in [`NodeConfig`], and I/O
//! leaves as [`Output`] values that a shell carries out: the `chaosnet-agent` crate over
//! QUIC, or the `chaosnet-sim` crate over a seeded virtual network. The driving contract is
//! documented on [`Node`].
//!
//! The modules are private and everything a shell needs is re-exported here, except
//! [`kv`] (signed key-value sync over Rateless IBLT), whose names (`Encoder`, `Step`) only
//! read well qualified.

mod circuit;
mod claim;
mod graph;
mod id;
pub mod kv;
mod node;
mod reach;
mod signal;
mod time;
mod wire;

pub use circuit::{CIRCUIT_PREFIX_LEN, CircuitDecoder, MAX_CIRCUIT_DATAGRAM, frame_datagram};
pub use claim::{Claim, ClaimRefusal};
pub use graph::{BUCKETS, Contact, GraphChange, Observed, RoutingTable};
pub use id::{NodeId, ParseNodeIdError};
pub use node::{
    Activity, ActivityKind, Attempt, ClaimOutcome, Command, CommandId, CommandResult, ConnInfo,
    Connected, Event, Failure, InboundId, LinkImpairment, Node, NodeConfig, NodeEvent, Output,
    Path, PunchLimits, PunchPlan, RelayEvent, RelayLimits, RequestId, SignalOutcome, TaskKind,
    TaskOutcome, TaskWeights,
};
pub use reach::{ConnMode, Filtering, NatType};
pub use signal::{
    BirthdayRole, Countersign, MAX_SIGNAL_HOPS, RateLimiter, ReplayCache, SIGNATURE_LEN, SecretKey,
    Signal, SignalRefusal, Strategy, check_chain, strategy, verify,
};
pub use time::Time;
pub use wire::{
    DecodeError, EncodeError, ErrorCode, HEADER_LEN, Hello, MAX_ADDRS_PER_PEER,
    MAX_CLAIMS_PER_RESPONSE, MAX_ECHO_LEN, MAX_FRAME_LEN, MAX_NODES_PER_RESPONSE,
    OLDEST_READABLE_VERSION, PROTOCOL_VERSION, PeerInfo, Request, Response, TraceContext, Validate,
    decode, decode_body, encode, frame_len,
};
