//! Why a scenario was refused: [`ScenarioError`] (displayed `file:line:col: message`), the
//! semantic [`Problem`]s, and [`ScaleError`] for `--agents N`. Positions are 1-based lines
//! and columns ([`Pos`]). What it does not do: find the problems (see `validate`).

use std::fmt;

use super::{
    INNER_CHOICES, MAX_FILE_BYTES, MAX_HOSTS_PER_LAN, MAX_NETWORK_NAME_LEN, MAX_SITE_NAME_LEN,
    MAX_SITES, MAX_TIMEOUT_S, MAX_TOTAL_AGENTS,
};

/// A 1-based line and column (in characters) in the scenario file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

impl Pos {
    pub(crate) fn of(loc: serde_saphyr::Location) -> Option<Pos> {
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
    /// `network_key_file` cannot be read (only checked by [`super::Scenario::load`]).
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
         holds ({limit})"
    )]
    LanFull {
        /// N.
        requested: usize,
        /// The site.
        site: String,
        /// Its share.
        agents: usize,
        /// Hosts a LAN holds.
        limit: usize,
    },
    /// Too many agents in total.
    #[error("--agents {requested} plus {seeds} seeds is more than the limit of {limit}")]
    TooMany {
        /// N.
        requested: usize,
        /// Seeds.
        seeds: usize,
        /// The limit.
        limit: usize,
    },
}
