//! Key-value sync in the node: the replica, local writes, the periodic session with one
//! connected peer, and answering other nodes' sessions.
//!
//! Syncing only uses connections that are up: it never dials. The peer is the lower-RTT one
//! of two connected peers drawn at random (power of two choices: near peers are preferred
//! without every node piling onto the same one). One session runs at a time; each request
//! it answers costs the responder a fresh encoding, so peers are rate-limited.

use std::collections::HashMap;
use std::time::Duration;

use rand::RngExt;

use crate::id::NodeId;
use crate::kv::set::KvSet;
use crate::kv::sync::{
    KvRequest, KvResponse, MergeCounts, Step, SyncOutcome, SyncSession, respond,
};
use crate::kv::tuple::{Tuple, TupleRefusal};
use crate::time::Time;
use crate::wire::{ErrorCode, Request, Response};

use super::{Event, Failure, Node, OpId, Origin, Output, Purpose, TaskKind, TaskOutcome, Timer};

/// Sessions this node runs at once as initiator.
const MAX_SESSIONS: usize = 1;

/// The node's key-value state.
#[derive(Debug)]
pub(super) struct Kv {
    pub(super) set: KvSet,
    /// Our sessions, by the operation that runs them. Boxed: a map keeps room for a few
    /// entries once used, and a session is half a kilobyte, so every node would hold
    /// kilobytes of empty slots between sessions.
    sessions: HashMap<OpId, (NodeId, Box<SyncSession>)>,
}

impl Kv {
    pub(super) fn new(network: &str, max_tuples: usize) -> Kv {
        Kv {
            set: KvSet::new(network, max_tuples),
            sessions: HashMap::new(),
        }
    }

    pub(super) fn runs(&self, op: OpId) -> bool {
        self.sessions.contains_key(&op)
    }
}

fn wire_len<T: serde::Serialize>(msg: &T) -> usize {
    postcard::experimental::serialized_size(msg).unwrap_or(0)
}

impl Node {
    /// The key-value replica.
    pub fn kv(&self) -> &KvSet {
        &self.kv.set
    }

    /// Writes `key` = `value` as this node, one version above what the key holds, and asks
    /// the shell to store it.
    pub fn kv_write(&mut self, key: &str, value: &str) -> Result<Tuple, TupleRefusal> {
        let t = self.kv.set.write(&self.cfg.key, key, value)?;
        self.outputs.push_back(Output::StoreTuple(t.clone()));
        Ok(t)
    }

    /// Puts back tuples read from storage; ones that do not check are dropped and counted.
    /// Call before [`Node::start`].
    pub fn restore_kv(&mut self, tuples: Vec<Tuple>) {
        let mut rejected = Vec::new();
        for t in tuples {
            if let Err(r) = self.kv.set.merge(t) {
                rejected.push(r);
            }
        }
        if !rejected.is_empty() {
            self.emit(Event::KvMerged {
                changed: 0,
                conflicts: 0,
                rejected,
            });
        }
    }

    pub(super) fn schedule_kv_sync(&mut self, now: Time) {
        let ms = self.cfg.kv_sync_interval_ms;
        if ms == 0 {
            return;
        }
        let jitter = self.rng.random_range(0.8..1.2);
        let wait = Duration::from_secs_f64(ms as f64 / 1000.0 * jitter);
        self.set_timer(now + wait, Timer::KvSync);
    }

    /// The lower-RTT of two connected peers drawn at random.
    fn kv_peer(&mut self) -> Option<NodeId> {
        // Drawn by position in the ordered connections, as from a list of them, without
        // building the list on every round.
        let me = self.cfg.id;
        let len = self.conns.len() - usize::from(self.conns.contains_key(&me));
        if len == 0 {
            return None;
        }
        let (i, j) = (self.rng.random_range(0..len), self.rng.random_range(0..len));
        let nth = |n: usize| self.conns.keys().copied().filter(|p| *p != me).nth(n);
        let (a, b) = (nth(i)?, nth(j)?);
        let rtt = |p: &NodeId| {
            self.table
                .get(p)
                .and_then(|c| c.srtt_us)
                .unwrap_or(u64::MAX)
        };
        Some(if rtt(&b) < rtt(&a) { b } else { a })
    }

    pub(super) fn run_kv_sync(&mut self, now: Time) {
        self.schedule_kv_sync(now);
        if self.tasks_paused
            || !self.joined
            || self.kv.sessions.len() >= MAX_SESSIONS
            || self.pending.len() >= self.cfg.max_inflight
        {
            return;
        }
        let Some(peer) = self.kv_peer() else {
            return;
        };
        let op = self.new_op(now, Origin::Task(TaskKind::KvSync));
        let (session, req) = SyncSession::start(&self.kv.set, self.cfg.kv_sync.clone());
        self.kv.sessions.insert(op, (peer, Box::new(session)));
        self.kv_send(now, op, peer, req);
    }

    fn kv_send(&mut self, now: Time, op: OpId, peer: NodeId, req: KvRequest) {
        self.emit(Event::KvTraffic {
            sent: wire_len(&req),
            received: 0,
            symbols: 0,
        });
        let addrs = self.addrs_of(&peer);
        self.send_request(now, peer, addrs, Request::Kv(req), Purpose::Op(op));
    }

    fn kv_merged(&mut self, counts: MergeCounts) {
        if counts.changed.is_empty() && counts.conflicts == 0 && counts.rejected.is_empty() {
            return;
        }
        let changed = counts.changed.len();
        for t in counts.changed {
            self.outputs.push_back(Output::StoreTuple(t));
        }
        self.emit(Event::KvMerged {
            changed,
            conflicts: counts.conflicts,
            rejected: counts.rejected,
        });
    }

    /// The peer answered a request of our session `op`.
    pub(super) fn kv_answer(&mut self, now: Time, op: OpId, result: Result<Response, Failure>) {
        let Some((peer, mut session)) = self.kv.sessions.remove(&op) else {
            return;
        };
        let started = self.ops.get(&op).map_or(now, |o| o.started);
        let mut failure = None;
        let step = match result {
            Ok(Response::Kv(resp)) => {
                let symbols = match &resp {
                    KvResponse::Symbols { symbols, .. } => symbols.len(),
                    KvResponse::Tuples { .. } => 0,
                };
                self.emit(Event::KvTraffic {
                    sent: 0,
                    received: wire_len(&resp),
                    symbols,
                });
                let step = session.on_response(&mut self.kv.set, resp);
                let merged = session.take_merged();
                self.kv_merged(merged);
                step
            }
            Ok(_) => Step::Done(session.abort(SyncOutcome::Protocol)),
            Err(f) => {
                failure = Some(f);
                Step::Done(session.abort(SyncOutcome::Failed))
            }
        };
        match step {
            Step::Send(req) => {
                self.kv.sessions.insert(op, (peer, session));
                self.kv_send(now, op, peer, req);
            }
            Step::Done(report) => {
                let outcome = match (report.outcome, failure) {
                    (SyncOutcome::InSync | SyncOutcome::Reconciled, _) => TaskOutcome::Ok,
                    (_, Some(f)) => TaskOutcome::Failed(f),
                    _ => TaskOutcome::Failed(Failure::Protocol),
                };
                self.emit(Event::KvSync {
                    report,
                    elapsed: now.since(started),
                });
                self.finish_op(now, op, outcome, None, Vec::new());
            }
        }
    }

    /// `from` asks a step of its session.
    pub(super) fn on_kv(&mut self, now: Time, from: NodeId, req: KvRequest) -> Response {
        if !self.kv_limiter.allow(now, from) {
            return Response::Error {
                code: ErrorCode::RateLimited,
            };
        }
        let received = wire_len(&req);
        let (resp, counts) = respond(&mut self.kv.set, req, &self.cfg.kv_sync);
        self.kv_merged(counts);
        let symbols = match &resp {
            KvResponse::Symbols { symbols, .. } => symbols.len(),
            KvResponse::Tuples { .. } => 0,
        };
        self.emit(Event::KvTraffic {
            sent: wire_len(&resp),
            received,
            symbols,
        });
        Response::Kv(resp)
    }
}
