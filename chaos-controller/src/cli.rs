//! The `chaosnet` command line: up, status, exec, logs, down, plan, and the hidden `serve`.
//!
//! `main` calls [`main`], which returns the exit code: 0 success, 1 the run failed (an agent
//! did not join), 2 the run could not happen (bad scenario, not root, missing tool...).
//! Runs live in `--runs-dir` (default `./runs`), one directory per run id, with `current`
//! pointing at the newest.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::agentapi;
use crate::apply::{self, RunState, Step};
use crate::matrix;
use crate::monitor::{self, MonitorState};
use crate::plan::RuntimeKind;
use crate::plan::{AgentPlan, Plan, RunId};
use crate::planner;
use crate::runtime::docker::{self, DockerOptions, DockerRuntime, Engine};
use crate::runtime::fleet::Fleet;
use crate::runtime::{AgentState, ProcessRuntime, Runtime, log_tail};
use crate::scenario::{self, RuntimeChoice, Scenario};

/// chaosnet: an emulated internet with every NAT type, and a fleet of P2P agents in it.
///
/// `up` builds the lab from a scenario (network namespaces, nftables NAT routers, conntrack
/// presets), starts the agents inside it and returns once every agent joined. `status`,
/// `exec`, `logs` and `down` act on the current run. Needs root, iproute2, nftables and
/// conntrack (Debian packages of the same names).
#[derive(Debug, Parser)]
#[command(name = "chaosnet", version, about, long_about = None)]
pub struct Cli {
    /// Directory holding one directory per run.
    #[arg(
        long,
        global = true,
        env = "CHAOSNET_RUNS_DIR",
        default_value = "runs",
        value_name = "DIR"
    )]
    runs_dir: PathBuf,
    /// Export traces over OTLP/HTTP to this URL (e.g. http://127.0.0.1:4318/v1/traces):
    /// `chaosnet run` is then one `chaos_run` span with every fault injected and healed as an
    /// event. Off by default.
    #[arg(
        long,
        global = true,
        env = "CHAOSNET_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the lab and start the fleet; returns when every agent joined.
    Up(UpArgs),
    /// Show every agent: site, NAT, addresses, contacts, connections, joined.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Run id (default: the current run).
        #[arg(long)]
        run: Option<String>,
    },
    /// Run a command inside an agent's network namespace.
    ///
    /// The command is the host's (run with `ip netns exec`), for processes and containers
    /// alike: the agent image has no shell, so `exec` enters a container's network
    /// namespace from the host rather than running inside the container.
    Exec {
        /// The agent, e.g. `seed-0` or `home-1`.
        agent: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Restart one agent (same data dir, so it keeps its node graph).
    Restart {
        /// The agent.
        agent: String,
    },
    /// Print an agent's log.
    Logs {
        /// The agent.
        agent: String,
        /// Keep printing as the log grows.
        #[arg(short, long)]
        follow: bool,
    },
    /// Print the node events of the fleet (or one agent) as they happen: connections,
    /// upgrades, relay circuits, NAT type and reachability changes, faults.
    Events {
        /// Only this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Stop after this many seconds (default: until interrupted).
        #[arg(long, value_name = "S")]
        duration_s: Option<u64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Stop the fleet and remove the lab (idempotent).
    Down {
        /// Remove every chaosnet run on this machine, including runs of a killed controller.
        #[arg(long)]
        all: bool,
        /// Run id (default: the current run).
        #[arg(long)]
        run: Option<String>,
    },
    /// Measure the NAT-pair matrix of the running fleet.
    ///
    /// For every ordered pair of sites (one agent each; with --all, every pair of agents),
    /// the dialing agent opens a fresh connection to the other (`POST /connect`, never
    /// reusing one) and reports the path taken: direct, punched or relayed. Each pair is
    /// judged against the best path theory allows for its NAT types. Exits 0 when every pair
    /// connected at its best path, 1 when a pair failed or fell short, 2 when the matrix
    /// could not be measured. The results are also written to <run>/matrix.json.
    Matrix {
        /// Every ordered pair of agents, not one agent per site.
        #[arg(long)]
        all: bool,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
        /// Pairs measured at once (1 with --cold).
        #[arg(long, default_value_t = 4)]
        parallel: usize,
        /// Before each pair, make both sites' routers forget (conntrack) every mapping and
        /// filter entry between the two sites, so each pair starts from cold NATs as
        /// strangers would, instead of reusing state left by earlier traffic between them.
        /// Pairs then run one at a time.
        #[arg(long)]
        cold: bool,
        /// Only pairs dialing from this site.
        #[arg(long, value_name = "SITE")]
        from: Option<String>,
        /// Only pairs dialing to this site.
        #[arg(long, value_name = "SITE")]
        to: Option<String>,
        /// Measure every selected pair this many times.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Give up on one pair after this long.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
        /// Run id (default: the current run).
        #[arg(long)]
        run: Option<String>,
    },
    /// Print the plan of a scenario as JSON without creating anything.
    Plan(ScenarioArgs),
    /// Run a chaos scenario: up, warm-up, faults on schedule with probes, final heal,
    /// settle, end probes, report, down. Exit code 0 pass, 1 an SLO failed, 2 the run could
    /// not happen.
    Run(RunArgs),
    /// Print the fault timeline of a scenario (seeded) without creating anything.
    Timeline {
        /// The scenario.
        scenario: PathBuf,
        /// Overrides the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Inject one fault into the current (running) fleet.
    Fault(Box<FaultArgs>),
    /// Heal the faults injected into the current fleet (recorded in its faults.json).
    Heal {
        /// Also sweep every namespace of the run for fault state without a record (after a
        /// crash): fault nft tables, qdiscs, paused agents, impairments, links down.
        #[arg(long)]
        all: bool,
    },
    /// Serve the scrape proxy of a run (started by `up --monitor`).
    #[command(hide = true)]
    Serve {
        /// The run directory.
        #[arg(long)]
        run_dir: PathBuf,
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[derive(Debug, Args)]
struct ScenarioArgs {
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

#[derive(Debug, Args)]
struct RunArgs {
    /// The scenario (with a `chaos:` section).
    scenario: PathBuf,
    /// Overrides the scenario's seed (node keys, fault timeline, probe samples).
    #[arg(long)]
    seed: Option<u64>,
    /// Leave the lab up afterwards (every fault healed).
    #[arg(long)]
    keep: bool,
    /// Also start Prometheus (needed by PromQL SLOs); it scrapes the controller too.
    #[arg(long)]
    monitor: bool,
    /// Port of the local Prometheus.
    #[arg(long, default_value_t = 9090)]
    prometheus_port: u16,
    /// The agent binary (default: `chaosnet-agent` next to this binary).
    #[arg(long, value_name = "PATH")]
    agent_bin: Option<PathBuf>,
    /// Go on when some agents did not join (for benchmarks of the controller itself).
    #[arg(long)]
    allow_unjoined: bool,
}

#[derive(Debug, Args)]
struct FaultArgs {
    /// kill, restart, pause, partition, loss, delay, bandwidth, nat-swap, ip-change, link-down.
    kind: String,
    /// Select agents of these sites (repeatable; `internet` = the seeds).
    #[arg(long)]
    site: Vec<String>,
    /// Select agents behind these NAT types (repeatable).
    #[arg(long)]
    nat: Vec<String>,
    /// Select seeds or peers.
    #[arg(long)]
    role: Option<String>,
    /// Select agents by name glob (repeatable), e.g. `home*`.
    #[arg(long)]
    name: Vec<String>,
    /// one, all, fixed:N or percent:P.
    #[arg(long, default_value = "all")]
    mode: String,
    /// Heal after this many seconds (the command waits); without it the fault stays until
    /// `chaosnet heal`.
    #[arg(long)]
    duration: Option<f64>,
    /// Seed of the random choices (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// partition: isolate, halves, majority, ring, bridge, sites.
    #[arg(long)]
    shape: Option<String>,
    /// partition: block only the first group towards the others.
    #[arg(long)]
    oneway: bool,
    /// loss: percent dropped each way.
    #[arg(long)]
    loss_pct: Option<f64>,
    /// delay: added delay in ms.
    #[arg(long)]
    delay_ms: Option<u64>,
    /// delay: jitter in ms.
    #[arg(long)]
    jitter_ms: Option<u64>,
    /// bandwidth: rate in kbit/s.
    #[arg(long)]
    rate_kbit: Option<u64>,
    /// nat-swap: the new NAT type.
    #[arg(long)]
    to: Option<String>,
    /// link-down: agent or site.
    #[arg(long)]
    scope: Option<String>,
}

#[derive(Debug, Args)]
struct UpArgs {
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
    /// How agents run: process, docker (one container each, image from `make image`), or
    /// auto (docker when the engine answers and the image exists or can be built, else
    /// process). Overrides the scenario's `runtime`; without either, process.
    #[arg(long, value_name = "auto|process|docker")]
    runtime: Option<RuntimeChoice>,
    /// The agent image of the docker runtime (default chaosnet-agent:<version>).
    #[arg(long, env = "CHAOSNET_IMAGE", value_name = "IMAGE")]
    image: Option<String>,
}

/// Parses arguments and runs; returns the exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // Dropped at the end of main: flushes pending spans.
    let _telemetry = match chaosnet_telemetry::init(chaosnet_telemetry::Options {
        service: "chaosnet",
        format: "text",
        otlp_endpoint: cli.otlp_endpoint.as_deref(),
        default_log_filter: "warn",
        export_filter: "chaos_controller=info",
    }) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("chaosnet: error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chaosnet: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runs = cli.runs_dir;
    match cli.command {
        Cmd::Up(args) => up(&runs, args),
        Cmd::Status { json, run } => {
            status(&runs, run.as_deref(), json).map(|()| ExitCode::SUCCESS)
        }
        Cmd::Exec { agent, cmd } => exec(&runs, &agent, &cmd),
        Cmd::Restart { agent } => restart(&runs, &agent).map(|()| ExitCode::SUCCESS),
        Cmd::Logs { agent, follow } => logs(&runs, &agent, follow).map(|()| ExitCode::SUCCESS),
        Cmd::Events {
            agent,
            duration_s,
            json,
        } => events(&runs, agent.as_deref(), duration_s, json).map(|()| ExitCode::SUCCESS),
        Cmd::Down { all, run } => down(&runs, all, run.as_deref()).map(|()| ExitCode::SUCCESS),
        Cmd::Matrix {
            all,
            json,
            parallel,
            cold,
            from,
            to,
            repeat,
            timeout_s,
            run,
        } => {
            let opts = MatrixOpts {
                all,
                json,
                parallel: if cold { 1 } else { parallel },
                cold,
                from,
                to,
                repeat,
                timeout_s,
            };
            matrix(&runs, run.as_deref(), &opts)
        }
        Cmd::Plan(args) => {
            let (scenario, _) = load_scenario(&args)?;
            let plan = planner::plan(&scenario, &RunId("000000".into()))?;
            println!("{}", serde_json::to_string_pretty(&plan)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run(a) => {
            let outcome = crate::chaos::run::run(&crate::chaos::run::RunOptions {
                scenario: a.scenario,
                seed: a.seed,
                keep: a.keep,
                monitor: a.monitor,
                prometheus_port: a.prometheus_port,
                runs_dir: runs,
                agent_bin: a.agent_bin,
                allow_unjoined: a.allow_unjoined,
            });
            if let crate::chaos::run::Outcome::Failed(why) = &outcome {
                eprintln!("chaosnet: the run could not happen: {why}");
            }
            Ok(ExitCode::from(outcome.exit_code()))
        }
        Cmd::Timeline { scenario, seed } => {
            let (_, tl) = crate::chaos::run::prepare(&scenario, seed).map_err(|e| anyhow!(e))?;
            crate::chaos::run::print_timeline(&tl);
            println!("{}", serde_json::to_string_pretty(&tl)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Fault(a) => fault_cmd(&runs, *a).map(|()| ExitCode::SUCCESS),
        Cmd::Heal { all } => heal_cmd(&runs, all).map(|()| ExitCode::SUCCESS),
        Cmd::Serve { run_dir, listen } => {
            monitor::serve(&run_dir, listen)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load_scenario(args: &ScenarioArgs) -> anyhow::Result<(Scenario, String)> {
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

fn new_run_id() -> RunId {
    RunId(format!("{:06x}", rand::random::<u32>() & 0x00ff_ffff))
}

fn agent_bin(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let me = std::env::current_exe().context("cannot find the chaosnet binary's own path")?;
    let sibling = me.with_file_name("chaosnet-agent");
    if sibling.is_file() {
        return Ok(sibling);
    }
    bail!(
        "chaosnet-agent not found next to {} (build it with `make build`, or pass --agent-bin)",
        me.display()
    )
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = if std::io::stderr().is_terminal() {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// Applies `--runtime` and resolves `auto` (see [`UpArgs::runtime`]). Returns the engine
/// when some agent will run in docker. Creates nothing, except an image that `auto` builds.
fn resolve_runtime(
    scenario: &mut Scenario,
    choice: Option<RuntimeChoice>,
    image: &str,
    bin: Option<&Path>,
) -> anyhow::Result<Option<Engine>> {
    if let Some(c) = choice {
        scenario.set_runtime(c);
    }
    let explicit = scenario.uses_runtime(RuntimeChoice::Docker);
    let auto = scenario.uses_runtime(RuntimeChoice::Auto);
    if !explicit && !auto {
        return Ok(None);
    }
    let engine = match Engine::connect() {
        Ok(e) => e,
        Err(e) if !explicit => {
            eprintln!("chaosnet: runtime auto: process ({e})");
            scenario.resolve_auto(RuntimeKind::Process);
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let mut has_image = engine.has_image(image)?;
    if !has_image && !explicit {
        match bin.map(|b| docker::build_image(image, b)) {
            Some(Ok(())) => {
                eprintln!("chaosnet: runtime auto: built image {image}");
                has_image = true;
            }
            Some(Err(e)) => eprintln!("chaosnet: runtime auto: process ({e})"),
            None => eprintln!(
                "chaosnet: runtime auto: process (image {image} missing and no agent binary to build it from)"
            ),
        }
        if !has_image {
            scenario.resolve_auto(RuntimeKind::Process);
            return Ok(None);
        }
    }
    if !has_image {
        return Err(docker::DockerError::ImageMissing {
            image: image.to_string(),
        }
        .into());
    }
    if auto {
        eprintln!(
            "chaosnet: runtime auto: docker (engine API {}, image {image})",
            engine.api_version()
        );
    }
    scenario.resolve_auto(RuntimeKind::Docker);
    Ok(Some(engine))
}

fn up(runs: &Path, args: UpArgs) -> anyhow::Result<ExitCode> {
    let (mut scenario, label) = load_scenario(&args.scenario)?;
    let run_id = new_run_id();
    apply::preflight()?;
    let image = args.image.clone().unwrap_or_else(docker::default_image);
    let bin = agent_bin(args.agent_bin.clone());
    let engine = resolve_runtime(&mut scenario, args.runtime, &image, bin.as_deref().ok())?;
    let plan = planner::plan(&scenario, &run_id)?;
    let has_process = plan
        .agents
        .iter()
        .any(|a| a.runtime == RuntimeKind::Process);
    let process_bin = if has_process { Some(bin?) } else { None };
    let run_dir = runs.join(&run_id.0);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let run_dir = std::path::absolute(&run_dir)?;
    set_current(runs, &run_id)?;
    // The state file exists before anything is created, so `down` can always clean up.
    let mut state = RunState::new(plan.clone());
    if engine.is_some() {
        state.image = Some(image.clone());
    }
    state.save(&run_dir)?;
    let containers = plan.agents.len()
        - plan
            .agents
            .iter()
            .filter(|a| a.runtime == RuntimeKind::Process)
            .count();
    eprintln!(
        "chaosnet: run {} from {label}: {} namespaces, {} agents in {} sites ({containers} in docker)",
        run_id.0,
        plan.namespaces.len(),
        plan.agents.len(),
        plan.sites.len()
    );
    let t0 = Instant::now();

    let pb = bar(0, "lab");
    let report = apply::apply(&plan, &|s: Step| {
        pb.set_length(s.total as u64);
        pb.set_position(s.done as u64);
        if let Some(ns) = &s.ns {
            pb.set_message(ns.clone());
        }
    });
    pb.finish_and_clear();
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            // apply removed its namespaces; the run directory and state stay for the logs.
            return Err(e.into());
        }
    };
    eprintln!(
        "chaosnet: lab up: {} namespaces in {:.2?}",
        report.namespaces, report.elapsed
    );

    let rt = match build_fleet(&plan, &run_dir, process_bin.as_deref(), engine, &image) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = teardown_run(&run_dir, &run_id);
            return Err(e);
        }
    };
    let pb = bar(plan.agents.len() as u64, "agents");
    let start_err = start_all(&rt, &plan.agents, &pb);
    pb.finish_and_clear();
    state.agents = rt.instances();
    state.save(&run_dir)?;
    if let Some(e) = start_err {
        let _ = teardown_run(&run_dir, &run_id);
        return Err(e);
    }

    let joined = wait_joined(&run_dir, &plan, Duration::from_secs(args.join_timeout_s));
    let missing: Vec<&AgentPlan> = plan
        .agents
        .iter()
        .filter(|a| !joined.contains(&a.name))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "chaosnet: {} of {} agents did not join within {} s:",
            missing.len(),
            plan.agents.len(),
            args.join_timeout_s
        );
        for a in &missing {
            let why = match rt.state(&a.name) {
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
            for l in log_tail(&rt, &a.name, 8) {
                eprintln!("    {l}");
            }
        }
        if args.keep_on_failure {
            eprintln!("chaosnet: the lab stays up (--keep-on-failure); `chaosnet down` removes it");
        } else {
            teardown_run(&run_dir, &run_id)?;
            eprintln!("chaosnet: removed the run (use --keep-on-failure to inspect it)");
        }
        return Ok(ExitCode::from(1));
    }
    eprintln!(
        "chaosnet: all {} agents joined in {:.2?}",
        plan.agents.len(),
        t0.elapsed()
    );

    if args.monitor {
        start_monitor(&run_dir, &plan, args.prometheus_port)?;
    }
    status(runs, Some(&run_id.0), false)?;
    Ok(ExitCode::SUCCESS)
}

fn start_monitor(run_dir: &Path, plan: &Plan, prom_port: u16) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let proxy: SocketAddr = SocketAddr::from(([127, 0, 0, 1], monitor::free_port()?));
    let mut st = MonitorState {
        proxy_pid: Some(monitor::spawn_proxy(&exe, run_dir, proxy)?),
        ..Default::default()
    };
    st.proxy_addr = Some(proxy.to_string());
    st.save(run_dir)?;
    let config = monitor::write_config(run_dir, plan, proxy)?;
    let listen = SocketAddr::from(([127, 0, 0, 1], prom_port));
    match monitor::spawn_prometheus(run_dir, &config, listen)? {
        Some(pid) => {
            st.prometheus_pid = Some(pid);
            st.prometheus_url = Some(format!("http://{listen}"));
            eprintln!(
                "chaosnet: Prometheus at http://{listen} (config {})",
                config.display()
            );
        }
        None => eprintln!(
            "chaosnet: prometheus is not installed (apt-get install prometheus); scrape config written to {}",
            config.display()
        ),
    }
    // Saved before Grafana starts, so `down` stops Prometheus even when Grafana fails.
    st.save(run_dir)?;
    if let Some(prom) = st.prometheus_url.clone() {
        match monitor::spawn_grafana(run_dir, &plan.run_id.0, &prom)? {
            monitor::GrafanaStart::Started { pid, url } => {
                st.grafana_pid = Some(pid);
                st.grafana_url = Some(url.clone());
                eprintln!(
                    "chaosnet: Grafana at {url} (dashboards in folder \"chaosnet\"; ready in a few seconds, log {})",
                    run_dir.join("grafana").join("grafana.log").display()
                );
            }
            monitor::GrafanaStart::NotInstalled => eprintln!(
                "chaosnet: Grafana is not installed (no grafana or grafana-server on the PATH); to see the dashboards, run docker/monitoring/docker-compose.yml or import dashboards/*.json into a Grafana with a Prometheus datasource at {prom} (dashboards/README.md)"
            ),
            monitor::GrafanaStart::NoHome { bin } => eprintln!(
                "chaosnet: found {} but not Grafana's home (conf/defaults.ini); set GF_PATHS_HOME to it, or import dashboards/*.json with a Prometheus datasource at {prom} (dashboards/README.md)",
                bin.display()
            ),
        }
    }
    eprintln!("chaosnet: agent metrics at http://{proxy}/agents/<agent>/metrics");
    st.save(run_dir)?;
    Ok(())
}

/// Polls every agent's `/status` until all report `joined`, or the deadline passes.
fn wait_joined(
    run_dir: &Path,
    plan: &Plan,
    timeout: Duration,
) -> std::collections::BTreeSet<String> {
    let pb = bar(plan.agents.len() as u64, "joining");
    let deadline = Instant::now() + timeout;
    let mut joined = std::collections::BTreeSet::new();
    while joined.len() < plan.agents.len() && Instant::now() < deadline {
        for a in &plan.agents {
            if joined.contains(&a.name) {
                continue;
            }
            let sock = run_dir.join(&a.api_socket);
            if let Ok(r) = agentapi::get(&sock, "/status", Duration::from_secs(2))
                && serde_json::from_str::<serde_json::Value>(&r.body)
                    .is_ok_and(|v| v["joined"] == true)
            {
                joined.insert(a.name.clone());
                pb.inc(1);
            }
        }
        if joined.len() < plan.agents.len() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    pb.finish_and_clear();
    joined
}

/// Agents started at once: a container start waits mostly on the engine (runc, namespace
/// setup), so a few in flight keep both cores busy; processes start in milliseconds anyway.
const START_JOBS: usize = 4;

/// Starts every agent with up to [`START_JOBS`] in flight; stops handing out agents at the
/// first failure and returns it.
fn start_all(rt: &Fleet, agents: &[AgentPlan], pb: &ProgressBar) -> Option<anyhow::Error> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let first_err: Mutex<Option<anyhow::Error>> = Mutex::new(None);
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
                    pb.set_message(a.name.clone());
                    if let Err(e) = rt.start(a) {
                        first_err
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .get_or_insert(
                                anyhow!(e).context(format!("cannot start agent {}", a.name)),
                            );
                        break;
                    }
                    pb.inc(1);
                }
            });
        }
    });
    first_err
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The runtimes of a new run: a process runtime when `bin` is given, a docker runtime when
/// `engine` is.
fn build_fleet(
    plan: &Plan,
    run_dir: &Path,
    bin: Option<&Path>,
    engine: Option<Engine>,
    image: &str,
) -> anyhow::Result<Fleet> {
    let process = bin.map(|b| ProcessRuntime::new(run_dir, b)).transpose()?;
    let docker = engine
        .map(|e| {
            DockerRuntime::new(
                e,
                plan,
                run_dir,
                DockerOptions {
                    image: image.to_string(),
                    ..DockerOptions::default()
                },
            )
        })
        .transpose()?;
    Ok(Fleet::new(plan, process, docker, None))
}

/// The runtimes of an existing run, with its agents adopted from the state file. A runtime
/// that cannot be set up (no agent binary, engine down) only fails calls for its agents.
fn fleet_for(run_dir: &Path, state: &RunState) -> Fleet {
    let plan = &state.plan;
    let of = |k: RuntimeKind| -> Vec<crate::plan::AgentPlan> {
        plan.agents
            .iter()
            .filter(|a| a.runtime == k)
            .cloned()
            .collect()
    };
    let procs = of(RuntimeKind::Process);
    let process = if procs.is_empty() {
        None
    } else {
        // exec and logs need no agent binary; any executable satisfies the runtime's check,
        // and `restart` needs the real one next to this binary.
        agent_bin(None)
            .or_else(|_| std::env::current_exe().map_err(anyhow::Error::from))
            .ok()
            .and_then(|bin| ProcessRuntime::new(run_dir, &bin).ok())
            .inspect(|rt| rt.adopt(&procs, &state.agents))
    };
    let (docker, why) = if of(RuntimeKind::Docker).is_empty() {
        (None, None)
    } else {
        let opts = DockerOptions {
            image: state.image.clone().unwrap_or_else(docker::default_image),
            ..DockerOptions::default()
        };
        match Engine::connect()
            .map_err(crate::runtime::RuntimeError::from)
            .and_then(|e| DockerRuntime::new(e, plan, run_dir, opts))
        {
            Ok(d) => {
                d.adopt(&state.agents);
                (Some(d), None)
            }
            Err(e) => (None, Some(e.to_string())),
        }
    };
    Fleet::new(plan, process, docker, why)
}

fn set_current(runs: &Path, run_id: &RunId) -> anyhow::Result<()> {
    let link = runs.join("current");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&run_id.0, &link)
        .with_context(|| format!("cannot update {}", link.display()))
}

/// The run directory of `run` or of the current run.
fn run_dir_of(runs: &Path, run: Option<&str>) -> anyhow::Result<PathBuf> {
    let dir = match run {
        Some(r) => runs.join(r),
        None => {
            let link = runs.join("current");
            let target = std::fs::read_link(&link)
                .map_err(|_| anyhow!("no current run in {} (run `chaosnet up`)", runs.display()))?;
            runs.join(target)
        }
    };
    if !dir.join(RunState::FILE_NAME).is_file() {
        bail!("no run at {}", dir.display());
    }
    Ok(dir)
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

fn rows(run_dir: &Path, state: &RunState) -> Vec<AgentRow> {
    let plan = &state.plan;
    std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .agents
            .iter()
            .map(|a| {
                scope.spawn(move || {
                    let site = plan.sites.iter().find(|s| s.name == a.site);
                    let st = agentapi::get(
                        &run_dir.join(&a.api_socket),
                        "/status",
                        Duration::from_secs(2),
                    )
                    .ok()
                    .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok());
                    let count = |mode: &str| {
                        st.as_ref()
                            .and_then(|v| v["connections"].as_array().cloned())
                            .map_or(0, |c| c.iter().filter(|c| c["mode"] == mode).count() as u64)
                    };
                    AgentRow {
                        agent: a.name.clone(),
                        site: a.site.clone(),
                        nat: site.map_or("none".into(), |s| {
                            if s.cgnat {
                                format!("cgnat/{}", scenario::nat_name(s.nat))
                            } else {
                                scenario::nat_name(s.nat).to_string()
                            }
                        }),
                        runtime: state
                            .agents
                            .get(&a.name)
                            .map_or(a.runtime, |i| i.kind())
                            .name(),
                        lan_addr: format!("{}:{}", a.lan_ip, a.port),
                        public_addr: site
                            .and_then(|s| s.public_ip)
                            .unwrap_or(a.lan_ip)
                            .to_string(),
                        node_id: a.node_id.clone(),
                        running: st.is_some(),
                        joined: st.as_ref().is_some_and(|v| v["joined"] == true),
                        contacts: st
                            .as_ref()
                            .and_then(|v| v["contacts"].as_u64())
                            .unwrap_or(0),
                        direct: count("direct"),
                        punched: count("punched"),
                        relayed: count("relayed"),
                        nat_type: st
                            .as_ref()
                            .and_then(|v| v["nat_type"].as_str().map(str::to_string))
                            .unwrap_or_default(),
                    }
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    })
}

struct MatrixOpts {
    all: bool,
    json: bool,
    parallel: usize,
    cold: bool,
    from: Option<String>,
    to: Option<String>,
    repeat: usize,
    timeout_s: u64,
}

fn matrix(runs: &Path, run: Option<&str>, o: &MatrixOpts) -> anyhow::Result<ExitCode> {
    let run_dir = run_dir_of(runs, run)?;
    let state = RunState::load(&run_dir)?;
    let pairs = matrix::select(
        matrix::pairs(&state.plan, o.all),
        o.from.as_deref(),
        o.to.as_deref(),
        o.repeat,
    );
    if pairs.is_empty() {
        bail!("no pair to measure (fewer than two agents, or --from/--to match no site)");
    }
    if o.cold {
        apply::preflight()?;
    }
    let plan = &state.plan;
    let cold = o.cold;
    let before = move |a: &matrix::Endpoint, b: &matrix::Endpoint| -> Result<(), String> {
        if !cold {
            return Ok(());
        }
        for (here, there) in [(a, b), (b, a)] {
            for ns in matrix::routers_of(plan, &here.site) {
                apply::forget_conntrack_of(ns, there.public_ip).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    };
    let (json, parallel, timeout_s) = (o.json, o.parallel, o.timeout_s);
    let pb = bar(pairs.len() as u64, "matrix");
    let rows = matrix::measure(
        &run_dir,
        pairs,
        parallel,
        Duration::from_secs(timeout_s),
        &before,
        &|r| {
            pb.set_message(format!("{} -> {}", r.from.agent, r.to.agent));
            pb.inc(1);
        },
    );
    pb.finish_and_clear();
    let out = serde_json::json!({ "run_id": state.run_id.0, "pairs": rows });
    let text = serde_json::to_string_pretty(&out)?;
    let file = run_dir.join("matrix.json");
    std::fs::write(&file, &text).with_context(|| format!("cannot write {}", file.display()))?;
    if json {
        println!("{text}");
    } else {
        print!("{}", matrix::render(&rows));
    }
    Ok(if rows.iter().all(|r| r.pass) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn status(runs: &Path, run: Option<&str>, json: bool) -> anyhow::Result<()> {
    let run_dir = run_dir_of(runs, run)?;
    let state = RunState::load(&run_dir)?;
    let rows = rows(&run_dir, &state);
    if json {
        let mon = MonitorState::load(&run_dir);
        let out = serde_json::json!({ "run_id": state.run_id.0, "run_dir": run_dir, "agents": rows,
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
        "run {}: {up}/{} agents joined ({})",
        state.run_id.0,
        rows.len(),
        run_dir.display()
    );
    Ok(())
}

fn exec(runs: &Path, agent: &str, cmd: &[String]) -> anyhow::Result<ExitCode> {
    let run_dir = run_dir_of(runs, None)?;
    let state = RunState::load(&run_dir)?;
    let rt = fleet_for(&run_dir, &state);
    let st = rt.exec(agent, cmd)?;
    Ok(match st.code {
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::from(1),
    })
}

fn restart(runs: &Path, agent: &str) -> anyhow::Result<()> {
    let run_dir = run_dir_of(runs, None)?;
    let mut state = RunState::load(&run_dir)?;
    let rt = fleet_for(&run_dir, &state);
    let instance = rt.restart(agent)?;
    state.agents = rt.instances();
    state.save(&run_dir)?;
    let at = match (&instance, rt.state(agent)) {
        (crate::runtime::InstanceId::Container { name, .. }, _) => format!("container {name}"),
        (_, Ok(AgentState::Running { pid })) => format!("pid {pid}"),
        _ => "pid ?".into(),
    };
    println!("chaosnet: restarted {agent} ({at})");
    Ok(())
}

fn events(
    runs: &Path,
    agent: Option<&str>,
    duration_s: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let run_dir = run_dir_of(runs, None)?;
    let state = RunState::load(&run_dir)?;
    let agents: Vec<(String, PathBuf)> = state
        .plan
        .agents
        .iter()
        .filter(|a| agent.is_none_or(|n| n == a.name))
        .map(|a| (a.name.clone(), run_dir.join(&a.api_socket)))
        .collect();
    if agents.is_empty() {
        anyhow::bail!(
            "no agent {:?} in run {}",
            agent.unwrap_or(""),
            state.run_id.0
        );
    }
    let mut out = std::io::stdout().lock();
    crate::events::follow(agents, duration_s.map(Duration::from_secs), |t| {
        crate::events::write(&mut out, t, json)?;
        std::io::Write::flush(&mut out)
    })?;
    Ok(())
}

fn logs(runs: &Path, agent: &str, follow: bool) -> anyhow::Result<()> {
    let run_dir = run_dir_of(runs, None)?;
    let state = RunState::load(&run_dir)?;
    let mut out = std::io::stdout().lock();
    fleet_for(&run_dir, &state).logs(agent, follow, &mut out)?;
    Ok(())
}

/// Removes the containers and volumes labelled with `run` (every run's with `None`).
/// When `required` (the run has docker agents), an unreachable engine is an error;
/// otherwise it means there is nothing to remove.
fn remove_containers(run: Option<&RunId>, required: bool) -> anyhow::Result<docker::CleanupReport> {
    match Engine::connect() {
        Ok(engine) => Ok(engine.remove_run(run)?),
        Err(e) if required => Err(anyhow!(e).context("cannot remove the run's containers")),
        Err(e) => {
            tracing::debug!(error = %e, "no docker engine: no containers to remove");
            Ok(docker::CleanupReport::default())
        }
    }
}

fn has_docker_agents(run_dir: &Path) -> bool {
    RunState::load(run_dir).is_ok_and(|s| {
        s.plan
            .agents
            .iter()
            .any(|a| a.runtime == RuntimeKind::Docker)
    })
}

fn teardown_run(run_dir: &Path, run_id: &RunId) -> anyhow::Result<()> {
    MonitorState::load(run_dir).stop();
    // Containers first (they are in the namespaces), but remove the namespaces even when
    // the engine fails, and report its error after.
    let containers = remove_containers(Some(run_id), has_docker_agents(run_dir));
    let report = apply::teardown(run_id)?;
    tracing::info!(?report, ?containers, "teardown");
    containers.map(drop)
}

fn down(runs: &Path, all: bool, run: Option<&str>) -> anyhow::Result<()> {
    let t0 = Instant::now();
    if all {
        // Monitoring processes live in the root namespace: stop those of every run we know.
        if let Ok(entries) = std::fs::read_dir(runs) {
            for e in entries.flatten() {
                MonitorState::load(&e.path()).stop();
            }
        }
        // Containers of every run, by label (also those of a killed controller).
        let c = remove_containers(None, false);
        // A controller killed mid-`up` can leave `ip` children that are still creating
        // namespaces; sweep until a pass finds nothing (bounded).
        let mut r = apply::teardown_all()?;
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(200));
            if apply::list_chaosnet_namespaces()?.is_empty() {
                break;
            }
            let again = apply::teardown_all()?;
            r.namespaces += again.namespaces;
            r.processes += again.processes;
        }
        let _ = std::fs::remove_file(runs.join("current"));
        let c = c?;
        println!(
            "chaosnet: removed {} run(s), {} namespaces, {} processes, {} containers, {} volumes in {:.2?}",
            r.runs.len(),
            r.namespaces,
            r.processes,
            c.containers,
            c.volumes,
            t0.elapsed()
        );
        return Ok(());
    }
    let run_dir = match run_dir_of(runs, run) {
        Ok(d) => d,
        Err(_) if run.is_none() => {
            println!("chaosnet: no current run; nothing to do (`down --all` cleans up every run)");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let state = RunState::load(&run_dir)?;
    MonitorState::load(&run_dir).stop();
    let docker_agents = state
        .plan
        .agents
        .iter()
        .any(|a| a.runtime == RuntimeKind::Docker);
    let c = remove_containers(Some(&state.run_id), docker_agents);
    let r = apply::teardown(&state.run_id)?;
    let c = c?;
    if run.is_none() {
        let _ = std::fs::remove_file(runs.join("current"));
    }
    println!(
        "chaosnet: run {} down: {} namespaces, {} processes, {} containers, {} volumes removed in {:.2?} (logs kept in {})",
        state.run_id.0,
        r.namespaces,
        r.processes,
        c.containers,
        c.volumes,
        t0.elapsed(),
        run_dir.display()
    );
    Ok(())
}

/// `chaosnet fault`: one fault, built through the same validation as a scenario's faults.
fn fault_cmd(runs: &Path, a: FaultArgs) -> anyhow::Result<()> {
    use crate::chaos::{exec, fault, schedule, select, spec};
    let run_dir = run_dir_of(runs, None)?;
    let mut state = RunState::load(&run_dir)?;
    let plan = state.plan.clone();
    let q = |v: &str| serde_json::to_string(v).unwrap_or_default();
    let list = |v: &[String]| {
        format!(
            "[{}]",
            v.iter().map(|x| q(x)).collect::<Vec<_>>().join(", ")
        )
    };
    let mut y = format!(
        "faults:\n  - kind: {}\n    mode: {}\n",
        q(&a.kind),
        q(&a.mode)
    );
    let mut sel = vec![
        format!("site: {}", list(&a.site)),
        format!("nat: {}", list(&a.nat)),
        format!("name: {}", list(&a.name)),
    ];
    if let Some(r) = &a.role {
        sel.push(format!("role: {}", q(r)));
    }
    y.push_str(&format!("    select: {{{}}}\n", sel.join(", ")));
    let mut field = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            y.push_str(&format!("    {k}: {v}\n"));
        }
    };
    field("duration_s", a.duration.map(|d| d.to_string()));
    field("shape", a.shape.as_deref().map(q));
    field("oneway", a.oneway.then(|| "true".to_string()));
    field("loss_pct", a.loss_pct.map(|v| v.to_string()));
    field("delay_ms", a.delay_ms.map(|v| v.to_string()));
    field("jitter_ms", a.jitter_ms.map(|v| v.to_string()));
    field("rate_kbit", a.rate_kbit.map(|v| v.to_string()));
    field("to", a.to.as_deref().map(q));
    field("scope", a.scope.as_deref().map(q));
    let targets = select::targets_of_plan(&plan);
    let chaos =
        spec::parse_section(&y, &targets).map_err(|e| anyhow!("bad fault: {}", e.message))?;
    let seed = a.seed.unwrap_or_else(rand::random::<u64>);
    let tl = schedule::timeline(&chaos, &targets, seed).map_err(|e| anyhow!(e.message))?;
    let Some(mut occ) = tl.occurrences.into_iter().next() else {
        bail!("the fault selected nothing");
    };
    // Ids of hand-made faults start at 1000, clear of a scenario's timeline ids.
    let st = exec::FaultState::load(&run_dir);
    occ.id = st
        .active
        .iter()
        .map(|f| f.id + 1)
        .max()
        .unwrap_or(1000)
        .max(1000);
    let rt = ProcessRuntime::new(&run_dir, &agent_bin(None)?)?;
    rt.adopt(&plan.agents, &state.agents);
    let ex = exec::Executor::new(&run_dir, &plan, &rt);
    let netem = plan
        .agents
        .first()
        .is_some_and(|x| ex.netem_available(&x.ns).0);
    let fp = fault::plan_fault(&plan, &occ, netem)?;
    // A fault that heals itself on a monitored lab: serve the controller's metrics meanwhile,
    // so the dashboards shade the window. (Without --duration this command exits at once and
    // nothing could serve them.)
    let exporter = match a.duration {
        Some(_) if !fp.heal.is_empty() => {
            crate::chaos::metrics::Exporter::start(&run_dir, &plan.run_id.0)
        }
        _ => None,
    };
    let labels = crate::chaos::metrics::FaultLabels {
        kind: fp.kind.clone(),
        fault: fp.fault.clone(),
        run: plan.run_id.0.clone(),
    };
    if let Some(x) = &exporter {
        x.metrics.declare(&labels);
        eprintln!(
            "chaosnet: controller metrics at http://{}/metrics; waiting for Prometheus to scrape them",
            x.addr
        );
        if !x
            .metrics
            .wait_scrape_after(0, crate::chaos::metrics::Exporter::SCRAPE_WAIT)
        {
            eprintln!(
                "chaosnet: warning: Prometheus has not scraped the controller; injecting anyway"
            );
        }
    }
    let cost = ex.inject(&fp)?;
    if let Some(x) = &exporter {
        x.metrics.injected(&labels);
    }
    state.agents = rt.instances();
    state.save(&run_dir)?;
    println!(
        "chaosnet: injected #{} {} on {} ({}, {:.0} ms)",
        fp.id,
        fp.kind,
        fp.targets.join(","),
        fp.mechanism,
        cost.as_secs_f64() * 1000.0
    );
    match a.duration {
        Some(d) if !fp.heal.is_empty() => {
            std::thread::sleep(Duration::from_secs_f64(d));
            let (cost, errors) = ex.heal(&fp);
            state.agents = rt.instances();
            state.save(&run_dir)?;
            println!(
                "chaosnet: healed #{} ({:.0} ms)",
                fp.id,
                cost.as_secs_f64() * 1000.0
            );
            if let Some(x) = &exporter {
                // Prometheus sees the heal before the target goes away.
                x.metrics.healed(&labels);
                let seen = x.metrics.scrapes();
                x.metrics
                    .wait_scrape_after(seen, crate::chaos::metrics::Exporter::SCRAPE_WAIT);
            }
            if !errors.is_empty() {
                bail!("heal errors: {}", errors.join("; "));
            }
        }
        _ if !fp.heal.is_empty() => println!("chaosnet: `chaosnet heal` removes it"),
        _ => {}
    }
    Ok(())
}

/// `chaosnet heal [--all]`.
fn heal_cmd(runs: &Path, all: bool) -> anyhow::Result<()> {
    use crate::chaos::exec;
    let run_dir = run_dir_of(runs, None)?;
    let mut state = RunState::load(&run_dir)?;
    let rt = ProcessRuntime::new(&run_dir, &agent_bin(None)?)?;
    rt.adopt(&state.plan.agents, &state.agents);
    let ex = exec::Executor::new(&run_dir, &state.plan, &rt);
    let (n, errors) = if all {
        ex.heal_all()
    } else {
        let st = exec::FaultState::load(&run_dir);
        let mut errors = Vec::new();
        for f in &st.active {
            errors.extend(ex.heal(f).1);
        }
        (st.active.len(), errors)
    };
    state.agents = rt.instances();
    state.save(&run_dir)?;
    println!(
        "chaosnet: healed {n} recorded fault(s){}",
        if all { " and swept the run" } else { "" }
    );
    if !errors.is_empty() {
        bail!("heal errors: {}", errors.join("; "));
    }
    Ok(())
}
