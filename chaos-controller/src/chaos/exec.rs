//! Carrying fault actions out as root, and the run's fault state file.
//!
//! `<run dir>/faults.json` lists every fault occurrence that was injected and not yet healed,
//! with its heal actions. It is written *before* an inject starts, so a controller killed
//! mid-inject still leaves a record that `chaosnet heal --all` (or the next `run`) replays.
//! `heal --all` replays every recorded heal, then runs the [`super::fault::sweep`], which
//! removes whatever fault state the run's namespaces may still hold without any record.
//! `chaosnet down` deletes the namespaces (and with them every nft table, qdisc and process
//! of the run), so nothing a fault created outlives `down`, even after a crash.
//!
//! Every action goes through the run's [`Lab`]: network tools through [`Lab::net`] (an
//! agent's namespace through its runtime), process actions through the agent's runtime
//! (signals for a process, the engine for a container), impairments through the agent's
//! API. What it does not do: decide what to apply (see `fault`) or when (see `run`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use chaosnet_contract::api::Impairment;

use super::fault::{Action, FaultPlan, ProcessOp};
use crate::apply::{ApplyError, NetCmd};
use crate::lab::Lab;
use crate::runtime::{AgentState, Runtime, RuntimeError};

/// File name of the fault state, in the run directory.
pub const FAULTS_FILE: &str = "faults.json";
/// Timeout of one system command of a fault.
const CMD_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of one agent API call of a fault.
const API_TIMEOUT: Duration = Duration::from_secs(3);
/// nft transactions run at once (a partition touches every agent's namespace: one `nft`
/// process each, which is what a partition costs).
const PARALLEL_NFT: usize = 8;

/// Why an action failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// A system command failed.
    #[error(transparent)]
    Command(#[from] ApplyError),
    /// The runtime refused.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The agent API refused or is unreachable.
    #[error("agent {agent}: impairment: {detail}")]
    Api {
        /// The agent.
        agent: String,
        /// What went wrong.
        detail: String,
    },
    /// The state file could not be written or read.
    #[error("{path}: {source}")]
    State {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// An agent not in the plan.
    #[error("no agent {0:?} in this run")]
    UnknownAgent(String),
}

/// The fault state file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FaultState {
    /// Injected, not yet healed.
    pub active: Vec<FaultPlan>,
}

impl FaultState {
    /// Path in `run_dir`.
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join(FAULTS_FILE)
    }

    /// Loads it (empty when absent or unreadable: the sweep still cleans up).
    pub fn load(run_dir: &Path) -> FaultState {
        std::fs::read_to_string(Self::path(run_dir))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// Writes it atomically.
    pub fn save(&self, run_dir: &Path) -> Result<(), ExecError> {
        let path = Self::path(run_dir);
        let tmp = run_dir.join(".faults.json.tmp");
        let err = |source| ExecError::State {
            path: path.display().to_string(),
            source,
        };
        // Serializing plain data cannot fail; an empty file would only lose the record.
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }
}

/// Runs actions of one run.
pub struct Executor<'a> {
    run_dir: PathBuf,
    lab: &'a Lab,
}

impl<'a> Executor<'a> {
    /// An executor for the run of `lab`.
    pub fn new(lab: &'a Lab) -> Executor<'a> {
        Executor {
            run_dir: lab.run_dir().to_path_buf(),
            lab,
        }
    }

    /// Runs `cmd` in `ns`; a failed exit is an error unless `tolerate`.
    fn net(&self, ns: &str, cmd: &NetCmd) -> Result<String, ExecError> {
        Ok(self.lab.net(ns, cmd)?.ok()?)
    }

    /// Records `f` as active, then injects it. On failure the partial inject is healed
    /// (best effort) and the record dropped.
    pub fn inject(&self, f: &FaultPlan) -> Result<Duration, ExecError> {
        let t0 = Instant::now();
        let mut st = FaultState::load(&self.run_dir);
        st.active.retain(|x| x.id != f.id);
        st.active.push(f.clone());
        st.save(&self.run_dir)?;
        if let Some(e) = self
            .run_actions(&f.inject, true)
            .into_iter()
            .find_map(Result::err)
        {
            let _ = self.run_heal(&f.heal);
            let mut st = FaultState::load(&self.run_dir);
            st.active.retain(|x| x.id != f.id);
            let _ = st.save(&self.run_dir);
            return Err(e);
        }
        Ok(t0.elapsed())
    }

    /// Heals `f` (every step is tried) and drops its record. Returns the time taken and
    /// the errors of steps that failed.
    pub fn heal(&self, f: &FaultPlan) -> (Duration, Vec<String>) {
        let t0 = Instant::now();
        let errors = self.run_heal(&f.heal);
        let mut st = FaultState::load(&self.run_dir);
        st.active.retain(|x| x.id != f.id);
        if let Err(e) = st.save(&self.run_dir) {
            return (t0.elapsed(), vec![e.to_string()]);
        }
        (t0.elapsed(), errors)
    }

    fn run_heal(&self, actions: &[Action]) -> Vec<String> {
        self.run_actions(actions, false)
            .into_iter()
            .filter_map(|r| r.err().map(|e| e.to_string()))
            .collect()
    }

    /// Runs actions in order, except that a run of consecutive `Nft` actions on distinct
    /// namespaces goes [`PARALLEL_NFT`] at a time (they cannot affect each other). With
    /// `stop_on_error` (injects) it stops after the first failed run or action; heals try
    /// every action.
    fn run_actions(&self, actions: &[Action], stop_on_error: bool) -> Vec<Result<(), ExecError>> {
        let mut out = Vec::with_capacity(actions.len());
        let mut i = 0;
        while i < actions.len() {
            let mut j = i;
            let mut seen = std::collections::BTreeSet::new();
            while let Some(Action::Nft { ns, .. }) = actions.get(j) {
                if !seen.insert(ns.as_str()) {
                    break;
                }
                j += 1;
            }
            if j > i + 1 {
                for chunk in actions[i..j].chunks(PARALLEL_NFT) {
                    let rs: Vec<Result<(), ExecError>> = std::thread::scope(|s| {
                        let hs: Vec<_> = chunk.iter().map(|a| s.spawn(|| self.action(a))).collect();
                        hs.into_iter()
                            .map(|h| {
                                h.join().unwrap_or_else(|_| {
                                    Err(ExecError::UnknownAgent("(a fault thread panicked)".into()))
                                })
                            })
                            .collect()
                    });
                    out.extend(rs);
                }
                if stop_on_error && out.iter().any(Result::is_err) {
                    return out;
                }
                i = j;
            } else {
                let r = self.action(&actions[i]);
                let failed = r.is_err();
                out.push(r);
                if failed && stop_on_error {
                    return out;
                }
                i += 1;
            }
        }
        out
    }

    /// Heals every recorded fault, then sweeps. Returns (faults healed, errors).
    pub fn heal_all(&self) -> (usize, Vec<String>) {
        let st = FaultState::load(&self.run_dir);
        let mut errors = Vec::new();
        let n = st.active.len();
        for f in &st.active {
            errors.extend(self.heal(f).1);
        }
        for a in super::fault::sweep(self.lab.plan()) {
            // The sweep is best effort by nature: most of it finds nothing to undo.
            let _ = self.action(&a);
        }
        (n, errors)
    }

    /// Runs one action.
    pub fn action(&self, a: &Action) -> Result<(), ExecError> {
        let timed = |tool: &'static str, args: &[&str]| {
            let mut c = NetCmd::new(tool, args);
            c.timeout = CMD_TIMEOUT;
            c
        };
        match a {
            Action::Nft { ns, script } => {
                self.net(ns, &timed("nft", &["-f", "-"]).stdin(script.as_str()))?;
                Ok(())
            }
            Action::NftSweep { ns, prefix } => {
                let listing = self.net(ns, &timed("nft", &["list", "tables"]))?;
                for table in fault_tables(&listing, prefix) {
                    self.net(ns, &timed("nft", &["delete", "table", "ip", &table]))?;
                }
                Ok(())
            }
            Action::Tc { ns, args, tolerate } => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                tolerated(self.net(ns, &timed("tc", &args)).map(drop), *tolerate)
            }
            Action::Ip { ns, args, tolerate } => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                tolerated(self.net(ns, &timed("ip", &args)).map(drop), *tolerate)
            }
            Action::ConntrackFlush { ns } => {
                let out = self.lab.net(ns, &timed("conntrack", &["-F"]))?;
                // `conntrack -F` exits 1 on an empty table on some versions.
                if !out.success && !out.stderr.contains("0 flow entries") {
                    return Err(ApplyError::Command {
                        command: "conntrack -F".into(),
                        status: out.status,
                        stderr: out.stderr,
                    }
                    .into());
                }
                Ok(())
            }
            Action::Process { agent, op } => self.process(agent, *op),
            Action::Impair {
                agent,
                loss_pct,
                delay_ms,
                jitter_ms,
            } => {
                if self.lab.plan().agent(agent).is_none() {
                    return Err(ExecError::UnknownAgent(agent.clone()));
                }
                let imp = Impairment {
                    loss_pct: *loss_pct,
                    delay_ms: *delay_ms,
                    jitter_ms: *jitter_ms,
                };
                self.lab
                    .agent(agent)
                    .set_impairment(&imp, API_TIMEOUT)
                    .map_err(|e| ExecError::Api {
                        agent: agent.clone(),
                        detail: e.to_string(),
                    })
            }
        }
    }

    fn process(&self, agent: &str, op: ProcessOp) -> Result<(), ExecError> {
        let rt = self.lab.fleet();
        match op {
            ProcessOp::Kill => rt.kill(agent)?,
            ProcessOp::Restart => {
                rt.restart(agent)?;
            }
            ProcessOp::Pause => rt.pause(agent)?,
            ProcessOp::Resume => {
                if let AgentState::Paused { .. } = rt.state(agent)? {
                    rt.resume(agent)?;
                }
            }
            ProcessOp::Start => match rt.state(agent)? {
                AgentState::Running { .. } => {}
                AgentState::Paused { .. } => rt.resume(agent)?,
                _ => {
                    let plan = self
                        .lab
                        .plan()
                        .agent(agent)
                        .ok_or_else(|| ExecError::UnknownAgent(agent.to_string()))?;
                    rt.start(plan)?;
                }
            },
        }
        Ok(())
    }

    /// Whether `tc netem` works in `ns`: adds and removes a netem qdisc on its `lo`.
    /// Returns the answer and, when it does not, the kernel's reason.
    pub fn netem_available(&self, ns: &str) -> (bool, String) {
        let add = NetCmd::new(
            "tc",
            &["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
        );
        match self.lab.net(ns, &add).map(|o| o.ok()) {
            Ok(Ok(_)) => {
                let _ = self.lab.net(
                    ns,
                    &NetCmd::new("tc", &["qdisc", "del", "dev", "lo", "root"]),
                );
                (true, String::new())
            }
            Ok(Err(e)) => (false, e.to_string()),
            Err(e) => (false, e.to_string()),
        }
    }
}

fn tolerated(r: Result<(), ExecError>, tolerate: bool) -> Result<(), ExecError> {
    match r {
        Err(_) if tolerate => Ok(()),
        r => r,
    }
}

/// Names of `ip` tables in an `nft list tables` listing that start with `prefix`.
pub fn fault_tables(listing: &str, prefix: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table ip "))
        .map(str::trim)
        .filter(|t| t.starts_with(prefix))
        .map(str::to_string)
        .collect()
}
