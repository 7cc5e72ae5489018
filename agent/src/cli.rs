//! Command line of `chaosnet-agent`: argument parsing and wiring of the shell.
//!
//! `main` only calls [`main`], which returns the process exit code: 0 on a clean stop,
//! 1 when the agent failed while running, 2 when its configuration or environment is wrong
//! (bad flag, unreadable key, locked data dir...). Errors are printed once, with their causes.

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chaosnet_contract::AgentArgs;
use chaosnet_proto::{Node, NodeConfig, NodeId};
use clap::{Parser, Subcommand};
use tokio::sync::mpsc;

use crate::api::{self, ApiState};
use crate::api_access;
use crate::driver::{Clock, Driver, INPUT_CAPACITY};
use crate::events::Events;
use crate::identity::Identity;
use crate::network::{self, KeyFiles, KeyReloader};
use crate::socket::{self, ChaosSocket};
use crate::store::GraphStore;
use crate::tls::{self, NetworkId};
use crate::transport::{Transport, TransportTimeouts};
use chaosnet_metrics::Metrics;

/// The chaosnet P2P agent: a peer and a relay over QUIC.
///
/// Every agent keeps a Kademlia node graph in RocksDB, runs weighted random tasks (ping,
/// lookup, connect, echo) in a loop, and serves a control API with Prometheus metrics on a
/// management address that peers cannot reach.
#[derive(Debug, Parser)]
#[command(name = "chaosnet-agent", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the agent until SIGINT or SIGTERM.
    Run(Box<AgentArgs>),
    /// Create the node key in the data dir and print its NodeId.
    Keygen {
        /// Directory holding node.key.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Replace an existing key (the node gets a new identity).
        #[arg(long)]
        force: bool,
    },
    /// Print the NodeId of the key in the data dir.
    Id {
        /// Directory holding node.key.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Print base32 instead of hex.
        #[arg(long)]
        base32: bool,
    },
}

/// Parses the command line and runs; returns the process exit code.
pub fn main() -> ExitCode {
    let cli: Cli = match chaosnet_contract::parse_command_line() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Cmd::Keygen { data_dir, force } => report(keygen(&data_dir, force), 2),
        Cmd::Id { data_dir, base32 } => report(print_id(&data_dir, base32), 2),
        Cmd::Run(args) => {
            let _telemetry = match chaosnet_telemetry::init(chaosnet_telemetry::Options {
                service: "chaosnet-agent",
                format: &args.log_format,
                otlp_endpoint: args.otlp_endpoint.as_deref(),
                default_log_filter: "info,quinn=warn,rustls=warn",
                // debug: `connect`/`request` spans are debug-level, to stay out of info logs.
                export_filter: "chaosnet_agent=debug",
            }) {
                Ok(g) => g,
                Err(e) => return report(Err(e.into()), 2),
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    return report(
                        Err(anyhow::Error::new(e).context("cannot start the runtime")),
                        1,
                    );
                }
            };
            runtime.block_on(run(*args))
        }
    }
}

fn report(result: anyhow::Result<()>, code: u8) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaosnet-agent: error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn keygen(data_dir: &Path, force: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let id = Identity::generate()?;
    id.save(&data_dir.join("node.key"), force)?;
    println!("{}", id.node_id());
    Ok(())
}

fn print_id(data_dir: &Path, base32: bool) -> anyhow::Result<()> {
    let id = Identity::load(&data_dir.join("node.key"))?;
    let node = id.node_id();
    println!(
        "{}",
        if base32 {
            node.to_base32()
        } else {
            node.to_hex()
        }
    );
    Ok(())
}

/// Splits `<node_id>@<ip:port>` or `<node_id>@<host:port>`; the address is resolved by
/// [`resolve_seed`].
fn parse_seed(s: &str) -> anyhow::Result<(NodeId, String)> {
    let (id, addr) = s
        .split_once('@')
        .with_context(|| format!("--seed {s:?}: expected <node_id>@<ip:port>"))?;
    let id: NodeId = id
        .parse()
        .with_context(|| format!("--seed {s:?}: bad node id"))?;
    if addr.parse::<SocketAddr>().is_err()
        && addr
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        bail!("--seed {s:?}: bad address: expected <ip:port> or <host:port>");
    }
    Ok((id, addr.to_string()))
}

/// How long a seed's host name may take to resolve at start: a StatefulSet pod's DNS record
/// appears a few seconds after the pod, and the agents start at the same time.
const SEED_RESOLVE_WINDOW: Duration = Duration::from_secs(30);
/// Pause between two lookups of an unresolved seed.
const SEED_RESOLVE_PAUSE: Duration = Duration::from_secs(1);

/// The seed's address: an IP literal as is, a host name through the resolver (its first
/// IPv4 address, else its first address), retried for up to `window`. Resolved once at
/// start: a seed that moves needs a restart, as with an IP.
async fn resolve_seed(raw: &str, addr: &str, window: Duration) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    let deadline = tokio::time::Instant::now() + window;
    loop {
        let found: Vec<SocketAddr> = match tokio::net::lookup_host(addr).await {
            Ok(found) => found.collect(),
            Err(e) if tokio::time::Instant::now() + SEED_RESOLVE_PAUSE > deadline => {
                return Err(e).with_context(|| format!("--seed {raw:?}: cannot resolve {addr}"));
            }
            Err(e) => {
                tracing::warn!(seed = addr, error = %e, "seed does not resolve yet; retrying");
                tokio::time::sleep(SEED_RESOLVE_PAUSE).await;
                continue;
            }
        };
        return found
            .iter()
            .find(|a| a.is_ipv4())
            .or(found.first())
            .copied()
            .with_context(|| format!("--seed {raw:?}: {addr} has no address"));
    }
}

/// Where the API listens.
enum ApiAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

fn parse_api(s: &str) -> anyhow::Result<ApiAddr> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            bail!("--api unix: needs a path");
        }
        return Ok(ApiAddr::Unix(PathBuf::from(path)));
    }
    let addr: SocketAddr = s
        .parse()
        .with_context(|| format!("--api {s:?}: expected <ip:port> or unix:<path>"))?;
    Ok(ApiAddr::Tcp(addr))
}

async fn run(args: AgentArgs) -> ExitCode {
    // Everything that can fail happens during setup (configuration, key, store, sockets),
    // so failures are configuration or environment errors: exit code 2.
    report(setup_and_run(args).await, 2)
}

async fn setup_and_run(args: AgentArgs) -> anyhow::Result<()> {
    let cfg = |e: anyhow::Error| e;
    let network: NetworkId = args
        .network
        .parse()
        .map_err(|e| cfg(anyhow::Error::new(e).context("--network")))?;
    let key_files = KeyFiles::new(network.clone(), args.network_key_files.clone());
    let keys = key_files
        .load(crate::transport::unix_now())
        .map_err(|e| cfg(e.into()))?;
    let mut seeds: Vec<(NodeId, SocketAddr)> = Vec::with_capacity(args.seeds.len());
    for raw in &args.seeds {
        let (id, addr) = parse_seed(raw).map_err(cfg)?;
        seeds.push((
            id,
            resolve_seed(raw, &addr, SEED_RESOLVE_WINDOW)
                .await
                .map_err(cfg)?,
        ));
    }
    if !(args.task_rate >= 0.0 && args.task_rate.is_finite()) {
        return Err(cfg(anyhow::anyhow!("--task-rate must be a number >= 0")));
    }
    let api_addr = parse_api(&args.api).map_err(cfg)?;
    let token = api_access::token(args.api_token.as_deref(), args.api_token_file.as_deref())
        .map_err(|e| cfg(e.into()))?;
    if let ApiAddr::Tcp(a) = &api_addr
        && !a.ip().is_loopback()
        && token.is_none()
    {
        return Err(cfg(anyhow::anyhow!(
            "--api {a} is reachable from other hosts: give --api-token-file (or --api-token), \
             or use a loopback address or unix:<path>"
        )));
    }
    if let ApiAddr::Tcp(a) = &api_addr
        && (*a == args.listen || (a.port() == args.listen.port() && a.ip().is_unspecified()))
    {
        return Err(cfg(anyhow::anyhow!(
            "--api must not be the P2P socket ({})",
            args.listen
        )));
    }

    let (identity, created) = match &args.node_key_file {
        Some(path) => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&args.data_dir)
                .with_context(|| format!("cannot create --data-dir {}", args.data_dir.display()))
                .map_err(cfg)?;
            (Identity::load(path).map_err(|e| cfg(e.into()))?, false)
        }
        None => Identity::load_or_create(&args.data_dir).map_err(|e| cfg(e.into()))?,
    };
    let me = identity.node_id();
    network::bind_data_dir(&args.data_dir, &network).map_err(|e| cfg(e.into()))?;
    let store = GraphStore::open(&args.data_dir.join("graph"), me).map_err(|e| cfg(e.into()))?;
    let report = store.load().map_err(|e| cfg(e.into()))?;
    if report.skipped_corrupt > 0 {
        tracing::warn!(
            skipped = report.skipped_corrupt,
            "skipped corrupt node graph records"
        );
    }
    let rng_seed = args.rng_seed.unwrap_or_else(rand::random);
    tracing::info!(node_id = %me, created_key = created, network = %network, listen = %args.listen,
        restored = report.contacts.len(), rng_seed, "starting");

    let metrics = Arc::new(Metrics::new(&network.to_string()));
    let (socket, socket_handle) = ChaosSocket::bind(args.listen, rng_seed)
        .with_context(|| format!("cannot bind UDP {}", args.listen))
        .map_err(cfg)?;
    let listen = socket_handle.local_addr().unwrap_or(args.listen);
    let server = tls::server_config(&identity, &network).map_err(|e| cfg(e.into()))?;
    let endpoint = socket::endpoint(socket, Some(server))
        .context("cannot start QUIC")
        .map_err(cfg)?;

    let (tx, rx) = mpsc::channel(INPUT_CAPACITY);
    let transport = Transport::new(
        endpoint,
        &identity,
        network.clone(),
        keys,
        vec![listen],
        tx.clone(),
        metrics.clone(),
        TransportTimeouts::default(),
        socket_handle.clone(),
    )
    .map_err(|e| cfg(e.into()))?;

    let mut node_cfg = NodeConfig::new(identity.secret_key());
    node_cfg.listen_addrs = vec![listen];
    node_cfg.seeds = seeds;
    node_cfg.rng_seed = rng_seed;
    node_cfg.task_rate_per_s = args.task_rate;
    node_cfg.task_weights = args.task_weights;
    node_cfg.echo_bytes = args.echo_bytes;
    node_cfg.bucket_refresh_ms = args.bucket_refresh_ms;
    node_cfg.gc_interval_ms = args.gc_interval_ms;
    node_cfg.max_connections = args.max_connections;
    node_cfg.kv_network = network.to_string();
    node_cfg.kv_sync_interval_ms = args.kv_sync_interval_ms;
    node_cfg.kv_max_tuples = args.kv_max_tuples;
    let claims = store.load_claims().map_err(|e| cfg(e.into()))?;
    let tuples = store.load_tuples().map_err(|e| cfg(e.into()))?;
    let mut node = Node::new(node_cfg, report.contacts);
    node.restore_claims(claims);
    node.restore_kv(tuples);

    let reloader = network
        .is_private()
        .then(|| KeyReloader::new(key_files, transport.clone()));
    tokio::spawn(reload_on_sighup(reloader.clone()).map_err(cfg)?);
    tokio::spawn(transport.clone().watch_keys());
    let events = Events::default();
    let mut state = ApiState::new(tx.clone(), socket_handle.clone(), events.clone());
    if let Some(r) = reloader {
        state = state.with_key_reloader(r);
    }
    let mut app = api::router(state);
    if let Some(t) = &token {
        app = api_access::require_token(app, t);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let api_task = match api_addr {
        ApiAddr::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on --api {addr}"))
                .map_err(cfg)?;
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.changed().await;
                    })
                    .await;
            })
        }
        ApiAddr::Unix(path) => {
            // A stale socket file from a killed agent would make bind fail.
            api_access::clear_stale_socket(&path).map_err(|e| cfg(e.into()))?;
            let l = api_access::bind_private_socket(&path).map_err(|e| cfg(e.into()))?;
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.changed().await;
                    })
                    .await;
            })
        }
    };
    tokio::spawn(transport.clone().accept_loop());
    let _discovery = if args.mdns {
        Some(
            crate::mdns::start(me, &network.to_string(), listen, tx.clone())
                .map_err(|e| cfg(e.into()))?,
        )
    } else {
        None
    };
    drop(stop_rx);

    let driver = Driver::new(
        node,
        Clock::new(),
        transport,
        store,
        metrics,
        events,
        socket_handle,
        network.to_string(),
        tx,
        rx,
    );
    driver.run(shutdown_signal()).await;
    let _ = stop_tx.send(true);
    let _ = api_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// Re-reads the network key files on every SIGHUP (which, handled, no longer ends the
/// agent). Installing the handler can fail, which is a setup error.
fn reload_on_sighup(
    reloader: Option<KeyReloader>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    Ok(async move {
        while hup.recv().await.is_some() {
            match &reloader {
                None => tracing::info!("SIGHUP: not a private network, no keys to reload"),
                Some(r) => match r.reload() {
                    Ok(k) => tracing::info!(
                        keys = k.keys,
                        valid = k.valid,
                        "SIGHUP: network keys reloaded"
                    ),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: network keys not reloaded; keeping the current ones")
                    }
                },
            }
        }
    })
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0101010101010101010101010101010101010101010101010101010101010101";

    #[tokio::test]
    async fn seeds_take_an_ip_or_a_host_name() {
        let (_, addr) = parse_seed(&format!("{ID}@198.18.0.7:4433")).expect("ip");
        assert_eq!(
            resolve_seed("x", &addr, Duration::ZERO)
                .await
                .expect("literal"),
            "198.18.0.7:4433".parse::<SocketAddr>().expect("addr")
        );
        // `localhost` resolves from /etc/hosts on every machine, without a DNS server.
        let (_, addr) = parse_seed(&format!("{ID}@localhost:4433")).expect("host");
        let a = resolve_seed("x", &addr, Duration::ZERO)
            .await
            .expect("resolves");
        assert!(a.ip().is_loopback() && a.port() == 4433, "{a}");
        for bad in [
            format!("{ID}@localhost"),
            format!("{ID}@:4433"),
            format!("{ID}@localhost:99999"),
            "nope@198.18.0.7:4433".to_string(),
            format!("{ID}198.18.0.7:4433"),
        ] {
            assert!(parse_seed(&bad).is_err(), "{bad}");
        }
        let (_, addr) = parse_seed(&format!("{ID}@no-such-host.invalid:4433")).expect("syntax");
        let e = resolve_seed("raw", &addr, Duration::ZERO)
            .await
            .expect_err("unresolvable");
        assert!(e.to_string().contains("cannot resolve"), "{e:#}");
    }
}
