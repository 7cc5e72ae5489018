//! Sans-io protocol core of the chaosnet agent.
//!
//! This crate holds every protocol decision the agent makes: the Kademlia node graph
//! ([`graph`]), iterative lookups, bootstrap, peer exchange, RTT and uptime bookkeeping,
//! peer choice and the autonomous task scheduler ([`node`]), and the versioned wire codec
//! ([`wire`]). It also ships a deterministic virtual-time harness ([`sim`]) that drives many
//! nodes over a seeded in-memory network.
//!
//! It does **not** touch the world: no sockets, no tokio, no clock and no OS randomness.
//! Time comes in as [`Time`] arguments, randomness from a seed in [`NodeConfig`], and I/O
//! leaves as [`Output`] values that a shell (the `chaosnet-agent` crate, or [`sim`]) carries out.
//! The driving contract is documented on [`Node`].

pub mod graph;
pub mod id;
pub mod node;
pub mod reach;
pub mod signal;
pub mod sim;
pub mod time;
pub mod wire;

pub use graph::{Contact, GraphChange};
pub use id::{NodeId, ParseNodeIdError};
pub use node::{
    Activity, ActivityKind, Command, CommandId, CommandResult, ConnInfo, Connected, Event, Failure,
    InboundId, Node, NodeConfig, Output, RequestId, TaskKind, TaskOutcome, TaskWeights,
};
pub use reach::{ConnMode, NatType};
pub use time::Time;
pub use wire::{Request, Response};
