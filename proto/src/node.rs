//! The node state machine: bootstrap, iterative lookups, peer exchange, GC of the node
//! graph, bucket refresh, peer choice and the autonomous task loop.
//!
//! [`Node`] is sans-io. It does not dial, send, sleep or read a clock: it is told what
//! happened (`handle_*`) and says what to do ([`Node::poll_output`], [`Node::poll_timeout`]).
//! Global behaviour lives here; per-connection I/O (streams, TLS, framing) lives in the shell.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};

use crate::graph::{BUCKETS, Contact, GraphChange, Observed, RoutingTable};
use crate::id::NodeId;
use crate::reach::{ConnMode, NatType};
use crate::signal::{
    self, BirthdayRole, Countersign, RateLimiter, ReplayCache, SecretKey, Signal, SignalRefusal,
    Strategy,
};
use crate::time::Time;
use crate::wire::{
    ErrorCode, MAX_ADDRS_PER_PEER, MAX_ECHO_LEN, MAX_NODES_PER_RESPONSE, PeerInfo, Request,
    Response,
};

/// Relative weights of the autonomous tasks. A zero weight disables that task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskWeights {
    /// Ping a random known node. Default 4.
    pub ping: u32,
    /// Look up a random id. Default 3.
    pub lookup: u32,
    /// Connect to a random known node. Default 2.
    pub connect: u32,
    /// Echo `echo_bytes` bytes off a random known node. Default 1.
    pub echo: u32,
}

impl Default for TaskWeights {
    fn default() -> Self {
        TaskWeights {
            ping: 4,
            lookup: 3,
            connect: 2,
            echo: 1,
        }
    }
}

/// Configuration of a [`Node`]. Every field has a documented default (see [`Default`]).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id: the public half of `key`.
    pub id: NodeId,
    /// This node's signing key; it signs and countersigns hole-punching signals.
    pub key: SecretKey,
    /// Addresses this node listens on; used to tell "no NAT" from a cone NAT.
    pub listen_addrs: Vec<SocketAddr>,
    /// Bootstrap nodes. Entries equal to `id` are ignored.
    pub seeds: Vec<(NodeId, SocketAddr)>,
    /// Seed of every random choice the node makes. Default 0.
    pub rng_seed: u64,
    /// Bucket size. Default 20.
    pub k: usize,
    /// Lookup parallelism. Default 3.
    pub alpha: usize,
    /// Pending contacts kept per full bucket. Default 10.
    pub pending_per_bucket: usize,
    /// Deadline of a request. Default 5,000 ms.
    pub request_timeout_ms: u64,
    /// Deadline of a connect. Default 10,000 ms.
    pub connect_timeout_ms: u64,
    /// Mean interval between idle-bucket refreshes; each bucket's next refresh is drawn
    /// uniformly within ±50% of it. Default 3,600,000 ms (1 h); chaos runs use seconds.
    pub bucket_refresh_ms: u64,
    /// How often GC looks at buckets with pending contacts. Default 30,000 ms.
    pub gc_interval_ms: u64,
    /// Contacts GC pings at once. Default 3.
    pub gc_parallelism: usize,
    /// Consecutive failures after which a contact not seen for `stale_after_ms` is dropped
    /// even without a replacement waiting. Default 5.
    pub max_consecutive_failures: u32,
    /// See `max_consecutive_failures`. Default 300,000 ms.
    pub stale_after_ms: u64,
    /// First retry delay of a failed bootstrap; doubles up to 30 s. Default 1,000 ms.
    pub bootstrap_retry_ms: u64,
    /// Mean autonomous tasks per second (Poisson). 0 disables the loop. Default 1.0.
    pub task_rate_per_s: f64,
    /// Task mix.
    pub task_weights: TaskWeights,
    /// Payload of the echo task, capped at the wire limit. Default 1,024 bytes.
    pub echo_bytes: usize,
    /// Connections kept open; above this the lowest-scoring idle ones are closed. Default 64.
    pub max_connections: usize,
    /// Lookups running at once; tasks beyond this are skipped as busy. Default 16.
    pub max_lookups: usize,
    /// Requests in flight at once; tasks beyond this are skipped as busy. Default 256.
    pub max_inflight: usize,
    /// Minimum interval between two persists of the same contact's counters. Default 30,000 ms.
    pub persist_interval_ms: u64,
    /// How long a plain dial of known addresses may take before signalling starts.
    /// Default 2,000 ms.
    pub direct_timeout_ms: u64,
    /// The same, for a peer that reported itself behind a NAT (cone or symmetric): a plain
    /// dial then only works on a shared LAN, through a hairpin or to a full cone, all of
    /// which answer within a round trip or two. Default 1,000 ms.
    pub direct_timeout_nated_ms: u64,
    /// How long a signalled hole punch (birthday probing included) may take. Default 8,000 ms.
    pub punch_timeout_ms: u64,
    /// How long opening a connection through a relay may take. Default 8,000 ms.
    pub relay_timeout_ms: u64,
    /// Signals older (or newer) than this by our clock are refused as replays. Default 30,000 ms.
    pub signal_max_age_ms: u64,
    /// Signals a single peer may make us carry or act on at once. Default 20.
    pub signal_burst: u32,
    /// Sustained signals per second per peer. Default 10.
    pub signal_per_s: f64,
    /// Sockets the symmetric side opens for birthday probing. Default 256.
    pub birthday_sockets: u16,
    /// Probes the other side sprays at random ports. Default 1,024 (≈98% success with 256
    /// sockets over the 64,512 ports of a randomising NAT).
    pub birthday_probes: u16,
    /// After a relayed connect, try to upgrade to a punched one after this long; 0 disables.
    /// Default 5,000 ms.
    pub upgrade_after_ms: u64,
    /// What this node accepts as a relay.
    pub relay: RelayLimits,
}

/// Limits of this node as a relay. They are advertised to the dialer in
/// [`Response::RelayAccepted`], enforced, and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Relay at all. Default true.
    pub enabled: bool,
    /// Circuits open at once through this node. Default 64.
    pub max_circuits: u32,
    /// Circuits open at once for one requester. Default 4.
    pub max_circuits_per_peer: u32,
    /// Bytes one circuit may carry, both directions together. Default 256 MiB.
    pub max_bytes: u64,
    /// How long one circuit may stay open. Default 600,000 ms (10 min).
    pub max_duration_ms: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            enabled: true,
            max_circuits: 64,
            max_circuits_per_peer: 4,
            max_bytes: 256 * 1024 * 1024,
            max_duration_ms: 600_000,
        }
    }
}

impl NodeConfig {
    /// Defaults for the node whose signing key is `key`.
    pub fn new(key: SecretKey) -> NodeConfig {
        NodeConfig {
            id: key.node_id(),
            key,
            listen_addrs: Vec::new(),
            seeds: Vec::new(),
            rng_seed: 0,
            k: 20,
            alpha: 3,
            pending_per_bucket: 10,
            request_timeout_ms: 5_000,
            connect_timeout_ms: 10_000,
            bucket_refresh_ms: 3_600_000,
            gc_interval_ms: 30_000,
            gc_parallelism: 3,
            max_consecutive_failures: 5,
            stale_after_ms: 300_000,
            bootstrap_retry_ms: 1_000,
            task_rate_per_s: 1.0,
            task_weights: TaskWeights::default(),
            echo_bytes: 1024,
            max_connections: 64,
            max_lookups: 16,
            max_inflight: 256,
            persist_interval_ms: 30_000,
            direct_timeout_ms: 2_000,
            direct_timeout_nated_ms: 1_000,
            punch_timeout_ms: 8_000,
            relay_timeout_ms: 8_000,
            signal_max_age_ms: 30_000,
            signal_burst: 20,
            signal_per_s: 10.0,
            birthday_sockets: 256,
            birthday_probes: 1024,
            upgrade_after_ms: 5_000,
            relay: RelayLimits::default(),
        }
    }
}

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

/// Identifies a command given through [`Node::command`].
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
    /// Where the peer may be: its address as seen by a node it talks to, then its listen
    /// addresses.
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
}

impl TaskKind {
    /// Every kind, for label enumeration.
    pub const ALL: [TaskKind; 4] = [
        TaskKind::Ping,
        TaskKind::Lookup,
        TaskKind::Connect,
        TaskKind::Echo,
    ];

    /// Bounded label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Ping => "ping",
            TaskKind::Lookup => "lookup",
            TaskKind::Connect => "connect",
            TaskKind::Echo => "echo",
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
        /// Payload size, at most [`MAX_ECHO_LEN`].
        len: usize,
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
}

/// Something that happened, for metrics, logs and callers of [`Node::command`].
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
        /// The id [`Node::command`] returned.
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
    /// report the answer with [`Node::handle_response`] under `id`.
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
        /// The id the shell gave in [`Node::handle_request`].
        inbound: InboundId,
        /// The answer.
        response: Response,
    },
    /// Connect to `peer` and report with [`Node::handle_connect_result`] under `id`.
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
    /// Close the connection to `peer`.
    Disconnect {
        /// The peer.
        peer: NodeId,
    },
    /// Write this change to the persisted node graph.
    Persist(GraphChange),
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Deadline(RequestId),
    Task,
    Gc,
    Refresh,
    Bootstrap,
    Upgrade(NodeId),
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
}

/// Where a connect operation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Direct,
    Signal,
    Punch,
    Relay,
}

#[derive(Clone, Debug)]
struct ConnectState {
    peer: NodeId,
    fresh: bool,
    stage: Stage,
    stage_started: Time,
    attempts: Vec<Attempt>,
    looked_up: bool,
    /// Go straight to signalling (an upgrade: plain dials are known to fail).
    skip_direct: bool,
    /// Nodes to ask to carry our signal, best first.
    signallers: Vec<(NodeId, Vec<SocketAddr>)>,
    next_signaller: usize,
    /// The node that holds a live connection to the peer (relay candidate).
    via: Option<NodeId>,
    my_nat: NatType,
    /// The NAT type the peer advertised: its contact's at the start, then its signal
    /// answer's. Only labels the attempts' metrics.
    peer_nat: NatType,
    token: u64,
    relay: Option<NodeId>,
    birthday_probes: Option<u32>,
}

/// A signal we are carrying, and everyone waiting for its answer.
#[derive(Clone, Debug)]
struct Forward {
    key: (NodeId, NodeId),
    inbounds: Vec<InboundId>,
    /// We deliver it to the target ourselves (so we fill in its address).
    last_hop: bool,
    target: NodeId,
}

type OpId = u64;
type LookupId = u64;

#[derive(Clone, Copy, Debug)]
enum LookupPurpose {
    Op(OpId),
    Bootstrap,
    Refresh,
    ConnectTarget { op: OpId },
}

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
}

#[derive(Clone, Debug)]
struct Pending {
    peer: NodeId,
    sent: Time,
    purpose: Purpose,
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
struct Lookup {
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
/// Observed addresses remembered, most recent first.
const MAX_OBSERVED: usize = 16;
/// Peers from one `Introduce` answer that get verified with a ping.
const INTRODUCE_VERIFY: usize = 3;
/// Cap of the bootstrap retry backoff.
const BOOTSTRAP_BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Refresh lookups started per refresh check, so a cold table does not burst.
const REFRESH_PER_CHECK: usize = 2;
/// Signallers tried per connect.
const MAX_SIGNALLERS: usize = 3;
/// Requesters waiting on one carried signal; more are refused as busy.
const MAX_COALESCED: usize = 4;
/// Signals carried at once.
const MAX_FORWARDS: usize = 256;
/// Sources the signal rate limiter tracks.
const RATE_LIMIT_SOURCES: usize = 1024;
/// Signal nonces remembered against replay.
const REPLAY_CAPACITY: usize = 4096;
/// Extra time the core gives the shell beyond a path's own timeout before declaring it dead.
const SHELL_SLACK: Duration = Duration::from_secs(2);

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
    conns: HashMap<NodeId, ConnInfo>,
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
    last_persist: HashMap<NodeId, Time>,
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
    replays: ReplayCache,
    circuits: HashMap<NodeId, u32>,
    circuits_total: u32,
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
        Node {
            cfg,
            rng,
            table,
            conns: HashMap::new(),
            outputs: VecDeque::new(),
            timers: BTreeSet::new(),
            next_id: 1,
            pending: HashMap::new(),
            busy: HashMap::new(),
            ops: HashMap::new(),
            lookups: HashMap::new(),
            gc_probing: HashSet::new(),
            consecutive_failures: HashMap::new(),
            last_persist: HashMap::new(),
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
            replays: ReplayCache::new(cfg_max_age, REPLAY_CAPACITY),
            circuits: HashMap::new(),
            circuits_total: 0,
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

    /// Live connections.
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

    /// Self-classification from observed addresses. Needs two distinct observers; filtering
    /// behaviour is not probed yet, so an endpoint-independent mapping behind a NAT is `Cone`.
    /// Observations equal to a listen address (peers on our own LAN, or no NAT at all) say
    /// nothing about a NAT; any other one means we are behind one.
    pub fn nat_type(&self) -> NatType {
        let observers: HashSet<NodeId> = self.observed.iter().map(|(_, o)| *o).collect();
        if observers.len() < 2 {
            return NatType::Unknown;
        }
        // Only the most recent observation per observer counts: a remap is not EDM.
        let mut latest: HashMap<NodeId, SocketAddr> = HashMap::new();
        for (a, o) in &self.observed {
            latest.entry(*o).or_insert(*a);
        }
        let mapped: HashSet<SocketAddr> = latest
            .values()
            .filter(|a| !self.cfg.listen_addrs.contains(a))
            .copied()
            .collect();
        match mapped.len() {
            0 => NatType::Public,
            1 => NatType::Cone,
            _ => NatType::Symmetric,
        }
    }

    /// Whether the task loop is paused.
    pub fn tasks_paused(&self) -> bool {
        self.tasks_paused
    }

    /// Outbound requests and connects in flight.
    pub fn inflight(&self) -> usize {
        self.pending.len()
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
        self.conns.insert(
            peer,
            ConnInfo {
                mode,
                remote,
                since: now,
            },
        );
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
        }
        self.emit(Event::Relay {
            event: RelayEvent::Closed,
        });
    }

    /// Circuits currently relayed through this node.
    pub fn relay_circuits(&self) -> u32 {
        self.circuits_total
    }

    /// Whether peers can reach this node without its help: it has no NAT. (A dial-back
    /// test of filtering is not implemented, so a full-cone NAT shows as not reachable.)
    pub fn reachable(&self) -> bool {
        self.nat_type() == NatType::Public
    }

    /// The connection to `peer` closed.
    pub fn handle_connection_down(&mut self, _now: Time, peer: NodeId) {
        self.conns.remove(&peer);
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
                for c in self.table.closest(&target, max + 2) {
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
            }
        }
    }

    // ----- outputs -----

    /// The next thing for the shell to do.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
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
            },
        );
        id
    }

    fn refresh_delay(&mut self) -> Duration {
        let base = self.cfg.bucket_refresh_ms.max(1) as f64;
        Duration::from_millis((base * self.rng.random_range(0.5..1.5)) as u64)
    }

    fn refresh_check_interval(&self) -> Duration {
        Duration::from_millis((self.cfg.bucket_refresh_ms / 10).clamp(100, 60_000))
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
            | Purpose::Op(_) => None,
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

    fn addrs_of(&self, peer: &NodeId) -> Vec<SocketAddr> {
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

    fn observe_contact(&mut self, now: Time, contact: Contact, persist: bool) {
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
    fn persist(&mut self, now: Time, id: NodeId, force: bool) {
        let interval = Duration::from_millis(self.cfg.persist_interval_ms);
        if !force
            && let Some(last) = self.last_persist.get(&id)
            && now.since(*last) < interval
        {
            return;
        }
        if let Some(c) = self.table.get(&id) {
            self.last_persist.insert(id, now);
            self.outputs
                .push_back(Output::Persist(GraphChange::Upsert(c.clone())));
        }
    }

    fn note_success(&mut self, now: Time, peer: NodeId, rtt: Duration) {
        self.consecutive_failures.remove(&peer);
        self.emit(Event::Rtt { rtt });
        if let Some(c) = self.table.get_mut(&peer) {
            c.successes = c.successes.saturating_add(1);
            c.note_rtt(rtt);
            c.last_seen = now;
            self.persist(now, peer, false);
        }
    }

    fn note_failure(&mut self, now: Time, peer: NodeId, failure: Failure) {
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

    fn evict(&mut self, now: Time, peer: NodeId) {
        let (removed, promoted) = self.table.evict(&peer);
        if removed.is_some() {
            self.emit(Event::ContactEvicted);
            self.consecutive_failures.remove(&peer);
            self.last_persist.remove(&peer);
            self.outputs
                .push_back(Output::Persist(GraphChange::Remove(peer)));
        }
        if let Some(p) = promoted {
            self.emit(Event::ContactAdded);
            self.persist(now, p.id, true);
        }
    }

    fn note_observed(&mut self, observer: NodeId, addr: SocketAddr) {
        self.observed.retain(|(_, o)| *o != observer);
        self.observed.push_front((addr, observer));
        self.observed.truncate(MAX_OBSERVED);
    }

    /// Keeps at most `max_connections`, closing the lowest-scoring idle ones.
    fn prune_connections(&mut self, now: Time, keep: NodeId) {
        while self.conns.len() > self.cfg.max_connections {
            let worst = self
                .conns
                .keys()
                .filter(|p| **p != keep && !self.busy.contains_key(p))
                .map(|p| (*p, self.table.get(p).map_or(0.0, |c| c.score(now))))
                .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            let Some((peer, _)) = worst else { break };
            self.conns.remove(&peer);
            self.emit(Event::ConnectionPruned);
            self.outputs.push_back(Output::Disconnect { peer });
        }
    }

    // ----- bootstrap and peer exchange -----

    fn bootstrap(&mut self, now: Time) {
        let seeds: Vec<(NodeId, SocketAddr)> = self
            .cfg
            .seeds
            .iter()
            .copied()
            .filter(|(id, _)| *id != self.cfg.id)
            .collect();
        // Restored contacts most recently seen first: they are the likeliest to be alive.
        let mut restored: Vec<Contact> = self.table.iter().cloned().collect();
        restored.sort_by_key(|c| std::cmp::Reverse(c.last_seen));
        restored.truncate(8);
        if seeds.is_empty() && restored.is_empty() {
            self.mark_joined();
            return;
        }
        self.bootstrapping = true;
        for (id, addr) in seeds {
            let mut addrs = self.addrs_of(&id);
            if !addrs.contains(&addr) {
                addrs.insert(0, addr);
            }
            let nonce = self.rng.next_u64();
            self.send_request(now, id, addrs, Request::Ping { nonce }, Purpose::Bootstrap);
        }
        for c in restored {
            if self.cfg.seeds.iter().any(|(id, _)| *id == c.id) {
                continue;
            }
            let nonce = self.rng.next_u64();
            self.send_request(
                now,
                c.id,
                c.addrs.clone(),
                Request::Ping { nonce },
                Purpose::Bootstrap,
            );
        }
    }

    fn bootstrap_answer(&mut self, now: Time, peer: NodeId, ok: bool) {
        if ok && self.bootstrapping {
            self.bootstrapping = false;
            let addrs = self.addrs_of(&peer);
            self.send_request(
                now,
                peer,
                addrs,
                Request::Introduce { max: 16 },
                Purpose::Introduce,
            );
            self.start_lookup(now, self.cfg.id, LookupPurpose::Bootstrap);
            return;
        }
        let still_waiting = self
            .pending
            .values()
            .any(|p| matches!(p.purpose, Purpose::Bootstrap));
        if self.bootstrapping && !still_waiting {
            self.retry_bootstrap(now);
        }
    }

    fn retry_bootstrap(&mut self, now: Time) {
        self.bootstrapping = false;
        let delay = self.bootstrap_backoff;
        self.bootstrap_backoff = (delay * 2).min(BOOTSTRAP_BACKOFF_CAP);
        self.set_timer(now + delay, Timer::Bootstrap);
    }

    fn mark_joined(&mut self) {
        if !self.joined {
            self.joined = true;
            self.emit(Event::Joined);
        }
    }

    fn introduce_answer(&mut self, now: Time, result: Result<Response, Failure>) {
        let Ok(Response::Nodes { peers }) = result else {
            return;
        };
        let fresh: Vec<PeerInfo> = peers
            .into_iter()
            .filter(|p| {
                p.id != self.cfg.id && self.table.get(&p.id).is_none() && !p.addrs.is_empty()
            })
            .take(INTRODUCE_VERIFY)
            .collect();
        for p in fresh {
            let nonce = self.rng.next_u64();
            self.send_request(now, p.id, p.addrs, Request::Ping { nonce }, Purpose::Verify);
        }
    }

    // ----- lookups -----

    fn start_lookup(&mut self, now: Time, target: NodeId, purpose: LookupPurpose) {
        let cands: Vec<Cand> = self
            .table
            .closest(&target, self.cfg.k)
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

    fn lookup_answer(
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

    // ----- operations (tasks and commands) -----

    fn start_connect(&mut self, now: Time, op: OpId, peer: NodeId, fresh: bool) {
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
        match self.table.get(peer).map(|c| c.nat) {
            Some(NatType::Cone | NatType::Symmetric) => self.cfg.direct_timeout_nated_ms,
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

    fn start_ping(&mut self, now: Time, op: OpId, peer: NodeId) {
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

    fn start_echo(&mut self, now: Time, op: OpId, peer: NodeId, len: usize) {
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

    fn op_answer(&mut self, now: Time, op: OpId, result: Result<Response, Failure>) {
        let expected = self.ops.get(&op).and_then(|o| o.echo.clone());
        let outcome = match (result, expected) {
            (Ok(Response::Pong { .. }), None) => TaskOutcome::Ok,
            (Ok(Response::Echo { payload }), Some(sent)) if payload == sent => TaskOutcome::Ok,
            (Ok(_), _) => TaskOutcome::Failed(Failure::Protocol),
            (Err(f), _) => TaskOutcome::Failed(f),
        };
        self.finish_op(now, op, outcome, None, Vec::new());
    }

    fn finish_op(
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
                },
            }),
        }
    }

    fn schedule_task(&mut self, now: Time) {
        let rate = self.cfg.task_rate_per_s;
        if !(rate > 0.0 && rate.is_finite()) {
            return;
        }
        // Exponential inter-arrival times make the task stream a Poisson process.
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        let secs = (-u.ln() / rate).min(3600.0);
        self.set_timer(now + Duration::from_secs_f64(secs), Timer::Task);
    }

    fn run_task(&mut self, now: Time) {
        self.schedule_task(now);
        if self.tasks_paused || !self.joined {
            return;
        }
        let w = self.cfg.task_weights;
        let total =
            u64::from(w.ping) + u64::from(w.lookup) + u64::from(w.connect) + u64::from(w.echo);
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
            TaskKind::Lookup => {}
        }
    }

    // ----- GC and refresh -----

    fn run_gc(&mut self, now: Time) {
        self.set_timer(
            now + Duration::from_millis(self.cfg.gc_interval_ms.max(1)),
            Timer::Gc,
        );
        for b in self.table.buckets_with_pending() {
            for peer in self.table.oldest(b, self.cfg.gc_parallelism) {
                if self.gc_probing.len() >= self.cfg.gc_parallelism {
                    return;
                }
                if !self.gc_probing.insert(peer) {
                    continue;
                }
                let addrs = self.addrs_of(&peer);
                let nonce = self.rng.next_u64();
                self.send_request(now, peer, addrs, Request::Ping { nonce }, Purpose::Gc);
            }
        }
    }

    fn gc_answer(&mut self, now: Time, peer: NodeId, ok: bool) {
        self.gc_probing.remove(&peer);
        if !ok {
            self.evict(now, peer);
        }
    }

    fn run_refresh(&mut self, now: Time) {
        self.set_timer(now + self.refresh_check_interval(), Timer::Refresh);
        if !self.joined {
            return;
        }
        let Some(low) = self.table.lowest_nonempty() else {
            return;
        };
        let mut started = 0;
        for b in low..BUCKETS {
            if started >= REFRESH_PER_CHECK || self.lookups.len() >= self.cfg.max_lookups {
                break;
            }
            // A bucket is refreshed when its jittered deadline has passed and it has been
            // idle for at least half the refresh period.
            let min_idle = Duration::from_millis(self.cfg.bucket_refresh_ms / 2);
            if now < self.next_refresh[b] || now.since(self.table.last_activity(b)) < min_idle {
                continue;
            }
            self.next_refresh[b] = now + self.refresh_delay();
            self.table.touch(b, now);
            let target = self.cfg.id.random_in_bucket(b, &mut self.rng);
            self.start_lookup(now, target, LookupPurpose::Refresh);
            started += 1;
        }
    }
}

/// Connectivity: the connect strategy (direct, then signalled punch, then relay), carrying
/// signals for others, and relay admission.
impl Node {
    /// Where this node believes it can be reached, for signals: the most recently observed
    /// mapped (non-listen) address first, then the other observed ones, then the listen
    /// addresses.
    fn self_addrs(&self) -> Vec<SocketAddr> {
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

    /// The peer's address on a live connection that is not relayed.
    fn direct_remote(&self, peer: &NodeId) -> Option<SocketAddr> {
        self.conns
            .get(peer)
            .filter(|c| c.mode != ConnMode::Relayed)
            .map(|c| c.remote)
    }

    fn now_ms(now: Time) -> u64 {
        now.as_millis()
    }

    /// A signal arrived from `from`. Returns the immediate answer, or `None` when it was
    /// carried on and the answer will come later.
    fn on_signal(
        &mut self,
        now: Time,
        from: NodeId,
        inbound: InboundId,
        signal: Signal,
        hops: Vec<Countersign>,
    ) -> Option<Response> {
        let refuse = |this: &mut Node, outcome: SignalOutcome, code: ErrorCode| {
            this.emit(Event::Signal { outcome });
            Some(Response::Error { code })
        };
        if !self.limiter.allow(now, from) {
            return refuse(self, SignalOutcome::RateLimited, ErrorCode::RateLimited);
        }
        match signal::check_chain(&signal, &hops, &from) {
            Ok(()) => {}
            Err(SignalRefusal::TooManyHops) => {
                return refuse(self, SignalOutcome::NoRoute, ErrorCode::NoRoute);
            }
            Err(_) => return refuse(self, SignalOutcome::Forged, ErrorCode::Forbidden),
        }
        if signal.to == self.cfg.id {
            if self.replays.check_and_insert(now, &signal).is_err() {
                return refuse(self, SignalOutcome::Replayed, ErrorCode::Forbidden);
            }
            // The requester's address as the first carrier saw it; if it came straight from
            // the requester, as we see it.
            let first = hops
                .first()
                .map(|h| h.observed)
                .or_else(|| self.direct_remote(&signal.from));
            // The requester's own public claim first (the first carrier may share its LAN and
            // see a private address), then what the first carrier saw.
            let mut peer_addrs: Vec<SocketAddr> = Vec::new();
            for a in signal.from_addrs.iter().copied().chain(first) {
                if !peer_addrs.contains(&a) && peer_addrs.len() < MAX_ADDRS_PER_PEER {
                    peer_addrs.push(a);
                }
            }
            if let Some(c) = self.table.get(&signal.from) {
                for a in &c.addrs {
                    if !peer_addrs.contains(a) && peer_addrs.len() < MAX_ADDRS_PER_PEER {
                        peer_addrs.push(*a);
                    }
                }
            }
            if let Strategy::Punch { birthday } = signal::strategy(self.nat_type(), signal.from_nat)
                && !peer_addrs.is_empty()
            {
                self.emit(Event::PunchStarted {
                    birthday: birthday.is_some(),
                });
                self.outputs.push_back(Output::Punch {
                    peer: signal.from,
                    plan: PunchPlan {
                        peer_addrs,
                        token: signal.nonce,
                        birthday,
                        birthday_sockets: self.cfg.birthday_sockets,
                        birthday_probes: self.cfg.birthday_probes,
                        timeout_ms: self.cfg.punch_timeout_ms,
                    },
                    parent: Some(Activity::Inbound(inbound)),
                });
            }
            self.emit(Event::Signal {
                outcome: SignalOutcome::Accepted,
            });
            return Some(Response::SignalAnswer {
                target_nat: self.nat_type(),
                target_addr: None,
                target_addrs: self.self_addrs(),
                via: None,
            });
        }
        // Carry it one hop further.
        let key = (signal.from, signal.to);
        if let Some(fid) = self.forward_keys.get(&key).copied()
            && let Some(f) = self.forwards.get_mut(&fid)
        {
            if f.inbounds.len() >= MAX_COALESCED {
                return refuse(self, SignalOutcome::RateLimited, ErrorCode::Busy);
            }
            f.inbounds.push(inbound);
            self.emit(Event::Signal {
                outcome: SignalOutcome::Coalesced,
            });
            return None;
        }
        let Some(observed) = self.direct_remote(&from) else {
            return refuse(self, SignalOutcome::NoRoute, ErrorCode::NoRoute);
        };
        if hops.len() + 1 > signal::MAX_SIGNAL_HOPS || self.forwards.len() >= MAX_FORWARDS {
            return refuse(self, SignalOutcome::NoRoute, ErrorCode::NoRoute);
        }
        let last_hop = self.direct_remote(&signal.to).is_some();
        let next = if last_hop {
            Some(signal.to)
        } else {
            // Greedy: the connected peer closest to the target that is closer than we are
            // and not already on the path.
            let mine = self.cfg.id.distance(&signal.to);
            self.conns
                .iter()
                .filter(|(id, c)| {
                    c.mode != ConnMode::Relayed
                        && **id != from
                        && **id != signal.from
                        && !hops.iter().any(|h| h.by == **id)
                        && id.distance(&signal.to) < mine
                })
                .map(|(id, _)| *id)
                .min_by_key(|id| id.distance(&signal.to))
        };
        let Some(next) = next else {
            return refuse(self, SignalOutcome::NoRoute, ErrorCode::NoRoute);
        };
        let mut hops = hops;
        let index = hops.len();
        hops.push(Countersign::new(&self.cfg.key, &signal, index, observed));
        let fid = self.fresh_id();
        self.forwards.insert(
            fid,
            Forward {
                key,
                inbounds: vec![inbound],
                last_hop,
                target: signal.to,
            },
        );
        self.forward_keys.insert(key, fid);
        self.emit(Event::Signal {
            outcome: SignalOutcome::Forwarded,
        });
        self.send_request(
            now,
            next,
            Vec::new(),
            Request::Signal {
                signal,
                hops,
                trace: None,
            },
            Purpose::Forward(fid),
        );
        None
    }

    /// The next hop answered a signal we carried: pass the answer to everyone waiting.
    fn forward_answer(
        &mut self,
        _now: Time,
        fid: u64,
        _next: NodeId,
        result: Result<Response, Failure>,
    ) {
        let Some(f) = self.forwards.remove(&fid) else {
            return;
        };
        if self.forward_keys.get(&f.key) == Some(&fid) {
            self.forward_keys.remove(&f.key);
        }
        let response = match result {
            Ok(Response::SignalAnswer {
                target_nat,
                target_addr,
                target_addrs,
                via,
            }) => {
                if f.last_hop {
                    Response::SignalAnswer {
                        target_nat,
                        target_addr: self.direct_remote(&f.target),
                        target_addrs,
                        via: Some(self.cfg.id),
                    }
                } else {
                    Response::SignalAnswer {
                        target_nat,
                        target_addr,
                        target_addrs,
                        via,
                    }
                }
            }
            Ok(Response::Error { code }) => Response::Error { code },
            Ok(_) => Response::Error {
                code: ErrorCode::BadRequest,
            },
            Err(Failure::Busy) => Response::Error {
                code: ErrorCode::Busy,
            },
            Err(_) => Response::Error {
                code: ErrorCode::NoRoute,
            },
        };
        for inbound in f.inbounds {
            self.outputs.push_back(Output::Respond {
                inbound,
                response: response.clone(),
            });
        }
    }

    fn relay_accepted(&self) -> Response {
        Response::RelayAccepted {
            max_bytes: self.cfg.relay.max_bytes,
            max_duration_ms: self.cfg.relay.max_duration_ms,
        }
    }

    /// Admission of a circuit from `from` to `target` through us.
    fn on_relay_open(&mut self, from: NodeId, target: NodeId) -> Response {
        let limits = self.cfg.relay;
        let code = if !limits.enabled {
            Some(ErrorCode::Refused)
        } else if target == from
            || target == self.cfg.id
            || self.direct_remote(&target).is_none()
            || self.direct_remote(&from).is_none()
        {
            // No circuits over circuits: both legs must be real connections.
            Some(ErrorCode::NoRoute)
        } else if self.circuits_total >= limits.max_circuits
            || self.circuits.get(&from).copied().unwrap_or(0) >= limits.max_circuits_per_peer
        {
            Some(ErrorCode::Refused)
        } else {
            None
        };
        if let Some(code) = code {
            self.emit(Event::Relay {
                event: RelayEvent::Refused,
            });
            return Response::Error { code };
        }
        *self.circuits.entry(from).or_insert(0) += 1;
        self.circuits_total += 1;
        self.emit(Event::Relay {
            event: RelayEvent::Opened,
        });
        self.relay_accepted()
    }

    /// The lookup a connect needed is done.
    fn connect_looked_up(
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

    fn connect_succeeded(&mut self, now: Time, op: OpId, c: Connected) {
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
        self.finish_op(now, op, TaskOutcome::Ok, Some(c.mode), Vec::new());
    }

    fn connect_failed(&mut self, now: Time, op: OpId, f: Failure) {
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
    fn signal_answer(&mut self, now: Time, op: OpId, result: Result<Response, Failure>) {
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
                let mut addrs: Vec<SocketAddr> = Vec::new();
                let claimed = target_addrs.into_iter().chain(target_addr);
                for a in claimed.chain(self.addrs_of(&peer)) {
                    if !addrs.contains(&a) && addrs.len() < MAX_ADDRS_PER_PEER {
                        addrs.push(a);
                    }
                }
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
    fn start_connect_via(&mut self, now: Time, op: OpId, peer: NodeId, relay: NodeId) {
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
    fn try_upgrade(&mut self, now: Time, peer: NodeId) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn drain(n: &mut Node) -> Vec<Output> {
        std::iter::from_fn(|| n.poll_output()).collect()
    }

    /// Answers every ping the node sends after `rtt`, as a shell would.
    fn answer_pings(n: &mut Node, now: Time, rtt: Duration) {
        for out in drain(n) {
            if let Output::Request {
                id,
                request: Request::Ping { nonce },
                ..
            } = out
            {
                n.handle_response(
                    now + rtt,
                    id,
                    Ok(Response::Pong {
                        nonce,
                        observed: None,
                        nat: NatType::Unknown,
                    }),
                );
            }
        }
    }

    #[test]
    fn peer_choice_closes_the_slowest_idle_connection() {
        let mut cfg = NodeConfig::new(SecretKey::from_bytes([0; 32]));
        cfg.max_connections = 3;
        cfg.task_rate_per_s = 0.0;
        let mut n = Node::new(cfg, Vec::new());
        let now = Time::from_millis(1_000);
        let peers: Vec<NodeId> = (1..=4u8).map(|i| NodeId([i; 32])).collect();
        // Three connections with RTTs of 200, 5 and 50 ms.
        for (i, rtt) in [200u64, 5, 50].into_iter().enumerate() {
            n.handle_connection_up(now, peers[i], addr(i as u16), ConnMode::Direct);
            n.command(now, Command::Ping { peer: peers[i] });
            answer_pings(&mut n, now, Duration::from_millis(rtt));
        }
        drain(&mut n);
        // A fourth connection exceeds the limit: the 200 ms peer goes.
        n.handle_connection_up(now, peers[3], addr(9), ConnMode::Direct);
        let closed: Vec<NodeId> = drain(&mut n)
            .into_iter()
            .filter_map(|o| match o {
                Output::Disconnect { peer } => Some(peer),
                _ => None,
            })
            .collect();
        assert_eq!(closed, vec![peers[0]]);
        assert_eq!(n.connections().count(), 3);
    }

    #[test]
    fn gc_evicts_silent_contacts_of_full_buckets_and_promotes_pending_ones() {
        let mut cfg = NodeConfig::new(SecretKey::from_bytes([0; 32]));
        let me = cfg.id;
        cfg.k = 2;
        cfg.task_rate_per_s = 0.0;
        cfg.gc_interval_ms = 1_000;
        let mut n = Node::new(cfg, Vec::new());
        n.start(Time::ZERO);
        drain(&mut n);
        let mut rng = StdRng::seed_from_u64(3);
        let ids: Vec<NodeId> = (0..3).map(|_| me.random_in_bucket(250, &mut rng)).collect();
        for (i, id) in ids.iter().enumerate() {
            n.handle_connection_up(
                Time::from_millis(i as u64),
                *id,
                addr(i as u16),
                ConnMode::Direct,
            );
        }
        assert_eq!(n.graph().len(), 2);
        assert_eq!(n.graph().pending_len(), 1);
        drain(&mut n);
        // GC pings the two oldest; only the second answers.
        n.handle_timeout(Time::from_millis(1_000));
        let pings: Vec<(RequestId, NodeId)> = drain(&mut n)
            .into_iter()
            .filter_map(|o| match o {
                Output::Request {
                    id,
                    peer,
                    request: Request::Ping { .. },
                    ..
                } => Some((id, peer)),
                _ => None,
            })
            .collect();
        assert_eq!(
            pings.len(),
            2,
            "GC pings the oldest contacts of the full bucket"
        );
        for (id, peer) in pings {
            let t = Time::from_millis(1_010);
            if peer == ids[0] {
                n.handle_response(t, id, Err(Failure::Timeout));
            } else {
                n.handle_response(
                    t,
                    id,
                    Ok(Response::Pong {
                        nonce: 0,
                        observed: None,
                        nat: NatType::Unknown,
                    }),
                );
            }
        }
        let outs = drain(&mut n);
        assert!(outs.contains(&Output::Persist(GraphChange::Remove(ids[0]))));
        assert!(
            outs.iter()
                .any(|o| matches!(o, Output::Persist(GraphChange::Upsert(c)) if c.id == ids[2]))
        );
        assert!(n.graph().get(&ids[0]).is_none());
        assert!(
            n.graph().get(&ids[2]).is_some(),
            "the pending contact took the freed slot"
        );
    }

    #[test]
    fn inbound_requests_are_answered_within_limits() {
        let mut cfg = NodeConfig::new(SecretKey::from_bytes([0; 32]));
        cfg.task_rate_per_s = 0.0;
        let mut n = Node::new(cfg, Vec::new());
        let now = Time::ZERO;
        for i in 1..=40u8 {
            n.handle_connection_up(now, NodeId([i; 32]), addr(u16::from(i)), ConnMode::Direct);
        }
        drain(&mut n);
        let asker = NodeId([1; 32]);
        n.handle_request(
            now,
            asker,
            InboundId(1),
            Request::FindNode {
                target: NodeId([9; 32]),
            },
        );
        n.handle_request(now, asker, InboundId(2), Request::Introduce { max: 32 });
        n.handle_request(now, asker, InboundId(3), Request::Ping { nonce: 7 });
        let outs = drain(&mut n);
        let Output::Respond {
            response: Response::Nodes { peers },
            ..
        } = &outs[0]
        else {
            panic!("{outs:?}")
        };
        assert_eq!(peers.len(), 20, "k closest");
        assert!(
            peers.iter().all(|p| p.id != asker),
            "the asker is not told about itself"
        );
        assert_eq!(peers[0].id, NodeId([9; 32]));
        let Output::Respond {
            response: Response::Nodes { peers },
            ..
        } = &outs[1]
        else {
            panic!()
        };
        assert!(peers.len() <= MAX_NODES_PER_RESPONSE && peers.iter().all(|p| p.id != asker));
        assert_eq!(
            outs[2],
            Output::Respond {
                inbound: InboundId(3),
                response: Response::Pong {
                    nonce: 7,
                    observed: Some(addr(1)),
                    nat: NatType::Unknown,
                }
            }
        );
    }

    #[test]
    fn nat_type_needs_two_observers() {
        let mut cfg = NodeConfig::new(SecretKey::from_bytes([0; 32]));
        cfg.task_rate_per_s = 0.0;
        cfg.listen_addrs = vec![addr(1)];
        let mut n = Node::new(cfg, Vec::new());
        assert_eq!(n.nat_type(), NatType::Unknown);
        let now = Time::ZERO;
        let a = NodeId([1; 32]);
        let b = NodeId([2; 32]);
        for p in [a, b] {
            n.handle_connection_up(now, p, addr(50), ConnMode::Direct);
        }
        let mapped = SocketAddr::from(([198, 18, 0, 1], 4000));
        for (p, seen) in [(a, mapped), (b, mapped)] {
            n.command(now, Command::Ping { peer: p });
            for out in drain(&mut n) {
                if let Output::Request { id, .. } = out {
                    n.handle_response(
                        now,
                        id,
                        Ok(Response::Pong {
                            nonce: 0,
                            observed: Some(seen),
                            nat: NatType::Unknown,
                        }),
                    );
                }
            }
        }
        assert_eq!(n.nat_type(), NatType::Cone);
        n.command(now, Command::Ping { peer: b });
        for out in drain(&mut n) {
            if let Output::Request { id, .. } = out {
                let other = SocketAddr::from(([198, 18, 0, 1], 4001));
                n.handle_response(
                    now,
                    id,
                    Ok(Response::Pong {
                        nonce: 0,
                        observed: Some(other),
                        nat: NatType::Unknown,
                    }),
                );
            }
        }
        assert_eq!(n.nat_type(), NatType::Symmetric);
    }
}
