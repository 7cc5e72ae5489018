//! [`AgentArgs`]: the flags of `chaosnet-agent run`, parsed by the agent (a clap [`Args`])
//! and rendered by the controller ([`AgentArgs::command_line`]), so both sides use one
//! definition. `AgentArgs::from_command_line(a.command_line()) == a` for every value; a test
//! checks it.
//!
//! What it does not do: check values beyond their types (the agent does: network ids, seed
//! syntax, key files...).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::TaskWeights;

/// The subcommand that runs an agent: the first word of [`AgentArgs::command_line`].
pub const RUN_SUBCOMMAND: &str = "run";
/// `--task-weights` when not given.
pub const DEFAULT_TASK_WEIGHTS: &str = "4,3,2,1,1";

const DEFAULT_TASK_RATE: f64 = 1.0;
const DEFAULT_ECHO_BYTES: usize = 1024;
const DEFAULT_BUCKET_REFRESH_MS: u64 = 3_600_000;
const DEFAULT_GC_INTERVAL_MS: u64 = 30_000;
const DEFAULT_MAX_CONNECTIONS: usize = 64;
const DEFAULT_KV_SYNC_INTERVAL_MS: u64 = 2_000;
const DEFAULT_KV_MAX_TUPLES: usize = 100_000;

fn default_kv_sync_interval_ms() -> u64 {
    DEFAULT_KV_SYNC_INTERVAL_MS
}

fn default_kv_max_tuples() -> usize {
    DEFAULT_KV_MAX_TUPLES
}
const DEFAULT_LOG_FORMAT: &str = "text";

/// `chaosnet-agent run` flags. The first seven are the stable contract used by the
/// controller and documented in the README.
// The field comments are the agent's `--help` text, with `<placeholders>` for people.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Clone, Debug, PartialEq, Args, Serialize, Deserialize)]
pub struct AgentArgs {
    /// Network to join: mainnet, testnet or private:<name>. Nodes of different networks
    /// refuse each other during the handshake.
    #[arg(long, value_name = "ID")]
    pub network: String,
    /// Pre-shared key file of a private network: 1 to 4 keys of 64 hex chars, each with an
    /// optional "not-after: <unix seconds>". Repeatable; the first key is current, all
    /// unexpired ones are accepted. SIGHUP and POST /network-keys/reload re-read the files.
    #[arg(long = "network-key-file", value_name = "FILE")]
    pub network_key_files: Vec<PathBuf>,
    /// UDP address of the P2P socket.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// Bootstrap node, as <node_id>@<ip:port> or <node_id>@<host:port> (a DNS name, e.g. a
    /// Kubernetes headless Service's pod name, resolved once at start). Repeatable.
    #[arg(long = "seed", value_name = "ID@IP:PORT")]
    pub seeds: Vec<String>,
    /// Directory for node.key and the node graph (created if missing).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Read the node key from this file instead of <data-dir>/node.key, and never create
    /// one: a seed whose identity others must know in advance (a Kubernetes Secret).
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub node_key_file: Option<PathBuf>,
    /// Control API address: <ip:port> or unix:<path>. Never the P2P socket. A TCP address
    /// that is not loopback needs --api-token-file (or --api-token); a unix socket is
    /// created mode 0600.
    #[arg(long, value_name = "ADDR")]
    pub api: String,
    /// File whose first line is the control API's bearer token (at least 16 characters):
    /// every route then needs `Authorization: Bearer <token>`.
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    /// The token itself, as for --api-token-file. A command line is visible to every local
    /// user: prefer the file or the environment variable.
    #[arg(
        long,
        env = "CHAOSNET_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        conflicts_with = "api_token_file"
    )]
    pub api_token: Option<String>,
    /// Autonomous tasks per second (Poisson). 0 disables the loop.
    #[arg(long, default_value_t = DEFAULT_TASK_RATE, value_name = "R")]
    pub task_rate: f64,
    /// Seed of the core's random choices; random if not given (and logged).
    #[arg(long, value_name = "N")]
    pub rng_seed: Option<u64>,
    /// Task weights as ping,lookup,connect,echo[,claim] (claim is 0 when left out).
    #[arg(long, default_value = DEFAULT_TASK_WEIGHTS, value_name = "P,L,C,E[,CL]")]
    pub task_weights: TaskWeights,
    /// Payload of the echo task in bytes.
    #[arg(long, default_value_t = DEFAULT_ECHO_BYTES, value_name = "BYTES")]
    pub echo_bytes: usize,
    /// Mean idle-bucket refresh period (±50% jitter).
    #[arg(long, default_value_t = DEFAULT_BUCKET_REFRESH_MS, value_name = "MS")]
    pub bucket_refresh_ms: u64,
    /// Interval of node-graph GC (pinging the oldest contacts of full buckets).
    #[arg(long, default_value_t = DEFAULT_GC_INTERVAL_MS, value_name = "MS")]
    pub gc_interval_ms: u64,
    /// Connections kept open; the lowest-scoring idle ones are closed beyond it.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_name = "N")]
    pub max_connections: usize,
    /// How often the key-value replica is reconciled with one connected peer (Rateless
    /// IBLT; the lower-RTT of two drawn at random), ±20% jitter; 0 turns syncing off.
    #[arg(long, default_value_t = DEFAULT_KV_SYNC_INTERVAL_MS, value_name = "MS")]
    #[serde(default = "default_kv_sync_interval_ms")]
    pub kv_sync_interval_ms: u64,
    /// Most keys the key-value replica holds; a write or a peer's tuple for a new key past
    /// it is refused (`full`).
    #[arg(long, default_value_t = DEFAULT_KV_MAX_TUPLES, value_name = "N")]
    #[serde(default = "default_kv_max_tuples")]
    pub kv_max_tuples: usize,
    /// Log format.
    #[arg(long, default_value = DEFAULT_LOG_FORMAT, value_parser = ["text", "json"])]
    pub log_format: String,
    /// Export trace spans (connects, requests) over OTLP/HTTP to this URL, e.g.
    /// http://127.0.0.1:4318/v1/traces. Off by default.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Announce this node and find others on the LAN with mDNS (DNS-SD
    /// `_chaosnet._udp.local.`), so same-LAN nodes connect without any seed. Off by
    /// default; the lab turns it on.
    #[arg(long)]
    #[serde(default)]
    pub mdns: bool,
}

/// Parses the process's command line into `P`, with the convention both binaries share:
/// `--help` and `--version` print and exit 0, a bad command line prints clap's error and
/// exits 2 (a configuration error).
///
/// # Errors
/// The exit code to leave with when the command line did not parse into `P`.
pub fn parse_command_line<P: Parser>() -> Result<P, std::process::ExitCode> {
    P::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            std::process::ExitCode::from(2)
        } else {
            std::process::ExitCode::SUCCESS
        }
    })
}

/// Parses `run <flags>` exactly as the agent binary does.
#[derive(Parser)]
#[command(name = "chaosnet-agent", no_binary_name = true)]
struct CommandLine {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(AgentArgs),
}

impl AgentArgs {
    /// The flags of an agent on `network` listening on `listen`, with its data in
    /// `data_dir` and its API on `api`; every other flag at the agent's default.
    pub fn new(network: String, listen: SocketAddr, data_dir: PathBuf, api: String) -> AgentArgs {
        AgentArgs {
            network,
            network_key_files: Vec::new(),
            listen,
            seeds: Vec::new(),
            data_dir,
            node_key_file: None,
            api,
            api_token_file: None,
            api_token: None,
            task_rate: DEFAULT_TASK_RATE,
            rng_seed: None,
            task_weights: TaskWeights::default(),
            echo_bytes: DEFAULT_ECHO_BYTES,
            bucket_refresh_ms: DEFAULT_BUCKET_REFRESH_MS,
            gc_interval_ms: DEFAULT_GC_INTERVAL_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            kv_sync_interval_ms: DEFAULT_KV_SYNC_INTERVAL_MS,
            kv_max_tuples: DEFAULT_KV_MAX_TUPLES,
            log_format: DEFAULT_LOG_FORMAT.to_string(),
            otlp_endpoint: None,
            mdns: false,
        }
    }

    /// The flags, in a fixed order: the network and its keys, `--listen`, the seeds,
    /// `--data-dir`, `--api`, the task and graph settings, then whatever is optional and
    /// set (`--otlp-endpoint`, `--mdns`, `--node-key-file`, `--api-token-file`, `--api-token`, and `--echo-bytes`,
    /// `--max-connections`, `--kv-sync-interval-ms`, `--kv-max-tuples`, `--log-format` when
    /// they differ from the defaults).
    pub fn to_args(&self) -> Vec<String> {
        let mut v: Vec<String> = vec!["--network".into(), self.network.clone()];
        for k in &self.network_key_files {
            v.extend(["--network-key-file".into(), k.display().to_string()]);
        }
        v.extend(["--listen".into(), self.listen.to_string()]);
        for s in &self.seeds {
            v.extend(["--seed".into(), s.clone()]);
        }
        v.extend([
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--api".into(),
            self.api.clone(),
            "--task-rate".into(),
            self.task_rate.to_string(),
        ]);
        if let Some(seed) = self.rng_seed {
            v.extend(["--rng-seed".into(), seed.to_string()]);
        }
        v.extend([
            "--task-weights".into(),
            self.task_weights.to_string(),
            "--bucket-refresh-ms".into(),
            self.bucket_refresh_ms.to_string(),
            "--gc-interval-ms".into(),
            self.gc_interval_ms.to_string(),
        ]);
        if let Some(e) = &self.otlp_endpoint {
            v.extend(["--otlp-endpoint".into(), e.clone()]);
        }
        if self.mdns {
            v.push("--mdns".into());
        }
        if let Some(f) = &self.node_key_file {
            v.extend(["--node-key-file".into(), f.display().to_string()]);
        }
        if let Some(f) = &self.api_token_file {
            v.extend(["--api-token-file".into(), f.display().to_string()]);
        }
        if let Some(t) = &self.api_token {
            v.extend(["--api-token".into(), t.clone()]);
        }
        if self.echo_bytes != DEFAULT_ECHO_BYTES {
            v.extend(["--echo-bytes".into(), self.echo_bytes.to_string()]);
        }
        if self.max_connections != DEFAULT_MAX_CONNECTIONS {
            v.extend(["--max-connections".into(), self.max_connections.to_string()]);
        }
        if self.kv_sync_interval_ms != DEFAULT_KV_SYNC_INTERVAL_MS {
            v.extend([
                "--kv-sync-interval-ms".into(),
                self.kv_sync_interval_ms.to_string(),
            ]);
        }
        if self.kv_max_tuples != DEFAULT_KV_MAX_TUPLES {
            v.extend(["--kv-max-tuples".into(), self.kv_max_tuples.to_string()]);
        }
        if self.log_format != DEFAULT_LOG_FORMAT {
            v.extend(["--log-format".into(), self.log_format.clone()]);
        }
        v
    }

    /// `run` followed by [`AgentArgs::to_args`]: the arguments after `chaosnet-agent`.
    pub fn command_line(&self) -> Vec<String> {
        let mut v = vec![RUN_SUBCOMMAND.to_string()];
        v.extend(self.to_args());
        v
    }

    /// Parses arguments after `chaosnet-agent` (starting with `run`), as the agent does.
    ///
    /// # Errors
    /// clap's error, as the agent would print it.
    pub fn from_command_line<I, T>(argv: I) -> Result<AgentArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        CommandLine::try_parse_from(argv).map(|c| match c.command {
            Command::Run(a) => a,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentArgs {
        AgentArgs::new(
            "mainnet".into(),
            "10.1.0.10:4433".parse().expect("addr"),
            "agents/a-0/data".into(),
            "unix:agents/a-0/api.sock".into(),
        )
    }

    #[test]
    fn what_the_controller_renders_the_agent_parses_back() {
        let a = sample();
        assert_eq!(
            AgentArgs::from_command_line(a.command_line()).expect("parse"),
            a
        );
        let mut b = sample();
        b.network = "private:lab".into();
        b.network_key_files = vec!["/k/new".into(), "/k/old".into()];
        b.seeds = vec![format!("{}@198.18.0.10:4433", "ab".repeat(32)); 2];
        b.task_rate = 0.25;
        b.rng_seed = Some(u64::MAX);
        b.task_weights = TaskWeights {
            ping: 1,
            lookup: 0,
            connect: 9,
            echo: 3,
            claim: 2,
        };
        b.echo_bytes = 7;
        b.bucket_refresh_ms = 100;
        b.gc_interval_ms = 200;
        b.max_connections = 3;
        b.kv_sync_interval_ms = 0;
        b.kv_max_tuples = 10;
        b.log_format = "json".into();
        b.otlp_endpoint = Some("http://198.18.0.1:4318/v1/traces".into());
        b.mdns = true;
        b.api_token_file = Some("/run/api.token".into());
        b.node_key_file = Some("/etc/chaosnet/seed/node.key".into());
        assert_eq!(
            AgentArgs::from_command_line(b.command_line()).expect("parse"),
            b
        );
        let mut c = sample();
        c.api_token = Some("0123456789abcdef".into());
        assert_eq!(
            AgentArgs::from_command_line(c.command_line()).expect("parse"),
            c
        );
    }

    #[test]
    fn defaults_render_only_the_flags_the_controller_has_always_written() {
        let mut a = sample();
        a.rng_seed = Some(7);
        assert_eq!(
            a.command_line(),
            [
                "run",
                "--network",
                "mainnet",
                "--listen",
                "10.1.0.10:4433",
                "--data-dir",
                "agents/a-0/data",
                "--api",
                "unix:agents/a-0/api.sock",
                "--task-rate",
                "1",
                "--rng-seed",
                "7",
                "--task-weights",
                "4,3,2,1,1",
                "--bucket-refresh-ms",
                "3600000",
                "--gc-interval-ms",
                "30000"
            ]
        );
    }

    #[test]
    fn bad_flags_are_clap_errors() {
        let e = AgentArgs::from_command_line(["run", "--network", "mainnet"]).expect_err("missing");
        assert!(e.to_string().contains("--listen"), "{e}");
        let e = AgentArgs::from_command_line([
            "run",
            "--network",
            "mainnet",
            "--listen",
            "10.1.0.10:4433",
            "--data-dir",
            "d",
            "--api",
            "unix:a.sock",
            "--task-weights",
            "1,2",
        ])
        .expect_err("bad weights");
        assert!(e.to_string().contains("ping,lookup,connect,echo"), "{e}");
    }
}
