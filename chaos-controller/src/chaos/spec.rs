//! The `chaos:` section of a scenario: faults, their targets and schedules, probe settings
//! and SLOs. Parsed as part of the scenario (see [`crate::scenario`], which keeps it as
//! written) and validated here against the agents of the scenario's plan
//! ([`super::check`]), so a bad fault is refused with `file:line:col` before anything is
//! created. [`single`] validates one fault given as values (`chaosnet fault`'s flags) the
//! same way.
//!
//! # Schema
//!
//! ```yaml
//! chaos:
//!   warmup_s: 5            # after every agent joined, before the first fault; default 5
//!   duration_s: 60         # length of the fault phase; faults are timed from its start;
//!                          # default 30
//!   settle_s: 10           # after the final heal, before the end probes; default 10
//!   probe_interval_s: 2    # one probe round every this many seconds; default 2
//!   sample_pairs: 20       # agent pairs tried per reachability round; default 20, 1..=1000
//!   connect_timeout_ms: 3000  # a /connect slower than this counts as failed; default 3000
//!   faults:
//!     - name: cut          # default: <kind>-<index>
//!       kind: partition    # kill | restart | pause | partition | loss | delay | bandwidth |
//!                          # nat-swap | ip-change | link-down (clock-skew: not supported)
//!       shape: halves      # partition only: isolate | halves | majority | ring | bridge | sites
//!       oneway: false      # partition only: block only first group -> second group
//!       select: {site: [home1], nat: [full-cone], role: peer, name: "home*", label: "tier=a"}
//!       mode: all          # one | all | fixed:N | percent:P; default all
//!       at_s: 10           # first occurrence, seconds into the fault phase; default 0
//!       every_s: 10        # repeat period (omit for one occurrence)
//!       until_s: 50        # no occurrence starts at or after this; default duration_s
//!       duration_s: 5      # heal after this long; default: at the final heal
//!       probability: 1.0   # each occurrence happens with this probability; default 1
//!       loss_pct: 20       # loss: percent of packets dropped each way
//!       delay_ms: 100      # delay: added delay; jitter_ms: +- variation (<= delay_ms)
//!       rate_kbit: 512     # bandwidth: tbf rate each way
//!       to: symmetric      # nat-swap: the NAT type to swap the site's router to
//!       scope: agent       # link-down: agent (host link) or site (router WAN); default agent
//!   slos:
//!     - name: reach-at-end
//!       probe: reachability   # reachability | alive | recovery | mode-share | promql
//!       when: end             # start | end | continuous | during-fault; default end
//!       min: 0.99             # value must be >= min and/or <= max (at least one)
//!       mode: direct          # mode-share: direct | punched | relayed
//!       query: 'sum(up)'      # promql: an instant query; its first sample is the value
//!       recover_to: 0.99      # recovery: reachability that counts as recovered; default 0.99
//! ```
//!
//! Values: reachability, alive and mode-share are fractions 0..1; recovery is seconds from a
//! heal to the first probe round at `recover_to` or above (a heal that never recovers
//! counts as the time to the end of the run, and fails any finite `max`).
//!
//! What it does not do: expand the schedule (see `schedule`), which also checks overlapping
//! contradictory faults.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};

use super::select::{self, Mode, Role, Selector, Target};
use crate::plan::{INNER_CHOICES, NAT_CHOICES, NatKind};

/// The fault kinds as written.
pub const FAULT_KINDS: &str =
    "kill, restart, pause, partition, loss, delay, bandwidth, nat-swap, ip-change, link-down";
/// Partition shapes as written.
pub const SHAPES: &str = "isolate, halves, majority, ring, bridge, sites";
/// Probe kinds as written.
pub const PROBES: &str = "reachability, alive, recovery, mode-share, promql, converged";
/// SLO evaluation modes as written.
pub const WHENS: &str = "start, end, continuous, during-fault";
/// Longest delay accepted, in ms (the agent's own limit is larger; this keeps runs sane).
pub const MAX_DELAY_MS: u64 = 10_000;
/// Most faults in a scenario.
pub const MAX_FAULTS: usize = 64;
/// Most occurrences of one repeated fault.
pub const MAX_OCCURRENCES: u64 = 10_000;

/// The validated `chaos:` section.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChaosSpec {
    /// Warm-up after join, in ms.
    pub warmup_ms: u64,
    /// Fault phase length, in ms.
    pub duration_ms: u64,
    /// Settle window after the final heal, in ms.
    pub settle_ms: u64,
    /// Probe round period, in ms.
    pub probe_interval_ms: u64,
    /// Pairs per reachability round.
    pub sample_pairs: usize,
    /// Connect timeout per pair, in ms.
    pub connect_timeout_ms: u64,
    /// Faults in file order.
    pub faults: Vec<FaultSpec>,
    /// SLOs in file order.
    pub slos: Vec<SloSpec>,
}

impl Default for ChaosSpec {
    fn default() -> Self {
        ChaosSpec {
            warmup_ms: 5_000,
            duration_ms: 30_000,
            settle_ms: 10_000,
            probe_interval_ms: 2_000,
            sample_pairs: 20,
            connect_timeout_ms: 3_000,
            faults: Vec::new(),
            slos: Vec::new(),
        }
    }
}

impl ChaosSpec {
    /// Reachability that counts as recovered after a heal: the first recovery SLO's
    /// `recover_to`, else 0.99.
    pub fn recover_to(&self) -> f64 {
        self.slos
            .iter()
            .find_map(|s| match s.probe {
                ProbeKind::Recovery { recover_to } => Some(recover_to),
                _ => None,
            })
            .unwrap_or(0.99)
    }
}

/// Where something was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct At {
    /// Line, from 1 (0 when unknown).
    pub line: u64,
    /// Column, from 1 (0 when unknown).
    pub column: u64,
}

impl At {
    fn of(l: Location) -> At {
        At {
            line: l.line(),
            column: l.column(),
        }
    }
}

/// Partition shapes (see the module docs of `fault`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// The targets against every other agent.
    Isolate,
    /// The targets split in two halves (first half rounded up).
    Halves,
    /// A majority (more than half) against the rest.
    Majority,
    /// Each target reaches only its two ring neighbours among the targets.
    Ring,
    /// Two halves cut apart, plus one bridge agent that reaches both.
    Bridge,
    /// Each selected site cut from every other selected site.
    Sites,
}

/// What a fault does.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL; healed by starting the agent again (same data dir).
    Kill,
    /// Stop and start at once; nothing to heal.
    Restart,
    /// SIGSTOP; healed by SIGCONT.
    Pause,
    /// nft drop rules between groups of agents.
    Partition {
        /// The shape.
        shape: Shape,
        /// Block only the first group towards the others.
        oneway: bool,
    },
    /// Random packet loss (nft `numgen random`).
    Loss {
        /// Percent dropped each way.
        loss_pct: f64,
    },
    /// Added delay and jitter (netem if present, else the agent's userspace impairment).
    Delay {
        /// Delay in ms.
        delay_ms: u64,
        /// Jitter in ms (<= delay).
        jitter_ms: u64,
    },
    /// Bandwidth limit (tbf).
    Bandwidth {
        /// Rate in kbit/s.
        rate_kbit: u64,
    },
    /// The site's NAT router switched to another type, conntrack flushed.
    NatSwap {
        /// The new type.
        to: NatKind,
    },
    /// The site's public address changes, conntrack flushed.
    IpChange,
    /// A link set down.
    LinkDown {
        /// Whether the site's WAN link (true) or each agent's host link (false) goes down.
        site: bool,
    },
}

impl FaultKind {
    /// The kind as written.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Restart => "restart",
            FaultKind::Pause => "pause",
            FaultKind::Partition { .. } => "partition",
            FaultKind::Loss { .. } => "loss",
            FaultKind::Delay { .. } => "delay",
            FaultKind::Bandwidth { .. } => "bandwidth",
            FaultKind::NatSwap { .. } => "nat-swap",
            FaultKind::IpChange => "ip-change",
            FaultKind::LinkDown { .. } => "link-down",
        }
    }

    /// Whether it targets sites (their routers) rather than agents.
    pub fn site_level(&self) -> bool {
        matches!(
            self,
            FaultKind::NatSwap { .. } | FaultKind::IpChange | FaultKind::LinkDown { site: true }
        )
    }
}

/// When a fault happens. Times in ms from the start of the fault phase.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Schedule {
    /// First occurrence.
    pub at_ms: u64,
    /// Repeat period.
    pub every_ms: Option<u64>,
    /// No occurrence starts at or after this.
    pub until_ms: u64,
    /// Heal after this long (`None`: at the final heal).
    pub duration_ms: Option<u64>,
    /// Probability of each occurrence.
    pub probability: f64,
}

/// One validated fault.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultSpec {
    /// Name (unique).
    pub name: String,
    /// Where it was written.
    pub at: At,
    /// What it does.
    pub kind: FaultKind,
    /// Which agents it may hit.
    pub selector: Selector,
    /// How many of them.
    pub mode: Mode,
    /// When.
    pub schedule: Schedule,
}

/// What a probe measures.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "probe", rename_all = "kebab-case")]
pub enum ProbeKind {
    /// Share of sampled pairs that connect with a fresh connection.
    Reachability,
    /// Share of agents whose API answers.
    Alive,
    /// Seconds from each heal to recovery.
    Recovery {
        /// Reachability that counts as recovered.
        recover_to: f64,
    },
    /// Share of successful connects in a mode.
    ModeShare {
        /// `direct`, `punched` or `relayed`.
        mode: String,
    },
    /// A PromQL instant query against the run's Prometheus.
    Promql {
        /// The query.
        query: String,
    },
    /// Share of answering agents whose key-value replica has the most common digest: 1
    /// when every live agent holds the same set.
    Converged,
}

impl ProbeKind {
    /// The name the scenario writes it with.
    pub fn name(&self) -> &'static str {
        match self {
            ProbeKind::Reachability => "reachability",
            ProbeKind::Alive => "alive",
            ProbeKind::Recovery { .. } => "recovery",
            ProbeKind::ModeShare { .. } => "mode-share",
            ProbeKind::Promql { .. } => "promql",
            ProbeKind::Converged => "converged",
        }
    }
}

/// When an SLO is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum When {
    /// The round before the first fault.
    Start,
    /// The round after the settle window.
    End,
    /// Every round.
    Continuous,
    /// Every round while a fault is active.
    DuringFault,
}

/// One validated SLO.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SloSpec {
    /// Name.
    pub name: String,
    /// Where it was written.
    pub at: At,
    /// The probe.
    pub probe: ProbeKind,
    /// When it is judged.
    pub when: When,
    /// Value must be at least this.
    pub min: Option<f64>,
    /// Value must be at most this.
    pub max: Option<f64>,
}

impl SloSpec {
    /// Whether `v` satisfies the comparators.
    pub fn holds(&self, v: f64) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }

    /// `>= 0.99`, `<= 30`, or both.
    pub fn bound_text(&self) -> String {
        match (self.min, self.max) {
            (Some(a), Some(b)) => format!(">= {a} and <= {b}"),
            (Some(a), None) => format!(">= {a}"),
            (None, Some(b)) => format!("<= {b}"),
            (None, None) => "any".into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw form
// ---------------------------------------------------------------------------------------------

/// The `chaos:` section as written.
#[derive(Clone, Debug, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawChaos {
    #[serde(default)]
    warmup_s: Option<Spanned<f64>>,
    #[serde(default)]
    duration_s: Option<Spanned<f64>>,
    #[serde(default)]
    settle_s: Option<Spanned<f64>>,
    #[serde(default)]
    probe_interval_s: Option<Spanned<f64>>,
    #[serde(default)]
    sample_pairs: Option<Spanned<u64>>,
    #[serde(default)]
    connect_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    faults: Vec<Spanned<RawFault>>,
    #[serde(default)]
    slos: Vec<Spanned<RawSlo>>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    #[serde(default)]
    name: Option<Spanned<String>>,
    kind: Spanned<String>,
    #[serde(default)]
    shape: Option<Spanned<String>>,
    #[serde(default)]
    oneway: Option<Spanned<bool>>,
    #[serde(default)]
    select: Option<Spanned<RawSelector>>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
    #[serde(default)]
    at_s: Option<Spanned<f64>>,
    #[serde(default)]
    every_s: Option<Spanned<f64>>,
    #[serde(default)]
    until_s: Option<Spanned<f64>>,
    #[serde(default)]
    duration_s: Option<Spanned<f64>>,
    #[serde(default)]
    probability: Option<Spanned<f64>>,
    #[serde(default)]
    loss_pct: Option<Spanned<f64>>,
    #[serde(default)]
    delay_ms: Option<Spanned<u64>>,
    #[serde(default)]
    jitter_ms: Option<Spanned<u64>>,
    #[serde(default)]
    rate_kbit: Option<Spanned<u64>>,
    #[serde(default)]
    to: Option<Spanned<String>>,
    #[serde(default)]
    scope: Option<Spanned<String>>,
}

#[derive(Clone, Debug, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelector {
    #[serde(default)]
    site: OneOrMany,
    #[serde(default)]
    nat: OneOrMany,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    name: OneOrMany,
    #[serde(default)]
    label: OneOrMany,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlo {
    #[serde(default)]
    name: Option<String>,
    probe: Spanned<String>,
    #[serde(default)]
    when: Option<Spanned<String>>,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
    #[serde(default)]
    query: Option<Spanned<String>>,
    #[serde(default)]
    recover_to: Option<Spanned<f64>>,
}

/// A string or a list of strings.
#[derive(Clone, Debug, PartialEq, Default)]
struct OneOrMany(Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    if out.len() >= 1000 {
                        return Err(de::Error::custom("more than 1000 entries"));
                    }
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// A problem in the `chaos:` section, with the location of the offending value.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    /// Where (line 0 when unknown).
    pub at: At,
    /// What.
    pub message: String,
}

fn bad<T>(at: Location, message: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError {
        at: At::of(at),
        message: message.into(),
    })
}

fn secs_ms(v: &Option<Spanned<f64>>, field: &str, default_ms: u64) -> Result<u64, SpecError> {
    match v {
        None => Ok(default_ms),
        Some(s) if s.value.is_finite() && (0.0..=86_400.0).contains(&s.value) => {
            Ok((s.value * 1000.0).round() as u64)
        }
        Some(s) => bad(
            s.referenced,
            format!("{field} must be 0 to 86400 seconds, not {}", s.value),
        ),
    }
}

/// Validates the raw section against the scenario's agents.
pub(crate) fn validate(raw: RawChaos, targets: &[Target]) -> Result<ChaosSpec, SpecError> {
    let d = ChaosSpec::default();
    let duration_ms = secs_ms(&raw.duration_s, "chaos.duration_s", d.duration_ms)?;
    if duration_ms == 0
        && let Some(s) = &raw.duration_s
    {
        return bad(s.referenced, "chaos.duration_s must be above 0");
    }
    let probe_interval_ms = secs_ms(
        &raw.probe_interval_s,
        "chaos.probe_interval_s",
        d.probe_interval_ms,
    )?;
    if probe_interval_ms < 200 {
        let at = raw
            .probe_interval_s
            .as_ref()
            .map_or(Location::UNKNOWN, |s| s.referenced);
        return bad(at, "chaos.probe_interval_s must be at least 0.2 seconds");
    }
    let sample_pairs = match &raw.sample_pairs {
        None => d.sample_pairs,
        Some(s) if (1..=1000).contains(&s.value) => s.value as usize,
        Some(s) => {
            return bad(
                s.referenced,
                format!("chaos.sample_pairs must be 1 to 1000, not {}", s.value),
            );
        }
    };
    let connect_timeout_ms = match &raw.connect_timeout_ms {
        None => d.connect_timeout_ms,
        Some(s) if (100..=60_000).contains(&s.value) => s.value,
        Some(s) => {
            return bad(
                s.referenced,
                format!(
                    "chaos.connect_timeout_ms must be 100 to 60000, not {}",
                    s.value
                ),
            );
        }
    };
    if raw.faults.len() > MAX_FAULTS {
        return bad(
            raw.faults[MAX_FAULTS].referenced,
            format!("more than {MAX_FAULTS} faults"),
        );
    }
    let mut faults: Vec<FaultSpec> = Vec::new();
    for (i, f) in raw.faults.into_iter().enumerate() {
        let spec = fault(i, f, targets, duration_ms)?;
        if let Some(prev) = faults.iter().find(|p| p.name == spec.name) {
            return Err(SpecError {
                at: spec.at,
                message: format!(
                    "duplicate fault name {:?} (first used on line {})",
                    spec.name, prev.at.line
                ),
            });
        }
        faults.push(spec);
    }
    let mut slos = Vec::new();
    for (i, s) in raw.slos.into_iter().enumerate() {
        slos.push(slo(i, s)?);
    }
    Ok(ChaosSpec {
        warmup_ms: secs_ms(&raw.warmup_s, "chaos.warmup_s", d.warmup_ms)?,
        duration_ms,
        settle_ms: secs_ms(&raw.settle_s, "chaos.settle_s", d.settle_ms)?,
        probe_interval_ms,
        sample_pairs,
        connect_timeout_ms,
        faults,
        slos,
    })
}

/// One fault given as values rather than YAML: `chaosnet fault`'s flags. Empty lists and
/// `None` are left out, as an absent field is in a scenario.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultFlags {
    /// The kind (`kill`, `partition`, ...).
    pub kind: String,
    /// `select.site`.
    pub sites: Vec<String>,
    /// `select.nat`.
    pub nats: Vec<String>,
    /// `select.role`.
    pub role: Option<String>,
    /// `select.name` (globs).
    pub names: Vec<String>,
    /// `mode`.
    pub mode: String,
    /// `duration_s`.
    pub duration_s: Option<f64>,
    /// `shape` (partition).
    pub shape: Option<String>,
    /// `oneway` (partition).
    pub oneway: bool,
    /// `loss_pct` (loss).
    pub loss_pct: Option<f64>,
    /// `delay_ms` (delay).
    pub delay_ms: Option<u64>,
    /// `jitter_ms` (delay).
    pub jitter_ms: Option<u64>,
    /// `rate_kbit` (bandwidth).
    pub rate_kbit: Option<u64>,
    /// `to` (nat-swap).
    pub to: Option<String>,
    /// `scope` (link-down).
    pub scope: Option<String>,
}

/// A value without a position (it came from a flag, not a file).
fn here<T>(value: T) -> Spanned<T> {
    Spanned::new(value, Location::UNKNOWN, Location::UNKNOWN)
}

/// Validates one fault given as values (`chaosnet fault`) against `targets`, exactly as a
/// scenario's fault is validated; the errors carry no position.
pub fn single(f: FaultFlags, targets: &[Target]) -> Result<ChaosSpec, SpecError> {
    let fault = RawFault {
        name: None,
        kind: here(f.kind),
        mode: Some(here(f.mode)),
        select: Some(here(RawSelector {
            site: OneOrMany(f.sites),
            nat: OneOrMany(f.nats),
            role: f.role,
            name: OneOrMany(f.names),
            label: OneOrMany::default(),
        })),
        duration_s: f.duration_s.map(here),
        shape: f.shape.map(here),
        oneway: f.oneway.then(|| here(true)),
        loss_pct: f.loss_pct.map(here),
        delay_ms: f.delay_ms.map(here),
        jitter_ms: f.jitter_ms.map(here),
        rate_kbit: f.rate_kbit.map(here),
        to: f.to.map(here),
        scope: f.scope.map(here),
        at_s: None,
        every_s: None,
        until_s: None,
        probability: None,
    };
    validate(
        RawChaos {
            faults: vec![here(fault)],
            ..RawChaos::default()
        },
        targets,
    )
}

/// A NAT type a router can be swapped to (any but `none`).
fn nat_kind(s: &str) -> Option<NatKind> {
    NatKind::parse(s).filter(|k| *k != NatKind::None)
}

/// Refuses a kind-specific field on another kind.
fn only_for<T>(field: &str, v: &Option<Spanned<T>>, kinds: &str) -> Result<(), SpecError> {
    match v {
        Some(s) => bad(s.referenced, format!("{field} is only for kind {kinds}")),
        None => Ok(()),
    }
}

fn fault(
    index: usize,
    sp: Spanned<RawFault>,
    targets: &[Target],
    phase_ms: u64,
) -> Result<FaultSpec, SpecError> {
    let here = sp.referenced;
    let f = sp.value;
    let kind_name = f.kind.value.as_str();
    let kind_at = f.kind.referenced;
    let kind = match kind_name {
        "kill" => FaultKind::Kill,
        "restart" => FaultKind::Restart,
        "pause" => FaultKind::Pause,
        "partition" => {
            let shape = match &f.shape {
                None => Shape::Halves,
                Some(s) => match s.value.as_str() {
                    "isolate" => Shape::Isolate,
                    "halves" => Shape::Halves,
                    "majority" => Shape::Majority,
                    "ring" => Shape::Ring,
                    "bridge" => Shape::Bridge,
                    "sites" => Shape::Sites,
                    other => {
                        return bad(
                            s.referenced,
                            format!("unknown partition shape {other:?}, expected one of {SHAPES}"),
                        );
                    }
                },
            };
            let oneway = f.oneway.as_ref().is_some_and(|o| o.value);
            if oneway && shape == Shape::Ring {
                let at = f.oneway.as_ref().map_or(here, |o| o.referenced);
                return bad(at, "oneway is not defined for a ring partition");
            }
            FaultKind::Partition { shape, oneway }
        }
        "loss" => match &f.loss_pct {
            Some(l) if l.value.is_finite() && l.value > 0.0 && l.value <= 100.0 => {
                FaultKind::Loss { loss_pct: l.value }
            }
            Some(l) => return bad(l.referenced, "loss_pct must be above 0 and at most 100"),
            None => return bad(kind_at, "kind loss needs loss_pct"),
        },
        "delay" => {
            let delay_ms = match &f.delay_ms {
                Some(d) if (1..=MAX_DELAY_MS).contains(&d.value) => d.value,
                Some(d) => {
                    return bad(
                        d.referenced,
                        format!("delay_ms must be 1 to {MAX_DELAY_MS}, not {}", d.value),
                    );
                }
                None => return bad(kind_at, "kind delay needs delay_ms"),
            };
            let jitter_ms = match &f.jitter_ms {
                Some(j) if j.value <= delay_ms => j.value,
                Some(j) => {
                    return bad(
                        j.referenced,
                        format!("jitter_ms {} exceeds delay_ms {delay_ms}", j.value),
                    );
                }
                None => 0,
            };
            FaultKind::Delay {
                delay_ms,
                jitter_ms,
            }
        }
        "bandwidth" => match &f.rate_kbit {
            Some(r) if (8..=10_000_000).contains(&r.value) => {
                FaultKind::Bandwidth { rate_kbit: r.value }
            }
            Some(r) => return bad(r.referenced, "rate_kbit must be 8 to 10000000"),
            None => return bad(kind_at, "kind bandwidth needs rate_kbit"),
        },
        "nat-swap" => match &f.to {
            Some(t) => match nat_kind(&t.value) {
                Some(to) => FaultKind::NatSwap { to },
                None => {
                    return bad(
                        t.referenced,
                        format!(
                            "nat-swap `to` must be one of {}, not {:?}",
                            INNER_CHOICES, t.value
                        ),
                    );
                }
            },
            None => return bad(kind_at, "kind nat-swap needs `to` (the new NAT type)"),
        },
        "ip-change" => FaultKind::IpChange,
        "link-down" => match &f.scope {
            None => FaultKind::LinkDown { site: false },
            Some(s) if s.value == "agent" => FaultKind::LinkDown { site: false },
            Some(s) if s.value == "site" => FaultKind::LinkDown { site: true },
            Some(s) => return bad(s.referenced, "scope must be agent or site"),
        },
        "clock-skew" => {
            return bad(
                kind_at,
                "kind clock-skew is not supported: the agent has no clock-skew hint yet",
            );
        }
        other => {
            return bad(
                kind_at,
                format!("unknown fault kind {other:?}, expected one of {FAULT_KINDS}"),
            );
        }
    };
    if !matches!(kind, FaultKind::Partition { .. }) {
        only_for("shape", &f.shape, "partition")?;
        only_for("oneway", &f.oneway, "partition")?;
    }
    if !matches!(kind, FaultKind::Loss { .. }) {
        only_for("loss_pct", &f.loss_pct, "loss")?;
    }
    if !matches!(kind, FaultKind::Delay { .. }) {
        only_for("delay_ms", &f.delay_ms, "delay")?;
        only_for("jitter_ms", &f.jitter_ms, "delay")?;
    }
    if !matches!(kind, FaultKind::Bandwidth { .. }) {
        only_for("rate_kbit", &f.rate_kbit, "bandwidth")?;
    }
    if !matches!(kind, FaultKind::NatSwap { .. }) {
        only_for("to", &f.to, "nat-swap")?;
    }
    if !matches!(kind, FaultKind::LinkDown { .. }) {
        only_for("scope", &f.scope, "link-down")?;
    }

    let name = match &f.name {
        Some(n)
            if (1..=64).contains(&n.value.len())
                && n.value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
        {
            n.value.clone()
        }
        Some(n) => {
            return bad(
                n.referenced,
                "fault name must be 1 to 64 characters of A-Z a-z 0-9 - _ .",
            );
        }
        None => format!("{}-{index}", kind.name()),
    };

    // Selector.
    let (selector, sel_at) = match f.select {
        Some(s) => {
            let at = s.referenced;
            (selector(s.value, at)?, at)
        }
        None => (Selector::default(), here),
    };
    let matched = selector.filter(targets);
    if matched.is_empty() {
        return bad(
            sel_at,
            format!("fault {name:?}: the selector matches no agent"),
        );
    }
    if kind.site_level() && !matched.iter().any(|t| t.nat != "none") {
        return bad(
            sel_at,
            format!(
                "fault {name:?}: kind {} needs NATed sites, and the selector matches only \
                 agents without a NAT router",
                kind.name()
            ),
        );
    }
    if let FaultKind::Partition {
        shape: Shape::Sites,
        ..
    } = kind
    {
        let mut sites: Vec<&str> = matched.iter().map(|t| t.site.as_str()).collect();
        sites.dedup();
        sites.sort_unstable();
        sites.dedup();
        if sites.len() < 2 {
            return bad(
                sel_at,
                format!("fault {name:?}: a sites partition needs agents of at least 2 sites"),
            );
        }
    }
    let mode = match &f.mode {
        None => Mode::All,
        Some(m) => select::parse_mode(&m.value).ok_or_else(|| SpecError {
            at: At::of(m.referenced),
            message: format!(
                "unknown mode {:?}, expected one, all, fixed:N (N >= 1) or percent:P (0 < P <= 100)",
                m.value
            ),
        })?,
    };

    // Schedule.
    let at_ms = secs_ms(&f.at_s, "at_s", 0)?;
    let every_ms = match &f.every_s {
        None => None,
        Some(e) if e.value.is_finite() && e.value >= 0.1 && e.value <= 86_400.0 => {
            Some((e.value * 1000.0).round() as u64)
        }
        Some(e) => return bad(e.referenced, "every_s must be 0.1 to 86400 seconds"),
    };
    let until_ms = secs_ms(&f.until_s, "until_s", phase_ms)?;
    if let Some(u) = &f.until_s
        && until_ms <= at_ms
    {
        return bad(u.referenced, "until_s must be after at_s");
    }
    if at_ms >= phase_ms {
        let at = f.at_s.as_ref().map_or(here, |a| a.referenced);
        return bad(
            at,
            format!(
                "at_s {} s is not inside the fault phase (chaos.duration_s = {} s)",
                at_ms as f64 / 1000.0,
                phase_ms as f64 / 1000.0
            ),
        );
    }
    let duration_ms = match &f.duration_s {
        None => None,
        Some(d) if kind == FaultKind::Restart => {
            return bad(
                d.referenced,
                "a restart is instantaneous: duration_s is not allowed",
            );
        }
        Some(d) if d.value.is_finite() && d.value > 0.0 && d.value <= 86_400.0 => {
            Some((d.value * 1000.0).round() as u64)
        }
        Some(d) => return bad(d.referenced, "duration_s must be above 0"),
    };
    if let (Some(e), Some(d)) = (every_ms, duration_ms)
        && d > e
        && let Some(ds) = &f.duration_s
    {
        return bad(
            ds.referenced,
            "duration_s is longer than every_s: occurrences of one fault would overlap",
        );
    }
    if every_ms.is_some() && duration_ms.is_none() && kind != FaultKind::Restart {
        let at = f.every_s.as_ref().map_or(here, |e| e.referenced);
        return bad(
            at,
            "a repeated fault needs duration_s (otherwise occurrences pile up until the final heal)",
        );
    }
    if let Some(e) = every_ms
        && (until_ms.saturating_sub(at_ms)) / e.max(1) > MAX_OCCURRENCES
    {
        let at = f.every_s.as_ref().map_or(here, |e| e.referenced);
        return bad(at, format!("more than {MAX_OCCURRENCES} occurrences"));
    }
    let probability = match &f.probability {
        None => 1.0,
        Some(p) if p.value.is_finite() && p.value > 0.0 && p.value <= 1.0 => p.value,
        Some(p) => return bad(p.referenced, "probability must be above 0 and at most 1"),
    };
    Ok(FaultSpec {
        name,
        at: At::of(here),
        kind,
        selector,
        mode,
        schedule: Schedule {
            at_ms,
            every_ms,
            until_ms,
            duration_ms,
            probability,
        },
    })
}

fn selector(r: RawSelector, at: Location) -> Result<Selector, SpecError> {
    let role = match r.role.as_deref() {
        None => None,
        Some("seed") => Some(Role::Seed),
        Some("peer") => Some(Role::Peer),
        Some(other) => return bad(at, format!("unknown role {other:?}, expected seed or peer")),
    };
    for n in &r.nat.0 {
        if !matches!(
            n.as_str(),
            "none"
                | "full-cone"
                | "restricted-cone"
                | "port-restricted-cone"
                | "symmetric"
                | "cgnat"
        ) {
            return bad(
                at,
                format!(
                    "unknown NAT type {n:?} in select.nat, expected one of {}",
                    NAT_CHOICES
                ),
            );
        }
    }
    let mut labels = Vec::new();
    for l in &r.label.0 {
        match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => labels.push((k.to_string(), v.to_string())),
            _ => return bad(at, format!("label {l:?} must be key=value")),
        }
    }
    Ok(Selector {
        sites: r.site.0,
        nats: r.nat.0,
        role,
        names: r.name.0,
        labels,
    })
}

fn slo(index: usize, sp: Spanned<RawSlo>) -> Result<SloSpec, SpecError> {
    let here = sp.referenced;
    let s = sp.value;
    let probe = match s.probe.value.as_str() {
        "reachability" => ProbeKind::Reachability,
        "alive" => ProbeKind::Alive,
        "converged" => ProbeKind::Converged,
        "recovery" => ProbeKind::Recovery {
            recover_to: match &s.recover_to {
                None => 0.99,
                Some(r) if (0.0..=1.0).contains(&r.value) => r.value,
                Some(r) => return bad(r.referenced, "recover_to must be 0 to 1"),
            },
        },
        "mode-share" => match &s.mode {
            Some(m) if matches!(m.value.as_str(), "direct" | "punched" | "relayed") => {
                ProbeKind::ModeShare {
                    mode: m.value.clone(),
                }
            }
            Some(m) => return bad(m.referenced, "mode must be direct, punched or relayed"),
            None => return bad(s.probe.referenced, "probe mode-share needs `mode`"),
        },
        "promql" => match &s.query {
            Some(q) if !q.value.trim().is_empty() && q.value.len() <= 4096 => ProbeKind::Promql {
                query: q.value.clone(),
            },
            Some(q) => return bad(q.referenced, "query must be 1 to 4096 characters"),
            None => return bad(s.probe.referenced, "probe promql needs `query`"),
        },
        other => {
            return bad(
                s.probe.referenced,
                format!("unknown probe {other:?}, expected one of {PROBES}"),
            );
        }
    };
    if !matches!(probe, ProbeKind::ModeShare { .. }) {
        only_for("mode", &s.mode, "mode-share")?;
    }
    if !matches!(probe, ProbeKind::Promql { .. }) {
        only_for("query", &s.query, "promql")?;
    }
    if !matches!(probe, ProbeKind::Recovery { .. }) {
        only_for("recover_to", &s.recover_to, "recovery")?;
    }
    let when = match &s.when {
        None => When::End,
        Some(w) => match w.value.as_str() {
            "start" => When::Start,
            "end" => When::End,
            "continuous" => When::Continuous,
            "during-fault" => When::DuringFault,
            other => {
                return bad(
                    w.referenced,
                    format!("unknown `when` {other:?}, expected one of {WHENS}"),
                );
            }
        },
    };
    if s.min.is_none() && s.max.is_none() {
        return bad(here, "an SLO needs min or max (or both)");
    }
    for v in [s.min, s.max].into_iter().flatten() {
        if !v.is_finite() {
            return bad(here, "min and max must be finite numbers");
        }
    }
    let name = s
        .name
        .unwrap_or_else(|| format!("{}-{index}", probe.name()));
    Ok(SloSpec {
        name,
        at: At::of(here),
        probe,
        when,
        min: s.min,
        max: s.max,
    })
}
