//! The process runtime: each agent a plain process inside its host network namespace.
//!
//! - the data dir is created (0700) and `node.key` written first (0600, the plan's 64 hex
//!   chars and a newline), so node ids are those the planner computed;
//! - the process starts with current dir = the run dir, stdin from /dev/null and
//!   stdout+stderr appended to `agents/<name>/agent.log`;
//! - spawning: the command is spawned from a thread that has `setns`'d into the agent's
//!   namespace (see [`crate::apply::in_netns`]), so the child starts inside it; no
//!   `ip netns exec`, so the mount namespace (and `/sys`) is the controller's, which agents
//!   do not need. It runs under `setsid` (util-linux): a new session, detached from the
//!   controller's process group and terminal, so it survives `chaosnet up` returning, Ctrl-C
//!   on the controller, and a paused agent is not hit by SIGHUP when the controller exits.
//!   `setsid` execs the agent in place, so the recorded pid is the agent's.
//! - `stop` is SIGTERM (plus SIGCONT, in case it is paused), then SIGKILL after a bounded
//!   grace; `kill` is SIGKILL; `pause`/`resume` are SIGSTOP/SIGCONT; `restart` is stop+start
//!   with the same data dir; `exec` runs a command via `ip netns exec` in the agent's
//!   namespace with the caller's stdio and waits for it (no timeout: it is interactive);
//!   the API is the unix socket the plan names in the run directory.
//!
//! Pids recorded by an earlier controller process can be adopted ([`ProcessRuntime::adopt`]);
//! before signalling such a pid, the runtime checks that the process still lives in the
//! agent's namespace, so a recycled pid is never signalled. It does not create namespaces.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{
    AgentState, ExecStatus, InstanceId, Runtime, RuntimeError, exec_in_netns, lab_api, lab_net,
    valid_name,
};
use crate::agentapi::ApiError;
use crate::apply::{self, NetCmd, NetOutput};
use crate::http::{Request, Response};
use crate::plan::AgentPlan;

/// Default time `stop` waits after SIGTERM before SIGKILL.
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);
/// Time waited for a process to die after SIGKILL, or to change state after SIGSTOP/CONT.
const SIGNAL_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Slot {
    plan: AgentPlan,
    pid: Option<u32>,
    /// Present when this runtime spawned the process (so it can reap it).
    child: Option<Child>,
    /// Exit status collected by `try_wait` or `stop`.
    exited: Option<ExecStatus>,
    /// Whether it was ever started (or adopted with a pid).
    started: bool,
}

/// Agents as processes in their host namespaces. See the module docs.
#[derive(Debug)]
pub struct ProcessRuntime {
    run_dir: PathBuf,
    agent_bin: PathBuf,
    setsid: PathBuf,
    stop_grace: Duration,
    slots: Mutex<BTreeMap<String, Slot>>,
}

impl ProcessRuntime {
    /// A runtime for the run in `run_dir` (absolute or relative to the current dir; it is
    /// made absolute), starting `agent_bin` for every agent.
    ///
    /// # Errors
    /// [`RuntimeError::NoAgentBinary`] when `agent_bin` is not an executable file,
    /// [`RuntimeError::MissingBinary`] when `setsid` (util-linux) is missing.
    pub fn new(run_dir: &Path, agent_bin: &Path) -> Result<ProcessRuntime, RuntimeError> {
        let executable = std::fs::metadata(agent_bin)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if !executable {
            return Err(RuntimeError::NoAgentBinary {
                path: agent_bin.to_path_buf(),
            });
        }
        let setsid = apply::which("setsid").ok_or_else(|| RuntimeError::MissingBinary {
            binary: "setsid".into(),
            package: apply::package_of("setsid"),
        })?;
        let abs = |p: &Path| -> Result<PathBuf, RuntimeError> {
            std::path::absolute(p).map_err(|source| RuntimeError::Io {
                name: String::new(),
                what: format!("cannot make {} absolute", p.display()),
                source,
            })
        };
        Ok(ProcessRuntime {
            run_dir: abs(run_dir)?,
            agent_bin: abs(agent_bin)?,
            setsid,
            stop_grace: DEFAULT_STOP_GRACE,
            slots: Mutex::new(BTreeMap::new()),
        })
    }

    /// Sets how long `stop` waits after SIGTERM before SIGKILL.
    pub fn with_stop_grace(mut self, grace: Duration) -> ProcessRuntime {
        self.stop_grace = grace;
        self
    }

    /// The run directory (absolute).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Makes agents known without starting them, adopting the pids recorded in a state
    /// file. A recorded pid is adopted only while that process is alive and in the agent's
    /// namespace; otherwise the agent counts as not started.
    pub fn adopt(&self, agents: &[AgentPlan], instances: &BTreeMap<String, InstanceId>) {
        let mut slots = self.lock();
        for a in agents {
            let pid = match instances.get(&a.name) {
                Some(InstanceId::Process { pid }) if in_agent_ns(*pid, &a.ns) => Some(*pid),
                _ => None,
            };
            slots.insert(
                a.name.clone(),
                Slot {
                    plan: a.clone(),
                    pid,
                    child: None,
                    exited: None,
                    started: pid.is_some() || instances.contains_key(&a.name),
                },
            );
        }
    }

    /// The pid of a running (or paused) agent.
    pub fn pid(&self, name: &str) -> Option<u32> {
        match self.state(name).ok()? {
            AgentState::Running { pid } | AgentState::Paused { pid } => Some(pid),
            _ => None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Slot>> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn plan_of(&self, name: &str) -> Result<AgentPlan, RuntimeError> {
        self.lock()
            .get(name)
            .map(|s| s.plan.clone())
            .ok_or_else(|| RuntimeError::UnknownAgent {
                name: name.to_string(),
            })
    }

    fn agent_dir(&self, name: &str) -> PathBuf {
        self.run_dir.join("agents").join(name)
    }

    /// Writes `<data_dir>/node.key` (0600) in a 0700 data dir, and makes the log and API
    /// socket directories.
    fn prepare(&self, a: &AgentPlan) -> Result<(), RuntimeError> {
        let io = |what: String| {
            let name = a.name.clone();
            move |source| RuntimeError::Io { name, what, source }
        };
        let key = a.key_seed_hex.trim();
        if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RuntimeError::InvalidAgent {
                name: a.name.clone(),
                reason: "key_seed_hex is not 64 hex characters".into(),
            });
        }
        let data_dir = self.run_dir.join(&a.data_dir);
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&data_dir)
            .map_err(io(format!("cannot create {}", data_dir.display())))?;
        // Write a temporary file and rename it, so the agent never reads a half-written key.
        let key_path = data_dir.join("node.key");
        let tmp_path = data_dir.join(".node.key.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp_path)
            .map_err(io(format!("cannot write {}", tmp_path.display())))?;
        // A leftover temporary file keeps its old mode on open; force 0600.
        f.set_permissions(Permissions::from_mode(0o600))
            .and_then(|()| f.write_all(format!("{}\n", key.to_ascii_lowercase()).as_bytes()))
            .and_then(|()| f.sync_all())
            .and_then(|()| std::fs::rename(&tmp_path, &key_path))
            .map_err(io(format!("cannot write {}", key_path.display())))?;
        let agent_dir = self.agent_dir(&a.name);
        std::fs::create_dir_all(&agent_dir)
            .map_err(io(format!("cannot create {}", agent_dir.display())))?;
        if let Some(parent) = self.run_dir.join(&a.api_socket).parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("cannot create {}", parent.display())))?;
        }
        Ok(())
    }

    fn spawn(&self, a: &AgentPlan) -> Result<Child, RuntimeError> {
        let log_path = self.agent_dir(&a.name).join("agent.log");
        let io = |what: String| {
            let name = a.name.clone();
            move |source| RuntimeError::Io { name, what, source }
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("cannot open {}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(io(format!("cannot open {}", log_path.display())))?;
        let mut cmd = Command::new(&self.setsid);
        cmd.arg(&self.agent_bin)
            .args(&a.args)
            .current_dir(&self.run_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        apply::in_netns(&a.ns, move || cmd.spawn())?.map_err(io(format!(
            "cannot start {} in {}",
            self.agent_bin.display(),
            a.ns
        )))
    }

    /// Refreshes a slot: reaps an exited child, drops a pid that is no longer the agent's.
    fn refresh(slot: &mut Slot) {
        let Some(pid) = slot.pid else { return };
        if let Some(child) = slot.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                slot.exited = Some(status.into());
                slot.pid = None;
                slot.child = None;
            }
        } else if !in_agent_ns(pid, &slot.plan.ns) {
            slot.exited = None;
            slot.pid = None;
        }
    }

    /// Runs `f` on the agent's slot, its process state refreshed first, under the lock.
    fn with_slot<T>(&self, name: &str, f: impl FnOnce(&mut Slot) -> T) -> Result<T, RuntimeError> {
        let mut slots = self.lock();
        let slot = slots
            .get_mut(name)
            .ok_or_else(|| RuntimeError::UnknownAgent {
                name: name.to_string(),
            })?;
        Self::refresh(slot);
        Ok(f(slot))
    }

    /// Takes the running process out of a slot (so the lock is not held while waiting).
    fn take_running(&self, name: &str) -> Result<Option<(u32, Option<Child>)>, RuntimeError> {
        self.with_slot(name, |slot| {
            slot.pid.take().map(|pid| (pid, slot.child.take()))
        })
    }

    fn put_back(&self, name: &str, pid: u32, child: Option<Child>) {
        if let Some(slot) = self.lock().get_mut(name) {
            slot.pid = Some(pid);
            slot.child = child;
        }
    }

    fn record_exit(&self, name: &str, status: Option<ExecStatus>) {
        if let Some(slot) = self.lock().get_mut(name) {
            slot.exited = status;
        }
    }

    fn running_pid(&self, name: &str) -> Result<u32, RuntimeError> {
        self.with_slot(name, |slot| slot.pid)?
            .ok_or_else(|| RuntimeError::NotRunning {
                name: name.to_string(),
            })
    }

    fn signal(name: &str, pid: u32, sig: Signal) -> Result<(), RuntimeError> {
        let raw = i32::try_from(pid).map_err(|_| RuntimeError::NotRunning {
            name: name.to_string(),
        })?;
        match kill(Pid::from_raw(raw), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(errno) => Err(RuntimeError::Signal {
                name: name.to_string(),
                pid,
                signal: sig.as_str(),
                errno,
            }),
        }
    }

    /// Waits until the process exits; returns its status when we own it.
    fn wait_exit(
        pid: u32,
        child: &mut Option<Child>,
        within: Duration,
    ) -> Option<Option<ExecStatus>> {
        let start = Instant::now();
        loop {
            match child.as_mut() {
                Some(c) => {
                    if let Ok(Some(st)) = c.try_wait() {
                        return Some(Some(st.into()));
                    }
                }
                None => {
                    if !apply::alive(pid as i32) {
                        return Some(None);
                    }
                }
            }
            if start.elapsed() >= within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `first` (and SIGCONT, so a paused process acts on it), waits `grace`, then
    /// SIGKILL and waits again.
    fn terminate(&self, name: &str, first: Signal, grace: Duration) -> Result<(), RuntimeError> {
        let Some((pid, mut child)) = self.take_running(name)? else {
            return Ok(());
        };
        let result = (|| {
            Self::signal(name, pid, first)?;
            if first != Signal::SIGKILL {
                Self::signal(name, pid, Signal::SIGCONT)?;
                if let Some(st) = Self::wait_exit(pid, &mut child, grace) {
                    return Ok(st);
                }
                Self::signal(name, pid, Signal::SIGKILL)?;
            }
            Self::wait_exit(pid, &mut child, SIGNAL_WAIT).ok_or(RuntimeError::Timeout {
                name: name.to_string(),
                pid,
                what: "exit",
                after: SIGNAL_WAIT,
            })
        })();
        match result {
            Ok(status) => {
                self.record_exit(name, status);
                Ok(())
            }
            Err(e) => {
                self.put_back(name, pid, child);
                Err(e)
            }
        }
    }

    fn wait_state(
        name: &str,
        pid: u32,
        want_stopped: bool,
        what: &'static str,
    ) -> Result<(), RuntimeError> {
        let start = Instant::now();
        loop {
            match apply::proc_state(pid as i32) {
                None | Some('Z') | Some('X') => {
                    return Err(RuntimeError::NotRunning {
                        name: name.to_string(),
                    });
                }
                Some(s) if (s == 'T' || s == 't') == want_stopped => return Ok(()),
                Some(_) => {}
            }
            if start.elapsed() >= SIGNAL_WAIT {
                return Err(RuntimeError::Timeout {
                    name: name.to_string(),
                    pid,
                    what,
                    after: SIGNAL_WAIT,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Waits (bounded by [`SIGNAL_WAIT`]) until `pid` leads its own session, or has exited.
fn wait_detached(pid: u32, child: &mut Child) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let start = Instant::now();
    let mut pause = Duration::from_micros(100);
    while start.elapsed() < SIGNAL_WAIT {
        match nix::unistd::getsid(Some(Pid::from_raw(raw))) {
            Ok(sid) if sid.as_raw() == raw => return,
            Ok(_) => {}
            Err(_) => return,
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            // Exited already; `Child` keeps the status, so `refresh` still reports it.
            return;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// True when `pid` is alive and in the network namespace `ns` (guards against pid reuse).
fn in_agent_ns(pid: u32, ns: &str) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match (apply::pid_ns_inode(raw), apply::ns_inode(ns)) {
        (Some(a), Some(b)) => a == b && apply::alive(raw),
        _ => false,
    }
}

impl Runtime for ProcessRuntime {
    fn api(&self, name: &str, req: &Request<'_>, timeout: Duration) -> Result<Response, ApiError> {
        lab_api(&self.run_dir, &self.plan_of(name)?, req, timeout)
    }

    fn net(&self, name: &str, cmd: &NetCmd) -> Result<NetOutput, RuntimeError> {
        lab_net(&self.plan_of(name)?, cmd)
    }

    fn start(&self, agent: &AgentPlan) -> Result<InstanceId, RuntimeError> {
        if !valid_name(&agent.name) {
            return Err(RuntimeError::InvalidAgent {
                name: agent.name.clone(),
                reason: "name must be non-empty [A-Za-z0-9_.-]".into(),
            });
        }
        {
            let mut slots = self.lock();
            if let Some(slot) = slots.get_mut(&agent.name) {
                Self::refresh(slot);
                if let Some(pid) = slot.pid {
                    return Err(RuntimeError::AlreadyRunning {
                        name: agent.name.clone(),
                        pid,
                    });
                }
            }
        }
        self.prepare(agent)?;
        let mut child = self.spawn(agent)?;
        let pid = child.id();
        // Return only once `setsid` has detached it, so a Ctrl-C right after `start` cannot
        // reach it through the controller's process group.
        wait_detached(pid, &mut child);
        self.lock().insert(
            agent.name.clone(),
            Slot {
                plan: agent.clone(),
                pid: Some(pid),
                child: Some(child),
                exited: None,
                started: true,
            },
        );
        Ok(InstanceId::Process { pid })
    }

    fn stop(&self, name: &str) -> Result<(), RuntimeError> {
        self.terminate(name, Signal::SIGTERM, self.stop_grace)
    }

    fn kill(&self, name: &str) -> Result<(), RuntimeError> {
        self.terminate(name, Signal::SIGKILL, Duration::ZERO)
    }

    fn restart(&self, name: &str) -> Result<InstanceId, RuntimeError> {
        self.stop(name)?;
        let plan = self
            .lock()
            .get(name)
            .map(|s| s.plan.clone())
            .ok_or_else(|| RuntimeError::UnknownAgent {
                name: name.to_string(),
            })?;
        self.start(&plan)
    }

    fn pause(&self, name: &str) -> Result<(), RuntimeError> {
        let pid = self.running_pid(name)?;
        Self::signal(name, pid, Signal::SIGSTOP)?;
        Self::wait_state(name, pid, true, "stop")
    }

    fn resume(&self, name: &str) -> Result<(), RuntimeError> {
        let pid = self.running_pid(name)?;
        Self::signal(name, pid, Signal::SIGCONT)?;
        Self::wait_state(name, pid, false, "continue")
    }

    fn state(&self, name: &str) -> Result<AgentState, RuntimeError> {
        self.with_slot(name, |slot| match slot.pid {
            Some(pid) => match apply::proc_state(pid as i32) {
                Some('T') | Some('t') => AgentState::Paused { pid },
                _ => AgentState::Running { pid },
            },
            None if slot.started => AgentState::Exited {
                status: slot.exited,
            },
            None => AgentState::NotStarted,
        })
    }

    fn log_path(&self, name: &str) -> Result<PathBuf, RuntimeError> {
        if !self.lock().contains_key(name) {
            return Err(RuntimeError::UnknownAgent {
                name: name.to_string(),
            });
        }
        Ok(self.agent_dir(name).join("agent.log"))
    }

    fn exec(&self, name: &str, argv: &[String]) -> Result<ExecStatus, RuntimeError> {
        let ns = self
            .lock()
            .get(name)
            .map(|s| s.plan.ns.clone())
            .ok_or_else(|| RuntimeError::UnknownAgent {
                name: name.to_string(),
            })?;
        exec_in_netns(name, &ns, argv)
    }

    fn instances(&self) -> BTreeMap<String, InstanceId> {
        let mut slots = self.lock();
        slots
            .iter_mut()
            .filter_map(|(name, slot)| {
                Self::refresh(slot);
                slot.pid
                    .map(|pid| (name.clone(), InstanceId::Process { pid }))
            })
            .collect()
    }
}
