//! `chaosnet exec`, `logs` and `restart`: one agent of the current run, under whichever
//! runtime runs it (the lab's fleet picks it); `events`: the node events of the fleet or of
//! one agent.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;

use crate::lab::{self, Lab};
use crate::runtime::{AgentState, InstanceId, Runtime};

#[derive(Debug, Args)]
pub(super) struct ExecArgs {
    /// The agent, e.g. `seed-0` or `home-1`.
    agent: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

#[derive(Debug, Args)]
pub(super) struct RestartArgs {
    /// The agent.
    agent: String,
}

#[derive(Debug, Args)]
pub(super) struct LogsArgs {
    /// The agent.
    agent: String,
    /// Keep printing as the log grows.
    #[arg(short, long)]
    follow: bool,
}

#[derive(Debug, Args)]
pub(super) struct EventsArgs {
    /// Only this agent.
    #[arg(long)]
    agent: Option<String>,
    /// Stop after this many seconds (default: until interrupted).
    #[arg(long, value_name = "S")]
    duration_s: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

fn current(runs: &Path) -> anyhow::Result<Lab> {
    Ok(Lab::adopt(&lab::run_dir_of(runs, None)?)?)
}

/// `chaosnet exec <agent> -- <cmd...>`: exits with the command's code.
pub(super) fn exec(runs: &Path, a: &ExecArgs) -> anyhow::Result<ExitCode> {
    let st = current(runs)?.fleet().exec(&a.agent, &a.cmd)?;
    Ok(match st.code {
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::from(1),
    })
}

/// `chaosnet restart <agent>`.
pub(super) fn restart(runs: &Path, a: &RestartArgs) -> anyhow::Result<ExitCode> {
    let lab = current(runs)?;
    let instance = lab.fleet().restart(&a.agent)?;
    lab.save()?;
    let at = match (&instance, lab.fleet().state(&a.agent)) {
        (InstanceId::Container { name, .. }, _) => format!("container {name}"),
        (_, Ok(AgentState::Running { pid })) => format!("pid {pid}"),
        _ => "pid ?".into(),
    };
    println!("chaosnet: restarted {} ({at})", a.agent);
    Ok(ExitCode::SUCCESS)
}

/// `chaosnet logs <agent> [-f]`.
pub(super) fn logs(runs: &Path, a: &LogsArgs) -> anyhow::Result<ExitCode> {
    let lab = current(runs)?;
    let mut out = std::io::stdout().lock();
    lab.fleet().logs(&a.agent, a.follow, &mut out)?;
    Ok(ExitCode::SUCCESS)
}

/// `chaosnet events [--agent A] [--duration-s S] [--json]`.
pub(super) fn events(runs: &Path, a: &EventsArgs) -> anyhow::Result<ExitCode> {
    let lab = current(runs)?;
    let agents: Vec<(String, std::path::PathBuf)> = lab
        .plan()
        .agents
        .iter()
        .filter(|x| a.agent.as_deref().is_none_or(|n| n == x.name))
        .map(|x| (x.name.clone(), lab.run_dir().join(&x.api_socket)))
        .collect();
    if agents.is_empty() {
        anyhow::bail!(
            "no agent {:?} in run {}",
            a.agent.as_deref().unwrap_or(""),
            lab.run_id().0
        );
    }
    let mut out = std::io::stdout().lock();
    let json = a.json;
    crate::events::follow(
        agents,
        a.duration_s.map(std::time::Duration::from_secs),
        |t| {
            crate::events::write(&mut out, t, json)?;
            std::io::Write::flush(&mut out)
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
