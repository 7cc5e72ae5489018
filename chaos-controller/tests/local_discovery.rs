//! As root: local discovery on a real LAN. Two agents in host namespaces behind one NAT
//! router's LAN bridge, started with `--mdns` and no seed at all, find each other over mDNS,
//! enter each other in their node graphs, connect directly, and count the discovery in
//! `chaosnet_mdns_discoveries_total`.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos_controller::apply::{self, Step};
use chaos_controller::http::{self, Endpoint, Request};
use chaos_controller::plan::NatKind;
use common::cli::agent_bin;
use common::{HOME, Lab, RunGuard, random_run_id, require_root, shared};
use serde_json::Value;

fn quiet(_: Step) {}

/// An agent process, killed on drop.
struct Running {
    child: Child,
    api: PathBuf,
    node_id: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(ns: &str, ip: Ipv4Addr, dir: &Path, name: &str) -> Running {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).expect("data dir");
    let api = dir.join(format!("{name}.sock"));
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(agent_bin())
        .args([
            "run",
            "--network",
            "mainnet",
            "--listen",
            &format!("{ip}:4433"),
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--api")
        .arg(format!("unix:{}", api.display()))
        .args(["--task-rate", "0", "--mdns"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn the agent");
    let mut r = Running {
        child,
        api,
        node_id: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(st) = get(&r, "/status") {
            r.node_id = st["node_id"].as_str().unwrap_or("").to_string();
            return r;
        }
        assert!(Instant::now() < deadline, "{name} API never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An answer of `a`'s API.
fn call(
    a: &Running,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<http::Response, String> {
    let req = Request { method, path, body };
    http::call(
        &Endpoint::Unix(a.api.clone()),
        &req,
        Duration::from_secs(30),
    )
    .map_err(|e| e.to_string())
}

fn get(a: &Running, path: &str) -> Result<Value, String> {
    let r = call(a, "GET", path, None)?;
    serde_json::from_str(&r.body).map_err(|e| e.to_string())
}

#[test]
fn seedless_agents_on_one_lan_find_each_other_by_mdns_and_connect() {
    if !require_root() {
        return;
    }
    let _lock = shared();
    let run = random_run_id();
    let _guard = RunGuard::new(&run);
    let mut lab = Lab::new(&run);
    let mut site = lab.nat_site(
        "lan",
        NatKind::PortRestrictedCone,
        false,
        Ipv4Addr::new(198, 18, 7, 1),
        Ipv4Addr::new(10, 77, 0, 0),
        false,
        HOME,
    );
    let (ns_a, ip_a) = lab.lan_host("lan", &mut site);
    let (ns_b, ip_b) = lab.lan_host("lan", &mut site);
    apply::apply(&lab.plan, &quiet).expect("apply");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = start(&ns_a, ip_a, dir.path(), "a");
    let b = start(&ns_b, ip_b, dir.path(), "b");

    // Neither has a seed: only mDNS can put the other in its node graph.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let peers = get(&a, "/peers").unwrap_or(Value::Null);
        let found = peers
            .as_array()
            .is_some_and(|l| l.iter().any(|p| p["node_id"] == b.node_id.as_str()));
        if found {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("a.log")).unwrap_or_default();
            let m = call(&a, "GET", "/metrics", None)
                .map(|r| r.body)
                .unwrap_or_default();
            let counted: Vec<&str> = m.lines().filter(|l| l.contains("mdns")).collect();
            panic!("a never discovered b; a's metrics: {counted:?}; a's log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let body = format!(r#"{{"node_id": "{}"}}"#, b.node_id);
    let r = call(&a, "POST", "/connect", Some(&body)).expect("POST /connect");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v["mode"], "direct", "same LAN: a plain dial: {v}");
    // Whichever heard the other first found a stranger (the other then already knew it).
    let new: f64 = [&a, &b]
        .iter()
        .map(|x| {
            let m = call(x, "GET", "/metrics", None).expect("metrics");
            m.body
                .lines()
                .find(|l| l.starts_with("chaosnet_mdns_discoveries_total{kind=\"new\"}"))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        })
        .sum();
    assert!(new >= 1.0, "discoveries counted: {new}");
}
