//! The JSON bodies of the agent's control API, as the agent writes them and the controller
//! reads them (and the other way round for requests).
//!
//! | route | request | answer |
//! |---|---|---|
//! | `GET /status` | | [`Status`] |
//! | `POST /connect` | [`ConnectRequest`] | [`ConnectAnswer`] (200) or [`ConnectFailure`] (404, 502, 504) |
//! | `POST /lookup` | [`LookupRequest`] | [`LookupAnswer`] |
//! | `GET`/`PUT /impairment` | [`Impairment`] | [`Impairment`] |
//! | any, on bad input | | [`ErrorBody`] (400, 503) |
//!
//! Every answer field is always present (an absent value is `null`), so a reader of another
//! version sees every field it knows; readers ignore fields they do not know. What it does
//! not do: routing, HTTP, or the `/peers`, `/echo`, `/tasks` and `/metrics` routes, which
//! only people and the agent's own tests read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a connection reached its peer, best first (the order is the matrix's judgement).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnMode {
    /// A plain dial.
    Direct,
    /// A hole punch.
    Punched,
    /// Through a relay.
    Relayed,
}

impl ConnMode {
    /// `direct`, `punched` or `relayed`, as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnMode::Direct => "direct",
            ConnMode::Punched => "punched",
            ConnMode::Relayed => "relayed",
        }
    }

    /// The inverse of [`ConnMode::as_str`].
    pub fn parse(s: &str) -> Option<ConnMode> {
        match s {
            "direct" => Some(ConnMode::Direct),
            "punched" => Some(ConnMode::Punched),
            "relayed" => Some(ConnMode::Relayed),
            _ => None,
        }
    }
}

/// One open connection in [`Status`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnStatus {
    /// Peer id (hex).
    pub node_id: String,
    /// The path the connection took.
    pub mode: ConnMode,
    /// Smoothed RTT, if measured.
    pub rtt_ms: Option<f64>,
    /// The peer's address on the connection.
    pub remote: String,
}

/// A snapshot of the agent's P2P socket counters (in [`Status`]).
///
/// `rx_*`/`tx_*` count what really came off / went onto the wire, after impairment
/// decisions: every datagram (QUIC, probe or garbage) read and not dropped by `loss_pct`,
/// and every datagram (QUIC or probe) the kernel accepted. The other counters break those
/// down or count what never reached the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SocketStats {
    /// Datagrams received (after receive loss), including probes and garbage.
    pub rx_datagrams: u64,
    /// Bytes of `rx_datagrams`.
    pub rx_bytes: u64,
    /// Datagrams sent (after send loss and delay), including probes.
    pub tx_datagrams: u64,
    /// Bytes of `tx_datagrams`.
    pub tx_bytes: u64,
    /// Received datagrams that were neither QUIC nor probes, dropped.
    pub rx_garbage: u64,
    /// Probe datagrams received (delivered or not, see `dropped_probes`).
    pub rx_probes: u64,
    /// Probe datagrams sent.
    pub tx_probes: u64,
    /// Inbound datagrams dropped by `loss_pct`.
    pub dropped_loss_rx: u64,
    /// Outbound datagrams dropped by `loss_pct` (QUIC and probes).
    pub dropped_loss_tx: u64,
    /// Outbound datagrams dropped because the delay queue was full.
    pub dropped_queue_full: u64,
    /// Received probes dropped because nobody subscribed or the subscriber's channel was full.
    pub dropped_probes: u64,
    /// Delayed datagrams the kernel refused when their time came (the error cannot be
    /// returned to quinn any more, so it is counted and logged at debug level).
    pub tx_errors: u64,
}

/// `GET /status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// This node's id (hex).
    pub node_id: String,
    /// The network id.
    pub network: String,
    /// Addresses the P2P socket listens on.
    pub listen_addrs: Vec<String>,
    /// Addresses peers see us at.
    pub observed_addrs: Vec<String>,
    /// Self-classified NAT type: `unknown` until two peers reported our address, then
    /// `none`, `symmetric`, or `cone` until a dial-back test measured the filtering:
    /// `full-cone`, `restricted-cone` or `port-restricted-cone`.
    pub nat_type: String,
    /// The filtering a dial-back test measured (eif, adf, apdf), if any; absent from
    /// agents that do not measure it.
    #[serde(default)]
    pub filtering: Option<String>,
    /// Whether peers can reach this node unaided (no NAT, or a full cone).
    pub reachable: bool,
    /// Relay circuits open through this node.
    pub relay_circuits: u32,
    /// Whether bootstrap completed.
    pub joined: bool,
    /// Contacts in buckets.
    pub contacts: usize,
    /// Contacts waiting for a bucket slot.
    pub pending: usize,
    /// Open connections.
    pub connections: Vec<ConnStatus>,
    /// Contacts per non-empty bucket.
    pub buckets: BTreeMap<usize, usize>,
    /// Whether the task loop is paused.
    pub tasks_paused: bool,
    /// Requests and connects in flight.
    pub inflight: usize,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Agent version.
    pub version: String,
    /// UDP socket counters.
    pub socket: SocketStats,
}

impl Status {
    /// Open connections in `mode`.
    pub fn connections_in(&self, mode: ConnMode) -> usize {
        self.connections.iter().filter(|c| c.mode == mode).count()
    }
}

fn yes() -> bool {
    true
}

/// `POST /connect`: connect to a node by id, looking it up if needed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRequest {
    /// The peer (hex or base32 NodeId).
    pub node_id: String,
    /// Open a new connection even if one exists. Default true, so the answer measures a real
    /// connection attempt.
    #[serde(default = "yes")]
    pub fresh: bool,
    /// Go only through this relay (a NodeId), with a fresh connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

impl ConnectRequest {
    /// A fresh connection to `node_id`, any path.
    pub fn fresh(node_id: &str) -> ConnectRequest {
        ConnectRequest {
            node_id: node_id.to_string(),
            fresh: true,
            via: None,
        }
    }
}

/// One path a connect tried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// The path.
    pub path: ConnMode,
    /// `ok`, or why it failed (`timeout`, `refused`, ...).
    pub outcome: String,
    /// How long it took, ms.
    pub elapsed_ms: f64,
}

/// The 200 answer of `POST /connect`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectAnswer {
    /// The peer (hex).
    pub node_id: String,
    /// The path the connection took.
    pub mode: ConnMode,
    /// How long the connect took, ms.
    pub elapsed_ms: f64,
    /// The relay's id (hex), for relayed connections.
    pub relay: Option<String>,
    /// Spray probes sent, when this side birthday-probed.
    pub birthday_probes: Option<u32>,
    /// Every path tried, in order.
    pub attempts: Vec<Attempt>,
}

/// The error answer of `POST /connect` (404 `not_found`, 502 `timeout`/`unreachable`/...,
/// 504 when the API gave up). A plain [`ErrorBody`] (a 400) reads as one with no attempts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectFailure {
    /// For people.
    pub error: String,
    /// Machine-readable: `not_found`, `timeout`, `unreachable`, `refused`, `bad_node_id`...
    pub reason: String,
    /// How long the connect took, ms.
    #[serde(default)]
    pub elapsed_ms: f64,
    /// Every path tried, in order.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
}

/// `POST /lookup`: an iterative lookup of a node id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupRequest {
    /// The id looked up.
    pub node_id: String,
}

/// The answer of `POST /lookup`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LookupAnswer {
    /// Whether the node itself was found.
    pub found: bool,
    /// How long it took, ms.
    pub elapsed_ms: f64,
    /// The closest nodes found (hex), closest first.
    pub closest: Vec<String>,
}

/// `PUT /kv/{key}`: the value to write as this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvPut {
    /// At most 4 KiB of UTF-8.
    pub value: String,
}

/// One signed tuple, as `GET /kv/{key}` and `PUT /kv/{key}` answer it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvTuple {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// Higher wins.
    pub version: u64,
    /// The author's node id (hex).
    pub author: String,
    /// The author's Ed25519 signature (hex).
    pub signature: String,
}

/// `GET /kv`: the replica's size and order-independent digest; equal digests mean equal
/// sets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvSummary {
    /// Keys held.
    pub count: usize,
    /// XOR of the tuples' SHA-256 items (hex, 64 characters).
    pub digest: String,
}

/// The body of every refusal: `{"error": "...", "reason": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// For people.
    pub error: String,
    /// Machine-readable, e.g. `bad_request`, `bad_node_id`, `shutting_down`.
    pub reason: String,
}

/// Largest accepted impairment `delay_ms` (one minute). Bounding it keeps `Instant + delay`
/// from overflowing and a typo from parking the agent's queue for days.
pub const MAX_DELAY_MS: u64 = 60_000;

/// `GET`/`PUT /impairment`: userspace impairments of the agent's P2P socket (the lab's
/// fallback where the kernel has no netem). `Default` is no impairment; missing fields are
/// 0.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Impairment {
    /// Percentage of datagrams dropped, 0..=100, applied independently to each direction.
    pub loss_pct: f64,
    /// Delay added to every outbound datagram, in milliseconds (at most [`MAX_DELAY_MS`]).
    pub delay_ms: u64,
    /// Each outbound datagram's delay varies uniformly within `delay_ms ± jitter_ms`; must not
    /// exceed `delay_ms`. Non-zero jitter reorders datagrams.
    pub jitter_ms: u64,
}

impl Impairment {
    /// Checks that the values are in range (the agent refuses others with a 400).
    pub fn validate(&self) -> Result<(), ImpairmentError> {
        // `contains` is false for NaN, so NaN is rejected here too.
        if !(0.0..=100.0).contains(&self.loss_pct) {
            return Err(ImpairmentError::LossOutOfRange(self.loss_pct));
        }
        if self.delay_ms > MAX_DELAY_MS {
            return Err(ImpairmentError::DelayTooLarge(self.delay_ms));
        }
        if self.jitter_ms > self.delay_ms {
            return Err(ImpairmentError::JitterExceedsDelay {
                jitter_ms: self.jitter_ms,
                delay_ms: self.delay_ms,
            });
        }
        Ok(())
    }

    /// Whether this impairs nothing (no loss, no delay).
    pub fn is_none(&self) -> bool {
        self.loss_pct == 0.0 && self.delay_ms == 0
    }
}

/// Why an [`Impairment`] was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ImpairmentError {
    /// `loss_pct` is negative, above 100 or not a number.
    #[error("loss_pct must be a percentage between 0 and 100, got {0}")]
    LossOutOfRange(f64),
    /// `delay_ms` is above [`MAX_DELAY_MS`].
    #[error("delay_ms must be at most {MAX_DELAY_MS} ms, got {0} ms")]
    DelayTooLarge(u64),
    /// `jitter_ms` is larger than `delay_ms`, which would schedule datagrams in the past.
    #[error(
        "jitter_ms ({jitter_ms} ms) must not exceed delay_ms ({delay_ms} ms): \
         delay ± jitter would go below zero"
    )]
    JitterExceedsDelay {
        /// The requested jitter.
        jitter_ms: u64,
        /// The requested delay.
        delay_ms: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_what_the_agent_writes_and_ignores_what_it_does_not_know() {
        let text = r#"{"node_id":"ab","network":"mainnet","listen_addrs":["10.1.0.10:4433"],
            "observed_addrs":[],"nat_type":"unknown","reachable":false,"relay_circuits":0,
            "joined":true,"contacts":3,"pending":0,
            "connections":[{"node_id":"cd","mode":"punched","rtt_ms":null,"remote":"1.2.3.4:5"}],
            "buckets":{"250":3},"tasks_paused":false,"inflight":1,"uptime_s":9,"version":"0.1.0",
            "socket":{"rx_datagrams":1,"rx_bytes":2,"tx_datagrams":3,"tx_bytes":4,"rx_garbage":0,
            "rx_probes":0,"tx_probes":0,"dropped_loss_rx":0,"dropped_loss_tx":0,
            "dropped_queue_full":0,"dropped_probes":0,"tx_errors":0},"added_later":1}"#;
        let s: Status = serde_json::from_str(text).expect("status");
        assert!(s.joined);
        assert_eq!(s.buckets.get(&250), Some(&3));
        assert_eq!(s.connections_in(ConnMode::Punched), 1);
        assert_eq!(s.connections_in(ConnMode::Direct), 0);
        let back: Status =
            serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("again");
        assert_eq!(back, s);
        // A field the controller relies on, missing: refused rather than guessed.
        assert!(serde_json::from_str::<Status>(r#"{"node_id":"ab"}"#).is_err());
    }

    #[test]
    fn connect_bodies() {
        let r: ConnectRequest = serde_json::from_str(r#"{"node_id":"ab"}"#).expect("req");
        assert!(r.fresh, "fresh by default");
        assert_eq!(r, ConnectRequest::fresh("ab"));
        assert_eq!(
            serde_json::to_string(&r).expect("json"),
            r#"{"node_id":"ab","fresh":true}"#
        );
        let a: ConnectAnswer = serde_json::from_str(
            r#"{"node_id":"cd","mode":"relayed","elapsed_ms":12.5,"relay":"ef",
                "birthday_probes":null,"attempts":[{"path":"direct","outcome":"timeout","elapsed_ms":1000.0},
                {"path":"relayed","outcome":"ok","elapsed_ms":11.5}]}"#,
        )
        .expect("answer");
        assert_eq!(a.mode, ConnMode::Relayed);
        assert_eq!(a.attempts[0].path, ConnMode::Direct);
        let f: ConnectFailure =
            serde_json::from_str(r#"{"error":"bad id","reason":"bad_node_id"}"#)
                .expect("a plain error body reads as a failure");
        assert!(f.attempts.is_empty());
        assert!(ConnMode::Direct < ConnMode::Punched && ConnMode::Punched < ConnMode::Relayed);
        for m in [ConnMode::Direct, ConnMode::Punched, ConnMode::Relayed] {
            assert_eq!(ConnMode::parse(m.as_str()), Some(m));
        }
    }

    #[test]
    fn impairments_are_checked() {
        assert_eq!(Impairment::default().validate(), Ok(()));
        let i: Impairment = serde_json::from_str(r#"{"delay_ms": 50}"#).expect("partial");
        assert_eq!(i.delay_ms, 50);
        assert!(!i.is_none());
        assert!(
            Impairment {
                loss_pct: f64::NAN,
                ..Impairment::default()
            }
            .validate()
            .is_err()
        );
        assert!(matches!(
            Impairment {
                delay_ms: 5,
                jitter_ms: 6,
                ..Impairment::default()
            }
            .validate(),
            Err(ImpairmentError::JitterExceedsDelay { .. })
        ));
        assert!(serde_json::from_str::<Impairment>(r#"{"loss": 1}"#).is_err());
    }
}
