//! QUIC transport: dialing, accepting, the per-connection hello, and request streams.
//!
//! This is the I/O half of the shell. It authenticates peers (TLS bound to NodeIds, network
//! ALPN, private-network proofs in the [`Hello`]), carries one request and one response per
//! bidirectional stream with the [`chaosnet_proto`] framing ([`encode`], [`decode`]), and reports connections and
//! inbound requests to the driver as [`Input`]s. It makes no protocol decision: which peer to
//! ask, when and why is the core's business.
//!
//! A malformed, truncated or oversize frame closes only its stream and is counted; it never
//! closes the connection or panics.
//!
//! On a private network the keys can change while running ([`Transport::set_keys`]): each
//! side then sends its new proofs as a fresh hello on a unidirectional stream, and every
//! connection whose latest proofs match no key we still hold unexpired is closed, checked
//! every [`KEY_CHECK_INTERVAL`] ([`Transport::watch_keys`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chaosnet_proto::{
    ConnMode, Connected, DecodeError, ErrorCode, Failure, HEADER_LEN, Hello, MAX_FRAME_LEN, NodeId,
    Path, PunchPlan, Request, Response, TraceContext, Validate, decode, decode_body, encode,
    frame_len,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::{Notify, Semaphore};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::Instrument;
use tracing::field::Empty;

use crate::driver::Input;
use crate::identity::Identity;
use crate::punch::Puncher;
use crate::relay;
use crate::socket::SocketHandle;
use crate::tls::{self, NetworkId, NetworkKey, Refusal};
use chaosnet_metrics::Metrics;

/// Application close code for a connection we drop to keep better peers.
const CLOSE_PRUNED: u32 = 0x5001;
/// How often a private network's connections are checked against the keys we hold: a
/// connection whose key expired or was removed is closed within this long.
pub const KEY_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Stream error code for a frame we could not decode.
const STREAM_BAD_FRAME: u32 = 0x5101;
/// Largest hello accepted: a few proofs and addresses.
const MAX_HELLO_LEN: usize = 2048;
/// Addresses dialed at once per attempt.
const MAX_DIAL_ADDRS: usize = 5;
/// Peers we are punching towards at once (as the signalled side).
const MAX_PUNCHING: usize = 64;
/// Stream error code for a request that did not arrive, or whose answer was not read, in time.
const STREAM_STALLED: u32 = 0x5102;
/// Stream error code for a unidirectional stream we do not expect.
const STREAM_UNEXPECTED: u32 = 0x5103;
/// Bytes of request bodies read from one connection at once. Bodies are read as their bytes
/// arrive; this bounds what a peer that starts many large frames and never finishes them
/// makes us hold beyond quinn's [`tls::CONNECTION_RECEIVE_WINDOW`] (four of the largest
/// frames; small requests, the bulk of the traffic, take few of these bytes).
const BODY_BUDGET_PER_CONN: usize = 4 * MAX_FRAME_LEN;

/// Timeouts of the transport. Defaults in [`Default`].
#[derive(Clone, Copy, Debug)]
pub struct TransportTimeouts {
    /// A dial, handshake included. Default 5,000 ms.
    pub connect_ms: u64,
    /// The hello exchange after the handshake. Default 5,000 ms.
    pub hello_ms: u64,
    /// One request, from opening the stream to the response. Default 10,000 ms.
    pub request_ms: u64,
}

impl Default for TransportTimeouts {
    fn default() -> Self {
        TransportTimeouts {
            connect_ms: 5_000,
            hello_ms: 5_000,
            request_ms: 10_000,
        }
    }
}

/// Why reading a frame failed.
#[derive(Debug)]
enum FrameError {
    Decode(DecodeError),
    Stream,
}

/// A registered connection.
#[derive(Debug, Clone)]
struct Registered {
    conn: quinn::Connection,
    outbound: bool,
    mode: ConnMode,
    /// The peer's latest membership proofs (private networks), checked again whenever our
    /// keys change or expire.
    proofs: Vec<[u8; 32]>,
}

/// How long a replaced connection stays open so requests already on it can finish.
const REPLACED_GRACE: Duration = Duration::from_secs(2);
/// Application close code for a connection replaced by a newer one to the same peer.
const CLOSE_REPLACED: u32 = 0x5002;

/// The QUIC side of an agent. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Transport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    me: NodeId,
    network: NetworkId,
    /// The private network's keys, replaced whole by [`Transport::set_keys`].
    keys: Mutex<Arc<Vec<NetworkKey>>>,
    /// Wakes [`Transport::watch_keys`] when keys or a peer's proofs changed.
    keys_changed: Notify,
    listen_addrs: Vec<SocketAddr>,
    /// The connection used for each peer, and whether we dialed it.
    conns: Mutex<HashMap<NodeId, Registered>>,
    inputs: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    timeouts: TransportTimeouts,
    socket: SocketHandle,
    puncher: Puncher,
    /// Where dial-back test sockets report the probes they hear.
    dialback_probes: mpsc::Sender<(SocketAddr, u64)>,
    /// Peers that signalled us, until when, and how to stop our probes once they connect.
    punching: Mutex<HashMap<NodeId, (tokio::time::Instant, Arc<Notify>)>>,
    /// Circuits relays brought us that are open now.
    incoming: Arc<relay::IncomingCircuits>,
}

impl Transport {
    /// A transport over `endpoint` (already carrying the server config).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        endpoint: quinn::Endpoint,
        identity: &Identity,
        network: NetworkId,
        keys: Vec<NetworkKey>,
        listen_addrs: Vec<SocketAddr>,
        inputs: mpsc::Sender<Input>,
        metrics: Arc<Metrics>,
        timeouts: TransportTimeouts,
        socket: SocketHandle,
    ) -> Result<Transport, tls::TlsError> {
        let client = tls::client_config(identity, &network)?;
        let (hello_tx, mut hellos) = mpsc::channel::<(SocketAddr, u64)>(64);
        let (probe_tx, mut probes) = mpsc::channel::<(SocketAddr, u64)>(64);
        let puncher = Puncher::new(socket.clone(), hello_tx);
        let to_driver = inputs.clone();
        tokio::spawn(async move {
            loop {
                let input = tokio::select! {
                    Some((from, token)) = hellos.recv() => Input::DialBackHello { token, from },
                    Some((from, token)) = probes.recv() => Input::DialBackProbe { token, from },
                    else => break,
                };
                if to_driver.send(input).await.is_err() {
                    break;
                }
            }
        });
        Ok(Transport {
            inner: Arc::new(Inner {
                endpoint,
                client,
                me: identity.node_id(),
                network,
                keys: Mutex::new(Arc::new(keys)),
                keys_changed: Notify::new(),
                listen_addrs,
                conns: Mutex::new(HashMap::new()),
                inputs,
                metrics,
                timeouts,
                socket,
                puncher,
                dialback_probes: probe_tx,
                punching: Mutex::new(HashMap::new()),
                incoming: Arc::new(relay::IncomingCircuits::default()),
            }),
        })
    }

    /// Accepts connections until the endpoint closes.
    pub async fn accept_loop(self) {
        while let Some(incoming) = self.inner.endpoint.accept().await {
            let this = self.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => {
                        let _ = this.establish(conn, false, None).await;
                    }
                    Err(e) => this.handshake_failed(&e),
                }
            });
        }
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.conns().len()
    }

    /// Runs a dial-back test socket (see [`Puncher::dial_back_listen`]).
    pub fn dial_back_listen(&self, server: SocketAddr, token: u64, timeout_ms: u64) {
        let heard = self.inner.dialback_probes.clone();
        let timeout = Duration::from_millis(timeout_ms);
        self.inner
            .puncher
            .dial_back_listen(server, token, timeout, heard);
    }

    /// Sends the probes of a dial-back order (see [`Puncher::dial_back`]).
    pub fn dial_back(&self, to: SocketAddr, token: u64, other_port: bool) {
        self.inner.puncher.dial_back(to, token, other_port);
    }

    /// Closes the connection to `peer`, if any.
    pub fn disconnect(&self, peer: &NodeId) {
        if let Some(Registered { conn: c, .. }) = self.conns().remove(peer) {
            c.close(quinn::VarInt::from_u32(CLOSE_PRUNED), b"pruned");
        }
    }

    /// Closes every connection and the endpoint.
    pub fn shutdown(&self) {
        self.inner
            .endpoint
            .close(quinn::VarInt::from_u32(0), b"shutdown");
    }

    /// Connects to `peer` along `path`, reusing a live connection unless `fresh`. Traced as
    /// a `connect_attempt` span (under `parent`, the whole connect's span) with the path
    /// tried, the mode reached and the outcome.
    #[allow(clippy::too_many_arguments)]
    pub async fn connect(
        &self,
        peer: NodeId,
        addrs: Vec<SocketAddr>,
        fresh: bool,
        path: Path,
        timeout_ms: u64,
        parent: Option<tracing::Span>,
    ) -> Result<Connected, Failure> {
        let path_label = match &path {
            Path::Direct => "direct",
            Path::Punch(_) => "punched",
            Path::Relay { .. } => "relayed",
        };
        let span = tracing::debug_span!(parent: parent.and_then(|p| p.id()), "connect_attempt", peer = %peer.short(), fresh, path = path_label, mode = Empty, outcome = Empty);
        let result = self
            .connect_inner(peer, addrs, fresh, path, timeout_ms)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(c) => {
                span.record("mode", c.mode.as_str());
                span.record("outcome", "ok");
            }
            Err(f) => {
                span.record("outcome", f.as_str());
            }
        }
        result
    }

    async fn connect_inner(
        &self,
        peer: NodeId,
        addrs: Vec<SocketAddr>,
        fresh: bool,
        path: Path,
        timeout_ms: u64,
    ) -> Result<Connected, Failure> {
        if !fresh && let Some((c, mode)) = self.live_with_mode(&peer) {
            return Ok(Connected {
                mode,
                remote: c.remote_address(),
                birthday_probes: None,
            });
        }
        let timeout = Duration::from_millis(timeout_ms);
        match path {
            Path::Direct => {
                let conn = self.dial(peer, &addrs, timeout, ConnMode::Direct).await?;
                Ok(Connected {
                    mode: ConnMode::Direct,
                    remote: conn.remote_address(),
                    birthday_probes: None,
                })
            }
            Path::Punch(plan) => self.punch_dial(peer, plan).await,
            Path::Relay { relay, relay_addrs } => {
                self.relay_dial(peer, relay, relay_addrs, timeout).await
            }
        }
    }

    /// Our side of a punch the peer will dial (it signalled us): probes until it connects or
    /// the plan times out. One session per requester: a newer signal from the same peer
    /// stops the older session. Traced as a `punch` span under `parent`, the signal's
    /// `signal_hop`.
    pub fn punch(&self, peer: NodeId, plan: PunchPlan, parent: Option<tracing::Span>) {
        let stop = Arc::new(Notify::new());
        {
            let mut punching = self.punching();
            let now = tokio::time::Instant::now();
            punching.retain(|_, (until, _)| *until > now);
            if let Some((_, older)) = punching.remove(&peer) {
                older.notify_one();
            }
            if punching.len() >= MAX_PUNCHING {
                return;
            }
            let until = now + Duration::from_millis(plan.timeout_ms);
            punching.insert(peer, (until, stop.clone()));
        }
        self.inner.metrics.punch_started(plan.birthday.is_some());
        let this = self.clone();
        tokio::spawn(
            async move {
                let (tx, _rx) = mpsc::channel(16);
                let report = this
                    .inner
                    .puncher
                    .run(&plan, tx, stop, Arc::new(AtomicU32::new(0)))
                    .await;
                tracing::debug!(
                    learned = report.learned.len(),
                    birthday_hit = report.birthday_hit,
                    "punch (signalled side) ended"
                );
            }
            .instrument(
                tracing::debug_span!(parent: parent.and_then(|p| p.id()), "punch", peer = %peer.short()),
            ),
        );
    }

    /// Dials `peer` while running our side of the punch: the plan's addresses at once, and
    /// every address the peer's probes reveal as they come.
    async fn punch_dial(&self, peer: NodeId, plan: PunchPlan) -> Result<Connected, Failure> {
        let timeout = Duration::from_millis(plan.timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        let stop = Arc::new(Notify::new());
        let sprayed = Arc::new(AtomicU32::new(0));
        let (learned_tx, mut learned) = mpsc::channel::<SocketAddr>(16);
        let birthday = plan.birthday;
        self.inner.metrics.punch_started(birthday.is_some());
        let session = {
            let (puncher, plan, stop, sprayed) = (
                self.inner.puncher.clone(),
                plan.clone(),
                stop.clone(),
                sprayed.clone(),
            );
            tokio::spawn(async move { puncher.run(&plan, learned_tx, stop, sprayed).await })
        };
        let mut dials: JoinSet<Result<quinn::Connection, Failure>> = JoinSet::new();
        let mut dialed: Vec<SocketAddr> = Vec::new();
        for a in plan.peer_addrs.iter().take(MAX_DIAL_ADDRS) {
            dialed.push(*a);
            let this = self.clone();
            let a = *a;
            dials.spawn(async move { this.dial(peer, &[a], timeout, ConnMode::Punched).await });
        }
        let mut last = Failure::Timeout;
        let result = loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break Err(Failure::Timeout),
                Some(a) = learned.recv() => {
                    if !dialed.contains(&a) && dialed.len() < 4 * MAX_DIAL_ADDRS {
                        dialed.push(a);
                        let this = self.clone();
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        dials.spawn(async move { this.dial(peer, &[a], left, ConnMode::Punched).await });
                    }
                }
                Some(done) = dials.join_next() => match done {
                    Ok(Ok(conn)) => break Ok(conn),
                    Ok(Err(Failure::Refused)) => break Err(Failure::Refused),
                    Ok(Err(f)) => last = f,
                    Err(_) => {}
                },
                else => break Err(last),
            }
        };
        dials.abort_all();
        stop.notify_one();
        let _ = session.await;
        let conn = result?;
        let probes = sprayed.load(Ordering::Relaxed);
        if birthday.is_some() && probes > 0 {
            self.inner.metrics.birthday_probes(probes);
        }
        Ok(Connected {
            mode: ConnMode::Punched,
            remote: conn.remote_address(),
            birthday_probes: (birthday.is_some() && probes > 0).then_some(probes),
        })
    }

    /// Opens a circuit through `relay` and runs the handshake with `peer` end to end over it.
    async fn relay_dial(
        &self,
        peer: NodeId,
        relay: NodeId,
        relay_addrs: Vec<SocketAddr>,
        timeout: Duration,
    ) -> Result<Connected, Failure> {
        let deadline = tokio::time::Instant::now() + timeout;
        let attempt = async {
            let conn = match self.live(&relay) {
                Some(c) => c,
                None => {
                    self.dial(relay, &relay_addrs, timeout, ConnMode::Direct)
                        .await?
                }
            };
            let (mut send, mut recv) = conn.open_bi().await.map_err(|_| Failure::Unreachable)?;
            let open = Request::RelayOpen {
                target: peer,
                trace: trace_context(&tracing::Span::current()),
            };
            let frame = encode(&open).map_err(|_| Failure::Protocol)?;
            send.write_all(&frame)
                .await
                .map_err(|_| Failure::Unreachable)?;
            let answer = match read_frame::<Response>(&mut recv, None).await {
                Ok(r) => r,
                Err(FrameError::Decode(e)) => {
                    self.inner.metrics.decode_error(e.metric_label());
                    return Err(Failure::Protocol);
                }
                Err(FrameError::Stream) => return Err(Failure::Unreachable),
            };
            match answer {
                Response::RelayAccepted { .. } => {}
                Response::Error {
                    code: ErrorCode::Busy | ErrorCode::Refused | ErrorCode::RateLimited,
                } => return Err(Failure::Busy),
                Response::Error { .. } => return Err(Failure::Unreachable),
                _ => return Err(Failure::Protocol),
            }
            let via =
                relay::attach(&self.inner.socket, send, recv, None).map_err(|_| Failure::Busy)?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let result = self.dial(peer, &[via], left, ConnMode::Relayed).await;
            if result.is_err() {
                self.inner.socket.remove_route(&via);
            }
            result
        };
        let conn = tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| Failure::Timeout)??;
        Ok(Connected {
            mode: ConnMode::Relayed,
            remote: conn.remote_address(),
            birthday_probes: None,
        })
    }

    /// Sends `request` to `peer` on a fresh stream and waits for the response. Traced as a
    /// `request` span (under `parent`: the lookup, connect or carried signal it serves) with
    /// the request kind and outcome. A signal carries the span's context, so the next hop's
    /// span joins the trace.
    pub async fn request(
        &self,
        peer: NodeId,
        addrs: Vec<SocketAddr>,
        mut request: Request,
        parent: Option<tracing::Span>,
    ) -> Result<Response, Failure> {
        let kind = request.kind();
        let span = tracing::debug_span!(parent: parent.and_then(|p| p.id()), "request", peer = %peer.short(), kind, outcome = Empty);
        if let Request::Signal { trace, .. } = &mut request {
            *trace = trace_context(&span);
        }
        let result = self
            .request_inner(peer, addrs, request)
            .instrument(span.clone())
            .await;
        span.record(
            "outcome",
            result.as_ref().map_or_else(|f| f.as_str(), |_| "ok"),
        );
        result
    }

    async fn request_inner(
        &self,
        peer: NodeId,
        addrs: Vec<SocketAddr>,
        request: Request,
    ) -> Result<Response, Failure> {
        let conn = match self.live(&peer) {
            Some(c) => c,
            None => {
                let t = Duration::from_millis(self.inner.timeouts.connect_ms);
                self.dial(peer, &addrs, t, ConnMode::Direct).await?
            }
        };
        let deadline = Duration::from_millis(self.inner.timeouts.request_ms);
        match tokio::time::timeout(deadline, self.exchange(&conn, &request)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout),
        }
    }

    async fn exchange(
        &self,
        conn: &quinn::Connection,
        request: &Request,
    ) -> Result<Response, Failure> {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|_| Failure::Unreachable)?;
        write_frame(&mut send, request)
            .await
            .map_err(|_| Failure::Unreachable)?;
        match read_frame::<Response>(&mut recv, None).await {
            Ok(r) => Ok(r),
            Err(FrameError::Decode(e)) => {
                self.inner.metrics.decode_error(e.metric_label());
                Err(Failure::Protocol)
            }
            Err(FrameError::Stream) => Err(Failure::Unreachable),
        }
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Registered>> {
        // A poisoned lock only means another task panicked mid-insert; the map is still usable.
        self.inner.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self, peer: &NodeId) -> Option<quinn::Connection> {
        self.live_with_mode(peer).map(|(c, _)| c)
    }

    fn live_with_mode(&self, peer: &NodeId) -> Option<(quinn::Connection, ConnMode)> {
        let mut conns = self.conns();
        match conns.get(peer) {
            Some(r) if r.conn.close_reason().is_none() => Some((r.conn.clone(), r.mode)),
            Some(_) => {
                conns.remove(peer);
                None
            }
            None => None,
        }
    }

    fn punching(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<NodeId, (tokio::time::Instant, Arc<Notify>)>> {
        // A poisoned lock only means another task panicked mid-insert; the map is still usable.
        self.inner
            .punching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Dials every address at once (up to [`MAX_DIAL_ADDRS`]); the first handshake wins and
    /// the others are dropped. `mode` is how the connection will be recorded.
    async fn dial(
        &self,
        peer: NodeId,
        addrs: &[SocketAddr],
        timeout: Duration,
        mode: ConnMode,
    ) -> Result<quinn::Connection, Failure> {
        if peer == self.inner.me {
            return Err(Failure::Unreachable);
        }
        let mut attempts: JoinSet<Result<quinn::Connection, Failure>> = JoinSet::new();
        // Our own socket's address can be among a peer's: every pod binds the same inner
        // address, and home LANs reuse 192.168.x. Dialing it would only reach ourselves.
        let own = self.inner.endpoint.local_addr().ok();
        for addr in addrs
            .iter()
            .filter(|a| Some(**a) != own)
            .take(MAX_DIAL_ADDRS)
        {
            // quinn opens a span for the connection's whole life under the *current* span;
            // starting the dial on a task outside our `connect`/`request` span lets that span
            // end (and be exported) when the attempt ends, not when the connection closes.
            let (ep, client, addr, name) = (
                self.inner.endpoint.clone(),
                self.inner.client.clone(),
                *addr,
                tls::server_name(&peer),
            );
            let this = self.clone();
            attempts.spawn(
                async move {
                    let connecting = ep.connect_with(client, addr, &name).map_err(|e| {
                        tracing::debug!(%addr, error = %e, "cannot dial");
                        Failure::Unreachable
                    })?;
                    match tokio::time::timeout(timeout, connecting).await {
                        Ok(Ok(conn)) => this.establish(conn, true, Some(mode)).await,
                        Ok(Err(e)) => {
                            if wrong_host(&e) {
                                // We rejected its certificate: whoever answers at this
                                // address is not `peer` (a private address reused on
                                // another LAN). Other addresses may still reach it.
                                tracing::debug!(%addr, "another node answers at this address");
                                return Err(Failure::Unreachable);
                            }
                            if let Some(r) = tls::classify_connection_error(&e) {
                                this.inner.metrics.refusal(r.metric_label());
                                return Err(Failure::Refused);
                            }
                            tracing::debug!(%addr, error = %e, "dial failed");
                            Err(Failure::Unreachable)
                        }
                        Err(_) => Err(Failure::Timeout),
                    }
                }
                .instrument(tracing::Span::none()),
            );
        }
        let mut last = Failure::Unreachable;
        while let Some(done) = attempts.join_next().await {
            match done {
                Ok(Ok(conn)) => {
                    attempts.abort_all();
                    return Ok(conn);
                }
                Ok(Err(Failure::Refused)) => {
                    attempts.abort_all();
                    return Err(Failure::Refused);
                }
                Ok(Err(f)) => {
                    if last != Failure::Timeout {
                        last = f;
                    }
                }
                Err(_) => {}
            }
        }
        Err(last)
    }

    fn handshake_failed(&self, e: &quinn::ConnectionError) {
        if let Some(r) = tls::classify_connection_error(e) {
            self.inner.metrics.refusal(r.metric_label());
        }
        tracing::debug!(error = %e, "inbound handshake failed");
    }

    /// Runs the hello exchange on a handshaken connection, checks membership, registers it
    /// and starts serving its streams.
    async fn establish(
        &self,
        conn: quinn::Connection,
        outbound: bool,
        mode: Option<ConnMode>,
    ) -> Result<quinn::Connection, Failure> {
        let peer = match tls::peer_node_id(&conn) {
            Ok(p) => p,
            Err(_) => {
                self.refuse(&conn, Refusal::IdentityMismatch);
                return Err(Failure::Refused);
            }
        };
        let deadline = Duration::from_millis(self.inner.timeouts.hello_ms);
        let hello = match tokio::time::timeout(deadline, self.hello(&conn, &peer)).await {
            Ok(Ok(h)) => h,
            Ok(Err(f)) => return Err(f),
            Err(_) => {
                conn.close(quinn::VarInt::from_u32(0), b"hello timeout");
                return Err(Failure::Timeout);
            }
        };
        if self.inner.network.is_private() {
            let keys = self.keys();
            if let Err(r) = tls::verify_membership(&conn, &keys, &peer, &hello.proofs, unix_now()) {
                self.refuse(&conn, r);
                return Err(Failure::Refused);
            }
        }
        // Both sides verify each other, so neither may call the connection up before the
        // other accepted it too: each sends a one-byte verdict and waits for the peer's.
        match tokio::time::timeout(deadline, self.confirm(&conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(f)) => return Err(f),
            Err(_) => {
                conn.close(quinn::VarInt::from_u32(0), b"hello timeout");
                return Err(Failure::Timeout);
            }
        }
        let remote = conn.remote_address();
        let mode = mode.unwrap_or_else(|| self.inbound_mode(&peer, &remote));
        self.register(peer, conn.clone(), outbound, mode, hello.proofs.clone());
        self.inner.metrics.connection_opened(mode);
        let _ = self
            .inner
            .inputs
            .send(Input::ConnUp {
                peer,
                remote,
                mode,
                listen_addrs: hello.listen_addrs.clone(),
            })
            .await;
        tokio::spawn(self.clone().serve(conn.clone(), peer));
        tokio::spawn(self.clone().serve_uni(conn.clone(), peer));
        Ok(conn)
    }

    /// Makes `conn` the connection for `peer`, closing the one it replaces after a grace
    /// period. When both peers dialed each other at once, both keep the connection dialed by
    /// the smaller NodeId, so they never close each other's choice; otherwise newer wins.
    fn register(
        &self,
        peer: NodeId,
        conn: quinn::Connection,
        outbound: bool,
        mode: ConnMode,
        proofs: Vec<[u8; 32]>,
    ) {
        let new = Registered {
            conn,
            outbound,
            mode,
            proofs,
        };
        let mut conns = self.conns();
        let loser = match conns.get(&peer) {
            Some(old)
                if old.conn.close_reason().is_none()
                    && old.conn.stable_id() != new.conn.stable_id() =>
            {
                let dialer_of = |r: &Registered| if r.outbound { self.inner.me } else { peer };
                let keep_old = old.outbound != new.outbound && dialer_of(old) < dialer_of(&new);
                if keep_old {
                    Some(new.conn.clone())
                } else {
                    conns.insert(peer, new).map(|o| o.conn)
                }
            }
            _ => {
                conns.insert(peer, new);
                None
            }
        };
        drop(conns);
        if let Some(c) = loser {
            tokio::spawn(async move {
                tokio::time::sleep(REPLACED_GRACE).await;
                c.close(quinn::VarInt::from_u32(CLOSE_REPLACED), b"replaced");
            });
        }
    }

    /// How an accepted connection was made: through a circuit, after a punch we were
    /// signalled for (which it also ends), or plainly.
    fn inbound_mode(&self, peer: &NodeId, remote: &SocketAddr) -> ConnMode {
        if self.inner.socket.is_circuit(remote) {
            return ConnMode::Relayed;
        }
        match self.punching().remove(peer) {
            Some((until, stop)) if until > tokio::time::Instant::now() => {
                stop.notify_one();
                ConnMode::Punched
            }
            _ => ConnMode::Direct,
        }
    }

    fn refuse(&self, conn: &quinn::Connection, r: Refusal) {
        self.inner.metrics.refusal(r.metric_label());
        conn.close(r.close_code(), r.metric_label().as_bytes());
    }

    /// Sends our hello and reads the peer's, concurrently.
    async fn hello(&self, conn: &quinn::Connection, _peer: &NodeId) -> Result<Hello, Failure> {
        let proofs = if self.inner.network.is_private() {
            tls::membership_proofs(conn, &self.keys(), &self.inner.me, unix_now())
                .map_err(|_| Failure::Refused)?
        } else {
            Vec::new()
        };
        let mine = Hello {
            proofs,
            listen_addrs: self.inner.listen_addrs.iter().take(5).copied().collect(),
        };
        let send = async {
            let mut s = conn.open_uni().await.map_err(|e| self.conn_failure(&e))?;
            write_frame(&mut s, &mine)
                .await
                .map_err(|_| Failure::Unreachable)
        };
        let recv = async {
            let mut r = conn.accept_uni().await.map_err(|e| self.conn_failure(&e))?;
            let bytes =
                r.read_to_end(MAX_HELLO_LEN)
                    .await
                    .map_err(|_| match conn.close_reason() {
                        // The peer refused us mid-hello (e.g. bad key): count it as that refusal.
                        Some(e) => self.conn_failure(&e),
                        None => Failure::Protocol,
                    })?;
            decode::<Hello>(&bytes).map_err(|e| {
                self.inner.metrics.decode_error(e.metric_label());
                Failure::Protocol
            })
        };
        let (sent, got) = tokio::join!(send, recv);
        sent?;
        got
    }

    /// Sends our verdict (accepted) and waits for the peer's on the next uni streams.
    async fn confirm(&self, conn: &quinn::Connection) -> Result<(), Failure> {
        let send = async {
            let mut s = conn.open_uni().await.map_err(|e| self.conn_failure(&e))?;
            s.write_all(&[1]).await.map_err(|_| Failure::Unreachable)?;
            s.finish().map_err(|_| Failure::Unreachable)
        };
        let recv = async {
            let mut r = conn.accept_uni().await.map_err(|e| self.conn_failure(&e))?;
            let fail = |_| match conn.close_reason() {
                Some(e) => self.conn_failure(&e),
                None => Failure::Protocol,
            };
            match r.read_to_end(1).await.map_err(fail)?.as_slice() {
                [1] => Ok(()),
                _ => Err(Failure::Protocol),
            }
        };
        let (sent, got) = tokio::join!(send, recv);
        sent?;
        got
    }

    fn conn_failure(&self, e: &quinn::ConnectionError) -> Failure {
        match tls::classify_connection_error(e) {
            Some(r) => {
                self.inner.metrics.refusal(r.metric_label());
                Failure::Refused
            }
            None => Failure::Unreachable,
        }
    }

    /// Serves inbound request streams until the connection ends.
    async fn serve(self, conn: quinn::Connection, peer: NodeId) {
        let budget = Arc::new(Semaphore::new(BODY_BUDGET_PER_CONN));
        while let Ok((send, recv)) = conn.accept_bi().await {
            let (this, budget) = (self.clone(), budget.clone());
            tokio::spawn(async move { this.serve_stream(peer, send, recv, &budget).await });
        }
        // A connection over a circuit takes its circuit with it: removing the route ends
        // our end of the circuit, which ends the relay's splice and the far end, rather than
        // leaving all three to idle out.
        let remote = conn.remote_address();
        if self.inner.socket.is_circuit(&remote) {
            self.inner.socket.remove_route(&remote);
        }
        let removed = {
            let mut conns = self.conns();
            match conns.get(&peer) {
                Some(r) if r.conn.stable_id() == conn.stable_id() => {
                    conns.remove(&peer);
                    true
                }
                _ => false,
            }
        };
        if removed {
            let _ = self.inner.inputs.send(Input::ConnDown { peer }).await;
        }
    }

    /// Unidirectional streams after the hello exchange. On a private network each is a
    /// fresh hello whose proofs replace the peer's (sent when its keys changed), read one at
    /// a time within the hello deadline; elsewhere none is expected, so each is refused at
    /// once rather than left to fill its receive window.
    async fn serve_uni(self, conn: quinn::Connection, peer: NodeId) {
        let deadline = Duration::from_millis(self.inner.timeouts.hello_ms);
        while let Ok(mut recv) = conn.accept_uni().await {
            if !self.inner.network.is_private() {
                tracing::debug!(peer = %peer.short(), "unexpected unidirectional stream; stopping it");
                let _ = recv.stop(quinn::VarInt::from_u32(STREAM_UNEXPECTED));
                continue;
            }
            let hello = match tokio::time::timeout(deadline, recv.read_to_end(MAX_HELLO_LEN)).await
            {
                Ok(Ok(bytes)) => decode::<Hello>(&bytes),
                Ok(Err(_)) => continue,
                Err(_) => {
                    let _ = recv.stop(quinn::VarInt::from_u32(STREAM_STALLED));
                    self.inner.metrics.decode_error("stalled");
                    continue;
                }
            };
            match hello {
                Ok(h) => {
                    if let Some(r) = self.conns().get_mut(&peer)
                        && r.conn.stable_id() == conn.stable_id()
                    {
                        r.proofs = h.proofs;
                    }
                    self.inner.keys_changed.notify_one();
                }
                Err(e) => self.inner.metrics.decode_error(e.metric_label()),
            }
        }
    }

    /// The private network's keys now.
    fn keys(&self) -> Arc<Vec<NetworkKey>> {
        // A poisoned lock only means a panic elsewhere mid-swap of an Arc; still usable.
        self.inner
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the private network's keys: every peer gets our proofs for the new keys
    /// (a fresh hello on a unidirectional stream), and connections are checked against
    /// them at once (see [`Transport::watch_keys`]).
    pub fn set_keys(&self, keys: Vec<NetworkKey>) {
        let keys = Arc::new(keys);
        *self.inner.keys.lock().unwrap_or_else(|p| p.into_inner()) = keys.clone();
        let conns: Vec<quinn::Connection> = self.conns().values().map(|r| r.conn.clone()).collect();
        for conn in conns {
            let this = self.clone();
            let keys = keys.clone();
            tokio::spawn(async move {
                let Ok(proofs) = tls::membership_proofs(&conn, &keys, &this.inner.me, unix_now())
                else {
                    return;
                };
                let hello = Hello {
                    proofs,
                    listen_addrs: this.inner.listen_addrs.iter().take(5).copied().collect(),
                };
                let deadline = Duration::from_millis(this.inner.timeouts.hello_ms);
                let send = async {
                    let mut s = conn.open_uni().await.map_err(|_| ())?;
                    write_frame(&mut s, &hello).await
                };
                let _ = tokio::time::timeout(deadline, send).await;
            });
        }
        self.inner.keys_changed.notify_one();
    }

    /// On a private network: closes, every [`KEY_CHECK_INTERVAL`] and whenever keys or
    /// proofs change, each connection whose peer's latest proofs match no key we hold
    /// unexpired (counted as refusal `no_valid_key`). Runs for the agent's life.
    pub async fn watch_keys(self) {
        if !self.inner.network.is_private() {
            return;
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(KEY_CHECK_INTERVAL) => {}
                () = self.inner.keys_changed.notified() => {}
            }
            let keys = self.keys();
            let now = unix_now();
            let conns: Vec<(NodeId, quinn::Connection, Vec<[u8; 32]>)> = self
                .conns()
                .iter()
                .map(|(p, r)| (*p, r.conn.clone(), r.proofs.clone()))
                .collect();
            for (peer, conn, proofs) in conns {
                if tls::verify_membership(&conn, &keys, &peer, &proofs, now).is_err() {
                    tracing::info!(peer = %peer.short(), "closing: its network key expired or was removed");
                    self.refuse(&conn, Refusal::NoValidKey);
                }
            }
        }
    }

    /// One inbound request stream: the request must arrive within the request deadline (a
    /// stalled peer loses the stream, not our memory), then the core answers, and the answer
    /// must be read within another deadline. Relay circuits leave here with their streams.
    async fn serve_stream(
        &self,
        peer: NodeId,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        budget: &Semaphore,
    ) {
        let deadline = Duration::from_millis(self.inner.timeouts.request_ms);
        let read = tokio::time::timeout(deadline, read_frame::<Request>(&mut recv, Some(budget)));
        let request = match read.await {
            Ok(Ok(r)) => r,
            Err(_) => {
                tracing::debug!(peer = %peer.short(), "request did not arrive in time; closing stream");
                self.inner.metrics.decode_error("stalled");
                let code = quinn::VarInt::from_u32(STREAM_STALLED);
                let _ = recv.stop(code);
                let _ = send.reset(code);
                return;
            }
            Ok(Err(FrameError::Decode(e))) => {
                tracing::debug!(peer = %peer.short(), error = %e, "bad frame; closing stream");
                self.inner.metrics.decode_error(e.metric_label());
                let code = quinn::VarInt::from_u32(STREAM_BAD_FRAME);
                let _ = recv.stop(code);
                let _ = send.reset(code);
                return;
            }
            Ok(Err(FrameError::Stream)) => return,
        };
        match request {
            Request::RelayOpen { target, trace } => {
                return self.serve_relay_open(peer, target, trace, send, recv).await;
            }
            Request::RelayIncoming { .. } => {
                return self.serve_relay_incoming(peer, request, send, recv).await;
            }
            _ => {}
        }
        let Some(response) = self.ask_core(peer, request).await else {
            return;
        };
        if tokio::time::timeout(deadline, write_frame(&mut send, &response))
            .await
            .is_err()
        {
            let _ = send.reset(quinn::VarInt::from_u32(STREAM_STALLED));
        }
    }

    /// Hands an inbound request to the core and waits for its answer, up to the request
    /// deadline.
    async fn ask_core(&self, from: NodeId, request: Request) -> Option<Response> {
        self.ask_core_or_late(from, request, |_| {}).await
    }

    /// As [`Transport::ask_core`], but an answer that comes after the deadline is not lost:
    /// it goes to `late` (on a task of its own), so what the core decided can still be
    /// undone, e.g. a circuit it admitted that will never open.
    async fn ask_core_or_late(
        &self,
        from: NodeId,
        request: Request,
        late: impl FnOnce(Response) + Send + 'static,
    ) -> Option<Response> {
        let (tx, mut rx) = oneshot::channel();
        self.inner
            .inputs
            .send(Input::Request {
                from,
                request,
                reply: tx,
            })
            .await
            .ok()?;
        let deadline = Duration::from_millis(self.inner.timeouts.request_ms);
        match tokio::time::timeout(deadline, &mut rx).await {
            Ok(answer) => answer.ok(),
            Err(_) => {
                // The core answers every request it was given (or drops the sender when it
                // stops), so this task ends.
                tokio::spawn(async move {
                    if let Ok(answer) = rx.await {
                        late(answer);
                    }
                });
                None
            }
        }
    }

    /// We are asked to relay from `from` to `target`: the core admits or refuses, then we
    /// open the target's leg, and splice.
    async fn serve_relay_open(
        &self,
        from: NodeId,
        target: NodeId,
        trace: Option<TraceContext>,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let open = Request::RelayOpen {
            target,
            trace: None,
        };
        // The core counts a circuit it admits until it hears CircuitClosed, so every path
        // from here on tells it, even when its admission arrives too late to be used.
        let inputs = self.inner.inputs.clone();
        let late = move |answer: Response| {
            if relay::accepted(&answer).is_some() {
                tokio::spawn(async move {
                    let _ = inputs.send(Input::CircuitClosed { requester: from }).await;
                });
            }
        };
        let Some(answer) = self.ask_core_or_late(from, open, late).await else {
            return;
        };
        let Some((max_bytes, max_duration)) = relay::accepted(&answer) else {
            let _ = write_frame(&mut send, &answer).await;
            return;
        };
        let span = tracing::debug_span!(parent: None, "relay_circuit", from = %from.short(), to = %target.short(), outcome = Empty, bytes = Empty);
        adopt_remote_parent(&span, trace);
        let this = self.clone();
        async move {
            let leg = async {
                let conn = this.live(&target).ok_or(())?;
                let (mut t_send, mut t_recv) = conn.open_bi().await.map_err(|_| ())?;
                let frame = encode(&Request::RelayIncoming { from }).map_err(|_| ())?;
                t_send.write_all(&frame).await.map_err(|_| ())?;
                match read_frame::<Response>(&mut t_recv, None).await {
                    Ok(r) if relay::accepted(&r).is_some() => Ok((t_send, t_recv)),
                    _ => Err(()),
                }
            };
            let deadline = Duration::from_millis(this.inner.timeouts.request_ms);
            match tokio::time::timeout(deadline, leg).await {
                Ok(Ok(t)) => {
                    let ok = encode(&answer).map_err(|_| ());
                    if let Ok(frame) = ok
                        && send.write_all(&frame).await.is_ok()
                    {
                        // Bytes are counted as they pass, so an open circuit shows them.
                        let metrics = &this.inner.metrics;
                        let (end, bytes) =
                            relay::splice((send, recv), t, max_bytes, max_duration, |n| {
                                metrics.relay_bytes(n);
                            })
                            .await;
                        tracing::Span::current().record("outcome", format!("{end:?}").as_str());
                        tracing::Span::current().record("bytes", bytes);
                    }
                }
                _ => {
                    tracing::Span::current().record("outcome", "no_route");
                    let _ = write_frame(
                        &mut send,
                        &Response::Error {
                            code: ErrorCode::NoRoute,
                        },
                    )
                    .await;
                }
            }
            let _ = this
                .inner
                .inputs
                .send(Input::CircuitClosed { requester: from })
                .await;
        }
        .instrument(span)
        .await;
    }

    /// A relay brings us a circuit: within the incoming-circuit limits, the core accepts,
    /// and the circuit becomes a path of our socket on which the requester's handshake will
    /// arrive.
    async fn serve_relay_incoming(
        &self,
        relay_peer: NodeId,
        request: Request,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let Some(slot) = self.inner.incoming.try_take(relay_peer) else {
            tracing::debug!(relay = %relay_peer.short(), "incoming circuits at their limit; refusing");
            let busy = Response::Error {
                code: ErrorCode::Busy,
            };
            let _ = write_frame(&mut send, &busy).await;
            return;
        };
        let Some(answer) = self.ask_core(relay_peer, request).await else {
            return;
        };
        if relay::accepted(&answer).is_none() {
            let _ = write_frame(&mut send, &answer).await;
            return;
        }
        let Ok(frame) = encode(&answer) else {
            return;
        };
        if send.write_all(&frame).await.is_err() {
            return;
        }
        if let Err(e) = relay::attach(&self.inner.socket, send, recv, Some(slot)) {
            tracing::debug!(error = %e, "cannot attach relay circuit");
        }
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it), for key expiry.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes one frame and finishes the stream.
async fn write_frame<T: Serialize>(send: &mut quinn::SendStream, msg: &T) -> Result<(), ()> {
    let bytes = encode(msg).map_err(|_| ())?;
    send.write_all(&bytes).await.map_err(|_| ())?;
    send.finish().map_err(|_| ())
}

/// Reads one frame, refusing an oversize one from its header before reading its body. The
/// body is gathered as its bytes arrive (a header alone allocates nothing), after taking its
/// length from `budget`, if given, so frames started and never finished hold no more than
/// the budget between them.
async fn read_frame<T: DeserializeOwned + Validate>(
    recv: &mut quinn::RecvStream,
    budget: Option<&Semaphore>,
) -> Result<T, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header)
        .await
        .map_err(read_exact_error)?;
    let len = frame_len(header).map_err(FrameError::Decode)?;
    let _permit = match budget {
        // `frame_len` bounds `len` by MAX_FRAME_LEN (64 KiB), far below u32::MAX, and the
        // budget holds at least one whole frame, so the acquire can always be served.
        Some(b) => Some(
            b.acquire_many(u32::try_from(len).unwrap_or(u32::MAX))
                .await
                .map_err(|_| FrameError::Stream)?,
        ),
        None => None,
    };
    let mut body = Vec::new();
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(FrameError::Decode(DecodeError::Truncated)),
            Err(_) => return Err(FrameError::Stream),
        }
    }
    decode_body(&body).map_err(FrameError::Decode)
}

fn read_exact_error(e: quinn::ReadExactError) -> FrameError {
    match e {
        quinn::ReadExactError::FinishedEarly(_) => FrameError::Decode(DecodeError::Truncated),
        quinn::ReadExactError::ReadError(_) => FrameError::Stream,
    }
}

/// The context of `span` to put on the wire, so the receiver's spans join its trace; `None`
/// when spans are not exported.
pub(crate) fn trace_context(span: &tracing::Span) -> Option<TraceContext> {
    chaosnet_telemetry::wire_context(span).map(|c| TraceContext {
        trace_id: c.trace_id,
        span_id: c.span_id,
        flags: c.flags,
    })
}

/// Makes `span` a child of the peer's span that sent `trace`, if it sent one.
pub(crate) fn adopt_remote_parent(span: &tracing::Span, trace: Option<TraceContext>) {
    if let Some(t) = trace {
        chaosnet_telemetry::set_remote_parent(
            span,
            chaosnet_telemetry::RemoteContext {
                trace_id: t.trace_id,
                span_id: t.span_id,
                flags: t.flags,
            },
        );
    }
}

/// Whether a dial failed because *we* rejected the server's certificate as not the node we
/// dialed (a TLS error we raised, not one the peer closed with): the address belongs to
/// someone else, which says nothing about the peer.
fn wrong_host(e: &quinn::ConnectionError) -> bool {
    matches!(e, quinn::ConnectionError::TransportError(_))
        && tls::classify_connection_error(e) == Some(Refusal::IdentityMismatch)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::socket::{ChaosSocket, endpoint};

    /// Guard against a hang; not a timing assertion.
    const GUARD: Duration = Duration::from_secs(10);

    fn local() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// A bidirectional stream's accepting end, from a plain QUIC pair on loopback.
    async fn accepted_stream() -> (
        (quinn::SendStream, quinn::RecvStream),
        (quinn::SendStream, quinn::RecvStream),
        [quinn::Endpoint; 2],
    ) {
        let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let net = NetworkId::Mainnet;
        let (sock, _) = ChaosSocket::bind(local(), 1).unwrap();
        let server = endpoint(sock, Some(tls::server_config(&a, &net).unwrap())).unwrap();
        let (sock, _) = ChaosSocket::bind(local(), 2).unwrap();
        let client = endpoint(sock, None).unwrap();
        let to = server.local_addr().unwrap();
        let name = tls::server_name(&a.node_id());
        let connecting = client
            .connect_with(tls::client_config(&b, &net).unwrap(), to, &name)
            .unwrap();
        let (dialed, incoming) = tokio::join!(connecting, async {
            server.accept().await.unwrap().await.unwrap()
        });
        let dialed = dialed.unwrap();
        let (mut send, recv) = dialed.open_bi().await.unwrap();
        // A stream reaches the acceptor with its first byte.
        send.write_all(&[0]).await.unwrap();
        let (s, mut r) = incoming.accept_bi().await.unwrap();
        let mut first = [0u8; 1];
        r.read_exact(&mut first).await.unwrap();
        ((send, recv), (s, r), [server, client])
    }

    /// A transport whose driver is the test: its inputs arrive on the returned receiver.
    fn transport(request_ms: u64) -> (Transport, mpsc::Receiver<Input>) {
        let me = Identity::generate().unwrap();
        let (sock, handle) = ChaosSocket::bind(local(), 3).unwrap();
        let ep = endpoint(sock, None).unwrap();
        let (tx, rx) = mpsc::channel(16);
        let timeouts = TransportTimeouts {
            request_ms,
            ..TransportTimeouts::default()
        };
        let metrics = Arc::new(Metrics::new("mainnet"));
        let t = Transport::new(
            ep,
            &me,
            NetworkId::Mainnet,
            Vec::new(),
            Vec::new(),
            tx,
            metrics,
            timeouts,
            handle,
        )
        .unwrap();
        (t, rx)
    }

    /// A server on loopback with identity `id` that accepts handshakes and counts them.
    fn server(id: &Identity, seed: u64) -> quinn::Endpoint {
        let (sock, _) = ChaosSocket::bind(local(), seed).unwrap();
        endpoint(
            sock,
            Some(tls::server_config(id, &NetworkId::Mainnet).unwrap()),
        )
        .unwrap()
    }

    /// Another node at one of the peer's addresses (every pod's inner address is the same)
    /// must not end the dial: the peer's other address still gets its handshake.
    #[tokio::test]
    async fn another_node_at_one_address_does_not_stop_the_dial() {
        let (t, _inputs) = transport(1_000);
        let (peer, stranger) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let (peer_ep, stranger_ep) = (server(&peer, 4), server(&stranger, 5));
        let peer_addr = peer_ep.local_addr().unwrap();
        let stranger_addr = stranger_ep.local_addr().unwrap();
        let accepted = tokio::spawn(async move {
            let conn = peer_ep.accept().await?.await.ok()?;
            Some((conn, peer_ep))
        });
        let answering = tokio::spawn({
            let ep = stranger_ep.clone();
            async move {
                while let Some(incoming) = ep.accept().await {
                    let _ = incoming.await;
                }
            }
        });
        let timeout = Duration::from_secs(3);
        let only_stranger = t
            .dial(peer.node_id(), &[stranger_addr], timeout, ConnMode::Direct)
            .await;
        assert_eq!(only_stranger.err(), Some(Failure::Unreachable));
        let both = tokio::time::timeout(
            GUARD,
            t.dial(
                peer.node_id(),
                &[stranger_addr, peer_addr],
                timeout,
                ConnMode::Direct,
            ),
        )
        .await
        .unwrap();
        // The peer is a bare endpoint that never says hello, so the dial cannot succeed;
        // what matters is that it was not refused and that the peer got its handshake.
        assert_ne!(both.err(), Some(Failure::Refused));
        let got = tokio::time::timeout(GUARD, accepted)
            .await
            .unwrap()
            .unwrap();
        assert!(got.is_some(), "the peer's address was never dialed");
        // Our own address among the peer's is skipped: nothing else to dial.
        let own = t.inner.endpoint.local_addr().unwrap();
        let self_only = tokio::time::timeout(
            GUARD,
            t.dial(peer.node_id(), &[own], timeout, ConnMode::Direct),
        )
        .await
        .unwrap();
        assert_eq!(self_only.err(), Some(Failure::Unreachable));
        answering.abort();
        drop(stranger_ep);
    }

    /// The core admits a circuit only after the relay stopped waiting for it: the circuit
    /// never opens, so the core must still hear that it closed, or its slot is lost.
    #[tokio::test]
    async fn a_circuit_admitted_after_the_deadline_is_closed_in_the_core() {
        let (t, mut inputs) = transport(100);
        let (_requester, (send, recv), _eps) = accepted_stream().await;
        let (from, target) = (NodeId([1; 32]), NodeId([2; 32]));
        let serving = tokio::spawn({
            let t = t.clone();
            async move { t.serve_relay_open(from, target, None, send, recv).await }
        });
        let reply = match tokio::time::timeout(GUARD, inputs.recv()).await.unwrap() {
            Some(Input::Request {
                request: Request::RelayOpen { .. },
                reply,
                ..
            }) => reply,
            other => panic!("expected the RelayOpen, got {other:?}"),
        };
        // Answer well after the transport's 100 ms deadline: it has given up by then.
        tokio::time::timeout(GUARD, serving).await.unwrap().unwrap();
        let _ = reply.send(Response::RelayAccepted {
            max_bytes: 1,
            max_duration_ms: 1,
        });
        match tokio::time::timeout(GUARD, inputs.recv()).await {
            Ok(Some(Input::CircuitClosed { requester })) => assert_eq!(requester, from),
            Ok(other) => panic!("expected CircuitClosed, got {other:?}"),
            Err(_) => panic!("the late admission was never closed in the core"),
        }
    }
}
