//! A run's agents under their own runtimes: [`Fleet`] sends each call to the runtime of
//! the agent's [`RuntimeKind`] in the plan. Mixed runs (seeds as processes and site agents
//! as containers, or the reverse) go through it, and so do runs with a single runtime.
//!
//! It owns no agents itself and does not decide which runtime an agent gets (the scenario
//! and `--runtime` do, resolved before planning). A runtime that could not be set up for an
//! existing run (engine down, no agent binary) only fails the calls for its agents, with
//! the reason.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::{
    AgentState, ExecStatus, InstanceId, Runtime, RuntimeContext, RuntimeError, RuntimeKind,
};
use crate::agentapi::{AgentApi, ApiError};
use crate::apply::{NetCmd, NetOutput};
use crate::http::{Request, Response};
use crate::plan::{AgentPlan, Plan};

/// The runtimes of one run. See the module docs.
pub struct Fleet {
    /// Each runtime kind the plan uses, or why it is not available.
    runtimes: BTreeMap<RuntimeKind, Result<Box<dyn Runtime>, String>>,
    kinds: BTreeMap<String, RuntimeKind>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("kinds", &self.kinds)
            .field(
                "runtimes",
                &self
                    .runtimes
                    .iter()
                    .map(|(k, r)| (k.name(), r.as_ref().err().cloned()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Fleet {
    /// The runtimes of a new run: every kind the plan uses must set up.
    ///
    /// # Errors
    /// The first runtime that cannot be set up.
    pub fn new(
        ctx: &RuntimeContext<'_>,
        mut engine: Option<super::docker::Engine>,
    ) -> Result<Fleet, RuntimeError> {
        let mut runtimes = BTreeMap::new();
        for kind in kinds_of(ctx.plan) {
            let e = if kind == RuntimeKind::Docker {
                engine.take()
            } else {
                None
            };
            runtimes.insert(kind, Ok(super::build(kind, ctx, e, &BTreeMap::new())?));
        }
        Ok(Fleet::with(ctx.plan, runtimes))
    }

    /// The runtimes of an existing run, with the agents of the state file adopted. A
    /// runtime that cannot be set up only fails the calls for its agents.
    pub fn adopt(ctx: &RuntimeContext<'_>, instances: &BTreeMap<String, InstanceId>) -> Fleet {
        let runtimes = kinds_of(ctx.plan)
            .into_iter()
            .map(|k| {
                (
                    k,
                    super::build(k, ctx, None, instances).map_err(|e| e.to_string()),
                )
            })
            .collect();
        Fleet::with(ctx.plan, runtimes)
    }

    fn with(
        plan: &Plan,
        runtimes: BTreeMap<RuntimeKind, Result<Box<dyn Runtime>, String>>,
    ) -> Fleet {
        Fleet {
            runtimes,
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

    /// The typed control API of agent `name`.
    pub fn agent<'a>(&'a self, name: &'a str) -> AgentApi<'a> {
        AgentApi::new(self, name)
    }

    fn pick(&self, name: &str) -> Result<&dyn Runtime, RuntimeError> {
        let kind = self
            .kind_of(name)
            .ok_or_else(|| RuntimeError::UnknownAgent {
                name: name.to_string(),
            })?;
        match self.runtimes.get(&kind) {
            Some(Ok(rt)) => Ok(rt.as_ref()),
            Some(Err(why)) => Err(RuntimeError::Unavailable {
                name: name.to_string(),
                kind: kind.name(),
                why: why.clone(),
            }),
            None => Err(RuntimeError::Unavailable {
                name: name.to_string(),
                kind: kind.name(),
                why: "not set up for this run".into(),
            }),
        }
    }
}

/// The runtime kinds a plan's agents use.
fn kinds_of(plan: &Plan) -> Vec<RuntimeKind> {
    let mut v: Vec<RuntimeKind> = plan.agents.iter().map(|a| a.runtime).collect();
    v.sort();
    v.dedup();
    v
}

impl Runtime for Fleet {
    fn start(&self, agent: &AgentPlan) -> Result<InstanceId, RuntimeError> {
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
        self.runtimes
            .values()
            .flatten()
            .flat_map(|rt| rt.instances())
            .collect()
    }

    fn api(&self, name: &str, req: &Request<'_>, timeout: Duration) -> Result<Response, ApiError> {
        self.pick(name)?.api(name, req, timeout)
    }

    fn net(&self, name: &str, cmd: &NetCmd) -> Result<NetOutput, RuntimeError> {
        self.pick(name)?.net(name, cmd)
    }

    fn logs(&self, name: &str, follow: bool, out: &mut dyn Write) -> Result<(), RuntimeError> {
        self.pick(name)?.logs(name, follow, out)
    }
}
