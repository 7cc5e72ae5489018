//! The router of a pod: NAT inside the network namespace a pod's containers share.
//!
//! On Kubernetes (and in its Docker emulation, containers joined with
//! `--network container:<router>`) the pod's `eth0` is the site's WAN. The router container
//! (`chaosnet pod-router`, capabilities: only `NET_ADMIN`) gives the agent an inner address
//! on `lo` and loads the site's NAT ruleset from the same `netns-scripts` templates as a
//! lab router ([`crate::nat::pod_ruleset`]); the agent container drops every capability and
//! binds the inner address, so every packet it sends is translated as on a home router.
//!
//! [`pod_setup`] is pure (the `ip` script and the ruleset, unit-tested without root);
//! [`apply_pod`] carries a setup out and is idempotent (`ip addr replace`, an nft table
//! redefined in one transaction, conntrack flushed so no entry keeps an old translation).
//! What it does not do: create the pod, start the agent, or shape traffic (faults reach the
//! router through `exec`).

use std::net::Ipv4Addr;
use std::time::Duration;

use super::ApplyError;
use super::cmd::{Cmd, require, which};
use crate::nat::{POD_INNER_IF, PodParams, pod_ruleset};
use crate::plan::NatKind;

/// What the router container applies: pure values, rendered before anything runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSetup {
    /// `ip -batch` lines: `lo` up and the agent's inner address on it.
    pub ip_script: String,
    /// The NAT ruleset for `nft -f -`.
    pub ruleset: String,
}

/// Renders the setup of a pod's router for NAT kind `kind`. A public pod (`none`) runs no
/// router, so it is an [`ApplyError::InvalidPlan`], as is an inner address that is not a
/// private one (it would shadow a real host on the pod's WAN).
pub fn pod_setup(kind: NatKind, p: &PodParams) -> Result<PodSetup, ApplyError> {
    if !p.inner_ip.is_private() {
        return Err(ApplyError::InvalidPlan(format!(
            "the agent's inner address {} is not private (10/8, 172.16/12, 192.168/16): \
             it would shadow a host on the pod's network",
            p.inner_ip
        )));
    }
    if p.inner_ip == p.wan_ip {
        return Err(ApplyError::InvalidPlan(format!(
            "the agent's inner address {} is the pod's own address",
            p.inner_ip
        )));
    }
    let ruleset = pod_ruleset(kind, p).ok_or_else(|| {
        ApplyError::InvalidPlan(
            "a public pod (--nat none) runs no router: start the agent without one".to_string(),
        )
    })?;
    let ip_script = format!(
        "link set {POD_INNER_IF} up\naddr replace {}/32 dev {POD_INNER_IF}\n",
        p.inner_ip
    );
    Ok(PodSetup { ip_script, ruleset })
}

/// Applies a [`PodSetup`] in the calling process's network namespace (the pod's).
/// Needs `CAP_NET_ADMIN`, `ip` and `nft`; `conntrack` is used when present (without it,
/// entries made before a re-apply keep their old translation until they expire).
pub fn apply_pod(setup: &PodSetup) -> Result<(), ApplyError> {
    let ip = require("ip")?;
    let nft = require("nft")?;
    let timeout = Duration::from_secs(20);
    Cmd::new(&ip)
        .args(["-batch", "-"])
        .stdin(setup.ip_script.clone())
        .timeout(timeout)
        .run()
        .map_err(explain_eperm)?;
    Cmd::new(&nft)
        .args(["-f", "-"])
        .stdin(setup.ruleset.clone())
        .timeout(timeout)
        .run()
        .map_err(explain_eperm)?;
    if let Some(conntrack) = which("conntrack") {
        // Exit 1 with "0 flow entries" is not a failure: there was nothing to flush.
        let _ = Cmd::new(&conntrack)
            .args(["-F"])
            .timeout(timeout)
            .run_raw()?;
    }
    Ok(())
}

/// Whether a pod's router is in place: the inner address on [`POD_INNER_IF`] and the NAT
/// table loaded (what the router container's startupProbe asks before the agent starts).
pub fn check_pod(inner_ip: Ipv4Addr) -> Result<(), ApplyError> {
    let ip = require("ip")?;
    let nft = require("nft")?;
    let timeout = Duration::from_secs(10);
    let out = Cmd::new(&ip)
        .args(["-4", "-o", "addr", "show", "dev", POD_INNER_IF])
        .timeout(timeout)
        .run()?;
    let has_inner = out.lines().any(|l| first_ipv4(l) == Some(inner_ip));
    if !has_inner {
        return Err(ApplyError::InvalidPlan(format!(
            "the agent's inner address {inner_ip} is not on {POD_INNER_IF} yet"
        )));
    }
    Cmd::new(&nft)
        .args(["list", "table", "ip", crate::nat::TABLE])
        .timeout(timeout)
        .run()
        .map(|_| ())
}

/// The pod's IPv4 address on `wan_if`, from `ip -4 -o addr show dev <wan_if>`.
pub fn wan_address(wan_if: &str) -> Result<Ipv4Addr, ApplyError> {
    let ip = require("ip")?;
    let out = Cmd::new(&ip)
        .args(["-4", "-o", "addr", "show", "dev", wan_if])
        .timeout(Duration::from_secs(10))
        .run()?;
    first_ipv4(&out).ok_or_else(|| {
        ApplyError::InvalidPlan(format!(
            "{wan_if} has no IPv4 address (pass --wan-ip or set POD_IP)"
        ))
    })
}

/// The first address in `ip -4 -o addr` output
/// (`2: eth0    inet 172.17.0.2/16 brd 172.17.255.255 scope global eth0`).
fn first_ipv4(out: &str) -> Option<Ipv4Addr> {
    out.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == "inet")?;
        let cidr = words.next()?;
        cidr.split('/').next()?.parse().ok()
    })
}

/// A permission error from `ip` or `nft` means the container lacks `NET_ADMIN`: say so.
fn explain_eperm(e: ApplyError) -> ApplyError {
    match e {
        ApplyError::Command {
            command,
            status,
            stderr,
        } if stderr.contains("Operation not permitted") => ApplyError::Command {
            command,
            status,
            stderr: format!(
                "{stderr} (the router container needs the NET_ADMIN capability: \
                 securityContext.capabilities.add [NET_ADMIN], or docker --cap-add NET_ADMIN)"
            ),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::RunId;

    fn params(inner: Ipv4Addr) -> PodParams {
        PodParams {
            run_id: RunId("k1".into()),
            site: "sym".into(),
            wan_if: "eth0".into(),
            wan_ip: Ipv4Addr::new(198, 18, 240, 30),
            inner_ip: inner,
            open_tcp_ports: vec![9100],
            mapping_timeout_s: 120,
        }
    }

    #[test]
    fn a_pod_setup_puts_the_inner_address_on_lo_and_renders_the_nat() {
        let s = pod_setup(NatKind::Symmetric, &params(Ipv4Addr::new(10, 77, 0, 2)))
            .expect("a NAT kind and a private inner address");
        assert_eq!(
            s.ip_script,
            "link set lo up\naddr replace 10.77.0.2/32 dev lo\n"
        );
        assert!(s.ruleset.contains("site sym: symmetric"), "{}", s.ruleset);
        assert!(s.ruleset.contains("ip saddr 10.77.0.2/32"), "{}", s.ruleset);
    }

    #[test]
    fn a_pod_setup_refuses_what_would_not_be_a_nat() {
        let none = pod_setup(NatKind::None, &params(Ipv4Addr::new(10, 77, 0, 2)));
        assert!(matches!(none, Err(ApplyError::InvalidPlan(m)) if m.contains("--nat none")));
        let public = pod_setup(NatKind::FullCone, &params(Ipv4Addr::new(198, 18, 240, 9)));
        assert!(matches!(public, Err(ApplyError::InvalidPlan(m)) if m.contains("not private")));
        let mut same = params(Ipv4Addr::new(10, 1, 1, 1));
        same.wan_ip = same.inner_ip;
        assert!(matches!(
            pod_setup(NatKind::FullCone, &same),
            Err(ApplyError::InvalidPlan(_))
        ));
    }

    #[test]
    fn the_wan_address_is_read_from_ip_addr_output() {
        let out = "2: eth0    inet 172.17.0.2/16 brd 172.17.255.255 scope global eth0\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(first_ipv4(out), Some(Ipv4Addr::new(172, 17, 0, 2)));
        assert_eq!(first_ipv4(""), None);
        assert_eq!(first_ipv4("2: eth0 inet garbage"), None);
    }

    #[test]
    fn permission_errors_name_the_capability() {
        let e = explain_eperm(ApplyError::Command {
            command: "nft -f -".into(),
            status: "exit status: 1".into(),
            stderr: "Error: Could not process rule: Operation not permitted".into(),
        });
        assert!(e.to_string().contains("NET_ADMIN"), "{e}");
    }
}
