//! End to end, as root: the `chaosnet` binary builds the default lab with real namespaces and
//! nftables, starts real agents, Prometheus scrapes them, and `down` leaves nothing behind,
//! also after the controller was killed with SIGKILL in the middle of `up`.
//!
//! One test function runs the flows one after another: `down --all` would otherwise remove
//! the runs of tests running in parallel.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::cli::{
    agent_bin, chaosnet, free_port, http_get, live_processes, namespaces_of, run, text,
};
use common::require_root;

#[test]
fn default_lab_comes_up_is_scraped_and_goes_away_cleanly() {
    if !require_root() {
        return;
    }
    let _ = agent_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = dir.path().join("runs");

    // --- a bad scenario creates nothing and says where the problem is
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "sites:\n  - name: a\n    nat: fullcone\n    agents: 1\n",
    )
    .expect("write");
    let o = run(&runs, &["up", "-f", bad.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.yaml:3:10"),
        "error has file:line:col: {err}"
    );
    assert!(
        err.contains("full-cone"),
        "error lists the valid choices: {err}"
    );
    assert!(
        !runs.exists() || std::fs::read_dir(&runs).map(|d| d.count()).unwrap_or(0) == 0,
        "nothing created"
    );

    // --- the default scenario comes up and every agent joins
    let prom_port = free_port();
    let o = run(
        &runs,
        &[
            "up",
            "--monitor",
            "--prometheus-port",
            &prom_port.to_string(),
        ],
    );
    assert!(o.status.success(), "up failed:\n{}", text(&o));
    let o = run(&runs, &["status", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let st: Value = serde_json::from_slice(&o.stdout).expect("status JSON");
    let run_id = st["run_id"].as_str().expect("run_id").to_string();
    let agents = st["agents"].as_array().expect("agents").clone();
    assert_eq!(agents.len(), 26, "default scenario: 3 seeds + 23 agents");
    for a in &agents {
        assert_eq!(a["joined"], true, "{a}");
    }
    // Every agent classifies itself as exactly its site's NAT type: the mapping from its
    // observers, the filtering by dial-back (a carrier NAT in front of a home NAT filters like
    // the stricter, port-restricted one). `status` shows it as SEEN AS.
    let expected = |nat: &str| {
        if nat.starts_with("cgnat") {
            "port-restricted-cone".to_string()
        } else {
            nat.to_string()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let o = run(&runs, &["status", "--json"]);
        let st: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let wrong: Vec<String> = st["agents"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|a| a["nat_type"].as_str() != Some(&expected(a["nat"].as_str().unwrap_or(""))))
            .map(|a| {
                format!(
                    "{} (site {}) sees itself as {}",
                    a["agent"], a["nat"], a["nat_type"]
                )
            })
            .collect();
        if wrong.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            // Take the lab down first: agents left running would hold the lab lock.
            let _ = run(&runs, &["down"]);
            panic!("after 90 s: {wrong:#?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let o = run(&runs, &["status"]);
    let table = String::from_utf8_lossy(&o.stdout);
    for line in table.lines().skip(1).filter(|l| l.contains("-0 ")) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (nat, seen) = (cols[2], cols[cols.len() - 1]);
        assert_eq!(seen, expected(nat), "SEEN AS column: {line}");
    }
    assert!(!namespaces_of(&run_id).is_empty());

    // --- exec runs inside the agent's namespace
    let o = run(
        &runs,
        &[
            "exec", "seed-0", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("198.18.0.10/15"),
        "{}",
        text(&o)
    );
    let o = run(&runs, &["exec", "seed-0", "--", "false"]);
    assert_eq!(o.status.code(), Some(1), "exec passes the exit code on");

    // --- logs
    let o = run(&runs, &["logs", "seed-0"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("joined"),
        "{}",
        text(&o)
    );

    // --- restart one agent: it comes back with its persisted contacts and rejoins
    let o = run(&runs, &["restart", "portrestr1-0"]);
    assert!(o.status.success(), "{}", text(&o));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = run(&runs, &["status", "--json"]);
        let st: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let me = st["agents"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["agent"] == "portrestr1-0").cloned());
        if me
            .as_ref()
            .is_some_and(|a| a["joined"] == true && a["contacts"].as_u64().unwrap_or(0) > 0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted agent did not rejoin: {me:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = run(&runs, &["logs", "portrestr1-0"]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(
        log.matches("starting").count() >= 2,
        "two starts in the log"
    );
    assert!(
        log.lines()
            .rfind(|l| l.contains("starting"))
            .is_some_and(|l| !l.contains("restored=0")),
        "the restarted agent restored contacts from RocksDB: {log}"
    );

    // --- Prometheus (from Debian) scrapes every agent as up
    let prom = format!("127.0.0.1:{prom_port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = http_get(&prom, "/api/v1/query?query=up").unwrap_or_default();
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let results = v["data"]["result"].as_array().cloned().unwrap_or_default();
        let up = results.iter().filter(|r| r["value"][1] == "1").count();
        if results.len() == 26 && up == 26 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus sees {up} of {} targets up (want 26): {body}",
            results.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // --- down leaves nothing: namespaces, agents, proxy, Prometheus
    let o = run(&runs, &["down"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(namespaces_of(&run_id), Vec::<String>::new());
    let run_dir = runs.join(&run_id);
    assert_eq!(
        live_processes(run_dir.to_str().expect("utf-8")),
        Vec::<String>::new(),
        "proxy and Prometheus stopped"
    );
    assert_eq!(
        live_processes("--api unix:agents/"),
        Vec::<String>::new(),
        "lab agents stopped"
    );
    let o = run(&runs, &["down"]);
    assert!(o.status.success(), "down is idempotent: {}", text(&o));

    // --- SIGKILL in the middle of `up`, then `down --all`
    let mut child = Command::new(chaosnet())
        .arg("--runs-dir")
        .arg(&runs)
        .args(["up", "--agents", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn up");
    // Wait until it has created something (its run's namespaces), then kill it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let killed_run = loop {
        let current = std::fs::read_link(runs.join("current"))
            .ok()
            .map(|p| p.display().to_string());
        if let Some(id) = current.filter(|id| *id != run_id)
            && !namespaces_of(&id).is_empty()
        {
            break id;
        }
        assert!(Instant::now() < deadline, "up created nothing in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let o = run(&runs, &["down", "--all"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(namespaces_of(&killed_run), Vec::<String>::new());
    assert_eq!(
        live_processes("--api unix:agents/"),
        Vec::<String>::new(),
        "lab agents stopped"
    );
    let o = run(&runs, &["down", "--all"]);
    assert!(o.status.success(), "down --all is idempotent: {}", text(&o));
}
