//! The container of an agent, as pure data: name, labels, limits, mounts and command line,
//! built from the agent's plan. Unit-tested without an engine; [`super::DockerRuntime`]
//! turns it into a create request.
//!
//! The container runs exactly the process runtime's command line (`chaosnet-agent` is the
//! image's entrypoint, the plan's args are the command) with the run directory as its
//! working directory, so the relative paths in the args resolve the same way. Three mounts
//! make those paths real inside the container:
//! - `<run>/agents/<agent>` (bind, read-write): the agent's control socket appears there on
//!   the host too, so the controller reaches the API through the file system as it does for
//!   processes;
//! - `<run>/agents/<agent>/data` (the named volume `chaosnet-<run>-<agent>`, labelled): the
//!   node key and the RocksDB node graph, kept across container restarts;
//! - each `--network-key-file` (bind, read-only) at its own absolute path.
//!
//! It does not decide the image or talk to the engine.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, RestartPolicy,
    RestartPolicyNameEnum,
};

use crate::plan::{AgentPlan, RunId};

/// Label carrying the run id on every container and volume chaosnet creates.
pub const LABEL_RUN: &str = "chaosnet.run";
/// Label carrying the agent name.
pub const LABEL_AGENT: &str = "chaosnet.agent";
/// Prefix of container and volume names: `chaosnet-<run>-<agent>`.
pub const NAME_PREFIX: &str = "chaosnet-";

/// Resource limits of one agent container. The defaults are caps, not reservations: an
/// agent of the default scenario uses a few tens of MiB and a small share of a core, so
/// they only stop a runaway agent from taking the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContainerLimits {
    /// Memory limit in bytes (also the memory+swap limit: no swap). Default 256 MiB.
    pub memory_bytes: i64,
    /// CPU limit in billionths of a CPU. Default 1 CPU (1_000_000_000).
    pub nano_cpus: i64,
    /// Most processes/threads in the container. Default 256 (the agent uses a tokio pool
    /// of one thread per core plus a few).
    pub pids: i64,
    /// Largest log file, in bytes, before the json-file driver rotates it; two files are
    /// kept. Default 10 MiB.
    pub log_file_bytes: u64,
}

impl Default for ContainerLimits {
    fn default() -> Self {
        ContainerLimits {
            memory_bytes: 256 * 1024 * 1024,
            nano_cpus: 1_000_000_000,
            pids: 256,
            log_file_bytes: 10 * 1024 * 1024,
        }
    }
}

/// Why a container spec could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The run directory must be absolute (it becomes a path inside the container).
    #[error("run directory {0:?} is not an absolute UTF-8 path")]
    RunDir(PathBuf),
    /// A path in the plan is not usable inside a container.
    #[error("agent {agent}: {what}")]
    Agent {
        /// The agent.
        agent: String,
        /// What is wrong.
        what: String,
    },
}

/// One agent's container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Container name, `chaosnet-<run>-<agent>`.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// The agent's arguments (the image's entrypoint is the agent).
    pub cmd: Vec<String>,
    /// The run directory (absolute, the same path inside and outside).
    pub working_dir: String,
    /// Labels (run id, agent name).
    pub labels: BTreeMap<String, String>,
    /// Name of the data volume.
    pub volume: String,
    /// Where the volume is mounted (the agent's data dir).
    pub data_dir: String,
    /// Bind mounts: (host path = container path, read-only).
    pub binds: Vec<(String, bool)>,
    /// Environment, `KEY=value`.
    pub env: Vec<String>,
    /// Limits.
    pub limits: ContainerLimits,
}

/// `chaosnet-<run>-<agent>`: the container and its volume share this name.
pub fn container_name(run: &RunId, agent: &str) -> String {
    format!("{NAME_PREFIX}{}-{agent}", run.0)
}

/// The labels of an agent's container and volume.
pub fn labels(run: &RunId, agent: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_RUN.to_string(), run.0.clone()),
        (LABEL_AGENT.to_string(), agent.to_string()),
    ])
}

fn abs_utf8(run_dir: &Path, rel: &Path, agent: &str) -> Result<String, SpecError> {
    if rel.is_absolute() || rel.components().any(|c| c.as_os_str() == "..") {
        return Err(SpecError::Agent {
            agent: agent.to_string(),
            what: format!("{} must be relative to the run directory", rel.display()),
        });
    }
    run_dir
        .join(rel)
        .to_str()
        .map(str::to_string)
        .ok_or_else(|| SpecError::Agent {
            agent: agent.to_string(),
            what: format!("{} is not UTF-8", rel.display()),
        })
}

impl ContainerSpec {
    /// The container of `agent` in run `run`, whose directory is `run_dir` (absolute).
    /// `env` is passed as is (the controller forwards `CHAOSNET_LOG`).
    ///
    /// # Errors
    /// [`SpecError`] when the run directory is relative or not UTF-8, or a plan path does
    /// not fit (absolute or with `..`).
    pub fn for_agent(
        run: &RunId,
        run_dir: &Path,
        agent: &AgentPlan,
        image: &str,
        limits: ContainerLimits,
        env: Vec<String>,
    ) -> Result<ContainerSpec, SpecError> {
        let working_dir = match run_dir.to_str() {
            Some(s) if run_dir.is_absolute() => s.to_string(),
            _ => return Err(SpecError::RunDir(run_dir.to_path_buf())),
        };
        let data_dir = abs_utf8(run_dir, &agent.data_dir, &agent.name)?;
        let socket = abs_utf8(run_dir, &agent.api_socket, &agent.name)?;
        let socket_dir = Path::new(&socket)
            .parent()
            .and_then(Path::to_str)
            .map(str::to_string)
            .ok_or_else(|| SpecError::Agent {
                agent: agent.name.clone(),
                what: "the API socket has no directory".into(),
            })?;
        let mut binds = vec![(socket_dir, false)];
        for pair in agent.args.windows(2) {
            if pair[0] == "--network-key-file" {
                if !Path::new(&pair[1]).is_absolute() {
                    return Err(SpecError::Agent {
                        agent: agent.name.clone(),
                        what: format!("network key file {:?} is not absolute", pair[1]),
                    });
                }
                binds.push((pair[1].clone(), true));
            }
        }
        let name = container_name(run, &agent.name);
        Ok(ContainerSpec {
            volume: name.clone(),
            name,
            image: image.to_string(),
            cmd: agent.args.clone(),
            working_dir,
            labels: labels(run, &agent.name),
            data_dir,
            binds,
            env,
            limits,
        })
    }

    /// The engine's create request.
    ///
    /// Besides the spec: network mode `none` (the runtime moves the lab link in after
    /// start), no restart policy (a container the engine restarted by itself would come up
    /// without its link), `ip_nonlocal_bind=1` in the container's namespace (the agent binds
    /// its lab address at once, before the link arrives; its first datagrams fail and QUIC
    /// retransmits them), every capability dropped and no-new-privileges (the agent needs
    /// none: its ports are above 1024), and a bounded json-file log.
    pub fn create_body(&self) -> ContainerCreateBody {
        let hash = |m: &BTreeMap<String, String>| -> HashMap<String, String> {
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let mut mounts: Vec<Mount> = self
            .binds
            .iter()
            .map(|(path, ro)| Mount {
                target: Some(path.clone()),
                source: Some(path.clone()),
                typ: Some(MountType::BIND),
                read_only: Some(*ro),
                ..Default::default()
            })
            .collect();
        mounts.push(Mount {
            target: Some(self.data_dir.clone()),
            source: Some(self.volume.clone()),
            typ: Some(MountType::VOLUME),
            read_only: Some(false),
            ..Default::default()
        });
        ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(self.cmd.clone()),
            working_dir: Some(self.working_dir.clone()),
            labels: Some(hash(&self.labels)),
            env: Some(self.env.clone()),
            network_disabled: Some(false),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                memory: Some(self.limits.memory_bytes),
                memory_swap: Some(self.limits.memory_bytes),
                nano_cpus: Some(self.limits.nano_cpus),
                pids_limit: Some(self.limits.pids),
                mounts: Some(mounts),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                sysctls: Some(HashMap::from([(
                    "net.ipv4.ip_nonlocal_bind".to_string(),
                    "1".to_string(),
                )])),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: Some(HashMap::from([
                        (
                            "max-size".to_string(),
                            self.limits.log_file_bytes.to_string(),
                        ),
                        ("max-file".to_string(), "2".to_string()),
                    ])),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner;
    use crate::scenario::Scenario;

    fn default_agent() -> (RunId, AgentPlan) {
        let run = RunId("abc123".into());
        let plan = planner::plan(&Scenario::default_scenario(), &run).expect("default plan");
        let agent = plan
            .agents
            .iter()
            .find(|a| !a.seed)
            .expect("a site agent")
            .clone();
        (run, agent)
    }

    #[test]
    fn spec_carries_labels_limits_mounts_and_the_process_command_line() {
        let (run, a) = default_agent();
        let dir = Path::new("/srv/runs/abc123");
        let spec = ContainerSpec::for_agent(
            &run,
            dir,
            &a,
            "chaosnet-agent:0.1.0",
            ContainerLimits::default(),
            vec!["CHAOSNET_LOG=debug".into()],
        )
        .expect("spec");
        assert_eq!(spec.name, format!("chaosnet-abc123-{}", a.name));
        assert_eq!(spec.volume, spec.name);
        assert_eq!(spec.labels["chaosnet.run"], "abc123");
        assert_eq!(spec.labels["chaosnet.agent"], a.name);
        assert_eq!(spec.cmd, a.args, "same command line as the process runtime");
        assert_eq!(spec.working_dir, "/srv/runs/abc123");
        assert_eq!(
            spec.data_dir,
            format!("/srv/runs/abc123/agents/{}/data", a.name)
        );
        assert_eq!(
            spec.binds,
            vec![(format!("/srv/runs/abc123/agents/{}", a.name), false)]
        );

        let body = spec.create_body();
        let hc = body.host_config.as_ref().expect("host config");
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.memory, Some(256 * 1024 * 1024));
        assert_eq!(hc.memory_swap, hc.memory, "no swap");
        assert_eq!(hc.nano_cpus, Some(1_000_000_000));
        assert_eq!(hc.pids_limit, Some(256));
        assert_eq!(
            hc.restart_policy.as_ref().and_then(|r| r.name),
            Some(RestartPolicyNameEnum::NO)
        );
        assert_eq!(
            hc.sysctls
                .as_ref()
                .and_then(|s| s.get("net.ipv4.ip_nonlocal_bind")),
            Some(&"1".to_string())
        );
        let mounts = hc.mounts.as_ref().expect("mounts");
        assert_eq!(mounts.len(), 2);
        let vol = mounts
            .iter()
            .find(|m| m.typ == Some(MountType::VOLUME))
            .expect("volume mount");
        assert_eq!(vol.source.as_deref(), Some(spec.volume.as_str()));
        assert_eq!(vol.target.as_deref(), Some(spec.data_dir.as_str()));
        let labels = body.labels.as_ref().expect("labels");
        assert_eq!(
            labels.get("chaosnet.run").map(String::as_str),
            Some("abc123")
        );
        assert_eq!(body.env, Some(vec!["CHAOSNET_LOG=debug".to_string()]));
        assert_eq!(body.cmd.as_ref(), Some(&a.args));
    }

    #[test]
    fn key_files_are_mounted_read_only_and_bad_paths_refused() {
        let (run, mut a) = default_agent();
        a.args
            .extend(["--network-key-file".into(), "/etc/chaosnet/net.key".into()]);
        let limits = ContainerLimits {
            memory_bytes: 64 << 20,
            nano_cpus: 500_000_000,
            pids: 64,
            log_file_bytes: 1 << 20,
        };
        let spec = ContainerSpec::for_agent(&run, Path::new("/r"), &a, "img", limits, vec![])
            .expect("spec");
        assert!(spec.binds.contains(&("/etc/chaosnet/net.key".into(), true)));
        let hc = spec.create_body().host_config.expect("host config");
        assert_eq!(hc.memory, Some(64 << 20));
        assert_eq!(hc.nano_cpus, Some(500_000_000));

        let rel = ContainerSpec::for_agent(&run, Path::new("runs/x"), &a, "img", limits, vec![]);
        assert!(matches!(rel, Err(SpecError::RunDir(_))));
        let mut up = a.clone();
        up.data_dir = PathBuf::from("../escape");
        assert!(
            ContainerSpec::for_agent(&run, Path::new("/r"), &up, "img", limits, vec![]).is_err()
        );
        let mut relkey = a;
        relkey
            .args
            .extend(["--network-key-file".into(), "k.key".into()]);
        assert!(
            ContainerSpec::for_agent(&run, Path::new("/r"), &relkey, "img", limits, vec![])
                .is_err()
        );
    }
}
