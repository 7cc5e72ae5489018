//! The chaosnet controller: scenario -> plan -> apply.
//!
//! Module map:
//! - [`scenario`]: the YAML scenario file, parsed and validated with line:col errors.
//! - [`plan`]: the plan data types (pure); [`planner`] turns a scenario into a plan;
//!   [`nat`] renders the nftables templates of `netns-scripts/`.
//! - [`apply`]: carries a plan out as root (namespaces, links, sysctls, nft) and tears runs
//!   down, idempotently, from a state file or by name prefix.
//!
//! - [`matrix`]: the NAT-pair connectivity matrix (theory, judging, measuring).
//! - [`chaos`]: the fault engine, probes, SLO verdicts and reports (`chaosnet run`).
//! - [`runtime`]: how agents run (processes in their namespaces, or Docker containers wired
//!   into the same namespaces; kube later).
//! - [`monitor`]: Prometheus config and the scrape proxy; [`agentapi`]: HTTP over the agents'
//!   unix sockets; [`cli`]: the `chaosnet` command line.
//!
//! Nothing outside `apply`, `runtime`, `monitor`, `agentapi`, `matrix::measure` and `cli`
//! touches the system.

pub mod agentapi;
pub mod apply;
pub mod chaos;
pub mod cli;
pub mod events;
pub mod matrix;
pub mod monitor;
pub mod nat;
pub mod plan;
pub mod planner;
pub mod runtime;
pub mod scenario;
