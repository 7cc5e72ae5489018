//! `chaosnet up`, `down`, `status` and `plan`, and the bring-up `chaosnet run` shares with
//! `up` ([`bring_up`]): the lab commands. They print; the work is [`crate::lab`]'s.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use clap::Args;
use indicatif::ProgressBar;
use serde::Serialize;

use super::bar;
use crate::apply::{self, Step};
use crate::lab::{self, Lab, RunState, UpEvent, UpOptions};
use crate::monitor::{self, MonitorState, grafana::GrafanaStart};
use crate::plan::{RunId, RuntimeKind};
use crate::planner;
use crate::runtime::docker;
use crate::runtime::{AgentState, Runtime, log_tail};
use crate::scenario::{RuntimeChoice, Scenario};

#[derive(Debug, Args)]
pub(super) struct ScenarioArgs {
    /// Scenario file (default: the embedded default scenario, every NAT type).
    #[arg(short = 'f', long = "file", value_name = "SCENARIO.yaml")]
    file: Option<PathBuf>,
    /// Scale the non-seed agents to N, spread over the sites in proportion.
    #[arg(long, value_name = "N")]
    agents: Option<usize>,
    /// Overrides the scenario's seed.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
}

/// How agents run: shared by `up` and `run`.
#[derive(Debug, Args)]
pub(super) struct RuntimeArgs {
    /// How agents run: process, docker (one container each, image from `make image`), or
    /// auto (docker when the engine answers and the image exists or can be built, else
    /// process). Overrides the scenario's `runtime`; without either, process. `kube` is
    /// not built yet: it is refused, and manifests/ deploys the fleet with kubectl.
    #[arg(long, value_name = "auto|process|docker")]
    pub(super) runtime: Option<RuntimeChoice>,
    /// The agent image of the docker runtime (default chaosnet-agent:<version>).
    #[arg(long, env = "CHAOSNET_IMAGE", value_name = "IMAGE")]
    pub(super) image: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct UpArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// Also start Prometheus (when installed) scraping every agent, and print its URL.
    #[arg(long)]
    monitor: bool,
    /// Port of the local Prometheus.
    #[arg(long, default_value_t = 9090)]
    prometheus_port: u16,
    /// The agent binary (default: `chaosnet-agent` next to this binary).
    #[arg(long, value_name = "PATH")]
    agent_bin: Option<PathBuf>,
    /// How long to wait for every agent to join.
    #[arg(long, default_value_t = 60)]
    join_timeout_s: u64,
    /// Leave the lab up when an agent fails to join (for debugging).
    #[arg(long)]
    keep_on_failure: bool,
    /// The run id (6 lowercase hex characters; default: a fresh random one). One in use on
    /// this machine (its run directory, namespaces or containers exist) is refused.
    #[arg(long, value_name = "ID")]
    run_id: Option<String>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Run id (default: the current run).
    #[arg(long)]
    run: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct DownArgs {
    /// Remove every chaosnet run on this machine, including runs of a killed controller.
    #[arg(long)]
    all: bool,
    /// Run id (default: the current run).
    #[arg(long)]
    run: Option<String>,
}

/// The scenario of `-f` (or the default one) with `--agents` and `--seed` applied, and how
/// to name it in messages.
pub(super) fn load_scenario(args: &ScenarioArgs) -> anyhow::Result<(Scenario, String)> {
    let (mut s, label) = match &args.file {
        Some(f) => (Scenario::load(f)?, f.display().to_string()),
        None => (
            Scenario::default_scenario(),
            "the default scenario".to_string(),
        ),
    };
    if let Some(n) = args.agents {
        s.scale_agents(n).with_context(|| format!("--agents {n}"))?;
    }
    if let Some(seed) = args.seed {
        s.seed = seed;
    }
    Ok((s, label))
}

/// What [`bring_up`] needs besides the scenario.
pub(super) struct BringUp<'a> {
    /// How the scenario is named in messages.
    pub(super) label: &'a str,
    /// `--runtime` and `--image`.
    pub(super) runtime: &'a RuntimeArgs,
    /// `--agent-bin`.
    pub(super) agent_bin: Option<PathBuf>,
    /// How long agents get to join.
    pub(super) join_timeout: Duration,
    /// Keep the lab when agents did not join.
    pub(super) keep_on_failure: bool,
    /// Start monitoring, with Prometheus on this port.
    pub(super) monitor: Option<u16>,
    /// The run id asked for (default: a fresh free one).
    pub(super) run_id: Option<RunId>,
}

/// How [`bring_up`] ended (errors aside).
pub(super) enum Up {
    /// Every agent joined.
    Ready(Lab),
    /// Some agents did not join; the lab stays (`--keep-on-failure`).
    Unjoined(Lab),
    /// Some agents did not join; the run was removed.
    Removed,
}

/// Brings a scenario's lab up with progress output, as `chaosnet up` does: runtime
/// resolution, plan (with the `chaos:` section checked), namespaces, agents, the wait for
/// every agent to join (the ones that did not are named, with the tail of their logs), and
/// monitoring.
pub(super) fn bring_up(
    runs: &Path,
    mut scenario: Scenario,
    req: &BringUp<'_>,
) -> anyhow::Result<Up> {
    apply::preflight()?;
    let image = req
        .runtime
        .image
        .clone()
        .unwrap_or_else(docker::default_image);
    let bin = lab::agent_bin(req.agent_bin.clone());
    let resolved = lab::resolve_runtime(
        &mut scenario,
        req.runtime.runtime,
        &image,
        bin.as_deref().ok(),
    )?;
    for note in &resolved.notes {
        eprintln!("chaosnet: {note}");
    }
    let run_id = match &req.run_id {
        Some(id) => id.clone(),
        None => lab::free_run_id(runs, resolved.engine.as_ref()),
    };
    let plan = planner::plan(&scenario, &run_id)?;
    crate::chaos::check(&scenario, &plan)?;
    let processes = plan
        .agents
        .iter()
        .filter(|a| a.runtime == RuntimeKind::Process)
        .count();
    let agent_bin = if processes > 0 {
        Some(bin.map_err(|e| anyhow!(e))?)
    } else {
        None
    };
    eprintln!(
        "chaosnet: run {} from {}: {} namespaces, {} agents in {} sites ({} in docker)",
        run_id.0,
        req.label,
        plan.namespaces.len(),
        plan.agents.len(),
        plan.sites.len(),
        plan.agents.len() - processes
    );
    let t0 = Instant::now();
    let lab_bar = bar(0, "lab");
    let agents_bar: Mutex<Option<ProgressBar>> = Mutex::new(None);
    let on = |e: UpEvent<'_>| match e {
        UpEvent::Apply(s) => apply_progress(&lab_bar, &s),
        UpEvent::LabUp(r) => {
            lab_bar.finish_and_clear();
            eprintln!(
                "chaosnet: lab up: {} namespaces in {:.2?}",
                r.namespaces, r.elapsed
            );
        }
        UpEvent::Starting { agents } => {
            *agents_bar
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(bar(agents as u64, "agents"));
        }
        UpEvent::Agent(name) => with_bar(&agents_bar, |b| b.set_message(name.to_string())),
        UpEvent::Started(_) => with_bar(&agents_bar, |b| b.inc(1)),
    };
    let up = Lab::up(
        plan,
        UpOptions {
            runs_dir: runs.to_path_buf(),
            agent_bin,
            image,
            engine: resolved.engine,
        },
        &on,
    );
    lab_bar.finish_and_clear();
    with_bar(&agents_bar, ProgressBar::finish_and_clear);
    let lab = up?;

    let n = lab.plan().agents.len();
    let join_bar = bar(n as u64, "joining");
    let joined = lab.wait_joined(req.join_timeout, &|_| join_bar.inc(1));
    join_bar.finish_and_clear();
    if joined.len() < n {
        report_unjoined(&lab, &joined, req.join_timeout);
        if req.keep_on_failure {
            eprintln!("chaosnet: the lab stays up (--keep-on-failure); `chaosnet down` removes it");
            return Ok(Up::Unjoined(lab));
        }
        lab.down()?;
        eprintln!("chaosnet: removed the run (use --keep-on-failure to inspect it)");
        return Ok(Up::Removed);
    }
    eprintln!("chaosnet: all {n} agents joined in {:.2?}", t0.elapsed());
    if let Some(port) = req.monitor {
        start_monitor(&lab, port)?;
    }
    Ok(Up::Ready(lab))
}

fn apply_progress(pb: &ProgressBar, s: &Step) {
    pb.set_length(s.total as u64);
    pb.set_position(s.done as u64);
    if let Some(ns) = &s.ns {
        pb.set_message(ns.clone());
    }
}

fn with_bar(b: &Mutex<Option<ProgressBar>>, f: impl FnOnce(&ProgressBar)) {
    if let Some(pb) = b
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
    {
        f(pb);
    }
}

/// Names the agents that did not join, with what their runtime says and their last log
/// lines.
fn report_unjoined(lab: &Lab, joined: &BTreeSet<String>, timeout: Duration) {
    let agents = &lab.plan().agents;
    let missing: Vec<_> = agents
        .iter()
        .filter(|a| !joined.contains(&a.name))
        .collect();
    eprintln!(
        "chaosnet: {} of {} agents did not join within {} s:",
        missing.len(),
        agents.len(),
        timeout.as_secs()
    );
    for a in missing {
        let why = match lab.fleet().state(&a.name) {
            Ok(AgentState::Exited { status }) => format!("exited ({status:?})"),
            Ok(s) => format!("{s:?}"),
            Err(e) => e.to_string(),
        };
        eprintln!(
            "--- {} ({}, {}, {}): {why}; last log lines:",
            a.name,
            a.site,
            a.lan_ip,
            a.runtime.name()
        );
        for l in log_tail(lab.fleet(), &a.name, 8) {
            eprintln!("    {l}");
        }
    }
}

fn start_monitor(lab: &Lab, prom_port: u16) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let st = monitor::start(lab.run_dir(), lab.plan(), &exe, prom_port)?;
    match &st.prometheus {
        Some(url) => eprintln!(
            "chaosnet: Prometheus at {url} (config {})",
            st.config.display()
        ),
        None => eprintln!(
            "chaosnet: prometheus is not installed (apt-get install prometheus); scrape config written to {}",
            st.config.display()
        ),
    }
    if let (Some(prom), Some(g)) = (&st.prometheus, &st.grafana) {
        match g {
            GrafanaStart::Started { url, .. } => eprintln!(
                "chaosnet: Grafana at {url} (dashboards in folder \"chaosnet\"; ready in a few seconds, log {})",
                lab.run_dir().join("grafana").join("grafana.log").display()
            ),
            GrafanaStart::NotInstalled => eprintln!(
                "chaosnet: Grafana is not installed (no grafana or grafana-server on the PATH); to see the dashboards, run docker/monitoring/docker-compose.yml or import dashboards/*.json into a Grafana with a Prometheus datasource at {prom} (dashboards/README.md)"
            ),
            GrafanaStart::NoHome { bin } => eprintln!(
                "chaosnet: found {} but not Grafana's home (conf/defaults.ini); set GF_PATHS_HOME to it, or import dashboards/*.json with a Prometheus datasource at {prom} (dashboards/README.md)",
                bin.display()
            ),
        }
    }
    eprintln!(
        "chaosnet: agent metrics at http://{}/agents/<agent>/metrics",
        st.proxy
    );
    Ok(())
}

/// `chaosnet up`.
pub(super) fn up(runs: &Path, args: UpArgs) -> anyhow::Result<ExitCode> {
    let (scenario, label) = load_scenario(&args.scenario)?;
    let up = bring_up(
        runs,
        scenario,
        &BringUp {
            label: &label,
            runtime: &args.runtime,
            agent_bin: args.agent_bin,
            join_timeout: Duration::from_secs(args.join_timeout_s),
            keep_on_failure: args.keep_on_failure,
            monitor: args.monitor.then_some(args.prometheus_port),
            run_id: args.run_id.map(RunId),
        },
    )?;
    match up {
        Up::Ready(lab) => {
            print_status(&lab, &runs.join(&lab.run_id().0), false)?;
            Ok(ExitCode::SUCCESS)
        }
        Up::Unjoined(_) | Up::Removed => Ok(ExitCode::from(1)),
    }
}

/// `chaosnet plan`: the plan as JSON (with the `chaos:` section checked), nothing created.
pub(super) fn plan(args: &ScenarioArgs) -> anyhow::Result<ExitCode> {
    let (scenario, _) = load_scenario(args)?;
    let plan = planner::plan(&scenario, &RunId("000000".into()))?;
    crate::chaos::check(&scenario, &plan)?;
    println!("{}", serde_json::to_string_pretty(&plan)?);
    Ok(ExitCode::SUCCESS)
}

/// One row of `status`.
#[derive(Debug, Serialize)]
struct AgentRow {
    agent: String,
    site: String,
    nat: String,
    runtime: &'static str,
    lan_addr: String,
    public_addr: String,
    node_id: String,
    running: bool,
    joined: bool,
    contacts: u64,
    direct: u64,
    punched: u64,
    relayed: u64,
    nat_type: String,
}

/// Every agent's row, its `/status` asked in parallel.
fn rows(lab: &Lab) -> Vec<AgentRow> {
    use chaosnet_contract::api::ConnMode;
    let plan = lab.plan();
    std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .agents
            .iter()
            .map(|a| {
                scope.spawn(move || {
                    let site = plan.site(&a.site);
                    let st = lab.agent(&a.name).status(Duration::from_secs(2)).ok();
                    let count = |m: ConnMode| st.as_ref().map_or(0, |s| s.connections_in(m) as u64);
                    AgentRow {
                        agent: a.name.clone(),
                        site: a.site.clone(),
                        nat: site.map_or("none".into(), |s| {
                            if s.cgnat {
                                format!("cgnat/{}", s.nat.name())
                            } else {
                                s.nat.name().to_string()
                            }
                        }),
                        runtime: a.runtime.name(),
                        lan_addr: format!("{}:{}", a.lan_ip, a.port),
                        public_addr: site
                            .and_then(|s| s.public_ip)
                            .unwrap_or(a.lan_ip)
                            .to_string(),
                        node_id: a.node_id.clone(),
                        running: st.is_some(),
                        joined: st.as_ref().is_some_and(|s| s.joined),
                        contacts: st.as_ref().map_or(0, |s| s.contacts as u64),
                        direct: count(ConnMode::Direct),
                        punched: count(ConnMode::Punched),
                        relayed: count(ConnMode::Relayed),
                        nat_type: st.as_ref().map(|s| s.nat_type.clone()).unwrap_or_default(),
                    }
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    })
}

/// The status table (or JSON) of a lab, whose run directory is shown as `run_dir`.
fn print_status(lab: &Lab, run_dir: &Path, json: bool) -> anyhow::Result<()> {
    let rows = rows(lab);
    let run_id = &lab.run_id().0;
    if json {
        let mon = MonitorState::load(lab.run_dir());
        let out = serde_json::json!({ "run_id": run_id, "run_dir": run_dir, "agents": rows,
            "prometheus": mon.prometheus_url, "grafana": mon.grafana_url, "proxy": mon.proxy_addr });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let line = |c: [&str; 10]| {
        format!(
            "{:<16} {:<12} {:<26} {:<8} {:<18} {:<15} {:>8} {:>13} {:<7} {}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9]
        )
    };
    println!(
        "{}",
        line([
            "AGENT",
            "SITE",
            "NAT",
            "RUNTIME",
            "LAN ADDR",
            "PUBLIC ADDR",
            "CONTACTS",
            "CONN d/p/r",
            "JOINED",
            "SEEN AS"
        ])
    );
    for r in &rows {
        let joined = if !r.running {
            "down"
        } else if r.joined {
            "yes"
        } else {
            "no"
        };
        println!(
            "{}",
            line([
                &r.agent,
                &r.site,
                &r.nat,
                r.runtime,
                &r.lan_addr,
                &r.public_addr,
                &r.contacts.to_string(),
                &format!("{}/{}/{}", r.direct, r.punched, r.relayed),
                joined,
                &r.nat_type,
            ])
        );
    }
    let up = rows.iter().filter(|r| r.joined).count();
    println!(
        "run {run_id}: {up}/{} agents joined ({})",
        rows.len(),
        run_dir.display()
    );
    Ok(())
}

/// `chaosnet status`.
pub(super) fn status(runs: &Path, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let run_dir = lab::run_dir_of(runs, args.run.as_deref())?;
    let lab = Lab::adopt(&run_dir)?;
    print_status(&lab, &run_dir, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// `chaosnet down [--all] [--run ID]`.
pub(super) fn down(runs: &Path, args: &DownArgs) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    if args.all {
        let r = lab::down_all(runs)?;
        println!(
            "chaosnet: removed {} run(s), {} namespaces, {} processes, {} monitoring processes, {} containers, {} volumes in {:.2?}",
            r.runs.len(),
            r.namespaces,
            r.processes,
            r.monitors,
            r.containers,
            r.volumes,
            t0.elapsed()
        );
        if !r.unowned.is_empty() {
            println!(
                "chaosnet: left {} namespace(s) that chaosnet did not create (no marker under {}, no state file): {}",
                r.unowned.len(),
                apply::owner::OWNER_DIR,
                r.unowned.join(" ")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let run_dir = match lab::run_dir_of(runs, args.run.as_deref()) {
        Ok(d) => d,
        Err(_) if args.run.is_none() => {
            println!("chaosnet: no current run; nothing to do (`down --all` cleans up every run)");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    let state = RunState::load(&run_dir)?;
    let r = lab::down_run(&run_dir, &state)?;
    if args.run.is_none() {
        lab::clear_current(runs);
    }
    println!(
        "chaosnet: run {} down: {} namespaces, {} processes, {} containers, {} volumes removed in {:.2?} (logs kept in {})",
        state.run_id.0,
        r.namespaces,
        r.processes,
        r.containers,
        r.volumes,
        t0.elapsed(),
        run_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
