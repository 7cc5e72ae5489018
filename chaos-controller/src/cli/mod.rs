//! The `chaosnet` command line: parsing and dispatch, one file per command group.
//!
//! - `lab`: `up`, `down`, `status`, `plan` (and the bring-up `run` shares with `up`);
//! - `agents`: `exec`, `logs`, `restart`;
//! - `chaos`: `run`, `timeline`, `fault`, `heal`;
//! - `matrix`: `matrix`;
//! - `pod`: `pod-router`, the router container of a NATed pod on Kubernetes;
//! - `kube`: `kube render|apply|down`, a scenario's fleet on Kubernetes;
//! - `sim`: `sim`, a scenario in virtual time ([`crate::simulate`]);
//! - the hidden `serve` (the scrape proxy, [`crate::monitor::proxy`]).
//!
//! Every command works on a [`crate::lab::Lab`] (brought up, or adopted from the run
//! directory) and prints what it did; none starts this binary again to do another command's
//! work (only `up --monitor` starts `chaosnet serve`, the long-lived scrape proxy).
//!
//! `main` calls [`main`], which returns the exit code: 0 success, 1 the run failed (an agent
//! did not join, an SLO failed, a matrix pair fell short), 2 the run could not happen (bad
//! scenario, not root, missing tool...). Runs live in `--runs-dir` (default `./runs`), one
//! directory per run id, with `current` pointing at the newest.

mod agents;
mod chaos;
mod kube;
mod lab;
mod matrix;
mod pod;
mod sim;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

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
    Up(lab::UpArgs),
    /// Show every agent: site, NAT, addresses, contacts, connections, joined.
    Status(lab::StatusArgs),
    /// Run a command inside an agent's network namespace.
    ///
    /// The command is the host's (run with `ip netns exec`), for processes and containers
    /// alike: the agent image has no shell, so `exec` enters a container's network
    /// namespace from the host rather than running inside the container.
    Exec(agents::ExecArgs),
    /// Restart one agent (same data dir, so it keeps its node graph).
    Restart(agents::RestartArgs),
    /// Print an agent's log.
    Logs(agents::LogsArgs),
    /// Print the node events of the fleet (or one agent) as they happen: connections,
    /// upgrades, relay circuits, NAT type and reachability changes, faults.
    Events(agents::EventsArgs),
    /// Stop the fleet and remove the lab (idempotent).
    Down(lab::DownArgs),
    /// Measure the NAT-pair matrix of the running fleet.
    ///
    /// For every ordered pair of sites (one agent each; with --all, every pair of agents),
    /// the dialing agent opens a fresh connection to the other (`POST /connect`, never
    /// reusing one) and reports the path taken: direct, punched or relayed. Each pair is
    /// judged against the best path theory allows for its NAT types. Exits 0 when every pair
    /// connected at its best path, 1 when a pair failed or fell short, 2 when the matrix
    /// could not be measured. The results are also written to <run>/matrix.json.
    Matrix(matrix::MatrixArgs),
    /// Run a scenario in virtual time: the protocol cores of every agent over seeded NAT
    /// models, no lab, no root.
    ///
    /// Reads the same scenario file as `run` (sites, NAT types, conntrack timeouts, the
    /// `chaos:` faults and SLOs) and writes the same report (reachability over time, the
    /// NAT-pair matrix, recovery per fault, verdicts) to <runs-dir>/sim-<name>-<seed>/,
    /// with `events.jsonl` (the same seed gives the same bytes), `series.json`,
    /// `summary.json` and `metrics.prom` (the agents' own metrics, summed over the fleet). Scales to 10,000 agents and more (--agents). Exit code 0 every SLO
    /// held, 1 an SLO failed, 2 the run could not happen. With --matrix, measures the cold
    /// NAT-pair matrix instead (as `chaosnet matrix --cold`), exit 1 when a pair falls short.
    Sim(sim::SimArgs),
    /// Print the plan of a scenario as JSON without creating anything.
    Plan(lab::ScenarioArgs),
    /// Run a chaos scenario: up, warm-up, faults on schedule with probes, final heal,
    /// settle, end probes, report, down. Exit code 0 pass, 1 an SLO failed, 2 the run could
    /// not happen.
    Run(chaos::RunArgs),
    /// Print the fault timeline of a scenario (seeded) without creating anything.
    Timeline(chaos::TimelineArgs),
    /// Inject one fault into the current (running) fleet.
    Fault(Box<chaos::FaultArgs>),
    /// Heal the faults injected into the current fleet (recorded in its faults.json).
    Heal(chaos::HealArgs),
    /// Kubernetes: `kube render` prints a scenario's fleet as objects, `kube apply` applies
    /// them to the cluster of the kubeconfig, `kube down` deletes a run by its label.
    #[command(subcommand)]
    Kube(kube::KubeCmd),
    /// Be the router container of a NATed pod: give the agent its inner address and load
    /// the site's NAT rules in the pod's network namespace, then stay up (SIGHUP applies
    /// again). Needs NET_ADMIN; refuses to run outside a container.
    PodRouter(pod::PodRouterArgs),
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

/// Parses arguments and runs; returns the exit code.
pub fn main() -> ExitCode {
    let cli: Cli = match chaosnet_contract::parse_command_line() {
        Ok(c) => c,
        Err(code) => return code,
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
        Cmd::Up(a) => lab::up(&runs, a),
        Cmd::Status(a) => lab::status(&runs, &a),
        Cmd::Down(a) => lab::down(&runs, &a),
        Cmd::Plan(a) => lab::plan(&a),
        Cmd::Sim(a) => sim::sim(&runs, &a),
        Cmd::Exec(a) => agents::exec(&runs, &a),
        Cmd::Restart(a) => agents::restart(&runs, &a),
        Cmd::Logs(a) => agents::logs(&runs, &a),
        Cmd::Events(a) => agents::events(&runs, &a),
        Cmd::Matrix(a) => matrix::matrix(&runs, &a),
        Cmd::Run(a) => chaos::run(&runs, a),
        Cmd::Timeline(a) => chaos::timeline(&a),
        Cmd::Fault(a) => chaos::fault(&runs, *a),
        Cmd::Heal(a) => chaos::heal(&runs, &a),
        Cmd::PodRouter(a) => pod::pod_router(&a),
        Cmd::Kube(c) => kube::kube(&c),
        Cmd::Serve { run_dir, listen } => {
            crate::monitor::proxy::serve(&run_dir, listen)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A progress bar on stderr when it is a terminal (hidden otherwise, so logs stay clean).
pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
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
