//! A run's agents under their own runtimes: [`Fleet`] sends each call to the process or the
//! docker runtime, by the agent's [`RuntimeKind`] in the plan. Mixed runs (seeds as
//! processes and site agents as containers, or the reverse) go through it, and so do runs
//! with a single runtime.
//!
//! It owns no agents itself and does not decide which runtime an agent gets (the scenario
//! and `--runtime` do, resolved by the CLI before planning).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use super::docker::DockerRuntime;
use super::{AgentState, ExecStatus, InstanceId, ProcessRuntime, Runtime, RuntimeError};
use crate::plan::{Plan, RuntimeKind};

/// The runtimes of one run. See the module docs.
#[derive(Debug)]
pub struct Fleet {
    process: Option<ProcessRuntime>,
    docker: Option<DockerRuntime>,
    /// Why the docker runtime is missing, when the plan has docker agents.
    docker_missing: Option<String>,
    kinds: BTreeMap<String, RuntimeKind>,
}

impl Fleet {
    /// A fleet for `plan`. `process` serves the plan's process agents and `docker` its
    /// docker agents; a missing one makes calls for its agents fail with
    /// [`RuntimeError::Unavailable`] carrying `docker_missing` (or a generic reason).
    pub fn new(
        plan: &Plan,
        process: Option<ProcessRuntime>,
        docker: Option<DockerRuntime>,
        docker_missing: Option<String>,
    ) -> Fleet {
        Fleet {
            process,
            docker,
            docker_missing,
            kinds: plan
                .agents
                .iter()
                .map(|a| (a.name.clone(), a.runtime))
                .collect(),
        }
    }

    /// The runtime kind of agent `name`, if the plan has it.
    pub fn kind_of(&self, name: &str) -> Option<RuntimeKind> {
        self.kinds.get(name).copied()
    }

    /// The docker runtime, when the run has one.
    pub fn docker(&self) -> Option<&DockerRuntime> {
        self.docker.as_ref()
    }

    fn pick(&self, name: &str) -> Result<&dyn Runtime, RuntimeError> {
        let kind = self
            .kind_of(name)
            .ok_or_else(|| RuntimeError::UnknownAgent {
                name: name.to_string(),
            })?;
        let unavailable = |why: String| RuntimeError::Unavailable {
            name: name.to_string(),
            kind: kind.name(),
            why,
        };
        match kind {
            RuntimeKind::Process => self
                .process
                .as_ref()
                .map(|r| r as &dyn Runtime)
                .ok_or_else(|| unavailable("no agent binary was given".into())),
            RuntimeKind::Docker => {
                self.docker
                    .as_ref()
                    .map(|r| r as &dyn Runtime)
                    .ok_or_else(|| {
                        unavailable(
                            self.docker_missing
                                .clone()
                                .unwrap_or_else(|| "no Docker engine connection".into()),
                        )
                    })
            }
        }
    }
}

impl Runtime for Fleet {
    fn kind(&self) -> &'static str {
        match (&self.process, &self.docker) {
            (Some(_), Some(_)) => "mixed",
            (None, Some(_)) => "docker",
            _ => "process",
        }
    }

    fn start(&self, agent: &crate::plan::AgentPlan) -> Result<InstanceId, RuntimeError> {
        self.pick(&agent.name)?.start(agent)
    }

    fn stop(&self, name: &str) -> Result<(), RuntimeError> {
        self.pick(name)?.stop(name)
    }

    fn kill(&self, name: &str) -> Result<(), RuntimeError> {
        self.pick(name)?.kill(name)
    }

    fn restart(&self, name: &str) -> Result<InstanceId, RuntimeError> {
        self.pick(name)?.restart(name)
    }

    fn pause(&self, name: &str) -> Result<(), RuntimeError> {
        self.pick(name)?.pause(name)
    }

    fn resume(&self, name: &str) -> Result<(), RuntimeError> {
        self.pick(name)?.resume(name)
    }

    fn state(&self, name: &str) -> Result<AgentState, RuntimeError> {
        self.pick(name)?.state(name)
    }

    fn log_path(&self, name: &str) -> Result<PathBuf, RuntimeError> {
        self.pick(name)?.log_path(name)
    }

    fn exec(&self, name: &str, argv: &[String]) -> Result<ExecStatus, RuntimeError> {
        self.pick(name)?.exec(name, argv)
    }

    fn instances(&self) -> BTreeMap<String, InstanceId> {
        let mut all = BTreeMap::new();
        if let Some(p) = &self.process {
            all.extend(p.instances());
        }
        if let Some(d) = &self.docker {
            all.extend(d.instances());
        }
        all
    }

    fn logs(&self, name: &str, follow: bool, out: &mut dyn Write) -> Result<(), RuntimeError> {
        self.pick(name)?.logs(name, follow, out)
    }
}
