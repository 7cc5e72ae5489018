//! A run's Grafana (`grafana server`, or the older `grafana-server`), started when one is
//! installed: a config and provisioning written into `<run dir>/grafana/` (127.0.0.1 on a free
//! port, anonymous viewers, its data, logs and plugins under the run directory), a
//! Prometheus datasource at the run's Prometheus, and the project's dashboards (embedded in
//! this binary, so an installed `chaosnet` works from anywhere).
//!
//! Rendering is pure ([`find_grafana`], [`grafana_home`], [`grafana_files`],
//! [`grafana_args`]); [`spawn`] writes the files and starts it. What it does not do: install
//! Grafana or wait for it to be ready.

use std::path::{Path, PathBuf};

use super::prometheus::SCRAPE_INTERVAL_S;
use super::{MonitorError, free_port, spawn_detached};

/// The project's dashboards, embedded so an installed binary can provision Grafana from
/// anywhere. (file name, JSON); a test checks this is every `dashboards/*.json`.
pub const DASHBOARDS: &[(&str, &str)] = &[
    (
        "network-health.json",
        include_str!("../../../dashboards/network-health.json"),
    ),
    ("agent.json", include_str!("../../../dashboards/agent.json")),
    ("chaos.json", include_str!("../../../dashboards/chaos.json")),
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

/// What [`spawn`] did.
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
pub fn spawn(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
