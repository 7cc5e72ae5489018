//! `chaosnet sim --matrix`: the NAT-pair matrix of `chaosnet matrix --cold`, in virtual time.
//!
//! The same pairs (one agent per site, each ordered pair of different sites, plus the first
//! two agents of each site with two or more), measured one at a time: before each pair both
//! sides' NATs forget their idle flows to each other (the lab deletes the conntrack entries
//! between the two sites), then
//! the dialer opens a fresh connection and the path it got is judged against
//! [`crate::matrix::theory`], as the lab's matrix is, and rendered by the same
//! [`crate::matrix::render`].
//!
//! What it does not do: take the world through faults, or run on anything but a world.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use chaosnet_proto::{Command, TaskOutcome, Time};

use super::build::Built;
use crate::matrix::{Behaviour, Endpoint, Outcome, Row};
use crate::scenario::Scenario;

/// Virtual time a pair may take, ms (the lab matrix's default `--timeout-s` is 60).
pub const PAIR_TIMEOUT_MS: u64 = 60_000;

fn behaviour_of(scenario: &Scenario, site: &str) -> Behaviour {
    match scenario.sites.iter().find(|s| s.name == site) {
        Some(s) if s.cgnat => Behaviour::behind_carrier(s.nat),
        Some(s) => Behaviour::of(s.nat),
        None => Behaviour::Public,
    }
}

fn endpoint(scenario: &Scenario, built: &Built, agent: usize) -> Endpoint {
    let a = &built.agents[agent];
    let public_ip = match public_ip(built, agent) {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    Endpoint {
        agent: a.name.clone(),
        site: a.site.clone(),
        behaviour: behaviour_of(scenario, &a.site),
        node_id: a.id.to_string(),
        public_ip,
        api_socket: std::path::PathBuf::new(),
    }
}

/// The pairs of `chaosnet matrix` (see [`crate::matrix::pairs`]), as agent indices.
pub fn pairs(built: &Built) -> Vec<(usize, usize)> {
    let mut by_site: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, a) in built.agents.iter().enumerate() {
        by_site.entry(a.site.as_str()).or_default().push(i);
    }
    for v in by_site.values_mut() {
        v.sort_by(|x, y| built.agents[*x].name.cmp(&built.agents[*y].name));
    }
    let firsts: Vec<usize> = by_site.values().map(|v| v[0]).collect();
    let mut out = Vec::new();
    for &a in &firsts {
        for &b in &firsts {
            if built.agents[a].site != built.agents[b].site {
                out.push((a, b));
            }
        }
    }
    for v in by_site.values() {
        if let [a, b, ..] = v.as_slice() {
            out.push((*a, *b));
        }
    }
    out
}

/// The NATs of `site`, innermost first (a home NAT, then its carrier's).
fn nats_of(built: &Built, site: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut n = built.site_nat.get(site).copied();
    while let Some(x) = n {
        out.push(x);
        n = built.world.nat_parent(x);
    }
    out
}

/// The address the internet sees `agent` at: its outermost NAT's, or its own.
fn public_ip(built: &Built, agent: usize) -> IpAddr {
    let a = &built.agents[agent];
    match nats_of(built, &a.site).last() {
        Some(&n) => built.world.nat_ip(n),
        None => built.world.node(a.idx).addr.ip(),
    }
}

/// Each side's NATs forget their idle flows to the other side, as `matrix --cold` deletes
/// the conntrack entries between the two sites before each pair.
fn make_cold(built: &mut Built, a: usize, b: usize) {
    for (here, there) in [(a, b), (b, a)] {
        let ip = public_ip(built, there);
        for n in nats_of(built, &built.agents[here].site) {
            built.world.forget_flows(n, ip);
        }
    }
}

/// Measures every pair, one at a time from cold NATs; `progress` sees each row.
pub fn measure(scenario: &Scenario, built: &mut Built, progress: &dyn Fn(&Row)) -> Vec<Row> {
    let mut rows = Vec::new();
    for (a, b) in pairs(built) {
        let (from, to) = (endpoint(scenario, built, a), endpoint(scenario, built, b));
        make_cold(built, a, b);
        let (fi, tid) = (built.agents[a].idx, built.agents[b].id);
        let cmd = built.world.command(
            fi,
            Command::Connect {
                peer: tid,
                fresh: true,
            },
        );
        let start = built.world.now();
        let deadline = start.as_millis() + PAIR_TIMEOUT_MS;
        while built.world.result(fi, cmd).is_none() && built.world.now().as_millis() < deadline {
            let next = (built.world.now().as_millis() + 100).min(deadline);
            built.world.run_until(Time::from_millis(next));
            // The run counts nothing here; keep the tap from growing.
            let _ = built.world.take_events();
        }
        let outcome = match built.world.result(fi, cmd) {
            Some(r) => Outcome {
                mode: (r.outcome == TaskOutcome::Ok).then_some(r.mode).flatten(),
                elapsed_ms: r.elapsed.as_secs_f64() * 1000.0,
                relay: r.relay.map(|id| {
                    built
                        .world
                        .index_of(id)
                        .and_then(|i| built.agents.iter().find(|x| x.idx == i))
                        .map_or_else(|| id.to_string(), |x| x.name.clone())
                }),
                birthday_probes: r.birthday_probes,
                attempts: r
                    .attempts
                    .iter()
                    .map(|x| {
                        format!(
                            "{}:{}",
                            x.path.as_str(),
                            x.failure.map_or("ok", |f| f.as_str())
                        )
                    })
                    .collect(),
                error: (r.outcome != TaskOutcome::Ok).then(|| r.outcome.as_str().to_string()),
            },
            None => Outcome {
                mode: None,
                elapsed_ms: PAIR_TIMEOUT_MS as f64,
                relay: None,
                birthday_probes: None,
                attempts: Vec::new(),
                error: Some("timeout".into()),
            },
        };
        let row = Row::judged(from, to, outcome);
        progress(&row);
        rows.push(row);
    }
    rows
}
