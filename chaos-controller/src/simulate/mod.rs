//! `chaosnet sim`: a scenario run in virtual time, on the protocol cores alone.
//!
//! The same scenario file as `chaosnet run`: its sites and NAT types become the seeded NAT
//! models of `chaosnet-sim` (conntrack `udp_s` as the mapping timeout), its agents become
//! cores with the lab's names, node keys, rng seeds and settings, and its `chaos:` section is
//! checked and drawn into the same fault timeline. [`drive`] runs join, warm-up, faults,
//! settle and the end round in virtual time and judges the SLOs with the lab's judge, so the
//! report (reachability over time, the NAT-pair matrix, recovery per fault, verdicts) and the
//! exit codes (0 pass, 1 an SLO failed, 2 the run could not happen) are `run`'s.
//!
//! Modules: [`build`] (scenario -> world), [`drive`] (the virtual-time run), [`matrix`] (the
//! cold NAT-pair matrix of `chaosnet matrix --cold`, in virtual time).
//!
//! What it does not do: QUIC, sockets, the agent's shell (RocksDB, the control API), or
//! PromQL SLOs (there is no Prometheus; they are left out, with a warning). Bandwidth
//! limits and address changes have no model and are recorded as not simulated. The same seed
//! gives the same run, event for event ([`drive::Simulated::digest`], the event log).

pub mod build;
pub mod drive;
pub mod matrix;

use std::path::Path;
use std::time::Instant;

use indicatif::ProgressBar;
use serde::Serialize;

use crate::chaos::spec::ProbeKind;
use crate::scenario::{ScaleError, Scenario};
use drive::{Counts, Inputs, Interval, Simulated};

/// Most agents a simulated run takes (seeds included): memory, not addresses, bounds it.
pub const MAX_SIM_AGENTS: usize = 100_000;

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct SimOptions {
    /// Scale the site agents to this many (`--agents`), up to [`MAX_SIM_AGENTS`]: more sites
    /// rather than bigger ones ([`Scenario::grow_sites`]).
    pub agents: Option<usize>,
    /// Length of the fault phase, seconds (`--duration-s`); default the scenario's
    /// `chaos.duration_s`.
    pub duration_s: Option<u64>,
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Print injections, heals and rounds to stderr.
    pub verbose: bool,
}

/// Why a simulated run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario (or its `chaos:` section) is invalid; `file:line:col: message`.
    #[error("{0}")]
    Scenario(String),
    /// `--agents` cannot be honoured.
    #[error(transparent)]
    Scale(#[from] ScaleError),
    /// `--duration-s 0`.
    #[error("--duration-s must be at least 1")]
    ZeroDuration,
}

/// The JSON summary of a simulated run (`chaosnet sim --json`, the Python module's dict).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Seed used.
    pub seed: u64,
    /// Agents simulated, seeds included.
    pub agents: usize,
    /// Agents that had joined when the join phase ended.
    pub joined: usize,
    /// Virtual time simulated, seconds.
    pub virtual_s: f64,
    /// Wall time of the run, seconds.
    pub wall_s: f64,
    /// Virtual seconds per wall second.
    pub speedup: f64,
    /// Autonomous lookups that found their target.
    pub lookups_ok: u64,
    /// Autonomous lookups that ended.
    pub lookups_total: u64,
    /// Mean hops of every lookup (any origin).
    pub lookup_hops_mean: f64,
    /// Connection paths that connected, by mode.
    pub connects: std::collections::BTreeMap<String, u64>,
    /// Connection paths that failed, by mode.
    pub connect_failures: std::collections::BTreeMap<String, u64>,
    /// Autonomous tasks by kind: [ok, all].
    pub tasks: std::collections::BTreeMap<String, (u64, u64)>,
    /// The most relay circuits one node opened.
    pub max_circuits_per_relay: u64,
    /// Peak resident memory of this process, bytes (`VmHWM`; 0 where unknown).
    pub peak_rss_bytes: u64,
    /// Probe rounds.
    pub rounds: usize,
    /// Reachability of the end round.
    pub reachability_end: f64,
    /// Every SLO held.
    pub pass: bool,
    /// The verdicts: SLO, pass, message.
    pub verdicts: Vec<(String, bool, String)>,
    /// Fault kinds recorded but not simulated.
    pub not_simulated: Vec<String>,
    /// The world's digest of every core event (hex): equal digests, equal runs.
    pub digest: String,
}

/// A finished simulated run.
pub struct SimRun {
    /// The summary.
    pub summary: Summary,
    /// Per probe round.
    pub series: Vec<Interval>,
    /// Everything else (the report, the event log).
    pub simulated: Simulated,
}

impl SimRun {
    /// 0 every SLO held, 1 one failed (as `chaosnet run`).
    pub fn exit_code(&self) -> u8 {
        if self.summary.pass { 0 } else { 1 }
    }

    /// Writes the report (Markdown, JSON, HTML), `events.jsonl`, `series.json`,
    /// `summary.json` and the fleet's `metrics.prom` into `dir`; returns the paths written.
    ///
    /// # Errors
    /// The first file that could not be written.
    pub fn write(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        std::fs::create_dir_all(dir)?;
        let mut paths = crate::chaos::report::write_all(dir, &self.simulated.report)?;
        for (name, text) in [
            ("events.jsonl", self.simulated.log.clone()),
            ("series.json", pretty(&self.series)),
            ("summary.json", pretty(&self.summary)),
            ("metrics.prom", self.simulated.metrics.clone()),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, text)?;
            paths.push(p.display().to_string());
        }
        Ok(paths)
    }
}

fn pretty<T: Serialize>(v: &T) -> String {
    // Plain data (strings, numbers, maps with string keys) always serializes.
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Peak resident memory of this process, bytes (0 where `/proc` has no answer).
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// The scenario with the options applied, its world, and its checked chaos section and
/// timeline (PromQL SLOs removed: there is no Prometheus to ask). Creates nothing.
///
/// # Errors
/// A bad scenario, `--agents` or `--duration-s`.
pub fn prepare(
    mut scenario: Scenario,
    opts: &SimOptions,
) -> Result<
    (
        Scenario,
        build::Built,
        crate::chaos::spec::ChaosSpec,
        crate::chaos::schedule::Timeline,
        Vec<String>,
    ),
    SimError,
> {
    if let Some(s) = opts.seed {
        scenario.seed = s;
    }
    if let Some(n) = opts.agents {
        scenario.grow_sites(n, MAX_SIM_AGENTS)?;
    }
    if opts.duration_s == Some(0) {
        return Err(SimError::ZeroDuration);
    }
    let built = build::build(&scenario, scenario.seed);
    let targets = built.targets(&scenario);
    let (mut chaos, timeline) = crate::chaos::check_targets(&scenario, &targets, |c| {
        if let Some(s) = opts.duration_s {
            c.duration_ms = s.saturating_mul(1000);
        }
    })
    .map_err(|e| SimError::Scenario(e.to_string()))?;
    let mut skipped = Vec::new();
    chaos.slos.retain(|s| {
        let promql = matches!(s.probe, ProbeKind::Promql { .. });
        if promql {
            skipped.push(s.name.clone());
        }
        !promql
    });
    Ok((scenario, built, chaos, timeline, skipped))
}

/// Runs `scenario` in virtual time (see the module docs).
///
/// # Errors
/// As [`prepare`]: nothing ran.
pub fn run(scenario: Scenario, opts: &SimOptions) -> Result<SimRun, SimError> {
    let wall = Instant::now();
    let (scenario, built, chaos, timeline, skipped) = prepare(scenario, opts)?;
    for s in &skipped {
        eprintln!(
            "chaosnet: warning: SLO {s:?} is a PromQL query; the simulator has no Prometheus, so it is not judged"
        );
    }
    let agents = built.agents.len();
    let progress = if opts.progress {
        crate::cli::bar(0, "virtual ms")
    } else {
        ProgressBar::hidden()
    };
    let inputs = Inputs {
        scenario: &scenario,
        chaos: &chaos,
        timeline: &timeline,
        progress,
        verbose: opts.verbose,
    };
    let simulated = drive::drive(&inputs, built);
    for k in &simulated.not_simulated {
        eprintln!(
            "chaosnet: warning: {k} faults have no model in the simulator; they were recorded, not applied"
        );
    }
    let wall_s = wall.elapsed().as_secs_f64();
    let t: &Counts = &simulated.totals;
    let r = &simulated.report;
    let virtual_s = simulated.virtual_ms as f64 / 1000.0;
    let summary = Summary {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        agents,
        joined: simulated.joined,
        virtual_s,
        wall_s,
        speedup: if wall_s > 0.0 {
            virtual_s / wall_s
        } else {
            0.0
        },
        lookups_ok: t.lookups_ok,
        lookups_total: t.lookups_total,
        lookup_hops_mean: if t.lookups_any == 0 {
            0.0
        } else {
            t.lookup_hops as f64 / t.lookups_any as f64
        },
        connects: t.connects.clone(),
        connect_failures: t.connect_failures.clone(),
        tasks: t.tasks.clone(),
        max_circuits_per_relay: simulated.max_circuits_per_relay,
        peak_rss_bytes: peak_rss_bytes(),
        rounds: r.rounds.len(),
        reachability_end: r.rounds.last().map_or(0.0, |x| x.reach()),
        pass: r.pass,
        verdicts: r
            .verdicts
            .iter()
            .map(|v| (v.slo.clone(), v.pass, v.message.clone()))
            .collect(),
        not_simulated: simulated.not_simulated.clone(),
        digest: format!("{:016x}", simulated.digest),
    };
    Ok(SimRun {
        summary,
        series: simulated.series.clone(),
        simulated,
    })
}

/// Joins `scenario`'s world and measures its cold NAT-pair matrix (see [`matrix`]).
///
/// # Errors
/// As [`prepare`].
pub fn run_matrix(
    scenario: Scenario,
    opts: &SimOptions,
    progress: &dyn Fn(&crate::matrix::Row),
) -> Result<Vec<crate::matrix::Row>, SimError> {
    let (scenario, mut built, _, _, _) = prepare(scenario, opts)?;
    let last = built.start_all();
    let mut counts = Counts::default();
    let metrics = chaosnet_metrics::Metrics::new(&scenario.network.to_string());
    drive::join(
        &mut built,
        last,
        &mut counts,
        &metrics,
        &ProgressBar::hidden(),
    );
    Ok(matrix::measure(&scenario, &mut built, progress))
}
