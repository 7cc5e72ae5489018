//! The NAT-pair matrix: which path each pair of sites achieved, against the best path
//! theory allows.
//!
//! The pure half ([`theory`], [`pairs`], [`judge`], [`outcome`], [`render`]) decides what to
//! measure and how to judge it, and is tested without root. [`measure`] asks the running
//! agents (through the lab, so wherever their runtime keeps them) to open fresh connections,
//! one `POST /connect` per ordered pair, a few pairs at a time.
//!
//! Theory (RFC 4787 terms): a target without NAT or behind a full cone (EIF) can be dialed
//! directly; two agents on one LAN reach each other directly; endpoint-independent mapping
//! on both sides, or an endpoint-dependent side facing an address-restricted or open one,
//! punches with plain probes; an endpoint-dependent side facing a port-restricted one needs
//! birthday probing; two endpoint-dependent sides can only relay. A carrier-grade NAT
//! behaves as the combination of its layers (the carrier layer is EIM + APDF).

use std::collections::BTreeMap;
use std::time::Duration;

/// A connection's path, best first (the contract's, as the agents report it).
use chaosnet_contract::api::{ConnMode as Mode, ConnectRequest};
use serde::{Deserialize, Serialize};

use crate::agentapi::{ApiError, Connect};
use crate::lab::Lab;
use crate::plan::{AgentPlan, NatKind, Plan, SEED_SITE};

/// A site's effective NAT behaviour (a cgnat site's layers combined).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// No NAT.
    Public,
    /// EIM + EIF.
    FullCone,
    /// EIM + ADF.
    RestrictedCone,
    /// EIM + APDF.
    PortRestrictedCone,
    /// EDM.
    Symmetric,
}

impl Behaviour {
    /// One NAT kind.
    pub fn of(kind: NatKind) -> Behaviour {
        match kind {
            NatKind::None => Behaviour::Public,
            NatKind::FullCone => Behaviour::FullCone,
            NatKind::RestrictedCone => Behaviour::RestrictedCone,
            NatKind::PortRestrictedCone => Behaviour::PortRestrictedCone,
            NatKind::Symmetric => Behaviour::Symmetric,
        }
    }

    /// `inner` behind a carrier NAT (EIM + APDF): EDM anywhere makes the whole EDM, and the
    /// filtering is the stricter of the two, so anything else ends up port-restricted.
    pub fn behind_carrier(inner: NatKind) -> Behaviour {
        match inner {
            NatKind::Symmetric => Behaviour::Symmetric,
            _ => Behaviour::PortRestrictedCone,
        }
    }

    /// Label in the scenario's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Behaviour::Public => "none",
            Behaviour::FullCone => "full-cone",
            Behaviour::RestrictedCone => "restricted-cone",
            Behaviour::PortRestrictedCone => "port-restricted-cone",
            Behaviour::Symmetric => "symmetric",
        }
    }
}

/// What theory allows for one ordered pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    /// The best path possible.
    pub best: Mode,
    /// Whether reaching it needs birthday probing.
    pub birthday: bool,
}

/// The best path from a `from` agent to a `to` agent.
pub fn theory(from: Behaviour, to: Behaviour, same_lan: bool) -> Expected {
    use Behaviour::*;
    let plain = |best| Expected {
        best,
        birthday: false,
    };
    if same_lan || matches!(to, Public | FullCone) {
        return plain(Mode::Direct);
    }
    match (from, to) {
        (Symmetric, Symmetric) => plain(Mode::Relayed),
        (Symmetric, PortRestrictedCone) | (PortRestrictedCone, Symmetric) => Expected {
            best: Mode::Punched,
            birthday: true,
        },
        _ => plain(Mode::Punched),
    }
}

/// One agent as the matrix sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Agent name.
    pub agent: String,
    /// Site name (`internet` for seeds).
    pub site: String,
    /// Effective NAT behaviour.
    pub behaviour: Behaviour,
    /// NodeId (hex).
    pub node_id: String,
    /// The address the internet sees it at: its site's public IP, or its own address when
    /// it has no NAT.
    pub public_ip: std::net::Ipv4Addr,
    /// Control socket, relative to the run directory.
    pub api_socket: std::path::PathBuf,
}

fn endpoint(plan: &Plan, a: &AgentPlan) -> Endpoint {
    let site = plan.sites.iter().find(|s| s.name == a.site);
    let behaviour = match site {
        _ if a.site == SEED_SITE => Behaviour::Public,
        Some(s) if s.cgnat => Behaviour::behind_carrier(s.nat),
        Some(s) => Behaviour::of(s.nat),
        None => Behaviour::Public,
    };
    let public_ip = site.and_then(|s| s.public_ip).unwrap_or(a.lan_ip);
    Endpoint {
        agent: a.name.clone(),
        site: a.site.clone(),
        behaviour,
        node_id: a.node_id.clone(),
        public_ip,
        api_socket: a.api_socket.clone(),
    }
}

/// The ordered pairs to measure. By default one agent per site (the first by name) for
/// every ordered pair of different sites, plus, for each site with two agents or more, its
/// first two agents (the same-LAN case). With `all`, every ordered pair of agents. Seeds
/// count as one site.
pub fn pairs(plan: &Plan, all: bool) -> Vec<(Endpoint, Endpoint)> {
    let mut by_site: BTreeMap<&str, Vec<&AgentPlan>> = BTreeMap::new();
    for a in &plan.agents {
        by_site.entry(a.site.as_str()).or_default().push(a);
    }
    for v in by_site.values_mut() {
        v.sort_by(|x, y| x.name.cmp(&y.name));
    }
    let mut out = Vec::new();
    if all {
        for a in &plan.agents {
            for b in &plan.agents {
                if a.name != b.name {
                    out.push((endpoint(plan, a), endpoint(plan, b)));
                }
            }
        }
        return out;
    }
    let firsts: Vec<&AgentPlan> = by_site.values().map(|v| v[0]).collect();
    for a in &firsts {
        for b in &firsts {
            if a.site != b.site {
                out.push((endpoint(plan, a), endpoint(plan, b)));
            }
        }
    }
    for v in by_site.values() {
        if let [a, b, ..] = v.as_slice() {
            out.push((endpoint(plan, a), endpoint(plan, b)));
        }
    }
    out
}

/// What one `/connect` gave.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The path achieved, or `None` if the connect failed.
    pub mode: Option<Mode>,
    /// Time the connect took.
    pub elapsed_ms: f64,
    /// The relay used, if any.
    pub relay: Option<String>,
    /// Spray probes, if this side birthday-probed.
    pub birthday_probes: Option<u32>,
    /// Every path tried, as `path:outcome` strings.
    pub attempts: Vec<String>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// One measured pair and its verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Dialing agent.
    pub from: Endpoint,
    /// Target agent.
    pub to: Endpoint,
    /// Whether both are on the same LAN.
    pub same_lan: bool,
    /// What theory allows.
    pub expected: Expected,
    /// What happened.
    pub outcome: Outcome,
    /// Reached, and no worse than theory allows.
    pub pass: bool,
}

/// A pair passes when it connected by a path at least as good as theory's best.
pub fn judge(expected: Expected, outcome: &Outcome) -> bool {
    outcome.mode.is_some_and(|m| m <= expected.best)
}

/// What a `/connect` gave, as the matrix records it: the path, or why it failed.
pub fn outcome(r: Result<Connect, ApiError>) -> Outcome {
    let attempts = |a: &[chaosnet_contract::api::Attempt]| {
        a.iter()
            .map(|x| format!("{}:{}", x.path.as_str(), x.outcome))
            .collect()
    };
    match r {
        Ok(Connect::Connected(a)) => Outcome {
            mode: Some(a.mode),
            elapsed_ms: a.elapsed_ms,
            relay: a.relay,
            birthday_probes: a.birthday_probes,
            attempts: attempts(&a.attempts),
            error: None,
        },
        Ok(Connect::Failed { status, failure }) => Outcome {
            mode: None,
            elapsed_ms: failure.elapsed_ms,
            relay: None,
            birthday_probes: None,
            attempts: attempts(&failure.attempts),
            error: Some(format!("HTTP {status}: {}", failure.reason)),
        },
        Err(e) => Outcome {
            mode: None,
            elapsed_ms: 0.0,
            relay: None,
            birthday_probes: None,
            attempts: Vec::new(),
            error: Some(e.to_string()),
        },
    }
}

/// Keeps the pairs whose dialing site is `from` and target site is `to` (when given), and
/// repeats the list `repeat` times.
pub fn select(
    pairs: Vec<(Endpoint, Endpoint)>,
    from: Option<&str>,
    to: Option<&str>,
    repeat: usize,
) -> Vec<(Endpoint, Endpoint)> {
    let kept: Vec<_> = pairs
        .into_iter()
        .filter(|(a, b)| from.is_none_or(|f| a.site == f) && to.is_none_or(|t| b.site == t))
        .collect();
    let mut out = Vec::with_capacity(kept.len() * repeat.max(1));
    for _ in 0..repeat.max(1) {
        out.extend(kept.iter().cloned());
    }
    out
}

/// The router namespaces of a site (two for a carrier-grade NAT), none for open sites and
/// the seeds.
pub fn routers_of<'a>(plan: &'a Plan, site: &str) -> Vec<&'a str> {
    plan.sites
        .iter()
        .filter(|s| s.name == site)
        .flat_map(|s| s.routers.iter().map(String::as_str))
        .collect()
}

/// Asks every pair's dialing agent for a fresh connection, `parallel` pairs at a time.
/// `before` runs before each pair (the cold mode flushes NAT state there); an error from it
/// fails the pair. `progress` is called after each pair.
pub fn measure(
    lab: &Lab,
    pairs: Vec<(Endpoint, Endpoint)>,
    parallel: usize,
    timeout: Duration,
    before: &(dyn Fn(&Endpoint, &Endpoint) -> Result<(), String> + Sync),
    progress: &(dyn Fn(&Row) + Sync),
) -> Vec<Row> {
    let mut queue: Vec<_> = pairs.into_iter().enumerate().collect();
    queue.reverse(); // popped from the end: measure in the given order
    let queue = std::sync::Mutex::new(queue);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1) {
            s.spawn(|| {
                loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                    let Some((i, (from, to))) = next else { break };
                    let row = match before(&from, &to) {
                        Ok(()) => measure_one(lab, from, to, timeout),
                        Err(e) => failed_row(from, to, e),
                    };
                    progress(&row);
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((i, row));
                }
            });
        }
    });
    let mut rows = results.into_inner().unwrap_or_else(|p| p.into_inner());
    rows.sort_by_key(|(i, _)| *i);
    rows.into_iter().map(|(_, r)| r).collect()
}

fn failed_row(from: Endpoint, to: Endpoint, error: String) -> Row {
    let outcome = Outcome {
        mode: None,
        elapsed_ms: 0.0,
        relay: None,
        birthday_probes: None,
        attempts: Vec::new(),
        error: Some(error),
    };
    Row::judged(from, to, outcome)
}

fn measure_one(lab: &Lab, from: Endpoint, to: Endpoint, timeout: Duration) -> Row {
    let outcome = outcome(
        lab.agent(&from.agent)
            .connect(&ConnectRequest::fresh(&to.node_id), timeout),
    );
    Row::judged(from, to, outcome)
}

impl Row {
    /// The pair `from` -> `to` that gave `outcome`, with what theory allows and the verdict.
    pub fn judged(from: Endpoint, to: Endpoint, outcome: Outcome) -> Row {
        let same_lan = from.site == to.site && from.site != SEED_SITE;
        let expected = theory(from.behaviour, to.behaviour, same_lan);
        let pass = judge(expected, &outcome);
        Row {
            from,
            to,
            same_lan,
            expected,
            outcome,
            pass,
        }
    }
}

/// The human-readable report: one line per pair, then the NAT × NAT grid of achieved/best.
pub fn render(rows: &[Row]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<21} {:<14} {:<21} {:<9} {:<9} {:>9}  RESULT",
        "FROM", "NAT", "TO", "NAT", "ACHIEVED", "BEST", "TIME"
    );
    for r in rows {
        let achieved = r.outcome.mode.map_or("FAILED", Mode::as_str);
        let best = if r.expected.birthday {
            "punched*"
        } else {
            r.expected.best.as_str()
        };
        let verdict = if r.pass {
            "ok".to_string()
        } else if let Some(e) = &r.outcome.error {
            format!("FAIL ({e})")
        } else {
            "FAIL (worse than theory)".to_string()
        };
        let _ = writeln!(
            out,
            "{:<14} {:<21} {:<14} {:<21} {:<9} {:<9} {:>7.0}ms  {verdict}",
            r.from.agent,
            r.from.behaviour.as_str(),
            r.to.agent,
            if r.same_lan {
                "same LAN"
            } else {
                r.to.behaviour.as_str()
            },
            achieved,
            best,
            r.outcome.elapsed_ms,
        );
    }
    let _ = writeln!(out, "(* needs birthday probing)\n");
    // Grid: rows are the dialing side's behaviour, columns the target's; cells achieved/best.
    let kinds = [
        Behaviour::Public,
        Behaviour::FullCone,
        Behaviour::RestrictedCone,
        Behaviour::PortRestrictedCone,
        Behaviour::Symmetric,
    ];
    let short = |b: Behaviour| match b {
        Behaviour::Public => "none",
        Behaviour::FullCone => "full",
        Behaviour::RestrictedCone => "restr",
        Behaviour::PortRestrictedCone => "port-r",
        Behaviour::Symmetric => "sym",
    };
    let cell = |m: Option<Mode>| match m {
        Some(Mode::Direct) => "D",
        Some(Mode::Punched) => "P",
        Some(Mode::Relayed) => "R",
        None => "X",
    };
    let _ = write!(out, "{:<8}", "from\\to");
    for k in kinds {
        let _ = write!(out, " {:<10}", short(k));
    }
    let _ = writeln!(out);
    for a in kinds {
        let _ = write!(out, "{:<8}", short(a));
        for b in kinds {
            let in_cell: Vec<&Row> = rows
                .iter()
                .filter(|r| !r.same_lan && r.from.behaviour == a && r.to.behaviour == b)
                .collect();
            let text = match in_cell.first() {
                None => "-".to_string(),
                Some(first) => {
                    // The worst achieved in the cell, against the cell's best.
                    let worst = in_cell
                        .iter()
                        .map(|r| r.outcome.mode.map_or(3, |m| m as u8))
                        .max()
                        .unwrap_or(3);
                    let worst = match worst {
                        0 => Some(Mode::Direct),
                        1 => Some(Mode::Punched),
                        2 => Some(Mode::Relayed),
                        _ => None,
                    };
                    let ok = in_cell.iter().all(|r| r.pass);
                    format!(
                        "{}/{}{}",
                        cell(worst),
                        cell(Some(first.expected.best)),
                        if ok { "" } else { "!" }
                    )
                }
            };
            let _ = write!(out, " {text:<10}");
        }
        let _ = writeln!(out);
    }
    let passed = rows.iter().filter(|r| r.pass).count();
    let _ = writeln!(
        out,
        "cells: achieved/best (D direct, P punched, R relayed, X failed; ! = a pair fell short)\n{passed}/{} pairs at their best path",
        rows.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Behaviour::*;

    #[test]
    fn theory_matches_the_issue_table() {
        assert_eq!(
            theory(PortRestrictedCone, PortRestrictedCone, true).best,
            Mode::Direct
        );
        assert_eq!(theory(Symmetric, FullCone, false).best, Mode::Direct);
        assert_eq!(theory(Symmetric, Public, false).best, Mode::Direct);
        assert_eq!(theory(Public, Symmetric, false).best, Mode::Punched);
        assert_eq!(
            theory(RestrictedCone, PortRestrictedCone, false).best,
            Mode::Punched
        );
        assert_eq!(
            theory(Symmetric, RestrictedCone, false),
            Expected {
                best: Mode::Punched,
                birthday: false
            }
        );
        assert_eq!(
            theory(Symmetric, PortRestrictedCone, false),
            Expected {
                best: Mode::Punched,
                birthday: true
            }
        );
        assert_eq!(
            theory(PortRestrictedCone, Symmetric, false),
            Expected {
                best: Mode::Punched,
                birthday: true
            }
        );
        assert_eq!(theory(Symmetric, Symmetric, false).best, Mode::Relayed);
        assert_eq!(
            Behaviour::behind_carrier(NatKind::PortRestrictedCone),
            PortRestrictedCone
        );
        assert_eq!(
            Behaviour::behind_carrier(NatKind::FullCone),
            PortRestrictedCone
        );
        assert_eq!(Behaviour::behind_carrier(NatKind::Symmetric), Symmetric);
    }

    #[test]
    fn judging_accepts_better_and_rejects_worse_or_failed() {
        let punch = Expected {
            best: Mode::Punched,
            birthday: false,
        };
        let with = |mode| Outcome {
            mode,
            elapsed_ms: 1.0,
            relay: None,
            birthday_probes: None,
            attempts: vec![],
            error: None,
        };
        assert!(judge(punch, &with(Some(Mode::Direct))));
        assert!(judge(punch, &with(Some(Mode::Punched))));
        assert!(!judge(punch, &with(Some(Mode::Relayed))));
        assert!(!judge(punch, &with(None)));
    }

    #[test]
    fn agent_answers_parse() {
        let parse_outcome = |status, body: &str| {
            outcome(crate::agentapi::parse_connect(crate::http::Response {
                status,
                body: body.to_string(),
            }))
        };
        let ok = parse_outcome(
            200,
            r#"{"node_id":"ab","mode":"relayed","elapsed_ms":12.5,"relay":"cd","birthday_probes":null,
               "attempts":[{"path":"direct","outcome":"timeout","elapsed_ms":2000.0},{"path":"relayed","outcome":"ok","elapsed_ms":3.0}]}"#,
        );
        assert_eq!(ok.mode, Some(Mode::Relayed));
        assert_eq!(ok.relay.as_deref(), Some("cd"));
        assert_eq!(ok.attempts, vec!["direct:timeout", "relayed:ok"]);
        let failed = parse_outcome(
            502,
            r#"{"error":"cannot connect","reason":"timeout","elapsed_ms":9.0}"#,
        );
        assert_eq!(failed.mode, None);
        assert_eq!(failed.error.as_deref(), Some("HTTP 502: timeout"));
        let garbage = parse_outcome(200, "not json");
        assert!(garbage.mode.is_none() && garbage.error.is_some());
    }
}
