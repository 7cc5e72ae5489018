//! The chaos engine: faults, targeting, seeded schedules, probes, SLO verdicts and reports.
//!
//! Module map, pure first:
//! - [`spec`]: the `chaos:` section of a scenario (faults, probes, SLOs), validated with
//!   line:col errors against the agents of the scenario's plan by [`check`];
//! - [`select`]: the plan's agents as fault targets, selectors (site, NAT type, role, name
//!   glob, label) and modes (one, all, fixed N, percent), with a seeded choice; [`rng`]: the
//!   small stable PRNG behind every seeded decision;
//! - [`schedule`]: the fault timeline (at T, every interval with a duration, probability),
//!   the same for the same scenario and seed, and the check for contradictory overlaps;
//! - [`fault`]: what one fault occurrence does, as inject and heal [`fault::Action`]s (nft
//!   text tagged with the run id, tc commands, signals, agent API calls);
//! - [`report`]: what a finished run found ([`report::RunReport`]) and its Markdown, JSON and
//!   self-contained HTML (SVG charts).
//!
//! Touching the system, always through a [`crate::lab::Lab`]: [`exec`] carries actions out
//! and keeps the run's fault state file; [`probe`] asks agents and Prometheus; [`metrics`]
//! serves the controller's `/metrics`; [`run`] is the `chaosnet run` sequence on a lab that
//! is up.
//!
//! Not here: building the lab or starting agents (see [`crate::lab`]).

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

use crate::plan::Plan;
use crate::scenario::{Pos, Problem, Scenario, ScenarioError, Source};

/// The scenario's `chaos:` section, checked against the agents of its plan, and its
/// timeline drawn with the scenario's seed (which also finds contradictory overlaps). A
/// problem is reported as `file:line:col`, as a scenario problem is. A scenario without
/// `chaos:` gives the default (empty) section.
///
/// # Errors
/// [`ScenarioError::Invalid`] with [`Problem::Chaos`], at the offending value.
pub fn check(
    scenario: &Scenario,
    plan: &Plan,
) -> Result<(spec::ChaosSpec, schedule::Timeline), ScenarioError> {
    check_targets(scenario, &select::targets(plan), |_| {})
}

/// [`check`] against a list of agents rather than a plan (the simulator's agents, which no
/// lab plan could hold), with `adjust` applied to the checked section before the timeline is
/// drawn (the simulator's `--duration-s`).
///
/// # Errors
/// As [`check`].
pub fn check_targets(
    scenario: &Scenario,
    targets: &[select::Target],
    adjust: impl FnOnce(&mut spec::ChaosSpec),
) -> Result<(spec::ChaosSpec, schedule::Timeline), ScenarioError> {
    let err = |at: spec::At, message: String| ScenarioError::Invalid {
        at: Source {
            file: scenario.file.clone(),
            pos: (at.line > 0).then_some(Pos {
                line: at.line,
                column: at.column,
            }),
        },
        problem: Problem::Chaos(message),
    };
    let mut chaos = match &scenario.chaos {
        None => spec::ChaosSpec::default(),
        Some(raw) => spec::validate(raw.clone(), targets).map_err(|e| err(e.at, e.message))?,
    };
    adjust(&mut chaos);
    let timeline =
        schedule::timeline(&chaos, targets, scenario.seed).map_err(|e| err(e.at, e.message))?;
    Ok((chaos, timeline))
}
