//! Packet-level connectivity of the harness once a world has NATs: QUIC handshakes as
//! retransmitted Initials, hole-punching probes (birthday probing included) and relay
//! circuits admitted by the relay's own core.
//!
//! It models what decides whether a path works (which packet reaches which socket through
//! which NAT mappings and filters, and when), not QUIC itself: a handshake is an Initial
//! answered by a reply, retransmitted on a doubling PTO; an established connection carries
//! requests with the link's latency and keeps its NAT mappings alive, as keep-alives would.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand::RngExt;

use super::{Msg, World};
use chaosnet_proto::{
    BirthdayRole, ConnMode, Connected, ErrorCode, Failure, NodeId, Path, PunchPlan, Request,
    RequestId, Response, Time,
};

/// First QUIC probe timeout; it doubles after each retransmit (0, 300, 900, 2,100 ms...).
const INITIAL_PTO_MS: u64 = 300;
/// First gap between two rounds of punch probes; it doubles up to the punch timeout.
const PROBE_GAP_MS: u64 = 100;
/// Acks a side sends after the first probe from a new address (the first one at once).
const EXTRA_ACKS_MS: [u64; 2] = [50, 150];
/// The easy side starts spraying this long after its plan starts, so that the hard side,
/// which learns of the punch one signalling leg later when it is the requester, has opened
/// its sockets by the time the first probes arrive.
const SPRAY_DELAY_MS: u64 = 150;
/// Birthday probes sprayed per millisecond.
const SPRAY_PER_MS: u32 = 2;
/// Local ports of extra (birthday) sockets.
const EXTRA_PORTS: std::ops::Range<u16> = 20_000..60_000;

/// Who gets the answer to a request the harness carries.
#[derive(Clone, Copy, Debug)]
pub(super) enum Reply {
    /// The requesting core, under this id.
    Core(RequestId),
    /// The harness, for the circuit's `RelayOpen` (sent by its dialer to the relay).
    RelayOpen(u64),
    /// The harness, for the circuit's `RelayIncoming` (sent by the relay to the target).
    RelayIncoming(u64),
    /// A test, through [`World::inject_request`].
    Injected(u64),
}

/// A node or a NAT's public side, as found at an IP in a realm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Host {
    Node(usize),
    Nat(usize),
}

#[derive(Clone, Debug)]
pub(super) enum Payload {
    Initial {
        dial: u64,
        to: NodeId,
    },
    Reply {
        dial: u64,
        by: usize,
        by_port: u16,
        seen_from: SocketAddr,
    },
    Probe {
        token: u64,
        ack: bool,
        seq: Option<u32>,
    },
    DialBack {
        token: u64,
    },
    DialBackHello {
        token: u64,
    },
}

/// A packet in flight, in the realm where its destination address is resolved.
#[derive(Clone, Debug)]
pub(super) struct Packet {
    realm: Option<usize>,
    src: SocketAddr,
    dst: SocketAddr,
    payload: Payload,
}

#[derive(Clone, Debug)]
pub(super) enum NetEv {
    Initial {
        dial: u64,
        target: usize,
        n: u32,
    },
    DialDeadline {
        dial: u64,
    },
    ProbeRound {
        punch: u64,
        n: u32,
    },
    Spray {
        punch: u64,
    },
    Ack {
        punch: u64,
        port: u16,
        to: SocketAddr,
        seq: Option<u32>,
    },
    PunchEnd {
        punch: u64,
    },
    CircuitUp {
        circuit: u64,
    },
    CircuitFail {
        circuit: u64,
        failure: Failure,
    },
    CircuitDeadline {
        circuit: u64,
    },
    CircuitExpire {
        circuit: u64,
    },
}

#[derive(Debug)]
enum DialPurpose {
    Connect(RequestId),
    Requests(Vec<(Reply, Request)>),
}

#[derive(Debug)]
struct Dial {
    node: usize,
    peer: NodeId,
    mode: ConnMode,
    purpose: DialPurpose,
    targets: Vec<(u16, SocketAddr)>,
    deadline: Time,
    punch: Option<u64>,
}

#[derive(Debug)]
struct Punch {
    node: usize,
    peer: NodeId,
    plan: PunchPlan,
    dial: Option<u64>,
    deadline: Time,
    done: bool,
    connected: bool,
    sockets: Vec<u16>,
    keep: Option<u16>,
    sprayed: u32,
    first_hit: Option<u32>,
    learned: HashSet<(u16, SocketAddr)>,
    recorded: bool,
}

/// One side's end of a connection: the socket it uses and the peer's address on it.
#[derive(Clone, Copy, Debug)]
struct End {
    node: usize,
    port: u16,
    remote: SocketAddr,
}

#[derive(Clone, Copy, Debug)]
struct PathRec {
    ends: Option<[End; 2]>,
    circuit: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CircuitState {
    Opening,
    Up,
}

#[derive(Debug)]
struct Circuit {
    dialer: usize,
    /// The dialer core's connect, or `None` for a circuit a test opened.
    connect: Option<RequestId>,
    relay: usize,
    target: usize,
    admitted: bool,
    state: CircuitState,
    max_duration_ms: u64,
}

/// One birthday-probing session, seen from its easy side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BirthdayRecord {
    /// The side that sprayed probes at random ports.
    pub easy: usize,
    /// The side that opened extra sockets.
    pub hard: usize,
    /// Whether the easy side was the dialer (it then reports the count in its connect).
    pub easy_dialed: bool,
    /// Probes sprayed in all.
    pub sprayed: u32,
    /// Probes sprayed up to and including the first that reached a hard-side socket.
    pub probes_to_hit: Option<u32>,
    /// Whether the punch ended in a connection.
    pub connected: bool,
}

/// Packet-level state of the world.
#[derive(Debug, Default)]
pub(super) struct NetState {
    next_id: u64,
    dials: BTreeMap<u64, Dial>,
    request_dials: HashMap<(usize, NodeId), u64>,
    punches: BTreeMap<u64, Punch>,
    punch_by_token: HashMap<(usize, u64), u64>,
    sockets: HashSet<(usize, u16)>,
    next_port: HashMap<usize, u16>,
    paths: BTreeMap<(usize, usize), PathRec>,
    circuits: BTreeMap<u64, Circuit>,
    circuit_results: BTreeMap<u64, Result<(), Failure>>,
    injected: BTreeMap<u64, Result<Response, Failure>>,
    pub(super) birthday: Vec<BirthdayRecord>,
    /// Dial-back test sockets: (node, port) -> (token, listening until).
    listeners: HashMap<(usize, u16), (u64, Time)>,
}

impl NetState {
    fn fresh(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

fn failure_of(response: &Response) -> Failure {
    match response {
        Response::Error {
            code: ErrorCode::Busy | ErrorCode::RateLimited,
        } => Failure::Busy,
        Response::Error {
            code: ErrorCode::NoRoute,
        } => Failure::Unreachable,
        Response::Error { .. } => Failure::Refused,
        _ => Failure::Protocol,
    }
}

impl World {
    /// Whether the world has NATs, i.e. runs the packet-level model.
    pub(super) fn packet_level(&self) -> bool {
        !self.nats.is_empty()
    }

    /// The node or NAT found at `addr` in `realm`, and its realm.
    fn host(&self, realm: Option<usize>, ip: IpAddr) -> Option<Host> {
        self.hosts.get(&(realm, ip)).copied()
    }

    /// Where a packet to `dst` in `realm` would end up, ignoring filters.
    fn peek(&self, mut realm: Option<usize>, mut dst: SocketAddr) -> Option<usize> {
        for _ in 0..8 {
            match self.host(realm, dst.ip())? {
                Host::Node(i) => return Some(i),
                Host::Nat(n) => {
                    dst = self.nats[n].peek(self.now, dst.port())?;
                    realm = Some(n);
                }
            }
        }
        None
    }

    /// Sends a packet from `node`'s socket `port` to `dst`, through the node's NATs.
    fn send_packet(&mut self, node: usize, port: u16, dst: SocketAddr, payload: Payload) {
        let now = self.now;
        let mut src = SocketAddr::new(self.nodes[node].addr.ip(), port);
        let mut realm = self.nodes[node].nat;
        while self.host(realm, dst.ip()).is_none() {
            let Some(n) = realm else {
                return; // no such host on the internet
            };
            if dst.ip() == self.nats[n].public_ip && !self.nats[n].behaviour.hairpin {
                return;
            }
            let Some(out) = self.nats[n].outbound(now, src, dst) else {
                return;
            };
            src = out;
            realm = self.nats[n].parent;
        }
        let to = self.peek(realm, dst).unwrap_or(node);
        let Some(d) = self.transit(node, to) else {
            return;
        };
        self.schedule(
            now + d,
            to,
            Msg::Packet(Packet {
                realm,
                src,
                dst,
                payload,
            }),
        );
    }

    /// A packet reaches its destination realm: through NAT filters down to a socket.
    pub(super) fn arrive(&mut self, p: Packet) {
        let now = self.now;
        let (mut realm, mut dst) = (p.realm, p.dst);
        for _ in 0..8 {
            match self.host(realm, dst.ip()) {
                Some(Host::Node(i)) => return self.on_packet(i, dst.port(), p.src, p.payload),
                Some(Host::Nat(n)) => {
                    let Some(inner) = self.nats[n].inbound(now, dst.port(), p.src) else {
                        return;
                    };
                    dst = inner;
                    realm = Some(n);
                }
                None => return,
            }
        }
    }

    fn socket_open(&self, node: usize, port: u16) -> bool {
        port == self.nodes[node].addr.port() || self.net.sockets.contains(&(node, port))
    }

    fn on_packet(&mut self, i: usize, port: u16, from: SocketAddr, payload: Payload) {
        if !self.nodes[i].up || !self.socket_open(i, port) {
            return;
        }
        match payload {
            Payload::Initial { dial, to } => {
                // A node answers only handshakes meant for it (TLS would fail otherwise).
                if self.nodes[i].node.id() == to {
                    let reply = Payload::Reply {
                        dial,
                        by: i,
                        by_port: port,
                        seen_from: from,
                    };
                    self.send_packet(i, port, from, reply);
                }
            }
            Payload::Reply {
                dial,
                by,
                by_port,
                seen_from,
            } => {
                let d = End {
                    node: i,
                    port,
                    remote: from,
                };
                let t = End {
                    node: by,
                    port: by_port,
                    remote: seen_from,
                };
                self.dial_done(dial, d, t);
            }
            Payload::Probe { token, ack, seq } => self.on_probe(i, port, from, token, ack, seq),
            Payload::DialBack { token } => {
                // Only the test socket of that token hears its probes, as in the agent.
                let listening = self.net.listeners.get(&(i, port)).copied();
                if let Some((t, until)) = listening
                    && t == token
                    && self.now < until
                {
                    self.nodes[i]
                        .node
                        .handle_dialback_probe(self.now, token, from);
                    self.drain(i);
                }
            }
            Payload::DialBackHello { token } => {
                if port == self.nodes[i].addr.port() {
                    self.nodes[i]
                        .node
                        .handle_dialback_hello(self.now, token, from);
                    self.drain(i);
                }
            }
        }
    }

    /// Carries out an [`chaosnet_proto::Output::DialBackListen`]: a fresh socket sends
    /// the hello and hears the probes until the timeout.
    pub(super) fn listen_dialback(
        &mut self,
        node: usize,
        server: SocketAddr,
        token: u64,
        timeout_ms: u64,
    ) {
        let now = self.now;
        let until = now + Duration::from_millis(timeout_ms);
        self.net.listeners.retain(|_, (_, u)| *u > now);
        let port = self.extra_socket(node);
        self.net.listeners.insert((node, port), (token, until));
        if !self.packet_level() {
            if let Some(&i) = self.by_addr.get(&server) {
                let src = SocketAddr::new(self.nodes[node].addr.ip(), port);
                if let Some(d) = self.transit(node, i) {
                    self.schedule(
                        now + d,
                        i,
                        Msg::Packet(Packet {
                            realm: None,
                            src,
                            dst: server,
                            payload: Payload::DialBackHello { token },
                        }),
                    );
                }
            }
            return;
        }
        self.send_packet(node, port, server, Payload::DialBackHello { token });
    }

    /// Carries out an [`chaosnet_proto::Output::DialBack`]: one probe (the harness's
    /// links lose it only as they lose anything), from the P2P socket or a fresh one.
    pub(super) fn send_dialback(
        &mut self,
        node: usize,
        to: SocketAddr,
        token: u64,
        other_port: bool,
    ) {
        if !self.packet_level() {
            // Without NATs nothing filters: the probe reaches whoever listens there.
            if let Some(&i) = self.by_addr.get(&to) {
                let from = SocketAddr::new(
                    self.nodes[node].addr.ip(),
                    if other_port {
                        EXTRA_PORTS.start
                    } else {
                        self.nodes[node].addr.port()
                    },
                );
                if let Some(d) = self.transit(node, i) {
                    self.schedule(
                        self.now + d,
                        i,
                        Msg::Packet(Packet {
                            realm: None,
                            src: from,
                            dst: to,
                            payload: Payload::DialBack { token },
                        }),
                    );
                }
            }
            return;
        }
        let port = if other_port {
            let p = self.extra_socket(node);
            // A socket opened for one probe; it never listens for anything.
            self.net.sockets.remove(&(node, p));
            p
        } else {
            self.nodes[node].addr.port()
        };
        self.send_packet(node, port, to, Payload::DialBack { token });
    }

    // ----- handshakes -----

    fn new_dial(
        &mut self,
        node: usize,
        peer: NodeId,
        mode: ConnMode,
        purpose: DialPurpose,
        timeout_ms: u64,
    ) -> u64 {
        let id = self.net.fresh();
        let deadline = self.now + Duration::from_millis(timeout_ms);
        self.net.dials.insert(
            id,
            Dial {
                node,
                peer,
                mode,
                purpose,
                targets: Vec::new(),
                deadline,
                punch: None,
            },
        );
        self.schedule(deadline, node, Msg::Net(NetEv::DialDeadline { dial: id }));
        id
    }

    fn add_target(&mut self, dial: u64, port: u16, addr: SocketAddr) {
        let Some(d) = self.net.dials.get_mut(&dial) else {
            return;
        };
        if d.targets.contains(&(port, addr)) {
            return;
        }
        d.targets.push((port, addr));
        let (node, target) = (d.node, d.targets.len() - 1);
        self.schedule(
            self.now,
            node,
            Msg::Net(NetEv::Initial { dial, target, n: 0 }),
        );
    }

    fn initial(&mut self, dial: u64, target: usize, n: u32) {
        let Some(d) = self.net.dials.get(&dial) else {
            return;
        };
        let (node, peer, deadline) = (d.node, d.peer, d.deadline);
        let Some(&(port, addr)) = d.targets.get(target) else {
            return;
        };
        if !self.nodes[node].up {
            return;
        }
        self.send_packet(node, port, addr, Payload::Initial { dial, to: peer });
        let next = self.now + Duration::from_millis(INITIAL_PTO_MS << n.min(16));
        if next < deadline {
            self.schedule(
                next,
                node,
                Msg::Net(NetEv::Initial {
                    dial,
                    target,
                    n: n + 1,
                }),
            );
        }
    }

    /// A handshake completed: `d` dialed, `t` answered.
    fn dial_done(&mut self, dial: u64, d: End, t: End) {
        let now = self.now;
        let Some(dl) = self.net.dials.get(&dial) else {
            return;
        };
        if dl.node != d.node || !self.nodes[t.node].up {
            return;
        }
        let Some(dl) = self.net.dials.remove(&dial) else {
            return;
        };
        if self.net.request_dials.get(&(dl.node, dl.peer)) == Some(&dial) {
            self.net.request_dials.remove(&(dl.node, dl.peer));
        }
        self.stats.dials += 1;
        self.set_path(
            d.node,
            t.node,
            PathRec {
                ends: Some([d, t]),
                circuit: None,
            },
        );
        let mode = dl.mode;
        // The dialer's last handshake flight reaches the target one way later.
        let back = Duration::from_millis(self.link(d.node, t.node).latency_ms);
        self.schedule(
            now,
            d.node,
            Msg::ConnUp {
                peer: t.node,
                mode,
                remote: d.remote,
            },
        );
        self.schedule(
            now + back,
            t.node,
            Msg::ConnUp {
                peer: d.node,
                mode,
                remote: t.remote,
            },
        );
        let birthday_probes = dl.punch.and_then(|p| self.punch_connected(p, d.port, t));
        match dl.purpose {
            DialPurpose::Connect(id) => {
                let result = Ok(Connected {
                    mode,
                    remote: d.remote,
                    birthday_probes,
                });
                self.schedule(now, d.node, Msg::ConnectResult { id, result });
            }
            DialPurpose::Requests(reqs) => {
                for (reply, request) in reqs {
                    if let Some(x) = self.stream_transit(d.node, t.node) {
                        self.schedule(
                            now + x.max(back),
                            t.node,
                            Msg::Request {
                                from: d.node,
                                reply,
                                request,
                            },
                        );
                    }
                }
            }
        }
    }

    fn dial_deadline(&mut self, dial: u64) {
        let Some(d) = self.net.dials.remove(&dial) else {
            return;
        };
        if self.net.request_dials.get(&(d.node, d.peer)) == Some(&dial) {
            self.net.request_dials.remove(&(d.node, d.peer));
        }
        let now = self.now;
        match d.purpose {
            DialPurpose::Connect(id) => self.schedule(
                now,
                d.node,
                Msg::ConnectResult {
                    id,
                    result: Err(Failure::Timeout),
                },
            ),
            DialPurpose::Requests(reqs) => {
                for (reply, _) in reqs {
                    self.answer(d.node, reply, Err(Failure::Unreachable), now);
                }
            }
        }
    }

    /// Delivers the answer to a request the harness carried for `to`.
    pub(super) fn answer(
        &mut self,
        to: usize,
        reply: Reply,
        result: Result<Response, Failure>,
        at: Time,
    ) {
        match reply {
            Reply::Core(id) => self.schedule(at, to, Msg::Response { id, result }),
            // Tests read answers once the world ran past them; no need to wait for `at`.
            Reply::Injected(t) => {
                self.net.injected.insert(t, result);
            }
            Reply::RelayOpen(c) => {
                let failure = match &result {
                    Ok(r) => failure_of(r),
                    Err(f) => *f,
                };
                self.schedule(
                    at,
                    to,
                    Msg::Net(NetEv::CircuitFail {
                        circuit: c,
                        failure,
                    }),
                );
            }
            // The relay could not reach the target: the dialer hears of it.
            Reply::RelayIncoming(c) => {
                let failure = result.err().unwrap_or(Failure::Protocol);
                if let Some(dialer) = self.net.circuits.get(&c).map(|c| c.dialer) {
                    let ev = NetEv::CircuitFail {
                        circuit: c,
                        failure,
                    };
                    self.schedule(at, dialer, Msg::Net(ev));
                }
            }
        }
    }

    /// Sends a request from `from` to `peer` over a connection, dialing one first if needed.
    pub(super) fn net_request(
        &mut self,
        from: usize,
        reply: Reply,
        peer: NodeId,
        addrs: &[SocketAddr],
        request: Request,
    ) {
        if let Some(&dial) = self.net.request_dials.get(&(from, peer))
            && let Some(d) = self.net.dials.get_mut(&dial)
            && let DialPurpose::Requests(q) = &mut d.purpose
        {
            q.push((reply, request));
            return;
        }
        let timeout = self.cfg.unreachable_after_ms;
        let dial = self.new_dial(
            from,
            peer,
            ConnMode::Direct,
            DialPurpose::Requests(vec![(reply, request)]),
            timeout,
        );
        self.net.request_dials.insert((from, peer), dial);
        let port = self.nodes[from].addr.port();
        for a in addrs {
            self.add_target(dial, port, *a);
        }
    }

    /// Carries out [`chaosnet_proto::Output::Connect`] at packet level.
    pub(super) fn net_connect(
        &mut self,
        node: usize,
        id: RequestId,
        peer: NodeId,
        addrs: &[SocketAddr],
        path: Path,
        timeout_ms: u64,
    ) {
        let mode = match path {
            Path::Direct => ConnMode::Direct,
            Path::Punch(_) => ConnMode::Punched,
            Path::Relay { .. } => ConnMode::Relayed,
        };
        let dial = self.new_dial(node, peer, mode, DialPurpose::Connect(id), timeout_ms);
        let port = self.nodes[node].addr.port();
        for a in addrs {
            self.add_target(dial, port, *a);
        }
        if let Path::Punch(plan) = path {
            let punch = self.start_punch(node, peer, plan, Some(dial));
            if let Some(d) = self.net.dials.get_mut(&dial) {
                d.punch = Some(punch);
            }
        }
    }

    // ----- hole punching -----

    fn extra_socket(&mut self, node: usize) -> u16 {
        let next = self.net.next_port.entry(node).or_insert(EXTRA_PORTS.start);
        let mut port = *next;
        for _ in 0..EXTRA_PORTS.len() {
            port = *next;
            *next = if *next + 1 >= EXTRA_PORTS.end {
                EXTRA_PORTS.start
            } else {
                *next + 1
            };
            if !self.net.sockets.contains(&(node, port)) {
                break;
            }
        }
        self.net.sockets.insert((node, port));
        port
    }

    /// Starts `node`'s side of a punch towards `peer` (the dialer passes its dial).
    pub(super) fn start_punch(
        &mut self,
        node: usize,
        peer: NodeId,
        plan: PunchPlan,
        dial: Option<u64>,
    ) -> u64 {
        let id = self.net.fresh();
        let now = self.now;
        let deadline = now + Duration::from_millis(plan.timeout_ms);
        let mut sockets = Vec::new();
        if plan.birthday == Some(BirthdayRole::Hard) {
            for _ in 0..plan.birthday_sockets {
                sockets.push(self.extra_socket(node));
            }
        }
        if plan.birthday == Some(BirthdayRole::Easy) {
            let at = now + Duration::from_millis(SPRAY_DELAY_MS);
            self.schedule(at, node, Msg::Net(NetEv::Spray { punch: id }));
        }
        self.net.punch_by_token.insert((node, plan.token), id);
        self.net.punches.insert(
            id,
            Punch {
                node,
                peer,
                plan,
                dial,
                deadline,
                done: false,
                connected: false,
                sockets,
                keep: None,
                sprayed: 0,
                first_hit: None,
                learned: HashSet::new(),
                recorded: false,
            },
        );
        self.schedule(now, node, Msg::Net(NetEv::ProbeRound { punch: id, n: 0 }));
        self.schedule(deadline, node, Msg::Net(NetEv::PunchEnd { punch: id }));
        id
    }

    fn live_punch(&self, punch: u64) -> Option<&Punch> {
        self.net
            .punches
            .get(&punch)
            .filter(|p| !p.done && self.nodes[p.node].up)
    }

    fn probe_round(&mut self, punch: u64, n: u32) {
        let Some(p) = self.live_punch(punch) else {
            return;
        };
        let (node, token, deadline) = (p.node, p.plan.token, p.deadline);
        let addrs = p.plan.peer_addrs.clone();
        let sockets = p.sockets.clone();
        let main = self.nodes[node].addr.port();
        let probe = Payload::Probe {
            token,
            ack: false,
            seq: None,
        };
        for a in &addrs {
            self.send_packet(node, main, *a, probe.clone());
        }
        // The hard side's extra sockets each open a mapping towards the peer's address.
        if let Some(first) = addrs.first() {
            for s in sockets {
                self.send_packet(node, s, *first, probe.clone());
            }
        }
        let next = self.now + Duration::from_millis(PROBE_GAP_MS << n.min(16));
        if next < deadline {
            self.schedule(next, node, Msg::Net(NetEv::ProbeRound { punch, n: n + 1 }));
        }
    }

    fn spray(&mut self, punch: u64) {
        let Some(p) = self.live_punch(punch) else {
            return;
        };
        let (node, token, budget, sprayed) = (
            p.node,
            p.plan.token,
            u32::from(p.plan.birthday_probes),
            p.sprayed,
        );
        let Some(ip) = p.plan.peer_addrs.first().map(|a| a.ip()) else {
            return;
        };
        let main = self.nodes[node].addr.port();
        let batch = SPRAY_PER_MS.min(budget.saturating_sub(sprayed));
        for k in 0..batch {
            let port = self.rng.random_range(super::nat::PORT_MIN..=u16::MAX);
            let probe = Payload::Probe {
                token,
                ack: false,
                seq: Some(sprayed + k),
            };
            self.send_packet(node, main, SocketAddr::new(ip, port), probe);
        }
        if let Some(p) = self.net.punches.get_mut(&punch) {
            p.sprayed += batch;
            if p.sprayed < budget {
                let at = self.now + Duration::from_millis(1);
                self.schedule(at, node, Msg::Net(NetEv::Spray { punch }));
            }
        }
    }

    fn on_probe(
        &mut self,
        node: usize,
        port: u16,
        from: SocketAddr,
        token: u64,
        ack: bool,
        seq: Option<u32>,
    ) {
        let Some(&punch) = self.net.punch_by_token.get(&(node, token)) else {
            return;
        };
        let Some(p) = self.net.punches.get_mut(&punch).filter(|p| !p.done) else {
            return;
        };
        let new = p.learned.insert((port, from));
        // The easy side hit a hard-side socket: either its probe reached one (the ack
        // names it), or it opened the permit a hard-side socket's probe then came through
        // (the count so far is then an upper bound).
        if p.plan.birthday == Some(BirthdayRole::Easy)
            && p.first_hit.is_none()
            && p.sprayed > 0
            && !p.plan.peer_addrs.contains(&from)
        {
            p.first_hit = Some(match (ack, seq) {
                (true, Some(s)) => s + 1,
                _ => p.sprayed,
            });
        }
        let dial = p.dial;
        if !ack {
            let ack = Payload::Probe {
                token,
                ack: true,
                seq,
            };
            self.send_packet(node, port, from, ack);
            if new {
                for ms in EXTRA_ACKS_MS {
                    let at = self.now + Duration::from_millis(ms);
                    let ev = NetEv::Ack {
                        punch,
                        port,
                        to: from,
                        seq,
                    };
                    self.schedule(at, node, Msg::Net(ev));
                }
            }
        }
        // The dialer also dials whatever address the peer's probes came from, from the
        // socket they reached.
        if new && let Some(d) = dial {
            self.add_target(d, port, from);
        }
    }

    fn extra_ack(&mut self, punch: u64, port: u16, to: SocketAddr, seq: Option<u32>) {
        let Some(p) = self.live_punch(punch) else {
            return;
        };
        let (node, token) = (p.node, p.plan.token);
        self.send_packet(
            node,
            port,
            to,
            Payload::Probe {
                token,
                ack: true,
                seq,
            },
        );
    }

    /// The dial of punch `punch` connected, the dialer on `port`, the target at `t`. Both
    /// sides' sessions stop. Returns the dialer's birthday probe count if it was the easy side.
    fn punch_connected(&mut self, punch: u64, port: u16, t: End) -> Option<u32> {
        let p = self.net.punches.get_mut(&punch)?;
        p.done = true;
        p.connected = true;
        p.keep = Some(port);
        let (token, easy) = (p.plan.token, p.plan.birthday == Some(BirthdayRole::Easy));
        let count = (easy && p.sprayed > 0).then(|| p.first_hit.unwrap_or(p.sprayed));
        let other = self.net.punch_by_token.get(&(t.node, token)).copied();
        if let Some(q) = other.and_then(|o| self.net.punches.get_mut(&o)) {
            q.done = true;
            q.connected = true;
            q.keep = Some(t.port);
        }
        self.record_birthday(punch);
        if let Some(o) = other {
            self.record_birthday(o);
        }
        count
    }

    /// Records a session's birthday probing once, from its easy side, when it is decided.
    fn record_birthday(&mut self, punch: u64) {
        let Some(p) = self.net.punches.get_mut(&punch) else {
            return;
        };
        if p.recorded || p.plan.birthday != Some(BirthdayRole::Easy) {
            return;
        }
        p.recorded = true;
        let record = BirthdayRecord {
            easy: p.node,
            hard: 0,
            easy_dialed: p.dial.is_some(),
            sprayed: p.sprayed,
            probes_to_hit: p.first_hit,
            connected: p.connected,
        };
        let peer = p.peer;
        let hard = self.peer_index(peer).unwrap_or(record.easy);
        self.net.birthday.push(BirthdayRecord { hard, ..record });
    }

    fn punch_end(&mut self, punch: u64) {
        self.record_birthday(punch);
        let Some(p) = self.net.punches.remove(&punch) else {
            return;
        };
        if self.net.punch_by_token.get(&(p.node, p.plan.token)) == Some(&punch) {
            self.net.punch_by_token.remove(&(p.node, p.plan.token));
        }
        for s in &p.sockets {
            if Some(*s) != p.keep {
                self.net.sockets.remove(&(p.node, *s));
            }
        }
    }

    // ----- connections and circuits -----

    fn pin_end(&mut self, e: End, up: bool) {
        let now = self.now;
        let mut internal = SocketAddr::new(self.nodes[e.node].addr.ip(), e.port);
        let mut realm = self.nodes[e.node].nat;
        while let Some(n) = realm {
            // A peer inside this realm is reached without crossing this NAT.
            if self.host(Some(n), e.remote.ip()).is_some() {
                break;
            }
            let Some(public) = self.nats[n].pin(now, internal, e.remote, up) else {
                break;
            };
            internal = public;
            realm = self.nats[n].parent;
        }
    }

    fn set_path(&mut self, a: usize, b: usize, rec: PathRec) {
        if let Some(old) = self.net.paths.remove(&pair(a, b)) {
            self.drop_path(old);
        }
        if let Some(ends) = rec.ends {
            for e in ends {
                self.pin_end(e, true);
            }
        }
        self.net.paths.insert(pair(a, b), rec);
    }

    fn drop_path(&mut self, old: PathRec) {
        if let Some(ends) = old.ends {
            for e in ends {
                self.pin_end(e, false);
            }
        }
        // A better connection replaced a relayed one: the circuit is no longer needed.
        if let Some(c) = old.circuit {
            self.close_circuit(c, false);
        }
    }

    /// The connection between `a` and `b` went away (both sides already know).
    pub(super) fn net_conn_down(&mut self, a: usize, b: usize) {
        if let Some(old) = self.net.paths.remove(&pair(a, b)) {
            self.drop_path(old);
        }
        // Circuits that used this connection as a leg lose it.
        let legs: Vec<u64> = self
            .net
            .circuits
            .iter()
            .filter(|(_, c)| {
                let ends = [c.dialer, c.target];
                (c.relay == a && ends.contains(&b)) || (c.relay == b && ends.contains(&a))
            })
            .map(|(id, _)| *id)
            .collect();
        for c in legs {
            self.close_circuit(c, true);
        }
    }

    /// Every connection and circuit of a killed node ends.
    pub(super) fn net_kill(&mut self, idx: usize) {
        let paths: Vec<(usize, usize)> = self
            .net
            .paths
            .keys()
            .filter(|(a, b)| *a == idx || *b == idx)
            .copied()
            .collect();
        for k in paths {
            if let Some(old) = self.net.paths.remove(&k) {
                self.drop_path(old);
            }
        }
        let through: Vec<u64> = self
            .net
            .circuits
            .iter()
            .filter(|(_, c)| c.relay == idx || c.dialer == idx || c.target == idx)
            .map(|(id, _)| *id)
            .collect();
        for c in through {
            self.close_circuit(c, true);
        }
    }

    /// Asks `relay` for a circuit from `node` to `peer`; the relay's core admits it.
    pub(super) fn net_relay(
        &mut self,
        node: usize,
        id: Option<RequestId>,
        peer: NodeId,
        relay: NodeId,
        relay_addrs: &[SocketAddr],
        timeout_ms: u64,
    ) {
        let now = self.now;
        let c = self.net.fresh();
        let (Some(r), Some(t)) = (self.peer_index(relay), self.peer_index(peer)) else {
            let at = now + Duration::from_millis(self.cfg.unreachable_after_ms.min(timeout_ms));
            let result = Err(Failure::Unreachable);
            match id {
                Some(id) => self.schedule(at, node, Msg::ConnectResult { id, result }),
                None => {
                    self.net
                        .circuit_results
                        .insert(c, Err(Failure::Unreachable));
                }
            }
            return;
        };
        self.net.circuits.insert(
            c,
            Circuit {
                dialer: node,
                connect: id,
                relay: r,
                target: t,
                admitted: false,
                state: CircuitState::Opening,
                max_duration_ms: 0,
            },
        );
        let deadline = now + Duration::from_millis(timeout_ms);
        self.schedule(
            deadline,
            node,
            Msg::Net(NetEv::CircuitDeadline { circuit: c }),
        );
        self.carry_request(
            node,
            Reply::RelayOpen(c),
            relay,
            relay_addrs,
            Request::RelayOpen {
                target: peer,
                trace: None,
            },
        );
    }

    /// The relay's core answered a circuit's `RelayOpen` (at the relay, now).
    pub(super) fn relay_open_answered(&mut self, circuit: u64, response: Response) {
        let Some(c) = self.net.circuits.get_mut(&circuit) else {
            return;
        };
        let (dialer, relay, target) = (c.dialer, c.relay, c.target);
        if let Response::RelayAccepted {
            max_duration_ms, ..
        } = response
        {
            c.admitted = true;
            c.max_duration_ms = max_duration_ms;
            let from = self.nodes[dialer].node.id();
            let tid = self.nodes[target].node.id();
            self.carry_request(
                relay,
                Reply::RelayIncoming(circuit),
                tid,
                &[],
                Request::RelayIncoming { from },
            );
        } else {
            let at = self.now + self.latency(relay, dialer);
            self.answer(dialer, Reply::RelayOpen(circuit), Ok(response), at);
        }
    }

    /// The target's core answered a circuit's `RelayIncoming` (at the target, now).
    pub(super) fn relay_incoming_answered(&mut self, circuit: u64, response: Response) {
        let Some(c) = self.net.circuits.get(&circuit) else {
            return;
        };
        let (dialer, relay) = (c.dialer, c.relay);
        let at = self.now + self.latency(c.target, relay) + self.latency(relay, dialer);
        if matches!(response, Response::RelayAccepted { .. }) {
            self.schedule(at, dialer, Msg::Net(NetEv::CircuitUp { circuit }));
        } else {
            let failure = failure_of(&response);
            self.schedule(
                at,
                dialer,
                Msg::Net(NetEv::CircuitFail { circuit, failure }),
            );
            // The relay's slot is freed when the dialer learns of the failure.
        }
    }

    fn latency(&self, a: usize, b: usize) -> Duration {
        Duration::from_millis(self.link(a, b).latency_ms)
    }

    fn circuit_up(&mut self, circuit: u64) {
        let now = self.now;
        let Some(c) = self.net.circuits.get_mut(&circuit) else {
            return;
        };
        if c.state != CircuitState::Opening {
            return;
        }
        let (dialer, relay, target, id) = (c.dialer, c.relay, c.target, c.connect);
        let alive = [dialer, relay, target].iter().all(|&i| self.nodes[i].up)
            && self.nodes[dialer].conns.contains(&relay)
            && self.nodes[relay].conns.contains(&target);
        if !alive {
            self.circuit_fail(circuit, Failure::Unreachable);
            return;
        }
        c.state = CircuitState::Up;
        let max = Duration::from_millis(c.max_duration_ms);
        let mode = ConnMode::Relayed;
        let remote = self.nodes[relay].addr;
        self.set_path(
            dialer,
            target,
            PathRec {
                ends: None,
                circuit: Some(circuit),
            },
        );
        self.schedule(
            now,
            dialer,
            Msg::ConnUp {
                peer: target,
                mode,
                remote,
            },
        );
        self.schedule(
            now,
            target,
            Msg::ConnUp {
                peer: dialer,
                mode,
                remote,
            },
        );
        let result = Ok(Connected {
            mode,
            remote,
            birthday_probes: None,
        });
        match id {
            Some(id) => self.schedule(now, dialer, Msg::ConnectResult { id, result }),
            None => {
                self.net.circuit_results.insert(circuit, Ok(()));
            }
        }
        self.schedule(now + max, relay, Msg::Net(NetEv::CircuitExpire { circuit }));
    }

    fn circuit_fail(&mut self, circuit: u64, failure: Failure) {
        let Some(c) = self.net.circuits.get(&circuit) else {
            return;
        };
        if c.state != CircuitState::Opening {
            return;
        }
        let (dialer, id) = (c.dialer, c.connect);
        self.close_circuit(circuit, false);
        match id {
            Some(id) => self.schedule(
                self.now,
                dialer,
                Msg::ConnectResult {
                    id,
                    result: Err(failure),
                },
            ),
            None => {
                self.net.circuit_results.insert(circuit, Err(failure));
            }
        }
    }

    /// Ends a circuit: the relay's core frees its slot; with `drop_conn`, the relayed
    /// connection it carried goes down at both ends.
    fn close_circuit(&mut self, circuit: u64, drop_conn: bool) {
        let now = self.now;
        let Some(c) = self.net.circuits.remove(&circuit) else {
            return;
        };
        let requester = self.nodes[c.dialer].node.id();
        if c.admitted && self.nodes[c.relay].up {
            self.nodes[c.relay]
                .node
                .handle_circuit_closed(now, requester, true);
            self.drain(c.relay);
        }
        if c.state == CircuitState::Up && self.nodes[c.target].up {
            self.nodes[c.target]
                .node
                .handle_circuit_closed(now, requester, false);
            self.drain(c.target);
        }
        let key = pair(c.dialer, c.target);
        if drop_conn
            && self
                .net
                .paths
                .get(&key)
                .is_some_and(|p| p.circuit == Some(circuit))
        {
            self.net.paths.remove(&key);
            for (x, y) in [(c.dialer, c.target), (c.target, c.dialer)] {
                if self.nodes[x].conns.remove(&y) && self.nodes[x].up {
                    let yid = self.nodes[y].node.id();
                    self.nodes[x].node.handle_connection_down(now, yid);
                    self.drain(x);
                }
            }
        }
    }

    /// Handles a harness event.
    pub(super) fn net_event(&mut self, ev: NetEv) {
        match ev {
            NetEv::Initial { dial, target, n } => self.initial(dial, target, n),
            NetEv::DialDeadline { dial } => self.dial_deadline(dial),
            NetEv::ProbeRound { punch, n } => self.probe_round(punch, n),
            NetEv::Spray { punch } => self.spray(punch),
            NetEv::Ack {
                punch,
                port,
                to,
                seq,
            } => self.extra_ack(punch, port, to, seq),
            NetEv::PunchEnd { punch } => self.punch_end(punch),
            NetEv::CircuitUp { circuit } => self.circuit_up(circuit),
            NetEv::CircuitFail { circuit, failure } => self.circuit_fail(circuit, failure),
            NetEv::CircuitDeadline { circuit } => self.circuit_fail(circuit, Failure::Timeout),
            NetEv::CircuitExpire { circuit } => self.close_circuit(circuit, true),
        }
    }

    // ----- inspection -----

    /// Relay circuits open (admitted and up) through `relay`.
    pub fn circuits_through(&self, relay: usize) -> usize {
        self.net
            .circuits
            .values()
            .filter(|c| c.relay == relay && c.state == CircuitState::Up)
            .count()
    }

    /// Closes every circuit through `relay`, as if their ends hung up.
    pub fn close_circuits_through(&mut self, relay: usize) {
        let ids: Vec<u64> = self
            .net
            .circuits
            .iter()
            .filter(|(_, c)| c.relay == relay)
            .map(|(id, _)| *id)
            .collect();
        for c in ids {
            self.close_circuit(c, true);
        }
    }

    /// Sends `request` from node `from` to node `to` as `from`'s shell would (over their
    /// connection, dialing first if needed), whatever `from`'s core thinks: how tests play a
    /// misbehaving peer. Read the answer with [`World::injected`].
    pub fn inject_request(&mut self, from: usize, to: usize, request: Request) -> u64 {
        let t = self.net.fresh();
        let peer = self.nodes[to].node.id();
        let addrs = self.nodes[from]
            .node
            .graph()
            .get(&peer)
            .map(|c| c.addrs.clone())
            .unwrap_or_else(|| vec![self.nodes[to].addr]);
        self.carry_request(from, Reply::Injected(t), peer, &addrs, request);
        t
    }

    /// The answer to an injected request, once it came.
    pub fn injected(&self, ticket: u64) -> Option<&Result<Response, Failure>> {
        self.net.injected.get(&ticket)
    }

    /// Opens a relay circuit from `dialer` through `relay` to `target` as `dialer`'s shell
    /// would for a `Path::Relay` connect (the relay's core admits it), without the dialer's
    /// core asking. Read the outcome with [`World::circuit_result`].
    pub fn open_circuit(&mut self, dialer: usize, relay: usize, target: usize) -> u64 {
        let (r, t) = (self.nodes[relay].node.id(), self.nodes[target].node.id());
        let addrs = vec![self.nodes[relay].addr];
        let timeout = self.nodes[dialer].node.config().relay_timeout_ms;
        let before = self.net.next_id;
        self.net_relay(dialer, None, t, r, &addrs, timeout);
        // `net_relay` takes the next id for the circuit.
        before + 1
    }

    /// How a circuit opened with [`World::open_circuit`] went, once decided.
    pub fn circuit_result(&self, circuit: u64) -> Option<Result<(), Failure>> {
        self.net.circuit_results.get(&circuit).copied()
    }

    /// Every birthday-probing session that ended, from its easy side.
    pub fn birthday_records(&self) -> &[BirthdayRecord] {
        &self.net.birthday
    }
}
