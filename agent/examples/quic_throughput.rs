//! QUIC echo throughput between two chaosnet endpoints on loopback.
//!
//! A server endpoint echoes every bi stream back; a client opens one bi stream per run,
//! writes `--mib` MiB in `--chunk-kib` KiB chunks while concurrently reading the echo back,
//! and reports one direction's payload divided by the wall time (first write to last echoed
//! byte). Each run uses a fresh connection (fresh congestion and flow-control state).
//!
//! Both sides use the agent's own stack: [`Identity::generate`], the agent's TLS configs
//! ([`server_config`] / [`client_config`], which include its transport config) and, unless
//! `--plain`, a [`ChaosSocket`] with no impairment under [`endpoint`]. `--plain` uses a plain
//! quinn UDP socket instead, to show what the `ChaosSocket` seam costs.
//!
//! Runtimes: each side runs on its own tokio **current_thread** runtime in its own OS thread
//! (as the agent does: one current_thread runtime per process), so each side has one core at
//! most; the endpoint driver, connection driver and stream I/O of a side share that thread.
//!
//! Usage: `quic_throughput [--mib N] [--chunk-kib N] [--runs N] [--plain]`
//! (defaults 256, 64, 5). The last line is `median_mib_s=<value>`, for scripts.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chaosnet_agent::identity::Identity;
use chaosnet_agent::socket::{ChaosSocket, endpoint};
use chaosnet_agent::tls::{NetworkId, client_config, server_config, server_name};

/// A generous fail-safe per run, so a stuck transfer ends the process instead of hanging.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

struct Options {
    mib: usize,
    chunk_kib: usize,
    runs: usize,
    plain: bool,
}

fn parse_args() -> anyhow::Result<Options> {
    let mut o = Options {
        mib: 256,
        chunk_kib: 64,
        runs: 5,
        plain: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> anyhow::Result<usize> {
            let v = args
                .next()
                .with_context(|| format!("{name} needs a value"))?;
            let n: usize = v
                .parse()
                .with_context(|| format!("{name}: {v:?} is not a number"))?;
            if n == 0 {
                bail!("{name} must be at least 1");
            }
            Ok(n)
        };
        match a.as_str() {
            "--mib" => o.mib = value("--mib")?,
            "--chunk-kib" => o.chunk_kib = value("--chunk-kib")?,
            "--runs" => o.runs = value("--runs")?,
            "--plain" => o.plain = true,
            "-h" | "--help" => {
                println!("usage: quic_throughput [--mib N] [--chunk-kib N] [--runs N] [--plain]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(o)
}

fn current_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build a tokio runtime")
}

/// Builds an endpoint on 127.0.0.1:0, over a `ChaosSocket` or (with `plain`) a plain socket.
fn make_endpoint(
    plain: bool,
    server: Option<quinn::ServerConfig>,
) -> anyhow::Result<quinn::Endpoint> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    if plain {
        let socket = UdpSocket::bind(addr).context("bind udp")?;
        Ok(quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            server,
            socket,
            Arc::new(quinn::TokioRuntime),
        )?)
    } else {
        let (socket, _handle) = ChaosSocket::bind(addr, 1).context("bind chaos socket")?;
        Ok(endpoint(socket, server)?)
    }
}

/// Echoes one bi stream: every chunk read is written straight back; finishes when the peer
/// finishes.
async fn echo_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    loop {
        match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => {
                if send.write_chunk(chunk.bytes).await.is_err() {
                    return;
                }
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    let _ = send.finish();
    let _ = send.stopped().await;
}

/// The server thread: accepts connections forever and echoes each of their bi streams.
fn run_server(
    identity: Identity,
    plain: bool,
    ready: mpsc::Sender<anyhow::Result<SocketAddr>>,
) -> anyhow::Result<()> {
    let rt = current_thread_runtime()?;
    rt.block_on(async move {
        let setup = (|| {
            let config = server_config(&identity, &NetworkId::Mainnet)?;
            let ep = make_endpoint(plain, Some(config))?;
            let addr = ep.local_addr()?;
            anyhow::Ok((ep, addr))
        })();
        let ep = match setup {
            Ok((ep, addr)) => {
                let _ = ready.send(Ok(addr));
                ep
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return Ok(());
            }
        };
        while let Some(incoming) = ep.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(echo_stream(send, recv));
                }
            });
        }
        Ok(())
    })
}

/// One run: a fresh connection, one bi stream, `total` bytes each way. Returns the seconds
/// from the first write to the last echoed byte.
async fn one_run(
    ep: &quinn::Endpoint,
    config: quinn::ClientConfig,
    server: SocketAddr,
    name: &str,
    total: usize,
    chunk: usize,
) -> anyhow::Result<f64> {
    let conn = ep
        .connect_with(config, server, name)?
        .await
        .context("handshake")?;
    let payload = vec![0xa5u8; chunk];
    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    let writer = async {
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk);
            send.write_all(&payload[..n]).await?;
            left -= n;
        }
        send.finish()?;
        anyhow::Ok(())
    };
    let reader = async {
        let mut got = 0usize;
        while let Some(c) = recv.read_chunk(usize::MAX, true).await? {
            got += c.bytes.len();
        }
        anyhow::Ok(got)
    };
    let (w, r) = tokio::join!(writer, reader);
    w.context("write")?;
    let got = r.context("read")?;
    let secs = start.elapsed().as_secs_f64();
    if got != total {
        bail!("echoed {got} bytes, expected {total}");
    }
    conn.close(0u32.into(), b"done");
    Ok(secs)
}

fn main() -> anyhow::Result<()> {
    let o = parse_args()?;
    let total = o.mib * 1024 * 1024;
    let chunk = o.chunk_kib * 1024;
    let server_id = Identity::generate()?;
    let server_node = server_id.node_id();
    let client_id = Identity::generate()?;

    let (ready_tx, ready_rx) = mpsc::channel();
    let plain = o.plain;
    // Detached: the process exits when main returns.
    std::thread::Builder::new()
        .name("echo-server".into())
        .spawn(move || run_server(server_id, plain, ready_tx))?;
    let server_addr = ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the server thread did not start")??;

    let socket = if o.plain { "plain UDP" } else { "ChaosSocket" };
    println!(
        "quic_throughput: {} MiB each way in {} KiB chunks, {} runs, {socket}, \
         current_thread runtime per side (2 OS threads)",
        o.mib, o.chunk_kib, o.runs
    );
    let rt = current_thread_runtime()?;
    let mut rates = rt.block_on(async {
        let ep = make_endpoint(o.plain, None)?;
        let config = client_config(&client_id, &NetworkId::Mainnet)?;
        let name = server_name(&server_node);
        let mut rates = Vec::with_capacity(o.runs);
        for run in 1..=o.runs {
            let secs = tokio::time::timeout(
                RUN_TIMEOUT,
                one_run(&ep, config.clone(), server_addr, &name, total, chunk),
            )
            .await
            .with_context(|| format!("run {run} took longer than {RUN_TIMEOUT:?}"))??;
            let rate = o.mib as f64 / secs;
            println!("run {run}: {} MiB in {secs:.3} s = {rate:.1} MiB/s", o.mib);
            rates.push(rate);
        }
        ep.close(0u32.into(), b"bye");
        anyhow::Ok(rates)
    })?;
    rates.sort_by(f64::total_cmp);
    let n = rates.len();
    let median = if n % 2 == 1 {
        rates[n / 2]
    } else {
        (rates[n / 2 - 1] + rates[n / 2]) / 2.0
    };
    println!(
        "min {:.1} / median {median:.1} / max {:.1} MiB/s",
        rates[0],
        rates[n - 1]
    );
    println!("median_mib_s={median:.1}");
    Ok(())
}
