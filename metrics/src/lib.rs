//! Prometheus metrics of the agent, recorded at the edge from core events.
//!
//! A crate of its own so that the agent and the simulator (`chaosnet sim`) record the same
//! names and labels from the same events. One [`Metrics`] value owns a `prometheus-client`
//! registry. The agent's driver (or the simulator, for the whole fleet) feeds it every
//! [`Event`] the core emits ([`Metrics::record`]) and refreshes the gauges that describe
//! state (graph size, connections, socket counters) just before each scrape
//! ([`Metrics::observe_state`]). Labels are bounded enums: mode, outcome, reason, task,
//! direction, the peer's advertised NAT type. Node ids never appear in labels. Relay bytes
//! are counted by the relay's splice as they pass ([`Metrics::relay_bytes`]), not here.
//!
//! It does not serve HTTP (the agent's `api` module does), or know where events come from.

use chaosnet_proto::RoutingTable;
use chaosnet_proto::kv::sync::SyncOutcome;
use chaosnet_proto::{
    ClaimOutcome, ConnMode, Event, Failure, Filtering, NatType, Node, NodeEvent, TaskOutcome,
};
use chaosnet_proto::{RelayEvent, SignalOutcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use chaosnet_contract::api::SocketStats;

/// Label set with one `mode` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    /// direct | punched | relayed
    pub mode: String,
}

/// Label set of task outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// ping | lookup | connect | echo
    pub task: String,
    /// ok | timeout | unreachable | refused | protocol | busy | not_found | no_peers | skipped
    pub outcome: String,
}

/// Label set with one `task` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskOnly {
    /// ping | lookup | connect | echo
    pub task: String,
}

/// Label set with one `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A bounded reason string chosen by the recording site.
    pub reason: String,
}

/// Label set with one `direction` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `in` or `out`.
    pub direction: &'static str,
}

/// Label set with one `fill` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FillLabels {
    /// empty | partial | full
    pub fill: String,
}

/// Label set of lookups.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    /// found | not_found
    pub outcome: String,
}

/// Label set of connect attempts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// direct | punched | relayed: the path tried.
    pub path: String,
    /// ok | timeout | unreachable | refused | protocol | busy
    pub outcome: String,
    /// The NAT type the peer advertised: unknown | none | cone | symmetric (a [`NatType`]
    /// label, so at most its seven values).
    pub peer_nat: String,
}

/// Label set with one `kind` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// A bounded kind chosen by the recording site.
    pub kind: String,
}

/// Label set with one `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// A bounded outcome chosen by the recording site.
    pub outcome: String,
}

/// Label set of the info gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    /// The network id.
    pub network: String,
    /// The agent's version.
    pub version: String,
}

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections_opened: Family<ModeLabels, Counter>,
    connections: Family<ModeLabels, Gauge>,
    connections_pruned: Counter,
    tasks: Family<TaskLabels, Counter>,
    task_duration: Family<TaskOnly, Histogram>,
    rtt: Histogram,
    lookups: Family<LookupLabels, Counter>,
    lookup_hops: Histogram,
    lookup_duration: Histogram,
    contacts: Gauge,
    pending: Gauge,
    buckets: Family<FillLabels, Gauge>,
    evictions: Counter,
    contacts_added: Counter,
    refusals: Family<ReasonLabels, Counter>,
    decode_errors: Family<ReasonLabels, Counter>,
    request_failures: Family<ReasonLabels, Counter>,
    inbound_refused: Counter,
    bytes: Family<DirectionLabels, Counter>,
    datagrams: Family<DirectionLabels, Counter>,
    datagrams_dropped: Family<ReasonLabels, Counter>,
    store_errors: Counter,
    joined: Gauge,
    inflight: Gauge,
    observed_addrs: Gauge,
    connect_attempts: Family<AttemptLabels, Counter>,
    connect_duration: Family<ModeLabels, Histogram>,
    punches: Family<KindLabels, Counter>,
    birthday_probes: Histogram,
    signals: Family<OutcomeLabels, Counter>,
    relay_circuits: Family<KindLabels, Counter>,
    relay_circuits_open: Gauge,
    relay_bytes: Counter,
    upgrades: Family<ModeLabels, Counter>,
    node_events: Family<KindLabels, Counter>,
    dialback_results: Family<KindLabels, Counter>,
    dialback_served: Counter,
    claims: Family<OutcomeLabels, Counter>,
    discoveries: Family<KindLabels, Counter>,
    kv_tuples: Gauge,
    kv_sync_rounds: Family<OutcomeLabels, Counter>,
    kv_symbols: Counter,
    kv_bytes: Family<DirectionLabels, Counter>,
    kv_conflicts: Counter,
    kv_rejected: Family<ReasonLabels, Counter>,
    kv_sync_duration: Histogram,
    last_socket: std::sync::Mutex<SocketStats>,
}

impl Metrics {
    /// A fresh registry for an agent on `network`.
    pub fn new(network: &str) -> Metrics {
        let mut registry = Registry::with_prefix("chaosnet");
        let connections_opened = Family::<ModeLabels, Counter>::default();
        registry.register(
            "connections_opened",
            "Connections established, by how they were made",
            connections_opened.clone(),
        );
        let connections = Family::<ModeLabels, Gauge>::default();
        registry.register(
            "connections",
            "Open connections, by how they were made",
            connections.clone(),
        );
        let connections_pruned = Counter::default();
        registry.register(
            "connections_pruned",
            "Connections closed to keep the best-scoring peers (low RTT, high uptime)",
            connections_pruned.clone(),
        );
        let tasks = Family::<TaskLabels, Counter>::default();
        registry.register(
            "tasks",
            "Autonomous tasks finished, by task and outcome",
            tasks.clone(),
        );
        let task_duration = Family::<TaskOnly, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register_with_unit(
            "task_duration",
            "Duration of autonomous tasks",
            Unit::Seconds,
            task_duration.clone(),
        );
        let rtt = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register_with_unit(
            "rtt",
            "Round-trip time of answered requests",
            Unit::Seconds,
            rtt.clone(),
        );
        let lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "lookups",
            "Iterative lookups finished, by outcome",
            lookups.clone(),
        );
        let lookup_hops = Histogram::new([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0]);
        registry.register(
            "lookup_hops",
            "Rounds of the deepest node a lookup queried",
            lookup_hops.clone(),
        );
        let lookup_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register_with_unit(
            "lookup_duration",
            "Duration of iterative lookups",
            Unit::Seconds,
            lookup_duration.clone(),
        );
        let contacts = Gauge::default();
        registry.register(
            "node_graph_contacts",
            "Contacts in the node graph's buckets",
            contacts.clone(),
        );
        let pending = Gauge::default();
        registry.register(
            "node_graph_pending",
            "Contacts waiting for a slot in a full bucket",
            pending.clone(),
        );
        let buckets = Family::<FillLabels, Gauge>::default();
        registry.register(
            "node_graph_buckets",
            "Buckets by fill (empty, partial, full)",
            buckets.clone(),
        );
        let evictions = Counter::default();
        registry.register(
            "node_graph_evictions",
            "Contacts evicted by GC or staleness",
            evictions.clone(),
        );
        let contacts_added = Counter::default();
        registry.register(
            "node_graph_insertions",
            "Contacts inserted into a bucket",
            contacts_added.clone(),
        );
        let refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "handshake_refusals",
            "Connections refused, by reason (wrong_network, bad_key, identity_mismatch, missing_proof)",
            refusals.clone(),
        );
        let decode_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "decode_errors",
            "Frames that failed to decode, by reason; each closed its stream",
            decode_errors.clone(),
        );
        let request_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "request_failures",
            "Outbound requests that failed, by reason",
            request_failures.clone(),
        );
        let inbound_refused = Counter::default();
        registry.register(
            "inbound_refused",
            "Inbound requests answered with an error",
            inbound_refused.clone(),
        );
        let bytes = Family::<DirectionLabels, Counter>::default();
        registry.register_with_unit(
            "udp",
            "UDP bytes on the P2P socket",
            Unit::Bytes,
            bytes.clone(),
        );
        let datagrams = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "udp_datagrams",
            "UDP datagrams on the P2P socket",
            datagrams.clone(),
        );
        let datagrams_dropped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "udp_datagrams_dropped",
            "Datagrams dropped by the socket seam (garbage, impairment loss, full delay queue)",
            datagrams_dropped.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Failed writes to the node graph store",
            store_errors.clone(),
        );
        let joined = Gauge::default();
        registry.register("joined", "1 once bootstrap completed", joined.clone());
        let inflight = Gauge::default();
        registry.register(
            "requests_inflight",
            "Outbound requests and connects in flight",
            inflight.clone(),
        );
        let observed_addrs = Gauge::default();
        registry.register(
            "observed_addresses",
            "Distinct addresses peers see this node at",
            observed_addrs.clone(),
        );
        let info = Family::<InfoLabels, Gauge>::default();
        info.get_or_create(&InfoLabels {
            network: network.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .set(1);
        registry.register(
            "agent_info",
            "Constant 1, labelled with the agent's network and version",
            info,
        );
        let connect_attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "connect_attempts",
            "Connect attempts by path tried (direct, punched, relayed), outcome and the peer's advertised NAT type",
            connect_attempts.clone(),
        );
        let connect_duration = Family::<ModeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register_with_unit(
            "connect_duration",
            "Time to connect, successful attempts only, by mode",
            Unit::Seconds,
            connect_duration.clone(),
        );
        let punches = Family::<KindLabels, Counter>::default();
        registry.register(
            "punch_attempts",
            "Hole punches started (as dialer or as signalled side), by kind (plain, birthday)",
            punches.clone(),
        );
        let birthday_probes = Histogram::new([
            16.0, 32.0, 64.0, 128.0, 256.0, 384.0, 512.0, 768.0, 1024.0, 2048.0,
        ]);
        registry.register(
            "birthday_probes",
            "Random-port probes the easy side sprayed before a birthday punch succeeded",
            birthday_probes.clone(),
        );
        let signals = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "signals",
            "Hole-punching signals handled, by outcome",
            signals.clone(),
        );
        let relay_circuits = Family::<KindLabels, Counter>::default();
        registry.register(
            "relay_circuits",
            "Relay circuits through this node, by event (opened, refused, closed)",
            relay_circuits.clone(),
        );
        let relay_circuits_open = Gauge::default();
        registry.register(
            "relay_circuits_open",
            "Relay circuits open through this node",
            relay_circuits_open.clone(),
        );
        let relay_bytes = Counter::default();
        registry.register_with_unit(
            "relay",
            "Bytes carried by relay circuits through this node",
            Unit::Bytes,
            relay_bytes.clone(),
        );
        let upgrades = Family::<ModeLabels, Counter>::default();
        registry.register(
            "upgrades",
            "Relayed connections replaced by a better one, by the new mode",
            upgrades.clone(),
        );
        let node_events = Family::<KindLabels, Counter>::default();
        registry.register(
            "node_events",
            "Node events emitted (the control API's event stream), by kind",
            node_events.clone(),
        );
        let dialback_results = Family::<KindLabels, Counter>::default();
        registry.register(
            "dialback_results",
            "Dial-back tests of this node's NAT filtering that concluded, by the filtering found (eif, adf, apdf)",
            dialback_results.clone(),
        );
        let dialback_served = Counter::default();
        registry.register(
            "dialback_served",
            "Dial-back requests of other nodes this node served or helped with",
            dialback_served.clone(),
        );
        let claims = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "claims",
            "Node claims stored, verified (fetched and checked) or refused (forged, singly_signed)",
            claims.clone(),
        );
        let discoveries = Family::<KindLabels, Counter>::default();
        registry.register(
            "mdns_discoveries",
            "Nodes local discovery (mDNS) reported, by kind: new (not in the node graph yet) or known",
            discoveries.clone(),
        );
        for kind in ["new", "known"] {
            let _ = discoveries.get_or_create(&KindLabels { kind: kind.into() });
        }
        let kv_tuples = Gauge::default();
        registry.register(
            "kv_tuples",
            "Keys in this node's key-value replica",
            kv_tuples.clone(),
        );
        let kv_sync_rounds = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "kv_sync_rounds",
            "Key-value sync sessions this node started, by outcome (in_sync, reconciled, gave_up, protocol, failed)",
            kv_sync_rounds.clone(),
        );
        for o in SyncOutcome::ALL {
            let _ = kv_sync_rounds.get_or_create(&OutcomeLabels {
                outcome: o.as_str().into(),
            });
        }
        let kv_symbols = Counter::default();
        registry.register(
            "kv_symbols",
            "Rateless IBLT coded symbols this node received (as initiator) or sent (as responder)",
            kv_symbols.clone(),
        );
        let kv_bytes = Family::<DirectionLabels, Counter>::default();
        // Named `kv` with the unit appended, as `relay` is: `chaosnet_kv_bytes_total`.
        registry.register_with_unit(
            "kv",
            "Bytes of encoded key-value sync messages, by direction (in, out)",
            Unit::Bytes,
            kv_bytes.clone(),
        );
        for direction in ["in", "out"] {
            let _ = kv_bytes.get_or_create(&DirectionLabels { direction });
        }
        let kv_conflicts = Counter::default();
        registry.register(
            "kv_conflicts",
            "Tuples from peers that met ours at the same version with a different value (resolved by the signature rule)",
            kv_conflicts.clone(),
        );
        let kv_rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "kv_rejected",
            "Tuples refused, by reason (bad_signature, key_too_long, value_too_long, empty_key, full)",
            kv_rejected.clone(),
        );
        for r in [
            "bad_signature",
            "key_too_long",
            "value_too_long",
            "empty_key",
            "full",
        ] {
            let _ = kv_rejected.get_or_create(&ReasonLabels { reason: r.into() });
        }
        let kv_sync_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register_with_unit(
            "kv_sync_duration",
            "Duration of key-value sync sessions this node started that ended in sync or reconciled",
            Unit::Seconds,
            kv_sync_duration.clone(),
        );
        for o in ClaimOutcome::ALL {
            let _ = claims.get_or_create(&OutcomeLabels {
                outcome: o.as_str().into(),
            });
        }
        for kind in NodeEvent::KINDS {
            let _ = node_events.get_or_create(&KindLabels { kind: kind.into() });
        }
        for f in [
            Filtering::EndpointIndependent,
            Filtering::AddressDependent,
            Filtering::AddressPortDependent,
        ] {
            let _ = dialback_results.get_or_create(&KindLabels {
                kind: f.as_str().into(),
            });
        }
        // Declare every known label value up front, so a fresh agent exports each family (at
        // zero) and dashboards and alerts see series before the first event.
        for mode in [ConnMode::Direct, ConnMode::Punched, ConnMode::Relayed] {
            for outcome in ["ok", "timeout", "unreachable"] {
                // The types the core classifies itself as, so the ones peers advertise.
                for peer_nat in NatType::ALL {
                    let _ = connect_attempts.get_or_create(&AttemptLabels {
                        path: mode.as_str().into(),
                        outcome: outcome.into(),
                        peer_nat: peer_nat.as_str().into(),
                    });
                }
            }
            let _ = connect_duration.get_or_create(&ModeLabels {
                mode: mode.as_str().into(),
            });
        }
        for mode in [ConnMode::Direct, ConnMode::Punched] {
            let _ = upgrades.get_or_create(&ModeLabels {
                mode: mode.as_str().into(),
            });
        }
        for kind in ["plain", "birthday"] {
            let _ = punches.get_or_create(&KindLabels { kind: kind.into() });
        }
        for e in [RelayEvent::Opened, RelayEvent::Refused, RelayEvent::Closed] {
            let _ = relay_circuits.get_or_create(&KindLabels {
                kind: e.as_str().into(),
            });
        }
        for o in [
            SignalOutcome::Sent,
            SignalOutcome::Forwarded,
            SignalOutcome::Coalesced,
            SignalOutcome::Accepted,
            SignalOutcome::Forged,
            SignalOutcome::Replayed,
            SignalOutcome::RateLimited,
            SignalOutcome::NoRoute,
        ] {
            let _ = signals.get_or_create(&OutcomeLabels {
                outcome: o.as_str().into(),
            });
        }
        for mode in [ConnMode::Direct, ConnMode::Punched, ConnMode::Relayed] {
            let _ = connections_opened.get_or_create(&ModeLabels {
                mode: mode.as_str().into(),
            });
        }
        for kind in chaosnet_proto::TaskKind::ALL {
            let _ = task_duration.get_or_create(&TaskOnly {
                task: kind.as_str().into(),
            });
            let _ = tasks.get_or_create(&TaskLabels {
                task: kind.as_str().into(),
                outcome: TaskOutcome::Ok.as_str().into(),
            });
        }
        for reason in [
            "wrong_network",
            "bad_key",
            "identity_mismatch",
            "missing_proof",
            "no_valid_key",
        ] {
            let _ = refusals.get_or_create(&ReasonLabels {
                reason: reason.into(),
            });
        }
        for reason in [
            "truncated",
            "oversize",
            "unknown_version",
            "malformed",
            "stalled",
        ] {
            let _ = decode_errors.get_or_create(&ReasonLabels {
                reason: reason.into(),
            });
        }
        for f in [
            Failure::Timeout,
            Failure::Unreachable,
            Failure::Refused,
            Failure::Protocol,
            Failure::Busy,
        ] {
            let _ = request_failures.get_or_create(&ReasonLabels {
                reason: f.as_str().into(),
            });
        }
        for outcome in ["found", "not_found"] {
            let _ = lookups.get_or_create(&LookupLabels {
                outcome: outcome.into(),
            });
        }
        Metrics {
            registry,
            connections_opened,
            connections,
            connections_pruned,
            tasks,
            task_duration,
            rtt,
            lookups,
            lookup_hops,
            lookup_duration,
            contacts,
            pending,
            buckets,
            evictions,
            contacts_added,
            refusals,
            decode_errors,
            request_failures,
            inbound_refused,
            bytes,
            datagrams,
            datagrams_dropped,
            store_errors,
            joined,
            inflight,
            observed_addrs,
            connect_attempts,
            connect_duration,
            punches,
            birthday_probes,
            signals,
            relay_circuits,
            relay_circuits_open,
            relay_bytes,
            upgrades,
            node_events,
            dialback_results,
            dialback_served,
            claims,
            discoveries,
            kv_tuples,
            kv_sync_rounds,
            kv_symbols,
            kv_bytes,
            kv_conflicts,
            kv_rejected,
            kv_sync_duration,
            last_socket: std::sync::Mutex::new(SocketStats::default()),
        }
    }

    /// Records one core event.
    pub fn record(&self, event: &Event) {
        match event {
            Event::Joined => {
                self.joined.set(1);
            }
            Event::TaskFinished {
                kind,
                outcome,
                elapsed,
            } => {
                self.tasks
                    .get_or_create(&TaskLabels {
                        task: kind.as_str().into(),
                        outcome: outcome.as_str().into(),
                    })
                    .inc();
                if !matches!(outcome, TaskOutcome::Skipped | TaskOutcome::NoPeers) {
                    self.task_duration
                        .get_or_create(&TaskOnly {
                            task: kind.as_str().into(),
                        })
                        .observe(elapsed.as_secs_f64());
                }
            }
            Event::CommandFinished { .. } => {}
            Event::LookupFinished {
                found,
                hops,
                elapsed,
                ..
            } => {
                let outcome = if *found { "found" } else { "not_found" };
                self.lookups
                    .get_or_create(&LookupLabels {
                        outcome: outcome.into(),
                    })
                    .inc();
                self.lookup_hops.observe(f64::from(*hops));
                self.lookup_duration.observe(elapsed.as_secs_f64());
            }
            Event::Rtt { rtt } => self.rtt.observe(rtt.as_secs_f64()),
            Event::RequestFailed { failure } => {
                self.request_failures
                    .get_or_create(&ReasonLabels {
                        reason: failure.as_str().into(),
                    })
                    .inc();
            }
            Event::ContactAdded => {
                self.contacts_added.inc();
            }
            // Pending contacts show in the state gauges; activities are for spans.
            Event::ContactPending | Event::ActivityStarted { .. } | Event::ActivityEnded { .. } => {
            }
            Event::ContactEvicted => {
                self.evictions.inc();
            }
            Event::ConnectionPruned => {
                self.connections_pruned.inc();
            }
            Event::InboundRefused { .. } => {
                self.inbound_refused.inc();
            }
            Event::ConnectAttempt {
                path,
                failure,
                elapsed,
                peer_nat,
            } => {
                let outcome = failure.map_or("ok", Failure::as_str);
                self.connect_attempts
                    .get_or_create(&AttemptLabels {
                        path: path.as_str().into(),
                        outcome: outcome.into(),
                        peer_nat: peer_nat.as_str().into(),
                    })
                    .inc();
                if failure.is_none() {
                    self.connect_duration
                        .get_or_create(&ModeLabels {
                            mode: path.as_str().into(),
                        })
                        .observe(elapsed.as_secs_f64());
                }
            }
            Event::Signal { outcome } => {
                self.signals
                    .get_or_create(&OutcomeLabels {
                        outcome: outcome.as_str().into(),
                    })
                    .inc();
            }
            Event::Relay { event } => {
                self.relay_circuits
                    .get_or_create(&KindLabels {
                        kind: event.as_str().into(),
                    })
                    .inc();
            }
            Event::Upgraded { to } => {
                self.upgrades
                    .get_or_create(&ModeLabels {
                        mode: to.as_str().into(),
                    })
                    .inc();
            }
            // Counted by the transport when it starts the punch (both sides), not here.
            Event::PunchStarted { .. } => {}
            Event::DialBack { filtering } => {
                self.dialback_results
                    .get_or_create(&KindLabels {
                        kind: filtering.as_str().into(),
                    })
                    .inc();
            }
            Event::Discovered { new } => {
                let kind = if *new { "new" } else { "known" };
                self.discoveries
                    .get_or_create(&KindLabels { kind: kind.into() })
                    .inc();
            }
            Event::Claim { outcome } => {
                self.claims
                    .get_or_create(&OutcomeLabels {
                        outcome: outcome.as_str().into(),
                    })
                    .inc();
            }
            Event::DialBackServed => {
                self.dialback_served.inc();
            }
            Event::KvSync { report, elapsed } => {
                self.kv_sync_rounds
                    .get_or_create(&OutcomeLabels {
                        outcome: report.outcome.as_str().into(),
                    })
                    .inc();
                if matches!(
                    report.outcome,
                    SyncOutcome::InSync | SyncOutcome::Reconciled
                ) {
                    self.kv_sync_duration.observe(elapsed.as_secs_f64());
                }
            }
            Event::KvTraffic {
                sent,
                received,
                symbols,
            } => {
                self.kv_symbols.inc_by(*symbols as u64);
                for (direction, n) in [("out", *sent), ("in", *received)] {
                    if n > 0 {
                        self.kv_bytes
                            .get_or_create(&DirectionLabels { direction })
                            .inc_by(n as u64);
                    }
                }
            }
            Event::KvMerged {
                conflicts,
                rejected,
                ..
            } => {
                self.kv_conflicts.inc_by(u64::from(*conflicts));
                for r in rejected {
                    self.kv_rejected
                        .get_or_create(&ReasonLabels {
                            reason: r.as_str().into(),
                        })
                        .inc();
                }
            }
            Event::Node(e) => {
                self.node_events
                    .get_or_create(&KindLabels {
                        kind: e.kind().into(),
                    })
                    .inc();
            }
        }
    }

    /// Counts a hole punch started by this node's transport.
    pub fn punch_started(&self, birthday: bool) {
        let kind = if birthday { "birthday" } else { "plain" };
        self.punches
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// Records how many spray probes a successful birthday punch took.
    pub fn birthday_probes(&self, probes: u32) {
        self.birthday_probes.observe(f64::from(probes));
    }

    /// Counts bytes a relay circuit through this node carried; called as they pass, so a
    /// long-lived circuit shows up while it is open.
    pub fn relay_bytes(&self, bytes: u64) {
        self.relay_bytes.inc_by(bytes);
    }

    /// Counts a new connection.
    pub fn connection_opened(&self, mode: ConnMode) {
        self.connections_opened
            .get_or_create(&ModeLabels {
                mode: mode.as_str().into(),
            })
            .inc();
    }

    /// Counts a refused handshake or membership check.
    pub fn refusal(&self, reason: &'static str) {
        self.refusals
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a frame that failed to decode.
    pub fn decode_error(&self, reason: &'static str) {
        self.decode_errors
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a failed store write.
    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    /// Refreshes the state gauges from the core and the socket, just before a scrape.
    pub fn observe_state(&self, node: &Node, socket: SocketStats) {
        self.kv_tuples.set(node.kv().len() as i64);
        self.relay_circuits_open
            .set(i64::from(node.relay_circuits()));
        let table: &RoutingTable = node.graph();
        self.contacts.set(table.len() as i64);
        self.pending.set(table.pending_len() as i64);
        let k = node.config().k;
        let (mut empty, mut partial, mut full) = (0i64, 0i64, 0i64);
        for n in table.fill() {
            match n {
                0 => empty += 1,
                n if n >= k => full += 1,
                _ => partial += 1,
            }
        }
        for (fill, v) in [("empty", empty), ("partial", partial), ("full", full)] {
            self.buckets
                .get_or_create(&FillLabels { fill: fill.into() })
                .set(v);
        }
        let mut by_mode = [0i64; 3];
        for (_, c) in node.connections() {
            by_mode[c.mode as usize] += 1;
        }
        for (i, mode) in [ConnMode::Direct, ConnMode::Punched, ConnMode::Relayed]
            .into_iter()
            .enumerate()
        {
            self.connections
                .get_or_create(&ModeLabels {
                    mode: mode.as_str().into(),
                })
                .set(by_mode[i]);
        }
        self.joined.set(i64::from(node.joined()));
        self.inflight.set(node.inflight() as i64);
        self.observed_addrs.set(node.observed_addrs().len() as i64);
        self.socket_counters(socket);
    }

    /// Advances the socket counters to `now` (they are cumulative in the socket).
    fn socket_counters(&self, now: SocketStats) {
        self.observe_socket(now);
    }

    /// Advances the socket counters to the socket's cumulative `now`.
    pub fn observe_socket(&self, now: SocketStats) {
        let Ok(mut last) = self.last_socket.lock() else {
            return;
        };
        let d = |new: u64, old: u64| new.saturating_sub(old);
        self.bytes
            .get_or_create(&DirectionLabels { direction: "in" })
            .inc_by(d(now.rx_bytes, last.rx_bytes));
        self.bytes
            .get_or_create(&DirectionLabels { direction: "out" })
            .inc_by(d(now.tx_bytes, last.tx_bytes));
        self.datagrams
            .get_or_create(&DirectionLabels { direction: "in" })
            .inc_by(d(now.rx_datagrams, last.rx_datagrams));
        self.datagrams
            .get_or_create(&DirectionLabels { direction: "out" })
            .inc_by(d(now.tx_datagrams, last.tx_datagrams));
        for (reason, new, old) in [
            ("garbage", now.rx_garbage, last.rx_garbage),
            ("loss_rx", now.dropped_loss_rx, last.dropped_loss_rx),
            ("loss_tx", now.dropped_loss_tx, last.dropped_loss_tx),
            (
                "queue_full",
                now.dropped_queue_full,
                last.dropped_queue_full,
            ),
        ] {
            self.datagrams_dropped
                .get_or_create(&ReasonLabels {
                    reason: reason.into(),
                })
                .inc_by(d(new, old));
        }
        *last = now;
    }

    /// The registry in the classic Prometheus text format (0.0.4), which `promtool check
    /// metrics` and every scraper accept.
    pub fn encode(&self) -> String {
        openmetrics_to_prometheus_text(&self.encode_openmetrics())
    }

    /// The registry in OpenMetrics text format, as `prometheus-client` writes it.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an error here would be an encoder bug.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("metrics encoding failed");
        }
        out
    }
}

/// Converts OpenMetrics text to the classic Prometheus text format: counters are declared
/// under their `_total` sample name, and the `# UNIT` and `# EOF` lines are dropped.
/// prometheus-client only writes OpenMetrics; promtool 2.42 only checks the classic format.
pub fn openmetrics_to_prometheus_text(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_declared_under_their_sample_names() {
        let om = "# HELP chaosnet_x Things.\n# TYPE chaosnet_x counter\nchaosnet_x_total 3\n\
                  # HELP chaosnet_d Dur.\n# TYPE chaosnet_d histogram\n# UNIT chaosnet_d seconds\n\
                  chaosnet_d_count 1\n# EOF\n";
        let text = openmetrics_to_prometheus_text(om);
        assert!(
            text.contains("# HELP chaosnet_x_total Things.\n# TYPE chaosnet_x_total counter\n")
        );
        assert!(text.contains("# TYPE chaosnet_d histogram\n"));
        assert!(!text.contains("# UNIT") && !text.contains("# EOF"));
    }

    #[test]
    fn events_move_the_counters() {
        let m = Metrics::new("mainnet");
        m.record(&Event::TaskFinished {
            kind: chaosnet_proto::TaskKind::Ping,
            outcome: TaskOutcome::Ok,
            elapsed: std::time::Duration::from_millis(3),
        });
        m.refusal("wrong_network");
        m.decode_error("oversize");
        let text = m.encode();
        assert!(
            text.contains(r#"chaosnet_tasks_total{task="ping",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"chaosnet_handshake_refusals_total{reason="wrong_network"} 1"#));
        assert!(text.contains(r#"chaosnet_decode_errors_total{reason="oversize"} 1"#));
        assert!(text.contains(r#"chaosnet_agent_info{network="mainnet""#));
        m.observe_socket(SocketStats {
            rx_bytes: 10,
            tx_bytes: 20,
            ..Default::default()
        });
        let text = m.encode();
        assert!(
            text.contains(r#"chaosnet_udp_bytes_total{direction="in"} 10"#),
            "{text}"
        );
        assert!(text.contains(r#"chaosnet_udp_bytes_total{direction="out"} 20"#));
    }

    #[test]
    fn connect_attempts_carry_the_peer_nat_and_are_declared_per_pair() {
        let m = Metrics::new("mainnet");
        let zero = m.encode();
        // Declared at zero for every path, common outcome and advertised NAT type.
        for peer_nat in ["unknown", "none", "cone", "symmetric"] {
            let line = format!(
                r#"chaosnet_connect_attempts_total{{path="punched",outcome="ok",peer_nat="{peer_nat}"}} 0"#
            );
            assert!(zero.contains(&line), "{line} missing:\n{zero}");
        }
        m.record(&Event::ConnectAttempt {
            path: ConnMode::Punched,
            failure: None,
            elapsed: std::time::Duration::from_millis(400),
            peer_nat: NatType::Symmetric,
        });
        m.record(&Event::ConnectAttempt {
            path: ConnMode::Punched,
            failure: Some(Failure::Timeout),
            elapsed: std::time::Duration::from_secs(8),
            peer_nat: NatType::Cone,
        });
        let text = m.encode();
        assert!(text.contains(
            r#"chaosnet_connect_attempts_total{path="punched",outcome="ok",peer_nat="symmetric"} 1"#
        ));
        assert!(text.contains(
            r#"chaosnet_connect_attempts_total{path="punched",outcome="timeout",peer_nat="cone"} 1"#
        ));
        assert!(text.contains(
            r#"chaosnet_connect_attempts_total{path="punched",outcome="ok",peer_nat="cone"} 0"#
        ));
    }
}
