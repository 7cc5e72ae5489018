//! The scenario file (YAML): what a chaosnet run builds, parsed and validated.
//!
//! What it does: parses a scenario with `serde-saphyr` (`raw`: the serde layer, the only one
//! that knows the YAML crate, so the choice can change), rejects unknown fields, validates
//! every value (`validate`), and reports each problem as `file:line:col: message` (`error`),
//! naming the valid choices where there is a fixed set. Positions come from the parser for
//! syntax and type errors, and from `serde_saphyr::Spanned` values (the position of the
//! offending value) for semantic ones. It also implements `--agents N`
//! ([`Scenario::scale_agents`]).
//!
//! What it does not do: touch the system (apart from [`Scenario::load`] reading the file
//! and checking that the network key file exists), decide addresses or names (that is the
//! planner's job, in the plan's vocabulary), or check the `chaos:` section: it keeps it as
//! written, and [`crate::chaos::check`] checks it against the plan's agents (its schema is
//! `crate::chaos::spec`'s).
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

use chaosnet_contract::TaskWeights;
use serde::{Deserialize, Serialize};

use crate::plan::{NatKind, RuntimeKind};

mod error;
mod raw;
mod validate;

pub use crate::plan::{INNER_CHOICES, NAT_CHOICES};
pub use error::{Pos, Problem, ScaleError, ScenarioError, Source};

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
pub const RESERVED_SITE_NAMES: [&str; 2] = [crate::plan::SEED_STEM, crate::plan::SEED_SITE];

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
#[derive(Clone, Debug, PartialEq)]
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
    /// The `chaos:` section as written (faults, probes and SLOs of `chaosnet run`), checked
    /// against the plan's agents once the scenario is planned ([`crate::chaos::check`]).
    pub(crate) chaos: Option<crate::chaos::spec::RawChaos>,
    /// How the public seeds run.
    pub seed_runtime: RuntimeChoice,
    /// The file name errors are reported against (`<default>` for the built-in scenario).
    pub file: String,
}

/// What `--runtime kube` says: the manifests exist, the runtime that would drive them does not.
pub const KUBE_NOT_BUILT: &str = "the kube runtime is not built yet: nothing was created; \
     deploy the fleet with `chaosnet kube apply` or `kubectl apply -k manifests/overlays/dev` \
     (README, \"Kubernetes\")";

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
            // Named, so that nobody takes the refusal for a typo.
            "kube" | "kubernetes" | "k8s" => Err(KUBE_NOT_BUILT.to_string()),
            other => Err(format!(
                "unknown runtime `{}`, expected one of process, docker, auto",
                validate::bounded(other)
            )),
        }
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

/// File name used for the built-in default scenario in messages.
pub const DEFAULT_FILE_NAME: &str = "<default>";

/// The text of `scenarios/default.yaml`, compiled in.
pub const DEFAULT_SCENARIO_YAML: &str = include_str!("../../../scenarios/default.yaml");

impl Scenario {
    /// Parses and validates a scenario. `file_name` only labels error messages. A relative
    /// `network_key_file` is kept as written (see [`Scenario::load`]).
    #[allow(clippy::should_implement_trait)] // takes a file name too; not FromStr
    pub fn from_str(text: &str, file_name: &str) -> Result<Scenario, ScenarioError> {
        let raw: raw::RawScenario =
            serde_saphyr::from_str(text).map_err(|e| validate::parse_error(&e, file_name))?;
        validate::Validator { file: file_name }.scenario(raw)
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
            let resolved = validate::resolve_relative(path, &key);
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
                        pos: validate::key_file_pos(&text),
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
        self.scale_agents_within(total_non_seed, MAX_TOTAL_AGENTS, MAX_HOSTS_PER_LAN)
    }

    /// `--agents N` for the simulator: a fleet larger than the scenario's grows by whole
    /// sites, as the internet does (copies of the scenario's sites, in file order, named
    /// `<site>-r<k>`, with the same NAT, conntrack and labels), then [`Scenario::scale_agents`]'s
    /// proportional rule trims the total to exactly N, keeping every LAN within
    /// [`MAX_HOSTS_PER_LAN`]. Scaling one site's LAN to thousands of hosts behind a single
    /// NAT would measure that NAT's port table, not the protocol. A smaller N shrinks the
    /// sites as `scale_agents` does.
    pub fn grow_sites(
        &mut self,
        total_non_seed: usize,
        max_total: usize,
    ) -> Result<(), ScaleError> {
        if total_non_seed.saturating_add(self.seeds) > max_total {
            // Before any copy: on error nothing changes.
            return Err(ScaleError::TooMany {
                requested: total_non_seed,
                seeds: self.seeds,
                limit: max_total,
            });
        }
        let current: usize = self.sites.iter().map(|s| s.agents.max(1)).sum();
        if total_non_seed > current && current > 0 {
            let copies = total_non_seed.div_ceil(current);
            let originals = self.sites.clone();
            for k in 1..copies {
                for site in &originals {
                    let mut c = site.clone();
                    c.name = format!("{}-r{k}", site.name);
                    self.sites.push(c);
                }
            }
        }
        self.scale_agents_within(total_non_seed, max_total, MAX_HOSTS_PER_LAN)
    }

    /// [`Scenario::scale_agents`] with other limits: the simulator has no LANs to fill
    /// and no processes to start, so it allows far more agents than a lab.
    pub fn scale_agents_within(
        &mut self,
        total_non_seed: usize,
        max_total: usize,
        max_per_site: usize,
    ) -> Result<(), ScaleError> {
        let n = total_non_seed;
        let k = self.sites.len();
        if n < k {
            return Err(ScaleError::TooFew {
                requested: n,
                sites: k,
            });
        }
        if n.saturating_add(self.seeds) > max_total {
            return Err(ScaleError::TooMany {
                requested: n,
                seeds: self.seeds,
                limit: max_total,
            });
        }
        let counts: Vec<usize> = self.sites.iter().map(|s| s.agents.max(1)).collect();
        let current: usize = counts.iter().sum();
        // n <= max_total (at most the simulator's 100,000) and counts <= 245 each, so n * c
        // fits easily in usize.
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
        if let Some((i, &agents)) = shares.iter().enumerate().find(|(_, a)| **a > max_per_site) {
            return Err(ScaleError::LanFull {
                requested: n,
                site: self.sites[i].name.clone(),
                agents,
                limit: max_per_site,
            });
        }
        for (site, agents) in self.sites.iter_mut().zip(shares) {
            site.agents = agents;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use validate::lab_http_url;

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
        let plan = crate::planner::plan(&s, &crate::plan::RunId("abc123".into())).expect("plan");
        assert_eq!(plan.sites[1].nat_label(), "cgnat");
    }

    #[test]
    fn growing_adds_sites_of_the_same_size_rather_than_bigger_lans() {
        let mut s = Scenario::default_scenario();
        let originals = s.sites.clone();
        s.grow_sites(10_000, 100_000).expect("grows");
        assert_eq!(s.site_agents(), 10_000);
        assert_eq!(s.seeds, 3);
        // 10,000 / 23 rounds up to 435 copies of the 7 sites.
        assert_eq!(s.sites.len(), 7 * 435);
        let mut names: Vec<&str> = s.sites.iter().map(|x| x.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), s.sites.len(), "site names stay unique");
        for (i, site) in s.sites.iter().enumerate() {
            let o = &originals[i % originals.len()];
            assert_eq!(
                (site.nat, site.cgnat, site.conntrack),
                (o.nat, o.cgnat, o.conntrack)
            );
            assert!(
                site.agents >= 1 && site.agents <= o.agents,
                "{}: {}",
                site.name,
                site.agents
            );
        }
        assert_eq!(s.sites[7].name, "open1-r1");
        // Shrinking is the lab's rule.
        let mut small = Scenario::default_scenario();
        small.grow_sites(10, 100_000).expect("shrinks");
        assert_eq!((small.sites.len(), small.site_agents()), (7, 10));
        let mut big = Scenario::default_scenario();
        assert!(matches!(
            big.grow_sites(200_000, 100_000),
            Err(ScaleError::TooMany { .. })
        ));
        assert_eq!(big, Scenario::default_scenario(), "unchanged on error");
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
