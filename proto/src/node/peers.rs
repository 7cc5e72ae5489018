//! What the node learns about peers: contacts observed and persisted, successes and
//! failures, evictions, the addresses peers see us at, and which connections to keep.

use std::net::SocketAddr;
use std::time::Duration;

use crate::graph::{Contact, GraphChange, Observed};
use crate::id::NodeId;
use crate::reach::ConnMode;
use crate::time::Time;
use crate::wire::MAX_ADDRS_PER_PEER;

use super::{Event, Failure, Node, NodeEvent, Output};

/// Observed addresses remembered, most recent first.
const MAX_OBSERVED: usize = 16;

impl Node {
    pub(super) fn addrs_of(&self, peer: &NodeId) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = self.direct_remote(peer).into_iter().collect();
        if let Some(c) = self.table.get(peer) {
            for a in &c.addrs {
                if !addrs.contains(a) {
                    addrs.push(*a);
                }
            }
        }
        addrs
    }

    /// The peer's address on a live connection that is not relayed.
    pub(super) fn direct_remote(&self, peer: &NodeId) -> Option<SocketAddr> {
        self.conns
            .get(peer)
            .filter(|c| c.mode != ConnMode::Relayed)
            .map(|c| c.remote)
    }

    /// Where this node believes it can be reached, for signals: the most recently observed
    /// mapped (non-listen) address first, then the other observed ones, then the listen
    /// addresses.
    pub(super) fn self_addrs(&self) -> Vec<SocketAddr> {
        let observed = self.observed_addrs();
        let mut out: Vec<SocketAddr> = Vec::new();
        let mapped = observed
            .iter()
            .filter(|a| !self.cfg.listen_addrs.contains(a));
        for a in mapped.chain(self.cfg.listen_addrs.iter()) {
            if !out.contains(a) && out.len() < MAX_ADDRS_PER_PEER {
                out.push(*a);
            }
        }
        out
    }

    pub(super) fn observe_contact(&mut self, now: Time, contact: Contact, persist: bool) {
        let id = contact.id;
        match self.table.observe(contact, now) {
            Observed::Inserted => {
                self.emit(Event::ContactAdded);
                self.persist(now, id, true);
            }
            Observed::Updated => {
                if persist {
                    self.persist(now, id, false);
                }
            }
            Observed::Pending => self.emit(Event::ContactPending),
            Observed::SelfId => {}
        }
    }

    /// Persists `id`'s bucket entry; counter-only updates are rate-limited.
    pub(super) fn persist(&mut self, now: Time, id: NodeId, force: bool) {
        let interval = Duration::from_millis(self.cfg.persist_interval_ms);
        if !force
            && let Some(last) = self.table.persisted_at(&id)
            && now.since(last) < interval
        {
            return;
        }
        if let Some(c) = self.table.mark_persisted(&id, now) {
            self.outputs
                .push_back(Output::Persist(GraphChange::Upsert(c.clone())));
        }
    }

    pub(super) fn note_success(&mut self, now: Time, peer: NodeId, rtt: Duration) {
        self.consecutive_failures.remove(&peer);
        self.emit(Event::Rtt { rtt });
        if let Some(c) = self.table.get_mut(&peer) {
            c.successes = c.successes.saturating_add(1);
            c.note_rtt(rtt);
            c.last_seen = now;
            self.persist(now, peer, false);
        }
    }

    pub(super) fn note_failure(&mut self, now: Time, peer: NodeId, failure: Failure) {
        self.emit(Event::RequestFailed { failure });
        let n = self.consecutive_failures.entry(peer).or_insert(0);
        *n = n.saturating_add(1);
        let n = *n;
        let stale_after = Duration::from_millis(self.cfg.stale_after_ms);
        let mut evict = false;
        if let Some(c) = self.table.get_mut(&peer) {
            c.failures = c.failures.saturating_add(1);
            evict = n >= self.cfg.max_consecutive_failures && now.since(c.last_seen) >= stale_after;
        }
        if evict {
            self.evict(now, peer);
        }
    }

    pub(super) fn evict(&mut self, now: Time, peer: NodeId) {
        let (removed, promoted) = self.table.evict(&peer);
        if removed.is_some() {
            self.emit(Event::ContactEvicted);
            self.consecutive_failures.remove(&peer);
            self.outputs
                .push_back(Output::Persist(GraphChange::Remove(peer)));
        }
        if let Some(p) = promoted {
            self.emit(Event::ContactAdded);
            self.persist(now, p.id, true);
        }
    }

    pub(super) fn note_observed(&mut self, observer: NodeId, addr: SocketAddr) {
        self.observed.retain(|(_, o)| *o != observer);
        self.observed.push_front((addr, observer));
        self.observed.truncate(MAX_OBSERVED);
    }

    /// Keeps at most `max_connections`, closing the lowest-scoring idle ones.
    pub(super) fn prune_connections(&mut self, now: Time, keep: NodeId) {
        while self.conns.len() > self.cfg.max_connections {
            // The lowest score, ties to the lowest id. Scores are cheap and `busy` is a hash
            // lookup, so only a peer that would beat the current worst is checked for being
            // busy. Connections are walked in id order, so a tie never replaces the worst.
            let mut worst: Option<(NodeId, f64)> = None;
            for p in self.conns.keys() {
                if *p == keep {
                    continue;
                }
                let score = self.table.get(p).map_or(0.0, |c| c.score(now));
                if worst.is_some_and(|(_, w)| score.total_cmp(&w).is_ge()) {
                    continue;
                }
                if !self.busy.contains_key(p) {
                    worst = Some((*p, score));
                }
            }
            let Some((peer, _)) = worst else { break };
            if let Some(c) = self.conns.remove(&peer) {
                self.emit(Event::Node(NodeEvent::PeerDisconnected {
                    peer,
                    mode: c.mode,
                }));
            }
            self.emit(Event::ConnectionPruned);
            self.outputs.push_back(Output::Disconnect { peer });
        }
    }
}
