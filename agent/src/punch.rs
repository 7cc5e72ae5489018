//! Hole punching on the QUIC socket: probe sending and dispatch, and birthday probing.
//!
//! The core decides *whether* and *how* to punch ([`PunchPlan`]); this module carries a plan
//! out with real datagrams. Probes leave from the socket quinn uses (through the
//! [`SocketHandle`] seam), so they open the very NAT mapping the QUIC handshake then uses.
//! Each probe carries the punch's token, and probes arriving are routed to the session with
//! that token. A side that hears the peer learns the address the peer's NAT really uses
//! towards it (which differs from the signalled one when the peer's mapping is
//! endpoint-dependent); the dialing side dials every learned address.
//!
//! Birthday probing (RFC 4787 EDM × APDF): the hard (symmetric) side opens many extra UDP
//! sockets, each sending towards the peer's mapped address, which creates as many random
//! mappings; the easy side sprays probes at random ports of the hard side's IP. A spray
//! probe that lands on one of those mappings reaches one extra socket, which acks; that
//! socket then becomes the route for all QUIC datagrams to the peer ([`Route::Socket`]).
//!
//! It does not dial (the transport does) and makes no decision about when to punch.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chaosnet_proto::BirthdayRole;
use chaosnet_proto::PunchPlan;
use rand::RngExt;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::socket::{PROBE_MAGIC, Route, SocketHandle};

const KIND_PUNCH: u8 = 1;
const KIND_SPRAY: u8 = 2;
const KIND_ACK: u8 = 3;
/// A dial-back probe (the core's reachability test), heard by a test socket only.
const KIND_DIALBACK: u8 = 4;
/// The hello of a dial-back test socket, heard on the QUIC socket and reported to the
/// driver.
const KIND_DIALBACK_HELLO: u8 = 5;
/// Dial-back probes sent per order, and the gap between them (against loss).
const DIALBACK_PROBES: usize = 3;
const DIALBACK_GAP: Duration = Duration::from_millis(100);
/// First interval between punch probes; doubles up to [`PROBE_INTERVAL_MAX`].
const PROBE_INTERVAL_MIN: Duration = Duration::from_millis(50);
const PROBE_INTERVAL_MAX: Duration = Duration::from_millis(1_000);
/// Probes sent right after hearing the peer, so an address-and-port-dependent filter on its
/// side sees traffic from us after its own first packet went out.
const EXTRA_PROBES: usize = 3;
/// The easy side waits this long before spraying, so the hard side's mappings exist (it
/// may still be opening its sockets when the signal reaches the easy side).
const SPRAY_DELAY: Duration = Duration::from_millis(400);
/// Spray pacing: this many probes per tick (1,024 probes take about 1 s).
const SPRAY_BATCH: usize = 4;
const SPRAY_TICK: Duration = Duration::from_millis(4);
/// Spray rounds: a round that found no mapping (about 2% of them with 256 sockets and
/// 1,024 probes) is followed by one more, so the budget is spent at most twice.
const SPRAY_ROUNDS: usize = 2;
/// The hard side resends from every extra socket this often (keeps mappings alive).
const HARD_RESEND: Duration = Duration::from_millis(1_000);
/// Most extra sockets one hard session opens, whatever the plan says.
const MAX_HARD_SOCKETS: usize = 512;
/// Hard sessions at once: each holds hundreds of sockets.
const MAX_HARD_SESSIONS: usize = 4;
/// Sessions at once (each registered by token).
const MAX_SESSIONS: usize = 64;
/// A birthday route with no datagram for this long is dropped.
const ROUTE_IDLE: Duration = Duration::from_secs(120);

/// What a session heard: a probe with its token, from this address.
#[derive(Clone, Copy, Debug)]
struct Heard {
    from: SocketAddr,
    kind: u8,
}

fn payload(kind: u8, token: u64) -> [u8; 9] {
    let mut p = [0u8; 9];
    p[0] = kind;
    p[1..].copy_from_slice(&token.to_be_bytes());
    p
}

fn parse(payload: &[u8]) -> Option<(u8, u64)> {
    let kind = *payload.first()?;
    let token = u64::from_be_bytes(payload.get(1..9)?.try_into().ok()?);
    Some((kind, token))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a punch session ended.
#[derive(Clone, Debug, Default)]
pub struct PunchReport {
    /// Spray probes sent (easy side of birthday probing).
    pub sprayed: Option<u32>,
    /// Addresses the peer's probes came from.
    pub learned: Vec<SocketAddr>,
    /// Whether a birthday socket got hit (hard side) or acked (easy side).
    pub birthday_hit: bool,
}

/// Runs punch sessions on one socket. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Puncher {
    socket: SocketHandle,
    sessions: Arc<Mutex<HashMap<u64, mpsc::Sender<Heard>>>>,
    hard: Arc<Semaphore>,
}

impl Puncher {
    /// A puncher over `socket`; takes over its probe subscription. Dial-back hellos
    /// received go to `dialbacks` as `(source, token)` (dropped when it is full). Call
    /// inside tokio.
    pub fn new(socket: SocketHandle, dialbacks: mpsc::Sender<(SocketAddr, u64)>) -> Puncher {
        let sessions: Arc<Mutex<HashMap<u64, mpsc::Sender<Heard>>>> = Arc::default();
        let mut probes = socket.subscribe_probes();
        let map = sessions.clone();
        tokio::spawn(async move {
            while let Some((from, payload)) = probes.recv().await {
                let Some((kind, token)) = parse(&payload) else {
                    continue;
                };
                if kind == KIND_DIALBACK_HELLO {
                    let _ = dialbacks.try_send((from, token));
                    continue;
                }
                let tx = lock(&map).get(&token).cloned();
                if let Some(tx) = tx {
                    let _ = tx.try_send(Heard { from, kind });
                }
            }
        });
        Puncher {
            socket,
            sessions,
            hard: Arc::new(Semaphore::new(MAX_HARD_SESSIONS)),
        }
    }

    /// Runs a dial-back test socket: a fresh UDP socket on our IP sends a few hellos
    /// carrying `token` to `server`, then, until `timeout`, every probe with `token` it
    /// hears goes to `heard` as `(source, token)`.
    pub fn dial_back_listen(
        &self,
        server: SocketAddr,
        token: u64,
        timeout: Duration,
        heard: mpsc::Sender<(SocketAddr, u64)>,
    ) {
        let socket = self.socket.clone();
        tokio::spawn(async move {
            let ip = match socket.local_addr() {
                Ok(a) => a.ip(),
                Err(_) => return,
            };
            let test = match UdpSocket::bind(SocketAddr::new(ip, 0)).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot open the dial-back test socket");
                    return;
                }
            };
            let hello = probe_datagram(KIND_DIALBACK_HELLO, token);
            let deadline = Instant::now() + timeout;
            let mut next_hello = Instant::now();
            let mut hellos = 0;
            let mut buf = [0u8; 64];
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => return,
                    () = tokio::time::sleep_until(next_hello), if hellos < DIALBACK_PROBES => {
                        let _ = test.send_to(&hello, server).await;
                        hellos += 1;
                        next_hello = Instant::now() + DIALBACK_GAP;
                    }
                    got = test.recv_from(&mut buf) => {
                        let Ok((n, from)) = got else { return };
                        let body = buf[..n].strip_prefix(PROBE_MAGIC.as_slice());
                        if body.and_then(parse) == Some((KIND_DIALBACK, token)) {
                            let _ = heard.try_send((from, token));
                        }
                    }
                }
            }
        });
    }

    /// Sends the probes of a dial-back order to `to`: from the QUIC socket, or with
    /// `other_port` from a fresh socket on the same IP (a port `to` never heard from).
    /// A fixed few small probes per order: the core bounds the orders.
    pub fn dial_back(&self, to: SocketAddr, token: u64, other_port: bool) {
        let socket = self.socket.clone();
        tokio::spawn(async move {
            let other = if other_port {
                let ip = match socket.local_addr() {
                    Ok(a) => a.ip(),
                    Err(_) => return,
                };
                match UdpSocket::bind(SocketAddr::new(ip, 0)).await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot open the dial-back socket");
                        return;
                    }
                }
            } else {
                None
            };
            for k in 0..DIALBACK_PROBES {
                if k > 0 {
                    tokio::time::sleep(DIALBACK_GAP).await;
                }
                let _ = match &other {
                    Some(s) => s
                        .send_to(&probe_datagram(KIND_DIALBACK, token), to)
                        .await
                        .map(|_| ()),
                    None => socket.send_probe(to, &payload(KIND_DIALBACK, token)),
                };
            }
        });
    }

    /// Runs our side of `plan` until its timeout or `stop`. Every address the peer is heard
    /// from is sent on `learned` (best effort). `sprayed` counts spray probes as they go, so
    /// a dialer that succeeds mid-spray can read how many it took.
    pub async fn run(
        &self,
        plan: &PunchPlan,
        learned: mpsc::Sender<SocketAddr>,
        stop: Arc<Notify>,
        sprayed: Arc<AtomicU32>,
    ) -> PunchReport {
        let mut report = PunchReport::default();
        let (tx, mut heard) = mpsc::channel::<Heard>(256);
        {
            let mut sessions = lock(&self.sessions);
            if sessions.len() >= MAX_SESSIONS {
                return report;
            }
            sessions.insert(plan.token, tx);
        }
        let _guard = SessionGuard {
            sessions: self.sessions.clone(),
            token: plan.token,
        };
        let start = Instant::now();
        let deadline = start + Duration::from_millis(plan.timeout_ms);
        let Some(&signalled) = plan.peer_addrs.first() else {
            return report;
        };
        let mut targets: Vec<SocketAddr> = plan.peer_addrs.clone();
        let mut interval = PROBE_INTERVAL_MIN;
        let mut next_probe = start;

        // Hard side: extra sockets, each with a receive task reporting hits.
        let (hit_tx, mut hits) = mpsc::channel::<(usize, SocketAddr)>(16);
        let mut hard: Option<(Vec<Arc<UdpSocket>>, JoinSet<()>)> = None;
        let mut next_resend = start;
        let _permit = if plan.birthday == Some(BirthdayRole::Hard) {
            // Wait for a slot rather than punch without sockets: a plain punch from a
            // symmetric NAT cannot pass a port-restricted one.
            let slot = tokio::time::timeout_at(deadline, self.hard.clone().acquire_owned()).await;
            match slot {
                Ok(Ok(p)) => {
                    hard = Some(self.open_hard(plan, hit_tx).await);
                    Some(p)
                }
                _ => None,
            }
        } else {
            None
        };
        // Easy side: spray state.
        let mut spray_left: usize = match plan.birthday {
            Some(BirthdayRole::Easy) => usize::from(plan.birthday_probes) * SPRAY_ROUNDS,
            _ => 0,
        };
        let spray_start = start + SPRAY_DELAY;
        let mut next_spray = spray_start;
        if plan.birthday == Some(BirthdayRole::Easy) {
            report.sprayed = Some(0);
        }

        loop {
            let spray_due = (spray_left > 0).then_some(next_spray);
            let resend_due = hard.as_ref().map(|_| next_resend);
            tokio::select! {
                biased;
                () = stop.notified() => break,
                () = tokio::time::sleep_until(deadline) => break,
                Some(h) = heard.recv() => {
                    // Facing a symmetric peer, its hundreds of birthday sockets may all reach
                    // us (a full-cone or restricted NAT lets them in), but only the one its
                    // side adopts will answer our handshake: follow its ack, not the rest.
                    let easy = plan.birthday == Some(BirthdayRole::Easy);
                    if easy && h.kind == KIND_PUNCH && !plan.peer_addrs.contains(&h.from) {
                        continue;
                    }
                    if !report.learned.contains(&h.from) {
                        report.learned.push(h.from);
                        let _ = learned.try_send(h.from);
                        for _ in 0..EXTRA_PROBES {
                            let _ = self.socket.send_probe(h.from, &payload(KIND_PUNCH, plan.token));
                        }
                        if !targets.contains(&h.from) {
                            targets.push(h.from);
                        }
                    }
                    tracing::debug!(from = %h.from, kind = h.kind, "heard the peer");
                    if h.kind == KIND_ACK {
                        report.birthday_hit = true;
                        spray_left = 0;
                    }
                }
                Some((idx, from)) = hits.recv(), if hard.is_some() => {
                    if let Some((socks, mut tasks)) = hard.take() {
                        tasks.abort_all();
                        let sock = socks[idx].clone();
                        tracing::debug!(%from, socket = idx, of = socks.len(), "birthday hit");
                        drop(socks);
                        self.adopt_route(from, sock.clone());
                        for _ in 0..EXTRA_PROBES {
                            let _ = sock.try_send_to(&probe_datagram(KIND_ACK, plan.token), from);
                        }
                        report.birthday_hit = true;
                        if !report.learned.contains(&from) {
                            report.learned.push(from);
                        }
                        let _ = learned.try_send(from);
                    }
                }
                () = sleep_opt(resend_due) => {
                    if let Some((socks, _)) = &hard {
                        let d = probe_datagram(KIND_PUNCH, plan.token);
                        for s in socks {
                            let _ = s.try_send_to(&d, signalled);
                        }
                    }
                    next_resend += HARD_RESEND;
                }
                () = sleep_opt(spray_due) => {
                    let ip = signalled.ip();
                    let mut rng = rand::rng();
                    for _ in 0..SPRAY_BATCH.min(spray_left) {
                        let port: u16 = rng.random_range(1024..=65535);
                        let _ = self.socket.send_probe(SocketAddr::new(ip, port), &payload(KIND_SPRAY, plan.token));
                        spray_left -= 1;
                        sprayed.fetch_add(1, Ordering::Relaxed);
                        if let Some(n) = report.sprayed.as_mut() {
                            *n += 1;
                        }
                    }
                    next_spray += SPRAY_TICK;
                }
                () = tokio::time::sleep_until(next_probe) => {
                    for t in &targets {
                        let _ = self.socket.send_probe(*t, &payload(KIND_PUNCH, plan.token));
                    }
                    next_probe += interval;
                    interval = (interval * 2).min(PROBE_INTERVAL_MAX);
                }
            }
        }
        if let Some((_, mut tasks)) = hard {
            tasks.abort_all();
        }
        tracing::debug!(sprayed = ?report.sprayed, learned = report.learned.len(), hit = report.birthday_hit, role = ?plan.birthday, "punch session ended");
        report
    }

    /// Opens the hard side's extra sockets, sends one probe from each towards the peer, and
    /// starts a receive task per socket that reports the first probe with our token.
    async fn open_hard(
        &self,
        plan: &PunchPlan,
        hits: mpsc::Sender<(usize, SocketAddr)>,
    ) -> (Vec<Arc<UdpSocket>>, JoinSet<()>) {
        let ip = match self.socket.local_addr() {
            Ok(a) => a.ip(),
            Err(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let n = usize::from(plan.birthday_sockets).min(MAX_HARD_SOCKETS);
        let d = probe_datagram(KIND_PUNCH, plan.token);
        let mut socks = Vec::with_capacity(n);
        let mut tasks = JoinSet::new();
        for idx in 0..n {
            let Ok(s) = UdpSocket::bind(SocketAddr::new(ip, 0)).await else {
                break; // out of file descriptors or ports: punch with what we have
            };
            let s = Arc::new(s);
            if let Some(&to) = plan.peer_addrs.first() {
                let _ = s.try_send_to(&d, to);
            }
            let (rs, tx, token) = (s.clone(), hits.clone(), plan.token);
            tasks.spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok((len, from)) = rs.recv_from(&mut buf).await {
                    let body = buf[..len].strip_prefix(&PROBE_MAGIC[..]);
                    if body.and_then(parse).is_some_and(|(_, t)| t == token) {
                        let _ = tx.send((idx, from)).await;
                        return;
                    }
                }
            });
            socks.push(s);
        }
        (socks, tasks)
    }

    /// Routes QUIC to `peer` through `sock` from now on, and feeds what `sock` receives
    /// from `peer` to quinn, until the route idles out.
    fn adopt_route(&self, peer: SocketAddr, sock: Arc<UdpSocket>) {
        if self
            .socket
            .add_route(peer, Route::Socket(sock.clone()))
            .is_err()
        {
            return;
        }
        let handle = self.socket.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                match tokio::time::timeout(ROUTE_IDLE, sock.recv_from(&mut buf)).await {
                    Ok(Ok((len, from))) if from == peer => handle.inject(from, buf[..len].to_vec()),
                    Ok(Ok(_)) => {}
                    _ => break,
                }
            }
            handle.remove_socket_route(&peer, &sock);
        });
    }
}

fn probe_datagram(kind: u8, token: u64) -> Vec<u8> {
    let mut d = PROBE_MAGIC.to_vec();
    d.extend_from_slice(&payload(kind, token));
    d
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Unregisters a session when it ends, however it ends.
struct SessionGuard {
    sessions: Arc<Mutex<HashMap<u64, mpsc::Sender<Heard>>>>,
    token: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        lock(&self.sessions).remove(&self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_short_input_is_rejected() {
        let p = payload(KIND_ACK, 0xdead_beef_0102_0304);
        assert_eq!(parse(&p), Some((KIND_ACK, 0xdead_beef_0102_0304)));
        assert_eq!(parse(&p[..5]), None);
        assert_eq!(parse(&[]), None);
    }

    #[tokio::test]
    async fn a_test_socket_says_hello_and_hears_probes_from_either_port() {
        // Receiving happens as quinn polls the socket, so each socket gets an endpoint.
        let bind = || {
            let (sock, h) =
                crate::socket::ChaosSocket::bind("127.0.0.1:0".parse().expect("addr"), 1)
                    .expect("bind");
            (crate::socket::endpoint(sock, None).expect("endpoint"), h)
        };
        let (_a_ep, a) = bind();
        let (_b_ep, b) = bind();
        let (hello_tx, mut hellos) = mpsc::channel(8);
        let server = Puncher::new(a.clone(), hello_tx);
        let (unused, _) = mpsc::channel(1);
        let tested = Puncher::new(b.clone(), unused);
        let a_addr = a.local_addr().expect("addr");
        let b_addr = b.local_addr().expect("addr");
        const WITHIN: Duration = Duration::from_secs(5);
        for (token, other_port) in [(7u64, false), (8, true)] {
            let (heard_tx, mut heard) = mpsc::channel(8);
            tested.dial_back_listen(a_addr, token, Duration::from_secs(10), heard_tx);
            let (test_socket, got) = tokio::time::timeout(WITHIN, hellos.recv())
                .await
                .expect("a hello")
                .expect("open");
            assert_eq!(got, token);
            assert_ne!(test_socket, b_addr, "hellos come from a fresh socket");
            server.dial_back(test_socket, token, other_port);
            let (from, got) = tokio::time::timeout(WITHIN, heard.recv())
                .await
                .expect("a probe")
                .expect("open");
            assert_eq!(got, token);
            assert_eq!(
                from.port() == a_addr.port(),
                !other_port,
                "{from} vs {a_addr}"
            );
            // The other hellos of the test socket are a fixed few; drain them.
            for _ in 1..DIALBACK_PROBES {
                let next = tokio::time::timeout(WITHIN, hellos.recv()).await;
                assert!(matches!(next, Ok(Some((s, t))) if t == token && s == test_socket));
            }
        }
    }
}
