//! The virtual-time sequence of `chaosnet sim`, the same as `chaosnet run`'s on a lab: join,
//! warm-up, a start round, the faults of the timeline injected and healed on time while a
//! probe round starts every `probe_interval_s`, the final heal, the settle window and an end
//! round. Rounds, fault records and verdicts are the lab's types ([`Round`],
//! [`FaultRecord`], [`judge`]), so the report is the same report.
//!
//! Faults act on the world as the lab's act on the network: kill and restart stop and start
//! a node (its persisted graph survives), pause drops everything it sends and receives,
//! partitions and site link-downs cut groups apart, loss and delay impair a node's messages,
//! nat-swap switches a site's NAT model and forgets its mappings. Bandwidth limits and
//! address changes have no model here: they are recorded as not simulated, with a warning.
//!
//! What it does not do: read files or touch the network. The caller writes what it returns.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use chaosnet_metrics::Metrics;
use chaosnet_proto::{Command, Event, NodeId, RelayEvent, TaskKind, TaskOutcome, Time};
use chaosnet_sim::{Cut, CutRule, Impairment};
use indicatif::ProgressBar;
use serde::Serialize;

use super::build::{Built, behaviour};
use crate::chaos::probe::{PairResult, Round, sample_pairs};
use crate::chaos::report::{FaultRecord, RunReport};
use crate::chaos::run::judge::{judge, recovery_after};
use crate::chaos::schedule::{Occurrence, Timeline};
use crate::chaos::spec::{ChaosSpec, FaultKind, ProbeKind, Shape};
use crate::scenario::Scenario;

/// How long the agents have to join after the last one started, ms.
pub const JOIN_GRACE_MS: u64 = 60_000;
/// Longest step of virtual time between two looks at the world (events drained, progress
/// shown), ms.
const STEP_MS: u64 = 1_000;

/// What the agents did, counted from their events.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Autonomous lookups that found their target / all that ended.
    pub lookups_ok: u64,
    /// All autonomous lookups that ended.
    pub lookups_total: u64,
    /// Lookup hops (rounds of the deepest node queried), summed over every lookup.
    pub lookup_hops: u64,
    /// Lookups of any origin (tasks, commands, bootstrap, refresh) that ended.
    pub lookups_any: u64,
    /// Connection paths that connected, by mode (`direct`, `punched`, `relayed`).
    pub connects: BTreeMap<String, u64>,
    /// Connection paths that failed, by mode.
    pub connect_failures: BTreeMap<String, u64>,
    /// Autonomous tasks that ended, by kind: (ok, all).
    pub tasks: BTreeMap<String, (u64, u64)>,
    /// Relay circuits opened, by relay node.
    #[serde(skip)]
    pub circuits_by_relay: BTreeMap<usize, u64>,
    /// Join events (a restarted agent joins again).
    pub joins: u64,
}

impl Counts {
    fn add(&mut self, node: usize, e: &Event) {
        match e {
            Event::TaskFinished { kind, outcome, .. } => {
                let ok = *outcome == TaskOutcome::Ok;
                let t = self.tasks.entry(kind.as_str().to_string()).or_default();
                t.1 += 1;
                if ok {
                    t.0 += 1;
                }
                if *kind == TaskKind::Lookup {
                    self.lookups_total += 1;
                    if ok {
                        self.lookups_ok += 1;
                    }
                }
            }
            Event::LookupFinished { hops, .. } => {
                self.lookups_any += 1;
                self.lookup_hops += u64::from(*hops);
            }
            Event::ConnectAttempt { path, failure, .. } => {
                let m = if failure.is_none() {
                    &mut self.connects
                } else {
                    &mut self.connect_failures
                };
                *m.entry(path.as_str().to_string()).or_default() += 1;
            }
            Event::Relay {
                event: RelayEvent::Opened,
            } => *self.circuits_by_relay.entry(node).or_default() += 1,
            Event::Joined => self.joins += 1,
            _ => {}
        }
    }

    fn merge(&mut self, o: &Counts) {
        self.lookups_ok += o.lookups_ok;
        self.lookups_total += o.lookups_total;
        self.lookup_hops += o.lookup_hops;
        self.lookups_any += o.lookups_any;
        for (k, v) in &o.connects {
            *self.connects.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.connect_failures {
            *self.connect_failures.entry(k.clone()).or_default() += v;
        }
        for (k, (a, b)) in &o.tasks {
            let t = self.tasks.entry(k.clone()).or_default();
            t.0 += a;
            t.1 += b;
        }
        for (k, v) in &o.circuits_by_relay {
            *self.circuits_by_relay.entry(*k).or_default() += v;
        }
        self.joins += o.joins;
    }
}

/// One probe interval of the series: the round that started it and what the agents did
/// until the next round started.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Interval {
    /// Round number.
    pub round: u32,
    /// Start, virtual seconds since the fault phase began (negative before).
    pub t_s: f64,
    /// `start`, `faults`, `settle` or `end`.
    pub phase: String,
    /// Share of probed pairs that connected.
    pub reachability: f64,
    /// Share of agents running.
    pub alive: f64,
    /// Share of agents holding the most common key-value digest, when measured.
    pub converged: Option<f64>,
    /// Faults active at the start.
    pub active_faults: usize,
    /// What the agents did in the interval.
    pub counts: Counts,
}

/// Everything a simulated run found.
pub struct Simulated {
    /// The report, as `chaosnet run` writes it.
    pub report: RunReport,
    /// One entry per probe round.
    pub series: Vec<Interval>,
    /// Totals over the whole run (join included).
    pub totals: Counts,
    /// Virtual time simulated, ms.
    pub virtual_ms: u64,
    /// The event log (JSON lines, virtual times only: the same seed gives the same bytes).
    pub log: String,
    /// The world's digest of every core event: equal digests, equal runs.
    pub digest: u64,
    /// The most circuits one relay opened.
    pub max_circuits_per_relay: u64,
    /// Faults of kinds the simulator has no model for (recorded, not applied).
    pub not_simulated: Vec<String>,
    /// Agents that had joined when the join phase ended.
    pub joined: usize,
    /// The fleet's metrics in the Prometheus text format: every agent's events through the
    /// agent's own recorder (counters and histograms summed over the fleet; the state
    /// gauges an agent sets before each scrape are not set).
    pub metrics: String,
}

/// What the drive needs besides the world.
pub struct Inputs<'a> {
    /// The scenario (scaled).
    pub scenario: &'a Scenario,
    /// Its checked `chaos:` section (PromQL SLOs removed).
    pub chaos: &'a ChaosSpec,
    /// Its timeline.
    pub timeline: &'a Timeline,
    /// Shown on a terminal.
    pub progress: ProgressBar,
    /// Print what happens to stderr.
    pub verbose: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Act {
    // Order within one instant: heals before injects (as in the lab), rounds end before
    // new ones start.
    RoundEnd(u32),
    Heal(usize),
    FinalHeal,
    Inject(usize),
    RoundStart(u32),
    End,
}

struct Pending {
    round: Round,
    /// Per pair: the source node and its connect command (`None`: the source was down).
    sent: Vec<Option<(usize, chaosnet_proto::CommandId)>>,
}

/// An applied fault, and how to undo it.
enum Undo {
    Restart(Vec<usize>),
    Cut(u64),
    Impaired(Vec<usize>),
    Nat(Vec<(usize, chaosnet_sim::NatBehaviour)>),
    Nothing,
}

struct Drive<'a> {
    inp: &'a Inputs<'a>,
    built: Built,
    /// Virtual ms of the fault phase's time zero.
    t0: u64,
    log: Vec<String>,
    names: Vec<String>,
    totals: Counts,
    interval: Counts,
    /// Impairments by node, by occurrence id (they stack).
    impairments: BTreeMap<usize, BTreeMap<u32, Impairment>>,
    active: Vec<u32>,
    undo: BTreeMap<usize, (Undo, usize)>,
    records: Vec<FaultRecord>,
    not_simulated: BTreeSet<String>,
    kv_probe: bool,
    metrics: Metrics,
}

fn ms(t: Time) -> u64 {
    t.as_millis()
}

impl Drive<'_> {
    fn now(&self) -> u64 {
        ms(self.built.world.now())
    }

    /// ms relative to the fault phase's time zero.
    fn rel(&self, at: u64) -> i64 {
        at as i64 - self.t0 as i64
    }

    fn say(&self, msg: &str) {
        if self.inp.verbose {
            let t = self.rel(self.now()) as f64 / 1000.0;
            self.inp
                .progress
                .suspend(|| eprintln!("[{t:>+8.1}s virtual] {msg}"));
        }
    }

    fn log(&mut self, event: &str, mut fields: serde_json::Value) {
        let t_ms = self.rel(self.now());
        if let Some(m) = fields.as_object_mut() {
            m.insert("t_ms".into(), t_ms.into());
            m.insert("event".into(), event.into());
        }
        self.log.push(fields.to_string());
    }

    /// Runs the world to `until` in steps, counting events and moving the progress bar.
    fn advance(&mut self, until: u64) {
        while self.now() < until {
            let next = (self.now() + STEP_MS).min(until);
            self.built.world.run_until(Time::from_millis(next));
            for (_, node, e) in self.built.world.take_events() {
                self.interval.add(node, &e);
                self.metrics.record(&e);
            }
            self.inp.progress.set_position(next);
        }
    }

    fn idx(&self, name: &str) -> Option<usize> {
        self.built
            .by_name
            .get(name)
            .map(|&i| self.built.agents[i].idx)
    }

    fn id(&self, name: &str) -> Option<NodeId> {
        self.built
            .by_name
            .get(name)
            .map(|&i| self.built.agents[i].id)
    }

    fn alive(&self) -> (usize, usize) {
        let up = self
            .built
            .agents
            .iter()
            .filter(|a| self.built.world.node(a.idx).up)
            .count();
        (up, self.built.agents.len())
    }

    fn kv_agreement(&self) -> (usize, usize) {
        let mut by: BTreeMap<[u8; chaosnet_proto::kv::riblt::ITEM_LEN], usize> = BTreeMap::new();
        let mut answered = 0;
        for a in &self.built.agents {
            let n = self.built.world.node(a.idx);
            if n.up {
                answered += 1;
                *by.entry(n.node.kv().digest()).or_default() += 1;
            }
        }
        (by.values().copied().max().unwrap_or(0), answered)
    }

    fn start_round(&mut self, n: u32, phase: &str) -> Pending {
        let spec = self.inp.chaos;
        let pairs = sample_pairs(&self.names, spec.sample_pairs, self.inp.scenario.seed, n);
        let mut sent = Vec::new();
        let mut results = Vec::new();
        for (from, to) in pairs {
            let (Some(fi), Some(tid)) = (self.idx(&from), self.id(&to)) else {
                continue;
            };
            let up = self.built.world.node(fi).up && !self.paused(fi);
            results.push(PairResult {
                from,
                to,
                ok: false,
                mode: None,
                elapsed_ms: 0.0,
                error: (!up).then(|| "agent down".to_string()),
            });
            sent.push(up.then(|| {
                let id = self.built.world.command(
                    fi,
                    Command::Connect {
                        peer: tid,
                        fresh: true,
                    },
                );
                (fi, id)
            }));
        }
        let alive = self.alive();
        let kv = self.kv_probe.then(|| self.kv_agreement());
        Pending {
            round: Round {
                n,
                t_ms: self.rel(self.now()),
                phase: phase.to_string(),
                active: self.active.clone(),
                alive,
                pairs: results,
                promql: BTreeMap::new(),
                kv,
            },
            sent,
        }
    }

    /// A paused agent's API would not answer, so a probe from it fails.
    fn paused(&self, idx: usize) -> bool {
        self.impairments
            .get(&idx)
            .is_some_and(|m| m.values().any(|i| i.loss_pct >= 100.0))
    }

    fn end_round(&mut self, p: Pending) -> Round {
        let timeout = self.inp.chaos.connect_timeout_ms as f64;
        let mut r = p.round;
        // A round counts as during a fault only if the fault lasted the whole round: virtual
        // time is exact, so a round that starts just before a heal would otherwise see its
        // connects succeed after it and be judged as if the fault let them through.
        r.active.retain(|id| self.active.contains(id));
        for (pair, sent) in r.pairs.iter_mut().zip(p.sent) {
            let Some((idx, id)) = sent else { continue };
            match self.built.world.result(idx, id) {
                Some(res) if res.outcome == TaskOutcome::Ok => {
                    let el = res.elapsed.as_secs_f64() * 1000.0;
                    pair.elapsed_ms = el;
                    if el <= timeout {
                        pair.ok = true;
                        pair.mode = res.mode.map(|m| m.as_str().to_string());
                    } else {
                        pair.error = Some("timeout".into());
                    }
                }
                Some(res) => {
                    pair.elapsed_ms = res.elapsed.as_secs_f64() * 1000.0;
                    pair.error = Some(res.outcome.as_str().to_string());
                }
                None => {
                    pair.elapsed_ms = timeout;
                    pair.error = Some("timeout".into());
                }
            }
        }
        r
    }

    fn set_impairment(&mut self, idx: usize) {
        let combined = self.impairments.get(&idx).and_then(|m| {
            (!m.is_empty()).then(|| {
                m.values().fold(Impairment::default(), |a, i| Impairment {
                    loss_pct: 100.0 - (100.0 - a.loss_pct) * (100.0 - i.loss_pct) / 100.0,
                    delay_ms: a.delay_ms + i.delay_ms,
                    jitter_ms: a.jitter_ms + i.jitter_ms,
                })
            })
        });
        self.built.world.impair(idx, combined);
    }

    fn impair_all(&mut self, occ: u32, idxs: &[usize], imp: Impairment) {
        for &i in idxs {
            self.impairments.entry(i).or_default().insert(occ, imp);
            self.set_impairment(i);
        }
    }

    /// Agents of `targets` (site names for site-level kinds) as node indices.
    fn nodes_of(&self, o: &Occurrence) -> Vec<usize> {
        if o.kind.site_level() {
            self.built
                .agents
                .iter()
                .filter(|a| o.targets.contains(&a.site))
                .map(|a| a.idx)
                .collect()
        } else {
            o.targets.iter().filter_map(|t| self.idx(t)).collect()
        }
    }

    fn cut(&mut self, groups: &[Vec<usize>], rule: CutRule, oneway: bool) -> u64 {
        let mut group = vec![0u32; self.built.world.len()];
        for (g, members) in groups.iter().enumerate() {
            for &i in members {
                group[i] = g as u32 + 1;
            }
        }
        self.built.world.cut(Cut {
            group,
            rule,
            oneway,
        })
    }

    /// Applies occurrence `i`; returns the mechanism and how to undo it.
    fn apply(&mut self, i: usize) -> (String, Undo) {
        let o = &self.inp.timeline.occurrences[i];
        let nodes = self.nodes_of(o);
        let occ = o.id;
        match &o.kind {
            FaultKind::Kill => {
                for &n in &nodes {
                    self.built.world.kill(n);
                }
                ("node stopped, graph kept".into(), Undo::Restart(nodes))
            }
            FaultKind::Restart => {
                for &n in &nodes {
                    self.built.world.kill(n);
                    self.built.world.restart(n);
                }
                ("node restarted from its graph".into(), Undo::Nothing)
            }
            FaultKind::Pause => {
                let imp = Impairment {
                    loss_pct: 100.0,
                    ..Impairment::default()
                };
                self.impair_all(occ, &nodes, imp);
                ("every message dropped".into(), Undo::Impaired(nodes))
            }
            FaultKind::Loss { loss_pct } => {
                let imp = Impairment {
                    loss_pct: *loss_pct,
                    ..Impairment::default()
                };
                self.impair_all(occ, &nodes, imp);
                ("message loss".into(), Undo::Impaired(nodes))
            }
            FaultKind::Delay {
                delay_ms,
                jitter_ms,
            } => {
                let imp = Impairment {
                    loss_pct: 0.0,
                    delay_ms: *delay_ms,
                    jitter_ms: *jitter_ms,
                };
                self.impair_all(occ, &nodes, imp);
                ("message delay".into(), Undo::Impaired(nodes))
            }
            FaultKind::LinkDown { site: false } => {
                let imp = Impairment {
                    loss_pct: 100.0,
                    ..Impairment::default()
                };
                self.impair_all(occ, &nodes, imp);
                ("host link down".into(), Undo::Impaired(nodes))
            }
            FaultKind::LinkDown { site: true } => {
                let inside: BTreeSet<usize> = nodes.iter().copied().collect();
                let outside: Vec<usize> = (0..self.built.world.len())
                    .filter(|n| !inside.contains(n))
                    .collect();
                let id = self.cut(&[nodes, outside], CutRule::FirstTwo, false);
                ("site cut from the internet".into(), Undo::Cut(id))
            }
            FaultKind::Partition { shape, oneway } => {
                let groups: Vec<Vec<usize>> = o
                    .groups
                    .iter()
                    .map(|g| g.iter().filter_map(|n| self.idx(n)).collect())
                    .collect();
                let rule = match shape {
                    Shape::Ring => CutRule::Ring(groups.first().map_or(0, |g| g.len() as u32)),
                    Shape::Sites => CutRule::Distinct,
                    _ => CutRule::FirstTwo,
                };
                let groups = if *shape == Shape::Ring {
                    // Ring positions are groups of one.
                    groups
                        .first()
                        .map(|g| g.iter().map(|&n| vec![n]).collect())
                        .unwrap_or_default()
                } else {
                    groups
                };
                let id = self.cut(&groups, rule, *oneway);
                ("messages between groups dropped".into(), Undo::Cut(id))
            }
            FaultKind::NatSwap { to } => {
                let mut old = Vec::new();
                for site in &o.targets {
                    let Some(&nat) = self.built.site_nat.get(site) else {
                        continue;
                    };
                    let Some(s) = self.inp.scenario.sites.iter().find(|s| &s.name == site) else {
                        continue;
                    };
                    let prev = behaviour(s.nat, s.conntrack.timeouts().udp_s, s.hairpin);
                    let next = behaviour(*to, s.conntrack.timeouts().udp_s, s.hairpin);
                    self.built.world.swap_nat(nat, next);
                    old.push((nat, prev));
                }
                (
                    "NAT model switched, mappings flushed".into(),
                    Undo::Nat(old),
                )
            }
            FaultKind::Bandwidth { .. } | FaultKind::IpChange => {
                self.not_simulated.insert(o.kind.name().to_string());
                ("not simulated".into(), Undo::Nothing)
            }
        }
    }

    fn revert(&mut self, occ: u32, undo: Undo) {
        match undo {
            Undo::Restart(nodes) => {
                for n in nodes {
                    if !self.built.world.node(n).up {
                        self.built.world.restart(n);
                    }
                }
            }
            Undo::Cut(id) => self.built.world.heal_cut(id),
            Undo::Impaired(nodes) => {
                for n in nodes {
                    if let Some(m) = self.impairments.get_mut(&n) {
                        m.remove(&occ);
                    }
                    self.set_impairment(n);
                }
            }
            Undo::Nat(old) => {
                for (nat, b) in old {
                    self.built.world.swap_nat(nat, b);
                }
            }
            Undo::Nothing => {}
        }
    }

    fn inject(&mut self, i: usize) {
        let o = &self.inp.timeline.occurrences[i];
        let (id, fault, kind, targets) = (
            o.id,
            o.fault.clone(),
            o.kind.name().to_string(),
            o.targets.clone(),
        );
        let instant = matches!(o.kind, FaultKind::Restart);
        let (mechanism, undo) = self.apply(i);
        let not_simulated = mechanism == "not simulated";
        if !instant && !not_simulated {
            self.active.push(id);
            self.undo.insert(i, (undo, self.records.len()));
        }
        self.say(&format!(
            "inject #{id} {kind} {fault} on {} target(s) ({mechanism})",
            targets.len()
        ));
        self.log(
            "inject",
            serde_json::json!({"id": id, "fault": fault, "kind": kind,
                "targets": targets.len(), "mechanism": mechanism}),
        );
        let now = self.now();
        self.records.push(FaultRecord {
            id,
            fault,
            kind,
            targets,
            mechanism,
            inject_at_ms: self.rel(now),
            heal_at_ms: None,
            inject_cost_ms: 0.0,
            heal_cost_ms: None,
            recovery_s: None,
        });
    }

    fn heal(&mut self, i: usize) {
        let Some((undo, ri)) = self.undo.remove(&i) else {
            return;
        };
        let o = &self.inp.timeline.occurrences[i];
        let (id, fault, kind) = (o.id, o.fault.clone(), o.kind.name());
        self.revert(id, undo);
        self.active.retain(|x| *x != id);
        let at = self.rel(self.now());
        self.records[ri].heal_at_ms = Some(at);
        self.records[ri].heal_cost_ms = Some(0.0);
        self.say(&format!("heal   #{id} {kind} {fault}"));
        self.log(
            "heal",
            serde_json::json!({"id": id, "fault": fault, "kind": kind}),
        );
    }

    fn log_round(&mut self, r: &Round) {
        let digest = format!("{:016x}", self.built.world.digest());
        self.log(
            "probe",
            serde_json::json!({"round": r.n, "phase": r.phase, "reach": r.reach(),
                "alive": r.alive_share(), "active": r.active, "converged": r.converged(),
                "world_digest": digest}),
        );
    }
}

/// Runs the world until every agent joined or `JOIN_GRACE_MS` after `last_start`, counting
/// events into `counts`; returns how many joined and when (virtual ms).
pub fn join(
    built: &mut Built,
    last_start: u64,
    counts: &mut Counts,
    metrics: &Metrics,
    progress: &ProgressBar,
) -> (usize, u64) {
    let deadline = last_start + JOIN_GRACE_MS;
    loop {
        let next = built.world.now().as_millis() + STEP_MS;
        built.world.run_until(Time::from_millis(next));
        for (_, node, e) in built.world.take_events() {
            counts.add(node, &e);
            metrics.record(&e);
        }
        progress.set_position(next);
        let joined = built
            .agents
            .iter()
            .filter(|a| built.world.node(a.idx).node.joined())
            .count();
        if joined == built.agents.len() || next >= deadline {
            return (joined, next);
        }
    }
}

/// Runs `built` through the scenario in virtual time (see the module docs).
pub fn drive(inp: &Inputs<'_>, mut built: Built) -> Simulated {
    let spec = inp.chaos;
    let timeline = inp.timeline;
    let last_start = built.start_all();
    let total_agents = built.agents.len();
    let names = built.agents.iter().map(|a| a.name.clone()).collect();
    let kv_probe = spec.slos.iter().any(|s| s.probe == ProbeKind::Converged);
    let mut d = Drive {
        inp,
        built,
        t0: 0,
        log: Vec::new(),
        names,
        totals: Counts::default(),
        interval: Counts::default(),
        impairments: BTreeMap::new(),
        active: Vec::new(),
        undo: BTreeMap::new(),
        records: Vec::new(),
        not_simulated: BTreeSet::new(),
        kv_probe,
        metrics: Metrics::new(&inp.scenario.network.to_string()),
    };
    d.log(
        "run",
        serde_json::json!({"seed": inp.scenario.seed, "agents": total_agents,
            "occurrences": timeline.occurrences.len()}),
    );

    // Join: until every agent joined, or the grace after the last start ran out.
    let wall = Instant::now();
    inp.progress.set_length(
        last_start + JOIN_GRACE_MS + spec.warmup_ms + timeline.phase_ms + spec.settle_ms,
    );
    inp.progress.set_message("joining");
    let (joined, join_ms) = join(
        &mut d.built,
        last_start,
        &mut d.interval,
        &d.metrics,
        &inp.progress,
    );
    d.inp.progress.set_length(
        join_ms
            + spec.warmup_ms
            + spec.connect_timeout_ms
            + timeline.phase_ms
            + spec.settle_ms
            + spec.connect_timeout_ms,
    );
    d.say(&format!(
        "{joined}/{total_agents} agents joined after {:.1} virtual s ({:.1} s wall)",
        join_ms as f64 / 1000.0,
        wall.elapsed().as_secs_f64()
    ));
    d.log(
        "joined",
        serde_json::json!({"joined": joined, "agents": total_agents}),
    );
    if joined < total_agents {
        // The lab's `run` stops here unless --allow-unjoined; measuring a fleet that joins
        // slowly is what a simulator is for, so it goes on and says so.
        d.inp.progress.suspend(|| {
            eprintln!(
                "chaosnet: warning: {joined}/{total_agents} agents joined within {} s of the last start; the run goes on (as `run --allow-unjoined` would)",
                JOIN_GRACE_MS / 1000
            )
        });
    }
    d.inp.progress.set_message("warm-up");
    let warm_end = d.now() + spec.warmup_ms;
    d.advance(warm_end);

    // The start round; time zero of the fault phase is its end.
    let start = d.start_round(0, "start");
    d.t0 = d.now() + spec.connect_timeout_ms;
    d.advance(d.t0);
    let mut start = d.end_round(start);
    start.t_ms = -(spec.connect_timeout_ms as i64);
    d.log_round(&start);
    d.say(&format!(
        "start probe ({} pairs): {}",
        start.pairs.len(),
        start.describe()
    ));
    let mut series = vec![interval(&start, std::mem::take(&mut d.interval))];
    d.totals.merge(&series[0].counts);
    let mut rounds = vec![start];

    // The agenda, in virtual ms from time zero.
    let t0 = d.t0;
    let mut agenda: BTreeSet<(u64, Act)> = BTreeSet::new();
    for (i, o) in timeline.occurrences.iter().enumerate() {
        agenda.insert((o.start_ms, Act::Inject(i)));
        if let Some(e) = o.end_ms
            && e < timeline.phase_ms
        {
            agenda.insert((e, Act::Heal(i)));
        }
    }
    agenda.insert((timeline.phase_ms, Act::FinalHeal));
    let stop_ms = timeline.phase_ms + spec.settle_ms;
    let step = spec.probe_interval_ms.max(1);
    let mut n = 1u32;
    let mut t = 0u64;
    while t < stop_ms {
        agenda.insert((t, Act::RoundStart(n)));
        agenda.insert((t + spec.connect_timeout_ms, Act::RoundEnd(n)));
        n += 1;
        t += step;
    }
    agenda.insert((stop_ms, Act::End));
    d.inp.progress.set_message("faults");

    let mut pending: BTreeMap<u32, Pending> = BTreeMap::new();
    let mut ended = false;
    while let Some((at, act)) = agenda.pop_first() {
        d.advance(t0 + at);
        match act {
            Act::Inject(i) => d.inject(i),
            Act::Heal(i) => d.heal(i),
            Act::FinalHeal => {
                let open: Vec<usize> = d.undo.keys().copied().collect();
                for i in open {
                    d.heal(i);
                }
                d.say("final heal done; settling");
                d.inp.progress.set_message("settle");
            }
            Act::RoundStart(k) => {
                let phase = if at < timeline.phase_ms {
                    "faults"
                } else {
                    "settle"
                };
                let p = d.start_round(k, phase);
                pending.insert(k, p);
            }
            Act::RoundEnd(k) => {
                if let Some(p) = pending.remove(&k) {
                    let r = d.end_round(p);
                    d.log_round(&r);
                    d.say(&format!("probe {k}: {}", r.describe()));
                    let iv = interval(&r, std::mem::take(&mut d.interval));
                    d.totals.merge(&iv.counts);
                    series.push(iv);
                    rounds.push(r);
                }
            }
            Act::End if !ended => {
                ended = true;
                // The end round, after the settle window, like the lab's.
                let k = n;
                let p = d.start_round(k, "end");
                pending.insert(k, p);
                agenda.insert((at + spec.connect_timeout_ms, Act::RoundEnd(k)));
            }
            Act::End => {}
        }
    }
    rounds.sort_by_key(|r| r.n);
    series.sort_by_key(|s| s.round);
    let recover_to = spec.recover_to();
    let mut records = std::mem::take(&mut d.records);
    for r in &mut records {
        r.recovery_s = r
            .heal_at_ms
            .and_then(|h| recovery_after(&rounds, h, recover_to));
    }
    let verdicts = judge(&spec.slos, &rounds, &records);
    let pass = verdicts.iter().all(|v| v.pass);
    d.log("verdict", serde_json::json!({"pass": pass}));
    let digest = d.built.world.digest();
    let max_circuits_per_relay = d
        .totals
        .circuits_by_relay
        .values()
        .copied()
        .max()
        .unwrap_or(0);
    let agents = d
        .built
        .agents
        .iter()
        .map(|a| (a.name.clone(), (a.site.clone(), a.nat.clone())))
        .collect();
    let virtual_ms = d.now();
    d.inp.progress.finish_and_clear();
    let mut log = d.log.join("\n");
    log.push('\n');
    Simulated {
        report: RunReport {
            run_id: format!("sim-{}", inp.scenario.seed),
            scenario: inp.scenario.name.clone(),
            seed: inp.scenario.seed,
            chaos: spec.clone(),
            timeline: timeline.clone(),
            rounds,
            faults: records,
            verdicts,
            pass,
            netem: (
                false,
                "virtual time: loss and delay are applied by the simulator".into(),
            ),
            agents,
        },
        series,
        totals: d.totals,
        virtual_ms,
        log,
        digest,
        max_circuits_per_relay,
        not_simulated: d.not_simulated.into_iter().collect(),
        joined,
        metrics: d.metrics.encode(),
    }
}

fn interval(r: &Round, counts: Counts) -> Interval {
    Interval {
        round: r.n,
        t_s: r.t_ms as f64 / 1000.0,
        phase: r.phase.clone(),
        reachability: r.reach(),
        alive: r.alive_share(),
        converged: r.converged(),
        active_faults: r.active.len(),
        counts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chaosnet_proto::ConnMode;
    use std::time::Duration;

    #[test]
    fn counts_tally_tasks_connects_and_lookups() {
        let mut c = Counts::default();
        c.add(
            1,
            &Event::TaskFinished {
                kind: TaskKind::Lookup,
                outcome: TaskOutcome::Ok,
                elapsed: Duration::from_millis(5),
            },
        );
        c.add(
            1,
            &Event::TaskFinished {
                kind: TaskKind::Lookup,
                outcome: TaskOutcome::NotFound,
                elapsed: Duration::from_millis(5),
            },
        );
        c.add(
            2,
            &Event::ConnectAttempt {
                path: ConnMode::Punched,
                failure: None,
                elapsed: Duration::from_millis(5),
                peer_nat: chaosnet_proto::NatType::Unknown,
            },
        );
        c.add(
            3,
            &Event::Relay {
                event: RelayEvent::Opened,
            },
        );
        assert_eq!((c.lookups_ok, c.lookups_total), (1, 2));
        assert_eq!(c.tasks["lookup"], (1, 2));
        assert_eq!(c.connects["punched"], 1);
        assert_eq!(c.circuits_by_relay[&3], 1);
        let mut total = Counts::default();
        total.merge(&c);
        total.merge(&c);
        assert_eq!((total.lookups_ok, total.lookups_total), (2, 4));
        assert_eq!(total.connects["punched"], 2);
    }
}
