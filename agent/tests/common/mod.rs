//! Shared harness of the agent's integration tests: real `chaosnet-agent` processes on
//! 127.0.0.1, each with its own data dir, a log file and known ports.
//!
//! - [`Agent`] owns one process and kills it (SIGKILL, then wait) on drop, so a failing test
//!   leaves nothing behind. Its stderr goes to `agent.log` in its directory; every failure
//!   message built with [`Agent::fail`] or [`fail_fleet`] carries the tail of those logs.
//! - [`http`] is a tiny HTTP/1.1 client over `std::net::TcpStream` (the control API is plain
//!   HTTP on loopback), enough for `GET` and `POST` with a JSON body.
//! - Ports are picked by binding port 0 and releasing it; a process-wide set makes sure one
//!   test binary never hands out the same port twice.
//!
//! Waits are bounded polls with short sleeps; nothing here asserts on timing.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The agent binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_chaosnet-agent");

/// Longest wait for an agent's API to answer after spawn.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of log shown with a failure, per agent.
const LOG_TAIL_LINES: usize = 25;

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn remember(port: u16) -> bool {
    let mut g = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    g.get_or_insert_with(HashSet::new).insert(port)
}

/// A UDP port on 127.0.0.1 that was free a moment ago and was never handed out before by
/// this process.
pub fn free_udp_port() -> u16 {
    for _ in 0..1000 {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket on 127.0.0.1");
        let port = s.local_addr().expect("local addr").port();
        // The API port of the same agent is TCP; also make sure TCP is free on it, so either
        // may be used for both.
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && remember(port) {
            return port;
        }
    }
    panic!("no free UDP port found on 127.0.0.1");
}

/// A TCP port on 127.0.0.1 that was free a moment ago and was never handed out before.
pub fn free_tcp_port() -> u16 {
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a TCP listener on 127.0.0.1");
        let port = l.local_addr().expect("local addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() && remember(port) {
            return port;
        }
    }
    panic!("no free TCP port found on 127.0.0.1");
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body bytes as text (lossy).
    pub body: String,
}

impl HttpResponse {
    /// The body as JSON, or `Value::Null` if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// One HTTP/1.1 request with `Connection: close`; reads the whole response. `timeout`
/// bounds connecting and each read.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<HttpResponse> {
    http_with(addr, method, path, body, None, timeout)
}

/// As [`http`], with `Authorization: Bearer <token>` when a token is given.
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
    timeout: Duration,
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(5)))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    exchange(&mut s, &addr.to_string(), method, path, body, token)
}

/// As [`http_with`], over the unix socket at `path`.
pub fn http_unix(
    path: &Path,
    method: &str,
    req_path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> std::io::Result<HttpResponse> {
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    exchange(&mut s, "localhost", method, req_path, None, token)
}

fn exchange(
    s: &mut (impl Read + Write),
    host: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> std::io::Result<HttpResponse> {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: */*\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers in the response"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics text
// ---------------------------------------------------------------------------------------------

/// Sum of the samples of `name` (exact sample name) whose labels contain every
/// `key="value"` pair of `labels`. 0 if there is none.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some(end) = r.find('}') else { continue };
            (&r[..end], r[end + 1..].trim())
        } else if rest.starts_with(' ') {
            ("", rest.trim())
        } else {
            continue; // another metric whose name starts with `name`
        };
        if labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        {
            let v = value.split_whitespace().next().unwrap_or("0");
            sum += v.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

// ---------------------------------------------------------------------------------------------
// Agents
// ---------------------------------------------------------------------------------------------

/// How to start an agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `--network`.
    pub network: String,
    /// `--network-key-file`s, in order.
    pub key_files: Vec<PathBuf>,
    /// `--seed`s as `id@ip:port`.
    pub seeds: Vec<String>,
    /// `--task-rate`.
    pub task_rate: f64,
    /// `--rng-seed`.
    pub rng_seed: u64,
    /// Extra flags.
    pub extra: Vec<String>,
    /// A control API token: written to a file given as `--api-token-file`, and sent by
    /// every request the harness makes.
    pub token: Option<String>,
    /// `--api` as given, instead of `self.api` (e.g. `unix:PATH`, `0.0.0.0:PORT`).
    pub api_arg: Option<String>,
    /// Run inside this network namespace (`ip netns exec`; needs root).
    pub netns: Option<String>,
}

impl AgentConfig {
    /// A quiet mainnet agent: no seeds, task loop off.
    pub fn mainnet(rng_seed: u64) -> AgentConfig {
        AgentConfig {
            network: "mainnet".into(),
            key_files: Vec::new(),
            seeds: Vec::new(),
            task_rate: 0.0,
            rng_seed,
            extra: Vec::new(),
            token: None,
            api_arg: None,
            netns: None,
        }
    }

    /// Same, on `network`.
    pub fn on(network: &str, rng_seed: u64) -> AgentConfig {
        AgentConfig {
            network: network.into(),
            ..AgentConfig::mainnet(rng_seed)
        }
    }

    /// Adds a seed.
    pub fn seed(mut self, a: &Agent) -> AgentConfig {
        self.seeds.push(a.seed_arg());
        self
    }

    /// Adds a key file.
    pub fn key(mut self, path: &Path) -> AgentConfig {
        self.key_files.push(path.to_path_buf());
        self
    }

    /// Sets the task rate.
    pub fn task_rate(mut self, r: f64) -> AgentConfig {
        self.task_rate = r;
        self
    }
}

/// One agent process with its data dir and ports. Killed on drop.
pub struct Agent {
    /// Short name for messages.
    pub name: String,
    /// Hex NodeId (from `keygen`).
    pub node_id: String,
    /// UDP P2P address.
    pub p2p: SocketAddr,
    /// Control API address.
    pub api: SocketAddr,
    /// How it was started.
    pub config: AgentConfig,
    /// Data dir (inside `_dir` unless given).
    pub data_dir: PathBuf,
    /// Log file (stderr and stdout of every run, appended).
    pub log: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

/// Runs `chaosnet-agent keygen --data-dir dir` and returns the printed hex NodeId.
pub fn keygen(dir: &Path) -> String {
    let out = Command::new(BIN)
        .args(["keygen", "--data-dir"])
        .arg(dir)
        .output()
        .expect("run chaosnet-agent keygen");
    assert!(
        out.status.success(),
        "keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 64, "keygen printed {id:?}, expected 64 hex chars");
    id
}

impl Agent {
    /// Creates the data dir and key, picks ports, spawns the agent. Does not wait for it.
    pub fn spawn(name: &str, config: AgentConfig) -> Agent {
        let mut a = Agent::prepare(name, config);
        a.start();
        a
    }

    /// Creates the data dir and key and picks ports, but does not start the process (so its
    /// id and address can be given to others first). Start it with [`Agent::start`].
    pub fn prepare(name: &str, config: AgentConfig) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix(&format!("chaosnet-{name}-"))
            .tempdir()
            .expect("create a tempdir");
        let data_dir = dir.path().join("data");
        let node_id = keygen(&data_dir);
        let p2p: SocketAddr = format!("127.0.0.1:{}", free_udp_port())
            .parse()
            .expect("addr");
        let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port())
            .parse()
            .expect("addr");
        let log = dir.path().join("agent.log");
        Agent {
            name: name.to_string(),
            node_id,
            p2p,
            api,
            config,
            data_dir,
            log,
            child: None,
            _dir: dir,
        }
    }

    /// Spawns and waits until `/status` answers.
    pub fn start_ready(name: &str, config: AgentConfig) -> Agent {
        let a = Agent::spawn(name, config);
        a.wait_ready();
        a
    }

    /// `id@ip:port`, for `--seed`.
    pub fn seed_arg(&self) -> String {
        format!("{}@{}", self.node_id, self.p2p)
    }

    /// The `run` arguments of this agent.
    pub fn run_args(&self) -> Vec<String> {
        let c = &self.config;
        let mut args: Vec<String> = vec![
            "run".into(),
            "--network".into(),
            c.network.clone(),
            "--listen".into(),
            self.p2p.to_string(),
            "--api".into(),
            c.api_arg.clone().unwrap_or_else(|| self.api.to_string()),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--task-rate".into(),
            c.task_rate.to_string(),
            "--rng-seed".into(),
            c.rng_seed.to_string(),
        ];
        for k in &c.key_files {
            args.push("--network-key-file".into());
            args.push(k.display().to_string());
        }
        for s in &c.seeds {
            args.push("--seed".into());
            args.push(s.clone());
        }
        if c.token.is_some() {
            args.push("--api-token-file".into());
            args.push(self.token_file().display().to_string());
        }
        args.extend(c.extra.iter().cloned());
        args
    }

    /// Where the API token file goes.
    pub fn token_file(&self) -> PathBuf {
        self._dir.path().join("api.token")
    }

    /// (Re)starts the process with the current config; appends to the log.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{}: already running", self.name);
        if let Some(t) = &self.config.token {
            std::fs::write(self.token_file(), format!("{t}\n")).expect("write the token file");
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the agent log");
        let log2 = log.try_clone().expect("clone the log handle");
        // `ip netns exec` execs the agent, so the child's pid is the agent's.
        let mut cmd = match &self.config.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .args(self.run_args())
            .env("CHAOSNET_LOG", "info,quinn=warn,rustls=warn")
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log)
            .spawn()
            .expect("spawn chaosnet-agent");
        self.child = Some(child);
    }

    /// The process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `signal` (a name `kill` knows: STOP, CONT, TERM, HUP...) to the process.
    #[track_caller]
    pub fn signal(&self, signal: &str) {
        let Some(pid) = self.pid() else {
            self.fail(&format!("cannot send SIG{signal}: not running"));
        };
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            self.fail(&format!("kill -{signal} {pid} failed"));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process has exited (reaps it if so); returns its status.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(st)) => {
                self.child = None;
                Some(st)
            }
            _ => None,
        }
    }

    /// Restarts on a fresh API port (the old one may linger in TIME_WAIT), same P2P port.
    pub fn restart_with(&mut self, config: AgentConfig) {
        self.kill();
        self.config = config;
        self.api = format!("127.0.0.1:{}", free_tcp_port())
            .parse()
            .expect("addr");
        self.start();
    }

    /// The last lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        all[from..].join("\n")
    }

    /// Panics with `msg` and the log tail.
    #[track_caller]
    pub fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\n--- {} ({}, {}) log tail ---\n{}\n---",
            self.name,
            &self.node_id[..8],
            self.p2p,
            self.log_tail(LOG_TAIL_LINES)
        )
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> std::io::Result<HttpResponse> {
        let token = self.config.token.as_deref();
        http_with(self.api, "GET", path, None, token, Duration::from_secs(15))
    }

    /// `POST path` with a JSON body; `timeout` bounds each read.
    pub fn post(&self, path: &str, body: &str, timeout: Duration) -> std::io::Result<HttpResponse> {
        let token = self.config.token.as_deref();
        http_with(self.api, "POST", path, Some(body), token, timeout)
    }

    /// `GET /status` as JSON; fails the test (with the log) if it does not answer 200.
    #[track_caller]
    pub fn status(&self) -> Value {
        match self.get("/status") {
            Ok(r) if r.status == 200 => r.json(),
            Ok(r) => self.fail(&format!("GET /status answered {}: {}", r.status, r.body)),
            Err(e) => self.fail(&format!("GET /status failed: {e}")),
        }
    }

    /// `GET /metrics` text; fails the test if it does not answer 200.
    #[track_caller]
    pub fn metrics(&self) -> String {
        match self.get("/metrics") {
            Ok(r) if r.status == 200 => r.body,
            Ok(r) => self.fail(&format!("GET /metrics answered {}: {}", r.status, r.body)),
            Err(e) => self.fail(&format!("GET /metrics failed: {e}")),
        }
    }

    /// `POST /connect {"node_id": id}`; waits up to 70 s (the API's deadline is 60 s).
    pub fn connect(&self, node_id: &str) -> std::io::Result<HttpResponse> {
        let body = serde_json::json!({ "node_id": node_id }).to_string();
        self.post("/connect", &body, Duration::from_secs(70))
    }

    /// Polls until `/status` answers 200 (bounded by [`READY_TIMEOUT`]). Fails with the log
    /// tail if the process exits or the time is up.
    #[track_caller]
    pub fn wait_ready(&self) -> Value {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let token = self.config.token.as_deref();
            if let Ok(r) = http_with(
                self.api,
                "GET",
                "/status",
                None,
                token,
                Duration::from_secs(5),
            ) && r.status == 200
            {
                return r.json();
            }
            // Check for an early exit without taking `&mut self`.
            if !self.is_alive() {
                self.fail("the agent exited before its API answered");
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "the agent's API at {} did not answer within {READY_TIMEOUT:?}",
                    self.api
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running (does not reap it).
    pub fn is_alive(&self) -> bool {
        match self.pid() {
            Some(pid) => {
                // /proc/<pid>/stat third field: state; Z = zombie (exited, not reaped).
                match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                    Ok(s) => {
                        let state = s
                            .rsplit_once(')')
                            .and_then(|(_, rest)| rest.split_whitespace().next())
                            .unwrap_or("?");
                        state != "Z" && state != "X"
                    }
                    Err(_) => false,
                }
            }
            None => false,
        }
    }

    /// Polls `/status` until `pred` holds (bounded by `timeout`); returns the last status.
    #[track_caller]
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status();
            if pred(&st) {
                return st;
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "{what}: not reached within {timeout:?}; last status: {st}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls `/metrics` until `pred` holds (bounded); returns the last text.
    #[track_caller]
    pub fn wait_metrics(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics();
            if pred(&m) {
                return m;
            }
            if Instant::now() > deadline {
                self.fail(&format!("{what}: not reached within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Panics with `msg` and the log tails of `agents` (a few lines each).
#[track_caller]
pub fn fail_fleet(msg: &str, agents: &[&Agent]) -> ! {
    let mut out = format!("{msg}\n");
    for a in agents {
        out.push_str(&format!(
            "--- {} ({}, {}) ---\n{}\n",
            a.name,
            &a.node_id[..8],
            a.p2p,
            a.log_tail(8)
        ));
    }
    panic!("{out}");
}

/// Waits until every agent's API answers (bounded per agent).
pub fn wait_all_ready(agents: &[Agent]) {
    for a in agents {
        a.wait_ready();
    }
}

/// Waits until every agent reports `"joined": true`, bounded by `timeout` overall.
#[track_caller]
pub fn wait_all_joined(agents: &[&Agent], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let not_joined: Vec<&Agent> = agents
            .iter()
            .copied()
            .filter(|a| a.status()["joined"] != Value::Bool(true))
            .collect();
        if not_joined.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let names: Vec<&str> = not_joined.iter().map(|a| a.name.as_str()).collect();
            fail_fleet(
                &format!("not joined within {timeout:?}: {names:?}"),
                &not_joined,
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A small deterministic PRNG (xorshift64*), so tests need no rand API.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// Seeded; a zero seed is replaced.
    pub fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Writes a network key file (64 hex chars, optional `not-after`), mode 0600.
pub fn write_key_file(path: &Path, secret: [u8; 32], not_after: Option<u64>) {
    write_keys_file(path, &[(secret, not_after)]);
}

/// Writes a network key file of several keys, each with its optional `not-after`, mode 0600.
pub fn write_keys_file(path: &Path, keys: &[([u8; 32], Option<u64>)]) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::from("# test network key\n");
    for (secret, not_after) in keys {
        text.push_str(&hex::encode(secret));
        text.push('\n');
        if let Some(t) = not_after {
            text.push_str(&format!("not-after: {t}\n"));
        }
    }
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("create key file");
    f.write_all(text.as_bytes()).expect("write key file");
}

// ---------------------------------------------------------------------------------------------
// Raw QUIC peers and process memory
// ---------------------------------------------------------------------------------------------

/// A client endpoint and an authenticated connection to `a` made with the agent's own
/// library under a fresh identity, `hello` (raw bytes, so tests can send broken ones) and
/// our verdict sent. The caller then speaks whatever frames it likes on it.
pub async fn raw_connection(
    a: &Agent,
    hello: &[u8],
) -> (quinn::Endpoint, quinn::Connection, chaosnet_proto::NodeId) {
    use chaosnet_agent::identity::Identity;
    use chaosnet_agent::socket::{ChaosSocket, endpoint};
    use chaosnet_agent::tls::{self, NetworkId};
    use chaosnet_proto::NodeId;

    let me = Identity::generate().expect("generate an identity");
    let network: NetworkId = a.config.network.parse().expect("network id");
    let client = tls::client_config(&me, &network).expect("client config");
    let local: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let (socket, _handle) = ChaosSocket::bind(local, 7).expect("bind the client socket");
    let ep = endpoint(socket, None).expect("client endpoint");
    let target: NodeId = a.node_id.parse().expect("agent node id");
    let connecting = ep
        .connect_with(client, a.p2p, &tls::server_name(&target))
        .expect("start connecting");
    let conn = match tokio::time::timeout(Duration::from_secs(15), connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => a.fail(&format!("QUIC handshake with the agent failed: {e}")),
        Err(_) => a.fail("QUIC handshake with the agent timed out"),
    };
    let mut uni = conn.open_uni().await.expect("open the hello stream");
    uni.write_all(hello).await.expect("write hello");
    uni.finish().expect("finish hello");
    // Then our verdict on the agent (accepted), as the agent's own transport sends it. Best
    // effort: an agent that refuses our hello may have closed the connection already, and
    // the caller checks what the agent did.
    if let Ok(mut verdict) = conn.open_uni().await {
        let _ = verdict.write_all(&[1]).await;
        let _ = verdict.finish();
    }
    (ep, conn, me.node_id())
}

/// An empty mainnet hello (no proofs, no listen addresses), encoded.
pub fn plain_hello() -> Vec<u8> {
    chaosnet_proto::encode(&chaosnet_proto::Hello {
        proofs: vec![],
        listen_addrs: vec![],
    })
    .expect("encode hello")
}

/// Whether the test runs as root; without root it says it skipped, and panics when
/// `CHAOSNET_REQUIRE_ROOT=1` (as CI sets), so a skip cannot pass for a run.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CHAOSNET_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("CHAOSNET_REQUIRE_ROOT=1 but not running as root");
    }
    eprintln!("skipped: needs root");
    false
}

/// Resident memory of process `pid` in KiB (VmRSS), or 0 once it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Reads one frame (header, then body) off `recv` and decodes it; `None` when the stream
/// ends early or the frame does not decode. Callers bound how long they wait.
pub async fn read_frame<T: serde::de::DeserializeOwned + chaosnet_proto::Validate>(
    recv: &mut quinn::RecvStream,
) -> Option<T> {
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await.ok()?;
    let len = chaosnet_proto::frame_len(header).ok()?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.ok()?;
    chaosnet_proto::decode_body::<T>(&body).ok()
}

/// Sends `req` on a new stream of `conn` and returns the decoded answer, waiting at most
/// 15 s (a guard against a hang, not a timing assertion), or why there is none.
pub async fn ask_raw(
    conn: &quinn::Connection,
    req: &chaosnet_proto::Request,
) -> Result<chaosnet_proto::Response, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("open: {e}"))?;
    let frame = chaosnet_proto::encode(req).map_err(|e| format!("encode: {e}"))?;
    send.write_all(&frame)
        .await
        .map_err(|e| format!("write: {e}"))?;
    send.finish().map_err(|e| format!("finish: {e}"))?;
    let body = tokio::time::timeout(Duration::from_secs(15), recv.read_to_end(1 << 16))
        .await
        .map_err(|_| "no answer within 15 s".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    chaosnet_proto::decode(&body).map_err(|e| format!("decode: {e}"))
}
