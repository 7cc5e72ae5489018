//! Probes: what a probe round measures, and the PromQL client.
//!
//! One [`Round`] asks every agent's `/status` (alive: the API answers within a second) and
//! tries a seeded sample of ordered agent pairs with `POST /connect {"node_id", "fresh":
//! true}` on the source agent: a new connection each time, so a round measures whether the
//! network lets a connection through now, not whether an old one survived. A connect that
//! fails or takes longer than the timeout counts as unreachable. Connection modes
//! (`direct`, `punched`, `relayed`) come from the answers. PromQL probes are instant queries
//! against the run's Prometheus (`up --monitor`). With a `converged` SLO, a round also asks
//! every agent's `GET /kv` and counts who holds the most common digest.
//!
//! Work is bounded: at most [`PARALLEL`] agent calls at once, every call has a timeout, and a
//! round samples at most `sample_pairs` pairs. What it does not do: judge SLOs (see `run`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chaosnet_contract::api::ConnectRequest;
use serde::Serialize;

use super::rng::SeededRng;
use crate::agentapi::{ApiError, Connect};
use crate::http::{self, Endpoint, Request};
use crate::lab::Lab;
use crate::plan::AgentPlan;

/// Agent calls in flight at once during a round.
pub const PARALLEL: usize = 16;
/// Timeout of an alive check.
const ALIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Timeout of a `GET /kv`.
const KV_TIMEOUT: Duration = Duration::from_secs(2);

/// One attempted connection.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PairResult {
    /// Source agent.
    pub from: String,
    /// Target agent.
    pub to: String,
    /// Connected.
    pub ok: bool,
    /// Mode of a successful connect.
    pub mode: Option<String>,
    /// Time the agent reported (or our timeout), ms.
    pub elapsed_ms: f64,
    /// Why it failed.
    pub error: Option<String>,
}

/// One probe round.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Round {
    /// Round number, from 0.
    pub n: u32,
    /// Start, ms since the run's fault phase began (negative during warm-up).
    pub t_ms: i64,
    /// `warmup`, `faults`, `settle` or `end`.
    pub phase: String,
    /// Occurrence ids active when the round started.
    pub active: Vec<u32>,
    /// Agents whose API answered / all agents.
    pub alive: (usize, usize),
    /// Pair attempts.
    pub pairs: Vec<PairResult>,
    /// PromQL values by SLO name (`None`: no answer).
    pub promql: BTreeMap<String, Option<f64>>,
    /// Key-value replicas, when a `converged` SLO asked: (agents holding the most common
    /// digest, agents whose `GET /kv` answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv: Option<(usize, usize)>,
}

impl Round {
    /// Share of pairs that connected (1 when no pair was tried).
    pub fn reach(&self) -> f64 {
        if self.pairs.is_empty() {
            return 1.0;
        }
        self.pairs.iter().filter(|p| p.ok).count() as f64 / self.pairs.len() as f64
    }

    /// `reachability 95%, alive 12/12, faults active: [2]`, as progress lines say it.
    pub fn describe(&self) -> String {
        format!(
            "reachability {:.0}%, alive {}/{}{}",
            self.reach() * 100.0,
            self.alive.0,
            self.alive.1,
            if self.active.is_empty() {
                String::new()
            } else {
                format!(", faults active: {:?}", self.active)
            }
        )
    }

    /// Share of agents alive.
    pub fn alive_share(&self) -> f64 {
        if self.alive.1 == 0 {
            return 1.0;
        }
        self.alive.0 as f64 / self.alive.1 as f64
    }

    /// Share of answering agents holding the most common key-value digest (`None` when
    /// not measured; 1 when nobody answered, like [`Round::reach`] with no pairs).
    pub fn converged(&self) -> Option<f64> {
        let (same, answered) = self.kv?;
        Some(if answered == 0 {
            1.0
        } else {
            same as f64 / answered as f64
        })
    }

    /// Share of successful connects in `mode` (0 when none succeeded).
    pub fn mode_share(&self, mode: &str) -> f64 {
        let ok = self.pairs.iter().filter(|p| p.ok).count();
        if ok == 0 {
            return 0.0;
        }
        self.pairs
            .iter()
            .filter(|p| p.mode.as_deref() == Some(mode))
            .count() as f64
            / ok as f64
    }
}

/// The seeded sample of ordered pairs of round `n`: `k` distinct pairs (all when fewer).
pub fn sample_pairs(agents: &[String], k: usize, seed: u64, n: u32) -> Vec<(String, String)> {
    let m = agents.len();
    let total = m * m.saturating_sub(1);
    let mut idx: Vec<usize> = (0..total).collect();
    let mut rng = SeededRng::derive(seed, "probe-pairs", u64::from(n));
    let k = k.min(total);
    for i in 0..k {
        let j = i + rng.below(total - i);
        idx.swap(i, j);
    }
    idx[..k]
        .iter()
        .map(|&x| {
            let a = x / (m - 1);
            let mut b = x % (m - 1);
            if b >= a {
                b += 1;
            }
            (agents[a].clone(), agents[b].clone())
        })
        .collect()
}

/// Runs `f` over `items`, at most [`PARALLEL`] at once, keeping order.
fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(PARALLEL) {
        let part: Vec<R> = std::thread::scope(|s| {
            let hs: Vec<_> = chunk.iter().map(|x| s.spawn(|| f(x))).collect();
            hs.into_iter()
                .filter_map(|h| h.join().ok())
                .collect::<Vec<R>>()
        });
        out.extend(part);
    }
    out
}

/// Whether each agent's API answers `/status`.
pub fn alive(lab: &Lab) -> Vec<bool> {
    parallel(&lab.plan().agents, |a: &AgentPlan| {
        lab.agent(&a.name).status(ALIVE_TIMEOUT).is_ok()
    })
}

/// `GET /kv` on every agent: (agents holding the most common digest, agents that answered).
pub fn kv_agreement(lab: &Lab) -> (usize, usize) {
    let digests: Vec<Option<String>> = parallel(&lab.plan().agents, |a: &AgentPlan| {
        lab.agent(&a.name)
            .kv_summary(KV_TIMEOUT)
            .ok()
            .map(|s| s.digest)
    });
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for d in digests.iter().flatten() {
        *counts.entry(d.as_str()).or_default() += 1;
    }
    let answered = digests.iter().flatten().count();
    (counts.values().copied().max().unwrap_or(0), answered)
}

/// Tries one fresh connection from `from` to `to`.
pub fn connect(lab: &Lab, from: &AgentPlan, to: &AgentPlan, timeout: Duration) -> PairResult {
    let t0 = Instant::now();
    let r = lab
        .agent(&from.name)
        .connect(&ConnectRequest::fresh(&to.node_id), timeout);
    let mut res = PairResult {
        from: from.name.clone(),
        to: to.name.clone(),
        ok: false,
        mode: None,
        elapsed_ms: t0.elapsed().as_secs_f64() * 1000.0,
        error: None,
    };
    match r {
        Ok(Connect::Connected(a)) => {
            res.ok = true;
            res.mode = Some(a.mode.as_str().to_string());
            res.elapsed_ms = a.elapsed_ms;
        }
        Ok(Connect::Failed { failure, .. }) => res.error = Some(failure.reason),
        Err(ApiError::Refused { status, .. } | ApiError::BadAnswer { status, .. }) => {
            res.error = Some(format!("HTTP {status}"));
        }
        Err(e) if e.is_timeout() => res.error = Some("timeout".to_string()),
        Err(_) => res.error = Some("agent API unreachable".to_string()),
    }
    res
}

/// Tries every pair (by agent name) with fresh connections.
pub fn connect_pairs(lab: &Lab, pairs: &[(String, String)], timeout: Duration) -> Vec<PairResult> {
    let plan = lab.plan();
    parallel(pairs, |(a, b): &(String, String)| {
        match (plan.agent(a), plan.agent(b)) {
            (Some(x), Some(y)) => connect(lab, x, y, timeout),
            _ => PairResult {
                from: a.clone(),
                to: b.clone(),
                ok: false,
                mode: None,
                elapsed_ms: 0.0,
                error: Some("unknown agent".into()),
            },
        }
    })
}

/// Why a PromQL query failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PromError {
    /// Not an `http://host:port` URL.
    #[error("Prometheus URL {0:?} must be http://<ip>:<port>")]
    BadUrl(String),
    /// Transport.
    #[error("Prometheus at {url}: {source}")]
    Http {
        /// The URL.
        url: String,
        /// The cause.
        source: http::HttpError,
    },
    /// The answer is not a successful query result with a number.
    #[error("Prometheus query {query:?}: {detail}")]
    Answer {
        /// The query.
        query: String,
        /// What was wrong.
        detail: String,
    },
}

/// The first sample of an instant query's answer (vector or scalar); `None` for an empty
/// vector.
pub fn parse_prom_answer(body: &str) -> Result<Option<f64>, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        return Err(v["error"].as_str().unwrap_or("query failed").to_string());
    }
    let data = &v["data"];
    let sample = match data["resultType"].as_str() {
        Some("vector") => match data["result"].as_array().and_then(|r| r.first()) {
            None => return Ok(None),
            Some(first) => first["value"][1].clone(),
        },
        Some("scalar") => data["result"][1].clone(),
        other => return Err(format!("unsupported result type {other:?}")),
    };
    sample
        .as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .map(Some)
        .ok_or_else(|| "the sample is not a number".to_string())
}

/// Runs an instant query against `url` (`http://127.0.0.1:9090`).
pub fn promql(url: &str, query: &str, timeout: Duration) -> Result<Option<f64>, PromError> {
    let addr: SocketAddr = url
        .strip_prefix("http://")
        .map(|r| r.trim_end_matches('/'))
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| PromError::BadUrl(url.to_string()))?;
    let path = format!("/api/v1/query?query={}", http::url_encode(query));
    let r = http::call(&Endpoint::Tcp(addr), &Request::get(&path), timeout).map_err(|e| {
        PromError::Http {
            url: url.to_string(),
            source: e,
        }
    })?;
    parse_prom_answer(&r.body).map_err(|detail| PromError::Answer {
        query: query.to_string(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_distinct_ordered_and_seeded() {
        let agents: Vec<String> = (0..5).map(|i| format!("a{i}")).collect();
        let p = sample_pairs(&agents, 8, 1, 0);
        assert_eq!(p.len(), 8);
        assert!(p.iter().all(|(a, b)| a != b));
        let mut d = p.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 8);
        assert_eq!(p, sample_pairs(&agents, 8, 1, 0));
        assert_ne!(p, sample_pairs(&agents, 8, 1, 1));
        assert_eq!(sample_pairs(&agents, 100, 1, 0).len(), 20);
    }

    #[test]
    fn prom_answers() {
        let v = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"0.5"]}]}}"#;
        assert_eq!(parse_prom_answer(v), Ok(Some(0.5)));
        let e = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse_prom_answer(e), Ok(None));
        let s = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"3"]}}"#;
        assert_eq!(parse_prom_answer(s), Ok(Some(3.0)));
        assert!(parse_prom_answer(r#"{"status":"error","error":"bad"}"#).is_err());
    }
}
