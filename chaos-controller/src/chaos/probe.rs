//! Probes: what a probe round measures, and the PromQL client.
//!
//! One [`Round`] asks every agent's `/status` (alive: the API answers within a second) and
//! tries a seeded sample of ordered agent pairs with `POST /connect {"node_id", "fresh":
//! true}` on the source agent: a new connection each time, so a round measures whether the
//! network lets a connection through now, not whether an old one survived. A connect that
//! fails or takes longer than the timeout counts as unreachable. Connection modes
//! (`direct`, `punched`, `relayed`) come from the answers. PromQL probes are instant queries
//! against the run's Prometheus (`up --monitor`).
//!
//! Work is bounded: at most [`PARALLEL`] agent calls at once, every call has a timeout, and a
//! round samples at most `sample_pairs` pairs. What it does not do: judge SLOs (see `run`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::rng::SeededRng;
use crate::agentapi;
use crate::plan::{AgentPlan, Plan};

/// Agent calls in flight at once during a round.
pub const PARALLEL: usize = 16;
/// Timeout of an alive check.
const ALIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest Prometheus answer read.
const MAX_PROM_ANSWER: u64 = 1 << 20;

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
}

impl Round {
    /// Share of pairs that connected (1 when no pair was tried).
    pub fn reach(&self) -> f64 {
        if self.pairs.is_empty() {
            return 1.0;
        }
        self.pairs.iter().filter(|p| p.ok).count() as f64 / self.pairs.len() as f64
    }

    /// Share of agents alive.
    pub fn alive_share(&self) -> f64 {
        if self.alive.1 == 0 {
            return 1.0;
        }
        self.alive.0 as f64 / self.alive.1 as f64
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
pub fn alive(run_dir: &Path, plan: &Plan) -> Vec<bool> {
    parallel(&plan.agents, |a: &AgentPlan| {
        agentapi::get(&run_dir.join(&a.api_socket), "/status", ALIVE_TIMEOUT)
            .is_ok_and(|r| r.status == 200)
    })
}

/// Tries one fresh connection from `from` to `to`.
pub fn connect(run_dir: &Path, from: &AgentPlan, to: &AgentPlan, timeout: Duration) -> PairResult {
    let t0 = Instant::now();
    let body = serde_json::json!({ "node_id": to.node_id, "fresh": true }).to_string();
    let r = agentapi::call(
        &run_dir.join(&from.api_socket),
        "POST",
        "/connect",
        Some(&body),
        timeout,
    );
    let mut res = PairResult {
        from: from.name.clone(),
        to: to.name.clone(),
        ok: false,
        mode: None,
        elapsed_ms: t0.elapsed().as_secs_f64() * 1000.0,
        error: None,
    };
    match r {
        Ok(resp) => {
            let v: serde_json::Value = serde_json::from_str(&resp.body).unwrap_or_default();
            if resp.status == 200 {
                res.ok = true;
                res.mode = v["mode"].as_str().map(str::to_string);
                res.elapsed_ms = v["elapsed_ms"].as_f64().unwrap_or(res.elapsed_ms);
            } else {
                res.error = Some(
                    v["reason"]
                        .as_str()
                        .map_or(format!("HTTP {}", resp.status), str::to_string),
                );
            }
        }
        Err(e) => {
            res.error = Some(match &e {
                agentapi::ApiError::Io { source, .. }
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    "timeout".to_string()
                }
                _ => "agent API unreachable".to_string(),
            });
        }
    }
    res
}

/// Tries every pair (by agent name) with fresh connections.
pub fn connect_pairs(
    run_dir: &Path,
    plan: &Plan,
    pairs: &[(String, String)],
    timeout: Duration,
) -> Vec<PairResult> {
    parallel(pairs, |(a, b): &(String, String)| {
        match (
            plan.agents.iter().find(|x| &x.name == a),
            plan.agents.iter().find(|x| &x.name == b),
        ) {
            (Some(x), Some(y)) => connect(run_dir, x, y, timeout),
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
    Io {
        /// The URL.
        url: String,
        /// The cause.
        source: std::io::Error,
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

/// Percent-encodes a query parameter (RFC 3986 unreserved characters stay).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
    let io = |source| PromError::Io {
        url: url.to_string(),
        source,
    };
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let req = format!(
        "GET /api/v1/query?query={} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
        url_encode(query)
    );
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    s.take(MAX_PROM_ANSWER).read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Prometheus answers small queries with Content-Length; a chunked body would start with
    // a hex size line, which we skip to the JSON.
    let json = body.find('{').map_or(body, |i| &body[i..]);
    let json = json.rfind('}').map_or(json, |i| &json[..=i]);
    parse_prom_answer(json).map_err(|detail| PromError::Answer {
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
        assert_eq!(url_encode("a b{c}"), "a%20b%7Bc%7D");
    }
}
