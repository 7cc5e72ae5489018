//! The Kademlia node graph: 256 buckets by XOR distance, k contacts each, plus a bounded
//! pending list per bucket for newcomers that arrive while the bucket is full.
//!
//! This module is pure bookkeeping. It decides nothing about the network: who to ping, when
//! to evict and when to refresh are decided by [`crate::node::Node`], which calls in here.
//! Persistence is the shell's job; it receives every change as a [`GraphChange`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::reach::{ConnMode, NatType};
use crate::time::Time;
use crate::wire::{MAX_ADDRS_PER_PEER, PeerInfo};

/// Number of buckets: one per bit of the id.
pub const BUCKETS: usize = 256;

/// Everything the node knows about one peer. This is also the persisted record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    /// The peer.
    pub id: NodeId,
    /// Up to [`MAX_ADDRS_PER_PEER`] addresses, most recently confirmed first.
    pub addrs: Vec<SocketAddr>,
    /// How we last connected to it.
    pub mode: ConnMode,
    /// The NAT type it advertised.
    pub nat: NatType,
    /// When it first answered us.
    pub first_seen: Time,
    /// When it last answered us or connected to us.
    pub last_seen: Time,
    /// Smoothed round-trip time in microseconds (RFC 6298 style, alpha 1/8), if measured.
    pub srtt_us: Option<u64>,
    /// Requests it answered.
    pub successes: u32,
    /// Requests to it that failed or timed out.
    pub failures: u32,
}

impl Contact {
    /// A contact first seen now at `addr`.
    pub fn new(id: NodeId, addr: Option<SocketAddr>, now: Time) -> Contact {
        Contact {
            id,
            addrs: addr.into_iter().collect(),
            mode: ConnMode::Direct,
            nat: NatType::Unknown,
            first_seen: now,
            last_seen: now,
            srtt_us: None,
            successes: 0,
            failures: 0,
        }
    }

    /// Puts `addr` first, keeping at most [`MAX_ADDRS_PER_PEER`] distinct addresses.
    pub fn note_addr(&mut self, addr: SocketAddr) {
        self.addrs.retain(|a| *a != addr);
        self.addrs.insert(0, addr);
        self.addrs.truncate(MAX_ADDRS_PER_PEER);
    }

    /// Folds in an RTT sample.
    pub fn note_rtt(&mut self, rtt: Duration) {
        let sample = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        self.srtt_us = Some(match self.srtt_us {
            None => sample,
            Some(s) => (s * 7 + sample) / 8,
        });
    }

    /// Fraction of requests it answered, with a neutral prior so a newcomer is not perfect.
    pub fn reliability(&self) -> f64 {
        (f64::from(self.successes) + 1.0)
            / (f64::from(self.successes) + f64::from(self.failures) + 2.0)
    }

    /// Peer-choice score: higher is better. Prefers low RTT, high reliability and long
    /// uptime (time since first seen, saturating at one hour).
    pub fn score(&self, now: Time) -> f64 {
        let rtt_ms = self.srtt_us.map_or(100.0, |us| us as f64 / 1000.0);
        let uptime_h = now.since(self.first_seen).as_secs_f64().min(3600.0) / 3600.0;
        self.reliability() * (0.5 + 0.5 * uptime_h) / (1.0 + rtt_ms / 50.0)
    }

    /// The wire form of this contact.
    pub fn to_peer_info(&self) -> PeerInfo {
        PeerInfo {
            id: self.id,
            addrs: self.addrs.clone(),
            mode: self.mode,
            nat: self.nat,
            live: false,
        }
    }
}

/// A change to the persisted graph, for the shell to write.
#[derive(Clone, Debug, PartialEq)]
pub enum GraphChange {
    /// Insert or replace this contact.
    Upsert(Contact),
    /// Forget this peer.
    Remove(NodeId),
}

/// What [`RoutingTable::observe`] did with a contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// Added to a bucket with room.
    Inserted,
    /// Already in its bucket; refreshed.
    Updated,
    /// Its bucket is full: parked in the pending list.
    Pending,
    /// It is ourselves; ignored.
    SelfId,
}

#[derive(Clone, Debug, Default)]
struct Bucket {
    entries: Vec<Contact>,
    /// `tag` of each entry's id, in the same order: a lookup scans these 8-byte words
    /// rather than a 104-byte contact per entry, which in a large world is a cache miss
    /// each.
    tags: Vec<u64>,
    /// When each entry was last handed to the shell to persist, in the same order: the
    /// node rate-limits those writes per contact, and a map beside the table would cost
    /// several times this.
    persisted: Vec<Option<Time>>,
    pending: VecDeque<Contact>,
    last_activity: Time,
}

/// The last 8 bytes of an id: the first ones are shared with our own id in the low
/// buckets, the last ones differ between any two ids but by a 2^-64 chance (and a match is
/// checked against the whole id).
fn tag(id: &NodeId) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&id.0[24..]);
    u64::from_ne_bytes(w)
}

impl Bucket {
    fn position(&self, id: &NodeId) -> Option<usize> {
        let t = tag(id);
        self.tags
            .iter()
            .enumerate()
            .filter(|(_, x)| **x == t)
            .map(|(i, _)| i)
            .find(|&i| self.entries[i].id == *id)
    }

    fn push(&mut self, c: Contact, k: usize) {
        reserve_bounded(&mut self.entries, k);
        reserve_bounded(&mut self.tags, k);
        reserve_bounded(&mut self.persisted, k);
        self.tags.push(tag(&c.id));
        self.persisted.push(None);
        self.entries.push(c);
    }

    fn swap_remove(&mut self, pos: usize) -> Contact {
        self.tags.swap_remove(pos);
        self.persisted.swap_remove(pos);
        self.entries.swap_remove(pos)
    }
}

/// The routing table. Bounded: at most `k` contacts and `pending_cap` pending per bucket.
#[derive(Clone, Debug)]
pub struct RoutingTable {
    me: NodeId,
    k: usize,
    pending_cap: usize,
    /// Bucket `BUCKETS - 1 - i` at index `i`, only down to the lowest bucket ever used: with
    /// uniform ids a table of n peers only uses the top log2(n) or so, and 256 empty buckets
    /// would cost 16 KiB per node.
    buckets: Vec<Bucket>,
}

impl RoutingTable {
    /// An empty table around `me`.
    pub fn new(me: NodeId, k: usize, pending_cap: usize) -> RoutingTable {
        RoutingTable {
            me,
            k,
            pending_cap,
            buckets: Vec::new(),
        }
    }

    fn bucket(&self, b: usize) -> Option<&Bucket> {
        self.buckets.get(BUCKETS.checked_sub(b + 1)?)
    }

    fn bucket_mut(&mut self, b: usize) -> &mut Bucket {
        let i = BUCKETS - 1 - b.min(BUCKETS - 1);
        if self.buckets.len() <= i {
            self.buckets.resize_with(i + 1, Bucket::default);
        }
        &mut self.buckets[i]
    }

    /// Our own id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Records that `contact.id` answered or connected at `now`. Existing entries keep their
    /// history; the new address goes first.
    pub fn observe(&mut self, contact: Contact, now: Time) -> Observed {
        let Some(b) = self.me.bucket_of(&contact.id) else {
            return Observed::SelfId;
        };
        let k = self.k;
        let cap = self.pending_cap;
        let bucket = self.bucket_mut(b);
        bucket.last_activity = now;
        if let Some(existing) = bucket.position(&contact.id).map(|i| &mut bucket.entries[i]) {
            merge(existing, &contact);
            existing.last_seen = now;
            return Observed::Updated;
        }
        if bucket.entries.len() < k {
            let mut c = contact;
            c.last_seen = now;
            bucket.push(c, k);
            return Observed::Inserted;
        }
        if let Some(p) = bucket.pending.iter_mut().find(|c| c.id == contact.id) {
            merge(p, &contact);
            p.last_seen = now;
        } else {
            if bucket.pending.len() >= cap {
                bucket.pending.pop_front();
            } else if bucket.pending.len() == bucket.pending.capacity() {
                // Doubling would overshoot the bound (10 would take 16 slots).
                let want = (bucket.pending.len() * 2).max(4).min(cap);
                bucket.pending.reserve_exact(want - bucket.pending.len());
            }
            let mut c = contact;
            c.last_seen = now;
            bucket.pending.push_back(c);
        }
        Observed::Pending
    }

    /// Mutable access to a contact in a bucket (not the pending list).
    pub fn get_mut(&mut self, id: &NodeId) -> Option<&mut Contact> {
        let b = self.me.bucket_of(id)?;
        let bucket = self.buckets.get_mut(BUCKETS - 1 - b)?;
        let i = bucket.position(id)?;
        Some(&mut bucket.entries[i])
    }

    /// A contact in a bucket (not the pending list).
    pub fn get(&self, id: &NodeId) -> Option<&Contact> {
        let b = self.me.bucket_of(id)?;
        let bucket = self.bucket(b)?;
        Some(&bucket.entries[bucket.position(id)?])
    }

    /// When `id`'s entry was last marked with [`RoutingTable::mark_persisted`] (never
    /// since it entered its bucket: `None`).
    pub(crate) fn persisted_at(&self, id: &NodeId) -> Option<Time> {
        let bucket = self.bucket(self.me.bucket_of(id)?)?;
        bucket.persisted[bucket.position(id)?]
    }

    /// Notes that `id`'s entry is being persisted at `now`; returns it.
    pub(crate) fn mark_persisted(&mut self, id: &NodeId, now: Time) -> Option<&Contact> {
        let b = self.me.bucket_of(id)?;
        let bucket = self.buckets.get_mut(BUCKETS - 1 - b)?;
        let i = bucket.position(id)?;
        bucket.persisted[i] = Some(now);
        Some(&bucket.entries[i])
    }

    /// Removes `id` from its bucket and promotes the most recently seen pending contact into
    /// the freed slot. Returns the removed contact and the promoted one.
    pub fn evict(&mut self, id: &NodeId) -> (Option<Contact>, Option<Contact>) {
        let Some(b) = self.me.bucket_of(id) else {
            return (None, None);
        };
        let k = self.k;
        let Some(bucket) = self.buckets.get_mut(BUCKETS - 1 - b) else {
            return (None, None);
        };
        let Some(pos) = bucket.position(id) else {
            bucket.pending.retain(|c| c.id != *id);
            return (None, None);
        };
        let removed = bucket.swap_remove(pos);
        let promoted = bucket.pending.pop_back();
        if let Some(p) = &promoted {
            bucket.push(p.clone(), k);
        }
        (Some(removed), promoted)
    }

    /// The `n` contacts of bucket `b` seen longest ago.
    pub fn oldest(&self, b: usize, n: usize) -> Vec<NodeId> {
        let Some(bucket) = self.bucket(b) else {
            return Vec::new();
        };
        let mut entries: Vec<&Contact> = bucket.entries.iter().collect();
        entries.sort_by_key(|c| c.last_seen);
        entries.into_iter().take(n).map(|c| c.id).collect()
    }

    /// Buckets that have contacts waiting in their pending list.
    pub fn buckets_with_pending(&self) -> Vec<usize> {
        (0..BUCKETS)
            .filter(|&b| self.bucket(b).is_some_and(|x| !x.pending.is_empty()))
            .collect()
    }

    /// Number of pending contacts in all buckets.
    pub fn pending_len(&self) -> usize {
        self.buckets.iter().map(|b| b.pending.len()).sum()
    }

    /// The `n` known contacts closest to `target`, nearest first.
    pub fn closest(&self, target: &NodeId, n: usize) -> Vec<Contact> {
        self.closest_refs(target, n).into_iter().cloned().collect()
    }

    /// [`RoutingTable::closest`] without cloning the contacts.
    ///
    /// Every bucket holds one contiguous range of distances to `target` and the ranges do
    /// not overlap, so visiting buckets in the order of their ranges and sorting each one
    /// yields contacts in global distance order: the walk stops at the bucket that brings
    /// the count to `n` instead of ranking the whole table. Ids are unique, so distances
    /// are too, and the result is exactly the `n` smallest.
    pub fn closest_refs(&self, target: &NodeId, n: usize) -> Vec<&Contact> {
        if n == 0 {
            return Vec::new();
        }
        let mut found: Vec<(DistanceKey, &Contact)> = Vec::with_capacity(n + self.k);
        for b in bucket_order(&self.me, target) {
            let Some(bucket) = self.bucket(b) else {
                continue;
            };
            if bucket.entries.is_empty() {
                continue;
            }
            let start = found.len();
            found.extend(
                bucket
                    .entries
                    .iter()
                    .map(|c| (DistanceKey::new(&c.id, target), c)),
            );
            found[start..].sort_unstable_by_key(|x| x.0);
            if found.len() >= n {
                break;
            }
        }
        found.truncate(n);
        found.into_iter().map(|(_, c)| c).collect()
    }

    /// Every contact in the buckets.
    pub fn iter(&self) -> impl Iterator<Item = &Contact> {
        self.buckets.iter().rev().flat_map(|b| b.entries.iter())
    }

    /// Number of contacts in the buckets.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.entries.len()).sum()
    }

    /// True when no bucket holds a contact.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Contacts per bucket, indexed by bucket.
    pub fn fill(&self) -> Vec<usize> {
        (0..BUCKETS)
            .map(|b| self.bucket(b).map_or(0, |x| x.entries.len()))
            .collect()
    }

    /// When bucket `b` last saw activity.
    pub fn last_activity(&self, b: usize) -> Time {
        self.bucket(b).map_or(Time::ZERO, |x| x.last_activity)
    }

    /// Marks bucket `b` as active now (after a refresh lookup).
    pub fn touch(&mut self, b: usize, now: Time) {
        self.bucket_mut(b).last_activity = now;
    }

    /// Index of the highest non-empty bucket, if any.
    pub fn highest_nonempty(&self) -> Option<usize> {
        (0..BUCKETS)
            .rev()
            .find(|&b| self.bucket(b).is_some_and(|x| !x.entries.is_empty()))
    }

    /// Index of the lowest non-empty bucket, if any: our nearest neighbours live there.
    pub fn lowest_nonempty(&self) -> Option<usize> {
        (0..BUCKETS).find(|&b| self.bucket(b).is_some_and(|x| !x.entries.is_empty()))
    }
}

/// Grows `v` towards `bound` without doubling past it: a full bucket of 20 would otherwise
/// hold room for 32.
fn reserve_bounded<T>(v: &mut Vec<T>, bound: usize) {
    if v.len() == v.capacity() && v.len() < bound {
        let want = (v.len() * 2).max(4).min(bound);
        v.reserve_exact(want - v.len());
    }
}

/// A XOR distance as four big-endian words: ordered like the 32-byte distance, compared
/// without a call to `memcmp`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct DistanceKey([u64; 4]);

impl DistanceKey {
    fn new(a: &NodeId, b: &NodeId) -> DistanceKey {
        let d = a.distance(b);
        DistanceKey(std::array::from_fn(|i| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&d[i * 8..i * 8 + 8]);
            u64::from_be_bytes(w)
        }))
    }
}

/// Buckets in increasing order of their distance range to `target`. With `d` the distance
/// from us to `target` and `t` its top bit (the target's bucket): bucket `t` holds every
/// distance below 2^t; a lower bucket `b` shares `d`'s bits above `b` and flips bit `b`, so
/// those where `d` has bit `b` set come next, highest first, then those where it is clear,
/// lowest first; a higher bucket `b` holds distances in [2^b, 2^(b+1)), lowest first.
fn bucket_order(me: &NodeId, target: &NodeId) -> impl Iterator<Item = usize> {
    let d = me.distance(target);
    let bit = move |b: usize| d[31 - b / 8] >> (b % 8) & 1 == 1;
    let top = me.bucket_of(target);
    let below = top.unwrap_or(0);
    let own = top.into_iter();
    let set = (0..below).rev().filter(move |&b| bit(b));
    let clear = (0..below).filter(move |&b| !bit(b));
    let above = top.map_or(0, |t| t + 1)..BUCKETS;
    own.chain(set).chain(clear).chain(above)
}

fn merge(existing: &mut Contact, new: &Contact) {
    for addr in new.addrs.iter().rev() {
        existing.note_addr(*addr);
    }
    existing.mode = new.mode;
    if new.nat != NatType::Unknown {
        existing.nat = new.nat;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_in_bucket(me: &NodeId, b: usize, salt: u8) -> NodeId {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(
            u64::from(salt) << 16 | b as u64,
        );
        me.random_in_bucket(b, &mut rng)
    }

    #[test]
    fn full_bucket_parks_newcomers_and_eviction_promotes_them() {
        let me = NodeId([0; 32]);
        let mut t = RoutingTable::new(me, 2, 2);
        let a = id_in_bucket(&me, 200, 1);
        let b = id_in_bucket(&me, 200, 2);
        let c = id_in_bucket(&me, 200, 3);
        assert_eq!(
            t.observe(Contact::new(a, None, Time(1)), Time(1)),
            Observed::Inserted
        );
        assert_eq!(
            t.observe(Contact::new(b, None, Time(2)), Time(2)),
            Observed::Inserted
        );
        assert_eq!(
            t.observe(Contact::new(c, None, Time(3)), Time(3)),
            Observed::Pending
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t.buckets_with_pending(), vec![200]);
        assert_eq!(t.oldest(200, 1), vec![a]);
        let (removed, promoted) = t.evict(&a);
        assert_eq!(removed.map(|c| c.id), Some(a));
        assert_eq!(promoted.map(|c| c.id), Some(c));
        assert!(t.get(&c).is_some());
        assert_eq!(t.pending_len(), 0);
    }

    #[test]
    fn persist_marks_follow_their_entry() {
        let me = NodeId([0; 32]);
        let mut t = RoutingTable::new(me, 2, 2);
        let (a, b) = (id_in_bucket(&me, 200, 1), id_in_bucket(&me, 200, 2));
        for id in [a, b] {
            t.observe(Contact::new(id, None, Time(0)), Time(0));
        }
        assert_eq!(t.persisted_at(&a), None);
        assert!(t.mark_persisted(&a, Time(5)).is_some());
        assert!(t.mark_persisted(&b, Time(7)).is_some());
        // The swap in eviction moves b's mark with it.
        t.evict(&a);
        assert_eq!(t.persisted_at(&b), Some(Time(7)));
        t.observe(Contact::new(a, None, Time(9)), Time(9));
        assert_eq!(t.persisted_at(&a), None, "a new entry was never persisted");
        assert!(
            t.mark_persisted(&id_in_bucket(&me, 10, 3), Time(1))
                .is_none()
        );
    }

    #[test]
    fn pending_list_is_bounded() {
        let me = NodeId([0; 32]);
        let mut t = RoutingTable::new(me, 1, 3);
        for salt in 0..10 {
            t.observe(
                Contact::new(id_in_bucket(&me, 100, salt), None, Time(0)),
                Time(0),
            );
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.pending_len(), 3);
    }

    #[test]
    fn addresses_are_bounded_and_most_recent_first() {
        let mut c = Contact::new(NodeId([1; 32]), None, Time(0));
        for port in 1..=8u16 {
            c.note_addr(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        assert_eq!(c.addrs.len(), MAX_ADDRS_PER_PEER);
        assert_eq!(c.addrs[0].port(), 8);
        c.note_addr(SocketAddr::from(([127, 0, 0, 1], 5)));
        assert_eq!(c.addrs[0].port(), 5);
        assert_eq!(c.addrs.len(), MAX_ADDRS_PER_PEER);
    }

    #[test]
    fn closest_orders_by_xor_distance() {
        let me = NodeId([0; 32]);
        let mut t = RoutingTable::new(me, 20, 5);
        let ids: Vec<NodeId> = (0..50u8).map(|i| NodeId([i; 32])).collect();
        for id in &ids {
            t.observe(Contact::new(*id, None, Time(0)), Time(0));
        }
        let target = NodeId([3; 32]);
        let got: Vec<NodeId> = t.closest(&target, 3).into_iter().map(|c| c.id).collect();
        assert_eq!(got[0], target);
        for w in got.windows(2) {
            assert!(w[0].distance(&target) <= w[1].distance(&target));
        }
    }

    #[test]
    fn closest_matches_ranking_the_whole_table() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..40u8 {
            let me = NodeId(std::array::from_fn(|_| rng.random()));
            let mut t = RoutingTable::new(me, 4, 2);
            let mut ids = Vec::new();
            for i in 0..300 {
                // Near ids too (low buckets), not only the far half a uniform draw gives.
                let id = if i % 3 == 0 {
                    me.random_in_bucket(rng.random_range(0..BUCKETS), &mut rng)
                } else {
                    NodeId(std::array::from_fn(|_| rng.random()))
                };
                t.observe(Contact::new(id, None, Time(0)), Time(0));
                ids.push(id);
            }
            let mut targets: Vec<NodeId> = vec![me, ids[round as usize]];
            targets.extend((0..10).map(|_| NodeId(std::array::from_fn(|_| rng.random()))));
            targets.extend(
                (0..10).map(|_| me.random_in_bucket(rng.random_range(0..BUCKETS), &mut rng)),
            );
            for target in targets {
                for n in [0, 1, 3, 20, 22, 1000] {
                    let mut all: Vec<NodeId> = t.iter().map(|c| c.id).collect();
                    all.sort_by_key(|id| id.distance(&target));
                    all.truncate(n);
                    let got: Vec<NodeId> =
                        t.closest(&target, n).into_iter().map(|c| c.id).collect();
                    assert_eq!(got, all, "round {round} n {n}");
                }
            }
        }
    }

    #[test]
    fn buckets_do_not_grow_past_their_bounds() {
        let me = NodeId([0; 32]);
        let mut t = RoutingTable::new(me, 20, 10);
        for salt in 0..40 {
            t.observe(
                Contact::new(id_in_bucket(&me, 255, salt), None, Time(0)),
                Time(0),
            );
        }
        let b = t.bucket(255).expect("used");
        assert_eq!((b.entries.len(), b.entries.capacity()), (20, 20));
        assert_eq!((b.pending.len(), b.pending.capacity()), (10, 10));
        assert_eq!(t.fill()[255], 20);
        assert_eq!(t.last_activity(3), Time::ZERO);
        assert_eq!(t.lowest_nonempty(), Some(255));
    }

    #[test]
    fn score_prefers_fast_reliable_peers() {
        let now = Time::from_millis(3_600_000);
        let mut fast = Contact::new(NodeId([1; 32]), None, Time(0));
        fast.note_rtt(Duration::from_millis(5));
        fast.successes = 10;
        let mut slow = fast.clone();
        slow.srtt_us = Some(300_000);
        let mut flaky = fast.clone();
        flaky.failures = 30;
        assert!(fast.score(now) > slow.score(now));
        assert!(fast.score(now) > flaky.score(now));
    }
}
