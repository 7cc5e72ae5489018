//! The chaosnet agent: the tokio + quinn shell around the sans-io [`chaosnet_proto`] core.
//!
//! Module map:
//! - [`identity`]: the node's Ed25519 key on disk; NodeId = public key.
//! - [`tls`]: rustls configs bound to that key, ALPN per network, private-network proofs.
//! - [`socket`]: the `AsyncUdpSocket` seam under quinn (impairments, probe packets, counters).
//! - [`store`]: the node graph persisted in RocksDB.
//! - [`transport`]: dialing, accepting, hellos, request streams; [`punch`]: hole punching
//!   and birthday probing on the QUIC socket; [`relay`]: relay circuits.
//! - [`driver`]: the task that owns the core; [`api`]: the control API, [`api_access`]: who
//!   may reach it (its metrics come from the `chaosnet-metrics` crate, shared with the
//!   simulator); [`events`]: the node events stream (`GET /events`); [`mdns`]: local
//!   discovery.
//! - [`network`]: the data dir's network, and a private network's key files at run time.
//!
//! The shell owns no protocol decisions: it feeds inputs to the core and carries out its
//! outputs. Everything here touches the world; nothing in `chaosnet_proto` does.

pub mod api;
pub mod api_access;
pub mod cli;
pub mod driver;
pub mod events;
pub mod identity;
pub mod mdns;
pub mod network;
pub mod punch;
pub mod relay;
pub mod socket;
pub mod store;
pub mod tls;
pub mod transport;
