//! Iterative Kademlia lookups: α queries in flight over the k closest candidates, hop
//! counting, and noting who holds a live connection to the target (for signalling).

use std::net::SocketAddr;

use crate::graph::BUCKETS;
use crate::id::NodeId;
use crate::time::Time;
use crate::wire::{Request, Response};

use super::connect::MAX_SIGNALLERS;
use super::{
    Activity, ActivityKind, Event, Failure, LookupId, Node, OpId, Origin, Purpose, TaskOutcome,
};

#[derive(Clone, Copy, Debug)]
pub(super) enum LookupPurpose {
    Op(OpId),
    Bootstrap,
    Refresh,
    ConnectTarget { op: OpId },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CandState {
    New,
    InFlight,
    Done,
    Failed,
}

#[derive(Clone, Debug)]
struct Cand {
    id: NodeId,
    addrs: Vec<SocketAddr>,
    state: CandState,
    hop: u32,
}

#[derive(Clone, Debug)]
pub(super) struct Lookup {
    target: NodeId,
    started: Time,
    purpose: LookupPurpose,
    cands: Vec<Cand>,
    inflight: usize,
    found: Option<Vec<SocketAddr>>,
    queried: u32,
    /// Responders that hold a live connection to the target.
    holders: Vec<(NodeId, Vec<SocketAddr>)>,
}

/// Most candidates a lookup tracks; bounds its memory whatever peers answer.
const MAX_LOOKUP_CANDIDATES: usize = 128;

impl Node {
    pub(super) fn start_lookup(&mut self, now: Time, target: NodeId, purpose: LookupPurpose) {
        let cands: Vec<Cand> = self
            .table
            .closest_refs(&target, self.cfg.k)
            .into_iter()
            .map(|c| Cand {
                id: c.id,
                addrs: self.addrs_of(&c.id),
                state: CandState::New,
                hop: 0,
            })
            .collect();
        let found = cands
            .iter()
            .find(|c| c.id == target)
            .map(|c| c.addrs.clone());
        let id = self.fresh_id();
        let (parent, label) = match purpose {
            LookupPurpose::Op(_) => (None, "task"),
            LookupPurpose::Bootstrap => (None, "bootstrap"),
            LookupPurpose::Refresh => (None, "refresh"),
            LookupPurpose::ConnectTarget { op } => (Some(Activity::Connect(op)), "connect"),
        };
        self.emit(Event::ActivityStarted {
            activity: Activity::Lookup(id),
            parent,
            kind: ActivityKind::Lookup {
                target,
                purpose: label,
            },
        });
        self.lookups.insert(
            id,
            Lookup {
                target,
                started: now,
                purpose,
                cands,
                inflight: 0,
                found,
                queried: 0,
                holders: Vec::new(),
            },
        );
        self.lookup_step(now, id);
    }

    fn lookup_step(&mut self, now: Time, id: LookupId) {
        let k = self.cfg.k;
        let alpha = self.cfg.alpha;
        let mut to_send: Vec<(NodeId, Vec<SocketAddr>)> = Vec::new();
        let done;
        {
            let Some(l) = self.lookups.get_mut(&id) else {
                return;
            };
            let mut considered = 0usize;
            for c in l.cands.iter_mut() {
                if c.state == CandState::Failed {
                    continue;
                }
                considered += 1;
                if considered > k {
                    break;
                }
                if c.state == CandState::New && l.inflight < alpha {
                    c.state = CandState::InFlight;
                    l.inflight += 1;
                    l.queried += 1;
                    to_send.push((c.id, c.addrs.clone()));
                }
            }
            done = l.inflight == 0;
        }
        for (peer, addrs) in to_send {
            let target = self
                .lookups
                .get(&id)
                .map(|l| l.target)
                .unwrap_or(self.cfg.id);
            self.send_request(
                now,
                peer,
                addrs,
                Request::FindNode { target },
                Purpose::Lookup(id),
            );
        }
        if done {
            self.finish_lookup(now, id);
        }
    }

    pub(super) fn lookup_answer(
        &mut self,
        now: Time,
        id: LookupId,
        from: NodeId,
        result: Result<Response, Failure>,
    ) {
        let me = self.cfg.id;
        // The node has joined once a peer answered its bootstrap lookup: it then knows live
        // peers and is known to them. The rest of the lookup only fills buckets, and may wait
        // on peers behind NATs, so it must not hold `joined` back.
        let bootstrap_answered = result.is_ok()
            && matches!(
                self.lookups.get(&id).map(|l| l.purpose),
                Some(LookupPurpose::Bootstrap)
            );
        if bootstrap_answered {
            self.mark_joined();
        }
        {
            let Some(l) = self.lookups.get_mut(&id) else {
                return;
            };
            let target = l.target;
            l.inflight = l.inflight.saturating_sub(1);
            let Some(pos) = l.cands.iter().position(|c| c.id == from) else {
                return;
            };
            let hop = l.cands[pos].hop;
            match result {
                Ok(Response::Nodes { peers }) => {
                    l.cands[pos].state = CandState::Done;
                    if from == target {
                        l.found = Some(l.cands[pos].addrs.clone());
                    }
                    for p in peers {
                        if p.id == me || p.addrs.is_empty() {
                            continue;
                        }
                        // The target itself may have answered over a relayed connection,
                        // which gives no address: a peer's addresses for it still count.
                        if p.id == target && l.found.as_ref().is_none_or(|f| f.is_empty()) {
                            l.found = Some(p.addrs.clone());
                        }
                        if p.id == target
                            && p.live
                            && l.holders.len() < MAX_SIGNALLERS
                            && !l.holders.iter().any(|(h, _)| *h == from)
                        {
                            l.holders.push((from, l.cands[pos].addrs.clone()));
                        }
                        if l.cands.iter().any(|c| c.id == p.id) {
                            continue;
                        }
                        l.cands.push(Cand {
                            id: p.id,
                            addrs: p.addrs,
                            state: CandState::New,
                            hop: hop + 1,
                        });
                    }
                    l.cands.sort_by_cached_key(|c| c.id.distance(&target));
                    // Drop the farthest candidates that are not in flight, keeping memory bounded.
                    while l.cands.len() > MAX_LOOKUP_CANDIDATES {
                        match l.cands.iter().rposition(|c| c.state != CandState::InFlight) {
                            Some(i) => {
                                l.cands.remove(i);
                            }
                            None => break,
                        }
                    }
                }
                _ => l.cands[pos].state = CandState::Failed,
            }
        }
        // A connect's lookup is done once it knows where the target is and two nodes that
        // hold a live connection to it (a second one in case the first one's connection
        // just died): waiting for the rest (often NATed nodes that cannot be dialed) would
        // only delay signalling.
        let early = self.lookups.get(&id).is_some_and(|l| {
            matches!(l.purpose, LookupPurpose::ConnectTarget { .. })
                && l.found.as_ref().is_some_and(|f| !f.is_empty())
                && l.holders.len() >= 2
        });
        if early {
            self.finish_lookup(now, id);
            return;
        }
        self.lookup_step(now, id);
    }

    fn finish_lookup(&mut self, now: Time, id: LookupId) {
        let Some(l) = self.lookups.remove(&id) else {
            return;
        };
        let done: Vec<&Cand> = l
            .cands
            .iter()
            .filter(|c| c.state == CandState::Done)
            .collect();
        let hops = done
            .iter()
            .take(self.cfg.k)
            .map(|c| c.hop + 1)
            .max()
            .unwrap_or(0);
        let closest: Vec<NodeId> = done.iter().take(self.cfg.k).map(|c| c.id).collect();
        let found = l.found.is_some();
        self.emit(Event::ActivityEnded {
            activity: Activity::Lookup(id),
            outcome: if found { "found" } else { "not_found" },
            mode: None,
        });
        self.emit(Event::LookupFinished {
            found,
            hops,
            queried: l.queried,
            elapsed: now.since(l.started),
        });
        match l.purpose {
            LookupPurpose::Op(op) => {
                let is_task = matches!(self.ops.get(&op).map(|o| o.origin), Some(Origin::Task(_)));
                // A random-id task lookup succeeds when peers answered; a command must find its target.
                let outcome = if is_task {
                    if closest.is_empty() {
                        TaskOutcome::Failed(Failure::Unreachable)
                    } else {
                        TaskOutcome::Ok
                    }
                } else if found {
                    TaskOutcome::Ok
                } else {
                    TaskOutcome::NotFound
                };
                self.finish_op(now, op, outcome, None, closest);
            }
            LookupPurpose::Bootstrap => {
                if self.table.is_empty() {
                    self.retry_bootstrap(now);
                } else {
                    self.mark_joined();
                    // Fill the far buckets now rather than after the first refresh period.
                    if let Some(low) = self.table.lowest_nonempty() {
                        for b in (low + 1..BUCKETS).rev().take(4) {
                            let target = self.cfg.id.random_in_bucket(b, &mut self.rng);
                            self.start_lookup(now, target, LookupPurpose::Refresh);
                        }
                    }
                }
            }
            LookupPurpose::Refresh => {}
            LookupPurpose::ConnectTarget { op } => {
                let responders: Vec<(NodeId, Vec<SocketAddr>)> = l
                    .cands
                    .iter()
                    .filter(|c| c.state == CandState::Done && c.id != l.target)
                    .map(|c| (c.id, c.addrs.clone()))
                    .collect();
                self.connect_looked_up(now, op, l.found, l.holders, responders, closest);
            }
        }
    }
}
