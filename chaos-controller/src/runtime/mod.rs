//! Agent runtimes: how an agent of a plan is started, stopped, paused and reached.
//!
//! [`Runtime`] is the one interface every command drives through [`crate::lab::Lab`]:
//! lifecycle (start, stop, kill, restart, pause, resume, state), `exec`, `logs`, the agent's
//! control API ([`Runtime::api`]) and network tools inside the agent's network namespace
//! ([`Runtime::net`], what faults use). It is synchronous and object-safe: the docker
//! runtime (bollard) and a cluster runtime are async underneath and own a small tokio
//! runtime to block on, and their [`InstanceId`]s are containers (or pods) instead of pids.
//! Nothing outside this module assumes where an agent's API socket or namespace is.
//!
//! The runtimes: [`process::ProcessRuntime`] (a process in its host namespace) and
//! [`docker::DockerRuntime`] (a container wired into the same host namespace); one run's
//! agents, under whichever runtimes the plan gives them, are a [`fleet::Fleet`]. The runtime
//! kinds are listed in one place: [`build`] makes a runtime of a kind, [`cleanup`] removes
//! what a kind leaves outside the lab's namespaces (containers, volumes) by run label.
//!
//! Adding a runtime (e.g. agents as pods): a [`RuntimeKind`] variant (and a
//! [`crate::scenario::RuntimeChoice`]), an implementation of [`Runtime`] (its `api` through
//! whatever reaches the agent, e.g. an API-server proxy; its `net` through whatever enters
//! the agent's network, e.g. exec into a router container), and an arm in [`build`] and
//! [`cleanup`] (removal by label). Commands do not change: they go through the lab. A
//! runtime that also brings its own network (NAT inside the pod rather than the local
//! namespaces) adds that to [`crate::lab::Lab::up`] and routes the plan's router
//! namespaces in [`crate::lab::Lab::net`], the two places that assume the local lab today.
//!
//! This module does not create namespaces (see [`crate::apply`]) and does not decide when
//! agents start.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agentapi::{self, ApiError};
use crate::apply::{self, ApplyError, NetCmd, NetOutput};
use crate::http::{self, Request, Response};
use crate::plan::{AgentPlan, Plan, RunId};

pub mod docker;
pub mod fleet;
pub mod kube;
mod process;

pub use crate::plan::RuntimeKind;
pub use process::ProcessRuntime;

/// Where a runtime placed an agent; stored in the run state file.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InstanceId {
    /// A process (the process runtime).
    Process {
        /// Its pid.
        pid: u32,
    },
    /// A Docker container (the docker runtime); it exists (running or not) until `down`.
    Container {
        /// The container id.
        id: String,
        /// The container name, `chaosnet-<run>-<agent>`.
        name: String,
    },
}

/// What an agent is doing, as far as the runtime can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentState {
    /// Known (adopted) but never started, and no live process recorded for it.
    NotStarted,
    /// Running.
    Running {
        /// Its pid.
        pid: u32,
    },
    /// Stopped with SIGSTOP (paused).
    Paused {
        /// Its pid.
        pid: u32,
    },
    /// Exited on its own, or was stopped or killed, and not restarted.
    Exited {
        /// How it ended, when known (only for processes this runtime spawned).
        status: Option<ExecStatus>,
    },
}

/// How a command or agent ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecStatus {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if a signal ended it.
    pub signal: Option<i32>,
}

impl ExecStatus {
    /// True for exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl From<std::process::ExitStatus> for ExecStatus {
    fn from(s: std::process::ExitStatus) -> Self {
        ExecStatus {
            code: s.code(),
            signal: s.signal(),
        }
    }
}

/// Errors of a runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime does not know this agent.
    #[error("no agent named {name:?} in this run")]
    UnknownAgent {
        /// The name.
        name: String,
    },
    /// `start` on an agent that is running.
    #[error("agent {name} is already running (pid {pid})")]
    AlreadyRunning {
        /// The agent.
        name: String,
        /// Its pid.
        pid: u32,
    },
    /// An operation that needs a running agent.
    #[error("agent {name} is not running")]
    NotRunning {
        /// The agent.
        name: String,
    },
    /// The agent plan cannot be carried out (bad name, bad key).
    #[error("agent {name}: {reason}")]
    InvalidAgent {
        /// The agent.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A required tool or the agent binary is missing.
    #[error("`{binary}` not found: install the Debian package `{package}`")]
    MissingBinary {
        /// The binary.
        binary: String,
        /// Its Debian package.
        package: &'static str,
    },
    /// The agent binary given by the caller is not an executable file.
    #[error("agent binary {} is not an executable file (build it with `cargo build -p chaosnet-agent`)", path.display())]
    NoAgentBinary {
        /// The path given.
        path: PathBuf,
    },
    /// File system work for an agent failed.
    #[error("agent {name}: {what}: {source}")]
    Io {
        /// The agent.
        name: String,
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Sending a signal failed.
    #[error("agent {name}: cannot send {signal} to pid {pid}: {errno}")]
    Signal {
        /// The agent.
        name: String,
        /// The pid.
        pid: u32,
        /// The signal.
        signal: &'static str,
        /// The error.
        errno: nix::errno::Errno,
    },
    /// The process did not exit (or change state) in time.
    #[error("agent {name} (pid {pid}) did not {what} within {after:?}")]
    Timeout {
        /// The agent.
        name: String,
        /// The pid.
        pid: u32,
        /// What was expected (`exit`, `stop`, `continue`).
        what: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// Entering the agent's namespace failed.
    #[error(transparent)]
    Netns(#[from] ApplyError),
    /// The Docker engine refused or failed (docker runtime).
    #[error(transparent)]
    Docker(#[from] docker::DockerError),
    /// The engine holding a run's containers cannot be reached, so they cannot be removed.
    #[error("cannot remove the run's containers: {0}")]
    Cleanup(docker::DockerError),
    /// The agent is run by a runtime this controller did not set up (e.g. a docker agent
    /// while the engine is not reachable).
    #[error("agent {name} runs under the {kind} runtime, which is not available: {why}")]
    Unavailable {
        /// The agent.
        name: String,
        /// Its runtime.
        kind: &'static str,
        /// Why.
        why: String,
    },
}

/// How agents are run. Object-safe, so a run holds `Box<dyn Runtime>`s; all methods take
/// `&self` (implementations synchronise inside) so faults and probes run from several
/// threads.
pub trait Runtime: Send + Sync {
    /// Starts `agent` (its key written first); it becomes known to the runtime.
    fn start(&self, agent: &AgentPlan) -> Result<InstanceId, RuntimeError>;
    /// Stops gracefully (TERM, then KILL after a bounded grace). No-op when not running.
    fn stop(&self, name: &str) -> Result<(), RuntimeError>;
    /// Kills at once. No-op when not running.
    fn kill(&self, name: &str) -> Result<(), RuntimeError>;
    /// Stops (if running) and starts again with the same data dir.
    fn restart(&self, name: &str) -> Result<InstanceId, RuntimeError>;
    /// Freezes the agent.
    fn pause(&self, name: &str) -> Result<(), RuntimeError>;
    /// Unfreezes the agent.
    fn resume(&self, name: &str) -> Result<(), RuntimeError>;
    /// What the agent is doing.
    fn state(&self, name: &str) -> Result<AgentState, RuntimeError>;
    /// Where the agent's combined stdout/stderr log is.
    fn log_path(&self, name: &str) -> Result<PathBuf, RuntimeError>;
    /// Runs `argv` inside the agent's network namespace with the caller's stdio, and waits.
    fn exec(&self, name: &str, argv: &[String]) -> Result<ExecStatus, RuntimeError>;
    /// Every running agent's instance, for the state file.
    fn instances(&self) -> BTreeMap<String, InstanceId>;
    /// One request to the agent's control API.
    fn api(&self, name: &str, req: &Request<'_>, timeout: Duration) -> Result<Response, ApiError>;
    /// Runs a network tool (`nft`, `tc`, `ip`, `conntrack`) inside the agent's network
    /// namespace and returns how it ended.
    fn net(&self, name: &str, cmd: &NetCmd) -> Result<NetOutput, RuntimeError>;
    /// Copies the agent's log to `out`; with `follow`, keeps copying as it grows until the
    /// writer fails (e.g. a closed pipe) or the caller is interrupted. The default reads
    /// [`Runtime::log_path`].
    fn logs(&self, name: &str, follow: bool, out: &mut dyn Write) -> Result<(), RuntimeError> {
        let path = self.log_path(name)?;
        copy_file_log(name, &path, follow, out)
    }
}

/// [`Runtime::api`] of an agent in a local lab: the unix socket the plan gives it, in the
/// run directory (processes, and containers through their bind-mounted agent directory).
pub(crate) fn lab_api(
    run_dir: &Path,
    agent: &AgentPlan,
    req: &Request<'_>,
    timeout: Duration,
) -> Result<Response, ApiError> {
    agentapi::call_local(
        &http::Endpoint::Unix(run_dir.join(&agent.api_socket)),
        req,
        timeout,
    )
}

/// What a runtime needs to run a plan's agents of its kind.
pub struct RuntimeContext<'a> {
    /// The plan.
    pub plan: &'a Plan,
    /// The run directory (absolute).
    pub run_dir: &'a Path,
    /// The agent binary (the process runtime).
    pub agent_bin: Option<&'a Path>,
    /// The agent image (the docker runtime).
    pub image: &'a str,
}

/// Makes the runtime of `kind` for a run, with the agents recorded in `instances` adopted
/// (an empty map for a new run). The one place that knows every runtime kind.
///
/// # Errors
/// What setting the runtime up failed on: a missing agent binary, an unreachable engine.
pub fn build(
    kind: RuntimeKind,
    ctx: &RuntimeContext<'_>,
    engine: Option<docker::Engine>,
    instances: &BTreeMap<String, InstanceId>,
) -> Result<Box<dyn Runtime>, RuntimeError> {
    let agents: Vec<AgentPlan> = ctx
        .plan
        .agents
        .iter()
        .filter(|a| a.runtime == kind)
        .cloned()
        .collect();
    match kind {
        RuntimeKind::Process => {
            let bin = ctx.agent_bin.ok_or_else(|| RuntimeError::NoAgentBinary {
                path: PathBuf::from("chaosnet-agent"),
            })?;
            let rt = ProcessRuntime::new(ctx.run_dir, bin)?;
            rt.adopt(&agents, instances);
            Ok(Box::new(rt))
        }
        RuntimeKind::Docker => {
            let engine = match engine {
                Some(e) => e,
                None => docker::Engine::connect()?,
            };
            let rt = docker::DockerRuntime::new(
                engine,
                ctx.plan,
                ctx.run_dir,
                docker::DockerOptions {
                    image: ctx.image.to_string(),
                    ..docker::DockerOptions::default()
                },
            )?;
            rt.adopt(instances);
            Ok(Box::new(rt))
        }
    }
}

/// What [`cleanup`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Containers removed.
    pub containers: usize,
    /// Volumes removed.
    pub volumes: usize,
}

/// Removes what runtimes of `kinds` leave outside the lab's namespaces, by run label: the
/// containers and volumes of run `run` (of every run with `None`: `down --all`), also after
/// a killed controller. A kind in `required` (the run has agents of it) must be reachable;
/// any other unreachable one has nothing to remove.
///
/// # Errors
/// A required runtime that cannot be reached, or that fails to remove.
pub fn cleanup(
    run: Option<&RunId>,
    required: &[RuntimeKind],
) -> Result<CleanupReport, RuntimeError> {
    let mut report = CleanupReport::default();
    // Processes die with their namespaces (`apply::teardown`): nothing to do for them.
    match docker::Engine::connect() {
        Ok(engine) => {
            let r = engine.remove_run(run)?;
            report.containers += r.containers;
            report.volumes += r.volumes;
        }
        Err(e) if required.contains(&RuntimeKind::Docker) => {
            return Err(RuntimeError::Cleanup(e));
        }
        Err(e) => tracing::debug!(error = %e, "no docker engine: no containers to remove"),
    }
    Ok(report)
}

/// [`Runtime::net`] of an agent in a local lab: the tool runs in its host namespace (a
/// container's network namespace carries that name, see [`docker`]).
pub(crate) fn lab_net(agent: &AgentPlan, cmd: &NetCmd) -> Result<NetOutput, RuntimeError> {
    Ok(apply::net_exec(&agent.ns, cmd)?)
}

/// The last `n` lines of an agent's log (empty when it cannot be read), for error reports.
pub fn log_tail(rt: &dyn Runtime, name: &str, n: usize) -> Vec<String> {
    let mut buf = Vec::new();
    let _ = rt.logs(name, false, &mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// Copies a log file to `out`, then (with `follow`) polls it every 250 ms for more; a
/// truncated file is read again from the start.
fn copy_file_log(
    name: &str,
    path: &Path,
    follow: bool,
    out: &mut dyn Write,
) -> Result<(), RuntimeError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |what: String| {
        let name = name.to_string();
        move |source| RuntimeError::Io { name, what, source }
    };
    let mut f = std::fs::File::open(path).map_err(io(format!("cannot open {}", path.display())))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .and_then(|_| out.write_all(&buf))
        .and_then(|()| out.flush())
        .map_err(io(format!("cannot copy {}", path.display())))?;
    if !follow {
        return Ok(());
    }
    let mut pos = f
        .stream_position()
        .map_err(io(format!("cannot read {}", path.display())))?;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let step = (|| -> std::io::Result<()> {
            let len = f.metadata()?.len();
            if len < pos {
                pos = 0;
            }
            if len > pos {
                f.seek(SeekFrom::Start(pos))?;
                buf.clear();
                f.read_to_end(&mut buf)?;
                out.write_all(&buf)?;
                out.flush()?;
                pos = f.stream_position()?;
            }
            Ok(())
        })();
        step.map_err(io(format!("cannot follow {}", path.display())))?;
    }
}

/// Runs `argv` in the named network namespace `ns` with `ip netns exec` and the caller's
/// stdio, and waits (both runtimes: a container's network namespace carries the host
/// namespace's name, see [`docker`]).
pub(crate) fn exec_in_netns(
    name: &str,
    ns: &str,
    argv: &[String],
) -> Result<ExecStatus, RuntimeError> {
    if argv.is_empty() {
        return Err(RuntimeError::InvalidAgent {
            name: name.to_string(),
            reason: "exec needs a command".into(),
        });
    }
    let ip = apply::which("ip").ok_or_else(|| RuntimeError::MissingBinary {
        binary: "ip".into(),
        package: apply::package_of("ip"),
    })?;
    let status = Command::new(ip)
        .args(["netns", "exec", ns])
        .args(argv)
        .status()
        .map_err(|source| RuntimeError::Io {
            name: name.to_string(),
            what: format!("cannot run `ip netns exec {ns} {}`", argv.join(" ")),
            source,
        })?;
    Ok(status.into())
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}
