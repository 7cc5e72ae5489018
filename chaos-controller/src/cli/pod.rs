//! `chaosnet pod-router`: the router container of a NATed pod ([`crate::apply::pod`]).
//!
//! It applies the site's NAT in the pod's shared network namespace, prints `ready`, and
//! stays up (so nat-swap and conntrack flushes have a process to `exec` into, and a
//! startupProbe has something to watch); SIGHUP applies again, SIGTERM or SIGINT ends it.
//! The rules stay in the namespace after it exits: they belong to the pod, which the
//! kubelet (or Docker) removes with them. It refuses to run outside a container, where
//! it would rewrite the host's own network.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use nix::sys::signal::{SigSet, Signal};

use crate::apply::{self, PodSetup};
use crate::nat::PodParams;
use crate::plan::{INNER_CHOICES, NatKind, RunId};

#[derive(Debug, Args)]
pub(super) struct PodRouterArgs {
    /// The site's NAT type (full-cone, restricted-cone, port-restricted-cone, symmetric).
    #[arg(long, value_name = "KIND", env = "CHAOSNET_NAT")]
    nat: String,
    /// The agent's inner address; the agent binds its P2P socket to it.
    #[arg(long, value_name = "IP", default_value = "10.77.0.2")]
    inner: Ipv4Addr,
    /// The pod's WAN interface.
    #[arg(long, value_name = "IF", default_value = "eth0")]
    wan_if: String,
    /// The pod's address (default: the POD_IP environment variable, which the manifests
    /// set from the downward API, else the first IPv4 address of --wan-if).
    #[arg(long, value_name = "IP", env = "POD_IP")]
    wan_ip: Option<Ipv4Addr>,
    /// TCP ports of the pod's own services that stay reachable on its address
    /// (comma-separated: the agent's metrics and control API).
    #[arg(
        long,
        value_name = "PORTS",
        value_delimiter = ',',
        default_value = "9100"
    )]
    open_tcp: Vec<u16>,
    /// Lifetime of the NAT's own mapping table entries, in seconds.
    #[arg(long, default_value_t = 300)]
    mapping_timeout_s: u32,
    /// The site's name, written in the ruleset's comment.
    #[arg(long, default_value = "pod")]
    site: String,
    /// The run id, written in the ruleset's comment.
    #[arg(long, env = "CHAOSNET_RUN", default_value = "pod")]
    run: String,
    /// Apply and exit instead of staying up.
    #[arg(long)]
    once: bool,
    /// Check that the router is in place (inner address on lo, NAT table loaded) and exit
    /// 0, or 1 naming what is missing: the startupProbe of the router sidecar.
    #[arg(long, conflicts_with_all = ["once", "dry_run"])]
    check: bool,
    /// Print the `ip` script and the ruleset, apply nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run even where no container is detected (no /.dockerenv, /run/.containerenv or
    /// KUBERNETES_SERVICE_HOST): the rules then land in the current network namespace.
    #[arg(long)]
    allow_host: bool,
}

pub(super) fn pod_router(a: &PodRouterArgs) -> anyhow::Result<ExitCode> {
    let Some(kind) = NatKind::parse(&a.nat) else {
        bail!("unknown NAT type `{}` (one of: {INNER_CHOICES})", a.nat);
    };
    if a.check {
        return Ok(match apply::check_pod(a.inner) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chaosnet pod-router: not ready: {e}");
                ExitCode::from(1)
            }
        });
    }
    if !a.dry_run && !a.allow_host && !in_container() {
        bail!(
            "pod-router rewrites the network of the namespace it runs in and no container was \
             detected (no /.dockerenv, /run/.containerenv or KUBERNETES_SERVICE_HOST); run it \
             as a pod's router container, or pass --allow-host inside a namespace of your own"
        );
    }
    let wan_ip = match a.wan_ip {
        Some(ip) => ip,
        None if a.dry_run => Ipv4Addr::new(198, 18, 0, 1),
        None => apply::wan_address(&a.wan_if)?,
    };
    let params = PodParams {
        run_id: RunId(a.run.clone()),
        site: a.site.clone(),
        wan_if: a.wan_if.clone(),
        wan_ip,
        inner_ip: a.inner,
        open_tcp_ports: a.open_tcp.clone(),
        mapping_timeout_s: a.mapping_timeout_s,
    };
    let setup = apply::pod_setup(kind, &params)?;
    if a.dry_run {
        print!(
            "# ip -batch -\n{}\n# nft -f -\n{}",
            setup.ip_script, setup.ruleset
        );
        return Ok(ExitCode::SUCCESS);
    }
    apply_and_say(kind, &params, &setup)?;
    if a.once {
        return Ok(ExitCode::SUCCESS);
    }
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    // Blocked, then waited for: the only threads are this one, so no handler is needed and
    // no signal is lost between two waits.
    signals.thread_block().context("blocking signals")?;
    loop {
        match signals.wait().context("waiting for a signal")? {
            Signal::SIGHUP => apply_and_say(kind, &params, &setup)?,
            _ => return Ok(ExitCode::SUCCESS),
        }
    }
}

fn apply_and_say(kind: NatKind, p: &PodParams, setup: &PodSetup) -> anyhow::Result<()> {
    apply::apply_pod(setup).context("applying the pod's NAT")?;
    println!(
        "ready: {} NAT, agent {} on {}, public {} on {}",
        kind.name(),
        p.inner_ip,
        crate::nat::POD_INNER_IF,
        p.wan_ip,
        p.wan_if
    );
    Ok(())
}

/// Docker writes `/.dockerenv`, podman `/run/.containerenv`, and the kubelet sets
/// `KUBERNETES_SERVICE_HOST` in every pod.
fn in_container() -> bool {
    Path::new("/.dockerenv").exists()
        || Path::new("/run/.containerenv").exists()
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}
