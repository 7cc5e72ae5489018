//! Signed key-value-version sync (Rapprochement stage 1): tuples signed by their authors,
//! one replica per node, and reconciliation of replicas over Rateless IBLT.
//!
//! - [`tuple`]: the signed tuple, its checks and the rule that picks a winner per key.
//! - [`set`]: the replica, with its order-independent digest.
//! - [`riblt`]: the rateless code itself, over 32-byte items.
//! - [`sync`]: one session between two replicas, as requests and answers.
//!
//! Pure, like the rest of the core: no storage, no sockets, no clock.

pub mod riblt;
pub mod set;
pub mod sync;
pub mod tuple;
