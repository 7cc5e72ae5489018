//! Seeded NAT models for the virtual-time harness, in RFC 4787 terms: endpoint-independent
//! or endpoint-dependent mapping (EIM/EDM), endpoint-independent, address-dependent or
//! address-and-port-dependent filtering (EIF/ADF/APDF), a mapping timeout and hairpinning.
//!
//! A [`Nat`] only translates: an outbound packet creates or refreshes a mapping and a filter
//! permit, an inbound packet to a public port is let in iff a live mapping exists and its
//! filter allows the source. Routing between realms (which NAT sits behind which, where a
//! node lives) is the [`super::World`]'s business. It does not model port preservation,
//! port-parity, inbound refresh or ICMP: none of them changes which punches can work.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use chaosnet_proto::Time;

/// Lowest port a NAT allocates; EDM mappings get random ports in `PORT_MIN..=65535`.
pub const PORT_MIN: u16 = 1024;
/// Mappings (or one mapping's permits) kept before the first sweep of expired ones. After a
/// sweep the next comes at twice what survived, so sweeping costs O(1) amortized and memory
/// stays within twice what is alive. A bound on memory, not a limit of the model: expired
/// state lets nothing through, so freeing it changes no outcome.
const SWEEP_FIRST: usize = 64;

/// How a NAT chooses the public port of an outbound flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mapping {
    /// EIM: one public port per internal address, whatever the destination.
    EndpointIndependent,
    /// EDM: a fresh random public port per (internal address, destination).
    EndpointDependent,
}

/// Which inbound packets a NAT lets through a live mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Filtering {
    /// EIF: anyone.
    EndpointIndependent,
    /// ADF: any port of an IP the inside host sent to.
    AddressDependent,
    /// APDF: only the exact ip:port the inside host sent to.
    AddressPortDependent,
}

/// A NAT's behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatBehaviour {
    /// Mapping behaviour.
    pub mapping: Mapping,
    /// Filtering behaviour.
    pub filtering: Filtering,
    /// A mapping (and each of its permits) lives this long after the last outbound packet
    /// that used it, unless a live connection pins it (QUIC keep-alives). Default 30,000 ms.
    pub mapping_timeout_ms: u64,
    /// Whether a packet from inside to the NAT's own public address loops back in.
    /// Default false.
    pub hairpin: bool,
}

impl NatBehaviour {
    const TIMEOUT_MS: u64 = 30_000;

    fn new(mapping: Mapping, filtering: Filtering) -> NatBehaviour {
        NatBehaviour {
            mapping,
            filtering,
            mapping_timeout_ms: Self::TIMEOUT_MS,
            hairpin: false,
        }
    }

    /// EIM + EIF.
    pub fn full_cone() -> NatBehaviour {
        Self::new(Mapping::EndpointIndependent, Filtering::EndpointIndependent)
    }

    /// EIM + ADF.
    pub fn restricted_cone() -> NatBehaviour {
        Self::new(Mapping::EndpointIndependent, Filtering::AddressDependent)
    }

    /// EIM + APDF.
    pub fn port_restricted_cone() -> NatBehaviour {
        Self::new(
            Mapping::EndpointIndependent,
            Filtering::AddressPortDependent,
        )
    }

    /// EDM + APDF.
    pub fn symmetric() -> NatBehaviour {
        Self::new(Mapping::EndpointDependent, Filtering::AddressPortDependent)
    }
}

#[derive(Clone, Copy, Debug)]
struct Permit {
    expires: Time,
    pins: u32,
}

impl Permit {
    fn alive(&self, now: Time) -> bool {
        self.pins > 0 || now < self.expires
    }
}

#[derive(Clone, Debug)]
struct Entry {
    internal: SocketAddr,
    key: (SocketAddr, Option<SocketAddr>),
    expires: Time,
    permits: HashMap<SocketAddr, Permit>,
    /// Permits held before the next sweep of expired ones.
    sweep_permits_at: usize,
}

impl Entry {
    fn alive(&self, now: Time) -> bool {
        now < self.expires || self.permits.values().any(|p| p.pins > 0)
    }
}

/// One NAT box: its public IP, behaviour and mapping table.
#[derive(Debug)]
pub struct Nat {
    /// Behaviour.
    pub behaviour: NatBehaviour,
    /// The address its outside realm sees.
    pub public_ip: IpAddr,
    /// The NAT this one sits behind (CGNAT), or `None` when its outside is the internet.
    pub parent: Option<usize>,
    rng: StdRng,
    by_port: HashMap<u16, Entry>,
    index: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// Mappings held before the next sweep of expired ones.
    sweep_at: usize,
}

impl Nat {
    /// A NAT with no mappings; `seed` drives its port choices.
    pub fn new(
        behaviour: NatBehaviour,
        public_ip: IpAddr,
        parent: Option<usize>,
        seed: u64,
    ) -> Nat {
        Nat {
            behaviour,
            public_ip,
            parent,
            rng: StdRng::seed_from_u64(seed),
            by_port: HashMap::new(),
            index: HashMap::new(),
            sweep_at: SWEEP_FIRST,
        }
    }

    /// Takes `behaviour` and drops every mapping.
    pub fn reset(&mut self, behaviour: NatBehaviour) {
        self.behaviour = behaviour;
        self.by_port.clear();
        self.index.clear();
        self.sweep_at = SWEEP_FIRST;
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.behaviour.mapping_timeout_ms)
    }

    fn key(&self, internal: SocketAddr, dst: SocketAddr) -> (SocketAddr, Option<SocketAddr>) {
        match self.behaviour.mapping {
            Mapping::EndpointIndependent => (internal, None),
            Mapping::EndpointDependent => (internal, Some(dst)),
        }
    }

    /// The live mapping's public port for this flow, if any (expired ones are dropped).
    fn live_port(&mut self, now: Time, key: (SocketAddr, Option<SocketAddr>)) -> Option<u16> {
        let port = *self.index.get(&key)?;
        if self.by_port.get(&port).is_some_and(|e| e.alive(now)) {
            return Some(port);
        }
        self.index.remove(&key);
        self.by_port.remove(&port);
        None
    }

    fn sweep(&mut self, now: Time) {
        let dead: Vec<u16> = self
            .by_port
            .iter()
            .filter(|(_, e)| !e.alive(now))
            .map(|(p, _)| *p)
            .collect();
        for p in dead {
            if let Some(e) = self.by_port.remove(&p) {
                self.index.remove(&e.key);
            }
        }
    }

    fn allocate(&mut self, now: Time) -> Option<u16> {
        if self.by_port.len() >= self.sweep_at {
            self.sweep(now);
            self.sweep_at = (2 * self.by_port.len()).max(SWEEP_FIRST);
        }
        let free = |nat: &Nat, p: u16| nat.by_port.get(&p).is_none_or(|e| !e.alive(now));
        for _ in 0..64 {
            let p = self.rng.random_range(PORT_MIN..=u16::MAX);
            if free(self, p) {
                return Some(p);
            }
        }
        (PORT_MIN..=u16::MAX).find(|&p| free(self, p))
    }

    /// A packet from `internal` to `dst` leaves through the NAT: returns its public source
    /// address, creating or refreshing the mapping and the permit for `dst`. `None` when
    /// every port is taken.
    pub fn outbound(
        &mut self,
        now: Time,
        internal: SocketAddr,
        dst: SocketAddr,
    ) -> Option<SocketAddr> {
        let key = self.key(internal, dst);
        let port = match self.live_port(now, key) {
            Some(p) => p,
            None => {
                let p = self.allocate(now)?;
                if let Some(old) = self.by_port.remove(&p) {
                    self.index.remove(&old.key);
                }
                self.by_port.insert(
                    p,
                    Entry {
                        internal,
                        key,
                        expires: now,
                        permits: HashMap::new(),
                        sweep_permits_at: SWEEP_FIRST,
                    },
                );
                self.index.insert(key, p);
                p
            }
        };
        let expires = now + self.timeout();
        let e = self.by_port.get_mut(&port)?;
        e.expires = expires;
        if e.permits.len() >= e.sweep_permits_at && !e.permits.contains_key(&dst) {
            // An endpoint-independent mapping talks to every peer its host meets.
            e.permits.retain(|_, p| p.alive(now));
            e.sweep_permits_at = (2 * e.permits.len()).max(SWEEP_FIRST);
        }
        let permit = e.permits.entry(dst).or_insert(Permit { expires, pins: 0 });
        permit.expires = expires;
        Some(SocketAddr::new(self.public_ip, port))
    }

    /// A packet from `src` arrives at public port `port`: returns the internal address it is
    /// forwarded to, or `None` if there is no live mapping or the filter drops it.
    pub fn inbound(&mut self, now: Time, port: u16, src: SocketAddr) -> Option<SocketAddr> {
        let e = self.by_port.get(&port).filter(|e| e.alive(now))?;
        let allowed = match self.behaviour.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => e
                .permits
                .iter()
                .any(|(a, p)| a.ip() == src.ip() && p.alive(now)),
            Filtering::AddressPortDependent => e.permits.get(&src).is_some_and(|p| p.alive(now)),
        };
        allowed.then_some(e.internal)
    }

    /// Where a packet to public port `port` would go, ignoring filtering (for link choice).
    pub fn peek(&self, now: Time, port: u16) -> Option<SocketAddr> {
        self.by_port
            .get(&port)
            .filter(|e| e.alive(now))
            .map(|e| e.internal)
    }

    /// Pins (`up`) or unpins the permit of the flow `internal` → `remote`, as a live
    /// connection's keep-alives would. Returns the flow's public address.
    pub fn pin(
        &mut self,
        now: Time,
        internal: SocketAddr,
        remote: SocketAddr,
        up: bool,
    ) -> Option<SocketAddr> {
        let key = self.key(internal, remote);
        let port = if up {
            self.outbound(now, internal, remote)?.port()
        } else {
            *self.index.get(&key)?
        };
        let e = self.by_port.get_mut(&port)?;
        let p = e.permits.get_mut(&remote)?;
        if up {
            p.pins += 1;
        } else {
            p.pins = p.pins.saturating_sub(1);
            // Keep-alives stop now; the mapping then times out as usual.
            let expires = now + Duration::from_millis(self.behaviour.mapping_timeout_ms);
            p.expires = p.expires.max(expires);
            e.expires = e.expires.max(expires);
        }
        Some(SocketAddr::new(self.public_ip, port))
    }

    /// Forgets the flows to `remote` (any port), as deleting their conntrack entries does:
    /// their permits go, live connections' too (the harness carries established
    /// connections' streams without the NAT, so they survive), and an endpoint-dependent
    /// mapping made only for them goes as well. Endpoint-independent mappings keep their port.
    pub fn forget(&mut self, remote: IpAddr) {
        let mut dead = Vec::new();
        for (port, e) in &mut self.by_port {
            e.permits.retain(|a, _| a.ip() != remote);
            if e.key.1.is_some_and(|d| d.ip() == remote) && e.permits.is_empty() {
                dead.push(*port);
            }
        }
        for p in dead {
            if let Some(e) = self.by_port.remove(&p) {
                self.index.remove(&e.key);
            }
        }
    }

    /// Live mappings.
    pub fn mappings(&self, now: Time) -> usize {
        self.by_port.values().filter(|e| e.alive(now)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn nat(b: NatBehaviour) -> Nat {
        Nat::new(b, "198.18.0.1".parse().expect("ip"), None, 1)
    }

    #[test]
    fn eim_reuses_the_port_and_edm_does_not() {
        let t = Time::from_millis(1);
        let mut cone = nat(NatBehaviour::port_restricted_cone());
        let x = cone
            .outbound(t, a("192.168.0.2:4433"), a("10.0.0.1:1"))
            .expect("port");
        let y = cone
            .outbound(t, a("192.168.0.2:4433"), a("10.0.0.2:1"))
            .expect("port");
        assert_eq!(x, y);
        let mut sym = nat(NatBehaviour::symmetric());
        let x = sym
            .outbound(t, a("192.168.0.2:4433"), a("10.0.0.1:1"))
            .expect("port");
        let y = sym
            .outbound(t, a("192.168.0.2:4433"), a("10.0.0.2:1"))
            .expect("port");
        assert_ne!(x, y);
        assert!(x.port() >= PORT_MIN && y.port() >= PORT_MIN);
    }

    #[test]
    fn filtering_follows_the_behaviour() {
        let t = Time::from_millis(1);
        let inside = a("192.168.0.2:4433");
        let peer = a("10.0.0.1:4433");
        let same_ip = a("10.0.0.1:9999");
        let other = a("10.0.0.9:4433");
        for (b, want) in [
            (NatBehaviour::full_cone(), [true, true, true]),
            (NatBehaviour::restricted_cone(), [true, true, false]),
            (NatBehaviour::port_restricted_cone(), [true, false, false]),
            (NatBehaviour::symmetric(), [true, false, false]),
        ] {
            let mut n = nat(b);
            let port = n.outbound(t, inside, peer).expect("port").port();
            let got = [peer, same_ip, other].map(|s| n.inbound(t, port, s).is_some());
            assert_eq!(got, want, "{b:?}");
            assert_eq!(n.inbound(t, port.wrapping_add(1).max(PORT_MIN), peer), None);
        }
    }

    #[test]
    fn mappings_time_out_unless_pinned() {
        let mut n = nat(NatBehaviour::port_restricted_cone());
        let (inside, peer) = (a("192.168.0.2:4433"), a("10.0.0.1:4433"));
        let t0 = Time::from_millis(1);
        let port = n.outbound(t0, inside, peer).expect("port").port();
        let late = t0 + Duration::from_millis(30_001);
        assert_eq!(n.inbound(late, port, peer), None, "expired");
        let port = n.outbound(late, inside, peer).expect("port").port();
        n.pin(late, inside, peer, true);
        let much_later = late + Duration::from_secs(3_600);
        assert_eq!(n.inbound(much_later, port, peer), Some(inside), "pinned");
        n.pin(much_later, inside, peer, false);
        assert_eq!(n.mappings(much_later), 1);
        assert_eq!(n.mappings(much_later + Duration::from_millis(30_001)), 0);
    }
}
