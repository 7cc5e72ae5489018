//! Chaos runs end to end, as root, with the real `chaosnet` binary and agents (small labs:
//! 2 seeds and 4 agents, every pair directly dialable, so unfaulted reachability is 100%).
//!
//! - a two-halves partition for 20 s: cross-cut connects fail while it lasts, reachability
//!   recovers to >= 99% within 30 s of the heal, the verdict is pass; with `--monitor`,
//!   the Chaos dashboard's recovery panel shows the report's recovery time from Prometheus;
//! - by hand on the kept lab: pause, loss, bandwidth, delay, nat-swap, ip-change and
//!   link-down through `chaosnet fault`, each visible in the lab, then `chaosnet heal --all`;
//! - an impossible SLO exits 1 and names the SLO, the value and the time;
//! - churn: killed agents come back and rejoin with their persisted node graph;
//! - after every run no fault state remains (fault nft tables, qdiscs, SIGSTOPped agents).
//!
//! One test function runs the flows one after another (2 cores; runs share nothing but the
//! machine). Skips without root unless `CHAOSNET_REQUIRE_ROOT=1`.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use common::cli::{agent_bin, namespaces_of, run, sh, text};
use common::require_root;

const LAB: &str = "seeds: 2
agent: {task_rate: 0.5}
sites:
  - {name: pub, nat: none, agents: 3}
  - {name: cone, nat: full-cone, agents: 1}
";

fn write(dir: &Path, name: &str, chaos: &str) -> String {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "name: {}\nseed: 11\n{LAB}{chaos}",
            name.trim_end_matches(".yaml")
        ),
    )
    .expect("write scenario");
    p.display().to_string()
}

fn current(runs: &Path) -> (String, std::path::PathBuf) {
    let id = std::fs::read_link(runs.join("current"))
        .expect("current run")
        .display()
        .to_string();
    let dir = runs.join(&id);
    (id, dir)
}

fn report(run_dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(run_dir.join("report.json")).expect("report"))
        .expect("report json")
}

/// Asserts that nothing a fault creates is left in the run's namespaces or processes.
fn assert_no_fault_state(run_id: &str, run_dir: &Path) {
    for ns in namespaces_of(run_id) {
        let tables = sh(&["ip", "netns", "exec", &ns, "nft", "list", "tables"]);
        assert!(
            !tables.contains("chaos_"),
            "{ns} keeps a fault table: {tables}"
        );
        let q = sh(&["tc", "-n", &ns, "qdisc", "show"]);
        assert!(
            !q.contains("tbf") && !q.contains("netem"),
            "{ns} keeps a qdisc: {q}"
        );
        let links = sh(&["ip", "-n", &ns, "-br", "link"]);
        assert!(
            !links
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some("DOWN")),
            "{ns} has a link down: {links}"
        );
    }
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("state.json")).expect("state"))
            .expect("state json");
    for (name, inst) in state["agents"].as_object().cloned().unwrap_or_default() {
        let pid = inst["pid"].as_u64().expect("pid");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let st = stat.rsplit(')').next().unwrap_or("").trim_start();
        assert!(
            !st.starts_with('T'),
            "{name} (pid {pid}) is stopped: {stat}"
        );
    }
    let faults = std::fs::read_to_string(run_dir.join("faults.json")).unwrap_or_default();
    let f: Value = serde_json::from_str(&faults).unwrap_or(Value::Null);
    assert!(
        f["active"].as_array().is_none_or(|a| a.is_empty()),
        "faults still recorded: {faults}"
    );
}

/// Takes the current run down when the test ends, also when it panics (a `--keep` run
/// would otherwise outlive its deleted temporary directory).
struct DownOnDrop(std::path::PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        if self.0.join("current").exists() {
            let _ = run(&self.0, &["down"]);
        }
    }
}

#[test]
fn chaos_runs_partition_faults_by_hand_impossible_slo_and_churn() {
    if !require_root() {
        return;
    }
    let bin = agent_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = dir.path().join("runs");
    let _down = DownOnDrop(runs.clone());
    let bin = bin.display().to_string();

    // --- a bad fault is refused before anything starts, naming its line
    let bad = write(
        dir.path(),
        "bad.yaml",
        "chaos:\n  faults:\n    - kind: kill\n      select: {site: mars}\n",
    );
    let o = run(&runs, &["run", &bad, "--agent-bin", &bin]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("bad.yaml:11:15"), "{}", text(&o));
    assert!(!runs.join("current").exists(), "nothing was brought up");

    // --- partition of two halves for 20 s
    let part = write(
        dir.path(),
        "partition.yaml",
        "chaos:
  warmup_s: 3
  duration_s: 26
  settle_s: 8
  probe_interval_s: 2
  sample_pairs: 20
  connect_timeout_ms: 2000
  faults:
    - {name: halves, kind: partition, shape: halves, at_s: 3, duration_s: 20}
  slos:
    - {name: recovered, probe: recovery, max: 30, recover_to: 0.99}
    - {name: reach-at-end, probe: reachability, when: end, min: 0.99}
",
    );
    let prom_port = common::cli::free_port().to_string();
    let o = run(
        &runs,
        &[
            "run",
            &part,
            "--keep",
            "--agent-bin",
            &bin,
            "--monitor",
            "--prometheus-port",
            &prom_port,
        ],
    );
    let (run_id, run_dir) = current(&runs);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = report(&run_dir);
    assert_eq!(r["pass"], true);
    let groups = &r["timeline"]["occurrences"][0]["groups"];
    let side = |a: &str| {
        (0..2).find(|&g| {
            groups[g]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x == a))
        })
    };
    let fault = &r["faults"][0];
    let (inj, heal) = (
        fault["inject_at_ms"].as_i64().expect("inject"),
        fault["heal_at_ms"].as_i64().expect("heal"),
    );
    let (mut cross_during, mut cross_ok_during) = (0, Vec::new());
    let rounds = r["rounds"].as_array().expect("rounds");
    for (i, round) in rounds.iter().enumerate() {
        let t = round["t_ms"].as_i64().expect("t");
        let next = rounds
            .get(i + 1)
            .and_then(|n| n["t_ms"].as_i64())
            .unwrap_or(i64::MAX);
        // Rounds wholly inside the window: started after the inject, over before the heal.
        if t > inj + 500 && next < heal {
            for p in round["pairs"].as_array().expect("pairs") {
                let (a, b) = (
                    p["from"].as_str().expect("from"),
                    p["to"].as_str().expect("to"),
                );
                if side(a) != side(b) {
                    cross_during += 1;
                    if p["ok"] == true {
                        cross_ok_during.push(p.clone());
                    }
                }
            }
        }
    }
    assert!(
        cross_during > 5,
        "cross-cut pairs were sampled during the cut"
    );
    assert!(
        cross_ok_during.is_empty(),
        "no cross-cut connect got through the partition: {cross_ok_during:?}"
    );
    let rec = fault["recovery_s"].as_f64().expect("recovered");
    assert!(
        rec <= 30.0,
        "recovered to >= 99% within 30 s of the heal: {rec}"
    );
    // Prometheus scraped the same recovery from the controller, and the Chaos dashboard's
    // panel shows it (its query over the run, through a subquery: the controller's target
    // is gone since the run ended).
    let chaos: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/chaos.json"),
        )
        .expect("chaos.json"),
    )
    .expect("json");
    let panel = chaos["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .find(|p| p["title"] == "Recovery time after heal")
        .expect("recovery panel");
    let expr = panel["targets"][0]["expr"]
        .as_str()
        .expect("expr")
        .replace("$run", &run_id);
    let q = format!("last_over_time(({expr})[10m:1s])");
    let enc: String = q
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let body = common::cli::http_get(
        &format!("127.0.0.1:{prom_port}"),
        &format!("/api/v1/query?query={enc}"),
    )
    .unwrap_or_default();
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let series = v["data"]["result"].as_array().cloned().unwrap_or_default();
    assert_eq!(series.len(), 1, "one recovery series for {q}: {v}");
    assert_eq!(series[0]["metric"]["fault"], "halves", "{v}");
    let scraped: f64 = series[0]["value"][1]
        .as_str()
        .and_then(|x| x.parse().ok())
        .expect("a value");
    assert!(
        (scraped - rec).abs() < 1e-6,
        "the dashboard shows the report's recovery: {scraped} vs {rec}"
    );
    for f in ["report.md", "report.html", "events.jsonl", "timeline.json"] {
        assert!(run_dir.join(f).is_file(), "{f} written");
    }
    let html = std::fs::read_to_string(run_dir.join("report.html")).expect("html");
    assert!(html.matches("<svg").count() >= 2, "charts inline");
    assert_no_fault_state(&run_id, &run_dir);

    // --- faults by hand on the kept lab
    let ns = |role: &str| format!("cn{run_id}-{role}");
    let fault_cmd = |args: &[&str]| {
        let mut a = vec!["fault"];
        a.extend_from_slice(args);
        let o = run(&runs, &a);
        assert!(o.status.success(), "{:?}: {}", args, text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    fault_cmd(&["pause", "--name", "pub-0"]);
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("state.json")).expect("st"))
            .expect("json");
    let pid = state["agents"]["pub-0"]["pid"].as_u64().expect("pid");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    assert!(
        stat.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('T'),
        "{stat}"
    );
    fault_cmd(&["loss", "--name", "pub-1", "--loss-pct", "30"]);
    assert!(
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns("h-pub-1"),
            "nft",
            "list",
            "ruleset"
        ])
        .contains("numgen random mod 10000 < 3000")
    );
    fault_cmd(&["bandwidth", "--name", "pub-2", "--rate-kbit", "256"]);
    assert!(sh(&["tc", "-n", &ns("h-pub-2"), "qdisc", "show", "dev", "eth0"]).contains("tbf"));
    let out = fault_cmd(&[
        "delay",
        "--name",
        "seed-0",
        "--delay-ms",
        "50",
        "--jitter-ms",
        "10",
    ]);
    assert!(out.contains("userspace") || out.contains("netem"), "{out}");
    fault_cmd(&["nat-swap", "--site", "cone", "--to", "symmetric"]);
    let rules = sh(&[
        "ip",
        "netns",
        "exec",
        &ns("rt-cone"),
        "nft",
        "list",
        "table",
        "ip",
        "chaosnet",
    ]);
    assert!(rules.contains("symmetric"), "{rules}");
    fault_cmd(&["partition", "--shape", "isolate", "--name", "seed-1"]);
    fault_cmd(&["link-down", "--name", "cone-0"]);
    assert!(sh(&["ip", "-n", &ns("h-cone-0"), "-br", "link", "show", "eth0"]).contains("DOWN"));
    let o = run(&runs, &["heal", "--all"]);
    assert!(o.status.success(), "{}", text(&o));
    let rules = sh(&[
        "ip",
        "netns",
        "exec",
        &ns("rt-cone"),
        "nft",
        "list",
        "table",
        "ip",
        "chaosnet",
    ]);
    assert!(rules.contains("full-cone"), "NAT restored: {rules}");
    let route = sh(&["ip", "-n", &ns("h-cone-0"), "route"]);
    assert!(
        route.contains("default via 10.2.0.1"),
        "route restored: {route}"
    );
    // ip-change alone, then healed.
    fault_cmd(&["ip-change", "--site", "cone"]);
    assert!(sh(&["ip", "-n", &ns("rt-cone"), "addr", "show", "wan"]).contains("198.19.2.101/15"));
    let o = run(&runs, &["heal"]);
    assert!(o.status.success(), "{}", text(&o));
    let wan = sh(&["ip", "-n", &ns("rt-cone"), "addr", "show", "wan"]);
    assert!(
        wan.contains("198.19.2.1/15") && !wan.contains("198.19.2.101"),
        "{wan}"
    );
    assert_no_fault_state(&run_id, &run_dir);
    let o = run(&runs, &["down"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(namespaces_of(&run_id).is_empty());

    // --- an impossible SLO exits 1 and says which, with the value and the time; PromQL
    // SLOs against the run's Prometheus, which also scrapes the controller's /metrics
    let imp = write(
        dir.path(),
        "impossible.yaml",
        "chaos:
  warmup_s: 8
  duration_s: 2
  settle_s: 6
  sample_pairs: 6
  slos:
    - {name: impossible, probe: reachability, when: end, min: 1.01}
    - {name: agents-scraped, probe: promql, query: 'count(up{role!=\"controller\"} == 1)', when: end, min: 6}
    - {name: controller-scraped, probe: promql, query: 'count(up{role=\"controller\"} == 1)', when: end, min: 1}
",
    );
    let port = common::cli::free_port().to_string();
    let o = run(
        &runs,
        &[
            "run",
            &imp,
            "--agent-bin",
            &bin,
            "--monitor",
            "--prometheus-port",
            &port,
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("SLO \"impossible\" failed: reachability = 1.000 at +"),
        "{t}"
    );
    assert!(t.contains("needs >= 1.01"), "{t}");
    for slo in ["agents-scraped", "controller-scraped"] {
        assert!(
            t.lines().any(|l| l.contains(slo) && l.contains("PASS")),
            "{slo} holds: {t}"
        );
    }
    let (imp_id, _) = current(&runs);
    assert!(namespaces_of(&imp_id).is_empty(), "down after the run");

    // --- the controller dies mid-fault (SIGKILL): `heal --all` undoes what it left
    let crash = write(
        dir.path(),
        "crash.yaml",
        "chaos:
  warmup_s: 1
  duration_s: 60
  faults:
    - {name: cut, kind: partition, shape: halves, at_s: 0, duration_s: 50}
    - {name: stop, kind: pause, mode: one, at_s: 0, duration_s: 50}
    - {name: lossy, kind: loss, loss_pct: 50, select: {name: cone-0}, at_s: 0, duration_s: 50}
",
    );
    let mut child = Command::new(common::cli::chaosnet())
        .arg("--runs-dir")
        .arg(&runs)
        .args(["run", &crash, "--agent-bin", &bin])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn run");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let crash_dir = loop {
        if let Ok(t) = std::fs::read_link(runs.join("current")) {
            let d = runs.join(t);
            let ev = std::fs::read_to_string(d.join("events.jsonl")).unwrap_or_default();
            if ev.matches("\"event\":\"inject\"").count() == 3 {
                break d;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the crash run never injected"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    child.kill().expect("SIGKILL the controller");
    let _ = child.wait();
    let crash_id = crash_dir
        .file_name()
        .expect("run id")
        .to_string_lossy()
        .into_owned();
    let recorded = std::fs::read_to_string(crash_dir.join("faults.json")).expect("faults");
    assert_eq!(
        serde_json::from_str::<Value>(&recorded).expect("json")["active"]
            .as_array()
            .map(Vec::len),
        Some(3),
        "every injected fault is recorded: {recorded}"
    );
    let o = run(&runs, &["heal", "--all"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_no_fault_state(&crash_id, &crash_dir);
    let o = run(&runs, &["down"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(namespaces_of(&crash_id).is_empty());

    // --- churn: kill two peers every 8 s for 4 s; they come back with their node graph
    let churn = write(
        dir.path(),
        "churn.yaml",
        "chaos:
  warmup_s: 3
  duration_s: 16
  settle_s: 10
  connect_timeout_ms: 2000
  faults:
    - {name: churn, kind: kill, mode: 'fixed:2', select: {role: peer}, every_s: 8, duration_s: 4}
  slos:
    - {name: all-back, probe: alive, when: end, min: 1.0}
    - {name: reach-at-end, probe: reachability, when: end, min: 0.99}
",
    );
    let o = run(&runs, &["run", &churn, "--keep", "--agent-bin", &bin]);
    let (churn_id, churn_dir) = current(&runs);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = report(&churn_dir);
    let killed: Vec<String> = r["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .flat_map(|f| f["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    assert_eq!(killed.len(), 4, "two occurrences of two agents: {killed:?}");
    for a in &killed {
        let log = std::fs::read_to_string(churn_dir.join("agents").join(a).join("agent.log"))
            .expect("log");
        assert!(log.matches("starting").count() >= 2, "{a} started again");
        assert!(
            log.lines()
                .rfind(|l| l.contains("starting"))
                .is_some_and(|l| !l.contains("restored=0")),
            "{a} restored its contacts from RocksDB: {log}"
        );
    }
    assert_no_fault_state(&churn_id, &churn_dir);
    let o = run(&runs, &["down"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(namespaces_of(&churn_id).is_empty());
}
