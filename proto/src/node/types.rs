//! The types of the core's contract: ids, commands, results, events and outputs.

use std::net::SocketAddr;
use std::time::Duration;

use crate::claim::Claim;
use crate::graph::GraphChange;
use crate::id::NodeId;
use crate::kv::sync::SyncReport;
use crate::kv::tuple::{Tuple, TupleRefusal};
use crate::reach::{ConnMode, Filtering, NatType};
use crate::signal::BirthdayRole;
use crate::time::Time;
use crate::wire::{ErrorCode, Request, Response};

/// Identifies an outbound request or connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Identifies an inbound request, chosen by the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InboundId(pub u64);

/// Something the core does over time, that the shell may trace as one span: outputs name
/// the activity they serve ([`Output::Request`], [`Output::Connect`]) so the shell can hang
/// their spans under it. Ids are unique per node and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Activity {
    /// A connect operation (task, command or upgrade), from its plain dial to its end.
    Connect(u64),
    /// An iterative lookup.
    Lookup(u64),
    /// An inbound request the core is still working on (a signal it carries on).
    Inbound(InboundId),
}

/// What an [`Activity`] is, when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActivityKind {
    /// Connecting to `peer`.
    Connect {
        /// The peer.
        peer: NodeId,
    },
    /// Looking up `target`.
    Lookup {
        /// The id looked up.
        target: NodeId,
        /// Why: `task`, `bootstrap`, `refresh` or `connect` (finding a connect's target and
        /// who holds a connection to it).
        purpose: &'static str,
    },
}

/// Identifies a command given through [`Node::command`](super::Node::command).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandId(pub u64);

/// Why an outbound request or connect failed, as reported by the shell (or by a deadline).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// No answer before the deadline.
    Timeout,
    /// The peer could not be reached (no address, dial failed, connection lost).
    Unreachable,
    /// The handshake was refused (wrong network, bad key, identity mismatch).
    Refused,
    /// The peer answered with something that is not a valid answer.
    Protocol,
    /// The peer or we were shedding load.
    Busy,
}

impl Failure {
    /// Bounded label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Unreachable => "unreachable",
            Failure::Refused => "refused",
            Failure::Protocol => "protocol",
            Failure::Busy => "busy",
        }
    }
}

/// A successful connect, as reported by the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connected {
    /// How the connection was made.
    pub mode: ConnMode,
    /// The peer's address as seen on the connection.
    pub remote: SocketAddr,
    /// Random-port probes this side sprayed, if it birthday-probed as the easy side.
    pub birthday_probes: Option<u32>,
}

/// How the shell must try to reach a peer for an [`Output::Connect`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Path {
    /// Dial the addresses, all at once; the first handshake wins.
    Direct,
    /// Dial the addresses while punching: send probes carrying the token from the QUIC
    /// socket, dial any address a probe from the peer arrives from, and birthday-probe if
    /// the plan says so. The peer runs the same plan from its [`Output::Punch`].
    Punch(PunchPlan),
    /// Ask `relay` (over a live connection, or dialing `relay_addrs`) for a circuit to the
    /// peer, and run the QUIC handshake with the peer end to end through it.
    Relay {
        /// The relay.
        relay: NodeId,
        /// Where to dial the relay if no connection to it is live.
        relay_addrs: Vec<SocketAddr>,
    },
}

/// One side's part in a hole punch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PunchPlan {
    /// Where the peer may be. With birthday probing, the first is the address a carrier
    /// observed the peer at, and the only one the costly paths aim at (the spray at random
    /// ports of its IP, the hard side's sockets); the rest get plain probes only.
    pub peer_addrs: Vec<SocketAddr>,
    /// Carried in every probe, so probes of different punches are told apart.
    pub token: u64,
    /// This side's birthday-probing role, if any.
    pub birthday: Option<BirthdayRole>,
    /// Sockets the hard side opens.
    pub birthday_sockets: u16,
    /// Probes the easy side sprays.
    pub birthday_probes: u16,
    /// When to give up, from now.
    pub timeout_ms: u64,
}

impl PunchPlan {
    /// At most how many probe datagrams carrying this plan out sends, as the agent
    /// punches: each address probed with a back-off from 50 ms doubling to 1 s (at most
    /// `timeout_ms / 500 + 4` probes), the easy side's two spray rounds of `birthday_probes`,
    /// and each of the hard side's sockets sending once a second.
    pub fn probe_cost(&self) -> u32 {
        let secs = u32::try_from(self.timeout_ms / 1000).unwrap_or(u32::MAX);
        let plain = self.peer_addrs.len() as u32 * (secs.saturating_mul(2) + 4);
        let birthday = match self.birthday {
            None => 0,
            Some(BirthdayRole::Easy) => 2 * u32::from(self.birthday_probes),
            Some(BirthdayRole::Hard) => u32::from(self.birthday_sockets) * (secs + 1),
        };
        plain.saturating_add(birthday)
    }
}

/// One step of a connect: which path was tried and how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attempt {
    /// The path: direct, punched or relayed.
    pub path: ConnMode,
    /// `None` if it connected.
    pub failure: Option<Failure>,
    /// How long it took.
    pub elapsed: Duration,
}

/// The autonomous tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskKind {
    /// Ping a random known node.
    Ping,
    /// Look up a random id.
    Lookup,
    /// Connect to a random known node.
    Connect,
    /// Echo bytes off a random known node.
    Echo,
    /// Claim a random known node (the cross-signing exchange).
    Claim,
    /// Reconcile the key-value replica with a connected peer (its own timer, not weighted).
    KvSync,
}

impl TaskKind {
    /// Every kind, for label enumeration.
    pub const ALL: [TaskKind; 6] = [
        TaskKind::Ping,
        TaskKind::Lookup,
        TaskKind::Connect,
        TaskKind::Echo,
        TaskKind::Claim,
        TaskKind::KvSync,
    ];

    /// Bounded label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Ping => "ping",
            TaskKind::Lookup => "lookup",
            TaskKind::Connect => "connect",
            TaskKind::Echo => "echo",
            TaskKind::Claim => "claim",
            TaskKind::KvSync => "kv_sync",
        }
    }
}

/// How a task or command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskOutcome {
    /// It did what it set out to do.
    Ok,
    /// It failed for this reason.
    Failed(Failure),
    /// A lookup completed but did not find its target.
    NotFound,
    /// No known node to act on.
    NoPeers,
    /// Skipped because too much was already in flight.
    Skipped,
}

impl TaskOutcome {
    /// Bounded label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskOutcome::Ok => "ok",
            TaskOutcome::Failed(f) => f.as_str(),
            TaskOutcome::NotFound => "not_found",
            TaskOutcome::NoPeers => "no_peers",
            TaskOutcome::Skipped => "skipped",
        }
    }
}

/// Something asked of the node from outside the protocol (the control API, a test).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Connect to `peer`, looking it up first when its address is unknown. With `fresh`,
    /// the shell must open a new connection even if one exists.
    Connect {
        /// The node to reach.
        peer: NodeId,
        /// Open a new connection rather than reuse one.
        fresh: bool,
    },
    /// Open a fresh connection to `peer` through `relay` only (no direct or punched
    /// attempt): for measuring relays and for users who want a specific relay.
    ConnectVia {
        /// The node to reach.
        peer: NodeId,
        /// The relay; it must hold a live connection to `peer`.
        relay: NodeId,
    },
    /// Iterative lookup of `target`.
    Lookup {
        /// The id to find.
        target: NodeId,
    },
    /// Ping a known node.
    Ping {
        /// The node to ping.
        peer: NodeId,
    },
    /// Echo `len` bytes off a known node.
    Echo {
        /// The node to echo off.
        peer: NodeId,
        /// Payload size, at most [`MAX_ECHO_LEN`](crate::wire::MAX_ECHO_LEN).
        len: usize,
    },
    /// Claim `peer`: connect (any way), run the cross-signing exchange, keep the doubly
    /// signed claim (in [`CommandResult::claims`]).
    Claim {
        /// The node to claim.
        peer: NodeId,
    },
    /// Fetch `peer`'s claims over the network and check each signature; the ones that
    /// check are in [`CommandResult::claims`], the others are refused and counted.
    FetchClaims {
        /// Whose claims.
        peer: NodeId,
    },
}

/// The result of a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CommandResult {
    /// How it ended.
    pub outcome: TaskOutcome,
    /// Time from the command to its end.
    pub elapsed: Duration,
    /// For connects: how the connection was made.
    pub mode: Option<ConnMode>,
    /// For lookups: the closest nodes that answered, nearest first.
    pub closest: Vec<NodeId>,
    /// For connects: every path tried, in order.
    pub attempts: Vec<Attempt>,
    /// For relayed connects: the relay.
    pub relay: Option<NodeId>,
    /// For connects that birthday-probed as the easy side: probes sprayed.
    pub birthday_probes: Option<u32>,
    /// For claims: the doubly signed claim; for fetches: the peer's claims that checked.
    pub claims: Vec<Claim>,
}

/// Something that happened, for metrics, logs and callers of [`Node::command`](super::Node::command).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// The node completed its bootstrap and knows at least one live peer (or is the first).
    Joined,
    /// An autonomous task ended.
    TaskFinished {
        /// Which task.
        kind: TaskKind,
        /// How it ended.
        outcome: TaskOutcome,
        /// How long it took.
        elapsed: Duration,
    },
    /// A command ended.
    CommandFinished {
        /// The id [`Node::command`](super::Node::command) returned.
        id: CommandId,
        /// The result.
        result: CommandResult,
    },
    /// An iterative lookup ended (for any reason: task, command, bootstrap, refresh).
    LookupFinished {
        /// Whether the target itself was found.
        found: bool,
        /// Rounds of the deepest node queried.
        hops: u32,
        /// Nodes queried.
        queried: u32,
        /// Duration of the lookup.
        elapsed: Duration,
    },
    /// A request was answered after `rtt`.
    Rtt {
        /// Round-trip time of the request.
        rtt: Duration,
    },
    /// An outbound request failed.
    RequestFailed {
        /// Why.
        failure: Failure,
    },
    /// A contact entered a bucket.
    ContactAdded,
    /// A contact was parked in a full bucket's pending list.
    ContactPending,
    /// GC or staleness removed a contact.
    ContactEvicted,
    /// A connection was closed to keep the best `max_connections`.
    ConnectionPruned,
    /// An inbound request was answered with an error.
    InboundRefused {
        /// The error sent.
        code: ErrorCode,
    },
    /// One path of a connect ended (tasks, commands and upgrades alike).
    ConnectAttempt {
        /// The path tried.
        path: ConnMode,
        /// `None` if it connected.
        failure: Option<Failure>,
        /// How long it took.
        elapsed: Duration,
        /// The NAT type the peer advertised (in its signal answer, else as its contact in the
        /// node graph records it) when the attempt ended; `Unknown` if unknown.
        peer_nat: NatType,
    },
    /// A signal was handled (carried, acted on, or refused).
    Signal {
        /// What happened.
        outcome: SignalOutcome,
    },
    /// Something happened to a relay circuit through this node.
    Relay {
        /// What happened.
        event: RelayEvent,
    },
    /// A relayed connection was replaced by a better one.
    Upgraded {
        /// The new connection's mode.
        to: ConnMode,
    },
    /// An activity began (for tracing; metrics ignore it).
    ActivityStarted {
        /// Which.
        activity: Activity,
        /// The activity it is part of, if any (a connect's lookup).
        parent: Option<Activity>,
        /// What it is.
        kind: ActivityKind,
    },
    /// An activity ended (for tracing; metrics ignore it).
    ActivityEnded {
        /// Which.
        activity: Activity,
        /// Bounded outcome label (`ok`, a failure, `not_found`).
        outcome: &'static str,
        /// For a connect that succeeded: how.
        mode: Option<ConnMode>,
    },
    /// This node started punching towards a peer that signalled it.
    PunchStarted {
        /// Whether birthday probing is part of it.
        birthday: bool,
    },
    /// A dial-back test measured this node's NAT filtering.
    DialBack {
        /// What it found.
        filtering: Filtering,
    },
    /// Local discovery reported a node on our LAN.
    Discovered {
        /// It was not in the node graph yet.
        new: bool,
    },
    /// A node claim was stored, checked or refused.
    Claim {
        /// What happened.
        outcome: ClaimOutcome,
    },
    /// A key-value sync session we started ended.
    KvSync {
        /// What it did.
        report: SyncReport,
        /// From the first request to the end.
        elapsed: Duration,
    },
    /// Key-value sync messages crossed the wire (either role), in encoded bytes.
    KvTraffic {
        /// Bytes we sent.
        sent: usize,
        /// Bytes we received.
        received: usize,
        /// Coded symbols in them.
        symbols: usize,
    },
    /// Tuples from a peer (fetched or pushed) were merged.
    KvMerged {
        /// Tuples that changed the replica.
        changed: usize,
        /// Equal versions with different tuples.
        conflicts: u32,
        /// Tuples refused, each with its reason.
        rejected: Vec<TupleRefusal>,
    },
    /// This node served or helped with another node's dial-back test (probes sent or a
    /// helper asked).
    DialBackServed,
    /// A change of the node's state that applications subscribe to (the control API's
    /// event stream carries these; metrics count them by kind).
    Node(NodeEvent),
}

/// A change of the node's own state, as applications of a P2P node expect to be told of
/// it (libp2p's and NuNet's local-address, reachability, NAT-type and peer-connectedness
/// events). The core emits each once per change; the shell only carries them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeEvent {
    /// The addresses this node believes it can be reached at changed (mapped addresses
    /// first, then listen addresses).
    LocalAddressesUpdated {
        /// The new list.
        addrs: Vec<SocketAddr>,
    },
    /// Whether peers can reach this node unaided changed.
    ReachabilityChanged {
        /// The new value.
        reachable: bool,
    },
    /// The self-classified NAT type changed.
    NatTypeChanged {
        /// Before.
        from: NatType,
        /// After.
        to: NatType,
    },
    /// A connection to a peer came up (there was none before).
    PeerConnected {
        /// The peer.
        peer: NodeId,
        /// How.
        mode: ConnMode,
    },
    /// The last connection to a peer went away.
    PeerDisconnected {
        /// The peer.
        peer: NodeId,
        /// How it had been made.
        mode: ConnMode,
    },
    /// A relayed connection to a peer was replaced by a direct or punched one.
    ConnectionUpgraded {
        /// The peer.
        peer: NodeId,
        /// The old mode.
        from: ConnMode,
        /// The new mode.
        to: ConnMode,
    },
    /// This node admitted a relay circuit from `requester` to `target`.
    RelayCircuitOpened {
        /// Who asked for it.
        requester: NodeId,
        /// Where it leads.
        target: NodeId,
    },
    /// A relay circuit this node carried for `requester` ended.
    RelayCircuitClosed {
        /// Who had asked for it.
        requester: NodeId,
    },
    /// The impairment of this node's link changed (a fault was applied or healed).
    FaultObserved {
        /// The link impairment now in force.
        impairment: LinkImpairment,
    },
}

impl NodeEvent {
    /// Every kind, for label enumeration.
    pub const KINDS: [&'static str; 9] = [
        "local_addresses_updated",
        "reachability_changed",
        "nat_type_changed",
        "peer_connected",
        "peer_disconnected",
        "connection_upgraded",
        "relay_circuit_opened",
        "relay_circuit_closed",
        "fault_observed",
    ];

    /// Bounded label: the event's name on the stream and in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeEvent::LocalAddressesUpdated { .. } => Self::KINDS[0],
            NodeEvent::ReachabilityChanged { .. } => Self::KINDS[1],
            NodeEvent::NatTypeChanged { .. } => Self::KINDS[2],
            NodeEvent::PeerConnected { .. } => Self::KINDS[3],
            NodeEvent::PeerDisconnected { .. } => Self::KINDS[4],
            NodeEvent::ConnectionUpgraded { .. } => Self::KINDS[5],
            NodeEvent::RelayCircuitOpened { .. } => Self::KINDS[6],
            NodeEvent::RelayCircuitClosed { .. } => Self::KINDS[7],
            NodeEvent::FaultObserved { .. } => Self::KINDS[8],
        }
    }
}

/// A link impairment as the node is told of it: integers only, so events stay `Eq` and
/// hashable (the sim digests them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LinkImpairment {
    /// Datagrams dropped, in parts per million (100% = 1,000,000).
    pub loss_ppm: u32,
    /// Delay added to outbound datagrams, in milliseconds.
    pub delay_ms: u64,
    /// Jitter around the delay, in milliseconds.
    pub jitter_ms: u64,
}

/// What became of a node claim, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClaimOutcome {
    /// A doubly signed claim was stored (by either side of the exchange).
    Stored,
    /// A fetched claim checked.
    Verified,
    /// Refused: a signature did not verify, or the claim names the wrong nodes.
    Forged,
    /// Refused: a signature was missing.
    SinglySigned,
}

impl ClaimOutcome {
    /// Every outcome, for label enumeration.
    pub const ALL: [ClaimOutcome; 4] = [
        ClaimOutcome::Stored,
        ClaimOutcome::Verified,
        ClaimOutcome::Forged,
        ClaimOutcome::SinglySigned,
    ];

    /// Bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimOutcome::Stored => "stored",
            ClaimOutcome::Verified => "verified",
            ClaimOutcome::Forged => "forged",
            ClaimOutcome::SinglySigned => "singly_signed",
        }
    }
}

/// What became of a signal, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignalOutcome {
    /// We signed one to reach a peer.
    Sent,
    /// We carried one towards its target.
    Forwarded,
    /// A duplicate joined one already being carried.
    Coalesced,
    /// We were the target and started punching.
    Accepted,
    /// Refused: bad signature or chain.
    Forged,
    /// Refused: seen before or stale.
    Replayed,
    /// Refused: the source went over its rate limit.
    RateLimited,
    /// Refused: no live connection towards the target, or too many hops.
    NoRoute,
}

impl SignalOutcome {
    /// Bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalOutcome::Sent => "sent",
            SignalOutcome::Forwarded => "forwarded",
            SignalOutcome::Coalesced => "coalesced",
            SignalOutcome::Accepted => "accepted",
            SignalOutcome::Forged => "forged",
            SignalOutcome::Replayed => "replayed",
            SignalOutcome::RateLimited => "rate_limited",
            SignalOutcome::NoRoute => "no_route",
        }
    }
}

/// A relay circuit's life, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RelayEvent {
    /// Admitted.
    Opened,
    /// Refused (limits, no route, relaying disabled).
    Refused,
    /// Ended, for whatever reason.
    Closed,
}

impl RelayEvent {
    /// Bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayEvent::Opened => "opened",
            RelayEvent::Refused => "refused",
            RelayEvent::Closed => "closed",
        }
    }
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send `request` to `peer` (dialing `addrs` in order if no connection exists) and
    /// report the answer with [`Node::handle_response`](super::Node::handle_response) under `id`.
    Request {
        /// Correlates the answer.
        id: RequestId,
        /// The peer.
        peer: NodeId,
        /// Where to dial it if not connected, best first.
        addrs: Vec<SocketAddr>,
        /// What to send.
        request: Request,
        /// The activity it serves, for tracing.
        parent: Option<Activity>,
    },
    /// Answer the inbound request `inbound`.
    Respond {
        /// The id the shell gave in [`Node::handle_request`](super::Node::handle_request).
        inbound: InboundId,
        /// The answer.
        response: Response,
    },
    /// Connect to `peer` and report with [`Node::handle_connect_result`](super::Node::handle_connect_result) under `id`.
    Connect {
        /// Correlates the result.
        id: RequestId,
        /// The peer.
        peer: NodeId,
        /// Where to dial it, best first.
        addrs: Vec<SocketAddr>,
        /// Open a new connection even if one exists.
        fresh: bool,
        /// How to go about it.
        path: Path,
        /// Give up after this long.
        timeout_ms: u64,
        /// The connect operation it is a step of, for tracing.
        parent: Option<Activity>,
    },
    /// A peer signalled us: run our side of the punch towards it (probes, and birthday
    /// probing if the plan says so). The peer dials; we do not.
    Punch {
        /// The peer that will dial us.
        peer: NodeId,
        /// Our part.
        plan: PunchPlan,
        /// The inbound signal that asked for it, for tracing.
        parent: Option<Activity>,
    },
    /// Open a fresh UDP socket for a dial-back test (a new NAT mapping, which has sent to
    /// nobody yet): send a few hello datagrams carrying `token` from it to `server`, then
    /// report every dial-back probe with `token` it receives within `timeout_ms` with
    /// [`Node::handle_dialback_probe`](super::Node::handle_dialback_probe), and close it.
    DialBackListen {
        /// The server's P2P socket (the address on our connection to it).
        server: SocketAddr,
        /// Carried in the hellos and the probes.
        token: u64,
        /// How long to listen.
        timeout_ms: u64,
    },
    /// Send a few dial-back probes (small datagrams the receiving shell recognises, never
    /// QUIC) carrying `token` to `to`: from the P2P socket, or with `other_port` from
    /// another UDP socket on the same IP. The shell sends a fixed few, spaced against loss.
    /// Hellos arriving on the P2P socket go to
    /// [`Node::handle_dialback_hello`](super::Node::handle_dialback_hello).
    DialBack {
        /// Where.
        to: SocketAddr,
        /// Carried in every probe.
        token: u64,
        /// From another port than the P2P socket's.
        other_port: bool,
    },
    /// Close the connection to `peer`.
    Disconnect {
        /// The peer.
        peer: NodeId,
    },
    /// Write this change to the persisted node graph.
    Persist(GraphChange),
    /// Keep this doubly signed claim (replacing any earlier one with the same other node);
    /// give it back with [`Node::restore_claims`](super::Node::restore_claims) after a restart.
    StoreClaim(Claim),
    /// Keep this key-value tuple (replacing the stored one for its key); give the stored
    /// tuples back with [`Node::restore_kv`](super::Node::restore_kv) after a restart.
    StoreTuple(Tuple),
    /// Record this event.
    Event(Event),
}

/// A live connection as the core sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// How it was made.
    pub mode: ConnMode,
    /// The peer's address on it.
    pub remote: SocketAddr,
    /// When it came up.
    pub since: Time,
}
