//! The lab: one run's emulated internet and its fleet of agents, as one value every command
//! goes through.
//!
//! - [`Lab::up`] carries a plan out: the run directory and state file first (so `down` can
//!   always clean up), the namespaces and NAT routers ([`crate::apply`]), then every agent
//!   under its runtime ([`crate::runtime::fleet::Fleet`]), a few at a time. A failure removes
//!   what was created and says what failed.
//! - [`Lab::adopt`] finds a running lab again from its run directory (a later controller
//!   process: `status`, `fault`, `heal`, `exec`, the scrape proxy...), with its agents adopted
//!   by their runtimes.
//! - [`Lab::down`] (and [`down_run`], [`down_all`] for runs without a lab value) stops
//!   monitoring, removes what runtimes keep outside the namespaces (containers, volumes) and
//!   deletes the namespaces; idempotent, also after a killed controller. It touches only
//!   what chaosnet made: a monitoring pid is signalled only when its command line is the
//!   process chaosnet started for that run ([`crate::monitor::MonitorState::stop`]), and a
//!   namespace is deleted only when it carries chaosnet's marker
//!   ([`crate::apply::owner`]) or the run's state file names it.
//! - Run ids: [`Lab::up`] refuses a run id that is in use ([`LabError::RunIdTaken`]: its
//!   run directory, namespaces, marker or containers exist) before creating anything.
//! - Reaching agents: [`Lab::agent`] (the typed control API, through the agent's runtime) and
//!   [`Lab::net`] (a network tool in one of the plan's namespaces: an agent's own through its
//!   runtime, a router's or the internet's in the local lab). Fault mechanisms, probes and the
//!   matrix use only these, so a runtime whose agents live elsewhere plugs in behind them.
//! - The runs directory: one directory per run id, `current` pointing at the newest
//!   ([`run_dir_of`]), and the state file ([`RunState`]).
//!
//! What it does not do: parse scenarios or plan (the caller hands it a plan), print (it
//! reports progress through [`UpEvent`]s and returns what happened), or decide when faults
//! happen.

mod state;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use state::{RunState, STATE_VERSION, StateError};

use crate::agentapi::AgentApi;
use crate::apply::{self, ApplyError, ApplyReport, NetCmd, NetOutput, Step};
use crate::monitor::MonitorState;
use crate::plan::{NsRole, Plan, RunId, RuntimeKind};
use crate::runtime::docker::{self, DockerError, Engine};
use crate::runtime::fleet::Fleet;
use crate::runtime::{self, Runtime, RuntimeContext, RuntimeError};
use crate::scenario::{RuntimeChoice, Scenario};

/// The link in the runs directory to the newest run.
pub const CURRENT: &str = "current";
/// Agents started at once: a container start waits mostly on the engine (runc, namespace
/// setup), so a few in flight keep both cores busy; processes start in milliseconds anyway.
const START_JOBS: usize = 4;
/// Timeout of one `/status` while waiting for agents to join.
const JOIN_POLL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// Building or removing namespaces failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A runtime could not be set up or refused.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The Docker engine or image is not usable.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// The state file.
    #[error(transparent)]
    State(#[from] StateError),
    /// An agent could not be started; the run was removed.
    #[error("cannot start agent {agent}: {source}")]
    Start {
        /// The agent.
        agent: String,
        /// Why.
        #[source]
        source: RuntimeError,
    },
    /// No such run.
    #[error("{0}")]
    NoRun(String),
    /// The run id is in use on this machine; nothing was created.
    #[error("run id {run} is already in use ({}); nothing was created", found.join(", "))]
    RunIdTaken {
        /// The run id.
        run: String,
        /// What uses it: a run directory, namespaces, a marker directory, containers.
        found: Vec<String>,
    },
    /// File system work on the runs directory.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> LabError {
    move |source| LabError::Io { what, source }
}

/// A fresh run id: 6 lowercase hex characters.
pub fn new_run_id() -> RunId {
    RunId(format!("{:06x}", rand::random::<u32>() & 0x00ff_ffff))
}

/// A fresh run id that [`run_id_in_use`] finds free (a few tries, then the last one drawn:
/// [`Lab::up`] checks again and refuses a taken one).
pub fn free_run_id(runs: &Path, engine: Option<&Engine>) -> RunId {
    let mut id = new_run_id();
    for _ in 0..16 {
        if run_id_in_use(runs, &id, engine).is_ok_and(|f| f.is_empty()) {
            break;
        }
        id = new_run_id();
    }
    id
}

/// What uses run id `run` on this machine: its directory in `runs`, namespaces with its
/// prefix or its marker directory ([`apply::run_id_in_use`]), containers or volumes
/// labelled with it (when `engine` is given). Empty when the id is free.
///
/// # Errors
/// `/run/netns` or the engine cannot be read.
pub fn run_id_in_use(
    runs: &Path,
    run: &RunId,
    engine: Option<&Engine>,
) -> Result<Vec<String>, LabError> {
    let mut found = Vec::new();
    let dir = runs.join(&run.0);
    if std::fs::symlink_metadata(&dir).is_ok() {
        found.push(format!("run directory {}", dir.display()));
    }
    found.extend(apply::run_id_in_use(run)?);
    if let Some(e) = engine {
        found.extend(
            e.containers_of(run)?
                .into_iter()
                .map(|c| format!("container {c}")),
        );
        found.extend(
            e.volumes_of(run)?
                .into_iter()
                .map(|v| format!("volume {v}")),
        );
    }
    Ok(found)
}

/// Creates the run directory `dir` with mode 0700 (its parent, the runs directory, as
/// needed); an existing one is [`LabError::RunIdTaken`] (the check and the creation are one
/// `mkdir`, so two controllers cannot both take it).
fn create_run_dir(dir: &Path, run: &RunId) -> Result<(), LabError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(io(format!("cannot create {}", parent.display())))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(LabError::RunIdTaken {
            run: run.0.clone(),
            found: vec![format!("run directory {}", dir.display())],
        }),
        Err(e) => Err(io(format!("cannot create {}", dir.display()))(e)),
    }
}

/// The agent binary: `explicit`, else `chaosnet-agent` next to this binary.
///
/// # Errors
/// A message saying how to build it when it is not there.
pub fn agent_bin(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let me = std::env::current_exe()
        .map_err(|e| format!("cannot find the chaosnet binary's own path: {e}"))?;
    let sibling = me.with_file_name("chaosnet-agent");
    if sibling.is_file() {
        return Ok(sibling);
    }
    Err(format!(
        "chaosnet-agent not found next to {} (build it with `make build`, or pass --agent-bin)",
        me.display()
    ))
}

/// The run directory of `run`, or of the current run.
///
/// # Errors
/// [`LabError::NoRun`] when there is no such run (or no current one).
pub fn run_dir_of(runs: &Path, run: Option<&str>) -> Result<PathBuf, LabError> {
    let dir = match run {
        Some(r) => runs.join(r),
        None => {
            let link = runs.join(CURRENT);
            let target = std::fs::read_link(&link).map_err(|_| {
                LabError::NoRun(format!(
                    "no current run in {} (run `chaosnet up`)",
                    runs.display()
                ))
            })?;
            runs.join(target)
        }
    };
    if !dir.join(RunState::FILE_NAME).is_file() {
        return Err(LabError::NoRun(format!("no run at {}", dir.display())));
    }
    Ok(dir)
}

/// Forgets which run is current (after `down` of the current run).
pub fn clear_current(runs: &Path) {
    let _ = std::fs::remove_file(runs.join(CURRENT));
}

fn set_current(runs: &Path, run_id: &RunId) -> Result<(), LabError> {
    let link = runs.join(CURRENT);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&run_id.0, &link)
        .map_err(io(format!("cannot update {}", link.display())))
}

/// What resolving `--runtime` (and the scenario's `runtime:`) found.
#[derive(Debug)]
pub struct Resolved {
    /// The engine, when some agent runs in docker.
    pub engine: Option<Engine>,
    /// What `auto` decided and why, one line each (for people).
    pub notes: Vec<String>,
}

/// Applies `--runtime` to the scenario and resolves `auto`: docker when the engine answers
/// and `image` exists (or can be built from `bin`), else process. Creates nothing, except
/// an image that `auto` builds.
///
/// # Errors
/// An explicit docker runtime without an engine or the image.
pub fn resolve_runtime(
    scenario: &mut Scenario,
    choice: Option<RuntimeChoice>,
    image: &str,
    bin: Option<&Path>,
) -> Result<Resolved, LabError> {
    if let Some(c) = choice {
        scenario.set_runtime(c);
    }
    let mut notes = Vec::new();
    let explicit = scenario.uses_runtime(RuntimeChoice::Docker);
    let auto = scenario.uses_runtime(RuntimeChoice::Auto);
    if !explicit && !auto {
        return Ok(Resolved {
            engine: None,
            notes,
        });
    }
    let engine = match Engine::connect() {
        Ok(e) => e,
        Err(e) if !explicit => {
            notes.push(format!("runtime auto: process ({e})"));
            scenario.resolve_auto(RuntimeKind::Process);
            return Ok(Resolved {
                engine: None,
                notes,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let mut has_image = engine.has_image(image)?;
    if !has_image && !explicit {
        match bin.map(|b| docker::build_image(image, b)) {
            Some(Ok(())) => {
                notes.push(format!("runtime auto: built image {image}"));
                has_image = true;
            }
            Some(Err(e)) => notes.push(format!("runtime auto: process ({e})")),
            None => notes.push(format!(
                "runtime auto: process (image {image} missing and no agent binary to build it from)"
            )),
        }
        if !has_image {
            scenario.resolve_auto(RuntimeKind::Process);
            return Ok(Resolved {
                engine: None,
                notes,
            });
        }
    }
    if !has_image {
        return Err(DockerError::ImageMissing {
            image: image.to_string(),
        }
        .into());
    }
    if auto {
        notes.push(format!(
            "runtime auto: docker (engine API {}, image {image})",
            engine.api_version()
        ));
    }
    scenario.resolve_auto(RuntimeKind::Docker);
    Ok(Resolved {
        engine: Some(engine),
        notes,
    })
}

/// How to bring a lab up.
#[derive(Debug)]
pub struct UpOptions {
    /// The runs directory (the run's directory is made in it).
    pub runs_dir: PathBuf,
    /// The agent binary, when the plan has process agents.
    pub agent_bin: Option<PathBuf>,
    /// The agent image of docker agents.
    pub image: String,
    /// The engine [`resolve_runtime`] connected to, when the plan has docker agents.
    pub engine: Option<Engine>,
}

/// Progress of [`Lab::up`].
#[derive(Debug)]
pub enum UpEvent<'a> {
    /// Building the namespaces.
    Apply(Step),
    /// The namespaces are built.
    LabUp(&'a ApplyReport),
    /// Agents are about to start.
    Starting {
        /// How many.
        agents: usize,
    },
    /// An agent is starting.
    Agent(&'a str),
    /// An agent started.
    Started(&'a str),
}

/// A run's lab: its directory, plan and fleet. See the module docs.
#[derive(Debug)]
pub struct Lab {
    run_dir: PathBuf,
    state: RunState,
    fleet: Fleet,
}

/// What taking a run down removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DownReport {
    /// Runs whose namespaces were found.
    pub runs: Vec<String>,
    /// Namespaces deleted.
    pub namespaces: usize,
    /// Processes killed inside them.
    pub processes: usize,
    /// Monitoring processes stopped.
    pub monitors: usize,
    /// Chaosnet-looking namespaces left alone: no marker, and no state file names them.
    pub unowned: Vec<String>,
    /// Containers removed.
    pub containers: usize,
    /// Volumes removed.
    pub volumes: usize,
}

impl Lab {
    /// Brings the lab of `plan` up: run directory and state file, namespaces, then every
    /// agent (not waiting for them to join: see [`Lab::wait_joined`]). On failure
    /// everything created is removed again, except the run directory (its logs).
    ///
    /// # Errors
    /// Not root or a missing tool (before anything is created), a failed apply, a runtime
    /// that cannot be set up, an agent that cannot start.
    pub fn up(
        plan: Plan,
        opts: UpOptions,
        on: &(dyn Fn(UpEvent<'_>) + Sync),
    ) -> Result<Lab, LabError> {
        apply::preflight()?;
        let run_dir = opts.runs_dir.join(&plan.run_id.0);
        // Nothing is created for a run id in use: not the directory, not a namespace.
        let found = run_id_in_use(&opts.runs_dir, &plan.run_id, opts.engine.as_ref())?;
        if !found.is_empty() {
            return Err(LabError::RunIdTaken {
                run: plan.run_id.0.clone(),
                found,
            });
        }
        create_run_dir(&run_dir, &plan.run_id)?;
        let run_dir = std::path::absolute(&run_dir)
            .map_err(io(format!("cannot make {} absolute", run_dir.display())))?;
        set_current(&opts.runs_dir, &plan.run_id)?;
        // The state file exists before anything is created, so `down` can always clean up.
        let mut state = RunState::new(plan);
        if opts.engine.is_some() {
            state.image = Some(opts.image.clone());
        }
        state.save(&run_dir)?;
        let plan = &state.plan;
        let report = apply::apply(plan, &|s: Step| on(UpEvent::Apply(s)))?;
        on(UpEvent::LabUp(&report));
        let ctx = RuntimeContext {
            plan,
            run_dir: &run_dir,
            agent_bin: opts.agent_bin.as_deref(),
            image: &opts.image,
        };
        let fleet = match Fleet::new(&ctx, opts.engine) {
            Ok(f) => f,
            Err(e) => {
                let _ = down_run(&run_dir, &state);
                return Err(e.into());
            }
        };
        let lab = Lab {
            run_dir,
            state,
            fleet,
        };
        on(UpEvent::Starting {
            agents: lab.plan().agents.len(),
        });
        let started = lab.start_all(on);
        lab.save()?;
        if let Err(e) = started {
            let _ = down_run(&lab.run_dir, &lab.state);
            return Err(e);
        }
        Ok(lab)
    }

    /// Starts every agent with up to [`START_JOBS`] in flight; stops handing out agents at
    /// the first failure and returns it.
    fn start_all(&self, on: &(dyn Fn(UpEvent<'_>) + Sync)) -> Result<(), LabError> {
        let agents = &self.plan().agents;
        let next = AtomicUsize::new(0);
        let first_err: Mutex<Option<LabError>> = Mutex::new(None);
        let failed = || {
            first_err
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some()
        };
        std::thread::scope(|s| {
            for _ in 0..START_JOBS.min(agents.len()) {
                s.spawn(|| {
                    while !failed() {
                        let Some(a) = agents.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        on(UpEvent::Agent(&a.name));
                        if let Err(source) = self.fleet.start(a) {
                            first_err
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .get_or_insert(LabError::Start {
                                    agent: a.name.clone(),
                                    source,
                                });
                            break;
                        }
                        on(UpEvent::Started(&a.name));
                    }
                });
            }
        });
        match first_err
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The lab of the run in `run_dir`, its agents adopted by their runtimes. A runtime
    /// that cannot be set up (no agent binary, engine down) only fails calls for its
    /// agents.
    ///
    /// # Errors
    /// A missing or unreadable state file.
    pub fn adopt(run_dir: &Path) -> Result<Lab, LabError> {
        let state = RunState::load(run_dir)?;
        let run_dir = std::path::absolute(run_dir)
            .map_err(io(format!("cannot make {} absolute", run_dir.display())))?;
        // exec and logs need no agent binary: any executable satisfies the process
        // runtime's check, and `restart` needs the real one next to this binary.
        let bin = agent_bin(None)
            .ok()
            .or_else(|| std::env::current_exe().ok());
        let image = state.image.clone().unwrap_or_else(docker::default_image);
        let fleet = Fleet::adopt(
            &RuntimeContext {
                plan: &state.plan,
                run_dir: &run_dir,
                agent_bin: bin.as_deref(),
                image: &image,
            },
            &state.agents,
        );
        Ok(Lab {
            run_dir,
            state,
            fleet,
        })
    }

    /// The run directory (absolute).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.state.plan
    }

    /// The run id.
    pub fn run_id(&self) -> &RunId {
        &self.state.plan.run_id
    }

    /// The agents' runtimes.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The typed control API of agent `name`.
    pub fn agent<'a>(&'a self, name: &'a str) -> AgentApi<'a> {
        self.fleet.agent(name)
    }

    /// Runs a network tool in the plan's namespace `ns`: an agent's own namespace through
    /// the agent's runtime, a router's or the internet's in the local lab.
    ///
    /// # Errors
    /// The tool could not run there (see [`apply::net_exec`]).
    pub fn net(&self, ns: &str, cmd: &NetCmd) -> Result<NetOutput, RuntimeError> {
        match agent_of_ns(self.plan(), ns) {
            Some(agent) => self.fleet.net(agent, cmd),
            None => Ok(apply::net_exec(ns, cmd)?),
        }
    }

    /// Writes the state file with where every agent runs now (after starts, restarts and
    /// faults).
    ///
    /// # Errors
    /// The state file cannot be written.
    pub fn save(&self) -> Result<(), LabError> {
        let mut st = self.state.clone();
        st.agents = self.fleet.instances();
        st.save(&self.run_dir)?;
        Ok(())
    }

    /// Polls every agent's `/status` until all report `joined` or `timeout` passes; calls
    /// `on_join` for each agent as it joins. Returns the agents that joined.
    pub fn wait_joined(&self, timeout: Duration, on_join: &dyn Fn(&str)) -> BTreeSet<String> {
        let agents = &self.plan().agents;
        let deadline = Instant::now() + timeout;
        let mut joined = BTreeSet::new();
        while joined.len() < agents.len() && Instant::now() < deadline {
            for a in agents {
                if joined.contains(&a.name) {
                    continue;
                }
                if self
                    .agent(&a.name)
                    .status(JOIN_POLL_TIMEOUT)
                    .is_ok_and(|s| s.joined)
                {
                    joined.insert(a.name.clone());
                    on_join(&a.name);
                }
            }
            if joined.len() < agents.len() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        joined
    }

    /// Takes the lab down (see [`down_run`]).
    ///
    /// # Errors
    /// As [`down_run`].
    pub fn down(self) -> Result<DownReport, LabError> {
        // Agents restarted by faults have new pids: keep the state file true (best effort:
        // `down` works from names anyway).
        let _ = self.save();
        down_run(&self.run_dir, &self.state)
    }
}

/// The agent whose own namespace `ns` is, if it is one (then its runtime reaches it);
/// routers and the internet are the local lab's.
fn agent_of_ns<'a>(plan: &'a Plan, ns: &str) -> Option<&'a str> {
    match plan.namespace(ns).map(|n| &n.role) {
        Some(NsRole::Host { agent }) => plan.agent(agent).map(|a| a.name.as_str()),
        _ => None,
    }
}

/// The namespaces a run's state file records (its plan's).
fn recorded_namespaces(state: &RunState) -> Vec<String> {
    state
        .plan
        .namespaces
        .iter()
        .map(|n| n.name.clone())
        .collect()
}

/// Takes the run of `state` down: its monitoring processes stopped (those whose command
/// line shows they are this run's), what its runtimes keep outside the namespaces removed
/// by label, its namespaces (and every process in them) deleted: those its plan names and
/// those carrying its marker. The namespaces go even when the engine fails; its error is
/// reported after.
///
/// # Errors
/// A teardown failure, or a required runtime's cleanup failure.
pub fn down_run(run_dir: &Path, state: &RunState) -> Result<DownReport, LabError> {
    let monitors = MonitorState::load(run_dir).stop(run_dir);
    let mut kinds: Vec<RuntimeKind> = state.plan.agents.iter().map(|a| a.runtime).collect();
    kinds.sort();
    kinds.dedup();
    let cleaned = runtime::cleanup(Some(&state.run_id), &kinds);
    let t = apply::teardown_recorded(&state.run_id, &recorded_namespaces(state))?;
    let c = cleaned?;
    tracing::info!(?t, ?c, "teardown");
    Ok(DownReport {
        runs: t.runs,
        namespaces: t.namespaces,
        processes: t.processes,
        monitors,
        unowned: Vec::new(),
        containers: c.containers,
        volumes: c.volumes,
    })
}

/// Takes every chaosnet run on the machine down: the monitoring of every run in `runs`
/// (each pid only when its command line is that run's), every container and volume
/// labelled with a chaosnet run, every namespace carrying chaosnet's marker (also of a
/// killed controller's half-built run) or named by a state file in `runs`, and forgets the
/// current run. Namespaces that only look like chaosnet's are left, with their processes,
/// and named in [`DownReport::unowned`].
///
/// # Errors
/// A teardown or cleanup failure.
pub fn down_all(runs: &Path) -> Result<DownReport, LabError> {
    // Monitoring processes live in the root namespace: stop those of every run we know.
    let mut monitors = 0;
    let mut states = Vec::new();
    if let Ok(entries) = std::fs::read_dir(runs) {
        for e in entries.flatten() {
            let dir = e.path();
            if dir.file_name().is_some_and(|n| n == CURRENT) {
                continue;
            }
            monitors += MonitorState::load(&dir).stop(&dir);
            if let Ok(st) = RunState::load(&dir) {
                states.push(st);
            }
        }
    }
    let cleaned = runtime::cleanup(None, &[]);
    let mut r = apply::teardown_all()?;
    let mut found: BTreeSet<String> = r.runs.iter().cloned().collect();
    let mut add = |r: &mut apply::TeardownReport, again: apply::TeardownReport| {
        found.extend(again.runs);
        r.namespaces += again.namespaces;
        r.processes += again.processes;
    };
    // Runs whose state names namespaces that carry no marker (made before markers).
    for st in &states {
        let again = apply::teardown_recorded(&st.run_id, &recorded_namespaces(st))?;
        add(&mut r, again);
    }
    // A controller killed mid-`up` can leave `ip` children that are still creating
    // namespaces; sweep until a pass finds nothing (bounded).
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        if apply::list_owned_namespaces()?.is_empty() {
            break;
        }
        let again = apply::teardown_all()?;
        add(&mut r, again);
    }
    clear_current(runs);
    let unowned = apply::list_unowned_namespaces()?;
    let c = cleaned?;
    Ok(DownReport {
        runs: found.into_iter().collect(),
        namespaces: r.namespaces,
        processes: r.processes,
        monitors,
        unowned,
        containers: c.containers,
        volumes: c.volumes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_namespace_goes_to_its_runtime_the_rest_to_the_local_lab() {
        let mut s = crate::scenario::Scenario::default_scenario();
        s.scale_agents(s.sites.len()).expect("one agent per site");
        let plan = crate::planner::plan(&s, &RunId("abc123".into())).expect("plan");
        for a in &plan.agents {
            assert_eq!(agent_of_ns(&plan, &a.ns), Some(a.name.as_str()));
        }
        for site in &plan.sites {
            for r in &site.routers {
                assert_eq!(agent_of_ns(&plan, r), None, "{r} is the lab's");
            }
        }
        assert_eq!(agent_of_ns(&plan, "cnabc123-inet"), None);
        assert_eq!(agent_of_ns(&plan, "cnabc123-h-nobody"), None);
    }

    #[test]
    fn a_run_dir_is_private_and_taken_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let run = RunId("abc123".into());
        let run_dir = dir.path().join("runs").join("abc123");
        assert_eq!(
            run_id_in_use(&dir.path().join("runs"), &run, None)
                .expect("check")
                .iter()
                .filter(|f| f.starts_with("run directory"))
                .count(),
            0
        );
        create_run_dir(&run_dir, &run).expect("create");
        let mode = std::fs::metadata(&run_dir)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "the run dir holds key seeds");
        let e = create_run_dir(&run_dir, &run).expect_err("taken");
        assert!(matches!(e, LabError::RunIdTaken { .. }), "{e}");
        assert!(e.to_string().contains("abc123"), "{e}");
        let found = run_id_in_use(&dir.path().join("runs"), &run, None).expect("check");
        assert!(
            found.iter().any(|f| f.starts_with("run directory")),
            "{found:?}"
        );
    }

    #[test]
    fn runs_are_found_by_id_or_as_the_current_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = run_dir_of(dir.path(), None).expect_err("no current run");
        assert!(e.to_string().contains("run `chaosnet up`"), "{e}");
        let plan = crate::planner::plan(
            &crate::scenario::Scenario::default_scenario(),
            &RunId("abc123".into()),
        )
        .expect("plan");
        let run_dir = dir.path().join("abc123");
        RunState::new(plan).save(&run_dir).expect("save");
        assert!(run_dir_of(dir.path(), None).is_err(), "not current yet");
        set_current(dir.path(), &RunId("abc123".into())).expect("current");
        assert_eq!(
            run_dir_of(dir.path(), None).expect("current"),
            run_dir_of(dir.path(), Some("abc123")).expect("by id")
        );
        clear_current(dir.path());
        assert!(run_dir_of(dir.path(), None).is_err());
        assert!(run_dir_of(dir.path(), Some("ffffff")).is_err());
    }
}
