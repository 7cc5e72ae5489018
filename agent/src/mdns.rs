//! Local discovery: the agent announces itself on its LAN with DNS-SD over mDNS
//! (`_chaosnet._udp.local.`) and reports the agents it hears to the core, which verifies
//! and adds them like any other contact. Nodes on one LAN then find each other without any
//! seed (Polykey's `findNodeByMDNS`).
//!
//! The service instance is the node id in base32 (a DNS label holds at most 63 bytes, hex
//! would need 64), with TXT records `id` (hex) and `net` (the network id). Announcements of
//! another network, of ourselves, or that do not parse are ignored; the handshake would
//! refuse another network anyway. `mdns-sd` runs its own thread and sockets; this module
//! runs one more thread that forwards resolved services to the driver. It makes no protocol
//! decision: whether and how to contact a discovered node is the core's.

use std::net::{IpAddr, SocketAddr};

use chaosnet_proto::NodeId;
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::mpsc;

use crate::driver::Input;

/// The DNS-SD service type of chaosnet agents.
pub const SERVICE_TYPE: &str = "_chaosnet._udp.local.";

/// Why local discovery could not start.
#[derive(Debug, thiserror::Error)]
#[error("local discovery (mDNS): {0}")]
pub struct MdnsError(String);

/// A running announcement and browser; stops when dropped.
pub struct Discovery {
    daemon: ServiceDaemon,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Discovery")
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

/// Announces `me` listening at `listen` on `network`, and sends every other agent of that
/// network it hears to `inputs` as [`Input::Discovered`].
pub fn start(
    me: NodeId,
    network: &str,
    listen: SocketAddr,
    inputs: mpsc::Sender<Input>,
) -> Result<Discovery, MdnsError> {
    let err = |e: mdns_sd::Error| MdnsError(e.to_string());
    let daemon = ServiceDaemon::new().map_err(err)?;
    let instance = me.to_base32();
    let host = format!("cn-{}.local.", &me.to_hex()[..16]);
    let hex = me.to_hex();
    let props = [("id", hex.as_str()), ("net", network)];
    let info = if listen.ip().is_unspecified() {
        ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &host,
            "",
            listen.port(),
            &props[..],
        )
        .map(ServiceInfo::enable_addr_auto)
    } else {
        ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &host,
            listen.ip(),
            listen.port(),
            &props[..],
        )
    }
    .map_err(err)?;
    daemon.register(info).map_err(err)?;
    let events = daemon.browse(SERVICE_TYPE).map_err(err)?;
    let network = network.to_string();
    std::thread::Builder::new()
        .name("mdns-browse".into())
        .spawn(move || {
            while let Ok(event) = events.recv() {
                let ServiceEvent::ServiceResolved(s) = event else {
                    continue;
                };
                let Some(found) = parse(
                    s.get_property_val_str("id"),
                    s.get_property_val_str("net"),
                    &network,
                    s.get_addresses().iter().map(|a| a.to_ip_addr()),
                    s.get_port(),
                ) else {
                    continue;
                };
                if found.0 == me {
                    continue;
                }
                let (peer, addrs) = found;
                if inputs
                    .blocking_send(Input::Discovered { peer, addrs })
                    .is_err()
                {
                    return; // the driver is gone
                }
            }
        })
        .map_err(|e| MdnsError(e.to_string()))?;
    Ok(Discovery { daemon })
}

/// The node and its addresses from an announcement, if it is one of `network`'s.
fn parse(
    id: Option<&str>,
    net: Option<&str>,
    network: &str,
    ips: impl Iterator<Item = IpAddr>,
    port: u16,
) -> Option<(NodeId, Vec<SocketAddr>)> {
    if net? != network || port == 0 {
        return None;
    }
    let peer: NodeId = id?.parse().ok()?;
    let mut addrs: Vec<SocketAddr> = ips
        .filter(|ip| !ip.is_unspecified() && !ip.is_multicast())
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    addrs.sort();
    addrs.dedup();
    (!addrs.is_empty()).then_some((peer, addrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_announcements_of_our_network_are_taken() {
        let id = NodeId([7; 32]).to_hex();
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let got = parse(
            Some(&id),
            Some("mainnet"),
            "mainnet",
            [ip("10.1.0.2")].into_iter(),
            4433,
        );
        assert_eq!(
            got,
            Some((
                NodeId([7; 32]),
                vec!["10.1.0.2:4433".parse().expect("addr")]
            ))
        );
        let other_net = parse(
            Some(&id),
            Some("testnet"),
            "mainnet",
            [ip("10.1.0.2")].into_iter(),
            4433,
        );
        assert_eq!(other_net, None);
        assert_eq!(
            parse(
                Some("zz"),
                Some("mainnet"),
                "mainnet",
                [ip("10.1.0.2")].into_iter(),
                4433
            ),
            None
        );
        assert_eq!(
            parse(
                Some(&id),
                None,
                "mainnet",
                [ip("10.1.0.2")].into_iter(),
                4433
            ),
            None
        );
        assert_eq!(
            parse(
                Some(&id),
                Some("mainnet"),
                "mainnet",
                std::iter::empty(),
                4433
            ),
            None
        );
        assert_eq!(
            parse(
                Some(&id),
                Some("mainnet"),
                "mainnet",
                [ip("10.1.0.2")].into_iter(),
                0
            ),
            None
        );
    }
}
