//! A run's Prometheus: its configuration (scrape the file_sd targets every
//! [`SCRAPE_INTERVAL_S`] s), the targets (every agent through the scrape proxy, labelled with
//! agent, site, NAT type and role; the controller's own `/metrics` as [`CONTROLLER_JOB`] while
//! it serves them: `up{job="chaosnet-agents"}` then counts agents only), and starting the
//! local `prometheus` binary. What it does not do: install Prometheus or query it (see
//! [`crate::chaos::probe::promql`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{MonitorError, spawn_detached};
use crate::plan::Plan;

/// Scrape interval written into the config, in seconds.
pub const SCRAPE_INTERVAL_S: u64 = 5;

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
                .map_or("none".to_string(), |s| s.nat.name().to_string());
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

/// Starts the local `prometheus` binary on `listen`, detached, storing data in the run
/// directory. Returns its pid, or `Ok(None)` when prometheus is not installed.
pub fn spawn(
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

#[cfg(test)]
mod tests {
    use super::*;

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
