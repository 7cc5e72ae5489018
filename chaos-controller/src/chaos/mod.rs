//! The chaos engine: faults, targeting, seeded schedules, probes, SLO verdicts and reports.
//!
//! Module map, pure first:
//! - [`spec`]: the `chaos:` section of a scenario (faults, probes, SLOs), validated with
//!   line:col errors by [`crate::scenario`];
//! - [`select`]: selectors (site, NAT type, role, name glob, label) and modes (one, all,
//!   fixed N, percent), with a seeded choice; [`rng`]: the small stable PRNG behind every
//!   seeded decision;
//! - [`schedule`]: the fault timeline (at T, every interval with a duration, probability),
//!   the same for the same scenario and seed, and the check for contradictory overlaps;
//! - [`fault`]: what one fault occurrence does, as inject and heal [`fault::Action`]s (nft
//!   text tagged with the run id, tc commands, signals, agent API calls);
//! - [`report`]: Markdown, JSON and self-contained HTML (SVG charts) of a finished run.
//!
//! Touching the system: [`exec`] carries actions out and keeps the run's fault state file;
//! [`probe`] asks agents and Prometheus; [`metrics`] serves the controller's `/metrics`;
//! [`run`] is the `chaosnet run` sequence.
//!
//! Not here: building the lab or starting agents (`chaosnet up` does that; `run` drives it).

pub mod exec;
pub mod fault;
pub mod metrics;
pub mod probe;
pub mod report;
pub mod rng;
pub mod run;
pub mod schedule;
pub mod select;
pub mod spec;
