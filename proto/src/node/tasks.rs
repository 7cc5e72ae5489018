//! Operations (tasks and commands) and the autonomous task loop: Poisson arrivals,
//! weighted task choice, pings, echoes and how an operation ends.

use std::time::Duration;

use rand::{Rng, RngExt};

use crate::id::NodeId;
use crate::reach::ConnMode;
use crate::time::Time;
use crate::wire::{MAX_ECHO_LEN, Request, Response};

use super::lookup::LookupPurpose;
use super::{
    Activity, CommandResult, Event, Failure, Node, OpId, Origin, Purpose, TaskKind, TaskOutcome,
    Timer,
};

impl Node {
    pub(super) fn start_ping(&mut self, now: Time, op: OpId, peer: NodeId) {
        let addrs = self.addrs_of(&peer);
        if addrs.is_empty() {
            self.finish_op(
                now,
                op,
                TaskOutcome::Failed(Failure::Unreachable),
                None,
                Vec::new(),
            );
            return;
        }
        let nonce = self.rng.next_u64();
        self.send_request(now, peer, addrs, Request::Ping { nonce }, Purpose::Op(op));
    }

    pub(super) fn start_echo(&mut self, now: Time, op: OpId, peer: NodeId, len: usize) {
        let addrs = self.addrs_of(&peer);
        if addrs.is_empty() {
            self.finish_op(
                now,
                op,
                TaskOutcome::Failed(Failure::Unreachable),
                None,
                Vec::new(),
            );
            return;
        }
        let mut payload = vec![0u8; len.min(MAX_ECHO_LEN)];
        self.rng.fill_bytes(&mut payload);
        if let Some(o) = self.ops.get_mut(&op) {
            o.echo = Some(payload.clone());
        }
        self.send_request(now, peer, addrs, Request::Echo { payload }, Purpose::Op(op));
    }

    pub(super) fn op_answer(&mut self, now: Time, op: OpId, result: Result<Response, Failure>) {
        if self.kv.runs(op) {
            self.kv_answer(now, op, result);
            return;
        }
        if let Some(then) = self.ops.get(&op).and_then(|o| o.then) {
            self.claim_answer(now, op, then, result);
            return;
        }
        let expected = self.ops.get(&op).and_then(|o| o.echo.clone());
        let outcome = match (result, expected) {
            (Ok(Response::Pong { .. }), None) => TaskOutcome::Ok,
            (Ok(Response::Echo { payload }), Some(sent)) if payload == sent => TaskOutcome::Ok,
            (Ok(_), _) => TaskOutcome::Failed(Failure::Protocol),
            (Err(f), _) => TaskOutcome::Failed(f),
        };
        self.finish_op(now, op, outcome, None, Vec::new());
    }

    pub(super) fn finish_op(
        &mut self,
        now: Time,
        op: OpId,
        outcome: TaskOutcome,
        mode: Option<ConnMode>,
        closest: Vec<NodeId>,
    ) {
        let Some(o) = self.ops.remove(&op) else {
            return;
        };
        let elapsed = now.since(o.started);
        if o.conn.is_some() {
            self.emit(Event::ActivityEnded {
                activity: Activity::Connect(op),
                outcome: outcome.as_str(),
                mode,
            });
        }
        let (attempts, relay, birthday_probes) = match o.conn {
            Some(c) => (c.attempts, c.relay, c.birthday_probes),
            None => (Vec::new(), None, None),
        };
        let claims = o.claims;
        match o.origin {
            Origin::Upgrade => {
                if let (TaskOutcome::Ok, Some(to)) = (outcome, mode)
                    && to != ConnMode::Relayed
                {
                    self.emit(Event::Upgraded { to });
                }
            }
            Origin::Task(kind) => self.emit(Event::TaskFinished {
                kind,
                outcome,
                elapsed,
            }),
            Origin::Command(id) => self.emit(Event::CommandFinished {
                id,
                result: CommandResult {
                    outcome,
                    elapsed,
                    mode,
                    closest,
                    attempts,
                    relay,
                    birthday_probes,
                    claims,
                },
            }),
        }
    }

    pub(super) fn schedule_task(&mut self, now: Time) {
        let rate = self.cfg.task_rate_per_s;
        if !(rate > 0.0 && rate.is_finite()) {
            return;
        }
        // Exponential inter-arrival times make the task stream a Poisson process.
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        let secs = (-u.ln() / rate).min(3600.0);
        self.set_timer(now + Duration::from_secs_f64(secs), Timer::Task);
    }

    pub(super) fn run_task(&mut self, now: Time) {
        self.schedule_task(now);
        if self.tasks_paused || !self.joined {
            return;
        }
        let w = self.cfg.task_weights;
        let total = u64::from(w.ping)
            + u64::from(w.lookup)
            + u64::from(w.connect)
            + u64::from(w.echo)
            + u64::from(w.claim);
        if total == 0 {
            return;
        }
        let mut pick = self.rng.random_range(0..total);
        let mut kind = TaskKind::Echo;
        for (k, weight) in [
            (TaskKind::Ping, w.ping),
            (TaskKind::Lookup, w.lookup),
            (TaskKind::Connect, w.connect),
            (TaskKind::Echo, w.echo),
            (TaskKind::Claim, w.claim),
        ] {
            if pick < u64::from(weight) {
                kind = k;
                break;
            }
            pick -= u64::from(weight);
        }
        let op = self.new_op(now, Origin::Task(kind));
        if self.pending.len() >= self.cfg.max_inflight
            || (kind == TaskKind::Lookup && self.lookups.len() >= self.cfg.max_lookups)
        {
            self.finish_op(now, op, TaskOutcome::Skipped, None, Vec::new());
            return;
        }
        if kind == TaskKind::Lookup {
            let target = NodeId(std::array::from_fn(|_| self.rng.random()));
            self.start_lookup(now, target, LookupPurpose::Op(op));
            return;
        }
        let n = self.table.len();
        if n == 0 {
            self.finish_op(now, op, TaskOutcome::NoPeers, None, Vec::new());
            return;
        }
        let idx = self.rng.random_range(0..n);
        let Some(peer) = self.table.iter().nth(idx).map(|c| c.id) else {
            return;
        };
        match kind {
            TaskKind::Ping => self.start_ping(now, op, peer),
            TaskKind::Connect => self.start_connect(now, op, peer, false),
            TaskKind::Echo => self.start_echo(now, op, peer, self.cfg.echo_bytes),
            TaskKind::Claim => self.start_claim(now, op, peer, super::claims::Then::Claim),
            TaskKind::Lookup | TaskKind::KvSync => {}
        }
    }
}
