//! The sequence of `chaosnet run` on a lab that is up: the controller's `/metrics` served
//! (and scraped, on a monitored lab), warm-up, a start round, the faults of the timeline
//! injected and healed on time while a probe thread runs a [`Round`] every
//! `probe_interval_s`, the final heal, the settle window, an end round, the verdicts and the
//! report. Every step is appended to `events.jsonl`.
//!
//! What it does not do: judge (see `judge`), render (see `report`), or bring the lab up or
//! down.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::super::exec::Executor;
use super::super::fault::{self, FaultPlan};
use super::super::metrics::{ChaosMetrics, Exporter, FaultLabels};
use super::super::probe::{self, Round};
use super::super::report::{self, FaultRecord, RunReport};
use super::super::spec::{ChaosSpec, ProbeKind};
use super::judge::{judge, recovery_after};
use super::{Outcome, Prepared, RunOptions};
use crate::lab::Lab;
use crate::monitor::{self, MonitorState};

/// How long a monitored run waits for Prometheus to scrape the controller before the
/// first fault and after the last change, so the dashboards see the fault series from 0
/// and the last recovery.
const SCRAPE_WAIT: Duration = Exporter::SCRAPE_WAIT;

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

fn short_list(v: &[String]) -> String {
    if v.len() <= 4 {
        v.join(",")
    } else {
        format!("{},... ({} in all)", v[..3].join(","), v.len())
    }
}

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

/// Shared between the scheduler and the probe thread.
struct Shared {
    rounds: Mutex<Vec<Round>>,
    active: Mutex<Vec<u32>>,
    phase: Mutex<String>,
    /// Heals whose recovery is not measured yet: the fault's labels and the heal time.
    unrecovered: Mutex<Vec<(FaultLabels, i64)>>,
}

/// One run being driven.
struct Drive<'a> {
    lab: &'a Lab,
    prepared: &'a Prepared,
    ex: Executor<'a>,
    netem: (bool, String),
    events: EventLog,
    metrics: ChaosMetrics,
    /// Where the controller's metrics are served, when the run's Prometheus scrapes them.
    scraped: Option<SocketAddr>,
    stop_metrics: Arc<AtomicBool>,
    /// Reachability that counts as recovered.
    recover_to: f64,
    prom_url: Option<String>,
    /// PromQL SLOs: (SLO name, query).
    promql: Vec<(String, String)>,
    /// A `converged` SLO asks every round for the agents' key-value digests.
    kv_probe: bool,
    names: Vec<String>,
}

impl Drive<'_> {
    fn spec(&self) -> &ChaosSpec {
        &self.prepared.chaos
    }

    fn labels(&self, kind: &str, fault: &str) -> FaultLabels {
        FaultLabels {
            kind: kind.to_string(),
            fault: fault.to_string(),
            run: self.lab.run_id().0.clone(),
        }
    }

    /// Serves the controller's metrics, every fault of the timeline declared at 0 (so its
    /// first injection shows in `increase()`), and on a monitored lab with Prometheus
    /// running, adds them to its targets.
    fn serve_metrics(&mut self, opts: &RunOptions) {
        for o in &self.prepared.timeline.occurrences {
            self.metrics.declare(&self.labels(o.kind.name(), &o.fault));
        }
        match self.metrics.serve(0, self.stop_metrics.clone()) {
            Ok(addr) => {
                self.events
                    .log("metrics", serde_json::json!({"addr": addr.to_string()}));
                // Only a running Prometheus scrapes it (without one, `up --monitor` still
                // writes the targets file, and waiting for a scrape would only stall the run).
                let run_dir = self.lab.run_dir();
                if opts.monitor && MonitorState::load(run_dir).prometheus_url.is_some() {
                    match monitor::prometheus::add_controller_target(
                        run_dir,
                        &self.lab.run_id().0,
                        addr,
                    ) {
                        Ok(true) => self.scraped = Some(addr),
                        Ok(false) => {}
                        Err(e) => eprintln!(
                            "chaosnet: warning: Prometheus will not scrape the controller: {e}"
                        ),
                    }
                }
            }
            Err(e) => eprintln!("chaosnet: warning: controller /metrics not served: {e}"),
        }
    }

    fn stop_serving(&self) {
        self.stop_metrics.store(true, Ordering::Relaxed);
        if let Some(addr) = self.scraped
            && let Err(e) = monitor::prometheus::remove_controller_target(self.lab.run_dir(), addr)
        {
            eprintln!("chaosnet: warning: {e}");
        }
    }

    /// One probe round, `n`, timed from `base`.
    fn round(&self, base: Instant, n: u32, phase: &str, active: Vec<u32>) -> Round {
        let spec = self.spec();
        let t_ms = ms_since(base);
        let alive = probe::alive(self.lab);
        let pairs = probe::sample_pairs(
            &self.names,
            spec.sample_pairs,
            self.prepared.scenario.seed,
            n,
        );
        let results = probe::connect_pairs(
            self.lab,
            &pairs,
            Duration::from_millis(spec.connect_timeout_ms),
        );
        let mut pq = BTreeMap::new();
        for (name, q) in &self.promql {
            let v = self
                .prom_url
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
            kv: self.kv_probe.then(|| probe::kv_agreement(self.lab)),
        }
    }

    fn log_round(&self, r: &Round) {
        self.events.log(
            "probe",
            serde_json::json!({"round": r.n, "phase": r.phase, "reach": r.reach(),
                "alive": r.alive_share(), "active": r.active}),
        );
    }

    /// Recovery measured live, so Prometheus has it while the run goes on.
    fn announce_recoveries(&self, shared: &Shared, t0: Instant, rounds: &[Round]) {
        let mut pending = shared
            .unrecovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (l, secs) in record_recoveries(&self.metrics, rounds, &mut pending, self.recover_to) {
            say(
                t0,
                &format!("recovered from {} {} in {secs:.1} s", l.kind, l.fault),
            );
        }
    }

    /// The probe thread: a round every interval (or right after the previous one when a
    /// round takes longer), until `stop`.
    fn probe_loop(&self, shared: &Shared, t0: Instant, stop: &AtomicBool) {
        let mut n = 1u32;
        let interval = Duration::from_millis(self.spec().probe_interval_ms);
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
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
            let r = self.round(t0, n, &phase, active);
            self.log_round(&r);
            say(t0, &format!("probe {n}: {}", r.describe()));
            let mut rounds = shared.rounds.lock().unwrap_or_else(PoisonError::into_inner);
            rounds.push(r);
            self.announce_recoveries(shared, t0, &rounds);
            drop(rounds);
            n += 1;
            next += interval;
            let now = Instant::now();
            if next > now {
                // Sleep in slices so a stop is noticed quickly.
                while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50).min(next - Instant::now()));
                }
            } else {
                next = now;
            }
        }
    }

    /// Injects one occurrence and records it; `Err` says why it could not be.
    fn inject(
        &self,
        shared: &Shared,
        t0: Instant,
        i: usize,
        records: &mut Vec<FaultRecord>,
        plans: &mut BTreeMap<usize, (FaultPlan, usize)>,
    ) -> Result<(), String> {
        let o = &self.prepared.timeline.occurrences[i];
        let fp = fault::plan_fault(self.lab.plan(), o, self.netem.0).map_err(|e| e.to_string())?;
        let cost = match self.ex.inject(&fp) {
            Ok(c) => c,
            Err(e) => return Err(format!("cannot inject #{} {}: {e}", o.id, o.fault)),
        };
        tracing::info!(fault = %fp.fault, kind = %fp.kind, "fault injected");
        let instant = fp.heal.is_empty();
        let labels = self.labels(&fp.kind, &fp.fault);
        self.metrics.injected(&labels);
        if instant {
            // A restart: count it healed at once.
            self.metrics.healed(&labels);
        } else {
            shared
                .active
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(fp.id);
        }
        self.events.log(
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
        Ok(())
    }

    /// Heals one injected occurrence and records it.
    fn heal(&self, shared: &Shared, t0: Instant, fp: &FaultPlan, rec: &mut FaultRecord) {
        let (cost, errors) = self.ex.heal(fp);
        tracing::info!(fault = %fp.fault, kind = %fp.kind, errors = errors.len(), "fault healed");
        let heal_ms = ms_since(t0);
        rec.heal_at_ms = Some(heal_ms);
        rec.heal_cost_ms = Some(cost.as_secs_f64() * 1000.0);
        let labels = self.labels(&fp.kind, &fp.fault);
        self.metrics.healed(&labels);
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
        self.events.log(
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
    }

    /// The scheduler: injects and heals on the timeline, then the final heal at the end of
    /// the fault phase (at once after a failure) and the settle window. Returns the fault
    /// records, or why a fault could not be injected.
    fn schedule(&self, shared: &Shared, t0: Instant) -> (Vec<FaultRecord>, Option<String>) {
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        enum Ev {
            Heal,
            Inject,
        }
        let timeline = &self.prepared.timeline;
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
        let mut records: Vec<FaultRecord> = Vec::new();
        let mut failure: Option<String> = None;
        let mut plans: BTreeMap<usize, (FaultPlan, usize)> = BTreeMap::new();
        for (t, ev, i) in evs {
            let at = t0 + Duration::from_millis(t);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            match ev {
                Ev::Inject => {
                    if let Err(e) = self.inject(shared, t0, i, &mut records, &mut plans) {
                        self.events.log("error", serde_json::json!({"message": e}));
                        failure = Some(e);
                        break;
                    }
                }
                Ev::Heal => {
                    if let Some((fp, ri)) = plans.remove(&i) {
                        self.heal(shared, t0, &fp, &mut records[ri]);
                    }
                }
            }
        }
        if failure.is_none() {
            let end = t0 + Duration::from_millis(timeline.phase_ms);
            std::thread::sleep(end.saturating_duration_since(Instant::now()));
        }
        for (_, (fp, ri)) in std::mem::take(&mut plans) {
            self.heal(shared, t0, &fp, &mut records[ri]);
        }
        let (_, errs) = self.ex.heal_all();
        if !errs.is_empty() {
            self.events.log("error", serde_json::json!({"sweep": errs}));
        }
        say(t0, "final heal done; settling");
        *shared.phase.lock().unwrap_or_else(PoisonError::into_inner) = "settle".into();
        if failure.is_none() {
            std::thread::sleep(Duration::from_millis(self.spec().settle_ms));
        }
        (records, failure)
    }
}

/// Drives the run (see the module docs).
pub(super) fn drive(lab: &Lab, prepared: &Prepared, opts: &RunOptions) -> Outcome {
    let spec = &prepared.chaos;
    let timeline = &prepared.timeline;
    let plan = lab.plan();
    let run_dir = lab.run_dir();
    let ex = Executor::new(lab);
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
        serde_json::json!({"run_id": plan.run_id.0, "seed": prepared.scenario.seed, "occurrences": timeline.occurrences.len()}),
    );
    let recover_to = spec.recover_to();
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
    let mut d = Drive {
        lab,
        prepared,
        ex,
        netem,
        events,
        metrics: ChaosMetrics::new(),
        scraped: None,
        stop_metrics: Arc::new(AtomicBool::new(false)),
        recover_to,
        prom_url,
        promql,
        kv_probe: spec.slos.iter().any(|s| s.probe == ProbeKind::Converged),
        names: plan.agents.iter().map(|a| a.name.clone()).collect(),
    };
    d.serve_metrics(opts);
    let d = d;

    // Warm-up, then the start round.
    say(
        t_start,
        &format!("warm-up {:.1} s", spec.warmup_ms as f64 / 1000.0),
    );
    // During the warm-up: Prometheus scrapes the fault series at 0 once.
    if d.scraped.is_some() && !d.metrics.wait_scrape_after(0, SCRAPE_WAIT) {
        eprintln!(
            "chaosnet: warning: Prometheus has not scraped the controller yet; the first fault may not show on the dashboards"
        );
    }
    std::thread::sleep(t_start.saturating_duration_since(Instant::now()));
    let started = Instant::now();
    let mut start = d.round(started, 0, "start", Vec::new());
    // Time zero of the fault phase is the end of the start round.
    let t0 = Instant::now();
    start.t_ms = -((t0 - started).as_millis() as i64);
    d.events.set_t0(t0);
    d.log_round(&start);
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
    let shared = Shared {
        rounds: Mutex::new(vec![start]),
        active: Mutex::new(Vec::new()),
        phase: Mutex::new("faults".into()),
        unrecovered: Mutex::new(Vec::new()),
    };
    let stop_probes = AtomicBool::new(false);
    let (mut records, failure) = std::thread::scope(|s| {
        s.spawn(|| d.probe_loop(&shared, t0, &stop_probes));
        let out = d.schedule(&shared, t0);
        stop_probes.store(true, Ordering::Relaxed);
        out
    });
    if let Some(f) = failure {
        d.stop_serving();
        return Outcome::Failed(f);
    }
    let mut rounds =
        std::mem::take(&mut *shared.rounds.lock().unwrap_or_else(PoisonError::into_inner));
    let end = d.round(t0, rounds.len() as u32, "end", Vec::new());
    d.log_round(&end);
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
    d.announce_recoveries(&shared, t0, &rounds);
    if d.scraped.is_some() {
        d.metrics
            .wait_scrape_after(d.metrics.scrapes(), SCRAPE_WAIT);
    }
    d.stop_serving();
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
    d.events.log("verdict", serde_json::json!({"pass": pass}));
    let report = RunReport {
        run_id: plan.run_id.0.clone(),
        scenario: prepared.scenario.name.clone(),
        seed: prepared.scenario.seed,
        chaos: spec.clone(),
        timeline: timeline.clone(),
        rounds,
        faults: records,
        verdicts,
        pass,
        netem: d.netem.clone(),
        agents: plan
            .agents
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    (a.site.clone(), plan.nat_label_of(a).to_string()),
                )
            })
            .collect(),
    };
    match report::write_all(run_dir, &report) {
        Ok(paths) => eprintln!("chaosnet: report: {}", paths.join(", ")),
        Err(e) => eprintln!("chaosnet: warning: report not written: {e}"),
    }
    eprintln!(
        "chaosnet: verdict: {}",
        if pass { "PASS" } else { "FAIL (an SLO failed)" }
    );
    Outcome::Finished(Box::new(report))
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
            kv: None,
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

    #[test]
    fn a_converged_slo_holds_only_when_every_answering_agent_agrees() {
        let slo = crate::chaos::spec::SloSpec {
            name: "kv".into(),
            at: crate::chaos::spec::At { line: 1, column: 1 },
            probe: ProbeKind::Converged,
            when: crate::chaos::spec::When::End,
            min: Some(1.0),
            max: None,
        };
        let end = |kv| Round {
            phase: "end".into(),
            kv,
            ..round(10_000, 1, 1)
        };
        let judge = |r: Round| super::super::judge::judge(std::slice::from_ref(&slo), &[r], &[]);
        let v = judge(end(Some((11, 12))));
        assert!(!v[0].pass, "one agent of 12 disagrees: {v:?}");
        assert_eq!(v[0].probe, "converged");
        assert!(judge(end(Some((12, 12))))[0].pass);
        assert!(!judge(end(None))[0].pass, "no measurement is no pass");
        assert_eq!(
            round(0, 1, 1).converged(),
            None,
            "not measured without the SLO"
        );
    }
}
