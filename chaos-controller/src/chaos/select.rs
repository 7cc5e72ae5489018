//! Fault targets: selectors and modes.
//!
//! A [`Selector`] matches agents by site, NAT type, role, name glob and site label. Every
//! criterion that is set must hold (AND); a list criterion holds when any of its entries
//! matches (OR). An empty selector matches every agent. A [`Mode`] then picks from the
//! matches: `one` (one at random), `all`, `fixed:N` (N at random, all if fewer match) or
//! `percent:P` (round(P% of the matches), at least one when P > 0 and anything matched).
//! Random picks come from a [`SeededRng`], so the same seed picks the same agents; the result
//! keeps the order of the candidate list (the plan's agent order).
//!
//! What it does not do: decide when (see `schedule`) or what happens to the targets (see
//! `fault`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::rng::SeededRng;
use crate::plan::Plan;

/// What kind of agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A public seed agent.
    Seed,
    /// Any other agent.
    Peer,
}

/// One agent as selectors see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Agent name, e.g. `home1-2`.
    pub name: String,
    /// Its site (`internet` for seeds).
    pub site: String,
    /// Its site's NAT in scenario spelling (`none` for seeds, `cgnat` for carrier sites).
    pub nat: String,
    /// Seed or peer.
    pub role: Role,
    /// Its site's labels.
    pub labels: BTreeMap<String, String>,
}

/// The agents of a plan as selectors see them, in plan order (seeds first, then sites in
/// file order), with their sites' NAT labels and labels.
pub fn targets(plan: &Plan) -> Vec<Target> {
    plan.agents
        .iter()
        .map(|a| Target {
            name: a.name.clone(),
            site: a.site.clone(),
            nat: plan.nat_label_of(a).to_string(),
            role: if a.seed { Role::Seed } else { Role::Peer },
            labels: plan
                .site(&a.site)
                .map(|s| s.labels.clone())
                .unwrap_or_default(),
        })
        .collect()
}

/// Which agents a fault may hit. Empty lists and `None` do not restrict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Selector {
    /// Site names (`internet` names the seeds' site).
    pub sites: Vec<String>,
    /// NAT types in scenario spelling (`none`, `full-cone`, ..., `cgnat`).
    pub nats: Vec<String>,
    /// Seed or peer.
    pub role: Option<Role>,
    /// Name globs: `*` any run of characters, `?` one character.
    pub names: Vec<String>,
    /// Site labels `key=value` (all must hold).
    pub labels: Vec<(String, String)>,
}

impl Selector {
    /// Whether `t` matches.
    pub fn matches(&self, t: &Target) -> bool {
        (self.sites.is_empty() || self.sites.contains(&t.site))
            && (self.nats.is_empty() || self.nats.contains(&t.nat))
            && self.role.is_none_or(|r| r == t.role)
            && (self.names.is_empty() || self.names.iter().any(|g| glob(g, &t.name)))
            && self
                .labels
                .iter()
                .all(|(k, v)| t.labels.get(k).is_some_and(|x| x == v))
    }

    /// The matching targets, in candidate order.
    pub fn filter<'a>(&self, candidates: &'a [Target]) -> Vec<&'a Target> {
        candidates.iter().filter(|t| self.matches(t)).collect()
    }
}

/// How many of the matches a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One at random.
    One,
    /// Every match.
    All,
    /// N at random (every match when fewer).
    Fixed(usize),
    /// A percentage of the matches, rounded half up, at least one when above 0.
    Percent(f64),
}

impl Mode {
    /// How many of `n` matches this mode takes.
    pub fn count(&self, n: usize) -> usize {
        match *self {
            Mode::One => n.min(1),
            Mode::All => n,
            Mode::Fixed(k) => k.min(n),
            Mode::Percent(p) => {
                if n == 0 || p <= 0.0 {
                    0
                } else {
                    ((n as f64 * p / 100.0).round() as usize).clamp(1, n)
                }
            }
        }
    }

    /// Picks from `matches` (kept in their order). `All` consumes no randomness.
    pub fn pick<T: Clone>(&self, matches: &[T], rng: &mut SeededRng) -> Vec<T> {
        let k = self.count(matches.len());
        if k == matches.len() {
            return matches.to_vec();
        }
        let mut idx: Vec<usize> = (0..matches.len()).collect();
        // Partial Fisher-Yates: the first k slots become a uniform random k-subset.
        for i in 0..k {
            let j = i + rng.below(matches.len() - i);
            idx.swap(i, j);
        }
        let mut chosen = idx[..k].to_vec();
        chosen.sort_unstable();
        chosen.into_iter().map(|i| matches[i].clone()).collect()
    }
}

/// Parses a mode as written: `one`, `all`, `fixed:N`, `percent:P`.
pub fn parse_mode(s: &str) -> Option<Mode> {
    match s {
        "one" => return Some(Mode::One),
        "all" => return Some(Mode::All),
        _ => {}
    }
    if let Some(n) = s.strip_prefix("fixed:") {
        return n
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .map(Mode::Fixed);
    }
    if let Some(p) = s.strip_prefix("percent:") {
        return p
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|p| *p > 0.0 && *p <= 100.0)
            .map(Mode::Percent);
    }
    None
}

/// Glob match with `*` and `?` (no classes, no escapes).
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with one backtrack point: linear in practice, no recursion.
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("home*", "home1-0"));
        assert!(glob("*-0", "home1-0"));
        assert!(glob("h?me1-?", "home1-3"));
        assert!(!glob("home", "home1-0"));
        assert!(glob("*", ""));
        assert!(!glob("a*b", "acbd"));
    }

    #[test]
    fn modes_parse_and_count() {
        assert_eq!(parse_mode("fixed:3"), Some(Mode::Fixed(3)));
        assert_eq!(parse_mode("percent:20"), Some(Mode::Percent(20.0)));
        assert_eq!(parse_mode("fixed:0"), None);
        assert_eq!(parse_mode("percent:101"), None);
        assert_eq!(parse_mode("some"), None);
        assert_eq!(Mode::Percent(20.0).count(10), 2);
        assert_eq!(Mode::Percent(1.0).count(10), 1);
        assert_eq!(Mode::Percent(25.0).count(10), 3);
        assert_eq!(Mode::Fixed(5).count(2), 2);
        assert_eq!(Mode::One.count(0), 0);
    }
}
