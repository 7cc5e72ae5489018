//! The fault timeline: every occurrence of every fault, with its targets, decided up front
//! from the scenario and the run seed.
//!
//! A fault happens at `at_s`, then every `every_s` while the start is before `until_s`; each
//! occurrence happens with `probability` and re-draws its targets (so churn kills a
//! different 20% each time). Every random decision of occurrence `k` of fault `i` comes
//! from its own stream, `SeededRng::derive(seed, "occurrence", i << 32 | k)`, so the same
//! scenario and seed give the same [`Timeline`], and adding a fault leaves the others'
//! draws alone. Partition groups are drawn here too, so the timeline says who is cut from
//! whom.
//!
//! [`timeline`] also refuses contradictory overlaps: two occurrences of different faults
//! that hold the same resource of the same target at the same time (two process faults on
//! one agent, two delays or two bandwidth limits on one agent, two router changes on one
//! site, two link faults on one link). Loss and partitions compose, so they never conflict.
//!
//! What it does not do: say how a fault is applied (see `fault`), or keep time.

use std::collections::BTreeMap;

use serde::Serialize;

use super::rng::SeededRng;
use super::select::Target;
use super::spec::{At, ChaosSpec, FaultKind, FaultSpec, Shape};

/// One occurrence of a fault.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Occurrence {
    /// Number in start order, from 1.
    pub id: u32,
    /// The fault's name.
    pub fault: String,
    /// The fault's index in the scenario.
    pub fault_index: usize,
    /// What it does.
    pub kind: FaultKind,
    /// Start, ms into the fault phase.
    pub start_ms: u64,
    /// Heal, ms into the fault phase (`None`: at the final heal).
    pub end_ms: Option<u64>,
    /// Agents hit (site names for site-level kinds), in plan order.
    pub targets: Vec<String>,
    /// Partitions only: the groups (see `fault::partition_blocks`).
    pub groups: Vec<Vec<String>>,
}

impl Occurrence {
    /// Heal time, with "until the final heal" as the phase end.
    pub fn end_or(&self, phase_ms: u64) -> u64 {
        self.end_ms.unwrap_or(phase_ms).max(self.start_ms + 1)
    }
}

/// The whole plan of faults of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Timeline {
    /// The run seed it was drawn with.
    pub seed: u64,
    /// Length of the fault phase, ms.
    pub phase_ms: u64,
    /// Occurrences by start time (ties: scenario order).
    pub occurrences: Vec<Occurrence>,
}

/// A contradictory overlap (or another timeline problem), at the later fault's line.
#[derive(Clone, Debug, PartialEq)]
pub struct TimelineError {
    /// Where.
    pub at: At,
    /// What.
    pub message: String,
}

/// Expands `spec` for the agents `targets` with `seed`.
pub fn timeline(
    spec: &ChaosSpec,
    targets: &[Target],
    seed: u64,
) -> Result<Timeline, TimelineError> {
    let mut occ: Vec<Occurrence> = Vec::new();
    for (i, f) in spec.faults.iter().enumerate() {
        let s = &f.schedule;
        let mut t = s.at_ms;
        let mut k: u64 = 0;
        while t < s.until_ms.min(spec.duration_ms) {
            let mut rng = SeededRng::derive(seed, "occurrence", ((i as u64) << 32) | k);
            let happens = s.probability >= 1.0 || rng.chance(s.probability);
            if happens {
                let (tg, groups) = draw(f, targets, &mut rng);
                if !tg.is_empty() {
                    occ.push(Occurrence {
                        id: 0,
                        fault: f.name.clone(),
                        fault_index: i,
                        kind: f.kind.clone(),
                        start_ms: t,
                        end_ms: s.duration_ms.map(|d| t + d),
                        targets: tg,
                        groups,
                    });
                }
            }
            k += 1;
            match s.every_ms {
                Some(e) if e > 0 => t += e,
                _ => break,
            }
        }
    }
    occ.sort_by_key(|o| (o.start_ms, o.fault_index));
    for (n, o) in occ.iter_mut().enumerate() {
        o.id = n as u32 + 1;
    }
    check_overlaps(&occ, &spec.faults, spec.duration_ms)?;
    Ok(Timeline {
        seed,
        phase_ms: spec.duration_ms,
        occurrences: occ,
    })
}

/// Draws the targets (and partition groups) of one occurrence.
fn draw(f: &FaultSpec, all: &[Target], rng: &mut SeededRng) -> (Vec<String>, Vec<Vec<String>>) {
    let matched: Vec<&Target> = f.selector.filter(all);
    if f.kind.site_level() {
        let mut sites: Vec<String> = Vec::new();
        for t in matched.iter().filter(|t| t.nat != "none") {
            if !sites.contains(&t.site) {
                sites.push(t.site.clone());
            }
        }
        return (f.mode.pick(&sites, rng), Vec::new());
    }
    let names: Vec<String> = matched.iter().map(|t| t.name.clone()).collect();
    let chosen = f.mode.pick(&names, rng);
    let groups = match &f.kind {
        FaultKind::Partition { shape, .. } => {
            let mut order = chosen.clone();
            match shape {
                Shape::Isolate => {
                    let rest = all
                        .iter()
                        .map(|t| t.name.clone())
                        .filter(|n| !chosen.contains(n))
                        .collect();
                    vec![chosen.clone(), rest]
                }
                Shape::Halves | Shape::Majority => {
                    rng.shuffle(&mut order);
                    let n = order.len();
                    let a = if *shape == Shape::Halves {
                        n.div_ceil(2)
                    } else {
                        n / 2 + 1
                    }
                    .min(n);
                    let b = order.split_off(a);
                    vec![sorted(order, all), sorted(b, all)]
                }
                Shape::Ring => {
                    rng.shuffle(&mut order);
                    vec![order]
                }
                Shape::Bridge => {
                    rng.shuffle(&mut order);
                    let bridge: Vec<String> = order.drain(..order.len().min(1)).collect();
                    let n = order.len();
                    let b = order.split_off(n.div_ceil(2));
                    vec![sorted(order, all), sorted(b, all), bridge]
                }
                Shape::Sites => {
                    let mut by_site: Vec<(String, Vec<String>)> = Vec::new();
                    for name in &chosen {
                        let site = all
                            .iter()
                            .find(|t| &t.name == name)
                            .map_or(String::new(), |t| t.site.clone());
                        match by_site.iter_mut().find(|(s, _)| *s == site) {
                            Some((_, v)) => v.push(name.clone()),
                            None => by_site.push((site, vec![name.clone()])),
                        }
                    }
                    by_site.into_iter().map(|(_, v)| v).collect()
                }
            }
        }
        _ => Vec::new(),
    };
    (chosen, groups)
}

/// Names back in plan order.
fn sorted(mut v: Vec<String>, all: &[Target]) -> Vec<String> {
    v.sort_by_key(|n| all.iter().position(|t| &t.name == n));
    v
}

/// The resource a fault kind holds on each target, if it cannot be shared.
fn resource(kind: &FaultKind) -> Option<&'static str> {
    match kind {
        FaultKind::Kill | FaultKind::Restart | FaultKind::Pause => {
            Some("the agent process (kill/restart/pause)")
        }
        FaultKind::Delay { .. } => Some("the agent's delay impairment"),
        FaultKind::Bandwidth { .. } => Some("the agent's bandwidth limit"),
        FaultKind::LinkDown { site: false } => Some("the agent's link"),
        FaultKind::LinkDown { site: true } => Some("the site's WAN link"),
        FaultKind::NatSwap { .. } | FaultKind::IpChange => {
            Some("the site's NAT router (nat-swap/ip-change)")
        }
        FaultKind::Partition { .. } | FaultKind::Loss { .. } => None,
    }
}

fn check_overlaps(
    occ: &[Occurrence],
    faults: &[FaultSpec],
    phase_ms: u64,
) -> Result<(), TimelineError> {
    // Per (resource, target): the intervals held so far, with their occurrence.
    let mut held: BTreeMap<(&'static str, &str), Vec<&Occurrence>> = BTreeMap::new();
    for o in occ {
        let Some(res) = resource(&o.kind) else {
            continue;
        };
        for t in &o.targets {
            let list = held.entry((res, t.as_str())).or_default();
            if let Some(prev) = list.iter().find(|p| {
                p.fault_index != o.fault_index
                    && p.start_ms < o.end_or(phase_ms)
                    && o.start_ms < p.end_or(phase_ms)
            }) {
                let later = &faults[o.fault_index.max(prev.fault_index)];
                let earlier = &faults[o.fault_index.min(prev.fault_index)];
                return Err(TimelineError {
                    at: later.at,
                    message: format!(
                        "fault {:?} overlaps fault {:?} (line {}): both hold {res} of {t} \
                         around {:.1} s; give them disjoint times or targets",
                        later.name,
                        earlier.name,
                        earlier.at.line,
                        o.start_ms.max(prev.start_ms) as f64 / 1000.0
                    ),
                });
            }
            list.push(o);
        }
    }
    Ok(())
}
