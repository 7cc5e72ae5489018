//! Reachability by dial-back: measuring this node's NAT filtering (RFC 5780 section 4.4, as
//! libp2p's AutoNAT does over peers), serving and helping with other nodes' tests, and
//! telling subscribers when the node's addresses, NAT type or reachability change.
//!
//! A node whose mapping is endpoint-independent (`Cone`, from its observers) opens a fresh
//! test socket (a new NAT mapping, which has sent to nobody but S), sends a hello from it to
//! a peer S it holds a direct connection to, and asks S over that connection:
//! 1. "have a node with another IP probe my test socket" (S picks a helper H among its own
//!    connections). A probe arriving from an IP other than S's means endpoint-independent
//!    filtering: a full cone.
//! 2. otherwise, "probe it yourself, from another port". A probe arriving from S's IP on
//!    another port means address-dependent filtering (restricted cone); none means
//!    address-and-port-dependent (port-restricted cone).
//!
//! The test socket's mapping has sent only to S's P2P socket, so whatever else gets in says
//! what the filter lets in, however many peers the node talks to on its P2P socket. A probe
//! counts only once S confirmed that it left; a probe from an unexpected source makes the
//! round inconclusive (another server is tried; the last result stands meanwhile).
//!
//! As server or helper, a node never probes an address the requester names: S probes (or
//! has H probe) where the hello came from, and only when that is the IP of its connection
//! to the requester. Requests are rate-limited per peer and in total, and each one makes the
//! shell send a fixed few small probes, so a node cannot be used as an amplifier. It does not test a node with no
//! NAT (it is reachable) or with an endpoint-dependent mapping (a symmetric NAT, whatever
//! its filtering).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand::Rng;

use crate::id::NodeId;
use crate::reach::{ConnMode, Filtering, NatType};
use crate::time::Time;
use crate::wire::{ErrorCode, Request, Response};

use super::{Event, Failure, InboundId, Node, NodeEvent, Output, Purpose, Timer};

/// Servers tried per round before the round gives up until the next retry.
const MAX_SERVERS_PER_ROUND: usize = 3;
/// Delay before the next round when a round could not conclude (no server, no helper,
/// tainted probes).
const RETRY: Duration = Duration::from_secs(10);
/// Hellos remembered (the newest), and how long, while their request may still come.
const MAX_HELLOS: usize = 64;
const HELLO_MEMORY: Duration = Duration::from_secs(10);
/// How long a served request waits for its hello (they race: datagram and stream).
const HELLO_WAIT: Duration = Duration::from_secs(2);
/// Dial-back requests this node carries to helpers, or holds waiting for hellos, at once.
const MAX_VIA: usize = 64;
/// All dial-back work (served and helped) this node does at once, across every peer.
pub(super) const GLOBAL_BURST: u32 = 32;
/// The same, sustained per second.
pub(super) const GLOBAL_PER_S: f64 = 2.0;
/// The key of the limiter's global bucket (no real node has the all-zero key).
const GLOBAL: NodeId = NodeId([0; 32]);

/// Which question a round is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Probes from another IP.
    OtherIp,
    /// Probes from the server's IP, another port.
    OtherPort,
}

/// A running test round.
#[derive(Clone, Debug)]
struct Round {
    stage: Stage,
    token: u64,
    server: NodeId,
    /// The server's address on our connection to it.
    server_addr: SocketAddr,
    /// The server confirmed that the probes left.
    confirmed: bool,
    /// A probe came from a source that proves nothing.
    tainted: bool,
    /// Servers tried this round.
    tried: Vec<NodeId>,
}

/// Dial-back state of a node.
#[derive(Debug, Default)]
pub(super) struct DialBack {
    round: Option<Round>,
    /// The measured filtering, with the mapped IP it was measured behind.
    result: Option<(IpAddr, Filtering)>,
    /// When the single dial-back timer is due.
    next: Option<Time>,
    /// Hellos received: token, where from, when.
    hellos: VecDeque<(u64, SocketAddr, Time)>,
    /// Served requests waiting for their hello, by token.
    waiting: HashMap<u64, Served>,
    /// Dial-backs we carry to helpers: our request id's purpose key -> the inbound waiting.
    via: HashMap<u64, InboundId>,
    /// What subscribers were last told.
    told: Option<Reach>,
}

/// A dial-back request this node serves.
#[derive(Clone, Copy, Debug)]
struct Served {
    from: NodeId,
    inbound: InboundId,
    other_port: bool,
    /// The IP of our connection to the requester: the hello must come from it.
    ip: IpAddr,
}

/// The reach state subscribers are told about.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reach {
    addrs: Vec<SocketAddr>,
    nat: NatType,
    reachable: bool,
}

impl Node {
    /// The mapping half of the self-classification, from observed addresses alone. Needs
    /// two distinct observers. Observations equal to a listen address (peers on our own
    /// LAN, or no NAT at all) say nothing about a NAT; any other one means we are behind one.
    pub(super) fn mapping_type(&self) -> NatType {
        let mut latest: Vec<(NodeId, SocketAddr)> = Vec::new();
        // Only the most recent observation per observer counts: a remap is not EDM.
        for (a, o) in &self.observed {
            if !latest.iter().any(|(x, _)| x == o) {
                latest.push((*o, *a));
            }
        }
        if latest.len() < 2 {
            return NatType::Unknown;
        }
        let mut mapped: Vec<SocketAddr> = Vec::new();
        for (_, a) in latest {
            if !self.cfg.listen_addrs.contains(&a) && !mapped.contains(&a) {
                mapped.push(a);
            }
        }
        match mapped.len() {
            0 => NatType::Public,
            1 => NatType::Cone,
            _ => NatType::Symmetric,
        }
    }

    /// The filtering measured for the current mapping, if any.
    pub(super) fn filtering(&self) -> Option<Filtering> {
        let (ip, f) = self.dialback.result?;
        (self.mapped_ip() == Some(ip)).then_some(f)
    }

    /// The IP peers see us at, through our NAT: the most recent mapped observation.
    fn mapped_ip(&self) -> Option<IpAddr> {
        self.observed
            .iter()
            .map(|(a, _)| *a)
            .find(|a| !self.cfg.listen_addrs.contains(a))
            .map(|a| a.ip())
    }

    /// (Re)arms the one dial-back timer for `at`.
    pub(super) fn schedule_dialback(&mut self, at: Time) {
        if let Some(old) = self.dialback.next.take() {
            self.timers.remove(&(old, Timer::DialBack));
        }
        self.dialback.next = Some(at);
        self.set_timer(at, Timer::DialBack);
    }

    /// The dial-back timer: start a round if one is due and possible.
    pub(super) fn run_dialback(&mut self, now: Time) {
        if self.dialback.next.is_some_and(|t| t > now) {
            return; // a stale timer; the current one is later
        }
        self.dialback.next = None;
        if self.cfg.dialback_interval_ms == 0 || self.dialback.round.is_some() {
            return;
        }
        if self.mapping_type() != NatType::Cone {
            // Tested again when the mapping is classified (see `note_reach`).
            return;
        }
        self.start_round(now, Stage::OtherIp, Vec::new(), None);
    }

    /// Asks `prefer` if it is still directly connected, else the best untried server;
    /// without one, waits for the next retry.
    fn start_round(&mut self, now: Time, stage: Stage, tried: Vec<NodeId>, prefer: Option<NodeId>) {
        let preferred = prefer.and_then(|p| self.direct_remote(&p).map(|a| (p, a)));
        // Only a server that sees us through our NAT can test it: one on our own LAN sees a
        // listen address, and would test the LAN instead.
        let sees_mapped = |id: &NodeId| {
            self.observed
                .iter()
                .find(|(_, o)| o == id)
                .is_some_and(|(a, _)| !self.cfg.listen_addrs.contains(a))
        };
        let best = self
            .conns
            .iter()
            .filter(|(id, c)| c.mode != ConnMode::Relayed && !tried.contains(id) && sees_mapped(id))
            // Public servers first: their helpers are likelier to be on other IPs.
            .min_by_key(|(id, _)| {
                let open = self.table.get(id).is_some_and(|c| c.nat.is_open());
                (!open, **id)
            })
            .map(|(id, c)| (*id, c.remote));
        let Some((server, server_addr)) = preferred.or(best) else {
            self.dialback.round = None;
            self.schedule_dialback(now + RETRY);
            return;
        };
        if tried.len() >= MAX_SERVERS_PER_ROUND && preferred.is_none() {
            self.dialback.round = None;
            self.schedule_dialback(now + RETRY);
            return;
        }
        let mut tried = tried;
        tried.push(server);
        let token = self.rng.next_u64();
        // Listen until well after the probes could come.
        let timeout_ms = self.cfg.request_timeout_ms + self.cfg.dialback_wait_ms;
        self.outputs.push_back(Output::DialBackListen {
            server: server_addr,
            token,
            timeout_ms,
        });
        self.dialback.round = Some(Round {
            stage,
            token,
            server,
            server_addr,
            confirmed: false,
            tainted: false,
            tried,
        });
        let request = Request::DialBack {
            token,
            other_port: stage == Stage::OtherPort,
        };
        self.send_request(now, server, Vec::new(), request, Purpose::DialBack(token));
    }

    /// The server answered our request.
    pub(super) fn dialback_answer(
        &mut self,
        now: Time,
        token: u64,
        result: Result<Response, Failure>,
    ) {
        let Some(round) = self.dialback.round.as_mut().filter(|r| r.token == token) else {
            return;
        };
        match result {
            Ok(Response::DialBackSent) => {
                round.confirmed = true;
                let at = now + Duration::from_millis(self.cfg.dialback_wait_ms);
                self.set_timer(at, Timer::DialBackWait(token));
            }
            // No helper, rate-limited, an old peer, a lost connection: ask someone else.
            _ => {
                let (stage, tried) = (round.stage, round.tried.clone());
                self.start_round(now, stage, tried, None);
            }
        }
    }

    /// A dial-back probe carrying `token` arrived at the test socket from `from`.
    pub(super) fn dialback_probe(&mut self, now: Time, token: u64, from: SocketAddr) {
        let Some(round) = self.dialback.round.as_ref().filter(|r| r.token == token) else {
            return;
        };
        let (stage, server_addr) = (round.stage, round.server_addr);
        // The test socket sent only to the server's P2P socket.
        let valid = match stage {
            Stage::OtherIp => from.ip() != server_addr.ip(),
            Stage::OtherPort => from.ip() == server_addr.ip() && from != server_addr,
        };
        if !valid {
            if let Some(r) = self.dialback.round.as_mut() {
                r.tainted = true;
            }
            return;
        }
        let f = match stage {
            Stage::OtherIp => Filtering::EndpointIndependent,
            Stage::OtherPort => Filtering::AddressDependent,
        };
        self.conclude(now, f);
    }

    /// The wait after a confirmed round is over and no valid probe came.
    pub(super) fn dialback_wait(&mut self, now: Time, token: u64) {
        let Some(round) = self.dialback.round.clone().filter(|r| r.token == token) else {
            return;
        };
        if !round.confirmed {
            return;
        }
        match (round.tainted, round.stage) {
            (true, stage) => self.start_round(now, stage, round.tried, None),
            // Not from another IP: ask the same server for another port of its own (the
            // OtherPort question gets its own budget of servers).
            (false, Stage::OtherIp) => {
                self.start_round(now, Stage::OtherPort, Vec::new(), Some(round.server))
            }
            (false, Stage::OtherPort) => self.conclude(now, Filtering::AddressPortDependent),
        }
    }

    fn conclude(&mut self, now: Time, f: Filtering) {
        self.dialback.round = None;
        if let Some(ip) = self.mapped_ip() {
            self.dialback.result = Some((ip, f));
        }
        self.emit(Event::DialBack { filtering: f });
        self.note_reach(now);
        let interval = Duration::from_millis(self.cfg.dialback_interval_ms);
        self.schedule_dialback(now + interval);
    }

    // ----- serving and helping -----

    /// `from` asks for a dial-back. Returns the immediate answer, or `None` when it waits
    /// for its hello or a helper was asked (the answer comes later).
    pub(super) fn on_dialback(
        &mut self,
        now: Time,
        from: NodeId,
        inbound: InboundId,
        token: u64,
        other_port: bool,
    ) -> Option<Response> {
        let refuse = |code| Some(Response::Error { code });
        let Some(conn) = self.direct_remote(&from) else {
            return refuse(ErrorCode::NoRoute);
        };
        if !self.allow_dialback(now, from) {
            return refuse(ErrorCode::RateLimited);
        }
        let served = Served {
            from,
            inbound,
            other_port,
            ip: conn.ip(),
        };
        let hello = self
            .dialback
            .hellos
            .iter()
            .find(|(t, a, at)| *t == token && a.ip() == conn.ip() && now.since(*at) < HELLO_MEMORY)
            .map(|(_, a, _)| *a);
        if let Some(to) = hello {
            return self.serve_dialback(now, token, served, to);
        }
        if self.dialback.waiting.len() + self.dialback.via.len() >= MAX_VIA {
            return refuse(ErrorCode::Busy);
        }
        self.dialback.waiting.insert(token, served);
        self.set_timer(now + HELLO_WAIT, Timer::DialBackHello(token));
        None
    }

    /// A hello of someone's test socket arrived on our P2P socket.
    pub(super) fn dialback_hello(&mut self, now: Time, token: u64, from: SocketAddr) {
        if let Some(served) = self.dialback.waiting.get(&token).copied() {
            if served.ip != from.ip() {
                return; // not the requester's NAT: never probe it
            }
            self.dialback.waiting.remove(&token);
            if let Some(response) = self.serve_dialback(now, token, served, from) {
                self.outputs.push_back(Output::Respond {
                    inbound: served.inbound,
                    response,
                });
            }
            return;
        }
        self.dialback.hellos.retain(|(t, _, _)| *t != token);
        self.dialback.hellos.push_back((token, from, now));
        while self.dialback.hellos.len() > MAX_HELLOS {
            self.dialback.hellos.pop_front();
        }
    }

    /// A served request's hello never came.
    pub(super) fn dialback_hello_timeout(&mut self, _now: Time, token: u64) {
        if let Some(served) = self.dialback.waiting.remove(&token) {
            self.outputs.push_back(Output::Respond {
                inbound: served.inbound,
                response: Response::Error {
                    code: ErrorCode::NoRoute,
                },
            });
        }
    }

    /// Probes `to` (the requester's test socket) ourselves or through a helper.
    fn serve_dialback(
        &mut self,
        now: Time,
        token: u64,
        served: Served,
        to: SocketAddr,
    ) -> Option<Response> {
        if served.other_port {
            self.outputs.push_back(Output::DialBack {
                to,
                token,
                other_port: true,
            });
            self.emit(Event::DialBackServed);
            return Some(Response::DialBackSent);
        }
        // A helper on another IP than ours and the requester's, public ones first.
        let mine = self.mapped_ip();
        let helper = self
            .conns
            .iter()
            .filter(|(id, c)| {
                **id != served.from
                    && c.mode != ConnMode::Relayed
                    && c.remote.ip() != to.ip()
                    && Some(c.remote.ip()) != mine
                    && !self
                        .cfg
                        .listen_addrs
                        .iter()
                        .any(|l| l.ip() == c.remote.ip())
            })
            .min_by_key(|(id, _)| {
                let open = self.table.get(id).is_some_and(|c| c.nat.is_open());
                (!open, **id)
            })
            .map(|(id, _)| *id);
        let Some(helper) = helper else {
            return Some(Response::Error {
                code: ErrorCode::NoRoute,
            });
        };
        let key = self.fresh_id();
        self.dialback.via.insert(key, served.inbound);
        self.emit(Event::DialBackServed);
        self.send_request(
            now,
            helper,
            Vec::new(),
            Request::DialBackVia { token, to },
            Purpose::DialBackVia(key),
        );
        None
    }

    /// `from`, serving someone's dial-back, asks us to probe `to`.
    pub(super) fn on_dialback_via(
        &mut self,
        now: Time,
        from: NodeId,
        token: u64,
        to: SocketAddr,
    ) -> Response {
        let sane = !to.ip().is_unspecified() && !to.ip().is_multicast() && to.port() != 0;
        if !sane || self.direct_remote(&from).is_none() {
            return Response::Error {
                code: ErrorCode::BadRequest,
            };
        }
        if !self.allow_dialback(now, from) {
            return Response::Error {
                code: ErrorCode::RateLimited,
            };
        }
        self.outputs.push_back(Output::DialBack {
            to,
            token,
            other_port: false,
        });
        self.emit(Event::DialBackServed);
        Response::DialBackSent
    }

    /// The helper answered a dial-back we carried: pass the answer on.
    pub(super) fn dialback_via_answer(&mut self, key: u64, result: Result<Response, Failure>) {
        let Some(inbound) = self.dialback.via.remove(&key) else {
            return;
        };
        let response = match result {
            Ok(Response::DialBackSent) => Response::DialBackSent,
            _ => Response::Error {
                code: ErrorCode::NoRoute,
            },
        };
        self.outputs
            .push_back(Output::Respond { inbound, response });
    }

    fn allow_dialback(&mut self, now: Time, from: NodeId) -> bool {
        self.dialback_limiter.allow(now, from) && self.dialback_global.allow(now, GLOBAL)
    }

    // ----- telling subscribers -----

    /// Emits the node events for whatever changed in addresses, NAT type and
    /// reachability since subscribers were last told, and starts a dial-back test once
    /// the mapping turns out endpoint-independent.
    pub(super) fn note_reach(&mut self, now: Time) {
        let now_reach = Reach {
            addrs: self.self_addrs(),
            nat: self.nat_type(),
            reachable: self.reachable(),
        };
        let before = self.dialback.told.clone().unwrap_or(Reach {
            addrs: self.cfg.listen_addrs.clone(),
            nat: NatType::Unknown,
            reachable: false,
        });
        if now_reach == before {
            return;
        }
        if now_reach.addrs != before.addrs {
            self.emit(Event::Node(NodeEvent::LocalAddressesUpdated {
                addrs: now_reach.addrs.clone(),
            }));
        }
        if now_reach.nat != before.nat {
            self.emit(Event::Node(NodeEvent::NatTypeChanged {
                from: before.nat,
                to: now_reach.nat,
            }));
            let untested = self.filtering().is_none() && self.dialback.round.is_none();
            if now_reach.nat == NatType::Cone && untested && self.cfg.dialback_interval_ms > 0 {
                self.schedule_dialback(now);
            }
        }
        if now_reach.reachable != before.reachable {
            self.emit(Event::Node(NodeEvent::ReachabilityChanged {
                reachable: now_reach.reachable,
            }));
        }
        self.dialback.told = Some(now_reach);
    }
}
