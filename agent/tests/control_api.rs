//! Tier 2: the control API is open only to whom it should be. A TCP API off loopback needs a
//! token, and with a token every route needs it; a unix API socket is mode 0600, and the
//! agent replaces a stale socket at its path but never a regular file or a live socket.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use common::{Agent, AgentConfig, http_unix, http_with};

const TOKEN: &str = "test-token-0123456789abcdef";

/// Every route of the API, with a body the handler would accept.
const ROUTES: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/metrics", None),
    ("GET", "/status", None),
    ("GET", "/peers", None),
    ("POST", "/connect", Some(r#"{"node_id": "00"}"#)),
    ("POST", "/lookup", Some(r#"{"node_id": "00"}"#)),
    ("POST", "/echo", Some(r#"{"node_id": "00"}"#)),
    ("POST", "/tasks", Some(r#"{"paused": true}"#)),
    ("GET", "/impairment", None),
    (
        "PUT",
        "/impairment",
        Some(r#"{"loss_pct": 0, "delay_ms": 0, "jitter_ms": 0}"#),
    ),
];

/// Waits (bounded) for the process to exit.
#[track_caller]
fn wait_exit(a: &mut Agent, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = a.exited() {
            return st;
        }
        if Instant::now() > deadline {
            a.fail(&format!(
                "the agent was expected to refuse to start within {within:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_tcp_api_off_loopback_needs_a_token_and_then_every_route_does() {
    let mut a = Agent::prepare("open-api", AgentConfig::mainnet(41));
    a.config.api_arg = Some(format!("0.0.0.0:{}", a.api.port()));
    a.start();
    let st = wait_exit(&mut a, Duration::from_secs(20));
    if st.code() != Some(2) || !a.log_tail(5).contains("--api-token-file") {
        a.fail(&format!(
            "--api 0.0.0.0 without a token: expected exit 2 naming --api-token-file, got {st}"
        ));
    }

    a.config.token = Some(TOKEN.to_string());
    a.start();
    a.wait_ready();
    let t = Duration::from_secs(15);
    for (method, path, body) in ROUTES {
        for token in [None, Some("wrong-token-0123456789"), Some(&TOKEN[1..])] {
            match http_with(a.api, method, path, *body, token, t) {
                Ok(r) if r.status == 401 => {}
                Ok(r) => a.fail(&format!(
                    "{method} {path} with token {token:?}: expected 401, got {} {}",
                    r.status, r.body
                )),
                Err(e) => a.fail(&format!("{method} {path}: {e}")),
            }
        }
    }
    // With the token the routes answer as usual.
    match http_with(a.api, "GET", "/status", None, Some(TOKEN), t) {
        Ok(r) if r.status == 200 && r.json()["node_id"] == a.node_id.as_str() => {}
        other => a.fail(&format!("GET /status with the token: {other:?}")),
    }
    match http_with(a.api, "PUT", "/impairment", ROUTES[8].2, Some(TOKEN), t) {
        Ok(r) if r.status == 200 => {}
        other => a.fail(&format!("PUT /impairment with the token: {other:?}")),
    }
}

#[test]
fn a_unix_api_socket_is_0600_and_only_a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("api.sock");
    let api = Some(format!("unix:{}", path.display()));

    // A regular file at the path is refused and left as it was.
    std::fs::write(&path, "not a socket\n").expect("write the file");
    let mut a = Agent::prepare("unix-api", AgentConfig::mainnet(42));
    a.config.api_arg = api.clone();
    a.start();
    let st = wait_exit(&mut a, Duration::from_secs(20));
    let kept = std::fs::read_to_string(&path).unwrap_or_default();
    if st.code() != Some(2) || kept != "not a socket\n" {
        a.fail(&format!(
            "a regular file at the API path: expected exit 2 and the file kept, got {st} and {kept:?}"
        ));
    }

    // A stale socket (its listener is gone) is replaced, by a socket only we may use.
    std::fs::remove_file(&path).expect("remove the file");
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind a socket"));
    a.start();
    let deadline = Instant::now() + common::READY_TIMEOUT;
    loop {
        match http_unix(&path, "GET", "/status", None, Duration::from_secs(5)) {
            Ok(r) if r.status == 200 => break,
            _ if Instant::now() > deadline => {
                a.fail("the API on the stale socket's path never answered")
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let mode = std::fs::metadata(&path)
        .expect("stat the socket")
        .permissions()
        .mode()
        & 0o777;
    if mode != 0o600 {
        a.fail(&format!("the API socket is mode {mode:o}, expected 600"));
    }

    // A second agent on the same path finds it live: it is refused, the first keeps it.
    let mut b = Agent::prepare("unix-api-2", AgentConfig::mainnet(43));
    b.config.api_arg = api;
    b.start();
    let st = wait_exit(&mut b, Duration::from_secs(20));
    if st.code() != Some(2) {
        b.fail(&format!(
            "a second agent on a live API socket: expected exit 2, got {st}"
        ));
    }
    match http_unix(&path, "GET", "/status", None, Duration::from_secs(5)) {
        Ok(r) if r.status == 200 && r.json()["node_id"] == a.node_id.as_str() => {}
        other => a.fail(&format!("the first agent lost its API socket: {other:?}")),
    }
}
