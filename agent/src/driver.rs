//! The driver: one task that owns the core and feeds it.
//!
//! It follows [`chaosnet_proto::Node`]'s contract: every input (a connection event, an
//! inbound request, a response, an API command, a timer) goes into the core, then the driver
//! drains the core's outputs and carries them out. Network work is spawned onto the
//! [`Transport`] and comes back as another [`Input`]. Graph changes are written to RocksDB in
//! one batch per drain. Everything arrives through one bounded channel, so the core needs no
//! lock and sees inputs in one order.
//!
//! It also turns the core's activities into spans: a `connect` span from the first dial to
//! the result, a `lookup` span under the connect it serves (or on its own), and a
//! `signal_hop` span for each inbound signal, a child of the sender's span when the signal
//! carried one. The transport's `request` and `connect_attempt` spans hang under them. With
//! spans off (no `--otlp-endpoint`, quiet log filter) none of this is kept.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chaosnet_contract::api::{ConnStatus, Status};
use chaosnet_proto::kv::tuple::{Tuple, TupleRefusal};
use chaosnet_proto::{Activity, ActivityKind, InboundId};
use chaosnet_proto::{
    Command, CommandId, CommandResult, ConnMode, Connected, Event, Failure, GraphChange, Node,
    NodeId, Output, RequestId, Response, Time,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::field::Empty;

use crate::events::Events;
use crate::socket::SocketHandle;
use crate::store::GraphStore;
use crate::transport::{Transport, adopt_remote_parent};
use chaosnet_metrics::Metrics;

/// Capacity of the driver's input channel. Senders wait when it is full, which pushes back
/// on the transport rather than growing memory.
pub const INPUT_CAPACITY: usize = 1024;
/// Most activity spans kept open. The core bounds its activities well below this; past it
/// a new activity is simply not traced.
const MAX_OPEN_SPANS: usize = 1024;

/// Everything that can happen to the driver.
#[derive(Debug)]
pub enum Input {
    /// A connection is up and authenticated.
    ConnUp {
        /// The peer.
        peer: NodeId,
        /// Its address on the connection.
        remote: SocketAddr,
        /// How it was made.
        mode: ConnMode,
        /// The addresses it says it listens on (from its hello).
        listen_addrs: Vec<SocketAddr>,
    },
    /// A relay circuit this node admitted (for `requester`) ended.
    CircuitClosed {
        /// Who asked for it.
        requester: NodeId,
    },
    /// A connection closed.
    ConnDown {
        /// The peer.
        peer: NodeId,
    },
    /// A peer asks something.
    Request {
        /// The peer.
        from: NodeId,
        /// What it asks.
        request: chaosnet_proto::Request,
        /// Where the answer goes.
        reply: oneshot::Sender<Response>,
    },
    /// The result of an outbound request.
    Response {
        /// The core's id.
        id: RequestId,
        /// The answer or why there is none.
        result: Result<Response, Failure>,
    },
    /// The result of a connect.
    ConnectResult {
        /// The core's id.
        id: RequestId,
        /// The connection or why there is none.
        result: Result<Connected, Failure>,
    },
    /// A command from the control API.
    Command {
        /// What to do.
        command: Command,
        /// Where the result goes.
        reply: oneshot::Sender<CommandResult>,
    },
    /// Pause or resume the task loop.
    PauseTasks(bool),
    /// A status snapshot.
    Status(oneshot::Sender<Status>),
    /// The contact list.
    Peers(oneshot::Sender<Vec<PeerStatus>>),
    /// The metrics text, with state gauges refreshed.
    Metrics(oneshot::Sender<String>),
    /// A dial-back hello arrived on the P2P socket.
    DialBackHello {
        /// Its token.
        token: u64,
        /// Where it came from.
        from: SocketAddr,
    },
    /// A dial-back probe arrived at a test socket.
    DialBackProbe {
        /// Its token.
        token: u64,
        /// Where it came from.
        from: SocketAddr,
    },
    /// The link impairment was changed through the control API.
    Impairment(chaosnet_proto::LinkImpairment),
    /// The claims this node holds.
    Claims(oneshot::Sender<Vec<chaosnet_proto::Claim>>),
    /// Write a key-value tuple as this node.
    KvPut {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// The stored tuple, or why it was refused.
        reply: oneshot::Sender<Result<Tuple, TupleRefusal>>,
    },
    /// The tuple for a key.
    KvGet {
        /// The key.
        key: String,
        /// The tuple, if any.
        reply: oneshot::Sender<Option<Tuple>>,
    },
    /// The replica's size and digest.
    KvSummary(oneshot::Sender<(usize, [u8; 32])>),
    /// Local discovery heard a node of our network on the LAN.
    Discovered {
        /// The node.
        peer: NodeId,
        /// Where it says it listens.
        addrs: Vec<SocketAddr>,
    },
}

/// One contact in `GET /peers`.
#[derive(Clone, Debug, Serialize)]
pub struct PeerStatus {
    /// Peer id (hex).
    pub node_id: String,
    /// Known addresses, most recent first.
    pub addrs: Vec<String>,
    /// How we last connected.
    pub mode: &'static str,
    /// NAT type it advertised.
    pub nat_type: &'static str,
    /// Whether a connection is open now.
    pub connected: bool,
    /// Smoothed RTT, if measured.
    pub rtt_ms: Option<f64>,
    /// Requests it answered.
    pub successes: u32,
    /// Requests to it that failed.
    pub failures: u32,
    /// Last time it answered, Unix milliseconds.
    pub last_seen_unix_ms: u64,
    /// Peer-choice score (higher is better).
    pub score: f64,
}

/// Maps the core's [`Time`] (microseconds since the Unix epoch, so persisted times stay
/// meaningful across restarts) to tokio's monotonic clock.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
    start_unix_us: u64,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        let start_unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Clock {
            start: Instant::now(),
            start_unix_us,
        }
    }

    /// The core's current time.
    pub fn now(&self) -> Time {
        Time(self.start_unix_us) + self.start.elapsed()
    }

    /// The tokio instant of core time `t`.
    pub fn instant(&self, t: Time) -> Instant {
        self.start + Duration::from_micros(t.0.saturating_sub(self.start_unix_us))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// The driver task's state.
pub struct Driver {
    node: Node,
    clock: Clock,
    transport: Transport,
    store: GraphStore,
    metrics: Arc<Metrics>,
    events: Events,
    socket: SocketHandle,
    network: String,
    inputs_tx: mpsc::Sender<Input>,
    inputs: mpsc::Receiver<Input>,
    inbound: HashMap<InboundId, oneshot::Sender<Response>>,
    commands: HashMap<CommandId, oneshot::Sender<CommandResult>>,
    next_inbound: u64,
    spans: HashMap<Activity, tracing::Span>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("node", &self.node.id())
            .finish()
    }
}

impl Driver {
    /// A driver around a started-to-be node.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: Node,
        clock: Clock,
        transport: Transport,
        store: GraphStore,
        metrics: Arc<Metrics>,
        events: Events,
        socket: SocketHandle,
        network: String,
        inputs_tx: mpsc::Sender<Input>,
        inputs: mpsc::Receiver<Input>,
    ) -> Driver {
        Driver {
            node,
            clock,
            transport,
            store,
            metrics,
            events,
            socket,
            network,
            inputs_tx,
            inputs,
            inbound: HashMap::new(),
            commands: HashMap::new(),
            next_inbound: 0,
            spans: HashMap::new(),
        }
    }

    /// Runs until `shutdown` resolves or every input sender is gone.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        self.node.start(self.clock.now());
        loop {
            self.drain();
            let wake = self.node.poll_timeout().map(|t| self.clock.instant(t));
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                input = self.inputs.recv() => match input {
                    Some(input) => self.handle(input),
                    None => break,
                },
                _ = sleep => self.node.handle_timeout(self.clock.now()),
            }
        }
        self.drain();
        self.transport.shutdown();
    }

    fn handle(&mut self, input: Input) {
        let now = self.clock.now();
        match input {
            Input::ConnUp {
                peer,
                remote,
                mode,
                listen_addrs,
            } => {
                self.node.handle_connection_up(now, peer, remote, mode);
                self.node.handle_listen_addrs(now, peer, &listen_addrs);
            }
            Input::CircuitClosed { requester } => {
                self.node.handle_circuit_closed(now, requester, true)
            }
            Input::ConnDown { peer } => self.node.handle_connection_down(now, peer),
            Input::Request {
                from,
                request,
                reply,
            } => {
                self.next_inbound += 1;
                let id = InboundId(self.next_inbound);
                self.inbound.insert(id, reply);
                if let chaosnet_proto::Request::Signal { signal, trace, .. } = &request {
                    let span = tracing::debug_span!(parent: None, "signal_hop", from = %from.short(), requester = %signal.from.short(), to = %signal.to.short(), outcome = Empty);
                    adopt_remote_parent(&span, *trace);
                    self.open_span(Activity::Inbound(id), span);
                }
                self.node.handle_request(now, from, id, request);
            }
            Input::Response { id, result } => self.node.handle_response(now, id, result),
            Input::ConnectResult { id, result } => self.node.handle_connect_result(now, id, result),
            Input::Command { command, reply } => {
                let id = self.node.command(now, command);
                self.commands.insert(id, reply);
            }
            Input::PauseTasks(p) => self.node.set_tasks_paused(p),
            Input::Status(tx) => {
                let _ = tx.send(self.status());
            }
            Input::Peers(tx) => {
                let _ = tx.send(self.peers());
            }
            Input::Metrics(tx) => {
                self.metrics.observe_state(&self.node, self.socket.stats());
                let _ = tx.send(self.metrics.encode());
            }
            Input::DialBackProbe { token, from } => {
                self.node.handle_dialback_probe(now, token, from)
            }
            Input::DialBackHello { token, from } => {
                self.node.handle_dialback_hello(now, token, from)
            }
            Input::Impairment(i) => self.node.handle_impairment(now, i),
            Input::Discovered { peer, addrs } => self.node.handle_discovered(now, peer, &addrs),
            Input::Claims(tx) => {
                let _ = tx.send(self.node.claims().cloned().collect());
            }
            Input::KvPut { key, value, reply } => {
                let _ = reply.send(self.node.kv_write(&key, &value));
            }
            Input::KvGet { key, reply } => {
                let _ = reply.send(self.node.kv().get(&key).cloned());
            }
            Input::KvSummary(tx) => {
                let kv = self.node.kv();
                let _ = tx.send((kv.len(), kv.digest()));
            }
        }
    }

    fn drain(&mut self) {
        let mut changes: Vec<GraphChange> = Vec::new();
        while let Some(out) = self.node.poll_output() {
            match out {
                Output::Request {
                    id,
                    peer,
                    addrs,
                    request,
                    parent,
                } => {
                    let (t, tx) = (self.transport.clone(), self.inputs_tx.clone());
                    let parent = self.span_of(parent);
                    tokio::spawn(async move {
                        let result = t.request(peer, addrs, request, parent).await;
                        let _ = tx.send(Input::Response { id, result }).await;
                    });
                }
                Output::Connect {
                    id,
                    peer,
                    addrs,
                    fresh,
                    path,
                    timeout_ms,
                    parent,
                } => {
                    let (t, tx) = (self.transport.clone(), self.inputs_tx.clone());
                    let parent = self.span_of(parent);
                    tokio::spawn(async move {
                        let result = t
                            .connect(peer, addrs, fresh, path, timeout_ms, parent)
                            .await;
                        let _ = tx.send(Input::ConnectResult { id, result }).await;
                    });
                }
                Output::Respond { inbound, response } => {
                    if let Some(span) = self.spans.remove(&Activity::Inbound(inbound)) {
                        let outcome = match &response {
                            Response::Error { code } => code.as_str(),
                            _ => "ok",
                        };
                        span.record("outcome", outcome);
                    }
                    if let Some(tx) = self.inbound.remove(&inbound) {
                        let _ = tx.send(response);
                    }
                }
                Output::Punch { peer, plan, parent } => {
                    self.transport.punch(peer, plan, self.span_of(parent))
                }
                Output::Disconnect { peer } => self.transport.disconnect(&peer),
                Output::DialBack {
                    to,
                    token,
                    other_port,
                } => self.transport.dial_back(to, token, other_port),
                Output::DialBackListen {
                    server,
                    token,
                    timeout_ms,
                } => self.transport.dial_back_listen(server, token, timeout_ms),
                Output::Persist(change) => changes.push(change),
                Output::StoreClaim(claim) => {
                    if let Err(e) = self.store.put_claim(&claim) {
                        self.metrics.store_error();
                        tracing::warn!(error = %e, "claim write failed");
                    }
                }
                Output::StoreTuple(tuple) => {
                    if let Err(e) = self.store.put_tuple(&tuple) {
                        self.metrics.store_error();
                        tracing::warn!(error = %e, "tuple write failed");
                    }
                }
                Output::Event(event) => {
                    self.metrics.record(&event);
                    match event {
                        Event::CommandFinished { id, result } => {
                            if let Some(tx) = self.commands.remove(&id) {
                                let _ = tx.send(result);
                            }
                        }
                        Event::ActivityStarted {
                            activity,
                            parent,
                            kind,
                        } => {
                            let parent = self.span_of(parent).and_then(|p| p.id());
                            let span = match kind {
                                ActivityKind::Connect { peer } => {
                                    tracing::debug_span!(parent: parent, "connect", peer = %peer.short(), mode = Empty, outcome = Empty)
                                }
                                ActivityKind::Lookup { target, purpose } => {
                                    tracing::debug_span!(parent: parent, "lookup", target = %target.short(), purpose, outcome = Empty)
                                }
                            };
                            self.open_span(activity, span);
                        }
                        Event::ActivityEnded {
                            activity,
                            outcome,
                            mode,
                        } => {
                            if let Some(span) = self.spans.remove(&activity) {
                                span.record("outcome", outcome);
                                if let Some(m) = mode {
                                    span.record("mode", m.as_str());
                                }
                            }
                        }
                        Event::Node(e) => self.events.publish(self.clock.now().as_millis(), &e),
                        Event::Joined => {
                            tracing::info!(target: "chaosnet::_events::joined", contacts = self.node.graph().len(), "joined")
                        }
                        _ => {}
                    }
                }
            }
        }
        if !changes.is_empty()
            && let Err(e) = self.store.apply(&changes)
        {
            self.metrics.store_error();
            tracing::warn!(error = %e, "node graph write failed");
        }
    }

    /// Keeps `span` open until its activity ends, unless spans are off or too many are open.
    fn open_span(&mut self, activity: Activity, span: tracing::Span) {
        if !span.is_disabled() && self.spans.len() < MAX_OPEN_SPANS {
            self.spans.insert(activity, span);
        }
    }

    /// The open span of `activity`, to hang a child under.
    fn span_of(&self, activity: Option<Activity>) -> Option<tracing::Span> {
        activity.and_then(|a| self.spans.get(&a)).cloned()
    }

    fn status(&self) -> Status {
        let now = self.clock.now();
        let mut connections: Vec<ConnStatus> = self
            .node
            .connections()
            .map(|(id, c)| ConnStatus {
                node_id: id.to_hex(),
                mode: c.mode,
                rtt_ms: self
                    .node
                    .graph()
                    .get(id)
                    .and_then(|k| k.srtt_us)
                    .map(|us| us as f64 / 1000.0),
                remote: c.remote.to_string(),
            })
            .collect();
        connections.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let buckets = self
            .node
            .graph()
            .fill()
            .into_iter()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .collect();
        Status {
            node_id: self.node.id().to_hex(),
            network: self.network.clone(),
            listen_addrs: self
                .node
                .config()
                .listen_addrs
                .iter()
                .map(|a| a.to_string())
                .collect(),
            observed_addrs: self
                .node
                .observed_addrs()
                .iter()
                .map(|a| a.to_string())
                .collect(),
            nat_type: self.node.nat_type().as_str().to_string(),
            filtering: self
                .node
                .measured_filtering()
                .map(|f| f.as_str().to_string()),
            reachable: self.node.reachable(),
            relay_circuits: self.node.relay_circuits(),
            joined: self.node.joined(),
            contacts: self.node.graph().len(),
            pending: self.node.graph().pending_len(),
            connections,
            buckets,
            tasks_paused: self.node.tasks_paused(),
            inflight: self.node.inflight(),
            uptime_s: now
                .since(self.clock.now() - self.clock.start.elapsed())
                .as_secs(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            socket: self.socket.stats(),
        }
    }

    fn peers(&self) -> Vec<PeerStatus> {
        let now = self.clock.now();
        let connected: std::collections::HashSet<NodeId> =
            self.node.connections().map(|(id, _)| *id).collect();
        let mut out: Vec<PeerStatus> = self
            .node
            .graph()
            .iter()
            .map(|c| PeerStatus {
                node_id: c.id.to_hex(),
                addrs: c.addrs.iter().map(|a| a.to_string()).collect(),
                mode: c.mode.as_str(),
                nat_type: c.nat.as_str(),
                connected: connected.contains(&c.id),
                rtt_ms: c.srtt_us.map(|us| us as f64 / 1000.0),
                successes: c.successes,
                failures: c.failures,
                last_seen_unix_ms: c.last_seen.as_millis(),
                score: c.score(now),
            })
            .collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score));
        out
    }
}
