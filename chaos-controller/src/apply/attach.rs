//! Hands a host's place in the lab to another network namespace: a container's.
//!
//! `apply` builds every host namespace the same way (veth `eth0` to its LAN or the internet
//! bridge, address, default route). For an agent that runs in a container, the docker
//! runtime starts the container with no network, then calls [`attach_host`], which:
//! 1. moves `eth0` from whatever namespace is named `cn<run>-h-<agent>` into the network
//!    namespace of the container's pid (moving a link drops its addresses and routes);
//! 2. points the name `cn<run>-h-<agent>` at the container's namespace (`ip netns del`,
//!    then `ip netns attach`), so everything that finds a host by name (`exec`, the NAT
//!    probes, faults, `teardown`) reaches the container without knowing it is one;
//! 3. configures the address, `lo`, the link and the default route there again, in one
//!    `ip -batch` with `replace`, so running it twice gives the same result.
//!
//! The name's bind mount keeps the namespace (and `eth0` in it) alive after the container
//! stops, so a restarted container (which Docker gives a fresh, empty namespace) takes the
//! link over from its previous namespace the same way. The link keeps its ifindex and MAC,
//! so the router's bridge and neighbour entries stay valid.
//!
//! What it does not do: create links (that is `apply`), or start containers.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::plan::{IfAddr, Plan};

use super::cmd::{self, Cmd};
use super::{ApplyError, netns};

/// What a host needs to be on the lab network: its namespace name, its one link, address
/// and gateway. Pure data, taken from the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostWiring {
    /// The host namespace name, `cn<run>-h-<agent>`.
    pub ns: String,
    /// The host's link (`eth0`).
    pub ifname: String,
    /// Its address.
    pub addr: IfAddr,
    /// The default route's next hop (none for hosts on the internet bridge).
    pub gateway: Option<Ipv4Addr>,
}

impl HostWiring {
    /// The wiring of the host namespace `ns` in `plan`: its single addressed veth end and
    /// its default route. `None` when the plan has no such host.
    pub fn from_plan(plan: &Plan, ns: &str) -> Option<HostWiring> {
        let end = plan
            .veths
            .iter()
            .flat_map(|v| [&v.a, &v.b])
            .find(|e| e.ns == ns && e.addr.is_some())?;
        let gateway = plan
            .routes
            .iter()
            .find(|r| r.ns == ns && r.dest.is_none())
            .map(|r| r.via);
        Some(HostWiring {
            ns: ns.to_string(),
            ifname: end.name.clone(),
            addr: end.addr?,
            gateway,
        })
    }

    /// The `ip -batch` input that configures the link once it is in the namespace.
    /// Idempotent (`replace`).
    pub fn batch(&self) -> String {
        let mut s = String::from("link set lo up\n");
        let _ = writeln!(
            s,
            "addr replace {}/{} dev {}",
            self.addr.ip, self.addr.prefix, self.ifname
        );
        let _ = writeln!(s, "link set {} up", self.ifname);
        if let Some(gw) = self.gateway {
            let _ = writeln!(s, "route replace default via {gw}");
        }
        s
    }
}

/// Moves the host's link into the network namespace of `pid`, points the host namespace's
/// name at that namespace, and configures the link there (see the module docs). When the
/// name already refers to `pid`'s namespace, only the configuration is applied again.
///
/// # Errors
/// A missing `ip`, a host namespace that does not exist, or the failing `ip` command (for
/// example when the link is in neither namespace).
pub fn attach_host(w: &HostWiring, pid: u32) -> Result<(), ApplyError> {
    let ip = cmd::require("ip")?;
    let target = i32::try_from(pid)
        .ok()
        .and_then(netns::pid_ns_inode)
        .ok_or_else(|| ApplyError::Netns {
            ns: w.ns.clone(),
            what: format!("process {pid} is gone; cannot move {} into it", w.ifname),
        })?;
    let current =
        netns::ns_inode(&w.ns).ok_or_else(|| ApplyError::NoSuchNamespace { ns: w.ns.clone() })?;
    if current != target {
        let pid_s = pid.to_string();
        Cmd::new(&ip)
            .args(["-n", &w.ns, "link", "set", &w.ifname, "netns", &pid_s])
            .run()?;
        Cmd::new(&ip).args(["netns", "del", &w.ns]).run()?;
        Cmd::new(&ip)
            .args(["netns", "attach", &w.ns, &pid_s])
            .run()?;
    }
    // `ip -n` enters the namespace by name: the name now refers to the container's.
    super::ip_batch_ns(&ip, Some(&w.ns), &format!("wiring {}", w.ns), &w.batch())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::RunId;
    use crate::planner;
    use crate::scenario::Scenario;

    #[test]
    fn wiring_comes_from_the_plan() {
        let plan = planner::plan(&Scenario::default_scenario(), &RunId("abc123".into()))
            .expect("default plan");
        let seed = &plan.agents[0];
        let w = HostWiring::from_plan(&plan, &seed.ns).expect("seed host");
        assert_eq!(w.ifname, "eth0");
        assert_eq!(w.addr.ip, seed.lan_ip);
        assert_eq!(w.addr.prefix, 15);
        assert_eq!(w.gateway, None);
        assert_eq!(
            w.batch(),
            format!(
                "link set lo up\naddr replace {}/15 dev eth0\nlink set eth0 up\n",
                seed.lan_ip
            )
        );

        let natted = plan
            .agents
            .iter()
            .find(|a| a.lan_ip.octets()[0] == 10)
            .expect("a NATed agent");
        let w = HostWiring::from_plan(&plan, &natted.ns).expect("NATed host");
        let o = natted.lan_ip.octets();
        assert_eq!(w.gateway, Some(Ipv4Addr::new(o[0], o[1], o[2], 1)));
        assert!(
            w.batch().ends_with(&format!(
                "route replace default via {}.{}.{}.1\n",
                o[0], o[1], o[2]
            )),
            "{}",
            w.batch()
        );

        assert_eq!(HostWiring::from_plan(&plan, "cnabc123-nope"), None);
    }
}
