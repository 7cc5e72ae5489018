//! What a fault occurrence does to a run, as pure data: inject and heal [`Action`]s.
//!
//! Mechanisms (all inside the run's own namespaces, never the root namespace):
//! - **kill / restart / pause**: the runtime (SIGKILL then start again with the same data
//!   dir; stop+start; SIGSTOP/SIGCONT).
//! - **partition**: one nft table per occurrence in each affected agent's host namespace,
//!   `table ip chaos_<run>_<id>` with a comment naming the run, fault and occurrence, dropping
//!   packets to and from the addresses under which that agent sees the agents it is cut from:
//!   the LAN address for an agent of its own site, the site's public address for an agent
//!   behind another site's NAT (plus the UDP port when that site has agents on both sides of
//!   the cut; exact for endpoint-independent NATs, which keep the planner's unique ports,
//!   best effort behind symmetric NATs), and the agent's own address for public agents.
//!   Shapes: `isolate` (the targets against all others), `halves` and `majority` (two groups),
//!   `ring` (each target reaches only its two ring neighbours among the targets), `bridge`
//!   (two groups cut apart, one bridge agent reaching both), `sites` (each selected site cut
//!   from the others). `oneway` blocks only the first group towards the others.
//! - **loss**: an nft table in the host namespace dropping UDP with `numgen random`, each way.
//! - **bandwidth**: `tbf` on both ends of the agent's link (host `eth0` and its peer on the
//!   LAN or internet bridge), so both directions are limited.
//! - **delay / jitter**: `netem` on the host link when the kernel has it; otherwise (this
//!   kernel has no `sch_netem`) the agent's userspace impairment (`PUT /impairment`).
//!   [`FaultPlan::mechanism`] says which.
//! - **nat-swap**: the site's (home) router gets the ruleset of another NAT type, rendered
//!   from the same templates, then `conntrack -F`; heal puts the plan's ruleset back and
//!   flushes again.
//! - **ip-change**: the outer router's WAN address moves from `198.19.S.1` to `198.19.S.101`,
//!   its ruleset is re-rendered for it, conntrack flushed; heal reverses.
//! - **link-down**: the agent's `eth0` (or, with `scope: site`, the outer router's `wan`)
//!   goes down; heal brings it up and restores the plan's routes of that namespace.
//!
//! Every action is idempotent (nft tables are declared, deleted and defined in one
//! transaction; tc uses `replace`; heals tolerate "already gone"), so a heal can be re-run
//! after a crash. What it does not do: run anything (see `exec`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::schedule::Occurrence;
use super::spec::{FaultKind, Shape};
use crate::nat::{self, RouterParams};
use crate::plan::{AgentPlan, IfAddr, Plan, SitePlan};
use crate::planner::{BRIDGE, HOST_IF, WAN_IF};

/// Prefix of every nft table a fault creates (then `<run>_<occurrence id>`).
pub const TABLE_PREFIX: &str = "chaos_";

/// What the runtime does to an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessOp {
    /// SIGKILL.
    Kill,
    /// Start (no-op error tolerated when already running).
    Start,
    /// Stop and start.
    Restart,
    /// SIGSTOP.
    Pause,
    /// SIGCONT.
    Resume,
}

/// One step of an inject or a heal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// `nft -f -` with this script inside `ns`.
    Nft {
        /// Namespace.
        ns: String,
        /// Script (idempotent).
        script: String,
    },
    /// Delete every table named `chaos_<run>_*` inside `ns` (the sweep of `heal --all`).
    NftSweep {
        /// Namespace.
        ns: String,
        /// Table name prefix, `chaos_<run>_`.
        prefix: String,
    },
    /// `tc -n ns <args>`.
    Tc {
        /// Namespace.
        ns: String,
        /// Arguments.
        args: Vec<String>,
        /// Ignore a failure ("already gone").
        tolerate: bool,
    },
    /// `ip -n ns <args>`.
    Ip {
        /// Namespace.
        ns: String,
        /// Arguments.
        args: Vec<String>,
        /// Ignore a failure.
        tolerate: bool,
    },
    /// `conntrack -F` inside `ns`.
    ConntrackFlush {
        /// Namespace.
        ns: String,
    },
    /// A runtime operation on an agent.
    Process {
        /// The agent.
        agent: String,
        /// What.
        op: ProcessOp,
    },
    /// `PUT /impairment` on the agent's API.
    Impair {
        /// The agent.
        agent: String,
        /// Loss percent.
        loss_pct: f64,
        /// Delay, ms.
        delay_ms: u64,
        /// Jitter, ms.
        jitter_ms: u64,
    },
}

/// Inject and heal of one occurrence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultPlan {
    /// The occurrence id.
    pub id: u32,
    /// The fault's name.
    pub fault: String,
    /// The kind as written.
    pub kind: String,
    /// Agents or sites hit.
    pub targets: Vec<String>,
    /// Which mechanism carries it (e.g. `nft`, `tbf`, `agent-userspace`, `netem`).
    pub mechanism: String,
    /// Steps of the inject, in order.
    pub inject: Vec<Action>,
    /// Steps of the heal, in order (empty for a restart).
    pub heal: Vec<Action>,
}

/// Why a fault cannot be planned against this plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FaultError {
    /// A target is not in the plan.
    #[error("fault {fault}: no agent or site named {name:?} in this run")]
    Unknown {
        /// The fault.
        fault: String,
        /// The name.
        name: String,
    },
    /// A site-level fault on a site without a router.
    #[error("fault {fault}: site {site:?} has no NAT router")]
    NoRouter {
        /// The fault.
        fault: String,
        /// The site.
        site: String,
    },
}

/// The nft table name of occurrence `id` of run `run`.
pub fn table_name(run: &str, id: u32) -> String {
    format!("{TABLE_PREFIX}{run}_{id}")
}

/// Plans one occurrence. `netem` says whether the kernel has `sch_netem`.
pub fn plan_fault(plan: &Plan, o: &Occurrence, netem: bool) -> Result<FaultPlan, FaultError> {
    let run = plan.run_id.0.as_str();
    let table = table_name(run, o.id);
    let comment = format!(
        "chaosnet run {run} fault {} #{} {}",
        sanitize(&o.fault),
        o.id,
        o.kind.name()
    );
    let agent = |name: &str| -> Result<&AgentPlan, FaultError> {
        plan.agents
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| FaultError::Unknown {
                fault: o.fault.clone(),
                name: name.to_string(),
            })
    };
    let site = |name: &str| -> Result<&SitePlan, FaultError> {
        let s = plan
            .sites
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| FaultError::Unknown {
                fault: o.fault.clone(),
                name: name.to_string(),
            })?;
        if s.routers.is_empty() {
            return Err(FaultError::NoRouter {
                fault: o.fault.clone(),
                site: name.to_string(),
            });
        }
        Ok(s)
    };
    let mut inject = Vec::new();
    let mut heal = Vec::new();
    let mut mechanism = String::new();
    let drop_table = |ns: &str| Action::Nft {
        ns: ns.to_string(),
        script: format!("table ip {table} {{ }}\ndelete table ip {table}\n"),
    };
    match &o.kind {
        FaultKind::Kill | FaultKind::Restart | FaultKind::Pause => {
            mechanism = "runtime signals".into();
            let (on, off) = match o.kind {
                FaultKind::Kill => (ProcessOp::Kill, Some(ProcessOp::Start)),
                FaultKind::Restart => (ProcessOp::Restart, None),
                _ => (ProcessOp::Pause, Some(ProcessOp::Resume)),
            };
            for t in &o.targets {
                agent(t)?;
                inject.push(Action::Process {
                    agent: t.clone(),
                    op: on,
                });
                if let Some(off) = off {
                    heal.push(Action::Process {
                        agent: t.clone(),
                        op: off,
                    });
                }
            }
        }
        FaultKind::Partition { shape, oneway } => {
            mechanism = "nft (host namespaces)".into();
            let blocks = partition_blocks(*shape, *oneway, &o.groups);
            for (viewer, (out, inb)) in &blocks {
                let a = agent(viewer)?;
                let out_addrs = addresses(plan, a, out);
                let in_addrs = addresses(plan, a, inb);
                inject.push(Action::Nft {
                    ns: a.ns.clone(),
                    script: partition_script(&table, &comment, &out_addrs, &in_addrs),
                });
                heal.push(drop_table(&a.ns));
            }
        }
        FaultKind::Loss { loss_pct } => {
            mechanism = "nft numgen random (host namespaces)".into();
            let per_10k = (loss_pct * 100.0).round().clamp(0.0, 10_000.0) as u32;
            for t in &o.targets {
                let a = agent(t)?;
                inject.push(Action::Nft {
                    ns: a.ns.clone(),
                    script: loss_script(&table, &comment, per_10k),
                });
                heal.push(drop_table(&a.ns));
            }
        }
        FaultKind::Bandwidth { rate_kbit } => {
            mechanism = "tc tbf (both ends of the host link)".into();
            // One tenth of a second of traffic, at least two full-size frames.
            let burst = (rate_kbit * 1000 / 8 / 10).max(3200);
            for t in &o.targets {
                let a = agent(t)?;
                for (ns, dev) in link_ends(plan, a) {
                    inject.push(Action::Tc {
                        ns: ns.clone(),
                        args: strs(&[
                            "qdisc",
                            "replace",
                            "dev",
                            &dev,
                            "root",
                            "tbf",
                            "rate",
                            &format!("{rate_kbit}kbit"),
                            "burst",
                            &burst.to_string(),
                            "latency",
                            "200ms",
                        ]),
                        tolerate: false,
                    });
                    heal.push(Action::Tc {
                        ns,
                        args: strs(&["qdisc", "del", "dev", &dev, "root"]),
                        tolerate: true,
                    });
                }
            }
        }
        FaultKind::Delay {
            delay_ms,
            jitter_ms,
        } => {
            for t in &o.targets {
                let a = agent(t)?;
                if netem {
                    mechanism = "tc netem (host link, egress)".into();
                    let mut args = strs(&[
                        "qdisc",
                        "replace",
                        "dev",
                        HOST_IF,
                        "root",
                        "netem",
                        "delay",
                        &format!("{delay_ms}ms"),
                    ]);
                    if *jitter_ms > 0 {
                        args.push(format!("{jitter_ms}ms"));
                    }
                    inject.push(Action::Tc {
                        ns: a.ns.clone(),
                        args,
                        tolerate: false,
                    });
                    heal.push(Action::Tc {
                        ns: a.ns.clone(),
                        args: strs(&["qdisc", "del", "dev", HOST_IF, "root"]),
                        tolerate: true,
                    });
                } else {
                    mechanism = "agent userspace impairment (no sch_netem)".into();
                    inject.push(Action::Impair {
                        agent: t.clone(),
                        loss_pct: 0.0,
                        delay_ms: *delay_ms,
                        jitter_ms: *jitter_ms,
                    });
                    heal.push(Action::Impair {
                        agent: t.clone(),
                        loss_pct: 0.0,
                        delay_ms: 0,
                        jitter_ms: 0,
                    });
                }
            }
        }
        FaultKind::NatSwap { to } => {
            mechanism = "nft ruleset swap + conntrack flush (home router)".into();
            for t in &o.targets {
                let s = site(t)?;
                let Some(ns) = s.routers.last() else { continue };
                let p = router_params(plan, ns, s, s.hairpin, None);
                let text = nat::router_ruleset(*to, &p).unwrap_or_else(|| nat::carrier_ruleset(&p));
                inject.push(Action::Nft {
                    ns: ns.clone(),
                    script: text,
                });
                inject.push(Action::ConntrackFlush { ns: ns.clone() });
                heal.extend(restore_router(plan, ns));
            }
        }
        FaultKind::IpChange => {
            mechanism = "WAN address change + ruleset + conntrack flush (outer router)".into();
            for t in &o.targets {
                let s = site(t)?;
                // `site` refuses sites without routers, so index 0 exists.
                let ns = &s.routers[0];
                let Some(old) = wan_addr(plan, ns) else {
                    continue;
                };
                let o4 = old.ip.octets();
                let new = IfAddr {
                    ip: Ipv4Addr::new(o4[0], o4[1], o4[2], o4[3].wrapping_add(100)),
                    prefix: old.prefix,
                };
                let hairpin = !s.cgnat && s.hairpin;
                let p = router_params(plan, ns, s, hairpin, Some(new.ip));
                let text = if s.cgnat {
                    nat::carrier_ruleset(&p)
                } else {
                    nat::router_ruleset(s.nat, &p).unwrap_or_else(|| nat::carrier_ruleset(&p))
                };
                let cidr = |a: IfAddr| format!("{}/{}", a.ip, a.prefix);
                inject.push(ip(ns, &["addr", "del", &cidr(old), "dev", WAN_IF], true));
                inject.push(ip(
                    ns,
                    &["addr", "replace", &cidr(new), "dev", WAN_IF],
                    false,
                ));
                inject.extend(routes(plan, ns));
                inject.push(Action::Nft {
                    ns: ns.clone(),
                    script: text,
                });
                inject.push(Action::ConntrackFlush { ns: ns.clone() });
                heal.push(ip(ns, &["addr", "del", &cidr(new), "dev", WAN_IF], true));
                heal.push(ip(
                    ns,
                    &["addr", "replace", &cidr(old), "dev", WAN_IF],
                    false,
                ));
                heal.extend(routes(plan, ns));
                heal.extend(restore_router(plan, ns));
            }
        }
        FaultKind::LinkDown { site: site_level } => {
            mechanism = "ip link down".into();
            for t in &o.targets {
                let (ns, dev) = if *site_level {
                    // `site` refuses sites without routers, so index 0 exists.
                    (site(t)?.routers[0].clone(), WAN_IF)
                } else {
                    (agent(t)?.ns.clone(), HOST_IF)
                };
                inject.push(ip(&ns, &["link", "set", dev, "down"], false));
                heal.push(ip(&ns, &["link", "set", dev, "up"], false));
                heal.extend(routes(plan, &ns));
            }
        }
    }
    Ok(FaultPlan {
        id: o.id,
        fault: o.fault.clone(),
        kind: o.kind.name().to_string(),
        targets: o.targets.clone(),
        mechanism,
        inject,
        heal,
    })
}

/// For every agent a partition touches: (agents it must not send to, agents it must not
/// receive from).
pub fn partition_blocks(
    shape: Shape,
    oneway: bool,
    groups: &[Vec<String>],
) -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    let mut m: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    let mut cut = |from: &str, to: &str| {
        m.entry(from.to_string())
            .or_default()
            .0
            .insert(to.to_string());
        m.entry(to.to_string())
            .or_default()
            .1
            .insert(from.to_string());
    };
    let pairs_between =
        |a: &[String], b: &[String], cut: &mut dyn FnMut(&str, &str), both: bool| {
            for x in a {
                for y in b {
                    cut(x, y);
                    if both {
                        cut(y, x);
                    }
                }
            }
        };
    match shape {
        Shape::Ring => {
            let ring = groups.first().map(Vec::as_slice).unwrap_or(&[]);
            let n = ring.len();
            for (i, x) in ring.iter().enumerate() {
                for (j, y) in ring.iter().enumerate() {
                    let neighbour = (i + 1) % n == j || (j + 1) % n == i;
                    if i != j && !neighbour {
                        cut(x, y);
                    }
                }
            }
        }
        Shape::Sites => {
            for i in 0..groups.len() {
                for j in (i + 1)..groups.len() {
                    pairs_between(&groups[i], &groups[j], &mut cut, !oneway);
                }
            }
        }
        _ => {
            // Isolate, halves, majority, bridge: the first two groups are cut apart; a
            // bridge (third group) keeps both.
            if let (Some(a), Some(b)) = (groups.first(), groups.get(1)) {
                pairs_between(a, b, &mut cut, !oneway);
            }
        }
    }
    m
}

/// Addresses (IP, optional UDP port) under which `viewer` sees the agents `peers`.
fn addresses(
    plan: &Plan,
    viewer: &AgentPlan,
    peers: &BTreeSet<String>,
) -> (BTreeSet<Ipv4Addr>, BTreeSet<(Ipv4Addr, u16)>) {
    let mut ips = BTreeSet::new();
    let mut eps = BTreeSet::new();
    for p in peers {
        let Some(a) = plan.agents.iter().find(|a| &a.name == p) else {
            continue;
        };
        let public = plan
            .sites
            .iter()
            .find(|s| s.name == a.site)
            .and_then(|s| s.public_ip);
        match public {
            Some(pub_ip) if a.site != viewer.site => {
                // Split site: some of its agents stay reachable, so match the port too.
                let split = plan
                    .agents
                    .iter()
                    .any(|b| b.site == a.site && !peers.contains(&b.name) && b.name != viewer.name);
                if split {
                    eps.insert((pub_ip, a.port));
                } else {
                    ips.insert(pub_ip);
                }
            }
            _ => {
                ips.insert(a.lan_ip);
            }
        }
    }
    (ips, eps)
}

fn set_decl(out: &mut String, name: &str, ty: &str, elems: &[String]) {
    let _ = writeln!(out, "\tset {name} {{\n\t\ttype {ty}");
    if !elems.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", elems.join(", "));
    }
    let _ = writeln!(out, "\t}}");
}

type AddrSets = (BTreeSet<Ipv4Addr>, BTreeSet<(Ipv4Addr, u16)>);

/// The nft script of a partition in one host namespace.
pub fn partition_script(table: &str, comment: &str, out: &AddrSets, inb: &AddrSets) -> String {
    let ips = |s: &BTreeSet<Ipv4Addr>| s.iter().map(|i| i.to_string()).collect::<Vec<_>>();
    let eps = |s: &BTreeSet<(Ipv4Addr, u16)>| {
        s.iter()
            .map(|(i, p)| format!("{i} . {p}"))
            .collect::<Vec<_>>()
    };
    let mut t = format!("table ip {table} {{ }}\ndelete table ip {table}\ntable ip {table} {{\n");
    let _ = writeln!(t, "\tcomment \"{comment}\"");
    set_decl(&mut t, "out_ip", "ipv4_addr", &ips(&out.0));
    set_decl(&mut t, "out_ep", "ipv4_addr . inet_service", &eps(&out.1));
    set_decl(&mut t, "in_ip", "ipv4_addr", &ips(&inb.0));
    set_decl(&mut t, "in_ep", "ipv4_addr . inet_service", &eps(&inb.1));
    t.push_str(
        "\tchain output {\n\t\ttype filter hook output priority -10; policy accept;\n\
         \t\tip daddr @out_ip drop\n\t\tmeta l4proto udp ip daddr . udp dport @out_ep drop\n\t}\n\
         \tchain input {\n\t\ttype filter hook input priority -10; policy accept;\n\
         \t\tip saddr @in_ip drop\n\t\tmeta l4proto udp ip saddr . udp sport @in_ep drop\n\t}\n}\n",
    );
    t
}

/// The nft script of random loss (`per_10k` of 10000 UDP packets dropped each way).
pub fn loss_script(table: &str, comment: &str, per_10k: u32) -> String {
    format!(
        "table ip {table} {{ }}\ndelete table ip {table}\ntable ip {table} {{\n\
         \tcomment \"{comment}\"\n\
         \tchain output {{\n\t\ttype filter hook output priority -5; policy accept;\n\
         \t\tmeta l4proto udp numgen random mod 10000 < {per_10k} drop\n\t}}\n\
         \tchain input {{\n\t\ttype filter hook input priority -5; policy accept;\n\
         \t\tmeta l4proto udp numgen random mod 10000 < {per_10k} drop\n\t}}\n}}\n"
    )
}

/// Both ends of an agent's link: (namespace, interface).
fn link_ends(plan: &Plan, a: &AgentPlan) -> Vec<(String, String)> {
    let mut v = vec![(a.ns.clone(), HOST_IF.to_string())];
    for veth in &plan.veths {
        if veth.a.ns == a.ns && veth.a.name == HOST_IF {
            v.push((veth.b.ns.clone(), veth.b.name.clone()));
        }
    }
    v
}

fn wan_addr(plan: &Plan, ns: &str) -> Option<IfAddr> {
    plan.veths
        .iter()
        .find(|v| v.a.ns == ns && v.a.name == WAN_IF)
        .and_then(|v| v.a.addr)
}

/// Template parameters of the router in `ns`, rebuilt from the plan.
fn router_params(
    plan: &Plan,
    ns: &str,
    site: &SitePlan,
    hairpin: bool,
    wan_ip: Option<Ipv4Addr>,
) -> RouterParams {
    let lan = plan
        .bridges
        .iter()
        .find(|b| b.ns == ns && b.name == BRIDGE)
        .and_then(|b| b.addr)
        .unwrap_or(site.lan);
    let mapping_timeout_s = plan
        .sysctls
        .iter()
        .find(|s| s.ns == ns && s.key == "net.netfilter.nf_conntrack_udp_timeout_stream")
        .and_then(|s| s.value.parse().ok())
        .unwrap_or(300);
    RouterParams {
        run_id: plan.run_id.clone(),
        site: site.name.clone(),
        wan_if: WAN_IF.into(),
        wan_ip: wan_ip
            .or_else(|| wan_addr(plan, ns).map(|a| a.ip))
            .unwrap_or(Ipv4Addr::UNSPECIFIED),
        lan_if: BRIDGE.into(),
        lan_net: nat::network_of(lan),
        mapping_timeout_s,
        hairpin,
    }
}

/// The plan's own ruleset of a router, and a conntrack flush.
fn restore_router(plan: &Plan, ns: &str) -> Vec<Action> {
    let mut v = Vec::new();
    if let Some(r) = plan.rulesets.iter().find(|r| r.ns == ns) {
        v.push(Action::Nft {
            ns: ns.to_string(),
            script: r.text.clone(),
        });
    }
    v.push(Action::ConntrackFlush { ns: ns.to_string() });
    v
}

/// `ip route replace` of the plan's routes in `ns`.
fn routes(plan: &Plan, ns: &str) -> Vec<Action> {
    plan.routes
        .iter()
        .filter(|r| r.ns == ns)
        .map(|r| {
            let dest = r
                .dest
                .map_or("default".to_string(), |d| format!("{}/{}", d.ip, d.prefix));
            ip(
                ns,
                &["route", "replace", &dest, "via", &r.via.to_string()],
                false,
            )
        })
        .collect()
}

fn ip(ns: &str, args: &[&str], tolerate: bool) -> Action {
    Action::Ip {
        ns: ns.to_string(),
        args: strs(args),
        tolerate,
    }
}

fn strs(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Keeps a name safe inside an nft comment.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect()
}

/// The heal-everything actions of `heal --all`: removes every fault table of the run from
/// every namespace, every root qdisc from host links, resumes every agent, clears every
/// impairment, and brings host links up with their routes. Recorded heals (router
/// restores, restarts of killed agents) run before this.
pub fn sweep(plan: &Plan) -> Vec<Action> {
    let prefix = format!("{TABLE_PREFIX}{}_", plan.run_id.0);
    let mut v: Vec<Action> = plan
        .namespaces
        .iter()
        .map(|n| Action::NftSweep {
            ns: n.name.clone(),
            prefix: prefix.clone(),
        })
        .collect();
    for a in &plan.agents {
        for (ns, dev) in link_ends(plan, a) {
            v.push(Action::Tc {
                ns,
                args: strs(&["qdisc", "del", "dev", &dev, "root"]),
                tolerate: true,
            });
        }
        v.push(ip(&a.ns, &["link", "set", HOST_IF, "up"], true));
        for r in routes(plan, &a.ns) {
            if let Action::Ip { ns, args, .. } = r {
                v.push(Action::Ip {
                    ns,
                    args,
                    tolerate: true,
                });
            }
        }
        v.push(Action::Process {
            agent: a.name.clone(),
            op: ProcessOp::Resume,
        });
        v.push(Action::Impair {
            agent: a.name.clone(),
            loss_pct: 0.0,
            delay_ms: 0,
            jitter_ms: 0,
        });
    }
    v
}
