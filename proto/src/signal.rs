//! Signalling for hole punching: signed connect requests, countersignatures, the per-source
//! rate limiter, the replay cache, and the choice of punching strategy.
//!
//! A requester A that wants to reach T signs `(A, T, nonce, issued_ms, A's NAT type)` with
//! its node key (a NodeId is an Ed25519 public key). Each node that carries the signal
//! towards T countersigns it together with the address it sees the previous hop at, so T
//! learns A's public address from a node A actually talked to, and can check that every hop
//! vouched for the signal. A forged signal (bad signature, wrong sender) and a replayed one
//! (same nonce, or too old) are refused.
//!
//! Everything here is pure: time comes in as [`Time`], there is no I/O. The [`crate::node`]
//! state machine uses these pieces; it owns the decisions of when to signal and whom to ask.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::reach::NatType;
use crate::time::Time;

/// Most hops a signal may take, counting the node that delivers it to its target.
pub const MAX_SIGNAL_HOPS: usize = 4;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

const SIGNAL_DOMAIN: &[u8] = b"chaosnet/signal/v1";
const COUNTER_DOMAIN: &[u8] = b"chaosnet/countersign/v1";

/// A node's secret signing key (the Ed25519 seed). Its `Debug` never prints the key.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// Wraps an Ed25519 seed.
    pub fn from_bytes(seed: [u8; 32]) -> SecretKey {
        SecretKey(seed)
    }

    /// The NodeId (public key) of this key.
    pub fn node_id(&self) -> NodeId {
        NodeId(SigningKey::from_bytes(&self.0).verifying_key().to_bytes())
    }

    pub(crate) fn sign(&self, msg: &[u8]) -> Vec<u8> {
        SigningKey::from_bytes(&self.0)
            .sign(msg)
            .to_bytes()
            .to_vec()
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// Checks `sig` by `signer` over `msg`. Any malformed input is simply `false`.
pub fn verify(signer: &NodeId, msg: &[u8], sig: &[u8]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&signer.0) else {
        return false;
    };
    let Ok(bytes) = <[u8; SIGNATURE_LEN]>::try_from(sig) else {
        return false;
    };
    key.verify(msg, &Signature::from_bytes(&bytes)).is_ok()
}

/// A request, signed by `from`, that `to` punch towards `from`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    /// The requester.
    pub from: NodeId,
    /// The node to reach.
    pub to: NodeId,
    /// Unique per requester; also the punch token both sides put in their probes.
    pub nonce: u64,
    /// When the requester issued it, in its clock's milliseconds.
    pub issued_ms: u64,
    /// The requester's NAT type when it signed.
    pub from_nat: NatType,
    /// Where the requester believes it can be reached, public (mapped) address first: a
    /// carrier may see it at a LAN address, which is useless to a target on another site.
    pub from_addrs: Vec<SocketAddr>,
    /// Ed25519 signature by `from` over the fields above.
    pub sig: Vec<u8>,
}

impl Signal {
    /// A signal signed with `key` (whose id becomes `from`), claiming no addresses.
    pub fn new(
        key: &SecretKey,
        to: NodeId,
        nonce: u64,
        issued_ms: u64,
        from_nat: NatType,
    ) -> Signal {
        Signal::with_addrs(key, to, nonce, issued_ms, from_nat, Vec::new())
    }

    /// A signal signed with `key` that also claims the requester's addresses.
    pub fn with_addrs(
        key: &SecretKey,
        to: NodeId,
        nonce: u64,
        issued_ms: u64,
        from_nat: NatType,
        from_addrs: Vec<SocketAddr>,
    ) -> Signal {
        let mut s = Signal {
            from: key.node_id(),
            to,
            nonce,
            issued_ms,
            from_nat,
            from_addrs,
            sig: Vec::new(),
        };
        s.sig = key.sign(&s.signed_bytes());
        s
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(128);
        m.extend_from_slice(SIGNAL_DOMAIN);
        m.extend_from_slice(&self.from.0);
        m.extend_from_slice(&self.to.0);
        m.extend_from_slice(&self.nonce.to_be_bytes());
        m.extend_from_slice(&self.issued_ms.to_be_bytes());
        m.push(self.from_nat as u8);
        for a in &self.from_addrs {
            m.extend_from_slice(a.to_string().as_bytes());
            m.push(b'|');
        }
        m
    }

    /// Whether `from` really signed it.
    pub fn verify(&self) -> bool {
        verify(&self.from, &self.signed_bytes(), &self.sig)
    }
}

/// One hop's endorsement of a [`Signal`]: "I received it from the previous hop, whom I see
/// at `observed`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Countersign {
    /// The hop.
    pub by: NodeId,
    /// Where the hop sees the node it got the signal from.
    pub observed: SocketAddr,
    /// Ed25519 signature by `by` over the signal's signature, the hop index and `observed`.
    pub sig: Vec<u8>,
}

impl Countersign {
    /// The countersignature of hop number `index` (0 = first carrier) by `key`.
    pub fn new(
        key: &SecretKey,
        signal: &Signal,
        index: usize,
        observed: SocketAddr,
    ) -> Countersign {
        let by = key.node_id();
        let sig = key.sign(&counter_bytes(signal, index, &by, observed));
        Countersign { by, observed, sig }
    }

    fn verify(&self, signal: &Signal, index: usize) -> bool {
        verify(
            &self.by,
            &counter_bytes(signal, index, &self.by, self.observed),
            &self.sig,
        )
    }
}

fn counter_bytes(signal: &Signal, index: usize, by: &NodeId, observed: SocketAddr) -> Vec<u8> {
    let mut m = Vec::with_capacity(160);
    m.extend_from_slice(COUNTER_DOMAIN);
    m.extend_from_slice(&signal.sig);
    m.push(index as u8);
    m.extend_from_slice(&by.0);
    m.extend_from_slice(observed.to_string().as_bytes());
    m
}

/// Why a signal was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignalRefusal {
    /// A signature does not verify, or the chain does not match who delivered it.
    Forged,
    /// Seen before, or older than the freshness window.
    Replayed,
    /// Too many hops.
    TooManyHops,
}

impl SignalRefusal {
    /// Bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalRefusal::Forged => "forged",
            SignalRefusal::Replayed => "replayed",
            SignalRefusal::TooManyHops => "too_many_hops",
        }
    }
}

/// Checks a signal and its countersignatures as received from `delivered_by`:
/// the requester's signature, every hop's countersignature, that the first hop... is whoever
/// the requester handed it to, and that the last signer is the node that delivered it (or,
/// with no hops, that the requester delivered it itself).
pub fn check_chain(
    signal: &Signal,
    hops: &[Countersign],
    delivered_by: &NodeId,
) -> Result<(), SignalRefusal> {
    if hops.len() > MAX_SIGNAL_HOPS {
        return Err(SignalRefusal::TooManyHops);
    }
    if !signal.verify() {
        return Err(SignalRefusal::Forged);
    }
    let last = hops.last().map_or(&signal.from, |h| &h.by);
    if last != delivered_by {
        return Err(SignalRefusal::Forged);
    }
    for (i, h) in hops.iter().enumerate() {
        if !h.verify(signal, i) {
            return Err(SignalRefusal::Forged);
        }
    }
    Ok(())
}

/// Remembers recently accepted `(requester, nonce)` pairs so a signal is acted on once.
/// Bounded: beyond `capacity` the oldest entries go, and those are older than the freshness
/// window anyway when the capacity is sized for the signal rate limit.
#[derive(Debug)]
pub struct ReplayCache {
    max_age_ms: u64,
    capacity: usize,
    order: VecDeque<(NodeId, u64)>,
    seen: HashMap<(NodeId, u64), u64>,
}

impl ReplayCache {
    /// A cache refusing signals older than `max_age_ms` (by the issuer's clock compared with
    /// ours, so it also bounds clock skew) and remembering `capacity` nonces.
    pub fn new(max_age_ms: u64, capacity: usize) -> ReplayCache {
        ReplayCache {
            max_age_ms,
            capacity: capacity.max(1),
            order: VecDeque::new(),
            seen: HashMap::new(),
        }
    }

    /// Accepts the signal once: `Err(Replayed)` if seen before or not fresh.
    pub fn check_and_insert(&mut self, now: Time, signal: &Signal) -> Result<(), SignalRefusal> {
        let now_ms = now.as_millis();
        if now_ms.abs_diff(signal.issued_ms) > self.max_age_ms {
            return Err(SignalRefusal::Replayed);
        }
        let key = (signal.from, signal.nonce);
        if self.seen.contains_key(&key) {
            return Err(SignalRefusal::Replayed);
        }
        while self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.order.push_back(key);
        self.seen.insert(key, now_ms);
        Ok(())
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// A token bucket per source (a peer's id by default, or any other key such as an IP
/// address), in a bounded map: `burst` tokens at once, refilled at `per_s` per second. When
/// the map is full, the source idle longest is forgotten (it then starts again with a full
/// bucket, which is the safe direction for a bound on memory).
#[derive(Debug)]
pub struct RateLimiter<K = NodeId> {
    burst: f64,
    per_s: f64,
    capacity: usize,
    buckets: HashMap<K, (f64, Time)>,
}

impl<K: Copy + Eq + Ord + std::hash::Hash> RateLimiter<K> {
    /// A limiter of `burst` at once and `per_s` per second per source, tracking at most
    /// `capacity` sources.
    pub fn new(burst: u32, per_s: f64, capacity: usize) -> RateLimiter<K> {
        RateLimiter {
            burst: f64::from(burst.max(1)),
            per_s: per_s.max(0.0),
            capacity: capacity.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `source`; `false` when it has none left.
    pub fn allow(&mut self, now: Time, source: K) -> bool {
        self.allow_n(now, source, 1.0)
    }

    /// Takes `cost` tokens for `source` at once; `false` (and nothing taken) when it has
    /// fewer. A cost above the burst is never allowed.
    pub fn allow_n(&mut self, now: Time, source: K, cost: f64) -> bool {
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.capacity {
            let oldest = self
                .buckets
                .iter()
                .min_by_key(|(id, (_, t))| (*t, **id))
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.buckets.remove(&id);
            }
        }
        let (burst, per_s) = (self.burst, self.per_s);
        let (tokens, last) = self.buckets.entry(source).or_insert((burst, now));
        let refill = now.since(*last).as_secs_f64() * per_s;
        *tokens = (*tokens + refill).min(burst);
        *last = now;
        if *tokens >= cost {
            *tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// The birthday-probing role of a side (RFC 4787 terms: the "hard" side has an
/// endpoint-dependent mapping).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BirthdayRole {
    /// Opens many sockets towards the peer's mapped address, creating many mappings.
    Hard,
    /// Sprays probes at random ports of the hard side's public IP.
    Easy,
}

/// What punching strategy two NAT types call for, seen from `me`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Simultaneous open with probes on the QUIC socket (also learns the peer's address for
    /// us from its probes, which covers a symmetric peer behind a non-port-restricted side).
    Punch {
        /// Birthday probing on top of the plain punch, when one side is symmetric and the
        /// other may filter by port.
        birthday: Option<BirthdayRole>,
    },
    /// No punch can work: both mappings are endpoint-dependent. Go through a relay.
    Relay,
}

/// The strategy for a pair. Unknown types are treated as cone: the cheap attempt is made,
/// and the relay remains the fallback.
pub fn strategy(me: NatType, peer: NatType) -> Strategy {
    let sym = |n: NatType| n == NatType::Symmetric;
    // A side with no NAT, or with endpoint-independent filtering, is reached by the plain
    // punch: the symmetric side's probes land and reveal its mapping.
    let open = |n: NatType| matches!(n, NatType::Public | NatType::FullCone);
    match (sym(me), sym(peer)) {
        (true, true) => Strategy::Relay,
        (true, false) if !open(peer) => Strategy::Punch {
            birthday: Some(BirthdayRole::Hard),
        },
        (false, true) if !open(me) => Strategy::Punch {
            birthday: Some(BirthdayRole::Easy),
        },
        _ => Strategy::Punch { birthday: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_bytes([b; 32])
    }

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, 1], p))
    }

    #[test]
    fn a_signed_chain_verifies_and_tampering_does_not() {
        let (a, s, t) = (key(1), key(2), key(3));
        let sig = Signal::new(&a, t.node_id(), 7, 1_000, NatType::Cone);
        assert_eq!(check_chain(&sig, &[], &a.node_id()), Ok(()));
        let hop = Countersign::new(&s, &sig, 0, addr(4000));
        assert_eq!(
            check_chain(&sig, std::slice::from_ref(&hop), &s.node_id()),
            Ok(())
        );
        // Delivered by someone other than the last signer.
        assert_eq!(
            check_chain(&sig, std::slice::from_ref(&hop), &t.node_id()),
            Err(SignalRefusal::Forged)
        );
        // A changed observed address breaks the countersignature.
        let mut bad = hop.clone();
        bad.observed = addr(4001);
        assert_eq!(
            check_chain(&sig, &[bad], &s.node_id()),
            Err(SignalRefusal::Forged)
        );
        // Claiming to be someone else breaks the signal's signature.
        let mut forged = sig.clone();
        forged.from = s.node_id();
        assert_eq!(
            check_chain(&forged, &[], &s.node_id()),
            Err(SignalRefusal::Forged)
        );
        // Garbage signature bytes are refused, not a panic.
        let mut short = sig;
        short.sig.truncate(3);
        assert_eq!(
            check_chain(&short, &[], &a.node_id()),
            Err(SignalRefusal::Forged)
        );
    }

    #[test]
    fn replay_cache_accepts_once_and_refuses_stale() {
        let a = key(1);
        let mut cache = ReplayCache::new(30_000, 4);
        let now = Time::from_millis(100_000);
        let fresh = Signal::new(&a, key(3).node_id(), 1, 100_000, NatType::Cone);
        assert_eq!(cache.check_and_insert(now, &fresh), Ok(()));
        assert_eq!(
            cache.check_and_insert(now, &fresh),
            Err(SignalRefusal::Replayed)
        );
        let stale = Signal::new(&a, key(3).node_id(), 2, 60_000, NatType::Cone);
        assert_eq!(
            cache.check_and_insert(now, &stale),
            Err(SignalRefusal::Replayed)
        );
        for n in 10..20 {
            let s = Signal::new(&a, key(3).node_id(), n, 100_000, NatType::Cone);
            assert_eq!(cache.check_and_insert(now, &s), Ok(()));
        }
        assert_eq!(cache.len(), 4);
    }

    #[test]
    fn rate_limiter_allows_burst_then_refills() {
        let mut rl = RateLimiter::new(20, 10.0, 8);
        let src = key(1).node_id();
        let t0 = Time::from_millis(1_000);
        let allowed = (0..30).filter(|_| rl.allow(t0, src)).count();
        assert_eq!(allowed, 20);
        // 10/s: after 500 ms, five more.
        let t1 = t0 + std::time::Duration::from_millis(500);
        let allowed = (0..30).filter(|_| rl.allow(t1, src)).count();
        assert_eq!(allowed, 5);
        // Another source is not affected.
        assert!(rl.allow(t1, key(2).node_id()));
    }

    #[test]
    fn strategy_follows_theory() {
        use NatType::*;
        assert_eq!(strategy(Symmetric, Symmetric), Strategy::Relay);
        assert_eq!(
            strategy(Symmetric, Cone),
            Strategy::Punch {
                birthday: Some(BirthdayRole::Hard)
            }
        );
        assert_eq!(
            strategy(Cone, Symmetric),
            Strategy::Punch {
                birthday: Some(BirthdayRole::Easy)
            }
        );
        assert_eq!(
            strategy(Public, Symmetric),
            Strategy::Punch { birthday: None }
        );
        assert_eq!(strategy(Cone, Cone), Strategy::Punch { birthday: None });
        assert_eq!(strategy(Unknown, Cone), Strategy::Punch { birthday: None });
    }
}
