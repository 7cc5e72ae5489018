//! Configuration of a [`Node`](super::Node): every field with its documented default.

use std::net::SocketAddr;

use crate::id::NodeId;
use crate::kv::set::DEFAULT_MAX_TUPLES;
use crate::kv::sync::SyncConfig;
use crate::signal::SecretKey;

/// Relative weights of the autonomous tasks (defined in the controller-agent contract, so
/// `--task-weights` and a scenario's weights are this type). A zero weight disables a task.
pub use chaosnet_contract::TaskWeights;

/// Configuration of a [`Node`](super::Node). Every field has a documented default (see [`Default`]).
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
    /// How often a node behind an endpoint-independent mapping re-measures its filtering
    /// with a dial-back test (RFC 5780, "different IP, then different port"); 0 disables
    /// the test (the node then stays `Cone`). Default 300,000 ms.
    pub dialback_interval_ms: u64,
    /// How long a dial-back test waits for the probes after its server confirmed that they
    /// were sent, before it concludes that the filter dropped them. Default 2,000 ms.
    pub dialback_wait_ms: u64,
    /// Dial-back requests one peer may make us serve or help with at once. Default 4.
    pub dialback_burst: u32,
    /// Sustained dial-back requests per second per peer. Default 0.1.
    pub dialback_per_s: f64,
    /// What punching for others (signals addressed to us) may cost.
    pub punch: PunchLimits,
    /// The network id key-value tuples are signed for (the agent's `--network`); tuples of
    /// another network are refused. Default `testnet`.
    pub kv_network: String,
    /// Most keys the replica holds; a tuple for a new key past this is refused. Default
    /// 100,000.
    pub kv_max_tuples: usize,
    /// How often the node reconciles its replica with one connected peer (lower RTT
    /// preferred); 0 disables syncing. Each round waits ±20% of this. Default 2,000 ms.
    pub kv_sync_interval_ms: u64,
    /// Sync sessions one peer may make us answer: requests at once. Default 64.
    pub kv_burst: u32,
    /// Sustained sync requests per second per peer. Default 32.
    pub kv_per_s: f64,
    /// Bounds of one sync session.
    pub kv_sync: SyncConfig,
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
            dialback_interval_ms: 300_000,
            dialback_wait_ms: 2_000,
            dialback_burst: 4,
            dialback_per_s: 0.1,
            punch: PunchLimits::default(),
            kv_network: "testnet".into(),
            kv_max_tuples: DEFAULT_MAX_TUPLES,
            kv_sync_interval_ms: 2_000,
            kv_burst: 64,
            kv_per_s: 32.0,
            kv_sync: SyncConfig::default(),
        }
    }
}

/// What punching for others may cost, in probe datagrams over time (each plan's
/// [`PunchPlan::probe_cost`](super::PunchPlan::probe_cost)): a signal whose punch would go over
/// a budget is refused as rate-limited, so no requester, and no destination however many
/// requesters name it, gets more probes from us than these allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PunchLimits {
    /// Probes the signals of one requester may cost at once. Default 8,192 (about four
    /// birthday punches).
    pub per_requester_probes: u32,
    /// Refilled at this many probes per second. Default 1,024: a birthday punch (≈2,100
    /// probes) every 2 s, as back-to-back connects between one pair need.
    pub per_requester_probes_per_s: u32,
    /// Probes towards one IP address at once, whoever asks. Default 16,384 (seven birthday
    /// punches, e.g. every node behind one symmetric NAT reaching us at once).
    pub per_ip_probes: u32,
    /// Refilled at this many probes per second. Default 2,048.
    pub per_ip_probes_per_s: u32,
}

impl Default for PunchLimits {
    fn default() -> Self {
        PunchLimits {
            per_requester_probes: 8_192,
            per_requester_probes_per_s: 1_024,
            per_ip_probes: 16_384,
            per_ip_probes_per_s: 2_048,
        }
    }
}

/// Limits of this node as a relay. They are advertised to the dialer in
/// [`Response::RelayAccepted`](crate::wire::Response::RelayAccepted), enforced, and counted.
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
