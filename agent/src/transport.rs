//! QUIC transport: dialing, accepting, the per-connection hello, and request streams.
//!
//! This is the I/O half of the shell. It authenticates peers (TLS bound to NodeIds, network
//! ALPN, private-network proofs in the [`Hello`]), carries one request and one response per
//! bidirectional stream with the [`chaosnet_proto::wire`] framing, and reports connections and
//! inbound requests to the driver as [`Input`]s. It makes no protocol decision: which peer to
//! ask, when and why is the core's business.
//!
//! A malformed, truncated or oversize frame closes only its stream and is counted; it never
//! closes the connection or panics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chaosnet_proto::wire::{self, DecodeError, HEADER_LEN, Hello, Validate};
use chaosnet_proto::{ConnMode, Connected, Failure, NodeId, Request, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use tracing::field::Empty;

use crate::driver::Input;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::tls::{self, NetworkId, NetworkKey, Refusal};

/// Application close code for a connection we drop to keep better peers.
const CLOSE_PRUNED: u32 = 0x5001;
/// Stream error code for a frame we could not decode.
const STREAM_BAD_FRAME: u32 = 0x5101;
/// Largest hello accepted: a few proofs and addresses.
const MAX_HELLO_LEN: usize = 2048;
/// Addresses tried per dial, best first.
const MAX_DIAL_ADDRS: usize = 3;

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
    keys: Vec<NetworkKey>,
    listen_addrs: Vec<SocketAddr>,
    /// The connection used for each peer, and whether we dialed it.
    conns: Mutex<HashMap<NodeId, Registered>>,
    inputs: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    timeouts: TransportTimeouts,
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
    ) -> Result<Transport, tls::TlsError> {
        let client = tls::client_config(identity, &network)?;
        Ok(Transport {
            inner: Arc::new(Inner {
                endpoint,
                client,
                me: identity.node_id(),
                network,
                keys,
                listen_addrs,
                conns: Mutex::new(HashMap::new()),
                inputs,
                metrics,
                timeouts,
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
                        let _ = this.establish(conn, false).await;
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

    /// Connects to `peer`, reusing a live connection unless `fresh`. Traced as a `connect`
    /// span with the mode and outcome.
    pub async fn connect(
        &self,
        peer: NodeId,
        addrs: Vec<SocketAddr>,
        fresh: bool,
    ) -> Result<Connected, Failure> {
        let span = tracing::debug_span!("connect", peer = %peer.short(), fresh, mode = Empty, outcome = Empty);
        let result = self
            .connect_inner(peer, addrs, fresh)
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
    ) -> Result<Connected, Failure> {
        if !fresh && let Some(c) = self.live(&peer) {
            return Ok(Connected {
                mode: ConnMode::Direct,
                remote: c.remote_address(),
            });
        }
        let conn = self.dial(peer, &addrs).await?;
        Ok(Connected {
            mode: ConnMode::Direct,
            remote: conn.remote_address(),
        })
    }

    /// Sends `request` to `peer` on a fresh stream and waits for the response. Traced as a
    /// `request` span with the request kind and outcome.
    pub async fn request(
        &self,
        peer: NodeId,
        addrs: Vec<SocketAddr>,
        request: Request,
    ) -> Result<Response, Failure> {
        let kind = match &request {
            Request::Ping { .. } => "ping",
            Request::FindNode { .. } => "find_node",
            Request::Introduce { .. } => "introduce",
            Request::Echo { .. } => "echo",
        };
        let span = tracing::debug_span!("request", peer = %peer.short(), kind, outcome = Empty);
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
            None => self.dial(peer, &addrs).await?,
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
        match read_frame::<Response>(&mut recv).await {
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
        let mut conns = self.conns();
        match conns.get(peer) {
            Some(r) if r.conn.close_reason().is_none() => Some(r.conn.clone()),
            Some(_) => {
                conns.remove(peer);
                None
            }
            None => None,
        }
    }

    async fn dial(&self, peer: NodeId, addrs: &[SocketAddr]) -> Result<quinn::Connection, Failure> {
        if peer == self.inner.me {
            return Err(Failure::Unreachable);
        }
        let mut last = Failure::Unreachable;
        let deadline = Duration::from_millis(self.inner.timeouts.connect_ms);
        for addr in addrs.iter().take(MAX_DIAL_ADDRS) {
            // quinn opens a span for the connection's lifetime under the current span; start
            // the dial outside our `connect`/`request` span so that span can end (and be
            // exported) when the attempt ends, not when the connection closes.
            // quinn opens a span for the connection's whole life under the *current* span;
            // starting the dial on a task outside our `connect`/`request` span lets that span
            // end (and be exported) when the attempt ends, not when the connection closes.
            let connecting = {
                let (ep, client, addr, name) = (
                    self.inner.endpoint.clone(),
                    self.inner.client.clone(),
                    *addr,
                    tls::server_name(&peer),
                );
                tokio::task::spawn(async move { ep.connect_with(client, addr, &name) }).await
            };
            let connecting = match connecting {
                Ok(c) => c,
                Err(_) => continue,
            };
            let connecting = match connecting {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "cannot dial");
                    continue;
                }
            };
            match tokio::time::timeout(deadline, connecting).await {
                Ok(Ok(conn)) => return self.establish(conn, true).await,
                Ok(Err(e)) => {
                    if let Some(r) = tls::classify_connection_error(&e) {
                        self.inner.metrics.refusal(r.metric_label());
                        return Err(Failure::Refused);
                    }
                    tracing::debug!(%addr, error = %e, "dial failed");
                    last = Failure::Unreachable;
                }
                Err(_) => last = Failure::Timeout,
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
            let now_unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            if let Err(r) =
                tls::verify_membership(&conn, &self.inner.keys, &peer, &hello.proofs, now_unix)
            {
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
        self.register(peer, conn.clone(), outbound);
        self.inner.metrics.connection_opened(ConnMode::Direct);
        let _ = self
            .inner
            .inputs
            .send(Input::ConnUp {
                peer,
                remote,
                mode: ConnMode::Direct,
            })
            .await;
        tokio::spawn(self.clone().serve(conn.clone(), peer));
        Ok(conn)
    }

    /// Makes `conn` the connection for `peer`, closing the one it replaces after a grace
    /// period. When both peers dialed each other at once, both keep the connection dialed by
    /// the smaller NodeId, so they never close each other's choice; otherwise newer wins.
    fn register(&self, peer: NodeId, conn: quinn::Connection, outbound: bool) {
        let new = Registered { conn, outbound };
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

    fn refuse(&self, conn: &quinn::Connection, r: Refusal) {
        self.inner.metrics.refusal(r.metric_label());
        conn.close(r.close_code(), r.metric_label().as_bytes());
    }

    /// Sends our hello and reads the peer's, concurrently.
    async fn hello(&self, conn: &quinn::Connection, _peer: &NodeId) -> Result<Hello, Failure> {
        let proofs = if self.inner.network.is_private() {
            tls::membership_proofs(conn, &self.inner.keys, &self.inner.me)
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
            wire::decode::<Hello>(&bytes).map_err(|e| {
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
        while let Ok((send, recv)) = conn.accept_bi().await {
            let this = self.clone();
            tokio::spawn(async move { this.serve_stream(peer, send, recv).await });
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

    async fn serve_stream(
        &self,
        peer: NodeId,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let request = match read_frame::<Request>(&mut recv).await {
            Ok(r) => r,
            Err(FrameError::Decode(e)) => {
                tracing::debug!(peer = %peer.short(), error = %e, "bad frame; closing stream");
                self.inner.metrics.decode_error(e.metric_label());
                let code = quinn::VarInt::from_u32(STREAM_BAD_FRAME);
                let _ = recv.stop(code);
                let _ = send.reset(code);
                return;
            }
            Err(FrameError::Stream) => return,
        };
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .inputs
            .send(Input::Request {
                from: peer,
                request,
                reply: tx,
            })
            .await
            .is_err()
        {
            return;
        }
        let deadline = Duration::from_millis(self.inner.timeouts.request_ms);
        if let Ok(Ok(response)) = tokio::time::timeout(deadline, rx).await {
            let _ = write_frame(&mut send, &response).await;
        }
    }
}

/// Writes one frame and finishes the stream.
async fn write_frame<T: Serialize>(send: &mut quinn::SendStream, msg: &T) -> Result<(), ()> {
    let bytes = wire::encode(msg).map_err(|_| ())?;
    send.write_all(&bytes).await.map_err(|_| ())?;
    send.finish().map_err(|_| ())
}

/// Reads one frame, refusing an oversize one from its header before reading its body.
async fn read_frame<T: DeserializeOwned + Validate>(
    recv: &mut quinn::RecvStream,
) -> Result<T, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header)
        .await
        .map_err(read_exact_error)?;
    let len = wire::frame_len(header).map_err(FrameError::Decode)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(read_exact_error)?;
    wire::decode_body(&body).map_err(FrameError::Decode)
}

fn read_exact_error(e: quinn::ReadExactError) -> FrameError {
    match e {
        quinn::ReadExactError::FinishedEarly(_) => FrameError::Decode(DecodeError::Truncated),
        quinn::ReadExactError::ReadError(_) => FrameError::Stream,
    }
}
