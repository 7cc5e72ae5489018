//! Helpers for tests that drive the `chaosnet` binary: running it, reading its output, and
//! checking what a run left behind.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The `chaosnet` binary under test.
pub fn chaosnet() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chaosnet"))
}

/// The agent binary next to it (built by `cargo test --workspace`).
pub fn agent_bin() -> PathBuf {
    let p = chaosnet().with_file_name("chaosnet-agent");
    assert!(
        p.is_file(),
        "{} missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

/// Runs `chaosnet --runs-dir <runs> <args>` and waits.
pub fn run(runs: &Path, args: &[&str]) -> Output {
    Command::new(chaosnet())
        .arg("--runs-dir")
        .arg(runs)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run chaosnet")
}

/// Runs a command and returns its stdout and stderr together (whatever its exit status).
pub fn sh(args: &[&str]) -> String {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run");
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Exit code, stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Body of `GET path` on `addr` (HTTP/1.0), if any.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Namespaces of run `id`.
pub fn namespaces_of(id: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("cn{id}-")))
        .map(str::to_string)
        .collect()
}

/// Live (non-zombie) processes whose command line contains `needle`.
pub fn live_processes(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let p = e.path();
        let Ok(cmd) = std::fs::read(p.join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'));
        if !zombie && cmd.contains(needle) {
            out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    out
}
