//! The scenario file (YAML): what a chaosnet run builds, parsed and validated.
//!
//! What it does: parses a scenario with `serde-saphyr` (the only module that knows the YAML
//! crate, so the choice can change), rejects unknown fields, validates every value, and
//! reports each problem as `file:line:col: message`, naming the valid choices where there
//! is a fixed set. Positions come from the parser for syntax and type errors, and from
//! `serde_saphyr::Spanned` values (the position of the offending value) for semantic ones.
//! It also implements `--agents N` ([`Scenario::scale_agents`]).
//!
//! What it does not do: touch the system (apart from [`Scenario::load`] reading the file
//! and checking that the network key file exists), decide addresses or names (that is the
//! planner's job). The `chaos:` section's own schema lives in `crate::chaos::spec`.
//!
//! # Schema
//!
//! ```yaml
//! name: default            # run label; default "chaosnet"; [A-Za-z0-9._-]{1,64}
//! seed: 42                 # run seed (u64); default 0. Node keys and agent rng seeds
//!                          # derive from it and the agent's name
//! network: mainnet         # mainnet | testnet | private:<name>; default mainnet
//! network_key_file: null   # path of the 64-hex-char network key; required for private,
//!                          # refused otherwise; relative paths are relative to the file
//! seeds: 3                 # public seed agents on the emulated internet; default 3, 1..=245
//! agent:                   # settings of every agent (each field optional)
//!   task_rate: 1.0         # autonomous tasks per second, Poisson; default 1.0, 0..=1000
//!   task_weights: {ping: 4, lookup: 3, connect: 2, echo: 1}   # relative weights;
//!                          # defaults 4/3/2/1, each 0..=1000000
//!   bucket_refresh_ms: 60000  # mean idle-bucket refresh period, ms; default 3600000
//!   gc_interval_ms: 10000  # node-graph GC period, ms; default 30000
//! conntrack: home          # default for sites: home | corporate | cloud, or explicit
//!                          # seconds {udp_s, udp_stream_s, tcp_established_s}; default home
//! runtime: process         # how agents run: process | docker | auto; default process.
//!                          # docker: a container per agent (image chaosnet-agent:<version>,
//!                          # `make image`); auto: docker when the engine answers and the
//!                          # image exists or can be built, else process. Either one choice
//!                          # for every agent, or {seeds: <choice>, sites: <choice>} (each
//!                          # optional, default process) for mixed runs. `chaosnet up
//!                          # --runtime` overrides the whole field and every site's.
//! sites:                   # at least 1, at most 250
//!   - name: open1          # [a-z0-9-]{1,12}, unique; not "seed" or "internet"
//!     nat: none            # none | full-cone | restricted-cone | port-restricted-cone |
//!                          # symmetric | cgnat (required)
//!     agents: 3            # hosts on this LAN, each runs one agent; default 1, 1..=245
//!   - name: carrier1
//!     nat: cgnat
//!     inner: port-restricted-cone  # cgnat only: the home NAT behind the carrier NAT;
//!                          # full-cone | restricted-cone | port-restricted-cone | symmetric;
//!                          # default port-restricted-cone
//!     agents: 2
//!     conntrack: corporate # this site's preset; default: the top-level `conntrack`
//!     hairpin: false       # LAN hosts reach each other through the public address;
//!                          # default false; not for `none`
//!     runtime: docker      # this site's agents: process | docker | auto; default: the
//!                          # top-level `runtime` (its `sites` choice)
//!     labels: {tier: edge} # free-form key/value labels for fault selectors; default none
//! chaos: {...}             # faults, probes and SLOs of `chaosnet run`: see
//!                          # `crate::chaos::spec` (validated here, with line:col errors)
//! ```
//!
//! Conntrack presets (seconds, `nf_conntrack_udp_timeout` / `_udp_timeout_stream` /
//! `_tcp_timeout_established`): home 30/300/7200 and corporate 30/120/3600 (as in
//! n0-computer/patchbay); cloud 60/180/86400 (chaosnet's own choice, not a measurement: a
//! cloud NAT gateway keeps idle UDP a little longer than a home router and keeps idle TCP
//! for a day, so long-lived connections survive; patchbay's CloudNat uses 30/350/3600).
//! In total at most 1000 agents (seeds included).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::plan::{NatKind, RuntimeKind};

/// Most sites in a scenario (site numbers become one octet of their addresses).
pub const MAX_SITES: usize = 250;
/// Most hosts on one LAN: a /24 with the router at .1, .2–.9 reserved (probes), hosts at
/// .10–.254.
pub const MAX_HOSTS_PER_LAN: usize = 245;
/// Most agents in a run, seeds included.
pub const MAX_TOTAL_AGENTS: usize = 1000;
/// Most bytes read from a scenario file.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Longest site name (it goes into namespace, agent and interface names).
pub const MAX_SITE_NAME_LEN: usize = 12;
/// Longest private network name (the agent's own limit).
pub const MAX_NETWORK_NAME_LEN: usize = 32;
/// Site names that would clash with names the planner uses.
pub const RESERVED_SITE_NAMES: [&str; 2] = ["seed", "internet"];

/// The NAT type names a site's `nat` accepts, in the scenario's spelling.
pub const NAT_CHOICES: &str =
    "none, full-cone, restricted-cone, port-restricted-cone, symmetric, cgnat";
/// The NAT type names a cgnat site's `inner` accepts.
pub const INNER_CHOICES: &str = "full-cone, restricted-cone, port-restricted-cone, symmetric";
/// The runtime choices.
pub const RUNTIME_CHOICES: &str =
    "process, docker, auto, or a mapping {seeds: <choice>, sites: <choice>}";
/// The conntrack choices.
pub const CONNTRACK_CHOICES: &str =
    "home, corporate, cloud, or a mapping {udp_s, udp_stream_s, tcp_established_s}";

// ---------------------------------------------------------------------------------------------
// The validated scenario
// ---------------------------------------------------------------------------------------------

/// A validated scenario. Build it with [`Scenario::from_str`], [`Scenario::load`] or
/// [`Scenario::default_scenario`]; every field then satisfies the limits documented in the
/// module docs (the planner checks the ones it relies on again).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scenario {
    /// Run label.
    pub name: String,
    /// Run seed: node keys and agent rng seeds derive from it and the agent's name.
    pub seed: u64,
    /// The network every agent joins.
    pub network: Network,
    /// Key file of a private network (`Some` exactly when the network is private). Kept as
    /// written by [`Scenario::from_str`]; made absolute by [`Scenario::load`].
    pub network_key_file: Option<PathBuf>,
    /// Number of public seed agents on the emulated internet.
    pub seeds: usize,
    /// Settings of every agent.
    pub agent: AgentSettings,
    /// The default conntrack timeouts of sites that set none.
    pub conntrack: Conntrack,
    /// The sites, in file order.
    pub sites: Vec<Site>,
    /// Faults, probes and SLOs of `chaosnet run` (empty when the file has no `chaos:`).
    pub chaos: crate::chaos::spec::ChaosSpec,
    /// How the public seeds run.
    pub seed_runtime: RuntimeChoice,
}

/// How agents should run, as the scenario or `--runtime` says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeChoice {
    /// Docker when the engine answers and the image exists or can be built, else process.
    Auto,
    /// Processes in their namespaces.
    #[default]
    Process,
    /// Docker containers.
    Docker,
}

impl RuntimeChoice {
    /// The concrete runtime; `auto` that was never resolved counts as `process`.
    pub fn resolved(self) -> RuntimeKind {
        match self {
            RuntimeChoice::Docker => RuntimeKind::Docker,
            RuntimeChoice::Auto | RuntimeChoice::Process => RuntimeKind::Process,
        }
    }
}

impl From<RuntimeKind> for RuntimeChoice {
    fn from(k: RuntimeKind) -> Self {
        match k {
            RuntimeKind::Process => RuntimeChoice::Process,
            RuntimeKind::Docker => RuntimeChoice::Docker,
        }
    }
}

impl std::str::FromStr for RuntimeChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(RuntimeChoice::Auto),
            "process" => Ok(RuntimeChoice::Process),
            "docker" => Ok(RuntimeChoice::Docker),
            other => Err(format!(
                "unknown runtime `{}`, expected one of process, docker, auto",
                bounded(other)
            )),
        }
    }
}

/// The top-level `runtime` field: one choice for all, or one for seeds and one for sites.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct RuntimeField {
    seeds: RuntimeChoice,
    sites: RuntimeChoice,
}

impl<'de> Deserialize<'de> for RuntimeField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Split {
            #[serde(default)]
            seeds: RuntimeChoice,
            #[serde(default)]
            sites: RuntimeChoice,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RuntimeField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{RUNTIME_CHOICES}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RuntimeField, E> {
                let c: RuntimeChoice = v.parse().map_err(E::custom)?;
                Ok(RuntimeField { seeds: c, sites: c })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RuntimeField, A::Error> {
                Split::deserialize(de::value::MapAccessDeserializer::new(map)).map(|s| {
                    RuntimeField {
                        seeds: s.seeds,
                        sites: s.sites,
                    }
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// The network agents join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network {
    /// `mainnet`.
    Mainnet,
    /// `testnet`.
    Testnet,
    /// `private:<name>`, with a pre-shared key file.
    Private(String),
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Network::Mainnet => f.write_str("mainnet"),
            Network::Testnet => f.write_str("testnet"),
            Network::Private(name) => write!(f, "private:{name}"),
        }
    }
}

impl Serialize for Network {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Settings given to every agent (as `chaosnet-agent run` flags).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentSettings {
    /// Autonomous tasks per second (`--task-rate`); 0 disables the loop.
    pub task_rate: f64,
    /// Task weights (`--task-weights`).
    pub task_weights: TaskWeights,
    /// Mean idle-bucket refresh period in milliseconds (`--bucket-refresh-ms`).
    pub bucket_refresh_ms: u64,
    /// Node-graph GC period in milliseconds (`--gc-interval-ms`).
    pub gc_interval_ms: u64,
    /// Where agents export their spans over OTLP/HTTP (`--otlp-endpoint`), e.g.
    /// `http://198.18.0.1:4318/v1/traces`. Agents live inside the lab, so it must be an
    /// address of the emulated internet (198.18.0.0/15): typically a collector run in the
    /// internet namespace, which holds 198.18.0.1. Default: none, no export.
    pub otlp_endpoint: Option<String>,
    /// Local discovery (`--mdns`): agents on one LAN find each other with mDNS, without
    /// any seed. Default true in labs (the agent's own default is off).
    pub mdns: bool,
}

impl Default for AgentSettings {
    /// The agent's own defaults.
    fn default() -> Self {
        AgentSettings {
            task_rate: 1.0,
            task_weights: TaskWeights::default(),
            bucket_refresh_ms: 3_600_000,
            gc_interval_ms: 30_000,
            otlp_endpoint: None,
            mdns: true,
        }
    }
}

/// Relative weights of the agent's task kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskWeights {
    /// Ping a known node. Default 4.
    pub ping: u32,
    /// Look up a random id. Default 3.
    pub lookup: u32,
    /// Connect to a known node any way possible. Default 2.
    pub connect: u32,
    /// Echo a payload. Default 1.
    pub echo: u32,
    /// Claim a known node (cross-signed node claims). Default 1.
    pub claim: u32,
}

impl Default for TaskWeights {
    fn default() -> Self {
        TaskWeights {
            ping: 4,
            lookup: 3,
            connect: 2,
            echo: 1,
            claim: 1,
        }
    }
}

impl TaskWeights {
    /// The `--task-weights` value: `ping,lookup,connect,echo,claim`.
    pub fn to_arg(&self) -> String {
        format!(
            "{},{},{},{},{}",
            self.ping, self.lookup, self.connect, self.echo, self.claim
        )
    }
}

/// Conntrack timeouts of a NAT router, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackTimeouts {
    /// `net.netfilter.nf_conntrack_udp_timeout`: UDP flows that saw traffic one way only.
    pub udp_s: u32,
    /// `net.netfilter.nf_conntrack_udp_timeout_stream`: UDP flows that saw replies.
    pub udp_stream_s: u32,
    /// `net.netfilter.nf_conntrack_tcp_timeout_established`.
    pub tcp_established_s: u32,
}

/// Largest timeout accepted, in seconds (the kernel stores them as jiffies in an int).
pub const MAX_TIMEOUT_S: u32 = 1_000_000;

impl ConntrackTimeouts {
    /// Home router: 30 / 300 / 7200 s.
    pub const HOME: ConntrackTimeouts = ConntrackTimeouts {
        udp_s: 30,
        udp_stream_s: 300,
        tcp_established_s: 7200,
    };
    /// Corporate firewall: 30 / 120 / 3600 s.
    pub const CORPORATE: ConntrackTimeouts = ConntrackTimeouts {
        udp_s: 30,
        udp_stream_s: 120,
        tcp_established_s: 3600,
    };
    /// Cloud NAT gateway: 60 / 180 / 86400 s (chaosnet's choice; see the module docs).
    pub const CLOUD: ConntrackTimeouts = ConntrackTimeouts {
        udp_s: 60,
        udp_stream_s: 180,
        tcp_established_s: 86_400,
    };
}

/// A named conntrack preset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConntrackPreset {
    /// [`ConntrackTimeouts::HOME`].
    Home,
    /// [`ConntrackTimeouts::CORPORATE`].
    Corporate,
    /// [`ConntrackTimeouts::CLOUD`].
    Cloud,
}

/// A site's conntrack setting: a preset or explicit seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Conntrack {
    /// A named preset.
    Preset(ConntrackPreset),
    /// Explicit timeouts.
    Custom(ConntrackTimeouts),
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack::Preset(ConntrackPreset::Home)
    }
}

impl Conntrack {
    /// The timeouts in seconds.
    pub fn timeouts(&self) -> ConntrackTimeouts {
        match self {
            Conntrack::Preset(ConntrackPreset::Home) => ConntrackTimeouts::HOME,
            Conntrack::Preset(ConntrackPreset::Corporate) => ConntrackTimeouts::CORPORATE,
            Conntrack::Preset(ConntrackPreset::Cloud) => ConntrackTimeouts::CLOUD,
            Conntrack::Custom(t) => *t,
        }
    }
}

impl<'de> Deserialize<'de> for Conntrack {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Conntrack;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{CONNTRACK_CHOICES}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Conntrack, E> {
                match v {
                    "home" => Ok(Conntrack::Preset(ConntrackPreset::Home)),
                    "corporate" => Ok(Conntrack::Preset(ConntrackPreset::Corporate)),
                    "cloud" => Ok(Conntrack::Preset(ConntrackPreset::Cloud)),
                    other => Err(E::custom(format_args!(
                        "unknown conntrack preset `{}`, expected one of {CONNTRACK_CHOICES}",
                        bounded(other)
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Conntrack, A::Error> {
                ConntrackTimeouts::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(Conntrack::Custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// One validated site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Site {
    /// Unique name, `[a-z0-9-]{1,12}`.
    pub name: String,
    /// The NAT its hosts sit behind; for a cgnat site, the inner (home) NAT.
    pub nat: NatKind,
    /// A carrier-grade NAT sits in front of `nat`.
    pub cgnat: bool,
    /// Number of hosts (one agent each), 1..=[`MAX_HOSTS_PER_LAN`].
    pub agents: usize,
    /// Conntrack timeouts of the site's routers (the scenario default if the site sets none).
    pub conntrack: Conntrack,
    /// Whether the site's (home) router hairpins.
    pub hairpin: bool,
    /// How the site's agents run.
    pub runtime: RuntimeChoice,
    /// Free-form labels, for fault selectors (`select: {label: "k=v"}`).
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Site {
    /// The site's type as written in a scenario (`cgnat` for carrier sites).
    pub fn nat_label(&self) -> &'static str {
        if self.cgnat {
            "cgnat"
        } else {
            nat_name(self.nat)
        }
    }
}

/// The scenario spelling of a NAT kind.
pub fn nat_name(kind: NatKind) -> &'static str {
    match kind {
        NatKind::None => "none",
        NatKind::FullCone => "full-cone",
        NatKind::RestrictedCone => "restricted-cone",
        NatKind::PortRestrictedCone => "port-restricted-cone",
        NatKind::Symmetric => "symmetric",
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A 1-based line and column (in characters) in the scenario file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

impl Pos {
    fn of(loc: serde_saphyr::Location) -> Option<Pos> {
        (loc.line() > 0).then(|| Pos {
            line: loc.line(),
            column: loc.column().max(1),
        })
    }
}

/// Where an error is: `file:line:col`, or `file` alone when the parser gave no position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The file name as given (or `<default>` for the built-in scenario).
    pub file: String,
    /// The position, when known.
    pub pos: Option<Pos>,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(f, "{}:{}:{}", self.file, p.line, p.column),
            None => f.write_str(&self.file),
        }
    }
}

/// Why a scenario was rejected. Display gives `file:line:col: message`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{file}: cannot read the scenario: {source}")]
    Read {
        /// The file.
        file: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("{file}: the scenario is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge {
        /// The file.
        file: String,
    },
    /// Not YAML, or YAML that does not fit the schema (unknown field or NAT type, wrong
    /// type of value, missing field...), as reported by the YAML parser.
    #[error("{at}: {message}")]
    Parse {
        /// Where.
        at: Source,
        /// The parser's message, without its position.
        message: String,
    },
    /// Valid YAML with a value the scenario does not allow.
    #[error("{at}: {problem}")]
    Invalid {
        /// Where: the offending value.
        at: Source,
        /// What is wrong.
        problem: Problem,
    },
}

impl ScenarioError {
    /// The position of the error, when known.
    pub fn pos(&self) -> Option<Pos> {
        match self {
            ScenarioError::Parse { at, .. } | ScenarioError::Invalid { at, .. } => at.pos,
            _ => None,
        }
    }
}

/// A semantic problem in a scenario.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// `name` is not `[A-Za-z0-9._-]{1,64}`.
    #[error("scenario name {0:?} must be 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    BadScenarioName(String),
    /// `network` is not one of the choices.
    #[error(
        "unknown network {0:?}, expected one of mainnet, testnet, private:<name> \
         (name: 1 to {MAX_NETWORK_NAME_LEN} characters of a-z 0-9 -)"
    )]
    BadNetwork(String),
    /// A private network without `network_key_file`.
    #[error("network {0} is private: set network_key_file to its key file")]
    PrivateWithoutKey(String),
    /// `network_key_file` on a public network.
    #[error("network_key_file is only for private:<name> networks, not {0}")]
    KeyWithoutPrivate(String),
    /// `network_key_file` cannot be read (only checked by [`Scenario::load`]).
    #[error("network_key_file {path}: {reason}")]
    KeyFileUnreadable {
        /// The resolved path.
        path: String,
        /// The error.
        reason: String,
    },
    /// `seeds` out of range.
    #[error("seeds must be 1 to {MAX_HOSTS_PER_LAN}, not {0}")]
    BadSeeds(u64),
    /// `agent.otlp_endpoint` is not an http URL on the emulated internet.
    #[error(
        "agent.otlp_endpoint {0:?} must be http://<ip>:<port>/<path> with the ip in \
         198.18.0.0/15: agents run inside the lab and reach only its addresses (run a \
         collector in the internet namespace, which holds 198.18.0.1)"
    )]
    BadOtlpEndpoint(String),
    /// `agent.task_rate` out of range.
    #[error("agent.task_rate must be a number from 0 to 1000 (tasks per second), not {0}")]
    BadTaskRate(f64),
    /// A task weight above 1,000,000, or all weights zero while tasks run.
    #[error(
        "agent.task_weights: each weight must be at most 1000000 and at least one must be \
         above 0 while task_rate is above 0"
    )]
    BadTaskWeights,
    /// A period out of range.
    #[error("agent.{field} must be 100 to 86400000 milliseconds, not {value}")]
    BadPeriod {
        /// The field.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// A conntrack timeout out of range.
    #[error("conntrack timeouts must be 1 to {MAX_TIMEOUT_S} seconds, not {0}")]
    BadTimeout(u32),
    /// No sites.
    #[error("sites must list at least one site")]
    NoSites,
    /// Too many sites.
    #[error("{0} sites, more than the limit of {MAX_SITES}")]
    TooManySites(usize),
    /// A site name is malformed.
    #[error("site name {0:?} must be 1 to {MAX_SITE_NAME_LEN} characters of a-z 0-9 -")]
    BadSiteName(String),
    /// A site name is reserved.
    #[error("site name {0:?} is reserved (it names the seeds or the internet)")]
    ReservedSiteName(String),
    /// Two sites share a name.
    #[error("duplicate site name {name:?} (first used on line {first_line})")]
    DuplicateSite {
        /// The name.
        name: String,
        /// Line of its first use.
        first_line: u64,
    },
    /// `inner` on a site that is not cgnat.
    #[error("`inner` is only for `nat: cgnat` sites; this site's nat is {0}")]
    InnerWithoutCgnat(&'static str),
    /// `inner` is not a home NAT type.
    #[error("inner NAT {0} cannot sit behind a carrier NAT, expected one of {INNER_CHOICES}")]
    BadInner(&'static str),
    /// `hairpin` on a site without a router.
    #[error("hairpin needs a NAT router; site {0:?} has nat: none")]
    HairpinWithoutNat(String),
    /// A site with no agents.
    #[error("site {0:?} has agents: 0; every site needs at least 1 agent")]
    NoAgents(String),
    /// More agents than a LAN holds.
    #[error(
        "site {site:?} has {agents} agents, more than a LAN holds ({MAX_HOSTS_PER_LAN} hosts: \
         a /24 with hosts at .10 to .254)"
    )]
    LanFull {
        /// The site.
        site: String,
        /// Its agents.
        agents: u64,
    },
    /// Too many agents in total.
    #[error(
        "{total} agents in total ({seeds} seeds + {sites} in sites), more than the limit of \
         {MAX_TOTAL_AGENTS}"
    )]
    TooManyAgents {
        /// All agents.
        total: u64,
        /// Seeds.
        seeds: u64,
        /// Site agents.
        sites: u64,
    },
    /// A problem in the `chaos:` section (faults, probes, SLOs).
    #[error("{0}")]
    Chaos(String),
    /// A site label is malformed.
    #[error("site labels: keys and values must be 1 to 64 characters of A-Z a-z 0-9 . _ - /")]
    BadLabel,
}

/// Why `--agents N` could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScaleError {
    /// Fewer agents than sites.
    #[error(
        "--agents {requested} is fewer than the {sites} sites; every site keeps at least one agent"
    )]
    TooFew {
        /// N.
        requested: usize,
        /// Number of sites.
        sites: usize,
    },
    /// Scaling would put more agents on a LAN than it holds.
    #[error(
        "--agents {requested} would put {agents} agents on site {site:?}, more than a LAN \
         holds ({MAX_HOSTS_PER_LAN})"
    )]
    LanFull {
        /// N.
        requested: usize,
        /// The site.
        site: String,
        /// Its share.
        agents: usize,
    },
    /// Too many agents in total.
    #[error("--agents {requested} plus {seeds} seeds is more than the limit of {MAX_TOTAL_AGENTS}")]
    TooMany {
        /// N.
        requested: usize,
        /// Seeds.
        seeds: usize,
    },
}

// ---------------------------------------------------------------------------------------------
// Raw (as written) form
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    name: Option<Spanned<String>>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    network: Option<Spanned<String>>,
    #[serde(default)]
    network_key_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    seeds: Option<Spanned<u64>>,
    #[serde(default)]
    agent: Option<RawAgent>,
    #[serde(default)]
    conntrack: Option<Spanned<Conntrack>>,
    #[serde(default)]
    runtime: Option<RuntimeField>,
    sites: Spanned<Vec<RawSite>>,
    #[serde(default)]
    chaos: Option<crate::chaos::spec::RawChaos>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    #[serde(default)]
    task_rate: Option<Spanned<f64>>,
    #[serde(default)]
    task_weights: Option<Spanned<TaskWeights>>,
    #[serde(default)]
    bucket_refresh_ms: Option<Spanned<u64>>,
    #[serde(default)]
    gc_interval_ms: Option<Spanned<u64>>,
    #[serde(default)]
    otlp_endpoint: Option<Spanned<String>>,
    #[serde(default)]
    mdns: Option<Spanned<bool>>,
}

/// A site's `nat` as written: the five kinds plus `cgnat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawNat {
    None,
    FullCone,
    RestrictedCone,
    PortRestrictedCone,
    Symmetric,
    Cgnat,
}

impl RawNat {
    fn name(self) -> &'static str {
        match self.kind() {
            Some(k) => nat_name(k),
            None => "cgnat",
        }
    }

    fn kind(self) -> Option<NatKind> {
        Some(match self {
            RawNat::None => NatKind::None,
            RawNat::FullCone => NatKind::FullCone,
            RawNat::RestrictedCone => NatKind::RestrictedCone,
            RawNat::PortRestrictedCone => NatKind::PortRestrictedCone,
            RawNat::Symmetric => NatKind::Symmetric,
            RawNat::Cgnat => return None,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    name: Spanned<String>,
    nat: Spanned<RawNat>,
    #[serde(default)]
    inner: Option<Spanned<RawNat>>,
    #[serde(default)]
    agents: Option<Spanned<u64>>,
    #[serde(default)]
    conntrack: Option<Spanned<Conntrack>>,
    #[serde(default)]
    hairpin: Option<Spanned<bool>>,
    #[serde(default)]
    runtime: Option<RuntimeChoice>,
    labels: Option<Spanned<std::collections::BTreeMap<String, String>>>,
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation
// ---------------------------------------------------------------------------------------------

/// File name used for the built-in default scenario in messages.
pub const DEFAULT_FILE_NAME: &str = "<default>";

/// The text of `scenarios/default.yaml`, compiled in.
pub const DEFAULT_SCENARIO_YAML: &str = include_str!("../../scenarios/default.yaml");

impl Scenario {
    /// Parses and validates a scenario. `file_name` only labels error messages. A relative
    /// `network_key_file` is kept as written (see [`Scenario::load`]).
    #[allow(clippy::should_implement_trait)] // takes a file name too; not FromStr
    pub fn from_str(text: &str, file_name: &str) -> Result<Scenario, ScenarioError> {
        let raw: RawScenario =
            serde_saphyr::from_str(text).map_err(|e| parse_error(&e, file_name))?;
        Validator { file: file_name }.scenario(raw)
    }

    /// Reads, parses and validates a scenario file. A relative `network_key_file` is
    /// resolved against the scenario file's directory (made absolute with the current
    /// directory if needed) and must be a readable file. Nothing is created.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        use std::io::Read;
        let file = path.display().to_string();
        let read_err = |source| ScenarioError::Read {
            file: file.clone(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read_err)?
            .take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(ScenarioError::TooLarge { file });
        }
        let mut scenario = Scenario::from_str(&text, &file)?;
        if let Some(key) = scenario.network_key_file.take() {
            let resolved = resolve_relative(path, &key);
            if let Err(e) = std::fs::metadata(&resolved).and_then(|m| {
                if m.is_file() {
                    Ok(())
                } else {
                    Err(std::io::Error::other("not a regular file"))
                }
            }) {
                return Err(ScenarioError::Invalid {
                    at: Source {
                        file,
                        pos: key_file_pos(&text),
                    },
                    problem: Problem::KeyFileUnreadable {
                        path: resolved.display().to_string(),
                        reason: e.to_string(),
                    },
                });
            }
            scenario.network_key_file = Some(resolved);
        }
        Ok(scenario)
    }

    /// The built-in default scenario (`scenarios/default.yaml`).
    pub fn default_scenario() -> Scenario {
        match Scenario::from_str(DEFAULT_SCENARIO_YAML, DEFAULT_FILE_NAME) {
            Ok(s) => s,
            // The file is compiled in and a unit test parses it, so this cannot happen in
            // a build whose tests pass.
            Err(e) => panic!("the built-in default scenario is invalid: {e}"),
        }
    }

    /// Sets how every agent runs (`chaosnet up --runtime`), replacing the file's choices.
    pub fn set_runtime(&mut self, choice: RuntimeChoice) {
        self.seed_runtime = choice;
        for s in &mut self.sites {
            s.runtime = choice;
        }
    }

    /// True when some agent's runtime is `choice`.
    pub fn uses_runtime(&self, choice: RuntimeChoice) -> bool {
        self.seed_runtime == choice || self.sites.iter().any(|s| s.runtime == choice)
    }

    /// Replaces every `auto` with `kind` (what the CLI found `auto` to mean here).
    pub fn resolve_auto(&mut self, kind: RuntimeKind) {
        let fix = |c: &mut RuntimeChoice| {
            if *c == RuntimeChoice::Auto {
                *c = kind.into();
            }
        };
        fix(&mut self.seed_runtime);
        for s in &mut self.sites {
            fix(&mut s.runtime);
        }
    }

    /// Number of agents on sites (seeds not included).
    pub fn site_agents(&self) -> usize {
        self.sites.iter().map(|s| s.agents).sum()
    }

    /// Number of agents in the run, seeds included.
    pub fn total_agents(&self) -> usize {
        self.seeds + self.site_agents()
    }

    /// Implements `--agents N`: sets the number of site agents (NATed and open; seeds are
    /// unchanged) to `total_non_seed`, distributed in proportion to the current counts by
    /// largest remainder (ties go to the earlier site), then topped up so every site keeps at
    /// least one agent (taken from the largest site, earlier site first). Deterministic;
    /// with N equal to the current total it changes nothing. On error nothing changes.
    pub fn scale_agents(&mut self, total_non_seed: usize) -> Result<(), ScaleError> {
        let n = total_non_seed;
        let k = self.sites.len();
        if n < k {
            return Err(ScaleError::TooFew {
                requested: n,
                sites: k,
            });
        }
        if n.saturating_add(self.seeds) > MAX_TOTAL_AGENTS {
            return Err(ScaleError::TooMany {
                requested: n,
                seeds: self.seeds,
            });
        }
        let counts: Vec<usize> = self.sites.iter().map(|s| s.agents.max(1)).collect();
        let current: usize = counts.iter().sum();
        // n <= 1000 and counts <= 245 each, so n * c fits easily in usize.
        let mut shares: Vec<usize> = counts.iter().map(|c| n * c / current).collect();
        let mut order: Vec<usize> = (0..k).collect();
        // Largest remainder first; the sort is stable, so ties keep site order.
        order.sort_by_key(|&i| std::cmp::Reverse(n * counts[i] % current));
        let mut left = n - shares.iter().sum::<usize>();
        for &i in order.iter().cycle() {
            if left == 0 {
                break;
            }
            shares[i] += 1;
            left -= 1;
        }
        // Every site keeps one agent; n >= k guarantees a donor with at least 2.
        for i in 0..k {
            if shares[i] == 0 {
                let donor = (0..k)
                    .max_by_key(|&j| (shares[j], std::cmp::Reverse(j)))
                    .unwrap_or(0);
                shares[donor] -= 1;
                shares[i] = 1;
            }
        }
        if let Some((i, &agents)) = shares
            .iter()
            .enumerate()
            .find(|(_, a)| **a > MAX_HOSTS_PER_LAN)
        {
            return Err(ScaleError::LanFull {
                requested: n,
                site: self.sites[i].name.clone(),
                agents,
            });
        }
        for (site, agents) in self.sites.iter_mut().zip(shares) {
            site.agents = agents;
        }
        Ok(())
    }
}

/// `file:line:col: message` from a serde-saphyr error. The parser's plain message ends in
/// " at line L, column C", which is dropped since the position leads the message.
fn parse_error(e: &serde_saphyr::Error, file: &str) -> ScenarioError {
    let pos = e.location().and_then(Pos::of);
    let mut message = e.without_snippet().to_string();
    if let Some(p) = pos {
        let suffix = format!(" at line {}, column {}", p.line, p.column);
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_string();
        }
    }
    // Keep one line, and a bounded one: the message may quote the input.
    let message: String = message
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(400)
        .collect();
    ScenarioError::Parse {
        at: Source {
            file: file.to_string(),
            pos,
        },
        message,
    }
}

/// The first 64 characters of a user string, for messages.
/// Whether `url` is `http://<ip>:<port>[/path]` with the ip on the emulated internet.
fn lab_http_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (authority, _path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(addr) = authority.parse::<std::net::SocketAddrV4>() else {
        return false;
    };
    let o = addr.ip().octets();
    o[0] == 198 && (o[1] & 0xfe) == 18 && addr.port() != 0
}

fn bounded(s: &str) -> String {
    s.chars().take(64).collect()
}

fn resolve_relative(scenario_path: &Path, key: &Path) -> PathBuf {
    if key.is_absolute() {
        return key.to_path_buf();
    }
    let dir = scenario_path.parent().unwrap_or(Path::new(""));
    let joined = dir.join(key);
    if joined.is_absolute() {
        joined
    } else {
        // The agent runs in the run directory, so the path must not stay relative.
        std::env::current_dir()
            .map(|cwd| cwd.join(&joined))
            .unwrap_or(joined)
    }
}

/// The position of the `network_key_file` value, found again in the text (used by
/// `load`, after validation, when the `Spanned` values are gone).
fn key_file_pos(text: &str) -> Option<Pos> {
    text.lines().enumerate().find_map(|(i, line)| {
        let col = line.find("network_key_file:")?;
        (line[..col].trim().is_empty()).then(|| Pos {
            line: i as u64 + 1,
            column: col as u64 + 1,
        })
    })
}

struct Validator<'a> {
    file: &'a str,
}

impl Validator<'_> {
    fn chaos_err(&self, at: crate::chaos::spec::At, message: String) -> ScenarioError {
        ScenarioError::Invalid {
            at: Source {
                file: self.file.to_string(),
                pos: (at.line > 0).then_some(Pos {
                    line: at.line,
                    column: at.column,
                }),
            },
            problem: Problem::Chaos(message),
        }
    }

    fn err<T>(
        &self,
        loc: Option<serde_saphyr::Location>,
        problem: Problem,
    ) -> Result<T, ScenarioError> {
        Err(ScenarioError::Invalid {
            at: Source {
                file: self.file.to_string(),
                pos: loc.and_then(Pos::of),
            },
            problem,
        })
    }

    fn scenario(&self, raw: RawScenario) -> Result<Scenario, ScenarioError> {
        let name = match raw.name {
            Some(n) => {
                let ok = (1..=64).contains(&n.value.len())
                    && n.value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                if !ok {
                    return self.err(
                        Some(n.referenced),
                        Problem::BadScenarioName(bounded(&n.value)),
                    );
                }
                n.value
            }
            None => "chaosnet".to_string(),
        };

        let (network, network_loc) = match &raw.network {
            Some(n) => (self.network(n)?, Some(n.referenced)),
            None => (Network::Mainnet, None),
        };
        let network_key_file = match (&network, raw.network_key_file) {
            (Network::Private(_), Some(k)) => Some(k.value),
            (Network::Private(_), None) => {
                return self.err(network_loc, Problem::PrivateWithoutKey(network.to_string()));
            }
            (_, Some(k)) => {
                return self.err(
                    Some(k.referenced),
                    Problem::KeyWithoutPrivate(network.to_string()),
                );
            }
            (_, None) => None,
        };

        let seeds = match raw.seeds {
            Some(s) if s.value == 0 || s.value > MAX_HOSTS_PER_LAN as u64 => {
                return self.err(Some(s.referenced), Problem::BadSeeds(s.value));
            }
            Some(s) => s.value as usize,
            None => 3,
        };

        let agent = self.agent(raw.agent)?;
        let conntrack = match raw.conntrack {
            Some(c) => self.conntrack(&c)?,
            None => Conntrack::default(),
        };

        let sites_loc = raw.sites.referenced;
        if raw.sites.value.is_empty() {
            return self.err(Some(sites_loc), Problem::NoSites);
        }
        if raw.sites.value.len() > MAX_SITES {
            return self.err(
                Some(sites_loc),
                Problem::TooManySites(raw.sites.value.len()),
            );
        }
        let mut sites: Vec<Site> = Vec::with_capacity(raw.sites.value.len());
        let mut first_lines: Vec<u64> = Vec::with_capacity(raw.sites.value.len());
        let runtime = raw.runtime.unwrap_or_default();
        for rs in raw.sites.value {
            let mut site = self.site(rs, conntrack, &sites, &first_lines)?;
            if site.2 {
                site.0.runtime = runtime.sites;
            }
            first_lines.push(site.1);
            sites.push(site.0);
        }
        let site_agents: usize = sites.iter().map(|s| s.agents).sum();
        let total = site_agents + seeds;
        if total > MAX_TOTAL_AGENTS {
            return self.err(
                Some(sites_loc),
                Problem::TooManyAgents {
                    total: total as u64,
                    seeds: seeds as u64,
                    sites: site_agents as u64,
                },
            );
        }

        let seed = raw.seed.unwrap_or(0);
        let chaos = match raw.chaos {
            None => crate::chaos::spec::ChaosSpec::default(),
            Some(rc) => {
                let targets = crate::chaos::select::targets_of(seeds, &sites);
                let spec = crate::chaos::spec::validate(rc, &targets)
                    .map_err(|e| self.chaos_err(e.at, e.message))?;
                // Expanding the timeline with the scenario's seed finds contradictory
                // overlaps before anything starts (`run --seed` checks its own seed again).
                if let Err(e) = crate::chaos::schedule::timeline(&spec, &targets, seed) {
                    return Err(self.chaos_err(e.at, e.message));
                }
                spec
            }
        };

        Ok(Scenario {
            name,
            seed,
            network,
            network_key_file,
            seeds,
            agent,
            conntrack,
            sites,
            seed_runtime: runtime.seeds,
            chaos,
        })
    }

    fn network(&self, n: &Spanned<String>) -> Result<Network, ScenarioError> {
        let v = n.value.as_str();
        match v {
            "mainnet" => return Ok(Network::Mainnet),
            "testnet" => return Ok(Network::Testnet),
            _ => {}
        }
        if let Some(name) = v.strip_prefix("private:")
            && (1..=MAX_NETWORK_NAME_LEN).contains(&name.len())
            && name
                .chars()
                .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
        {
            return Ok(Network::Private(name.to_string()));
        }
        self.err(Some(n.referenced), Problem::BadNetwork(bounded(v)))
    }

    fn agent(&self, raw: Option<RawAgent>) -> Result<AgentSettings, ScenarioError> {
        let mut a = AgentSettings::default();
        let Some(raw) = raw else { return Ok(a) };
        if let Some(r) = raw.task_rate {
            if !(r.value.is_finite() && (0.0..=1000.0).contains(&r.value)) {
                return self.err(Some(r.referenced), Problem::BadTaskRate(r.value));
            }
            a.task_rate = r.value;
        }
        let mut weights_loc = None;
        if let Some(w) = raw.task_weights {
            weights_loc = Some(w.referenced);
            a.task_weights = w.value;
        }
        let w = a.task_weights;
        let ws = [w.ping, w.lookup, w.connect, w.echo];
        if ws.iter().any(|&x| x > 1_000_000) || (a.task_rate > 0.0 && ws.iter().all(|&x| x == 0)) {
            return self.err(weights_loc, Problem::BadTaskWeights);
        }
        for (field, value, slot) in [
            (
                "bucket_refresh_ms",
                raw.bucket_refresh_ms,
                &mut a.bucket_refresh_ms,
            ),
            ("gc_interval_ms", raw.gc_interval_ms, &mut a.gc_interval_ms),
        ] {
            if let Some(v) = value {
                if !(100..=86_400_000).contains(&v.value) {
                    return self.err(
                        Some(v.referenced),
                        Problem::BadPeriod {
                            field,
                            value: v.value,
                        },
                    );
                }
                *slot = v.value;
            }
        }
        if let Some(e) = raw.otlp_endpoint {
            if !lab_http_url(&e.value) {
                return self.err(
                    Some(e.referenced),
                    Problem::BadOtlpEndpoint(bounded(&e.value)),
                );
            }
            a.otlp_endpoint = Some(e.value);
        }
        if let Some(m) = raw.mdns {
            a.mdns = m.value;
        }
        Ok(a)
    }

    fn conntrack(&self, c: &Spanned<Conntrack>) -> Result<Conntrack, ScenarioError> {
        let t = c.value.timeouts();
        for v in [t.udp_s, t.udp_stream_s, t.tcp_established_s] {
            if v == 0 || v > MAX_TIMEOUT_S {
                return self.err(Some(c.referenced), Problem::BadTimeout(v));
            }
        }
        Ok(c.value)
    }

    /// Validates one site against the ones before it; returns it with its name's line and
    /// whether it left `runtime` to the top-level default.
    fn site(
        &self,
        rs: RawSite,
        default_conntrack: Conntrack,
        before: &[Site],
        first_lines: &[u64],
    ) -> Result<(Site, u64, bool), ScenarioError> {
        let name = rs.name.value.clone();
        let name_loc = Some(rs.name.referenced);
        let well_formed = (1..=MAX_SITE_NAME_LEN).contains(&name.len())
            && name
                .chars()
                .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'));
        if !well_formed {
            return self.err(name_loc, Problem::BadSiteName(bounded(&name)));
        }
        if RESERVED_SITE_NAMES.contains(&name.as_str()) {
            return self.err(name_loc, Problem::ReservedSiteName(name));
        }
        if let Some(i) = before.iter().position(|s| s.name == name) {
            return self.err(
                name_loc,
                Problem::DuplicateSite {
                    name,
                    first_line: first_lines[i],
                },
            );
        }

        let (nat, cgnat) = match (rs.nat.value, &rs.inner) {
            (RawNat::Cgnat, None) => (NatKind::PortRestrictedCone, true),
            (RawNat::Cgnat, Some(inner)) => match inner.value.kind() {
                Some(k) if k != NatKind::None => (k, true),
                _ => {
                    return self.err(
                        Some(inner.referenced),
                        Problem::BadInner(inner.value.name()),
                    );
                }
            },
            (outer, Some(inner)) => {
                return self.err(
                    Some(inner.referenced),
                    Problem::InnerWithoutCgnat(outer.name()),
                );
            }
            (outer, None) => match outer.kind() {
                Some(k) => (k, false),
                // Unreachable: `Cgnat` is matched above; kept total instead of panicking.
                None => (NatKind::PortRestrictedCone, true),
            },
        };

        let agents = match &rs.agents {
            Some(a) if a.value == 0 => {
                return self.err(Some(a.referenced), Problem::NoAgents(name));
            }
            Some(a) if a.value > MAX_HOSTS_PER_LAN as u64 => {
                return self.err(
                    Some(a.referenced),
                    Problem::LanFull {
                        site: name,
                        agents: a.value,
                    },
                );
            }
            Some(a) => a.value as usize,
            None => 1,
        };

        let conntrack = match &rs.conntrack {
            Some(c) => self.conntrack(c)?,
            None => default_conntrack,
        };

        let hairpin = match &rs.hairpin {
            Some(h) if h.value && nat == NatKind::None && !cgnat => {
                return self.err(Some(h.referenced), Problem::HairpinWithoutNat(name));
            }
            Some(h) => h.value,
            None => false,
        };

        let labels = match rs.labels {
            None => Default::default(),
            Some(l) => {
                let ok = |x: &str| {
                    (1..=64).contains(&x.len())
                        && x.chars().all(|c| {
                            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
                        })
                };
                if !l.value.iter().all(|(k, v)| ok(k) && ok(v)) || l.value.len() > 32 {
                    return self.err(Some(l.referenced), Problem::BadLabel);
                }
                l.value
            }
        };

        Ok((
            Site {
                name,
                nat,
                cgnat,
                agents,
                conntrack,
                hairpin,
                runtime: rs.runtime.unwrap_or_default(),
                labels,
            },
            rs.name.referenced.line(),
            rs.runtime.is_none(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::from_str(text, "t.yaml")
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(s) => panic!("expected an error, got {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn default_scenario_has_every_nat_type_and_26_agents() {
        let s = Scenario::default_scenario();
        assert_eq!(s.seeds, 3);
        assert_eq!(s.total_agents(), 26);
        assert_eq!(s.agent.task_rate, 1.0);
        for kind in [
            NatKind::None,
            NatKind::FullCone,
            NatKind::RestrictedCone,
            NatKind::PortRestrictedCone,
            NatKind::Symmetric,
        ] {
            assert!(
                s.sites.iter().any(|x| x.nat == kind && !x.cgnat),
                "{kind:?}"
            );
        }
        assert!(s.sites.iter().any(|x| x.cgnat));
    }

    #[test]
    fn minimal_file_gets_documented_defaults() {
        let s = parse("sites:\n  - name: a\n    nat: symmetric\n").expect("valid");
        assert_eq!(s.name, "chaosnet");
        assert_eq!(s.seed, 0);
        assert_eq!(s.network, Network::Mainnet);
        assert_eq!(s.seeds, 3);
        assert_eq!(s.agent, AgentSettings::default());
        assert_eq!(s.sites[0].agents, 1);
        assert_eq!(s.sites[0].conntrack.timeouts(), ConntrackTimeouts::HOME);
        assert!(!s.sites[0].hairpin);
    }

    #[test]
    fn conntrack_presets_and_explicit_seconds() {
        let s = parse(
            "conntrack: cloud\nsites:\n  - {name: a, nat: full-cone}\n  - name: b\n    nat: symmetric\n    conntrack: {udp_s: 5, udp_stream_s: 6, tcp_established_s: 7}\n  - {name: c, nat: none, conntrack: corporate}\n",
        )
        .expect("valid");
        assert_eq!(s.sites[0].conntrack.timeouts(), ConntrackTimeouts::CLOUD);
        assert_eq!(
            s.sites[1].conntrack.timeouts(),
            ConntrackTimeouts {
                udp_s: 5,
                udp_stream_s: 6,
                tcp_established_s: 7
            }
        );
        assert_eq!(
            s.sites[2].conntrack.timeouts(),
            ConntrackTimeouts::CORPORATE
        );
        assert_eq!(ConntrackTimeouts::HOME.udp_stream_s, 300);
        assert_eq!(ConntrackTimeouts::CORPORATE.tcp_established_s, 3600);
    }

    #[test]
    fn bad_conntrack_preset_lists_the_choices_with_position() {
        let e = err("sites:\n  - name: a\n    nat: none\n    conntrack: office\n");
        assert!(e.starts_with("t.yaml:4:16: "), "{e}");
        assert!(e.contains("home, corporate, cloud"), "{e}");
        let e = err("sites:\n  - name: a\n    nat: none\n    conntrack: {udp_s: 1}\n");
        assert!(e.starts_with("t.yaml:4:"), "{e}");
        assert!(e.contains("udp_stream_s"), "{e}");
    }

    #[test]
    fn runtime_is_one_choice_a_split_or_per_site() {
        let s = parse("sites:\n  - {name: a, nat: none}\n").expect("valid");
        assert_eq!(s.seed_runtime, RuntimeChoice::Process);
        assert_eq!(s.sites[0].runtime, RuntimeChoice::Process);

        let s = parse("runtime: docker\nsites:\n  - {name: a, nat: none}\n").expect("valid");
        assert_eq!(s.seed_runtime, RuntimeChoice::Docker);
        assert_eq!(s.sites[0].runtime, RuntimeChoice::Docker);

        let mut s = parse(
            "runtime: {seeds: process, sites: auto}\nsites:\n  - {name: a, nat: none}\n  - {name: b, nat: symmetric, runtime: process}\n",
        )
        .expect("valid");
        assert_eq!(s.seed_runtime, RuntimeChoice::Process);
        assert_eq!(s.sites[0].runtime, RuntimeChoice::Auto);
        assert_eq!(s.sites[1].runtime, RuntimeChoice::Process);
        assert!(s.uses_runtime(RuntimeChoice::Auto));
        s.resolve_auto(RuntimeKind::Docker);
        assert_eq!(s.sites[0].runtime, RuntimeChoice::Docker);
        assert!(!s.uses_runtime(RuntimeChoice::Auto));
        s.set_runtime(RuntimeChoice::Process);
        assert!(!s.uses_runtime(RuntimeChoice::Docker));

        let e = err("runtime: podman\nsites:\n  - {name: a, nat: none}\n");
        assert!(e.starts_with("t.yaml:1:"), "{e}");
        assert!(e.contains("process, docker, auto"), "{e}");
        let e = err("runtime: {seeds: docker, agents: docker}\nsites:\n  - {name: a, nat: none}\n");
        assert!(e.starts_with("t.yaml:1:"), "{e}");
        assert!(e.contains("agents"), "{e}");
        let e = err("sites:\n  - {name: a, nat: none, runtime: vm}\n");
        assert!(e.starts_with("t.yaml:2:"), "{e}");
        assert!(e.contains("vm"), "{e}");
    }

    #[test]
    fn otlp_endpoint_must_be_on_the_emulated_internet() {
        let s = parse(
            "agent: {otlp_endpoint: \"http://198.18.0.1:4318/v1/traces\"}\nsites:\n  - {name: a, nat: none}\n",
        )
        .expect("valid");
        assert_eq!(
            s.agent.otlp_endpoint.as_deref(),
            Some("http://198.18.0.1:4318/v1/traces")
        );
        assert!(lab_http_url("http://198.19.255.254:1"));
        for bad in [
            "http://127.0.0.1:4318/v1/traces",
            "http://198.20.0.1:4318/",
            "https://198.18.0.1:4318/",
            "http://198.18.0.1/v1/traces",
            "http://198.18.0.1:0/",
            "http://collector:4318/",
        ] {
            assert!(!lab_http_url(bad), "{bad}");
        }
        let e = err(
            "agent:\n  otlp_endpoint: http://127.0.0.1:4318/v1/traces\nsites:\n  - {name: a, nat: none}\n",
        );
        assert!(e.starts_with("t.yaml:2:"), "{e}");
        assert!(e.contains("198.18.0.0/15"), "{e}");
    }

    #[test]
    fn cgnat_inner_defaults_to_port_restricted() {
        let s = parse(
            "sites:\n  - {name: c, nat: cgnat}\n  - {name: d, nat: cgnat, inner: symmetric}\n",
        )
        .expect("valid");
        assert!(s.sites[0].cgnat);
        assert_eq!(s.sites[0].nat, NatKind::PortRestrictedCone);
        assert_eq!(s.sites[1].nat, NatKind::Symmetric);
        assert_eq!(s.sites[1].nat_label(), "cgnat");
    }

    #[test]
    fn scale_keeps_identity_and_proportions() {
        let mut s = Scenario::default_scenario();
        let before: Vec<usize> = s.sites.iter().map(|x| x.agents).collect();
        s.scale_agents(23).expect("same size");
        assert_eq!(s.sites.iter().map(|x| x.agents).collect::<Vec<_>>(), before);

        s.scale_agents(100).expect("scale up");
        assert_eq!(s.site_agents(), 100);
        assert_eq!(s.seeds, 3);
        // 100 * 3/23 = 13.04, 100 * 4/23 = 17.39 and 100 * 2/23 = 8.70: floors give 98, and
        // the two left go to the largest remainders (.70, then .39 earliest site first).
        let counts: Vec<usize> = s.sites.iter().map(|x| x.agents).collect();
        assert_eq!(counts, vec![13, 18, 17, 17, 13, 13, 9]);

        s.scale_agents(7).expect("one each");
        assert!(s.sites.iter().all(|x| x.agents == 1));
        assert!(matches!(s.scale_agents(6), Err(ScaleError::TooFew { .. })));
        assert!(s.sites.iter().all(|x| x.agents == 1), "unchanged on error");
        assert!(matches!(
            s.scale_agents(998),
            Err(ScaleError::TooMany { .. })
        ));
    }
}
