//! Validation of the scenario as written ([`super::raw`]) into a [`Scenario`]: every value
//! checked against its limits, every problem reported at the position of the offending
//! value, with the valid choices where there is a fixed set. It also resolves a relative
//! network key file against the scenario's directory. What it does not do: check the
//! `chaos:` section, whose faults are checked against the plan's agents once the scenario
//! is planned ([`crate::chaos::check`]).

use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use super::raw::{RawAgent, RawNat, RawScenario, RawSite};
use super::{
    AgentSettings, Conntrack, MAX_HOSTS_PER_LAN, MAX_NETWORK_NAME_LEN, MAX_SITE_NAME_LEN,
    MAX_SITES, MAX_TIMEOUT_S, MAX_TOTAL_AGENTS, Network, Pos, Problem, RESERVED_SITE_NAMES,
    Scenario, ScenarioError, Site, Source,
};
use crate::plan::NatKind;

/// `file:line:col: message` from a serde-saphyr error. The parser's plain message ends in
/// " at line L, column C", which is dropped since the position leads the message.
pub(crate) fn parse_error(e: &serde_saphyr::Error, file: &str) -> ScenarioError {
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
pub(crate) fn lab_http_url(url: &str) -> bool {
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

pub(crate) fn bounded(s: &str) -> String {
    s.chars().take(64).collect()
}

pub(crate) fn resolve_relative(scenario_path: &Path, key: &Path) -> PathBuf {
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
pub(crate) fn key_file_pos(text: &str) -> Option<Pos> {
    text.lines().enumerate().find_map(|(i, line)| {
        let col = line.find("network_key_file:")?;
        (line[..col].trim().is_empty()).then(|| Pos {
            line: i as u64 + 1,
            column: col as u64 + 1,
        })
    })
}

pub(crate) struct Validator<'a> {
    pub(crate) file: &'a str,
}

impl Validator<'_> {
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

    pub(crate) fn scenario(&self, raw: RawScenario) -> Result<Scenario, ScenarioError> {
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

        Ok(Scenario {
            name,
            seed: raw.seed.unwrap_or(0),
            network,
            network_key_file,
            seeds,
            agent,
            conntrack,
            sites,
            seed_runtime: runtime.seeds,
            chaos: raw.chaos,
            file: self.file.to_string(),
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
