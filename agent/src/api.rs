//! The control API (axum), served on a management address that is never the P2P socket.
//!
//! Routes:
//! - `GET /metrics`: Prometheus text.
//! - `GET /status`: JSON [`Status`].
//! - `GET /peers`: JSON list of contacts, best-scoring first.
//! - `POST /connect {"node_id": "...", "fresh": true}`: connects by NodeId (looking it up if
//!   needed) and returns `{node_id, mode, elapsed_ms, relay, birthday_probes, attempts}`
//!   (the path taken: direct, punched or relayed; every path tried), or an error with a
//!   reason and the attempts.
//!   With `"via": "<relay id>"` it goes only through that relay.
//! - `POST /echo {"node_id": "...", "bytes": 60000, "count": 100}`: echoes over the current
//!   connection and reports the goodput (`mib_per_s`), e.g. to compare relayed and direct.
//! - `POST /lookup {"node_id": "..."}`: iterative lookup; `{found, elapsed_ms, closest}`.
//! - `POST /tasks {"paused": bool}`: pauses or resumes the task loop.
//! - `GET|PUT /impairment {"loss_pct", "delay_ms", "jitter_ms"}`: userspace impairment on
//!   the P2P socket (the lab's fallback where the kernel has no netem). A change reaches the
//!   core, which tells subscribers (`fault_observed`).
//! - `POST /claim {"node_id": "..."}`: claims that node (connecting to it any way): both
//!   sign a claim linking the two NodeIds and both keep it; answers the doubly signed claim.
//! - `GET /claims`: the claims this node holds. `GET /claims/{node_id}`: that node's claims,
//!   fetched over the network; only those whose two signatures verify are listed, the others
//!   are refused and counted (`chaosnet_claims_total{outcome="forged"|"singly_signed"}`).
//! - `GET /events`: the node events as Server-Sent Events (`event: <kind>`, JSON data with
//!   `kind`, `at_unix_ms` and the event's fields): local_addresses_updated,
//!   reachability_changed, nat_type_changed, peer_connected, peer_disconnected,
//!   connection_upgraded, relay_circuit_opened, relay_circuit_closed, fault_observed. A
//!   subscriber more than [`EVENT_BUFFER`](crate::events::EVENT_BUFFER) events behind loses
//!   the oldest and gets `event: lagged` with `{"missed": n}`.
//! - `PUT /kv/{key} {"value": "..."}`: writes a tuple signed by this node, one version above
//!   what the key holds; answers the tuple, or 400 with the reason (`empty_key`,
//!   `key_too_long`, `value_too_long`, `full`). `GET /kv/{key}`: the tuple, or 404.
//!   `GET /kv`: `{"count", "digest"}`, the digest equal on every node holding the same set.
//! - `POST /network-keys/reload`: re-reads the private network's key files, as SIGHUP does;
//!   `{keys, valid}`, or 400 naming the bad file (the keys in use stay), or 409 off a
//!   private network.
//!
//! Every handler talks to the driver through its bounded channel; the API holds no state of
//! its own beyond a limit on concurrent connects.
//!
//! Who may reach it (a token, the unix socket's mode) is [`crate::api_access`]'s business.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chaosnet_contract::api::{
    Attempt, ConnectAnswer, ConnectFailure, ConnectRequest, ErrorBody, Impairment, KvPut,
    KvSummary, KvTuple, LookupAnswer, LookupRequest, Status,
};
use chaosnet_proto::kv::tuple::Tuple;
use chaosnet_proto::{Command, NodeId, TaskOutcome};
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::driver::{Input, PeerStatus};
use crate::events::{self, Events};
use crate::network::KeyReloader;
use crate::socket::SocketHandle;

/// Concurrent `/connect` calls served; more wait.
const MAX_CONCURRENT_CONNECTS: usize = 64;
/// Longest a `/connect` may take before the API gives up on it.
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);

/// Shared state of the handlers.
#[derive(Clone, Debug)]
pub struct ApiState {
    inputs: mpsc::Sender<Input>,
    socket: SocketHandle,
    events: Events,
    connects: Arc<Semaphore>,
    keys: Option<KeyReloader>,
}

impl ApiState {
    /// State over the driver's channel, the P2P socket and the event stream.
    pub fn new(inputs: mpsc::Sender<Input>, socket: SocketHandle, events: Events) -> ApiState {
        ApiState {
            inputs,
            socket,
            events,
            connects: Arc::new(Semaphore::new(MAX_CONCURRENT_CONNECTS)),
            keys: None,
        }
    }

    /// The same, able to reload a private network's keys.
    pub fn with_key_reloader(mut self, keys: KeyReloader) -> ApiState {
        self.keys = Some(keys);
        self
    }
}

/// The router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/peers", get(peers))
        .route("/connect", post(connect))
        .route("/lookup", post(lookup))
        .route("/echo", post(echo))
        .route("/tasks", post(tasks))
        .route("/impairment", get(get_impairment).put(put_impairment))
        .route("/events", get(stream_events))
        .route("/claim", post(claim))
        .route("/claims", get(local_claims))
        .route("/claims/{node_id}", get(peer_claims))
        .route("/kv", get(kv_summary))
        .route("/kv/{key}", get(kv_get).put(kv_put))
        .route("/network-keys/reload", post(reload_keys))
        .with_state(state)
}

/// The JSON body, or a 400 naming what is wrong with it.
// The error is the response a handler returns at once with `?`, never stored or passed on,
// so its size does not matter (handlers return the same type).
#[allow(clippy::result_large_err)]
fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, Response> {
    body.map(|Json(b)| b)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))
}

/// A NodeId from a request field, or a 400.
#[allow(clippy::result_large_err)] // as for `json_body`
fn node_id(s: &str) -> Result<NodeId, Response> {
    s.parse().map_err(|e: chaosnet_proto::ParseNodeIdError| {
        error(StatusCode::BAD_REQUEST, "bad_node_id", e.to_string())
    })
}

pub(crate) fn error(status: StatusCode, reason: &'static str, msg: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: msg.into(),
            reason: reason.to_string(),
        }),
    )
        .into_response()
}

async fn ask<T>(
    state: &ApiState,
    make: impl FnOnce(oneshot::Sender<T>) -> Input,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    if state.inputs.send(make(tx)).await.is_err() {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the agent is shutting down",
        ));
    }
    rx.await.map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the agent is shutting down",
        )
    })
}

async fn metrics(State(state): State<ApiState>) -> Response {
    match ask(&state, Input::Metrics).await {
        Ok(text) => (
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(e) => e,
    }
}

async fn status(State(state): State<ApiState>) -> Result<Json<Status>, Response> {
    ask(&state, Input::Status).await.map(Json)
}

async fn peers(State(state): State<ApiState>) -> Result<Json<Vec<PeerStatus>>, Response> {
    ask(&state, Input::Peers).await.map(Json)
}

fn attempts(result: &chaosnet_proto::CommandResult) -> Vec<Attempt> {
    result
        .attempts
        .iter()
        .map(|a| Attempt {
            path: a.path,
            outcome: a.failure.map_or("ok", |f| f.as_str()).to_string(),
            elapsed_ms: a.elapsed.as_secs_f64() * 1000.0,
        })
        .collect()
}

async fn connect(
    State(state): State<ApiState>,
    body: Result<Json<ConnectRequest>, JsonRejection>,
) -> Result<Response, Response> {
    let body = json_body(body)?;
    let peer = node_id(&body.node_id)?;
    let Ok(_permit) = state.connects.acquire().await else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the agent is shutting down",
        ));
    };
    let command = match body.via.as_deref().map(str::parse::<NodeId>) {
        None => Command::Connect {
            peer,
            fresh: body.fresh,
        },
        Some(Ok(relay)) => Command::ConnectVia { peer, relay },
        Some(Err(e)) => return Err(error(StatusCode::BAD_REQUEST, "bad_node_id", e.to_string())),
    };
    let result = match tokio::time::timeout(
        CONNECT_DEADLINE,
        ask(&state, |reply| Input::Command { command, reply }),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(error(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "connect did not finish in 60 s",
            ));
        }
    };
    let elapsed_ms = result.elapsed.as_secs_f64() * 1000.0;
    Ok(match (result.outcome, result.mode) {
        (TaskOutcome::Ok, Some(mode)) => Json(ConnectAnswer {
            node_id: peer.to_hex(),
            mode,
            elapsed_ms,
            relay: result.relay.map(|r| r.to_hex()),
            birthday_probes: result.birthday_probes,
            attempts: attempts(&result),
        })
        .into_response(),
        (outcome, _) => {
            let status = match outcome {
                TaskOutcome::NotFound => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_GATEWAY,
            };
            (
                status,
                Json(ConnectFailure {
                    error: format!("cannot connect to {}", peer.short()),
                    reason: outcome.as_str().to_string(),
                    elapsed_ms,
                    attempts: attempts(&result),
                }),
            )
                .into_response()
        }
    })
}

/// Body of `POST /echo`.
#[derive(Debug, Deserialize)]
struct EchoBody {
    node_id: String,
    /// Bytes per echo, at most the wire limit. Default 60,000.
    #[serde(default = "default_echo_bytes")]
    bytes: usize,
    /// Echoes, one after another. Default 100, at most [`MAX_ECHO_COUNT`].
    #[serde(default = "default_echo_count")]
    count: u32,
}

fn default_echo_bytes() -> usize {
    60_000
}

fn default_echo_count() -> u32 {
    100
}

/// Most echoes one `POST /echo` runs: bounds how long it can keep the agent busy.
const MAX_ECHO_COUNT: u32 = 10_000;

/// Echoes `bytes` off a node `count` times over the current connection (opening one if
/// needed) and reports the goodput: a measure of the path, e.g. relayed against direct.
async fn echo(
    State(state): State<ApiState>,
    body: Result<Json<EchoBody>, JsonRejection>,
) -> Result<Response, Response> {
    let body = json_body(body)?;
    let peer = node_id(&body.node_id)?;
    if body.bytes > chaosnet_proto::MAX_ECHO_LEN || body.count > MAX_ECHO_COUNT {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "bytes must be at most {} and count at most {MAX_ECHO_COUNT}",
                chaosnet_proto::MAX_ECHO_LEN
            ),
        ));
    }
    let start = std::time::Instant::now();
    let (mut ok, mut failed) = (0u32, 0u32);
    for _ in 0..body.count {
        let command = Command::Echo {
            peer,
            len: body.bytes,
        };
        match ask(&state, |reply| Input::Command { command, reply }).await {
            Ok(r) if r.outcome == TaskOutcome::Ok => ok += 1,
            Ok(_) => failed += 1,
            Err(e) => return Err(e),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // Both directions carry the payload.
    let bytes = 2 * u64::from(ok) * body.bytes as u64;
    Ok(Json(serde_json::json!({
        "node_id": peer.to_hex(),
        "echoes": ok,
        "failed": failed,
        "elapsed_ms": secs * 1000.0,
        "mib_per_s": bytes as f64 / (1024.0 * 1024.0) / secs.max(1e-9),
    }))
    .into_response())
}

async fn lookup(
    State(state): State<ApiState>,
    body: Result<Json<LookupRequest>, JsonRejection>,
) -> Result<Response, Response> {
    let body = json_body(body)?;
    let target = node_id(&body.node_id)?;
    let command = Command::Lookup { target };
    let r = ask(&state, |reply| Input::Command { command, reply }).await?;
    Ok(Json(LookupAnswer {
        found: r.outcome == TaskOutcome::Ok,
        elapsed_ms: r.elapsed.as_secs_f64() * 1000.0,
        closest: r.closest.iter().map(|id| id.to_hex()).collect(),
    })
    .into_response())
}

/// Body of `POST /tasks`.
#[derive(Debug, Deserialize)]
struct TasksBody {
    paused: bool,
}

async fn tasks(State(state): State<ApiState>, Json(body): Json<TasksBody>) -> Response {
    if state
        .inputs
        .send(Input::PauseTasks(body.paused))
        .await
        .is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the agent is shutting down",
        );
    }
    Json(serde_json::json!({ "paused": body.paused })).into_response()
}

/// A claim as JSON: both node ids, when it was issued, both signatures (hex).
fn claim_json(c: &chaosnet_proto::Claim) -> serde_json::Value {
    serde_json::json!({
        "a": c.a.to_hex(),
        "b": c.b.to_hex(),
        "issued_ms": c.issued_ms,
        "sig_a": hex::encode(&c.sig_a),
        "sig_b": hex::encode(&c.sig_b),
    })
}

/// Body of `POST /claim`.
#[derive(Debug, Deserialize)]
struct ClaimBody {
    node_id: String,
}

/// Runs a claim or fetch command, with the same deadline as a connect.
async fn claim_command(state: &ApiState, command: Command) -> Result<Response, Response> {
    let peer = match &command {
        Command::Claim { peer } | Command::FetchClaims { peer } => *peer,
        _ => {
            return Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "bug",
                "not a claim command",
            ));
        }
    };
    let fetch = matches!(command, Command::FetchClaims { .. });
    let r = match tokio::time::timeout(
        CONNECT_DEADLINE,
        ask(state, |reply| Input::Command { command, reply }),
    )
    .await
    {
        Ok(r) => r?,
        Err(_) => {
            return Err(error(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "no answer in 60 s",
            ));
        }
    };
    if r.outcome != TaskOutcome::Ok {
        let status = match r.outcome {
            TaskOutcome::NotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_GATEWAY,
        };
        return Err(error(
            status,
            r.outcome.as_str(),
            format!(
                "cannot {} {}",
                if fetch {
                    "fetch the claims of"
                } else {
                    "claim"
                },
                peer.short()
            ),
        ));
    }
    let claims: Vec<serde_json::Value> = r.claims.iter().map(claim_json).collect();
    Ok(if fetch {
        Json(serde_json::json!({ "node_id": peer.to_hex(), "claims": claims })).into_response()
    } else {
        match claims.into_iter().next() {
            Some(c) => Json(c).into_response(),
            None => error(StatusCode::BAD_GATEWAY, "protocol", "no claim came back"),
        }
    })
}

async fn claim(
    State(state): State<ApiState>,
    body: Result<Json<ClaimBody>, JsonRejection>,
) -> Result<Response, Response> {
    let body = json_body(body)?;
    let peer = node_id(&body.node_id)?;
    claim_command(&state, Command::Claim { peer }).await
}

async fn local_claims(State(state): State<ApiState>) -> Result<Response, Response> {
    let claims = ask(&state, Input::Claims).await?;
    let list: Vec<serde_json::Value> = claims.iter().map(claim_json).collect();
    Ok(Json(serde_json::json!({ "claims": list })).into_response())
}

async fn peer_claims(
    State(state): State<ApiState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Response> {
    let peer = node_id(&id)?;
    claim_command(&state, Command::FetchClaims { peer }).await
}

fn tuple_json(t: &Tuple) -> KvTuple {
    KvTuple {
        key: t.key.clone(),
        value: t.value.clone(),
        version: t.version,
        author: t.author.to_hex(),
        signature: hex::encode(&t.signature),
    }
}

async fn kv_summary(State(state): State<ApiState>) -> Result<Json<KvSummary>, Response> {
    let (count, digest) = ask(&state, Input::KvSummary).await?;
    Ok(Json(KvSummary {
        count,
        digest: hex::encode(digest),
    }))
}

async fn kv_get(
    State(state): State<ApiState>,
    axum::extract::Path(key): axum::extract::Path<String>,
) -> Result<Json<KvTuple>, Response> {
    match ask(&state, |reply| Input::KvGet { key, reply }).await? {
        Some(t) => Ok(Json(tuple_json(&t))),
        None => Err(error(StatusCode::NOT_FOUND, "not_found", "no such key")),
    }
}

async fn kv_put(
    State(state): State<ApiState>,
    axum::extract::Path(key): axum::extract::Path<String>,
    body: Result<Json<KvPut>, JsonRejection>,
) -> Result<Json<KvTuple>, Response> {
    let value = json_body(body)?.value;
    match ask(&state, |reply| Input::KvPut { key, value, reply }).await? {
        Ok(t) => Ok(Json(tuple_json(&t))),
        Err(r) => Err(error(StatusCode::BAD_REQUEST, r.as_str(), r.to_string())),
    }
}

async fn stream_events(State(state): State<ApiState>) -> Response {
    events::sse(state.events.subscribe()).into_response()
}

async fn get_impairment(State(state): State<ApiState>) -> Json<Impairment> {
    Json(state.socket.impairment())
}

async fn put_impairment(
    State(state): State<ApiState>,
    body: Result<Json<Impairment>, JsonRejection>,
) -> Result<Response, Response> {
    let body = json_body(body)?;
    match state.socket.set_impairment(body) {
        Ok(()) => {
            // Loss is validated to 0..=100 %, so the product fits in a u32.
            let seen = chaosnet_proto::LinkImpairment {
                loss_ppm: (body.loss_pct * 10_000.0).round() as u32,
                delay_ms: body.delay_ms,
                jitter_ms: body.jitter_ms,
            };
            let _ = state.inputs.send(Input::Impairment(seen)).await;
            Ok(Json(body).into_response())
        }
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_impairment",
            e.to_string(),
        )),
    }
}

async fn reload_keys(State(state): State<ApiState>) -> Result<Response, Response> {
    let Some(keys) = &state.keys else {
        return Err(error(
            StatusCode::CONFLICT,
            "not_private",
            "not a private network: there are no network keys to reload",
        ));
    };
    match keys.reload() {
        Ok(loaded) => Ok(Json(loaded).into_response()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_key_file",
            format!("{e}; the keys in use are unchanged"),
        )),
    }
}
