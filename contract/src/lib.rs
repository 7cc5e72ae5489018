//! The contract between the chaosnet controller and its agents, defined once and used by
//! both sides: what the controller puts on an agent's command line, and the JSON bodies of
//! the agent's control API that the controller reads or sends.
//!
//! - [`TaskWeights`]: the weights of the agent's autonomous tasks (`--task-weights`, the
//!   scenario's `agent.task_weights`, and the core's configuration).
//! - [`AgentArgs`] (feature `cli`, on by default): the flags of `chaosnet-agent run`, a clap
//!   [`clap::Args`] that also renders itself back to argv ([`AgentArgs::to_args`]), so the
//!   agent parses exactly what the controller renders; [`parse_command_line`] is the exit-code
//!   convention of both binaries' command lines.
//! - [`api`]: the bodies of `GET /status`, `POST /connect`, `POST /lookup`,
//!   `GET|PUT /impairment` and the error body every route answers with.
//!
//! What it does not do: any I/O, HTTP or async (no tokio): it is plain serde types, so the
//! sans-io core can use [`TaskWeights`] (with `default-features = false`, without clap).

pub mod api;
#[cfg(feature = "cli")]
mod args;
mod weights;

#[cfg(feature = "cli")]
pub use args::{AgentArgs, DEFAULT_TASK_WEIGHTS, RUN_SUBCOMMAND, parse_command_line};
pub use weights::{ParseWeightsError, TaskWeights};
