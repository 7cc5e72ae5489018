//! `chaosnet run` on a lab that is up: warm-up, faults on schedule with probes running,
//! final heal, settle, end probes, verdicts, report.
//!
//! [`prepare`] loads a scenario and checks its `chaos:` section against the agents of its
//! plan (before anything exists); [`run`] drives a [`Lab`] through the seeded
//! [`Timeline`] (`drive`) and judges the SLOs ([`judge`]). Everything that happens is
//! appended to `<run dir>/events.jsonl`; the report goes to `<run dir>/report.{md,json,html}`.
//!
//! Exit codes (see [`Outcome::exit_code`]): 0 every SLO held, 1 an SLO failed, 2 the run could
//! not happen (bad scenario, the lab did not come up, a fault could not be injected). After
//! an inject failure every injected fault is healed before the caller takes the lab down.
//!
//! What it does not do: bring the lab up or down (the caller does, through [`Lab`]), or handle
//! Ctrl-C specially. A run interrupted mid-way leaves its faults recorded in `faults.json`:
//! `chaosnet heal --all` removes them, `chaosnet down` removes the whole run with them.

mod drive;
pub mod judge;

use std::path::Path;

use super::report::RunReport;
use super::schedule::Timeline;
use super::spec::ChaosSpec;
use crate::lab::Lab;
use crate::plan::RunId;
use crate::scenario::Scenario;

/// How to drive a run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The lab was started with monitoring: the controller's `/metrics` becomes a target of
    /// the run's Prometheus while the run lasts.
    pub monitor: bool,
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// It ran; the report says whether it passed.
    Finished(Box<RunReport>),
    /// It could not happen.
    Failed(String),
}

impl Outcome {
    /// 0 pass, 1 an SLO failed, 2 the run could not happen.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Finished(r) if r.pass => 0,
            Outcome::Finished(_) => 1,
            Outcome::Failed(_) => 2,
        }
    }
}

/// A scenario ready to run: its `chaos:` section checked and its timeline drawn.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The scenario, with the seed override applied.
    pub scenario: Scenario,
    /// Its checked `chaos:` section.
    pub chaos: ChaosSpec,
    /// Its fault timeline (seeded).
    pub timeline: Timeline,
}

/// Loads the scenario with the seed override, checks its `chaos:` section against the
/// agents of its plan and draws its timeline. Creates nothing. (The timeline names agents,
/// which do not depend on the run id or the runtimes, so a provisional plan decides it.)
///
/// # Errors
/// The scenario's problem, as `file:line:col: message`.
pub fn prepare(path: &Path, seed: Option<u64>) -> Result<Prepared, String> {
    let mut scenario = Scenario::load(path).map_err(|e| e.to_string())?;
    if let Some(n) = seed {
        scenario.seed = n;
    }
    let plan =
        crate::planner::plan(&scenario, &RunId("000000".into())).map_err(|e| e.to_string())?;
    let (chaos, timeline) = super::check(&scenario, &plan).map_err(|e| e.to_string())?;
    Ok(Prepared {
        scenario,
        chaos,
        timeline,
    })
}

/// Prints the timeline compactly (stderr).
pub fn print_timeline(tl: &Timeline) {
    eprintln!(
        "chaosnet: fault timeline (seed {}, {} occurrences, phase {:.1} s):",
        tl.seed,
        tl.occurrences.len(),
        tl.phase_ms as f64 / 1000.0
    );
    for o in &tl.occurrences {
        let end = o.end_ms.map_or("final heal".to_string(), |e| {
            format!("{:.1} s", e as f64 / 1000.0)
        });
        let mut who = o.targets.join(",");
        // Agent names are ASCII (the scenario validates them), so byte slicing is safe.
        if who.len() > 60 {
            who = format!("{}... ({} targets)", &who[..57], o.targets.len());
        }
        eprintln!(
            "  #{:<3} {:>7.1} s -> {:<10} {:<10} {:<16} {who}",
            o.id,
            o.start_ms as f64 / 1000.0,
            end,
            o.kind.name(),
            o.fault
        );
    }
}

/// Drives the prepared scenario on `lab` (which is up, its agents joined) and writes the
/// report. Every fault is healed when it returns; the lab stays up.
pub fn run(lab: &Lab, prepared: &Prepared, opts: &RunOptions) -> Outcome {
    drive::drive(lab, prepared, opts)
}
