//! The chaosnet controller: scenario -> plan -> lab (apply + runtimes) -> faults, probes,
//! verdicts.
//!
//! Module map:
//! - [`scenario`]: the YAML scenario file (raw serde layer, validation, errors with
//!   line:col); [`plan`]: the plan data types (pure) and the run's vocabulary (agent names,
//!   the seeds' site, NAT type names); [`planner`] turns a scenario into a plan; [`nat`]
//!   renders the nftables templates of `netns-scripts/`.
//! - [`apply`]: carries a plan's network out as root (namespaces, links, sysctls, nft) and
//!   tears runs down, idempotently, by name prefix; runs network tools in namespaces.
//! - [`runtime`]: how agents run (processes in their namespaces, Docker containers wired
//!   into the same namespaces), behind one trait; [`lab`]: one run's lab (its plan, its
//!   fleet under those runtimes, its directory) that every command goes through.
//! - [`chaos`]: the fault engine, probes, SLO verdicts and reports (`chaosnet run`);
//!   [`matrix`]: the NAT-pair connectivity matrix (theory, judging, measuring).
//! - [`simulate`]: `chaosnet sim`, a scenario in virtual time on the protocol cores
//!   (`chaosnet-sim`), with the same timeline, verdicts and report as a lab run.
//! - [`monitor`]: Prometheus, Grafana and the scrape proxy of a run.
//! - [`http`]: the one HTTP/1.1 client (and server halves) of the controller;
//!   [`agentapi`]: the agents' control API, typed by `chaosnet-contract`.
//! - [`events`]: following the agents' node event streams (`chaosnet events`).
//! - [`cli`]: the `chaosnet` command line, one file per command group.
//!
//! Nothing outside `apply`, `runtime`, `lab`, `monitor`, `http`, the measuring halves of
//! `chaos` and `matrix`, and `cli` touches the system.

pub mod agentapi;
pub mod apply;
pub mod chaos;
pub mod cli;
pub mod events;
pub mod http;
pub mod lab;
pub mod matrix;
pub mod monitor;
pub mod nat;
pub mod plan;
pub mod planner;
pub mod runtime;
pub mod scenario;
pub mod simulate;
