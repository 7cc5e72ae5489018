//! The planner: a validated [`Scenario`] becomes a [`Plan`], as pure data.
//!
//! What it does: names every namespace, bridge and veth, gives out every address, route,
//! sysctl and nftables ruleset (rendered by [`crate::nat`]), derives every agent's key and
//! rng seed, and writes out every agent's command line. The same scenario, seed and run id
//! always give the same plan. [`check`] verifies the plan's invariants (unique names,
//! interface names of at most 15 bytes, unique addresses inside their subnets, routes via
//! on-link routers) before it is returned, so a plan that would fail half-way is never
//! applied.
//!
//! What it does not do: touch the system, pick the run id, know where the agent binary is
//! (agent args start with `run`; paths in them are relative to the run directory), or
//! resolve a runtime choice of `auto` (that needs the Docker engine:
//! [`crate::lab::resolve_runtime`] resolves it first; an unresolved `auto` plans as
//! `process`).
//!
//! # Address plan
//!
//! Sites are numbered in file order from 1; `S` below is that number (1..=250).
//!
//! | what | namespace | interface | address |
//! |---|---|---|---|
//! | emulated internet (no uplink) | `cn<run>-inet` | bridge `br0` | 198.18.0.1/15 |
//! | public seed `seed-<i>` | `cn<run>-h-seed-<i>` | `eth0` (peer `seed<i>` on the internet `br0`) | 198.18.0.(10+i)/15 |
//! | host `<site>-<j>` of a `none` site | `cn<run>-h-<site>-<j>` | `eth0` (peer `s<S>h<j>`) | 198.18.S.(10+j)/15 |
//! | outer router of a NATed site | `cn<run>-rt-<site>`, or `cn<run>-cgn-<site>` for cgnat | `wan` (peer `s<S>wan`) | 198.19.S.1/15 (the site's public address) |
//! | home LAN | the home router | bridge `br0` | 10.S.0.1/24 |
//! | host `<site>-<j>` of a NATed site | `cn<run>-h-<site>-<j>` | `eth0` (peer `h<j>` on the home router's `br0`) | 10.S.0.(10+j)/24, default route via 10.S.0.1 |
//! | carrier LAN of a cgnat site | the carrier router `cn<run>-cgn-<site>` | bridge `br0` | 100.64.S.1/24 |
//! | home router behind a carrier | `cn<run>-rt-<site>` | `wan` (peer `home` on the carrier `br0`) | 100.64.S.2/24, default route via 100.64.S.1 |
//!
//! The whole internet is one /15 on one bridge, so public hosts and outer routers need no
//! routes; addresses outside the lab are unreachable (there is no uplink). Carrier LANs use
//! 100.64.0.0/10, the RFC 6598 shared address space that real carriers use for exactly this,
//! so an agent behind CGNAT sees the same kind of address as on a real carrier network, and
//! it cannot collide with the home LANs in 10.0.0.0/8. Addresses .2–.9 of every LAN are
//! left free for test probes.
//!
//! Every agent `<site>-<j>` (and `seed-<j>`) listens on UDP port 4433 + j. Each host has its
//! own namespace, so equal ports would be possible, but hosts behind one NAT must not share
//! a port: two LAN sockets on the same port that talk to the same remote host force Linux's
//! source NAT to move one of them to another public port, and the NAT's endpoint-independent
//! mapping then looks endpoint-dependent.
//!
//! # Sysctls and order of application
//!
//! Routers get `net.ipv4.ip_forward=1`, `net.ipv4.conf.{all,default}.rp_filter=0`,
//! `net.ipv4.conf.{all,default}.send_redirects=0` (a hairpinned packet leaves by the
//! interface it came in on; an ICMP redirect would make the LAN host bypass the NAT) and
//! the site's conntrack timeouts (`net.netfilter.nf_conntrack_udp_timeout`,
//! `_udp_timeout_stream`, `_tcp_timeout_established`; both routers of a cgnat site use the
//! site's preset). The `net.netfilter.*` keys exist only once `nf_conntrack` is loaded, which
//! loading a router's ruleset does, so an applier loads rulesets before sysctls. Hosts and
//! the internet need no sysctl. Every namespace also needs `lo` up (the applier does that;
//! it is not listed). rp_filter is off on `all` and `default`; interfaces created before it
//! keep the host's default, which this topology satisfies anyway (every route is symmetric).
//!
//! # Keys and seeds
//!
//! An agent's 32-byte Ed25519 secret is SHA-256(`"chaosnet node key v1\0"` ‖ run seed as 8
//! big-endian bytes ‖ agent name); its NodeId is the hex of the public key. Its `--rng-seed`
//! is the first 8 bytes (big-endian) of SHA-256(`"chaosnet rng seed v1\0"` ‖ run seed ‖ agent
//! name). SHA-256 keeps both stable across Rust and crate versions, unlike a seeded `StdRng`.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ed25519_dalek::SigningKey;

use crate::nat::{self, RouterParams};
use chaosnet_contract::AgentArgs;

use crate::plan::{
    AgentPlan, Bridge, IfAddr, Namespace, NatKind, NsRole, Plan, Route, Ruleset, RunId,
    RuntimeKind, SEED_SITE, SEED_STEM, SitePlan, Sysctl, Veth, VethEnd, agent_name,
};
use crate::scenario::{MAX_HOSTS_PER_LAN, MAX_SITES, MAX_TOTAL_AGENTS, Network, Scenario, Site};

/// UDP port of agent 0 of every site (and of `seed-0`); agent j uses this + j.
pub const AGENT_BASE_PORT: u16 = 4433;
/// The internet bridge's address: 198.18.0.1/15.
pub const INTERNET_ADDR: IfAddr = IfAddr {
    ip: Ipv4Addr::new(198, 18, 0, 1),
    prefix: 15,
};
/// Last octet of the first host on every LAN (and of the first seed).
pub const FIRST_HOST: u8 = 10;
/// Name of bridges (one per namespace that has one).
pub const BRIDGE: &str = "br0";
/// A router's WAN interface.
pub const WAN_IF: &str = "wan";
/// A host's interface.
pub const HOST_IF: &str = "eth0";
/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Why a plan could not be made. The scenario module already rejects everything the user
/// can get wrong; these guard the planner's own limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The run id is not 6 lowercase hex characters.
    #[error("run id {0:?} must be 6 lowercase hex characters")]
    BadRunId(String),
    /// More sites than site numbers.
    #[error("{0} sites, more than the limit of {MAX_SITES}")]
    TooManySites(usize),
    /// More hosts on one LAN than it holds.
    #[error("site {site:?} has {agents} agents, more than a LAN holds ({MAX_HOSTS_PER_LAN})")]
    LanFull {
        /// The site (or `internet` for the seeds).
        site: String,
        /// Its agents.
        agents: usize,
    },
    /// Too many agents in total.
    #[error("{0} agents in total, more than the limit of {MAX_TOTAL_AGENTS}")]
    TooManyAgents(usize),
    /// A site with no agents.
    #[error("site {0:?} has no agents")]
    NoAgents(String),
    /// A private network without a key file, or a public one with one.
    #[error("network {network}: {problem}")]
    NetworkKey {
        /// The network.
        network: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// The network key file path is relative (or not UTF-8), so the agent, which runs in the
    /// run directory, could not find it.
    #[error("network key file {0:?} must be an absolute UTF-8 path (Scenario::load resolves it)")]
    KeyFilePath(PathBuf),
    /// The plan broke one of its own invariants (a planner bug).
    #[error("internal planner error: {0}")]
    Invariant(String),
}

/// The 32-byte Ed25519 secret of an agent (see the module docs).
pub fn key_seed(run_seed: u64, agent: &str) -> [u8; 32] {
    let d = digest(b"chaosnet node key v1\0", run_seed, agent);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The `--rng-seed` of an agent (see the module docs).
pub fn rng_seed(run_seed: u64, agent: &str) -> u64 {
    let d = digest(b"chaosnet rng seed v1\0", run_seed, agent);
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// Hex NodeId (Ed25519 public key) of a 32-byte secret.
pub fn node_id(key_seed: &[u8; 32]) -> String {
    hex::encode(SigningKey::from_bytes(key_seed).verifying_key().to_bytes())
}

fn digest(domain: &[u8], run_seed: u64, agent: &str) -> ring::digest::Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(domain);
    ctx.update(&run_seed.to_be_bytes());
    ctx.update(agent.as_bytes());
    ctx.finish()
}

/// Makes the plan of `scenario` for run `run_id`. Pure and deterministic.
pub fn plan(scenario: &Scenario, run_id: &RunId) -> Result<Plan, PlanError> {
    pre_check(scenario, run_id)?;
    let mut b = Builder {
        run: run_id.clone(),
        run_seed: scenario.seed,
        plan: Plan {
            run_id: run_id.clone(),
            namespaces: Vec::new(),
            bridges: Vec::new(),
            veths: Vec::new(),
            routes: Vec::new(),
            sysctls: Vec::new(),
            rulesets: Vec::new(),
            sites: Vec::new(),
            agents: Vec::new(),
        },
        hosts: Vec::new(),
    };
    let inet = b.run.ns("inet");
    b.plan.namespaces.push(Namespace {
        name: inet.clone(),
        role: NsRole::Internet,
    });
    b.plan.bridges.push(Bridge {
        ns: inet.clone(),
        name: BRIDGE.into(),
        addr: Some(INTERNET_ADDR),
    });
    b.plan.rulesets.push(Ruleset {
        ns: inet.clone(),
        text: nat::internet_ruleset(run_id),
    });

    // Seeds: public hosts on the internet bridge.
    for i in 0..scenario.seeds {
        let name = agent_name(SEED_STEM, i);
        let ip = Ipv4Addr::new(198, 18, 0, host_octet(i));
        b.host(
            &name,
            SEED_SITE,
            true,
            i,
            ip,
            15,
            &inet,
            &format!("seed{i}"),
            None,
            scenario.seed_runtime.resolved(),
        );
    }

    // Routers first (outermost first), then hosts, so namespaces come in creation order.
    for (idx, site) in scenario.sites.iter().enumerate() {
        // pre_check bounds the number of sites by MAX_SITES = 250, so this fits in a u8.
        let s = u8::try_from(idx + 1).map_err(|_| PlanError::TooManySites(idx + 1))?;
        b.site(site, s, &inet);
    }
    for h in std::mem::take(&mut b.hosts) {
        b.plan.namespaces.push(h);
    }

    let seed_addrs: Vec<(String, String, String)> = b
        .plan
        .agents
        .iter()
        .filter(|a| a.seed)
        .map(|a| {
            (
                a.name.clone(),
                a.node_id.clone(),
                format!("{}:{}", a.lan_ip, a.port),
            )
        })
        .collect();
    for a in &mut b.plan.agents {
        a.args = agent_args(scenario, a, &seed_addrs)?;
    }
    check(&b.plan)?;
    Ok(b.plan)
}

fn pre_check(scenario: &Scenario, run_id: &RunId) -> Result<(), PlanError> {
    let id = &run_id.0;
    if id.len() != 6 || !id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        return Err(PlanError::BadRunId(id.chars().take(32).collect()));
    }
    if scenario.sites.len() > MAX_SITES {
        return Err(PlanError::TooManySites(scenario.sites.len()));
    }
    if scenario.seeds > MAX_HOSTS_PER_LAN {
        return Err(PlanError::LanFull {
            site: SEED_SITE.into(),
            agents: scenario.seeds,
        });
    }
    for s in &scenario.sites {
        if s.agents == 0 {
            return Err(PlanError::NoAgents(s.name.clone()));
        }
        if s.agents > MAX_HOSTS_PER_LAN {
            return Err(PlanError::LanFull {
                site: s.name.clone(),
                agents: s.agents,
            });
        }
    }
    let total = scenario.total_agents();
    if total > MAX_TOTAL_AGENTS {
        return Err(PlanError::TooManyAgents(total));
    }
    match (&scenario.network, &scenario.network_key_file) {
        (Network::Private(_), None) => Err(PlanError::NetworkKey {
            network: scenario.network.to_string(),
            problem: "a private network needs a network key file",
        }),
        (Network::Private(_), Some(p)) if !p.is_absolute() || p.to_str().is_none() => {
            Err(PlanError::KeyFilePath(p.clone()))
        }
        (Network::Mainnet | Network::Testnet, Some(_)) => Err(PlanError::NetworkKey {
            network: scenario.network.to_string(),
            problem: "only private networks take a network key file",
        }),
        _ => Ok(()),
    }
}

/// Last octet of host `i` of a LAN (i < MAX_HOSTS_PER_LAN, checked before).
fn host_octet(i: usize) -> u8 {
    u8::try_from(usize::from(FIRST_HOST) + i).unwrap_or(u8::MAX)
}

struct Builder {
    run: RunId,
    run_seed: u64,
    plan: Plan,
    /// Host namespaces, appended to the plan after every router.
    hosts: Vec<Namespace>,
}

impl Builder {
    /// One host with its agent: namespace, veth to `peer_ns` (enslaved to its bridge) and,
    /// behind a router, a default route.
    #[allow(clippy::too_many_arguments)] // a private helper; the arguments are the host
    fn host(
        &mut self,
        name: &str,
        site: &str,
        seed: bool,
        index: usize,
        ip: Ipv4Addr,
        prefix: u8,
        peer_ns: &str,
        peer_if: &str,
        gateway: Option<Ipv4Addr>,
        runtime: RuntimeKind,
    ) {
        let ns = self.run.ns(&format!("h-{name}"));
        self.hosts.push(Namespace {
            name: ns.clone(),
            role: NsRole::Host {
                agent: name.to_string(),
            },
        });
        self.plan.veths.push(Veth {
            a: VethEnd {
                ns: ns.clone(),
                name: HOST_IF.into(),
                addr: Some(IfAddr { ip, prefix }),
                master: None,
            },
            b: VethEnd {
                ns: peer_ns.to_string(),
                name: peer_if.to_string(),
                addr: None,
                master: Some(BRIDGE.into()),
            },
        });
        if let Some(via) = gateway {
            self.plan.routes.push(Route {
                ns: ns.clone(),
                dest: None,
                via,
            });
        }
        let key = key_seed(self.run_seed, name);
        let dir = PathBuf::from("agents").join(name);
        self.plan.agents.push(AgentPlan {
            name: name.to_string(),
            site: site.to_string(),
            ns,
            lan_ip: ip,
            // index < MAX_HOSTS_PER_LAN (245), so the sum stays far below u16::MAX.
            port: AGENT_BASE_PORT + u16::try_from(index).unwrap_or(0),
            seed,
            node_id: node_id(&key),
            key_seed_hex: hex::encode(key),
            data_dir: dir.join("data"),
            api_socket: dir.join("api.sock"),
            args: Vec::new(),
            runtime,
        });
    }

    /// A router namespace with its WAN veth, LAN bridge, sysctls and ruleset.
    #[allow(clippy::too_many_arguments)] // a private helper; the arguments are the router
    fn router(
        &mut self,
        ns: &str,
        site: &Site,
        layer: u8,
        wan: IfAddr,
        wan_peer: (&str, &str),
        lan: IfAddr,
        ruleset: String,
    ) {
        self.plan.namespaces.push(Namespace {
            name: ns.to_string(),
            role: NsRole::Router {
                site: site.name.clone(),
                layer,
            },
        });
        self.plan.veths.push(Veth {
            a: VethEnd {
                ns: ns.to_string(),
                name: WAN_IF.into(),
                addr: Some(wan),
                master: None,
            },
            b: VethEnd {
                ns: wan_peer.0.to_string(),
                name: wan_peer.1.to_string(),
                addr: None,
                master: Some(BRIDGE.into()),
            },
        });
        self.plan.bridges.push(Bridge {
            ns: ns.to_string(),
            name: BRIDGE.into(),
            addr: Some(lan),
        });
        let t = site.conntrack.timeouts();
        for (key, value) in [
            ("net.ipv4.ip_forward", "1".to_string()),
            ("net.ipv4.conf.all.rp_filter", "0".into()),
            ("net.ipv4.conf.default.rp_filter", "0".into()),
            ("net.ipv4.conf.all.send_redirects", "0".into()),
            ("net.ipv4.conf.default.send_redirects", "0".into()),
            (
                "net.netfilter.nf_conntrack_udp_timeout",
                t.udp_s.to_string(),
            ),
            (
                "net.netfilter.nf_conntrack_udp_timeout_stream",
                t.udp_stream_s.to_string(),
            ),
            (
                "net.netfilter.nf_conntrack_tcp_timeout_established",
                t.tcp_established_s.to_string(),
            ),
        ] {
            self.plan.sysctls.push(Sysctl {
                ns: ns.to_string(),
                key: key.to_string(),
                value,
            });
        }
        self.plan.rulesets.push(Ruleset {
            ns: ns.to_string(),
            text: ruleset,
        });
    }

    fn site(&mut self, site: &Site, s: u8, inet: &str) {
        if site.nat == NatKind::None && !site.cgnat {
            for j in 0..site.agents {
                let name = agent_name(&site.name, j);
                let ip = Ipv4Addr::new(198, 18, s, host_octet(j));
                self.host(
                    &name,
                    &site.name,
                    false,
                    j,
                    ip,
                    15,
                    inet,
                    &format!("s{s}h{j}"),
                    None,
                    site.runtime.resolved(),
                );
            }
            self.plan.sites.push(SitePlan {
                name: site.name.clone(),
                nat: NatKind::None,
                cgnat: false,
                routers: Vec::new(),
                public_ip: None,
                lan: nat::network_of(INTERNET_ADDR),
                hairpin: false,
                labels: site.labels.clone(),
            });
            return;
        }

        let public = IfAddr {
            ip: Ipv4Addr::new(198, 19, s, 1),
            prefix: 15,
        };
        let lan = IfAddr {
            ip: Ipv4Addr::new(10, s, 0, 1),
            prefix: 24,
        };
        let t = site.conntrack.timeouts();
        let run = self.run.clone();
        let params = |wan_ip: Ipv4Addr, lan_net: IfAddr, hairpin: bool| RouterParams {
            run_id: run.clone(),
            site: site.name.clone(),
            wan_if: WAN_IF.into(),
            wan_ip,
            lan_if: BRIDGE.into(),
            lan_net: nat::network_of(lan_net),
            mapping_timeout_s: t.udp_stream_s,
            hairpin,
        };
        let home_ns = self.run.ns(&format!("rt-{}", site.name));
        let mut routers = Vec::new();
        let wan_peer = format!("s{s}wan");
        let home_kind = site.nat;
        let home_rules = |p: &RouterParams| {
            // A NATed site's kind is never `None` here (checked above); fall back to the
            // port-restricted cone rather than panic.
            nat::router_ruleset(home_kind, p).unwrap_or_else(|| nat::carrier_ruleset(p))
        };
        if site.cgnat {
            let carrier_ns = self.run.ns(&format!("cgn-{}", site.name));
            let carrier_lan = IfAddr {
                ip: Ipv4Addr::new(100, 64, s, 1),
                prefix: 24,
            };
            let home_wan = IfAddr {
                ip: Ipv4Addr::new(100, 64, s, 2),
                prefix: 24,
            };
            // One subscriber per carrier: carrier hairpinning would never be used.
            let carrier_rules = nat::carrier_ruleset(&params(public.ip, carrier_lan, false));
            self.router(
                &carrier_ns,
                site,
                0,
                public,
                (inet, &wan_peer),
                carrier_lan,
                carrier_rules,
            );
            let rules = home_rules(&params(home_wan.ip, lan, site.hairpin));
            self.router(
                &home_ns,
                site,
                1,
                home_wan,
                (&carrier_ns, "home"),
                lan,
                rules,
            );
            self.plan.routes.push(Route {
                ns: home_ns.clone(),
                dest: None,
                via: carrier_lan.ip,
            });
            routers.push(carrier_ns);
        } else {
            let rules = home_rules(&params(public.ip, lan, site.hairpin));
            self.router(&home_ns, site, 0, public, (inet, &wan_peer), lan, rules);
        }
        routers.push(home_ns.clone());
        for j in 0..site.agents {
            let name = agent_name(&site.name, j);
            let ip = Ipv4Addr::new(10, s, 0, host_octet(j));
            self.host(
                &name,
                &site.name,
                false,
                j,
                ip,
                24,
                &home_ns,
                &format!("h{j}"),
                Some(lan.ip),
                site.runtime.resolved(),
            );
        }
        self.plan.sites.push(SitePlan {
            name: site.name.clone(),
            nat: site.nat,
            cgnat: site.cgnat,
            routers,
            public_ip: Some(public.ip),
            lan: nat::network_of(lan),
            hairpin: site.hairpin,
            labels: site.labels.clone(),
        });
    }
}

/// The agent's command line, rendered by the contract ([`AgentArgs::command_line`]) so the
/// agent parses exactly these flags.
fn agent_args(
    scenario: &Scenario,
    a: &AgentPlan,
    seeds: &[(String, String, String)],
) -> Result<Vec<String>, PlanError> {
    let mut args = AgentArgs::new(
        scenario.network.to_string(),
        std::net::SocketAddr::from((a.lan_ip, a.port)),
        a.data_dir.clone(),
        format!("unix:{}", a.api_socket.display()),
    );
    if let Some(key) = &scenario.network_key_file {
        if key.to_str().is_none() {
            return Err(PlanError::KeyFilePath(key.clone()));
        }
        args.network_key_files.push(key.clone());
    }
    args.seeds = seeds
        .iter()
        .filter(|(name, _, _)| *name != a.name)
        .map(|(_, id, addr)| format!("{id}@{addr}"))
        .collect();
    let st = &scenario.agent;
    args.task_rate = st.task_rate;
    args.rng_seed = Some(rng_seed(scenario.seed, &a.name));
    args.task_weights = st.task_weights;
    args.bucket_refresh_ms = st.bucket_refresh_ms;
    args.gc_interval_ms = st.gc_interval_ms;
    args.otlp_endpoint.clone_from(&st.otlp_endpoint);
    args.mdns = st.mdns;
    Ok(args.command_line())
}

/// Verifies a plan's invariants: unique namespace names; unique bridge and interface names
/// per namespace, each at most 15 bytes; every referenced namespace and bridge exists;
/// unique addresses, each host address inside its subnet and not its network or broadcast
/// address; every route's next hop on a subnet of its namespace; unique agent names,
/// node ids and API sockets.
pub fn check(plan: &Plan) -> Result<(), PlanError> {
    let bad = |m: String| Err(PlanError::Invariant(m));
    let mut ns_names = HashSet::new();
    for ns in &plan.namespaces {
        if !ns_names.insert(ns.name.as_str()) {
            return bad(format!("namespace {} twice", ns.name));
        }
    }
    // (namespace, interface) -> its address, for names and routes.
    let mut ifaces: HashMap<(&str, &str), Option<IfAddr>> = HashMap::new();
    let mut bridges = HashSet::new();
    let add_if = |ns: &'_ str, name: &'_ str| -> Result<(), String> {
        if !ns_names.contains(ns) {
            return Err(format!("interface {name} in unknown namespace {ns}"));
        }
        if name.is_empty() || name.len() > MAX_IFNAME {
            return Err(format!(
                "interface name {name:?} in {ns} is not 1 to 15 bytes"
            ));
        }
        Ok(())
    };
    for br in &plan.bridges {
        add_if(&br.ns, &br.name).map_err(PlanError::Invariant)?;
        if ifaces.insert((&br.ns, &br.name), br.addr).is_some() {
            return bad(format!("interface {} twice in {}", br.name, br.ns));
        }
        bridges.insert((br.ns.as_str(), br.name.as_str()));
    }
    for v in &plan.veths {
        for end in [&v.a, &v.b] {
            add_if(&end.ns, &end.name).map_err(PlanError::Invariant)?;
            if ifaces.insert((&end.ns, &end.name), end.addr).is_some() {
                return bad(format!("interface {} twice in {}", end.name, end.ns));
            }
            if let Some(m) = &end.master
                && !bridges.contains(&(end.ns.as_str(), m.as_str()))
            {
                return bad(format!("{} in {}: no bridge {m} there", end.name, end.ns));
            }
        }
    }
    let mut addrs = HashSet::new();
    for ((ns, name), addr) in &ifaces {
        let Some(a) = addr else { continue };
        if !addrs.insert(a.ip) {
            return bad(format!("address {} twice", a.ip));
        }
        let net = nat::network_of(*a);
        let host_bits = 32 - u32::from(a.prefix);
        let bcast = u32::from(net.ip) | ((1u64 << host_bits) - 1) as u32;
        if a.prefix < 31 && (a.ip == net.ip || u32::from(a.ip) == bcast) {
            return bad(format!(
                "{ns}/{name}: {} is a network or broadcast address",
                a.ip
            ));
        }
    }
    for r in &plan.routes {
        let on_link = ifaces.iter().any(|((ns, _), a)| {
            *ns == r.ns
                && a.is_some_and(|a| {
                    nat::network_of(a)
                        == nat::network_of(IfAddr {
                            ip: r.via,
                            prefix: a.prefix,
                        })
                })
        });
        if !on_link {
            return bad(format!(
                "route in {} via {} is not on a local subnet",
                r.ns, r.via
            ));
        }
    }
    let mut names = HashSet::new();
    let mut ids = HashSet::new();
    let mut sockets = HashSet::new();
    for a in &plan.agents {
        if !names.insert(&a.name) || !ids.insert(&a.node_id) || !sockets.insert(&a.api_socket) {
            return bad(format!(
                "agent {} is not unique (name, node id or socket)",
                a.name
            ));
        }
        if !ns_names.contains(a.ns.as_str()) {
            return bad(format!("agent {} in unknown namespace {}", a.name, a.ns));
        }
    }
    Ok(())
}
