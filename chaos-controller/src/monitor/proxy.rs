//! `chaosnet serve`: the scrape proxy of a run, started detached by `up --monitor`.
//!
//! It listens on 127.0.0.1 and answers `GET /agents/<name>/metrics` (and `/status`) with the
//! agent's own answer, reached through the run's lab ([`Lab::agent`]), so it finds agents
//! wherever their runtime keeps their API. Agent names are checked against `[a-z0-9-]`, at
//! most 32 requests are served at once, and every agent call has a
//! timeout. What it does not do: cache, or serve anything else.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use super::MonitorError;
use crate::http::{self, Request};
use crate::lab::Lab;

/// Requests the proxy serves at once; more wait in the kernel's accept queue.
const MAX_PROXY_THREADS: usize = 32;
/// Longest an agent may take to answer one scrape.
const AGENT_TIMEOUT: Duration = Duration::from_secs(8);

/// Runs the scrape proxy of the run in `run_dir` in the foreground (see the module docs).
///
/// # Errors
/// The run cannot be found, or `listen` cannot be bound.
pub fn serve(run_dir: &Path, listen: SocketAddr) -> Result<(), MonitorError> {
    let lab =
        std::sync::Arc::new(Lab::adopt(run_dir).map_err(|e| MonitorError::Run(e.to_string()))?);
    let listener = TcpListener::bind(listen).map_err(|source| MonitorError::Io {
        path: std::path::PathBuf::from(listen.to_string()),
        source,
    })?;
    let active = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        while active.load(std::sync::atomic::Ordering::Acquire) >= MAX_PROXY_THREADS {
            std::thread::sleep(Duration::from_millis(5));
        }
        active.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let (lab, active) = (lab.clone(), active.clone());
        std::thread::spawn(move || {
            let _ = handle(stream, &lab);
            active.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        });
    }
    Ok(())
}

fn handle(stream: TcpStream, lab: &Lab) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let head = http::read_request(&mut std::io::BufReader::new(stream.try_clone()?))?;
    let path = head.path.as_str();
    let reply = match route(path) {
        Some((name, api_path)) => match lab
            .agent(name)
            .request(&Request::get(api_path), AGENT_TIMEOUT)
        {
            Ok(r) => (r.status, r.body),
            Err(e) => (502, format!("{e}\n")),
        },
        None => (404, "try /agents/<name>/metrics\n".to_string()),
    };
    let ctype = if reply.0 == 200 && path.ends_with("/metrics") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = stream;
    http::write_response(&mut out, reply.0, ctype, &reply.1)
}

/// `/agents/<name>/(metrics|status)` → (name, agent path).
fn route(path: &str) -> Option<(&str, &'static str)> {
    let rest = path.strip_prefix("/agents/")?;
    let (name, tail) = rest.split_once('/')?;
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return None;
    }
    match tail {
        "metrics" => Some((name, "/metrics")),
        "status" => Some((name, "/status")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_only_known_paths_of_well_named_agents() {
        assert_eq!(
            route("/agents/home-1/metrics"),
            Some(("home-1", "/metrics"))
        );
        assert_eq!(route("/agents/seed-0/status"), Some(("seed-0", "/status")));
        assert_eq!(route("/agents/../etc/metrics"), None);
        assert_eq!(route("/agents/a/b/metrics"), None);
        assert_eq!(route("/agents/A/metrics"), None);
        assert_eq!(route("/metrics"), None);
    }
}
