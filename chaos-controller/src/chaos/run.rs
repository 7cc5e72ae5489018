//! `chaosnet run`: up, warm-up, faults on schedule with probes running, final heal, settle,
//! end probes, verdicts, report, down.
//!
//! The lab is brought up by running this binary's own `up` (so `run` gets exactly what `up`
//! builds, with its progress output and join check), then the fleet is adopted from the run's
//! state file. Faults follow the seeded [`Timeline`]; a probe thread runs a [`Round`] every
//! `probe_interval_s` while faults run and while the run settles. Everything that happens is
//! appended to `<run dir>/events.jsonl`; the report goes to `<run dir>/report.{md,json,html}`.
//!
//! Exit codes (see [`Outcome::exit_code`]): 0 every SLO held, 1 an SLO failed, 2 the run could
//! not happen (bad scenario, `up` failed, a fault could not be injected). After an inject
//! failure or a probe-independent error every injected fault is healed before `down`.
//!
//! What it does not do: handle Ctrl-C specially. A run interrupted mid-way leaves its faults
//! recorded in `faults.json`: `chaosnet heal --all` removes them, `chaosnet down` removes
//! the whole run with them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::exec::Executor;
use super::fault::{self, FaultPlan};
use super::metrics::{ChaosMetrics, FaultLabels};
use super::probe::{self, Round};
use super::schedule::{self, Timeline};
use super::select;
use super::spec::{ChaosSpec, ProbeKind, SloSpec, When};
use crate::apply::{self, RunState};
use crate::monitor::{self, MonitorState};
use crate::plan::Plan;
use crate::runtime::{ProcessRuntime, Runtime};
use crate::scenario::Scenario;

/// Options of `chaosnet run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Scenario file.
    pub scenario: PathBuf,
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// Leave the lab up afterwards (faults healed).
    pub keep: bool,
    /// Start Prometheus too (`up --monitor`), for PromQL probes.
    pub monitor: bool,
    /// Prometheus port.
    pub prometheus_port: u16,
    /// Runs directory.
    pub runs_dir: PathBuf,
    /// Agent binary (default: next to this binary).
    pub agent_bin: Option<PathBuf>,
    /// Go on when some agents did not join (benchmarks of the controller itself).
    pub allow_unjoined: bool,
}

/// The verdict of one SLO.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// SLO name.
    pub slo: String,
    /// Probe kind.
    pub probe: String,
    /// When it was judged.
    pub when: When,
    /// Its bound, e.g. `>= 0.99`.
    pub bound: String,
    /// Held.
    pub pass: bool,
    /// The deciding value (the failing one, or the worst one when it held).
    pub value: Option<f64>,
    /// When the deciding value was measured, ms into the fault phase.
    pub at_ms: Option<i64>,
    /// One line for people.
    pub message: String,
}

/// One injected occurrence, as it happened.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultRecord {
    /// Occurrence id.
    pub id: u32,
    /// Fault name.
    pub fault: String,
    /// Kind.
    pub kind: String,
    /// Targets.
    pub targets: Vec<String>,
    /// Mechanism used.
    pub mechanism: String,
    /// Inject time, ms into the fault phase.
    pub inject_at_ms: i64,
    /// Heal time, ms into the fault phase (`None` for a restart).
    pub heal_at_ms: Option<i64>,
    /// Controller time spent injecting, ms.
    pub inject_cost_ms: f64,
    /// Controller time spent healing, ms.
    pub heal_cost_ms: Option<f64>,
    /// Seconds from the heal to the first round at the recovery threshold.
    pub recovery_s: Option<f64>,
}

/// Everything a report shows.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// Run id.
    pub run_id: String,
    /// Scenario name.
    pub scenario: String,
    /// Seed used.
    pub seed: u64,
    /// The chaos settings.
    pub chaos: ChaosSpec,
    /// The timeline.
    pub timeline: Timeline,
    /// Probe rounds.
    pub rounds: Vec<Round>,
    /// Faults as they happened.
    pub faults: Vec<FaultRecord>,
    /// Verdicts.
    pub verdicts: Vec<Verdict>,
    /// Every SLO held.
    pub pass: bool,
    /// Whether netem was available, and why not.
    pub netem: (bool, String),
    /// Agent name -> (site, NAT label).
    pub agents: BTreeMap<String, (String, String)>,
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

/// Appends JSON lines to `events.jsonl`.
struct EventLog {
    file: Mutex<Option<std::fs::File>>,
    t0: Mutex<Instant>,
}

impl EventLog {
    fn new(path: &Path, t0: Instant) -> EventLog {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok();
        EventLog {
            file: Mutex::new(file),
            t0: Mutex::new(t0),
        }
    }

    /// Moves time zero (to the start of the fault phase, once known).
    fn set_t0(&self, t0: Instant) {
        *self.t0.lock().unwrap_or_else(PoisonError::into_inner) = t0;
    }

    /// `t0` is the start of the fault phase; earlier events get negative times.
    fn log(&self, event: &str, mut fields: serde_json::Value) {
        let t_ms = ms_since(*self.t0.lock().unwrap_or_else(PoisonError::into_inner));
        if let Some(m) = fields.as_object_mut() {
            m.insert("t_ms".into(), t_ms.into());
            m.insert("event".into(), event.into());
        }
        let mut g = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = g.as_mut() {
            let _ = writeln!(f, "{fields}");
        }
    }
}

fn ms_since(t0: Instant) -> i64 {
    let now = Instant::now();
    if now >= t0 {
        (now - t0).as_millis() as i64
    } else {
        -((t0 - now).as_millis() as i64)
    }
}

fn say(t0: Instant, msg: &str) {
    eprintln!("[{:>+7.1}s] {msg}", ms_since(t0) as f64 / 1000.0);
}

/// Loads the scenario with the seed override and draws its timeline.
pub fn prepare(path: &Path, seed: Option<u64>) -> Result<(Scenario, Timeline), String> {
    let mut s = Scenario::load(path).map_err(|e| e.to_string())?;
    if let Some(n) = seed {
        s.seed = n;
    }
    let targets = select::targets_of(s.seeds, &s.sites);
    let tl = schedule::timeline(&s.chaos, &targets, s.seed).map_err(|e| {
        format!(
            "{}:{}:{}: {}",
            path.display(),
            e.at.line,
            e.at.column,
            e.message
        )
    })?;
    Ok((s, tl))
}

/// Prints the timeline compactly.
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

/// Runs a scenario end to end, as one `chaos_run` span (exported with `--otlp-endpoint`)
/// whose events are the faults injected and healed.
pub fn run(opts: &RunOptions) -> Outcome {
    let span = tracing::info_span!(
        "chaos_run",
        scenario = %opts.scenario.display(),
        run_id = tracing::field::Empty,
        verdict = tracing::field::Empty
    );
    let outcome = span.in_scope(|| run_traced(opts));
    let verdict = match &outcome {
        Outcome::Finished(r) if r.pass => "pass",
        Outcome::Finished(_) => "slo_failed",
        Outcome::Failed(_) => "could_not_run",
    };
    span.record("verdict", verdict);
    outcome
}

fn run_traced(opts: &RunOptions) -> Outcome {
    let (scenario, timeline) = match prepare(&opts.scenario, opts.seed) {
        Ok(x) => x,
        Err(e) => return Outcome::Failed(e),
    };
    print_timeline(&timeline);

    // Up, through our own binary.
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return Outcome::Failed(format!("cannot find the chaosnet binary: {e}")),
    };
    let mut up = Command::new(&exe);
    up.arg("--runs-dir")
        .arg(&opts.runs_dir)
        .arg("up")
        .arg("-f")
        .arg(&opts.scenario)
        .arg("--seed")
        .arg(scenario.seed.to_string());
    if opts.monitor {
        up.arg("--monitor")
            .arg("--prometheus-port")
            .arg(opts.prometheus_port.to_string());
    }
    if let Some(b) = &opts.agent_bin {
        up.arg("--agent-bin").arg(b);
    }
    if opts.allow_unjoined {
        up.arg("--keep-on-failure");
    }
    eprintln!("chaosnet: bringing the lab up");
    match up.status() {
        Ok(s) if s.success() => {}
        // `up` exits 1 when agents did not join; with --keep-on-failure the lab stays.
        Ok(s) if opts.allow_unjoined && s.code() == Some(1) => {
            eprintln!("chaosnet: warning: going on without every agent joined (--allow-unjoined)");
        }
        Ok(s) => return Outcome::Failed(format!("`chaosnet up` failed ({s})")),
        Err(e) => return Outcome::Failed(format!("cannot run `chaosnet up`: {e}")),
    }
    let run_dir = match std::fs::read_link(opts.runs_dir.join("current")) {
        Ok(t) => opts.runs_dir.join(t),
        Err(e) => return Outcome::Failed(format!("no current run after `up`: {e}")),
    };
    let run_dir = std::path::absolute(&run_dir).unwrap_or(run_dir);
    let state = match RunState::load(&run_dir) {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    tracing::Span::current().record("run_id", state.run_id.0.as_str());
    let bin = match &opts.agent_bin {
        Some(b) => b.clone(),
        None => exe.with_file_name("chaosnet-agent"),
    };
    let rt = match ProcessRuntime::new(&run_dir, &bin) {
        Ok(r) => r,
        Err(e) => {
            down(&run_dir, &state.plan);
            return Outcome::Failed(e.to_string());
        }
    };
    rt.adopt(&state.plan.agents, &state.agents);
    let outcome = drive(opts, &scenario, &timeline, &run_dir, &state.plan, &rt);
    // Agents restarted by faults have new pids: keep the state file true for `down`.
    let mut st = state;
    st.agents = rt.instances();
    let _ = st.save(&run_dir);
    if opts.keep {
        eprintln!(
            "chaosnet: the lab stays up (--keep), faults healed; `chaosnet down` removes it ({})",
            run_dir.display()
        );
    } else {
        down(&run_dir, &st.plan);
    }
    outcome
}

fn down(run_dir: &Path, plan: &Plan) {
    MonitorState::load(run_dir).stop();
    match apply::teardown(&plan.run_id) {
        Ok(r) => eprintln!(
            "chaosnet: run {} down ({} namespaces removed)",
            plan.run_id.0, r.namespaces
        ),
        Err(e) => eprintln!("chaosnet: warning: down failed: {e} (run `chaosnet down --all`)"),
    }
}

/// Shared between the scheduler and the probe thread.
struct Shared {
    rounds: Mutex<Vec<Round>>,
    active: Mutex<Vec<u32>>,
    phase: Mutex<String>,
    /// Heals whose recovery is not measured yet: the fault's labels and the heal time.
    unrecovered: Mutex<Vec<(FaultLabels, i64)>>,
}

/// How long a monitored run waits for Prometheus to scrape the controller before the
/// first fault and after the last change, so the dashboards see the fault series from 0
/// and the last recovery.
const SCRAPE_WAIT: Duration = super::metrics::Exporter::SCRAPE_WAIT;

/// Sets the recovery gauge of every pending heal that the rounds so far show recovered,
/// with [`recovery_after`], the measurement the report uses; keeps the others pending.
fn record_recoveries(
    metrics: &ChaosMetrics,
    rounds: &[Round],
    pending: &mut Vec<(FaultLabels, i64)>,
    to: f64,
) -> Vec<(FaultLabels, f64)> {
    let mut done = Vec::new();
    pending.retain(|(l, heal_ms)| match recovery_after(rounds, *heal_ms, to) {
        Some(s) => {
            metrics.recovered(l, s);
            done.push((l.clone(), s));
            false
        }
        None => true,
    });
    done
}

#[allow(clippy::too_many_lines)] // the run sequence reads best in one place
fn drive(
    opts: &RunOptions,
    scenario: &Scenario,
    timeline: &Timeline,
    run_dir: &Path,
    plan: &Plan,
    rt: &dyn Runtime,
) -> Outcome {
    let spec = &scenario.chaos;
    let ex = Executor::new(run_dir, plan, rt);
    let netem = match plan.agents.first() {
        Some(a) => ex.netem_available(&a.ns),
        None => (false, "no agents".into()),
    };
    if !netem.0
        && timeline
            .occurrences
            .iter()
            .any(|o| o.kind.name() == "delay")
    {
        eprintln!(
            "chaosnet: tc netem is not available ({}); delay faults use the agents' userspace impairment",
            netem.1.lines().next().unwrap_or("")
        );
    }
    let t_start = Instant::now() + Duration::from_millis(spec.warmup_ms);
    let events = EventLog::new(&run_dir.join("events.jsonl"), t_start);
    let _ = std::fs::write(
        run_dir.join("timeline.json"),
        serde_json::to_string_pretty(timeline).unwrap_or_default(),
    );
    events.log(
        "run",
        serde_json::json!({"run_id": plan.run_id.0, "seed": scenario.seed, "occurrences": timeline.occurrences.len()}),
    );

    // Controller metrics, every fault of the timeline declared at 0 so its first injection
    // shows in increase().
    let metrics = ChaosMetrics::new();
    let labels_of = |kind: &str, fault: &str| FaultLabels {
        kind: kind.to_string(),
        fault: fault.to_string(),
        run: plan.run_id.0.clone(),
    };
    for o in &timeline.occurrences {
        metrics.declare(&labels_of(o.kind.name(), &o.fault));
    }
    let stop_metrics = Arc::new(AtomicBool::new(false));
    let mut scraped_target = None;
    match metrics.serve(0, stop_metrics.clone()) {
        Ok(addr) => {
            events.log("metrics", serde_json::json!({"addr": addr.to_string()}));
            // Only a running Prometheus scrapes it (without one, `up --monitor` still writes
            // the targets file, and waiting for a scrape would only stall the run).
            if opts.monitor && MonitorState::load(run_dir).prometheus_url.is_some() {
                match monitor::add_controller_target(run_dir, &plan.run_id.0, addr) {
                    Ok(true) => scraped_target = Some(addr),
                    Ok(false) => {}
                    Err(e) => eprintln!(
                        "chaosnet: warning: Prometheus will not scrape the controller: {e}"
                    ),
                }
            }
        }
        Err(e) => eprintln!("chaosnet: warning: controller /metrics not served: {e}"),
    }
    let recover_to = spec
        .slos
        .iter()
        .find_map(|s| match s.probe {
            ProbeKind::Recovery { recover_to } => Some(recover_to),
            _ => None,
        })
        .unwrap_or(0.99);
    let prom_url = MonitorState::load(run_dir).prometheus_url;
    let promql: Vec<(String, String)> = spec
        .slos
        .iter()
        .filter_map(|s| match &s.probe {
            ProbeKind::Promql { query } => Some((s.name.clone(), query.clone())),
            _ => None,
        })
        .collect();
    if !promql.is_empty() && prom_url.is_none() {
        eprintln!(
            "chaosnet: warning: PromQL SLOs need Prometheus (run with --monitor); they will fail"
        );
    }
    let names: Vec<String> = plan.agents.iter().map(|a| a.name.clone()).collect();
    let timeout = Duration::from_millis(spec.connect_timeout_ms);
    let round = |base: Instant, n: u32, phase: &str, active: Vec<u32>| -> Round {
        let t_ms = ms_since(base);
        let alive = probe::alive(run_dir, plan);
        let pairs = probe::sample_pairs(&names, spec.sample_pairs, scenario.seed, n);
        let results = probe::connect_pairs(run_dir, plan, &pairs, timeout);
        let mut pq = BTreeMap::new();
        for (name, q) in &promql {
            let v = prom_url
                .as_deref()
                .and_then(|u| probe::promql(u, q, Duration::from_secs(3)).ok().flatten());
            pq.insert(name.clone(), v);
        }
        Round {
            n,
            t_ms,
            phase: phase.to_string(),
            active,
            alive: (alive.iter().filter(|x| **x).count(), alive.len()),
            pairs: results,
            promql: pq,
        }
    };
    let log_round = |r: &Round| {
        events.log(
            "probe",
            serde_json::json!({"round": r.n, "phase": r.phase, "reach": r.reach(),
                "alive": r.alive_share(), "active": r.active}),
        );
    };

    // Warm-up, then the start round.
    say(
        t_start,
        &format!("warm-up {:.1} s", spec.warmup_ms as f64 / 1000.0),
    );
    // During the warm-up: Prometheus scrapes the fault series at 0 once.
    if scraped_target.is_some() && !metrics.wait_scrape_after(0, SCRAPE_WAIT) {
        eprintln!(
            "chaosnet: warning: Prometheus has not scraped the controller yet; the first fault may not show on the dashboards"
        );
    }
    std::thread::sleep(t_start.saturating_duration_since(Instant::now()));
    let started = Instant::now();
    let mut start = round(started, 0, "start", Vec::new());
    // Time zero of the fault phase is the end of the start round.
    let t0 = Instant::now();
    start.t_ms = -((t0 - started).as_millis() as i64);
    events.set_t0(t0);
    log_round(&start);
    say(
        t0,
        &format!(
            "start probe: reachability {:.0}% ({} pairs), alive {}/{}",
            start.reach() * 100.0,
            start.pairs.len(),
            start.alive.0,
            start.alive.1
        ),
    );
    let shared = Arc::new(Shared {
        rounds: Mutex::new(vec![start]),
        active: Mutex::new(Vec::new()),
        phase: Mutex::new("faults".into()),
        unrecovered: Mutex::new(Vec::new()),
    });
    // Recovery measured live, so Prometheus has it while the run goes on.
    let announce_recoveries = |rounds: &[Round]| {
        let mut pending = shared
            .unrecovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (l, secs) in record_recoveries(&metrics, rounds, &mut pending, recover_to) {
            say(
                t0,
                &format!("recovered from {} {} in {secs:.1} s", l.kind, l.fault),
            );
        }
    };
    let stop_probes = AtomicBool::new(false);

    let mut records: Vec<FaultRecord> = Vec::new();
    let mut failure: Option<String> = None;
    std::thread::scope(|s| {
        // Probe thread: a round every interval (or right after the previous one when a
        // round takes longer).
        s.spawn(|| {
            let mut n = 1u32;
            let interval = Duration::from_millis(spec.probe_interval_ms);
            let mut next = Instant::now();
            while !stop_probes.load(Ordering::Relaxed) {
                let active = shared
                    .active
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let phase = shared
                    .phase
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let r = round(t0, n, &phase, active);
                log_round(&r);
                say(
                    t0,
                    &format!(
                        "probe {n}: reachability {:.0}%, alive {}/{}{}",
                        r.reach() * 100.0,
                        r.alive.0,
                        r.alive.1,
                        if r.active.is_empty() {
                            String::new()
                        } else {
                            format!(", faults active: {:?}", r.active)
                        }
                    ),
                );
                let mut rounds = shared.rounds.lock().unwrap_or_else(PoisonError::into_inner);
                rounds.push(r);
                announce_recoveries(&rounds);
                drop(rounds);
                n += 1;
                next += interval;
                let now = Instant::now();
                if next > now {
                    // Sleep in slices so a stop is noticed quickly.
                    while Instant::now() < next && !stop_probes.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50).min(next - Instant::now()));
                    }
                } else {
                    next = now;
                }
            }
        });

        // Scheduler: inject and heal on the timeline.
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        enum Ev {
            Heal,
            Inject,
        }
        let mut evs: Vec<(u64, Ev, usize)> = Vec::new();
        for (i, o) in timeline.occurrences.iter().enumerate() {
            evs.push((o.start_ms, Ev::Inject, i));
            if let Some(e) = o.end_ms
                && e < timeline.phase_ms
            {
                evs.push((e, Ev::Heal, i));
            }
        }
        // Heals before injects at the same instant, so back-to-back occurrences never
        // overlap.
        evs.sort();
        let mut plans: BTreeMap<usize, (FaultPlan, usize)> = BTreeMap::new();
        let heal = |fp: &FaultPlan, rec: &mut FaultRecord| {
            let (cost, errors) = ex.heal(fp);
            tracing::info!(fault = %fp.fault, kind = %fp.kind, errors = errors.len(), "fault healed");
            let heal_ms = ms_since(t0);
            rec.heal_at_ms = Some(heal_ms);
            rec.heal_cost_ms = Some(cost.as_secs_f64() * 1000.0);
            let labels = labels_of(&fp.kind, &fp.fault);
            metrics.healed(&labels);
            shared
                .unrecovered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((labels, heal_ms));
            shared
                .active
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|x| *x != fp.id);
            events.log(
                "heal",
                serde_json::json!({"id": fp.id, "fault": fp.fault, "kind": fp.kind, "errors": errors, "cost_ms": rec.heal_cost_ms}),
            );
            say(
                t0,
                &format!(
                    "heal   #{} {} {} ({:.0} ms){}",
                    fp.id,
                    fp.kind,
                    fp.fault,
                    cost.as_secs_f64() * 1000.0,
                    if errors.is_empty() {
                        String::new()
                    } else {
                        format!(" with errors: {}", errors.join("; "))
                    }
                ),
            );
        };
        for (t, ev, i) in evs {
            let at = t0 + Duration::from_millis(t);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            let o = &timeline.occurrences[i];
            match ev {
                Ev::Inject => {
                    let fp = match fault::plan_fault(plan, o, netem.0) {
                        Ok(fp) => fp,
                        Err(e) => {
                            failure = Some(e.to_string());
                            break;
                        }
                    };
                    match ex.inject(&fp) {
                        Ok(cost) => {
                            tracing::info!(fault = %fp.fault, kind = %fp.kind, "fault injected");
                            let instant = fp.heal.is_empty();
                            let labels = labels_of(&fp.kind, &fp.fault);
                            metrics.injected(&labels);
                            if instant {
                                // A restart: count it healed at once.
                                metrics.healed(&labels);
                            } else {
                                shared
                                    .active
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .push(fp.id);
                            }
                            events.log(
                                "inject",
                                serde_json::json!({"id": fp.id, "fault": fp.fault, "kind": fp.kind,
                                    "scheduled_ms": o.start_ms,
                                    "targets": fp.targets, "mechanism": fp.mechanism,
                                    "cost_ms": cost.as_secs_f64() * 1000.0}),
                            );
                            say(
                                t0,
                                &format!(
                                    "inject #{} {} {} on {} ({}, {:.0} ms)",
                                    fp.id,
                                    fp.kind,
                                    fp.fault,
                                    short_list(&fp.targets),
                                    fp.mechanism,
                                    cost.as_secs_f64() * 1000.0
                                ),
                            );
                            records.push(FaultRecord {
                                id: fp.id,
                                fault: fp.fault.clone(),
                                kind: fp.kind.clone(),
                                targets: fp.targets.clone(),
                                mechanism: fp.mechanism.clone(),
                                inject_at_ms: ms_since(t0),
                                heal_at_ms: None,
                                inject_cost_ms: cost.as_secs_f64() * 1000.0,
                                heal_cost_ms: None,
                                recovery_s: None,
                            });
                            if !instant {
                                plans.insert(i, (fp, records.len() - 1));
                            }
                        }
                        Err(e) => {
                            failure = Some(format!("cannot inject #{} {}: {e}", o.id, o.fault));
                            events.log("error", serde_json::json!({"message": failure}));
                            break;
                        }
                    }
                }
                Ev::Heal => {
                    if let Some((fp, ri)) = plans.remove(&i) {
                        heal(&fp, &mut records[ri]);
                    }
                }
            }
        }
        // Final heal at the end of the fault phase (or at once after a failure).
        if failure.is_none() {
            let end = t0 + Duration::from_millis(timeline.phase_ms);
            std::thread::sleep(end.saturating_duration_since(Instant::now()));
        }
        for (_, (fp, ri)) in std::mem::take(&mut plans) {
            heal(&fp, &mut records[ri]);
        }
        let (_, errs) = ex.heal_all();
        if !errs.is_empty() {
            events.log("error", serde_json::json!({"sweep": errs}));
        }
        say(t0, "final heal done; settling");
        *shared.phase.lock().unwrap_or_else(PoisonError::into_inner) = "settle".into();
        if failure.is_none() {
            std::thread::sleep(Duration::from_millis(spec.settle_ms));
        }
        stop_probes.store(true, Ordering::Relaxed);
    });
    let stop_serving = || {
        stop_metrics.store(true, Ordering::Relaxed);
        if let Some(addr) = scraped_target
            && let Err(e) = monitor::remove_controller_target(run_dir, addr)
        {
            eprintln!("chaosnet: warning: {e}");
        }
    };
    if let Some(f) = failure {
        stop_serving();
        return Outcome::Failed(f);
    }
    let mut rounds =
        std::mem::take(&mut *shared.rounds.lock().unwrap_or_else(PoisonError::into_inner));
    let n = rounds.len() as u32;
    let end = round(t0, n, "end", Vec::new());
    log_round(&end);
    say(
        t0,
        &format!(
            "end probe: reachability {:.0}%, alive {}/{}",
            end.reach() * 100.0,
            end.alive.0,
            end.alive.1
        ),
    );
    rounds.push(end);

    for r in &mut records {
        r.recovery_s = r
            .heal_at_ms
            .and_then(|h| recovery_after(&rounds, h, recover_to));
    }
    // Recoveries only the end round showed; then Prometheus scrapes the final state once.
    announce_recoveries(&rounds);
    if scraped_target.is_some() {
        metrics.wait_scrape_after(metrics.scrapes(), SCRAPE_WAIT);
    }
    stop_serving();
    let verdicts = judge(&spec.slos, &rounds, &records);
    let pass = verdicts.iter().all(|v| v.pass);
    for v in &verdicts {
        eprintln!(
            "chaosnet: SLO {:<24} {}  {}",
            v.slo,
            if v.pass { "PASS" } else { "FAIL" },
            v.message
        );
    }
    events.log("verdict", serde_json::json!({"pass": pass}));
    let report = RunReport {
        run_id: plan.run_id.0.clone(),
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        chaos: spec.clone(),
        timeline: timeline.clone(),
        rounds,
        faults: records,
        verdicts,
        pass,
        netem,
        agents: plan
            .agents
            .iter()
            .map(|a| {
                let nat =
                    plan.sites
                        .iter()
                        .find(|s| s.name == a.site)
                        .map_or("none".to_string(), |s| {
                            if s.cgnat {
                                "cgnat".to_string()
                            } else {
                                crate::scenario::nat_name(s.nat).to_string()
                            }
                        });
                (a.name.clone(), (a.site.clone(), nat))
            })
            .collect(),
    };
    match super::report::write_all(run_dir, &report) {
        Ok(paths) => eprintln!("chaosnet: report: {}", paths.join(", ")),
        Err(e) => eprintln!("chaosnet: warning: report not written: {e}"),
    }
    eprintln!(
        "chaosnet: verdict: {}",
        if pass { "PASS" } else { "FAIL (an SLO failed)" }
    );
    Outcome::Finished(Box::new(report))
}

fn short_list(v: &[String]) -> String {
    if v.len() <= 4 {
        v.join(",")
    } else {
        format!("{},... ({} in all)", v[..3].join(","), v.len())
    }
}

/// Seconds from a heal at `heal_ms` to the first round starting at or after it whose
/// reachability is at least `to`.
pub fn recovery_after(rounds: &[Round], heal_ms: i64, to: f64) -> Option<f64> {
    rounds
        .iter()
        .filter(|r| r.t_ms >= heal_ms && !r.pairs.is_empty())
        .find(|r| r.reach() >= to)
        .map(|r| (r.t_ms - heal_ms) as f64 / 1000.0)
}

fn value_of(slo: &SloSpec, r: &Round) -> Option<f64> {
    match &slo.probe {
        ProbeKind::Reachability => Some(r.reach()),
        ProbeKind::Alive => Some(r.alive_share()),
        ProbeKind::ModeShare { mode } => Some(r.mode_share(mode)),
        ProbeKind::Promql { .. } => r.promql.get(&slo.name).copied().flatten(),
        ProbeKind::Recovery { .. } => None,
    }
}

/// Judges every SLO against the rounds and fault records.
pub fn judge(slos: &[SloSpec], rounds: &[Round], faults: &[FaultRecord]) -> Vec<Verdict> {
    let probe_name = |s: &SloSpec| match &s.probe {
        ProbeKind::Reachability => "reachability",
        ProbeKind::Alive => "alive",
        ProbeKind::Recovery { .. } => "recovery",
        ProbeKind::ModeShare { .. } => "mode-share",
        ProbeKind::Promql { .. } => "promql",
    };
    slos.iter()
        .map(|s| {
            let mut v = Verdict {
                slo: s.name.clone(),
                probe: probe_name(s).to_string(),
                when: s.when,
                bound: s.bound_text(),
                pass: true,
                value: None,
                at_ms: None,
                message: String::new(),
            };
            if let ProbeKind::Recovery { .. } = s.probe {
                let end = rounds.last().map_or(0, |r| r.t_ms);
                let mut worst: Option<(f64, i64, &FaultRecord)> = None;
                for f in faults {
                    let Some(h) = f.heal_at_ms else { continue };
                    // Never recovered: the time to the end of the run, which fails any
                    // finite bound below it.
                    let rec = f.recovery_s.unwrap_or(f64::INFINITY);
                    let shown = if rec.is_finite() {
                        rec
                    } else {
                        (end - h) as f64 / 1000.0
                    };
                    let bad = !s.holds(rec);
                    if worst.is_none_or(|(w, _, _)| rec > w) || bad {
                        worst = Some((rec, h, f));
                        v.value = Some(shown);
                        v.at_ms = Some(h);
                    }
                    if bad && v.pass {
                        v.pass = false;
                        v.message = format!(
                            "SLO {:?} failed: recovery after heal of #{} {} at {:+.1} s took {} (needs {} s)",
                            s.name,
                            f.id,
                            f.fault,
                            h as f64 / 1000.0,
                            if rec.is_finite() {
                                format!("{rec:.1} s")
                            } else {
                                format!("more than {shown:.1} s (never recovered)")
                            },
                            s.bound_text()
                        );
                    }
                }
                if v.pass {
                    v.message = match v.value {
                        Some(x) => format!("worst recovery {x:.1} s ({} s)", s.bound_text()),
                        None => "no heals to judge".into(),
                    };
                }
                return v;
            }
            let judged: Vec<&Round> = rounds
                .iter()
                .filter(|r| match s.when {
                    When::Start => r.phase == "start",
                    When::End => r.phase == "end",
                    When::Continuous => true,
                    When::DuringFault => !r.active.is_empty(),
                })
                .collect();
            if judged.is_empty() {
                v.message = "no round to judge (nothing measured in this window)".into();
                return v;
            }
            let mut worst: Option<(f64, i64)> = None;
            for r in judged {
                match value_of(s, r) {
                    None => {
                        v.pass = false;
                        v.at_ms = Some(r.t_ms);
                        v.message = format!(
                            "SLO {:?} failed: {} had no value at {:+.1} s ({})",
                            s.name,
                            probe_name(s),
                            r.t_ms as f64 / 1000.0,
                            r.phase
                        );
                        return v;
                    }
                    Some(x) if !s.holds(x) => {
                        v.pass = false;
                        v.value = Some(x);
                        v.at_ms = Some(r.t_ms);
                        v.message = format!(
                            "SLO {:?} failed: {} = {x:.3} at {:+.1} s ({}), needs {}",
                            s.name,
                            probe_name(s),
                            r.t_ms as f64 / 1000.0,
                            r.phase,
                            s.bound_text()
                        );
                        return v;
                    }
                    Some(x) => {
                        // Closest to the bound is the most telling value of a pass.
                        let margin = s.min.map_or(f64::INFINITY, |m| x - m).min(
                            s.max.map_or(f64::INFINITY, |m| m - x),
                        );
                        if worst.is_none_or(|(w, _)| margin < w) {
                            worst = Some((margin, r.t_ms));
                            v.value = Some(x);
                            v.at_ms = Some(r.t_ms);
                        }
                    }
                }
            }
            v.message = format!(
                "{} = {:.3} ({})",
                probe_name(s),
                v.value.unwrap_or(f64::NAN),
                s.bound_text()
            );
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::probe::PairResult;

    fn round(t_ms: i64, ok: usize, tried: usize) -> Round {
        Round {
            n: 0,
            t_ms,
            phase: "faults".into(),
            active: Vec::new(),
            alive: (4, 4),
            pairs: (0..tried)
                .map(|i| PairResult {
                    from: "a".into(),
                    to: "b".into(),
                    ok: i < ok,
                    mode: None,
                    elapsed_ms: 1.0,
                    error: None,
                })
                .collect(),
            promql: BTreeMap::new(),
        }
    }

    #[test]
    fn recovery_gauge_is_set_live_with_the_reports_value() {
        let m = ChaosMetrics::new();
        let l = FaultLabels {
            kind: "partition".into(),
            fault: "cut".into(),
            run: "r1".into(),
        };
        let all = [
            round(0, 10, 10),
            round(2_000, 5, 10),
            round(4_000, 5, 10), // healed at 4_500
            round(6_000, 8, 10),
            round(8_000, 10, 10),
            round(10_000, 10, 10),
        ];
        let mut pending = vec![(l.clone(), 4_500)];
        let mut recorded = Vec::new();
        // Rounds arrive one by one, as from the probe thread.
        for n in 1..=all.len() {
            recorded.extend(record_recoveries(&m, &all[..n], &mut pending, 0.99));
        }
        let report = recovery_after(&all, 4_500, 0.99).expect("recovered");
        assert_eq!(recorded, vec![(l.clone(), report)]);
        assert!((report - 3.5).abs() < 1e-9, "{report}");
        assert!(pending.is_empty());
        assert!(
            m.encode().contains(
                "chaosnet_fault_recovery_seconds{kind=\"partition\",fault=\"cut\",run=\"r1\"} 3.5"
            ),
            "{}",
            m.encode()
        );
        // A heal that never recovers stays pending and sets nothing.
        let m = ChaosMetrics::new();
        let mut pending = vec![(l, 4_500)];
        assert!(record_recoveries(&m, &all[..4], &mut pending, 0.99).is_empty());
        assert_eq!(pending.len(), 1);
        assert!(!m.encode().contains("chaosnet_fault_recovery_seconds{"));
    }
}
