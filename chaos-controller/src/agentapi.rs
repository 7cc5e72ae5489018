//! Typed calls to an agent's control API: the contract's bodies
//! ([`chaosnet_contract::api`]) over whatever transport the agent's runtime gives
//! ([`crate::runtime::Runtime::api`]: a unix socket in the run directory for processes and
//! containers).
//!
//! Every answer is decoded into its contract type; an answer that does not decode is an
//! error ([`ApiError::BadAnswer`]), never a default. What it does not do: choose timeouts
//! (callers do), retry, or know where an agent runs.

use std::time::Duration;

use chaosnet_contract::api::{
    ConnectAnswer, ConnectFailure, ConnectRequest, Impairment, KvPut, KvSummary, KvTuple,
    LookupAnswer, LookupRequest, Status,
};
use serde::de::DeserializeOwned;

use crate::http::{self, HttpError, Request, Response};
use crate::runtime::Runtime;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The agent could not be reached (not up, gone, or too slow).
    #[error(transparent)]
    Transport(#[from] HttpError),
    /// The runtime cannot reach the agent at all (unknown agent, runtime unavailable).
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// The agent refused (a status other than the expected one).
    #[error("HTTP {status}: {body}")]
    Refused {
        /// The status.
        status: u16,
        /// The body, trimmed.
        body: String,
    },
    /// The answer is not the contract's body.
    #[error("unexpected answer (HTTP {status}): {detail}")]
    BadAnswer {
        /// The status.
        status: u16,
        /// Why it does not decode, and the start of the body.
        detail: String,
    },
}

impl ApiError {
    /// True when the agent did not answer in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ApiError::Transport(e) if e.is_timeout())
    }
}

/// What `POST /connect` gave.
#[derive(Clone, Debug, PartialEq)]
pub enum Connect {
    /// Connected.
    Connected(ConnectAnswer),
    /// The agent tried and failed (404 not found, 502 unreachable, 504 gave up...).
    Failed {
        /// The status.
        status: u16,
        /// The agent's account of it.
        failure: ConnectFailure,
    },
}

/// The start of a body, for messages.
fn snippet(body: &str) -> String {
    body.trim().chars().take(200).collect()
}

fn decode<T: DeserializeOwned>(r: &Response) -> Result<T, ApiError> {
    serde_json::from_str(&r.body).map_err(|e| ApiError::BadAnswer {
        status: r.status,
        detail: format!("{e}: {}", snippet(&r.body)),
    })
}

fn expect_ok<T: DeserializeOwned>(r: Response) -> Result<T, ApiError> {
    if r.status != 200 {
        return Err(ApiError::Refused {
            status: r.status,
            body: snippet(&r.body),
        });
    }
    decode(&r)
}

/// Decodes the answer of `POST /connect` (pure; [`AgentApi::connect`] uses it).
pub fn parse_connect(r: Response) -> Result<Connect, ApiError> {
    if r.status == 200 {
        return decode(&r).map(Connect::Connected);
    }
    match serde_json::from_str::<ConnectFailure>(&r.body) {
        Ok(failure) => Ok(Connect::Failed {
            status: r.status,
            failure,
        }),
        Err(_) => Err(ApiError::Refused {
            status: r.status,
            body: snippet(&r.body),
        }),
    }
}

/// One agent's API, through its runtime.
pub struct AgentApi<'a> {
    runtime: &'a dyn Runtime,
    name: &'a str,
}

impl<'a> AgentApi<'a> {
    /// The API of agent `name`, reached through `runtime`.
    pub fn new(runtime: &'a dyn Runtime, name: &'a str) -> AgentApi<'a> {
        AgentApi { runtime, name }
    }

    /// One raw request (the scrape proxy forwards `/metrics` and `/status` as they are).
    pub fn request(&self, req: &Request<'_>, timeout: Duration) -> Result<Response, ApiError> {
        self.runtime.api(self.name, req, timeout)
    }

    /// `GET /status`.
    pub fn status(&self, timeout: Duration) -> Result<Status, ApiError> {
        expect_ok(self.request(&Request::get("/status"), timeout)?)
    }

    /// `GET /kv`: the key-value replica's size and digest.
    pub fn kv_summary(&self, timeout: Duration) -> Result<KvSummary, ApiError> {
        expect_ok(self.request(&Request::get("/kv"), timeout)?)
    }

    /// `PUT /kv/{key}`: writes a tuple as the agent; `key` must be URL-safe as given.
    pub fn kv_put(&self, key: &str, value: &str, timeout: Duration) -> Result<KvTuple, ApiError> {
        let body = to_json(&KvPut {
            value: value.to_string(),
        });
        let path = format!("/kv/{}", http::url_encode(key));
        expect_ok(self.request(
            &Request {
                method: "PUT",
                path: &path,
                body: Some(&body),
            },
            timeout,
        )?)
    }

    /// `POST /connect`.
    pub fn connect(&self, req: &ConnectRequest, timeout: Duration) -> Result<Connect, ApiError> {
        let body = to_json(req);
        parse_connect(self.request(
            &Request {
                method: "POST",
                path: "/connect",
                body: Some(&body),
            },
            timeout,
        )?)
    }

    /// `POST /lookup`.
    pub fn lookup(&self, node_id: &str, timeout: Duration) -> Result<LookupAnswer, ApiError> {
        let body = to_json(&LookupRequest {
            node_id: node_id.to_string(),
        });
        expect_ok(self.request(
            &Request {
                method: "POST",
                path: "/lookup",
                body: Some(&body),
            },
            timeout,
        )?)
    }

    /// `PUT /impairment`.
    pub fn set_impairment(&self, i: &Impairment, timeout: Duration) -> Result<(), ApiError> {
        let body = to_json(i);
        expect_ok::<Impairment>(self.request(
            &Request {
                method: "PUT",
                path: "/impairment",
                body: Some(&body),
            },
            timeout,
        )?)
        .map(drop)
    }
}

/// Plain contract data always serializes.
fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// An agent's API on a local endpoint (the unix socket of a lab agent): what the process
/// and docker runtimes answer [`Runtime::api`] with.
pub fn call_local(
    ep: &http::Endpoint,
    req: &Request<'_>,
    timeout: Duration,
) -> Result<Response, ApiError> {
    Ok(http::call(ep, req, timeout)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chaosnet_contract::api::ConnMode;

    fn resp(status: u16, body: &str) -> Response {
        Response {
            status,
            body: body.into(),
        }
    }

    #[test]
    fn connect_answers_decode_into_the_contract() {
        let ok = parse_connect(resp(
            200,
            r#"{"node_id":"ab","mode":"relayed","elapsed_ms":12.5,"relay":"cd","birthday_probes":null,
               "attempts":[{"path":"direct","outcome":"timeout","elapsed_ms":2000.0},{"path":"relayed","outcome":"ok","elapsed_ms":3.0}]}"#,
        ))
        .expect("decodes");
        let Connect::Connected(a) = ok else {
            panic!("{ok:?}")
        };
        assert_eq!(a.mode, ConnMode::Relayed);
        let failed = parse_connect(resp(
            502,
            r#"{"error":"cannot connect","reason":"timeout","elapsed_ms":9.0,"attempts":[]}"#,
        ))
        .expect("decodes");
        assert!(
            matches!(&failed, Connect::Failed { status: 502, failure } if failure.reason == "timeout"),
            "{failed:?}"
        );
        let e = parse_connect(resp(200, "not json")).expect_err("garbage");
        assert!(matches!(e, ApiError::BadAnswer { status: 200, .. }), "{e}");
        let e = parse_connect(resp(500, "oops")).expect_err("no body");
        assert!(e.to_string().contains("HTTP 500: oops"), "{e}");
        let e = expect_ok::<Status>(resp(200, r#"{"joined": "yes"}"#)).expect_err("typed");
        assert!(matches!(e, ApiError::BadAnswer { .. }), "{e}");
    }
}
