//! The node state machine: bootstrap, iterative lookups, peer exchange, GC of the node
//! graph, bucket refresh, peer choice and the autonomous task loop.
//!
//! [`Node`] is sans-io. It does not dial, send, sleep or read a clock: it is told what
//! happened (`handle_*`) and says what to do ([`Node::poll_output`], [`Node::poll_timeout`]).
//! Global behaviour lives here; per-connection I/O (streams, TLS, framing) lives in the shell.
//!
//! This file holds the contract: the state, the `handle_*` inputs, the `poll_*` outputs and
//! the request bookkeeping. Each sub-machine has a file of its own: `bootstrap`, `lookup`,
//! `tasks` (operations and the task loop), `gc` (GC and bucket refresh), `connect` (the
//! dialer's strategy), `signalling` (carrying and accepting signals), `relay` (circuit
//! admission), `peers` (what the node learns about its contacts) and `kv` (key-value sync
//! sessions). `config` and `types` hold the public types.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};

use crate::graph::{BUCKETS, Contact, RoutingTable};
use crate::id::NodeId;
use crate::reach::{ConnMode, Filtering, NatType};
use crate::signal::{RateLimiter, ReplayCache};
use crate::time::Time;
use crate::wire::{
    ErrorCode, MAX_ADDRS_PER_PEER, MAX_NODES_PER_RESPONSE, PeerInfo, Request, Response,
};

mod bootstrap;
mod claims;
mod config;
mod connect;
mod dialback;
mod gc;
mod kv;
mod lookup;
mod peers;
mod relay;
mod signalling;
mod tasks;
#[cfg(test)]
mod tests;
mod types;

pub use config::{NodeConfig, PunchLimits, RelayLimits, TaskWeights};
use connect::{ConnectState, Stage};
use lookup::{Lookup, LookupPurpose};
use signalling::Forward;
pub use types::{
    Activity, ActivityKind, Attempt, ClaimOutcome, Command, CommandId, CommandResult, ConnInfo,
    Connected, Event, Failure, InboundId, LinkImpairment, NodeEvent, Output, Path, PunchPlan,
    RelayEvent, RequestId, SignalOutcome, TaskKind, TaskOutcome,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Deadline(RequestId),
    Task,
    Gc,
    Refresh,
    Bootstrap,
    Upgrade(NodeId),
    /// Start a dial-back round (one armed at a time).
    DialBack,
    /// The wait of the dial-back round with this token is over.
    DialBackWait(u64),
    /// A served dial-back still without its hello gives up.
    DialBackHello(u64),
    /// Time for a key-value sync round.
    KvSync,
}

#[derive(Clone, Copy, Debug)]
enum Origin {
    Task(TaskKind),
    Command(CommandId),
    /// An attempt to replace a relayed connection with a punched one.
    Upgrade,
}

#[derive(Clone, Debug)]
struct Op {
    origin: Origin,
    started: Time,
    echo: Option<Vec<u8>>,
    conn: Option<ConnectState>,
    /// For claims and fetches: what to do once connected, to whom, and what came back.
    then: Option<claims::Then>,
    peer: Option<NodeId>,
    claims: Vec<crate::claim::Claim>,
}

type OpId = u64;

type LookupId = u64;

#[derive(Clone, Copy, Debug)]
enum Purpose {
    Lookup(LookupId),
    Bootstrap,
    Gc,
    Introduce,
    Verify,
    Op(OpId),
    Connect(OpId),
    Signal(OpId),
    Forward(u64),
    /// Our dial-back round with this token.
    DialBack(u64),
    /// A dial-back we carry to a helper.
    DialBackVia(u64),
}

#[derive(Clone, Debug)]
struct Pending {
    peer: NodeId,
    sent: Time,
    purpose: Purpose,
}

/// Output slots kept once the queue is drained.
const OUTPUTS_KEPT: usize = 16;

/// Sources the signal rate limiter tracks.
const RATE_LIMIT_SOURCES: usize = 1024;

/// Signal nonces remembered against replay.
const REPLAY_CAPACITY: usize = 4096;

/// The protocol core of one agent.
///
/// # Driving contract
///
/// 1. Create it with [`Node::new`], passing contacts restored from storage, then call
///    [`Node::start`] once.
/// 2. After **every** `handle_*`, [`Node::command`] or [`Node::start`] call, drain
///    [`Node::poll_output`] until it returns `None`, carrying out each [`Output`].
/// 3. Then ask [`Node::poll_timeout`] and call [`Node::handle_timeout`] once that time has
///    come (earlier or repeated calls are harmless no-ops). Drain outputs again.
///
/// Every input takes `now`, which must never go backwards. Every random choice comes from
/// an rng seeded with [`NodeConfig::rng_seed`], so the same inputs give the same outputs.
/// Each input produces a bounded number of outputs; the output queue is bounded by that
/// and by draining it.
#[derive(Debug)]
pub struct Node {
    cfg: NodeConfig,
    rng: StdRng,
    table: RoutingTable,
    /// Ordered, so that whatever walks the connections (peer choice, the next hop of a
    /// signal, a shell listing them) sees them in the same order in every run.
    conns: BTreeMap<NodeId, ConnInfo>,
    outputs: VecDeque<Output>,
    timers: BTreeSet<(Time, Timer)>,
    next_id: u64,
    pending: HashMap<RequestId, Pending>,
    /// Requests in flight per peer, kept alongside `pending` so peer choice can skip busy
    /// peers without scanning every request.
    busy: HashMap<NodeId, u32>,
    ops: HashMap<OpId, Op>,
    lookups: HashMap<LookupId, Lookup>,
    gc_probing: HashSet<NodeId>,
    consecutive_failures: HashMap<NodeId, u32>,
    next_refresh: Vec<Time>,
    observed: VecDeque<(SocketAddr, NodeId)>,
    joined: bool,
    started: bool,
    bootstrapping: bool,
    bootstrap_backoff: Duration,
    tasks_paused: bool,
    forwards: HashMap<u64, Forward>,
    forward_keys: HashMap<(NodeId, NodeId), u64>,
    limiter: RateLimiter,
    /// Probe budgets of punches for others, per requester and per destination IP.
    punch_requesters: RateLimiter,
    punch_ips: RateLimiter<IpAddr>,
    replays: ReplayCache,
    circuits: HashMap<NodeId, u32>,
    circuits_total: u32,
    dialback: dialback::DialBack,
    dialback_limiter: RateLimiter,
    dialback_global: RateLimiter,
    impairment: LinkImpairment,
    claims: claims::Claims,
    kv: kv::Kv,
    kv_limiter: RateLimiter,
}

impl Node {
    /// A node with `restored` contacts from storage (oldest state first is fine).
    pub fn new(cfg: NodeConfig, restored: Vec<Contact>) -> Node {
        let rng = StdRng::seed_from_u64(cfg.rng_seed);
        let mut table = RoutingTable::new(cfg.id, cfg.k, cfg.pending_per_bucket);
        for c in restored {
            let seen = c.last_seen;
            table.observe(c, seen);
        }
        let backoff = Duration::from_millis(cfg.bootstrap_retry_ms.max(1));
        let (cfg_burst, cfg_per_s, cfg_max_age) =
            (cfg.signal_burst, cfg.signal_per_s, cfg.signal_max_age_ms);
        let (db_burst, db_per_s) = (cfg.dialback_burst, cfg.dialback_per_s);
        let punch = cfg.punch;
        let (kv_network, kv_max_tuples) = (cfg.kv_network.clone(), cfg.kv_max_tuples);
        let (kv_burst, kv_per_s) = (cfg.kv_burst, cfg.kv_per_s);
        Node {
            cfg,
            rng,
            table,
            conns: BTreeMap::new(),
            outputs: VecDeque::new(),
            timers: BTreeSet::new(),
            next_id: 1,
            pending: HashMap::new(),
            busy: HashMap::new(),
            ops: HashMap::new(),
            lookups: HashMap::new(),
            gc_probing: HashSet::new(),
            consecutive_failures: HashMap::new(),
            next_refresh: vec![Time::ZERO; BUCKETS],
            observed: VecDeque::new(),
            joined: false,
            started: false,
            bootstrapping: false,
            bootstrap_backoff: backoff,
            tasks_paused: false,
            forwards: HashMap::new(),
            forward_keys: HashMap::new(),
            limiter: RateLimiter::new(cfg_burst, cfg_per_s, RATE_LIMIT_SOURCES),
            punch_requesters: RateLimiter::new(
                punch.per_requester_probes,
                f64::from(punch.per_requester_probes_per_s),
                RATE_LIMIT_SOURCES,
            ),
            punch_ips: RateLimiter::new(
                punch.per_ip_probes,
                f64::from(punch.per_ip_probes_per_s),
                RATE_LIMIT_SOURCES,
            ),
            replays: ReplayCache::new(cfg_max_age, REPLAY_CAPACITY),
            circuits: HashMap::new(),
            circuits_total: 0,
            dialback: dialback::DialBack::default(),
            dialback_limiter: RateLimiter::new(db_burst, db_per_s, RATE_LIMIT_SOURCES),
            dialback_global: RateLimiter::new(dialback::GLOBAL_BURST, dialback::GLOBAL_PER_S, 1),
            impairment: LinkImpairment::default(),
            claims: claims::Claims::new(),
            kv: kv::Kv::new(&kv_network, kv_max_tuples),
            kv_limiter: RateLimiter::new(kv_burst, kv_per_s, RATE_LIMIT_SOURCES),
        }
    }

    /// Starts bootstrap, GC, refresh and the task loop. Later calls do nothing.
    pub fn start(&mut self, now: Time) {
        if self.started {
            return;
        }
        self.started = true;
        for b in 0..BUCKETS {
            self.next_refresh[b] = now + self.refresh_delay();
        }
        self.set_timer(
            now + Duration::from_millis(self.cfg.gc_interval_ms.max(1)),
            Timer::Gc,
        );
        self.set_timer(now + self.refresh_check_interval(), Timer::Refresh);
        self.schedule_task(now);
        self.schedule_kv_sync(now);
        self.bootstrap(now);
    }

    // ----- read-only state -----

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Whether bootstrap has completed.
    pub fn joined(&self) -> bool {
        self.joined
    }

    /// The node graph.
    pub fn graph(&self) -> &RoutingTable {
        &self.table
    }

    /// Live connections, in id order.
    pub fn connections(&self) -> impl Iterator<Item = (&NodeId, &ConnInfo)> {
        self.conns.iter()
    }

    /// Addresses peers reported seeing us at, most recent first, deduplicated.
    pub fn observed_addrs(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for (a, _) in &self.observed {
            if !out.contains(a) {
                out.push(*a);
            }
        }
        out
    }

    /// Self-classification: the mapping from observed addresses (two distinct observers
    /// needed), then, behind an endpoint-independent mapping, the filtering a dial-back test
    /// measured (`Cone` until it has).
    pub fn nat_type(&self) -> NatType {
        match (self.mapping_type(), self.filtering()) {
            (NatType::Cone, Some(Filtering::EndpointIndependent)) => NatType::FullCone,
            (NatType::Cone, Some(Filtering::AddressDependent)) => NatType::RestrictedCone,
            (NatType::Cone, Some(Filtering::AddressPortDependent)) => NatType::PortRestrictedCone,
            (mapping, _) => mapping,
        }
    }

    /// The filtering a dial-back test measured behind the current mapping, if any.
    pub fn measured_filtering(&self) -> Option<Filtering> {
        self.filtering()
    }

    /// Whether the task loop is paused.
    pub fn tasks_paused(&self) -> bool {
        self.tasks_paused
    }

    /// Outbound requests and connects in flight.
    pub fn inflight(&self) -> usize {
        self.pending.len()
    }

    /// Circuits currently relayed through this node.
    pub fn relay_circuits(&self) -> u32 {
        self.circuits_total
    }

    /// Whether peers can reach this node without its help: it has no NAT, or a dial-back
    /// test found its NAT's filtering endpoint-independent (a full cone).
    pub fn reachable(&self) -> bool {
        self.nat_type().is_open()
    }

    // ----- inputs -----

    /// Pauses or resumes the autonomous task loop.
    pub fn set_tasks_paused(&mut self, paused: bool) {
        self.tasks_paused = paused;
    }

    /// A connection to `peer` is up (dialed by us or accepted), authenticated by the shell.
    pub fn handle_connection_up(
        &mut self,
        now: Time,
        peer: NodeId,
        remote: SocketAddr,
        mode: ConnMode,
    ) {
        if peer == self.cfg.id {
            return;
        }
        let before = self.conns.insert(
            peer,
            ConnInfo {
                mode,
                remote,
                since: now,
            },
        );
        match before {
            None => self.emit(Event::Node(NodeEvent::PeerConnected { peer, mode })),
            Some(old) if old.mode == ConnMode::Relayed && mode != ConnMode::Relayed => {
                self.emit(Event::Node(NodeEvent::ConnectionUpgraded {
                    peer,
                    from: old.mode,
                    to: mode,
                }))
            }
            Some(_) => {}
        }
        // A relayed connection's remote is a local stand-in for the circuit, not an address
        // anyone else could use.
        let addr = (mode != ConnMode::Relayed).then_some(remote);
        let mut c = Contact::new(peer, addr, now);
        c.mode = mode;
        self.observe_contact(now, c, true);
        self.prune_connections(now, peer);
    }

    /// The addresses `peer` says it listens on (from its hello). They go after the observed
    /// ones, so a peer on our own LAN can be dialed directly.
    pub fn handle_listen_addrs(&mut self, now: Time, peer: NodeId, addrs: &[SocketAddr]) {
        if let Some(c) = self.table.get_mut(&peer) {
            let before = c.addrs.clone();
            for a in addrs {
                if c.addrs.len() >= MAX_ADDRS_PER_PEER {
                    break;
                }
                if !c.addrs.contains(a) {
                    c.addrs.push(*a);
                }
            }
            if c.addrs != before {
                self.persist(now, peer, true);
            }
        }
    }

    /// A relay circuit admitted by this node (`as_relay`, for `requester`) or accepted as its
    /// target ended; frees its slot.
    pub fn handle_circuit_closed(&mut self, _now: Time, requester: NodeId, as_relay: bool) {
        if as_relay {
            if let Some(n) = self.circuits.get_mut(&requester) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.circuits.remove(&requester);
                }
            }
            self.circuits_total = self.circuits_total.saturating_sub(1);
            self.emit(Event::Node(NodeEvent::RelayCircuitClosed { requester }));
        }
        self.emit(Event::Relay {
            event: RelayEvent::Closed,
        });
    }

    /// The connection to `peer` closed.
    pub fn handle_connection_down(&mut self, _now: Time, peer: NodeId) {
        if let Some(c) = self.conns.remove(&peer) {
            self.emit(Event::Node(NodeEvent::PeerDisconnected {
                peer,
                mode: c.mode,
            }));
        }
    }

    /// A dial-back probe carrying `token` arrived from `from` on the test socket opened
    /// for [`Output::DialBackListen`].
    pub fn handle_dialback_probe(&mut self, now: Time, token: u64, from: SocketAddr) {
        self.dialback_probe(now, token, from);
    }

    /// Local discovery (mDNS) found `peer` at `addrs` on our LAN. A node not yet known is
    /// verified with a ping, which connects to it and enters it in the node graph: after
    /// that it is a contact like any other, found without any seed.
    pub fn handle_discovered(&mut self, now: Time, peer: NodeId, addrs: &[SocketAddr]) {
        if peer == self.cfg.id || addrs.is_empty() {
            return;
        }
        let known = self.table.get(&peer).is_some() || self.conns.contains_key(&peer);
        self.emit(Event::Discovered { new: !known });
        if known {
            return;
        }
        let addrs: Vec<SocketAddr> = addrs.iter().take(MAX_ADDRS_PER_PEER).copied().collect();
        let nonce = self.rng.next_u64();
        self.send_request(now, peer, addrs, Request::Ping { nonce }, Purpose::Verify);
    }

    /// A dial-back hello carrying `token` arrived on the P2P socket from `from`: the
    /// mapping of a node's test socket, as its NAT made it.
    pub fn handle_dialback_hello(&mut self, now: Time, token: u64, from: SocketAddr) {
        self.dialback_hello(now, token, from);
    }

    /// The impairment of this node's link is now `impairment` (a fault applied or healed
    /// through the control API). Subscribers are told when it changes.
    pub fn handle_impairment(&mut self, _now: Time, impairment: LinkImpairment) {
        if impairment != self.impairment {
            self.impairment = impairment;
            self.emit(Event::Node(NodeEvent::FaultObserved { impairment }));
        }
    }

    /// A peer sent a request on a connection the shell authenticated. Answer with
    /// [`Output::Respond`] under `inbound`.
    pub fn handle_request(
        &mut self,
        now: Time,
        from: NodeId,
        inbound: InboundId,
        request: Request,
    ) {
        let response = match request {
            Request::Ping { nonce } => Response::Pong {
                nonce,
                observed: self.direct_remote(&from),
                nat: self.nat_type(),
            },
            Request::FindNode { target } => {
                let max = self.cfg.k.min(MAX_NODES_PER_RESPONSE);
                let mut peers: Vec<PeerInfo> = Vec::with_capacity(max);
                // A live connection to the target is what a signaller needs: list it first,
                // even when the target sits in a full bucket's pending list.
                if target != from
                    && let Some(remote) = self.direct_remote(&target)
                {
                    let mut info = self
                        .table
                        .get(&target)
                        .map(|c| c.to_peer_info())
                        .unwrap_or_else(|| Contact::new(target, Some(remote), now).to_peer_info());
                    if !info.addrs.contains(&remote) {
                        info.addrs.insert(0, remote);
                        info.addrs.truncate(MAX_ADDRS_PER_PEER);
                    }
                    info.live = true;
                    peers.push(info);
                }
                for c in self.table.closest_refs(&target, max + 2) {
                    if peers.len() >= max {
                        break;
                    }
                    if c.id == from || peers.iter().any(|p| p.id == c.id) {
                        continue;
                    }
                    let mut info = c.to_peer_info();
                    info.live = self.direct_remote(&c.id).is_some();
                    peers.push(info);
                }
                Response::Nodes { peers }
            }
            Request::Introduce { max } => {
                let want = usize::from(max).min(MAX_NODES_PER_RESPONSE);
                let mut all: Vec<&Contact> = self.table.iter().filter(|c| c.id != from).collect();
                // Partial Fisher-Yates: the first `want` entries become a uniform sample.
                for i in 0..want.min(all.len()) {
                    let j = self.rng.random_range(i..all.len());
                    all.swap(i, j);
                }
                let peers = all
                    .into_iter()
                    .take(want)
                    .map(|c| c.to_peer_info())
                    .collect();
                Response::Nodes { peers }
            }
            Request::Echo { payload } => Response::Echo { payload },
            Request::Signal { signal, hops, .. } => {
                match self.on_signal(now, from, inbound, signal, hops) {
                    Some(r) => r,
                    None => return, // carried on; answered when the next hop answers
                }
            }
            Request::RelayOpen { target, .. } => self.on_relay_open(from, target),
            Request::DialBack { token, other_port } => {
                match self.on_dialback(now, from, inbound, token, other_port) {
                    Some(r) => r,
                    None => return, // a helper was asked; answered when it answers
                }
            }
            Request::DialBackVia { token, to } => self.on_dialback_via(now, from, token, to),
            Request::Claim { claim } => self.on_claim(now, from, claim),
            Request::GetClaims => self.on_get_claims(),
            Request::Kv(req) => self.on_kv(now, from, req),
            // A circuit reaches us only from a relay we are directly connected to: no circuits
            // over circuits. (Our own relay settings limit what we carry for others, not
            // what reaches us.)
            Request::RelayIncoming { .. } => {
                if self.direct_remote(&from).is_some() {
                    self.relay_accepted()
                } else {
                    Response::Error {
                        code: ErrorCode::Refused,
                    }
                }
            }
        };
        if let Response::Error { code } = &response {
            self.emit(Event::InboundRefused { code: *code });
        }
        self.outputs
            .push_back(Output::Respond { inbound, response });
    }

    /// The answer to the request `id`, or why there is none.
    pub fn handle_response(&mut self, now: Time, id: RequestId, result: Result<Response, Failure>) {
        let Some(p) = self.untrack(id) else {
            return; // late answer after its deadline: already handled as a timeout
        };
        if let Purpose::Forward(fid) = p.purpose {
            self.forward_answer(now, fid, p.peer, result);
            return;
        }
        let result = match result {
            Ok(Response::Error {
                code: ErrorCode::Busy,
            }) => Err(Failure::Busy),
            Ok(Response::Error { .. }) => Err(Failure::Protocol),
            other => other,
        };
        if let Ok(Response::Pong {
            observed: Some(addr),
            ..
        }) = &result
        {
            // Every pong, whatever asked for it, feeds NAT self-classification.
            self.note_observed(p.peer, *addr);
            self.note_reach(now);
        }
        if let Ok(Response::Pong { nat, .. }) = &result
            && let Some(c) = self.table.get_mut(&p.peer)
        {
            c.nat = *nat;
        }
        match &result {
            Ok(_) => self.note_success(now, p.peer, now.since(p.sent)),
            Err(f) => self.note_failure(now, p.peer, *f),
        }
        match p.purpose {
            Purpose::Lookup(l) => self.lookup_answer(now, l, p.peer, result),
            Purpose::Bootstrap => self.bootstrap_answer(now, p.peer, result.is_ok()),
            Purpose::Gc => self.gc_answer(now, p.peer, result.is_ok()),
            Purpose::Introduce => self.introduce_answer(now, result),
            Purpose::Verify => {}
            Purpose::Op(op) => self.op_answer(now, op, result),
            Purpose::Signal(op) => self.signal_answer(now, op, result),
            Purpose::DialBack(token) => self.dialback_answer(now, token, result),
            Purpose::DialBackVia(key) => self.dialback_via_answer(key, result),
            Purpose::Connect(_) | Purpose::Forward(_) => {} // reported elsewhere
        }
    }

    /// The result of [`Output::Connect`] `id`.
    pub fn handle_connect_result(
        &mut self,
        now: Time,
        id: RequestId,
        result: Result<Connected, Failure>,
    ) {
        let Some(p) = self.untrack(id) else { return };
        let Purpose::Connect(op) = p.purpose else {
            return;
        };
        let elapsed = now.since(p.sent);
        let path = self
            .ops
            .get(&op)
            .and_then(|o| o.conn.as_ref())
            .map(|c| match c.stage {
                Stage::Relay => ConnMode::Relayed,
                Stage::Punch => ConnMode::Punched,
                Stage::Direct | Stage::Signal => ConnMode::Direct,
            });
        let path = path.unwrap_or(ConnMode::Direct);
        let failure = result.as_ref().err().copied();
        let peer_nat = self
            .ops
            .get(&op)
            .and_then(|o| o.conn.as_ref())
            .map_or(NatType::Unknown, |c| c.peer_nat);
        self.emit(Event::ConnectAttempt {
            path,
            failure,
            elapsed,
            peer_nat,
        });
        if let Some(cs) = self.ops.get_mut(&op).and_then(|o| o.conn.as_mut()) {
            cs.attempts.push(Attempt {
                path,
                failure,
                elapsed,
            });
            if let Ok(c) = &result
                && c.birthday_probes.is_some()
            {
                cs.birthday_probes = c.birthday_probes;
            }
        }
        match result {
            Ok(c) => {
                self.note_success(now, p.peer, elapsed);
                self.connect_succeeded(now, op, c);
            }
            Err(f) => {
                // A failed punch or relay says nothing about the peer's liveness: its other
                // connections may be fine. Only plain dials count against it.
                if path == ConnMode::Direct {
                    self.note_failure(now, p.peer, f);
                }
                self.connect_failed(now, op, f);
            }
        }
    }

    /// Starts a command; its end is reported as [`Event::CommandFinished`] with this id.
    pub fn command(&mut self, now: Time, command: Command) -> CommandId {
        let id = CommandId(self.fresh_id());
        let op = self.new_op(now, Origin::Command(id));
        match command {
            Command::Connect { peer, fresh } => self.start_connect(now, op, peer, fresh),
            Command::ConnectVia { peer, relay } => self.start_connect_via(now, op, peer, relay),
            Command::Lookup { target } => self.start_lookup(now, target, LookupPurpose::Op(op)),
            Command::Ping { peer } => self.start_ping(now, op, peer),
            Command::Echo { peer, len } => self.start_echo(now, op, peer, len),
            Command::Claim { peer } => self.start_claim(now, op, peer, claims::Then::Claim),
            Command::FetchClaims { peer } => {
                self.start_claim(now, op, peer, claims::Then::FetchClaims)
            }
        }
        id
    }

    /// Time has come for timers due at or before `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        while let Some(&(t, timer)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Deadline(id) => {
                    if self.pending.contains_key(&id) {
                        if matches!(
                            self.pending.get(&id).map(|p| p.purpose),
                            Some(Purpose::Connect(_))
                        ) {
                            self.handle_connect_result(now, id, Err(Failure::Timeout));
                        } else {
                            self.handle_response(now, id, Err(Failure::Timeout));
                        }
                    }
                }
                Timer::Task => self.run_task(now),
                Timer::Gc => self.run_gc(now),
                Timer::Refresh => self.run_refresh(now),
                Timer::Bootstrap => self.bootstrap(now),
                Timer::Upgrade(peer) => self.try_upgrade(now, peer),
                Timer::DialBack => self.run_dialback(now),
                Timer::DialBackWait(token) => self.dialback_wait(now, token),
                Timer::DialBackHello(token) => self.dialback_hello_timeout(now, token),
                Timer::KvSync => self.run_kv_sync(now),
            }
        }
    }

    // ----- outputs -----

    /// The next thing for the shell to do.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.outputs.pop_front();
        // A burst (a lookup's first queries, a bootstrap) leaves the queue's buffer at its
        // largest for good, hundreds of bytes per slot; once drained, a large one is let go.
        if out.is_none() && self.outputs.capacity() > OUTPUTS_KEPT {
            self.outputs = VecDeque::new();
        }
        out
    }

    /// When [`Node::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.first().map(|(t, _)| *t)
    }

    // ----- internals: bookkeeping -----

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn set_timer(&mut self, at: Time, timer: Timer) {
        self.timers.insert((at, timer));
    }

    fn emit(&mut self, e: Event) {
        self.outputs.push_back(Output::Event(e));
    }

    fn new_op(&mut self, now: Time, origin: Origin) -> OpId {
        let id = self.fresh_id();
        self.ops.insert(
            id,
            Op {
                origin,
                started: now,
                echo: None,
                conn: None,
                then: None,
                peer: None,
                claims: Vec::new(),
            },
        );
        id
    }

    fn send_request(
        &mut self,
        now: Time,
        peer: NodeId,
        addrs: Vec<SocketAddr>,
        request: Request,
        purpose: Purpose,
    ) {
        // A carried signal gets half the deadline, so a dead next hop is reported to the
        // requester while it still waits, and it can try another signaller.
        let timeout_ms = match purpose {
            Purpose::Forward(_) => self.cfg.request_timeout_ms / 2,
            _ => self.cfg.request_timeout_ms,
        };
        let parent = match purpose {
            Purpose::Lookup(l) => Some(Activity::Lookup(l)),
            Purpose::Connect(op) | Purpose::Signal(op) => Some(Activity::Connect(op)),
            Purpose::Forward(fid) => self
                .forwards
                .get(&fid)
                .and_then(|f| f.inbounds.first())
                .map(|i| Activity::Inbound(*i)),
            Purpose::Bootstrap
            | Purpose::Gc
            | Purpose::Introduce
            | Purpose::Verify
            | Purpose::Op(_)
            | Purpose::DialBack(_)
            | Purpose::DialBackVia(_) => None,
        };
        let id = RequestId(self.fresh_id());
        self.track(
            id,
            Pending {
                peer,
                sent: now,
                purpose,
            },
        );
        self.set_timer(now + Duration::from_millis(timeout_ms), Timer::Deadline(id));
        self.outputs.push_back(Output::Request {
            id,
            peer,
            addrs,
            request,
            parent,
        });
    }

    fn track(&mut self, id: RequestId, p: Pending) {
        *self.busy.entry(p.peer).or_insert(0) += 1;
        self.pending.insert(id, p);
    }

    fn untrack(&mut self, id: RequestId) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        if let Some(n) = self.busy.get_mut(&p.peer) {
            *n -= 1;
            if *n == 0 {
                self.busy.remove(&p.peer);
            }
        }
        Some(p)
    }
}
