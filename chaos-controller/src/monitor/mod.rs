//! Monitoring of a run: which processes watch it ([`MonitorState`], `monitor.json` in the
//! run directory), starting them ([`start`]) and stopping them.
//!
//! - [`prometheus`]: the Prometheus configuration and file_sd targets of a run (every agent
//!   through the scrape proxy, and the controller's own `/metrics` as a job of its own while
//!   `chaosnet run` or `chaosnet fault --duration` serves it), and starting the local
//!   `prometheus` binary;
//! - [`grafana`]: a run's Grafana (config, provisioning, the embedded dashboards), started
//!   when one is installed;
//! - [`proxy`]: `chaosnet serve`, the scrape proxy: Prometheus cannot reach agents' APIs (unix
//!   sockets in the run directory, never the emulated internet), so it listens on 127.0.0.1
//!   and forwards `GET /agents/<name>/metrics` to the agent through the run's lab.
//!
//! Stopping signals a recorded pid only when `/proc/<pid>/cmdline` shows the process
//! chaosnet started for this run ([`owns_cmdline`]): the executable's name and the run
//! directory among its arguments. A stale `monitor.json` whose pid now belongs to another
//! program leaves that program alone.
//!
//! Rendering is pure ([`prometheus::prometheus_config`], [`prometheus::file_sd_targets`],
//! [`grafana::grafana_files`]...); starting and stopping processes touches the system. What
//! it does not do: install Prometheus or Grafana, or wait for them to be ready.

pub mod grafana;
pub mod prometheus;
pub mod proxy;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use grafana::GrafanaStart;

use crate::plan::Plan;

/// File in the run directory recording the monitoring processes.
pub const MONITOR_FILE: &str = "monitor.json";

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
    /// The run to monitor cannot be found.
    #[error("{0}")]
    Run(String),
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
    /// Pid of Grafana, when started.
    #[serde(default)]
    pub grafana_pid: Option<u32>,
    /// Grafana's URL, when started.
    #[serde(default)]
    pub grafana_url: Option<String>,
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

    /// Stops every monitoring process of the run in `run_dir` (SIGTERM; they hold no state
    /// worth a graceful wait): each recorded pid only when its command line is the one
    /// chaosnet started ([`owns_cmdline`]). Returns how many were signalled.
    pub fn stop(&self, run_dir: &Path) -> usize {
        let dirs = run_dir_forms(run_dir);
        let mut n = 0;
        for (pid, names) in [
            (self.proxy_pid, PROXY_NAMES),
            (self.prometheus_pid, PROMETHEUS_NAMES),
            (self.grafana_pid, GRAFANA_NAMES),
        ] {
            let Some(pid) = pid else { continue };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            if !dirs.iter().any(|d| owns_cmdline(&cmdline, names, d)) {
                tracing::warn!(
                    pid,
                    cmdline = %String::from_utf8_lossy(&cmdline).replace('\0', " "),
                    "not stopping a pid from monitor.json: it is not this run's monitoring process"
                );
                continue;
            }
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

/// Executable names of the scrape proxy (`chaosnet serve`).
const PROXY_NAMES: &[&str] = &["chaosnet"];
/// Executable names of Prometheus.
const PROMETHEUS_NAMES: &[&str] = &["prometheus"];
/// Executable names of Grafana (the `grafana` binary, or the older `grafana-server`).
const GRAFANA_NAMES: &[&str] = &["grafana", "grafana-server"];

/// The forms in which a run directory can appear in a command line: as given, absolute
/// and canonical (symlinks resolved), without duplicates.
fn run_dir_forms(run_dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![run_dir.to_path_buf()];
    out.extend(std::path::absolute(run_dir).ok());
    out.extend(std::fs::canonicalize(run_dir).ok());
    out.dedup();
    out
}

/// True when `cmdline` (as in `/proc/<pid>/cmdline`: NUL-separated arguments) is a process
/// chaosnet started for the run in `run_dir`: its program's file name is one of `names`,
/// and an argument (or the value of an `--opt=value` argument) is `run_dir` or a path
/// inside it. Pure.
pub fn owns_cmdline(cmdline: &[u8], names: &[&str], run_dir: &Path) -> bool {
    if !run_dir.is_absolute() {
        return false;
    }
    let mut args = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(String::from_utf8_lossy);
    let Some(program) = args.next() else {
        return false;
    };
    let name = Path::new(program.as_ref())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !names.contains(&name.as_str()) {
        return false;
    }
    args.any(|a| {
        let value = match a.split_once('=') {
            Some((opt, v)) if opt.starts_with("--") => v,
            _ => a.as_ref(),
        };
        Path::new(value).starts_with(run_dir)
    })
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
pub(crate) fn spawn_detached(
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
fn spawn_proxy(exe: &Path, run_dir: &Path, listen: SocketAddr) -> Result<u32, MonitorError> {
    let args = vec![
        "serve".into(),
        "--run-dir".into(),
        run_dir.display().to_string(),
        "--listen".into(),
        listen.to_string(),
    ];
    spawn_detached("chaosnet serve", exe, &args, &run_dir.join("serve.log"))
}

/// What [`start`] started.
#[derive(Debug)]
pub struct Started {
    /// Where the scrape proxy listens.
    pub proxy: SocketAddr,
    /// The Prometheus config written.
    pub config: PathBuf,
    /// Prometheus' URL, when prometheus is installed.
    pub prometheus: Option<String>,
    /// What became of Grafana (only tried when Prometheus runs).
    pub grafana: Option<GrafanaStart>,
}

/// Starts a run's monitoring: the scrape proxy (`exe serve`), Prometheus on 127.0.0.1:`port`
/// when installed, and Grafana when installed and Prometheus runs. Each is recorded in
/// `monitor.json` as soon as it runs, so `down` stops it even when a later one fails.
///
/// # Errors
/// A process that cannot be started, or a file that cannot be written.
pub fn start(run_dir: &Path, plan: &Plan, exe: &Path, port: u16) -> Result<Started, MonitorError> {
    let proxy: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut st = MonitorState {
        proxy_pid: Some(spawn_proxy(exe, run_dir, proxy)?),
        ..Default::default()
    };
    st.proxy_addr = Some(proxy.to_string());
    st.save(run_dir)?;
    let config = prometheus::write_config(run_dir, plan, proxy)?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    if let Some(pid) = prometheus::spawn(run_dir, &config, listen)? {
        st.prometheus_pid = Some(pid);
        st.prometheus_url = Some(format!("http://{listen}"));
    }
    // Saved before Grafana starts, so `down` stops Prometheus even when Grafana fails.
    st.save(run_dir)?;
    let mut started = Started {
        proxy,
        config,
        prometheus: st.prometheus_url.clone(),
        grafana: None,
    };
    if let Some(prom) = st.prometheus_url.clone() {
        let g = grafana::spawn(run_dir, &plan.run_id.0, &prom)?;
        if let GrafanaStart::Started { pid, url } = &g {
            st.grafana_pid = Some(*pid);
            st.grafana_url = Some(url.clone());
        }
        started.grafana = Some(g);
    }
    st.save(run_dir)?;
    Ok(started)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_state_of_an_older_run_loads_without_grafana() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(MONITOR_FILE),
            r#"{"proxy_pid": 7, "proxy_addr": "127.0.0.1:1", "prometheus_pid": 8, "prometheus_url": "http://127.0.0.1:9090"}"#,
        )
        .expect("write");
        let st = MonitorState::load(dir.path());
        assert_eq!(st.prometheus_pid, Some(8));
        assert_eq!(st.grafana_pid, None);
        let st = MonitorState {
            grafana_pid: Some(9),
            grafana_url: Some("http://127.0.0.1:3000/".into()),
            ..st
        };
        st.save(dir.path()).expect("save");
        assert_eq!(MonitorState::load(dir.path()), st);
    }

    #[test]
    fn only_this_runs_monitoring_command_lines_are_owned() {
        let run = Path::new("/var/lib/chaosnet/runs/abc123");
        let cl = |args: &[&str]| args.join("\0").into_bytes();
        let proxy = cl(&[
            "/usr/local/bin/chaosnet",
            "serve",
            "--run-dir",
            "/var/lib/chaosnet/runs/abc123",
            "--listen",
            "127.0.0.1:4000",
        ]);
        assert!(owns_cmdline(&proxy, PROXY_NAMES, run));
        let prom = cl(&[
            "/usr/bin/prometheus",
            "--config.file=/var/lib/chaosnet/runs/abc123/prometheus/prometheus.yml",
            "--web.listen-address=127.0.0.1:9090",
        ]);
        assert!(owns_cmdline(&prom, PROMETHEUS_NAMES, run));
        let graf = cl(&[
            "/usr/share/grafana/bin/grafana",
            "server",
            "--config",
            "/var/lib/chaosnet/runs/abc123/grafana/grafana.ini",
        ]);
        assert!(owns_cmdline(&graf, GRAFANA_NAMES, run));
        // Another run's, another program, a recycled pid, nothing at all.
        assert!(!owns_cmdline(
            &proxy,
            PROXY_NAMES,
            Path::new("/var/lib/chaosnet/runs/abc12")
        ));
        assert!(!owns_cmdline(
            &proxy,
            PROXY_NAMES,
            Path::new("/var/lib/chaosnet/runs/ffffff")
        ));
        assert!(
            !owns_cmdline(&prom, PROXY_NAMES, run),
            "prometheus is not the proxy"
        );
        assert!(!owns_cmdline(&cl(&["sleep", "300"]), PROXY_NAMES, run));
        assert!(!owns_cmdline(
            &cl(&["/usr/bin/sleep", "/var/lib/chaosnet/runs/abc123"]),
            PROMETHEUS_NAMES,
            run
        ));
        assert!(!owns_cmdline(b"", PROXY_NAMES, run));
        // A relative run dir is never matched (it would match anything relative).
        assert!(!owns_cmdline(&proxy, PROXY_NAMES, Path::new("abc123")));
    }

    #[test]
    fn a_stale_pid_of_another_program_is_not_signalled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let st = MonitorState {
            proxy_pid: Some(child.id()),
            prometheus_pid: Some(child.id()),
            grafana_pid: Some(child.id()),
            ..Default::default()
        };
        assert_eq!(st.stop(dir.path()), 0);
        assert!(matches!(child.try_wait(), Ok(None)), "sleep still runs");
        let _ = child.kill();
        let _ = child.wait();
    }
}
