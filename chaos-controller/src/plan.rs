//! The plan: everything a run creates, as pure data.
//!
//! A [`Plan`] is what the planner (`planner` module) makes of a validated scenario, and what the
//! `apply` module carries out as root. It names every namespace, bridge, veth, address,
//! route, sysctl and nftables ruleset, and every agent with its full command line. Nothing
//! here touches the system, so plans are unit- and snapshot-tested without root, and
//! applying one is a separate, idempotent step.
//!
//! Naming: every namespace is `cn<run_id>-<role>` (so `down --all` finds all of them by the
//! `cn` prefix plus a 6-hex-char run id). Interface names are short and fixed per namespace
//! (`wan`, `lan`, `br0`, `eth0`), which is possible because each namespace has its own
//! interface name space, and keeps names under the kernel's 15-character limit.
//!
//! The plan is also where the run's vocabulary lives, so the planner, fault targeting and
//! reports agree on it: agent names ([`agent_name`]), the seeds' site ([`SEED_SITE`]), and
//! the NAT type names ([`NatKind::name`], [`SitePlan::nat_label`], [`NAT_CHOICES`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Prefix of every namespace chaosnet creates.
pub const NS_PREFIX: &str = "cn";
/// Site name of public seeds in [`AgentPlan::site`].
pub const SEED_SITE: &str = "internet";
/// Name stem of the public seeds: `seed-<i>`.
pub const SEED_STEM: &str = "seed";
/// The NAT label of a site behind a carrier-grade NAT.
pub const CGNAT: &str = "cgnat";
/// Every site NAT label, as scenarios and fault selectors spell them.
pub const NAT_CHOICES: &str =
    "none, full-cone, restricted-cone, port-restricted-cone, symmetric, cgnat";
/// The NAT types a home router can have (behind a carrier, or swapped to).
pub const INNER_CHOICES: &str = "full-cone, restricted-cone, port-restricted-cone, symmetric";

/// The name of agent `index` of a site (`seed-<i>` for the seeds: `agent_name(SEED_STEM, i)`).
pub fn agent_name(site: &str, index: usize) -> String {
    format!("{site}-{index}")
}

/// A run id: 6 lowercase hex characters, unique per `up`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunId(pub String);

impl RunId {
    /// The namespace name for `role` in this run, e.g. `cn3fa9c1-inet`.
    pub fn ns(&self, role: &str) -> String {
        format!("{NS_PREFIX}{}-{role}", self.0)
    }
}

/// An IPv4 address with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IfAddr {
    /// The address.
    pub ip: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

/// What a namespace is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsRole {
    /// The emulated internet: one bridge, no uplink, public addresses in 198.18.0.0/15.
    Internet,
    /// A NAT router of a site. `layer` 0 faces the internet; a CGNAT site has an inner
    /// router (layer 1) behind the carrier router (layer 0).
    Router {
        /// The site's name.
        site: String,
        /// 0 = outermost.
        layer: u8,
    },
    /// The network namespace of one agent.
    Host {
        /// The agent's name.
        agent: String,
    },
}

/// A network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// Full name, `cn<run>-<role>`.
    pub name: String,
    /// What it is for.
    pub role: NsRole,
}

/// A Linux bridge inside a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bridge {
    /// The namespace.
    pub ns: String,
    /// Interface name (≤ 15 chars).
    pub name: String,
    /// Address of the bridge itself, if it has one (a router's LAN side).
    pub addr: Option<IfAddr>,
}

/// One end of a veth pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethEnd {
    /// The namespace this end lives in.
    pub ns: String,
    /// Interface name in that namespace (≤ 15 chars).
    pub name: String,
    /// Address, if any.
    pub addr: Option<IfAddr>,
    /// Bridge (in the same namespace) this end is enslaved to, if any.
    pub master: Option<String>,
}

/// A veth pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Veth {
    /// One end.
    pub a: VethEnd,
    /// The other end.
    pub b: VethEnd,
}

/// A route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The namespace.
    pub ns: String,
    /// Destination network; `None` is the default route.
    pub dest: Option<IfAddr>,
    /// Next hop.
    pub via: Ipv4Addr,
}

/// A sysctl to set inside a namespace (e.g. `net.ipv4.ip_forward = 1`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sysctl {
    /// The namespace.
    pub ns: String,
    /// Dotted key, e.g. `net.netfilter.nf_conntrack_udp_timeout`.
    pub key: String,
    /// Value as written to /proc/sys.
    pub value: String,
}

/// A complete `nft -f` input for one namespace. Applying it twice gives the same rules:
/// the text declares its tables and flushes them before adding rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    /// The namespace.
    pub ns: String,
    /// The ruleset text, rendered from a template in `netns-scripts/`.
    pub text: String,
}

/// NAT behaviour of a site, in the scenario file's spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatKind {
    /// No NAT: hosts sit on the internet with public addresses.
    None,
    /// EIM + EIF.
    FullCone,
    /// EIM + ADF.
    RestrictedCone,
    /// EIM + APDF.
    PortRestrictedCone,
    /// EDM + APDF.
    Symmetric,
}

impl NatKind {
    /// The scenario's spelling: `none`, `full-cone`, `restricted-cone`,
    /// `port-restricted-cone`, `symmetric`.
    pub fn name(self) -> &'static str {
        match self {
            NatKind::None => "none",
            NatKind::FullCone => "full-cone",
            NatKind::RestrictedCone => "restricted-cone",
            NatKind::PortRestrictedCone => "port-restricted-cone",
            NatKind::Symmetric => "symmetric",
        }
    }

    /// The inverse of [`NatKind::name`].
    pub fn parse(s: &str) -> Option<NatKind> {
        [
            NatKind::None,
            NatKind::FullCone,
            NatKind::RestrictedCone,
            NatKind::PortRestrictedCone,
            NatKind::Symmetric,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

/// One site as planned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SitePlan {
    /// Site name from the scenario.
    pub name: String,
    /// The NAT its hosts sit behind (for CGNAT: the inner home NAT's kind).
    pub nat: NatKind,
    /// True when a carrier-grade NAT (endpoint-dependent, like `symmetric`) sits in front of
    /// the home NAT.
    pub cgnat: bool,
    /// Router namespaces, outermost first (empty for `none`).
    pub routers: Vec<String>,
    /// The site's public address on the emulated internet (the outer router's WAN), if NATed.
    pub public_ip: Option<Ipv4Addr>,
    /// The LAN subnet its hosts are on.
    pub lan: IfAddr,
    /// Whether the router hairpins (LAN host to the site's own public address).
    pub hairpin: bool,
    /// The site's labels from the scenario, for fault selectors. Omitted from JSON when
    /// empty, so older plans and state files read the same.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl SitePlan {
    /// The site's NAT as a scenario names it: [`CGNAT`] for a carrier site, else its kind.
    pub fn nat_label(&self) -> &'static str {
        if self.cgnat { CGNAT } else { self.nat.name() }
    }
}

/// How an agent runs (see [`crate::runtime`]).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// A plain process inside its host namespace.
    #[default]
    Process,
    /// A Docker container whose network namespace takes the place of the host namespace.
    Docker,
}

impl RuntimeKind {
    /// `process` or `docker`.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Process => "process",
            RuntimeKind::Docker => "docker",
        }
    }

    /// True for [`RuntimeKind::Process`] (the default, left out of serialized plans so
    /// process-only plans read as before).
    pub fn is_process(&self) -> bool {
        *self == RuntimeKind::Process
    }
}

/// One agent as planned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPlan {
    /// Unique name, e.g. `home1-2` (agent 2 of site `home1`) or `seed-0`.
    pub name: String,
    /// The site it belongs to (`internet` for public seeds).
    pub site: String,
    /// Its host namespace.
    pub ns: String,
    /// Its address on its LAN (public for seeds and `none` sites).
    pub lan_ip: Ipv4Addr,
    /// UDP port of its P2P socket.
    pub port: u16,
    /// Whether it is a public seed.
    pub seed: bool,
    /// Hex NodeId derived from `key_seed`.
    pub node_id: String,
    /// The 32-byte Ed25519 secret, derived from the run seed: written to `node.key` (as 64
    /// hex chars) before the agent starts, so node ids are known at plan time.
    pub key_seed_hex: String,
    /// Data directory, relative to the run directory.
    pub data_dir: PathBuf,
    /// Unix socket of its control API, relative to the run directory. The API is reachable
    /// from the root namespace through the file system only, never through the lab network.
    pub api_socket: PathBuf,
    /// Arguments after `chaosnet-agent` (starting with `run`). Paths in them are relative to
    /// the run directory, where the runtime starts the agent.
    pub args: Vec<String>,
    /// How it runs. Omitted from JSON when `process`, so older plans and state files read
    /// the same.
    #[serde(default, skip_serializing_if = "RuntimeKind::is_process")]
    pub runtime: RuntimeKind,
}

/// Everything one run creates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The run id.
    pub run_id: RunId,
    /// Namespaces, in creation order (internet first, then routers outermost first, then hosts).
    pub namespaces: Vec<Namespace>,
    /// Bridges.
    pub bridges: Vec<Bridge>,
    /// Veth pairs.
    pub veths: Vec<Veth>,
    /// Routes.
    pub routes: Vec<Route>,
    /// Sysctls (forwarding, rp_filter, conntrack timeouts).
    pub sysctls: Vec<Sysctl>,
    /// nftables rulesets.
    pub rulesets: Vec<Ruleset>,
    /// Sites.
    pub sites: Vec<SitePlan>,
    /// Agents, seeds first.
    pub agents: Vec<AgentPlan>,
}

impl Plan {
    /// The agent named `name`.
    pub fn agent(&self, name: &str) -> Option<&AgentPlan> {
        self.agents.iter().find(|a| a.name == name)
    }

    /// The site named `name` (none for the seeds' [`SEED_SITE`]).
    pub fn site(&self, name: &str) -> Option<&SitePlan> {
        self.sites.iter().find(|s| s.name == name)
    }

    /// The NAT label of `agent`'s site ([`SitePlan::nat_label`]; `none` for seeds).
    pub fn nat_label_of(&self, agent: &AgentPlan) -> &'static str {
        self.site(&agent.site)
            .map_or(NatKind::None.name(), SitePlan::nat_label)
    }

    /// The namespace named `ns`.
    pub fn namespace(&self, ns: &str) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.name == ns)
    }
}
