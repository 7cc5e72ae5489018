//! Monitoring of a run: the Prometheus configuration, the scrape proxy, starting the local
//! `prometheus` binary, and starting a local Grafana when one is installed.
//!
//! Agents serve their API on unix sockets in the run directory, never on the emulated
//! internet. Prometheus cannot scrape a unix socket, so `chaosnet serve` (started by
//! `chaosnet up --monitor`, detached) listens on 127.0.0.1 and forwards
//! `GET /agents/<name>/metrics` to that agent's socket. The file_sd targets written here point
//! Prometheus at those paths, labelled with agent, site and NAT type.
//!
//! The controller's own `/metrics` (fault windows, recovery times; see
//! [`crate::chaos::metrics`]) is a target of its own job, [`CONTROLLER_JOB`], in the same
//! targets file, added and removed while `chaosnet run` or `chaosnet fault --duration` serves
//! it: `up{job="chaosnet-agents"}` then counts agents only.
//!
//! Grafana (`grafana server`, or the older `grafana-server`) gets a config and provisioning
//! written into `<run dir>/grafana/`: 127.0.0.1 on a free port, anonymous viewers, its data,
//! logs and plugins under the run directory, a Prometheus datasource at the run's
//! Prometheus, and the project's dashboards (embedded in this binary, so an installed
//! `chaosnet` works from anywhere). What it does not do: install Grafana or wait for it to
//! be ready.
//!
//! Rendering is pure ([`prometheus_config`], [`file_sd_targets`], [`find_grafana`],
//! [`grafana_home`], [`grafana_files`], [`grafana_args`]); the proxy and process management
//! touch the system.

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

    /// Stops every monitoring process (SIGTERM; they hold no state worth a graceful wait).
    pub fn stop(&self) -> usize {
        let mut n = 0;
        for pid in [self.proxy_pid, self.prometheus_pid, self.grafana_pid]
            .into_iter()
            .flatten()
        {
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
    let targets = targets_path(run_dir);
    let text = serde_json::to_string_pretty(&file_sd_targets(plan, proxy)).unwrap_or_default();
    std::fs::write(&targets, text).map_err(io(&targets))?;
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, prometheus_config(&targets)).map_err(io(&config))?;
    Ok(config)
}

/// Job label of the controller's target (the agents' is `chaosnet-agents`, the job name of
/// the one scrape config; a file_sd `job` label overrides it).
pub const CONTROLLER_JOB: &str = "chaosnet-controller";

/// The target group of a controller serving its `/metrics` on `addr` for run `run_id`.
pub fn controller_target(run_id: &str, addr: SocketAddr) -> TargetGroup {
    let labels = [
        ("__metrics_path__", "/metrics"),
        ("job", CONTROLLER_JOB),
        ("role", "controller"),
        ("run", run_id),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    TargetGroup {
        targets: vec![addr.to_string()],
        labels,
    }
}

/// The run's Prometheus file_sd targets file.
fn targets_path(run_dir: &Path) -> PathBuf {
    run_dir.join("prometheus").join("targets.json")
}

/// Rewrites `<run dir>/prometheus/targets.json` through `change` (write to a temporary file,
/// then rename, so Prometheus never reads half a file). `Ok(false)` when the run has no
/// targets file (it is not monitored).
fn update_targets(
    run_dir: &Path,
    change: impl FnOnce(&mut Vec<TargetGroup>),
) -> Result<bool, MonitorError> {
    let path = targets_path(run_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(MonitorError::Io { path, source }),
    };
    let mut groups: Vec<TargetGroup> =
        serde_json::from_str(&text).map_err(|e| MonitorError::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
    change(&mut groups);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(&groups).unwrap_or_default();
    std::fs::write(&tmp, text).map_err(|source| MonitorError::Io {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, &path).map_err(|source| MonitorError::Io { path, source })?;
    Ok(true)
}

/// Adds a controller's `/metrics` to the run's Prometheus targets. `Ok(false)` when the run
/// is not monitored.
pub fn add_controller_target(
    run_dir: &Path,
    run_id: &str,
    addr: SocketAddr,
) -> Result<bool, MonitorError> {
    let group = controller_target(run_id, addr);
    update_targets(run_dir, |groups| {
        if !groups.contains(&group) {
            groups.push(group);
        }
    })
}

/// Removes the controller target at `addr` (when the controller stops serving, so
/// Prometheus does not keep scraping a closed port, which would read as a target down).
pub fn remove_controller_target(run_dir: &Path, addr: SocketAddr) -> Result<bool, MonitorError> {
    let addr = addr.to_string();
    update_targets(run_dir, |groups| {
        groups.retain(|g| {
            !(g.labels.get("job").map(String::as_str) == Some(CONTROLLER_JOB)
                && g.targets == [addr.clone()])
        });
    })
}

/// The project's dashboards, embedded so an installed binary can provision Grafana from
/// anywhere. (file name, JSON); a test checks this is every `dashboards/*.json`.
pub const DASHBOARDS: &[(&str, &str)] = &[
    (
        "network-health.json",
        include_str!("../../dashboards/network-health.json"),
    ),
    ("agent.json", include_str!("../../dashboards/agent.json")),
    ("chaos.json", include_str!("../../dashboards/chaos.json")),
];

/// The dashboard Grafana opens on: the whole network.
const HOME_DASHBOARD: &str = "network-health.json";

/// How to start Grafana.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrafanaBin {
    /// The executable.
    pub path: PathBuf,
    /// `grafana` (Grafana 10 and later) takes a `server` subcommand; `grafana-server` does
    /// not.
    pub server_subcommand: bool,
}

/// Finds Grafana in `dirs` (the PATH, in order), given how to tell an executable file. In
/// each directory the `grafana` CLI wins over `grafana-server`, which newer releases keep
/// only as a deprecated wrapper around `grafana server`.
pub fn find_grafana(dirs: &[PathBuf], is_executable: impl Fn(&Path) -> bool) -> Option<GrafanaBin> {
    dirs.iter().find_map(|d| {
        let cli = d.join("grafana");
        if is_executable(&cli) {
            return Some(GrafanaBin {
                path: cli,
                server_subcommand: true,
            });
        }
        let server = d.join("grafana-server");
        is_executable(&server).then_some(GrafanaBin {
            path: server,
            server_subcommand: false,
        })
    })
}

/// Grafana's home (`--homepath`: the directory with `conf/defaults.ini` and `public/`), which
/// the binary needs when it is not started from there. Tried in order: `$GF_PATHS_HOME` (as in
/// Grafana's own image), the parent of the binary's directory (a release tarball:
/// `<home>/bin/grafana`; pass the binary with symlinks resolved), then where the deb/rpm and
/// Homebrew packages put it.
pub fn grafana_home(
    bin: &Path,
    env_home: Option<&Path>,
    exists: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = env_home.map(Path::to_path_buf).into_iter().collect();
    if let Some(home) = bin.parent().and_then(Path::parent) {
        candidates.push(home.to_path_buf());
    }
    candidates.extend(
        [
            "/usr/share/grafana",
            "/usr/local/share/grafana",
            "/opt/homebrew/share/grafana",
        ]
        .map(PathBuf::from),
    );
    candidates
        .into_iter()
        .find(|c| exists(&c.join("conf").join("defaults.ini")))
}

/// Where a run's Grafana lives and what it shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrafanaSetup {
    /// `<run dir>/grafana`.
    pub dir: PathBuf,
    /// Port on 127.0.0.1.
    pub http_port: u16,
    /// The run's Prometheus, e.g. `http://127.0.0.1:9090`.
    pub prometheus_url: String,
    /// Run id, for the comments.
    pub run_id: String,
}

impl GrafanaSetup {
    /// `grafana.ini`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("grafana.ini")
    }

    /// The URL people open.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.http_port)
    }
}

/// A YAML double-quoted scalar (JSON strings are valid YAML).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Every file of a run's Grafana, as (path, content): `grafana.ini`, the datasource and
/// dashboard provisioning, and the dashboards. Directories the config names but nothing
/// writes into (data, logs, plugins, empty provisioning kinds) are [`grafana_dirs`].
pub fn grafana_files(g: &GrafanaSetup) -> Vec<(PathBuf, String)> {
    let d = &g.dir;
    let dashboards = d.join("dashboards");
    let config = format!(
        "; Written by chaosnet for run {run}: Grafana on 127.0.0.1:{port} with anonymous\n\
         ; viewers, its state under this directory, provisioned with the run's Prometheus and\n\
         ; the chaosnet dashboards. `chaosnet down` stops it.\n\
         [paths]\n\
         data = {data}\n\
         logs = {logs}\n\
         plugins = {plugins}\n\
         provisioning = {prov}\n\
         \n\
         [server]\n\
         http_addr = 127.0.0.1\n\
         http_port = {port}\n\
         root_url = {url}\n\
         \n\
         [auth.anonymous]\n\
         ; The printed URL opens the dashboards without a login (127.0.0.1 only).\n\
         enabled = true\n\
         org_name = Main Org.\n\
         org_role = Viewer\n\
         \n\
         [users]\n\
         allow_sign_up = false\n\
         \n\
         [analytics]\n\
         reporting_enabled = false\n\
         check_for_updates = false\n\
         check_for_plugin_updates = false\n\
         \n\
         [news]\n\
         news_feed_enabled = false\n\
         \n\
         [dashboards]\n\
         default_home_dashboard_path = {home}\n\
         \n\
         [log]\n\
         mode = file\n",
        run = g.run_id,
        port = g.http_port,
        url = g.url(),
        data = d.join("data").display(),
        logs = d.join("logs").display(),
        plugins = d.join("plugins").display(),
        prov = d.join("provisioning").display(),
        home = dashboards.join(HOME_DASHBOARD).display(),
    );
    let datasource = format!(
        "# Written by chaosnet: the Prometheus of run {run}.\n\
         apiVersion: 1\n\
         datasources:\n\
         \x20 - name: {name}\n\
         \x20   type: prometheus\n\
         \x20   uid: chaosnet-prometheus\n\
         \x20   access: proxy\n\
         \x20   url: {url}\n\
         \x20   isDefault: true\n\
         \x20   editable: false\n\
         \x20   jsonData:\n\
         \x20     timeInterval: {SCRAPE_INTERVAL_S}s\n",
        run = g.run_id,
        name = yaml_str(&format!("chaosnet {}", g.run_id)),
        url = yaml_str(&g.prometheus_url),
    );
    let provider = format!(
        "# Written by chaosnet: the chaosnet dashboards, from {dir}.\n\
         apiVersion: 1\n\
         providers:\n\
         \x20 - name: chaosnet\n\
         \x20   orgId: 1\n\
         \x20   folder: chaosnet\n\
         \x20   type: file\n\
         \x20   disableDeletion: true\n\
         \x20   allowUiUpdates: false\n\
         \x20   options:\n\
         \x20     path: {path}\n\
         \x20     foldersFromFilesStructure: false\n",
        dir = dashboards.display(),
        path = yaml_str(&dashboards.display().to_string()),
    );
    let prov = d.join("provisioning");
    let mut files = vec![
        (g.config_path(), config),
        (prov.join("datasources").join("chaosnet.yaml"), datasource),
        (prov.join("dashboards").join("chaosnet.yaml"), provider),
    ];
    files.extend(
        DASHBOARDS
            .iter()
            .map(|(name, json)| (dashboards.join(name), (*json).to_string())),
    );
    files
}

/// Directories a run's Grafana needs that [`grafana_files`] writes nothing into (Grafana
/// logs an error for a missing provisioning kind).
pub fn grafana_dirs(g: &GrafanaSetup) -> Vec<PathBuf> {
    let prov = g.dir.join("provisioning");
    vec![
        g.dir.join("data"),
        g.dir.join("logs"),
        g.dir.join("plugins"),
        prov.join("plugins"),
        prov.join("alerting"),
        prov.join("notifiers"),
    ]
}

/// The arguments that start Grafana with a config and home.
pub fn grafana_args(bin: &GrafanaBin, home: &Path, config: &Path) -> Vec<String> {
    let mut args = Vec::new();
    if bin.server_subcommand {
        args.push("server".to_string());
    }
    args.push(format!("--homepath={}", home.display()));
    args.push(format!("--config={}", config.display()));
    args
}

/// What [`spawn_grafana`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrafanaStart {
    /// Started, detached.
    Started {
        /// Its pid.
        pid: u32,
        /// Its URL.
        url: String,
    },
    /// Neither `grafana` nor `grafana-server` is on the PATH.
    NotInstalled,
    /// Installed, but its home (`conf/defaults.ini`) was not found.
    NoHome {
        /// The binary found.
        bin: PathBuf,
    },
}

/// The directories searched for Grafana: the PATH, then the sbin directories packages use
/// (root's PATH under sudo may lack them).
fn search_dirs() -> Vec<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path_var).collect();
    for d in ["/usr/sbin", "/usr/local/sbin"] {
        let d = PathBuf::from(d);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Starts Grafana for a run (when installed), detached, with everything written into
/// `<run dir>/grafana`.
pub fn spawn_grafana(
    run_dir: &Path,
    run_id: &str,
    prometheus_url: &str,
) -> Result<GrafanaStart, MonitorError> {
    let Some(bin) = find_grafana(&search_dirs(), is_executable) else {
        return Ok(GrafanaStart::NotInstalled);
    };
    let real = std::fs::canonicalize(&bin.path).unwrap_or_else(|_| bin.path.clone());
    let env_home = std::env::var_os("GF_PATHS_HOME").map(PathBuf::from);
    let Some(home) = grafana_home(&real, env_home.as_deref(), Path::exists) else {
        return Ok(GrafanaStart::NoHome { bin: bin.path });
    };
    let setup = GrafanaSetup {
        dir: run_dir.join("grafana"),
        http_port: free_port()?,
        prometheus_url: prometheus_url.to_string(),
        run_id: run_id.to_string(),
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MonitorError::Io { path, source }
    };
    for dir in grafana_dirs(&setup) {
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    }
    for (path, text) in grafana_files(&setup) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    let args = grafana_args(&bin, &home, &setup.config_path());
    let pid = spawn_detached("grafana", &bin.path, &args, &setup.dir.join("grafana.log"))?;
    Ok(GrafanaStart::Started {
        pid,
        url: setup.url(),
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

    fn setup() -> GrafanaSetup {
        GrafanaSetup {
            dir: PathBuf::from("/runs/abc123/grafana"),
            http_port: 43210,
            prometheus_url: "http://127.0.0.1:19090".into(),
            run_id: "abc123".into(),
        }
    }

    /// `[section] key = value` lines of an ini file, comments skipped.
    fn ini(text: &str) -> std::collections::BTreeMap<(String, String), String> {
        let mut out = std::collections::BTreeMap::new();
        let mut section = String::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
                continue;
            }
            let (k, v) = line.split_once('=').expect("key = value");
            let key = (section.clone(), k.trim().to_string());
            assert!(
                out.insert(key, v.trim().to_string()).is_none(),
                "{line} twice"
            );
        }
        out
    }

    fn file<'a>(files: &'a [(PathBuf, String)], path: &str) -> &'a str {
        files
            .iter()
            .find(|(p, _)| p == Path::new(path))
            .map(|(_, t)| t.as_str())
            .unwrap_or_else(|| {
                panic!(
                    "{path} not written: {:?}",
                    files.iter().map(|f| &f.0).collect::<Vec<_>>()
                )
            })
    }

    #[test]
    fn grafana_config_listens_on_loopback_lets_viewers_in_and_keeps_state_in_the_run() {
        let g = setup();
        let files = grafana_files(&g);
        let c = ini(file(&files, "/runs/abc123/grafana/grafana.ini"));
        let get = |s: &str, k: &str| {
            c.get(&(s.to_string(), k.to_string()))
                .unwrap_or_else(|| panic!("[{s}] {k} in {c:?}"))
                .as_str()
        };
        assert_eq!(get("server", "http_addr"), "127.0.0.1");
        assert_eq!(get("server", "http_port"), "43210");
        assert_eq!(g.url(), "http://127.0.0.1:43210/");
        assert_eq!(get("auth.anonymous", "enabled"), "true");
        assert_eq!(get("auth.anonymous", "org_role"), "Viewer");
        for (k, sub) in [
            ("data", "data"),
            ("logs", "logs"),
            ("plugins", "plugins"),
            ("provisioning", "provisioning"),
        ] {
            assert_eq!(get("paths", k), format!("/runs/abc123/grafana/{sub}"));
        }
        assert_eq!(
            get("dashboards", "default_home_dashboard_path"),
            "/runs/abc123/grafana/dashboards/network-health.json"
        );
        assert_eq!(get("analytics", "reporting_enabled"), "false");
        let dirs = grafana_dirs(&g);
        for d in ["data", "logs", "plugins", "provisioning/plugins"] {
            assert!(dirs.contains(&g.dir.join(d)), "{d} created");
        }
        // Every file lives under the run's grafana directory.
        assert!(files.iter().all(|(p, _)| p.starts_with(&g.dir)));
    }

    #[test]
    fn grafana_provisioning_parses_back_to_the_runs_prometheus_and_the_dashboards() {
        let g = setup();
        let files = grafana_files(&g);
        let ds: serde_json::Value = serde_saphyr::from_str(file(
            &files,
            "/runs/abc123/grafana/provisioning/datasources/chaosnet.yaml",
        ))
        .expect("datasource YAML");
        assert_eq!(ds["apiVersion"], 1);
        let d = &ds["datasources"][0];
        assert_eq!(d["type"], "prometheus");
        assert_eq!(d["url"], "http://127.0.0.1:19090");
        assert_eq!(d["access"], "proxy");
        assert_eq!(d["isDefault"], true);
        assert_eq!(d["name"], "chaosnet abc123");
        assert_eq!(ds["datasources"].as_array().map(Vec::len), Some(1));
        let pr: serde_json::Value = serde_saphyr::from_str(file(
            &files,
            "/runs/abc123/grafana/provisioning/dashboards/chaosnet.yaml",
        ))
        .expect("provider YAML");
        let p = &pr["providers"][0];
        assert_eq!(p["type"], "file");
        assert_eq!(p["options"]["path"], "/runs/abc123/grafana/dashboards");
        // The provider's directory holds every dashboard, each valid JSON with its uid.
        for (name, json) in DASHBOARDS {
            let text = file(&files, &format!("/runs/abc123/grafana/dashboards/{name}"));
            assert_eq!(text, *json);
            let v: serde_json::Value = serde_json::from_str(text).expect("dashboard JSON");
            assert!(
                v["uid"]
                    .as_str()
                    .is_some_and(|u| u.starts_with("chaosnet-")),
                "{name}"
            );
        }
    }

    #[test]
    fn the_embedded_dashboards_are_every_dashboard_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("dashboards/")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = DASHBOARDS.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
        assert!(DASHBOARDS.iter().any(|(n, _)| *n == HOME_DASHBOARD));
    }

    #[test]
    fn grafana_is_found_on_the_path_newer_cli_first_within_a_directory() {
        let dirs: Vec<PathBuf> = ["/home/u/bin", "/usr/local/bin", "/usr/sbin"]
            .map(PathBuf::from)
            .to_vec();
        let only =
            |set: &'static [&'static str]| move |p: &Path| set.iter().any(|s| p == Path::new(s));
        assert_eq!(find_grafana(&dirs, only(&[])), None);
        assert_eq!(
            find_grafana(&dirs, only(&["/usr/sbin/grafana-server"])),
            Some(GrafanaBin {
                path: "/usr/sbin/grafana-server".into(),
                server_subcommand: false
            })
        );
        assert_eq!(
            find_grafana(
                &dirs,
                only(&["/usr/sbin/grafana-server", "/usr/sbin/grafana"])
            ),
            Some(GrafanaBin {
                path: "/usr/sbin/grafana".into(),
                server_subcommand: true
            })
        );
        // PATH order decides between directories.
        assert_eq!(
            find_grafana(
                &dirs,
                only(&["/usr/local/bin/grafana-server", "/usr/sbin/grafana"])
            )
            .map(|b| b.path),
            Some(PathBuf::from("/usr/local/bin/grafana-server"))
        );
        // Something else named like a Grafana directory does not count.
        assert_eq!(find_grafana(&dirs, only(&["/usr/sbin/grafana-cli"])), None);
    }

    #[test]
    fn grafana_home_is_the_env_then_the_tarball_then_the_packages() {
        let has =
            |set: &'static [&'static str]| move |p: &Path| set.iter().any(|s| p == Path::new(s));
        let tar = Path::new("/opt/grafana-11/bin/grafana");
        assert_eq!(
            grafana_home(
                tar,
                Some(Path::new("/srv/gf")),
                has(&[
                    "/srv/gf/conf/defaults.ini",
                    "/opt/grafana-11/conf/defaults.ini"
                ])
            ),
            Some(PathBuf::from("/srv/gf"))
        );
        assert_eq!(
            grafana_home(
                tar,
                None,
                has(&[
                    "/opt/grafana-11/conf/defaults.ini",
                    "/usr/share/grafana/conf/defaults.ini"
                ])
            ),
            Some(PathBuf::from("/opt/grafana-11"))
        );
        assert_eq!(
            grafana_home(
                Path::new("/usr/sbin/grafana-server"),
                Some(Path::new("/nowhere")),
                has(&["/usr/share/grafana/conf/defaults.ini"])
            ),
            Some(PathBuf::from("/usr/share/grafana"))
        );
        assert_eq!(grafana_home(tar, None, has(&[])), None);
    }

    #[test]
    fn grafana_args_use_the_server_subcommand_only_for_the_cli() {
        let cli = GrafanaBin {
            path: "/usr/sbin/grafana".into(),
            server_subcommand: true,
        };
        let old = GrafanaBin {
            path: "/usr/sbin/grafana-server".into(),
            server_subcommand: false,
        };
        let (home, cfg) = (
            Path::new("/usr/share/grafana"),
            Path::new("/r/grafana/grafana.ini"),
        );
        assert_eq!(
            grafana_args(&cli, home, cfg),
            [
                "server",
                "--homepath=/usr/share/grafana",
                "--config=/r/grafana/grafana.ini"
            ]
        );
        assert_eq!(
            grafana_args(&old, home, cfg),
            [
                "--homepath=/usr/share/grafana",
                "--config=/r/grafana/grafana.ini"
            ]
        );
    }

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
    fn the_controller_target_is_its_own_job_added_once_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr: SocketAddr = "127.0.0.1:4567".parse().expect("addr");
        // Not monitored: nothing to do.
        assert!(!add_controller_target(dir.path(), "r1", addr).expect("no file is fine"));
        let prom = dir.path().join("prometheus");
        std::fs::create_dir_all(&prom).expect("mkdir");
        let agent = TargetGroup {
            targets: vec!["127.0.0.1:1".into()],
            labels: [("agent".to_string(), "seed-0".to_string())]
                .into_iter()
                .collect(),
        };
        std::fs::write(
            prom.join("targets.json"),
            serde_json::to_string(&vec![agent.clone()]).expect("json"),
        )
        .expect("write");
        let read = || -> Vec<TargetGroup> {
            serde_json::from_str(&std::fs::read_to_string(prom.join("targets.json")).expect("read"))
                .expect("json")
        };
        assert!(add_controller_target(dir.path(), "r1", addr).expect("add"));
        assert!(add_controller_target(dir.path(), "r1", addr).expect("add again"));
        let groups = read();
        assert_eq!(groups.len(), 2, "{groups:?}");
        let c = &groups[1];
        assert_eq!(c.targets, ["127.0.0.1:4567"]);
        assert_eq!(c.labels["job"], CONTROLLER_JOB);
        assert_eq!(c.labels["role"], "controller");
        assert_eq!(c.labels["run"], "r1");
        assert_eq!(c.labels["__metrics_path__"], "/metrics");
        let other: SocketAddr = "127.0.0.1:9999".parse().expect("addr");
        assert!(remove_controller_target(dir.path(), other).expect("remove another"));
        assert_eq!(read().len(), 2);
        assert!(remove_controller_target(dir.path(), addr).expect("remove"));
        assert_eq!(read(), vec![agent]);
    }

    #[test]
    fn config_points_at_the_targets_file() {
        let text = prometheus_config(Path::new("/r/prometheus/targets.json"));
        assert!(text.contains("files: ['/r/prometheus/targets.json']"));
        assert!(text.contains("scrape_interval: 5s"));
    }
}
