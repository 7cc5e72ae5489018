//! Monitoring of a run: the Prometheus configuration, the scrape proxy, and starting the
//! local `prometheus` binary.
//!
//! Agents serve their API on unix sockets in the run directory, never on the emulated
//! internet. Prometheus cannot scrape a unix socket, so `chaosnet serve` (started by
//! `chaosnet up --monitor`, detached) listens on 127.0.0.1 and forwards
//! `GET /agents/<name>/metrics` to that agent's socket. The file_sd targets written here point
//! Prometheus at those paths, labelled with agent, site and NAT type.
//!
//! Rendering is pure ([`prometheus_config`], [`file_sd_targets`]); the proxy and process
//! management touch the system.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agentapi;
use crate::plan::Plan;

/// File in the run directory recording the monitoring processes.
pub const MONITOR_FILE: &str = "monitor.json";
/// Scrape interval written into the config, in seconds.
pub const SCRAPE_INTERVAL_S: u64 = 5;
/// Requests the proxy serves at once; more wait in the kernel's accept queue.
const MAX_PROXY_THREADS: usize = 32;

/// Why monitoring could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A process could not be started.
    #[error("cannot start {what}: {detail}")]
    Spawn {
        /// Which process.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

/// The monitoring processes of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorState {
    /// Pid of `chaosnet serve`.
    pub proxy_pid: Option<u32>,
    /// Its address.
    pub proxy_addr: Option<String>,
    /// Pid of prometheus, when started.
    pub prometheus_pid: Option<u32>,
    /// Prometheus' URL, when started.
    pub prometheus_url: Option<String>,
}

impl MonitorState {
    /// Loads it from a run directory (default when absent or unreadable).
    pub fn load(run_dir: &Path) -> MonitorState {
        std::fs::read_to_string(run_dir.join(MONITOR_FILE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// Saves it into a run directory.
    pub fn save(&self, run_dir: &Path) -> Result<(), MonitorError> {
        let path = run_dir.join(MONITOR_FILE);
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(&path, text).map_err(|source| MonitorError::Io { path, source })
    }

    /// Stops both processes (SIGTERM; they hold no state worth a graceful wait).
    pub fn stop(&self) -> usize {
        let mut n = 0;
        for pid in [self.proxy_pid, self.prometheus_pid].into_iter().flatten() {
            if let Ok(pid) = i32::try_from(pid)
                && nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                )
                .is_ok()
            {
                n += 1;
            }
        }
        n
    }
}

/// The Prometheus configuration of a run: scrape the file_sd targets every 5 s.
pub fn prometheus_config(targets_file: &Path) -> String {
    format!(
        "# Written by chaosnet: scrapes every agent of this run through `chaosnet serve`.\n\
         global:\n  scrape_interval: {SCRAPE_INTERVAL_S}s\n  evaluation_interval: {SCRAPE_INTERVAL_S}s\n\
         scrape_configs:\n  - job_name: chaosnet-agents\n    file_sd_configs:\n      - files: ['{}']\n        refresh_interval: 5s\n",
        targets_file.display()
    )
}

/// One file_sd target group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetGroup {
    /// `host:port` of the proxy.
    pub targets: Vec<String>,
    /// Labels, including `__metrics_path__`.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The file_sd targets: one group per agent, all through the proxy at `proxy`.
pub fn file_sd_targets(plan: &Plan, proxy: SocketAddr) -> Vec<TargetGroup> {
    plan.agents
        .iter()
        .map(|a| {
            let nat = plan
                .sites
                .iter()
                .find(|s| s.name == a.site)
                .map_or("none".to_string(), |s| {
                    crate::scenario::nat_name(s.nat).to_string()
                });
            let labels = [
                ("__metrics_path__", format!("/agents/{}/metrics", a.name)),
                ("agent", a.name.clone()),
                ("site", a.site.clone()),
                ("nat", nat),
                ("role", if a.seed { "seed".into() } else { "peer".into() }),
                ("run", plan.run_id.0.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            TargetGroup {
                targets: vec![proxy.to_string()],
                labels,
            }
        })
        .collect()
}

/// Writes `prometheus/prometheus.yml` and `prometheus/targets.json` into the run directory.
/// Returns the config path.
pub fn write_config(
    run_dir: &Path,
    plan: &Plan,
    proxy: SocketAddr,
) -> Result<PathBuf, MonitorError> {
    let dir = run_dir.join("prometheus");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MonitorError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let targets = dir.join("targets.json");
    let text = serde_json::to_string_pretty(&file_sd_targets(plan, proxy)).unwrap_or_default();
    std::fs::write(&targets, text).map_err(io(&targets))?;
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, prometheus_config(&targets)).map_err(io(&config))?;
    Ok(config)
}

/// Picks a free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16, MonitorError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|source| MonitorError::Io {
        path: PathBuf::from("127.0.0.1:0"),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| MonitorError::Io {
            path: PathBuf::from("127.0.0.1:0"),
            source,
        })
}

/// Starts `program args...` under `setsid` (own session, detached from the controller),
/// with stdout and stderr appended to `log`. Returns its pid.
fn spawn_detached(
    what: &'static str,
    program: &Path,
    args: &[String],
    log: &Path,
) -> Result<u32, MonitorError> {
    let io = |source| MonitorError::Io {
        path: log.to_path_buf(),
        source,
    };
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io)?;
    let err = out.try_clone().map_err(io)?;
    let child = Command::new("setsid")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| MonitorError::Spawn {
            what,
            detail: format!("{e} (needs setsid from util-linux)"),
        })?;
    Ok(child.id())
}

/// Starts `exe serve --run-dir D --listen ADDR` detached (own session), returning its pid.
pub fn spawn_proxy(exe: &Path, run_dir: &Path, listen: SocketAddr) -> Result<u32, MonitorError> {
    let args = vec![
        "serve".into(),
        "--run-dir".into(),
        run_dir.display().to_string(),
        "--listen".into(),
        listen.to_string(),
    ];
    spawn_detached("chaosnet serve", exe, &args, &run_dir.join("serve.log"))
}

/// Starts the local `prometheus` binary on `listen`, detached, storing data in the run
/// directory. Returns its pid, or `Ok(None)` when prometheus is not installed.
pub fn spawn_prometheus(
    run_dir: &Path,
    config: &Path,
    listen: SocketAddr,
) -> Result<Option<u32>, MonitorError> {
    let Some(bin) = crate::apply::which("prometheus") else {
        return Ok(None);
    };
    let dir = run_dir.join("prometheus");
    let args = vec![
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address={listen}"),
        "--web.enable-lifecycle".to_string(),
    ];
    spawn_detached("prometheus", &bin, &args, &dir.join("prometheus.log")).map(Some)
}

/// Runs the scrape proxy in the foreground: `GET /agents/<name>/metrics` (and `/status`) is
/// forwarded to `<run_dir>/agents/<name>/api.sock`. Agent names are checked against
/// `[a-z0-9-]` so a request cannot reach outside the run directory.
pub fn serve(run_dir: &Path, listen: SocketAddr) -> Result<(), MonitorError> {
    let listener = TcpListener::bind(listen).map_err(|source| MonitorError::Io {
        path: PathBuf::from(listen.to_string()),
        source,
    })?;
    let active = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        while active.load(std::sync::atomic::Ordering::Acquire) >= MAX_PROXY_THREADS {
            std::thread::sleep(Duration::from_millis(5));
        }
        active.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let (run_dir, active) = (run_dir.to_path_buf(), active.clone());
        std::thread::spawn(move || {
            let _ = handle(stream, &run_dir);
            active.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        });
    }
    Ok(())
}

fn handle(stream: TcpStream, run_dir: &Path) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.by_ref().take(8192).read_line(&mut line)?;
    // Drain the headers; the request has no body.
    loop {
        let mut h = String::new();
        if reader.by_ref().take(8192).read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let mut out = stream;
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let reply = match route(path) {
        Some((name, api_path)) => {
            let socket = run_dir.join("agents").join(name).join("api.sock");
            match agentapi::get(&socket, api_path, Duration::from_secs(8)) {
                Ok(r) => (r.status, r.body),
                Err(e) => (502, format!("{e}\n")),
            }
        }
        None => (404, "try /agents/<name>/metrics\n".to_string()),
    };
    let ctype = if reply.0 == 200 && path.ends_with("/metrics") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    write!(
        out,
        "HTTP/1.1 {} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        reply.0,
        reply.1.len(),
        reply.1
    )?;
    out.flush()
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

    #[test]
    fn config_points_at_the_targets_file() {
        let text = prometheus_config(Path::new("/r/prometheus/targets.json"));
        assert!(text.contains("files: ['/r/prometheus/targets.json']"));
        assert!(text.contains("scrape_interval: 5s"));
    }
}
