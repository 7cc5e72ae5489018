//! The connect strategy of the dialing side: a plain dial, then a signalled hole punch,
//! then a relay; the lookup a connect needs, and upgrades of relayed connections.

use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;

use crate::id::NodeId;
use crate::reach::{ConnMode, NatType};
use crate::signal::{self, Signal, Strategy};
use crate::time::Time;
use crate::wire::{Request, Response};

use super::lookup::LookupPurpose;
use super::{
    Activity, ActivityKind, Attempt, Connected, Event, Failure, Node, OpId, Origin, Output, Path,
    Pending, PunchPlan, Purpose, RequestId, SignalOutcome, TaskOutcome, Timer,
};

/// Where a connect operation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    Direct,
    Signal,
    Punch,
    Relay,
}

#[derive(Clone, Debug)]
pub(super) struct ConnectState {
    pub(super) peer: NodeId,
    pub(super) fresh: bool,
    pub(super) stage: Stage,
    pub(super) stage_started: Time,
    pub(super) attempts: Vec<Attempt>,
    pub(super) looked_up: bool,
    /// Go straight to signalling (an upgrade: plain dials are known to fail).
    pub(super) skip_direct: bool,
    /// Nodes to ask to carry our signal, best first.
    pub(super) signallers: Vec<(NodeId, Vec<SocketAddr>)>,
    pub(super) next_signaller: usize,
    /// The node that holds a live connection to the peer (relay candidate).
    pub(super) via: Option<NodeId>,
    pub(super) my_nat: NatType,
    /// The NAT type the peer advertised: its contact's at the start, then its signal
    /// answer's. Only labels the attempts' metrics.
    pub(super) peer_nat: NatType,
    pub(super) token: u64,
    pub(super) relay: Option<NodeId>,
    pub(super) birthday_probes: Option<u32>,
}

/// Signallers tried per connect.
pub(super) const MAX_SIGNALLERS: usize = 3;

/// Extra time the core gives the shell beyond a path's own timeout before declaring it dead.
const SHELL_SLACK: Duration = Duration::from_secs(2);

impl Node {
    pub(super) fn start_connect(&mut self, now: Time, op: OpId, peer: NodeId, fresh: bool) {
        self.start_connect_with(now, op, peer, fresh, false);
    }

    fn start_connect_with(
        &mut self,
        now: Time,
        op: OpId,
        peer: NodeId,
        fresh: bool,
        skip_direct: bool,
    ) {
        if peer == self.cfg.id {
            self.finish_op(
                now,
                op,
                TaskOutcome::Failed(Failure::Unreachable),
                None,
                Vec::new(),
            );
            return;
        }
        if !fresh && let Some(c) = self.conns.get(&peer) {
            let mode = c.mode;
            self.finish_op(now, op, TaskOutcome::Ok, Some(mode), Vec::new());
            return;
        }
        let state = ConnectState {
            peer,
            fresh,
            stage: Stage::Direct,
            stage_started: now,
            attempts: Vec::new(),
            looked_up: false,
            skip_direct,
            signallers: Vec::new(),
            next_signaller: 0,
            via: None,
            my_nat: self.nat_type(),
            peer_nat: self.advertised_nat(&peer),
            token: self.rng.next_u64(),
            relay: None,
            birthday_probes: None,
        };
        self.attach_connect(op, state);
        let addrs = self.addrs_of(&peer);
        if addrs.is_empty() || skip_direct {
            self.start_lookup(now, peer, LookupPurpose::ConnectTarget { op });
        } else {
            let t = self.direct_timeout(&peer);
            self.emit_connect(now, op, peer, addrs, Path::Direct, t);
        }
    }

    /// Makes `op` a connect: from here on it is traced as a connect activity, which
    /// [`Node::finish_op`] ends.
    fn attach_connect(&mut self, op: OpId, state: ConnectState) {
        let peer = state.peer;
        if let Some(o) = self.ops.get_mut(&op) {
            o.conn = Some(state);
            self.emit(Event::ActivityStarted {
                activity: Activity::Connect(op),
                parent: None,
                kind: ActivityKind::Connect { peer },
            });
        }
    }

    /// The NAT type `peer` advertised, as its contact records it (`Unknown` if none).
    fn advertised_nat(&self, peer: &NodeId) -> NatType {
        self.table.get(peer).map_or(NatType::Unknown, |c| c.nat)
    }

    /// How long to give a plain dial to `peer`, by the NAT type it reported.
    fn direct_timeout(&self, peer: &NodeId) -> u64 {
        // A full cone takes a plain dial from anywhere, like a public node: give it the
        // whole timeout, so it is reached directly, without signalling.
        match self.table.get(peer).map(|c| c.nat) {
            Some(nat) if nat.is_nated() && !nat.is_open() => self.cfg.direct_timeout_nated_ms,
            _ => self.cfg.direct_timeout_ms,
        }
    }

    fn emit_connect(
        &mut self,
        now: Time,
        op: OpId,
        peer: NodeId,
        addrs: Vec<SocketAddr>,
        path: Path,
        timeout_ms: u64,
    ) {
        let id = RequestId(self.fresh_id());
        let fresh = self
            .ops
            .get(&op)
            .and_then(|o| o.conn.as_ref())
            .is_none_or(|c| c.fresh);
        self.track(
            id,
            Pending {
                peer,
                sent: now,
                purpose: Purpose::Connect(op),
            },
        );
        self.set_timer(
            now + Duration::from_millis(timeout_ms) + SHELL_SLACK,
            Timer::Deadline(id),
        );
        self.outputs.push_back(Output::Connect {
            id,
            peer,
            addrs,
            fresh,
            path,
            timeout_ms,
            parent: Some(Activity::Connect(op)),
        });
    }

    /// The lookup a connect needed is done.
    pub(super) fn connect_looked_up(
        &mut self,
        now: Time,
        op: OpId,
        found: Option<Vec<SocketAddr>>,
        holders: Vec<(NodeId, Vec<SocketAddr>)>,
        responders: Vec<(NodeId, Vec<SocketAddr>)>,
        closest: Vec<NodeId>,
    ) {
        let Some(cs) = self.ops.get_mut(&op).and_then(|o| o.conn.as_mut()) else {
            return;
        };
        cs.looked_up = true;
        let peer = cs.peer;
        let mut signallers = holders;
        for r in responders {
            if signallers.len() >= MAX_SIGNALLERS {
                break;
            }
            if !signallers.iter().any(|(id, _)| *id == r.0) {
                signallers.push(r);
            }
        }
        cs.signallers = signallers;
        let tried_direct = cs.skip_direct || !cs.attempts.is_empty();
        let found = found.filter(|a| !a.is_empty());
        // Nobody knows the peer: no one could carry a signal to it either.
        if found.is_none() {
            self.finish_op(now, op, TaskOutcome::NotFound, None, closest);
            return;
        }
        match found {
            Some(addrs) if !tried_direct => {
                let t = self.direct_timeout(&peer);
                self.emit_connect(now, op, peer, addrs, Path::Direct, t);
            }
            _ => self.enter_signal(now, op),
        }
    }

    pub(super) fn connect_succeeded(&mut self, now: Time, op: OpId, c: Connected) {
        // A relayed connect whose punch failed may have failed on a transient: try once more
        // later. When no punch was even tried (both sides symmetric), upgrading is pointless.
        if c.mode == ConnMode::Relayed
            && self.cfg.upgrade_after_ms > 0
            && let Some(cs) = self.ops.get(&op).and_then(|o| o.conn.as_ref())
            && cs.attempts.iter().any(|a| a.path == ConnMode::Punched)
        {
            let at = now + Duration::from_millis(self.cfg.upgrade_after_ms);
            self.set_timer(at, Timer::Upgrade(cs.peer));
        }
        // A claim or a fetch connected first; now it sends its request.
        if let Some(o) = self.ops.get(&op)
            && let (Some(then), Some(peer)) = (o.then, o.peer)
        {
            self.claim_connected(now, op, peer, then);
            return;
        }
        self.finish_op(now, op, TaskOutcome::Ok, Some(c.mode), Vec::new());
    }

    pub(super) fn connect_failed(&mut self, now: Time, op: OpId, f: Failure) {
        let Some(cs) = self.ops.get(&op).and_then(|o| o.conn.as_ref()) else {
            self.finish_op(now, op, TaskOutcome::Failed(f), None, Vec::new());
            return;
        };
        match cs.stage {
            Stage::Direct | Stage::Signal => {
                if cs.looked_up {
                    self.enter_signal(now, op);
                } else {
                    let peer = cs.peer;
                    self.start_lookup(now, peer, LookupPurpose::ConnectTarget { op });
                }
            }
            Stage::Punch => self.enter_relay(now, op, f),
            Stage::Relay => self.finish_op(now, op, TaskOutcome::Failed(f), None, Vec::new()),
        }
    }

    /// Asks the next signaller to carry our signal to the peer.
    fn enter_signal(&mut self, now: Time, op: OpId) {
        let key = self.cfg.key.clone();
        let self_addrs = self.self_addrs();
        let Some(cs) = self.ops.get_mut(&op).and_then(|o| o.conn.as_mut()) else {
            return;
        };
        let last_failure = cs
            .attempts
            .last()
            .and_then(|a| a.failure)
            .unwrap_or(Failure::Unreachable);
        let Some((signaller, addrs)) = cs.signallers.get(cs.next_signaller).cloned() else {
            self.finish_op(now, op, TaskOutcome::Failed(last_failure), None, Vec::new());
            return;
        };
        cs.next_signaller += 1;
        cs.stage = Stage::Signal;
        cs.stage_started = now;
        let signal = Signal::with_addrs(
            &key,
            cs.peer,
            cs.token,
            Self::now_ms(now),
            cs.my_nat,
            self_addrs,
        );
        self.emit(Event::Signal {
            outcome: SignalOutcome::Sent,
        });
        self.send_request(
            now,
            signaller,
            addrs,
            Request::Signal {
                signal,
                hops: Vec::new(),
                trace: None,
            },
            Purpose::Signal(op),
        );
    }

    /// A signaller answered (or failed to).
    pub(super) fn signal_answer(&mut self, now: Time, op: OpId, result: Result<Response, Failure>) {
        let (target_nat, target_addr, target_addrs, via) = match result {
            Ok(Response::SignalAnswer {
                target_nat,
                target_addr,
                target_addrs,
                via,
            }) => (target_nat, target_addr, target_addrs, via),
            _ => {
                // Try the next signaller, or give up.
                self.enter_signal(now, op);
                return;
            }
        };
        let (peer, my_nat, token) = {
            let Some(cs) = self.ops.get_mut(&op).and_then(|o| o.conn.as_mut()) else {
                return;
            };
            let signaller = cs
                .signallers
                .get(cs.next_signaller.saturating_sub(1))
                .map(|s| s.0);
            cs.via = via.or(signaller);
            if target_nat != NatType::Unknown {
                cs.peer_nat = target_nat;
            }
            (cs.peer, cs.my_nat, cs.token)
        };
        match signal::strategy(my_nat, target_nat) {
            Strategy::Relay => self.enter_relay(now, op, Failure::Unreachable),
            Strategy::Punch { birthday } => {
                // The target's own addresses are its claim; the last carrier's observation
                // of it is what birthday probing may aim at. A carrier that saw it at a
                // private address shares its LAN and NAT: if that carrier is the one we
                // asked, the IP we see it at is the target's public IP.
                let vouched = via
                    .and_then(|v| self.direct_remote(&v))
                    .map(|a| a.ip())
                    .filter(|_| target_addr.is_some_and(|a| !super::signalling::is_public(a.ip())));
                let claims = target_addrs.into_iter().chain(self.addrs_of(&peer));
                let (addrs, observed_first) =
                    super::signalling::punch_addrs(target_addr, vouched, claims);
                let birthday = birthday.filter(|_| observed_first);
                if let Some(cs) = self.ops.get_mut(&op).and_then(|o| o.conn.as_mut()) {
                    cs.stage = Stage::Punch;
                    cs.stage_started = now;
                }
                let plan = PunchPlan {
                    peer_addrs: addrs.clone(),
                    token,
                    birthday,
                    birthday_sockets: self.cfg.birthday_sockets,
                    birthday_probes: self.cfg.birthday_probes,
                    timeout_ms: self.cfg.punch_timeout_ms,
                };
                let t = self.cfg.punch_timeout_ms;
                self.emit_connect(now, op, peer, addrs, Path::Punch(plan), t);
            }
        }
    }

    /// Goes through the node that holds a live connection to the peer.
    fn enter_relay(&mut self, now: Time, op: OpId, f: Failure) {
        let Some(cs) = self.ops.get_mut(&op).and_then(|o| o.conn.as_mut()) else {
            return;
        };
        let Some(relay) = cs.via else {
            self.finish_op(now, op, TaskOutcome::Failed(f), None, Vec::new());
            return;
        };
        cs.stage = Stage::Relay;
        cs.stage_started = now;
        cs.relay = Some(relay);
        let peer = cs.peer;
        let relay_addrs = self.addrs_of(&relay);
        let t = self.cfg.relay_timeout_ms;
        self.emit_connect(
            now,
            op,
            peer,
            Vec::new(),
            Path::Relay { relay, relay_addrs },
            t,
        );
    }

    /// A connect that goes straight to `relay`.
    pub(super) fn start_connect_via(&mut self, now: Time, op: OpId, peer: NodeId, relay: NodeId) {
        if peer == self.cfg.id || relay == peer || relay == self.cfg.id {
            let f = TaskOutcome::Failed(Failure::Unreachable);
            self.finish_op(now, op, f, None, Vec::new());
            return;
        }
        let state = ConnectState {
            peer,
            fresh: true,
            stage: Stage::Relay,
            stage_started: now,
            attempts: Vec::new(),
            looked_up: true,
            skip_direct: true,
            signallers: Vec::new(),
            next_signaller: 0,
            via: Some(relay),
            my_nat: self.nat_type(),
            peer_nat: self.advertised_nat(&peer),
            token: self.rng.next_u64(),
            relay: None,
            birthday_probes: None,
        };
        self.attach_connect(op, state);
        self.enter_relay(now, op, Failure::Unreachable);
    }

    /// Tries once to replace a relayed connection to `peer` with a punched one.
    pub(super) fn try_upgrade(&mut self, now: Time, peer: NodeId) {
        if self
            .conns
            .get(&peer)
            .is_none_or(|c| c.mode != ConnMode::Relayed)
        {
            return;
        }
        let op = self.new_op(now, Origin::Upgrade);
        self.start_connect_with(now, op, peer, true, true);
    }

    fn now_ms(now: Time) -> u64 {
        now.as_millis()
    }
}
