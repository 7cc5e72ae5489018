//! The Grafana dashboards and Prometheus alert rules in `dashboards/` (issue #7), proven
//! against the real thing:
//!
//! - structure: every dashboard has a uid, a title and panels; every non-row panel has a
//!   datasource and targets; every datasource is the `${datasource}` variable, never a
//!   hard-coded uid;
//! - as root: the default lab comes up with `--monitor`, Prometheus scrapes all 26 agents,
//!   `chaosnet matrix` makes every pair of sites connect (direct, punched, relayed), and
//!   every panel query (variables replaced by `.*`) parses and returns at least one series,
//!   except the panels in `EXEMPT` (they only have data under a fault or an abuse; they must
//!   still parse); the NAT-traversal panels in `DRIVEN` must also show a finite, non-zero
//!   value, since the agents pre-declare those series at zero (and their ratios and quantiles
//!   are NaN) until a connect punches or relays; the fault panels in `FAULTED` and the
//!   `Faults` annotations are evaluated during and right after a short `chaosnet fault
//!   --duration`, which serves the controller's `chaosnet_fault_*` to the lab's Prometheus;
//! - `promtool check rules` and `promtool test rules` on the alert rules.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::cli::{agent_bin, free_port, http_get, run, text};
use common::require_root;

/// Panels whose queries may return no series on a healthy lab: they only have data under a
/// fault or an abuse. Their queries must still parse. (Today the agents register these
/// counters with every label value at 0, so they do return zero-valued series; the list keeps
/// the test honest if that changes.)
const EXEMPT: &[(&str, &str, &str)] = &[
    // (panel title prefix, target refId or "*", reason)
    (
        "Recovery time after heal",
        "*",
        "only `chaosnet run` measures recovery (its probe rounds), not `chaosnet fault`; chaos_e2e.rs checks Prometheus scrapes it with the report's value",
    ),
    (
        "Handshake refusals by",
        "*",
        "only under wrong-network / bad-key / identity-mismatch / missing-proof peers",
    ),
    (
        "Decode errors by reason",
        "*",
        "only when a peer sends garbage or an incompatible version",
    ),
    (
        "Request failures by reason",
        "*",
        "only under loss, partitions, overloaded or refusing peers",
    ),
    (
        "Datagrams dropped by",
        "*",
        "only under impairment (PUT /impairment), garbage UDP or a full delay queue",
    ),
    ("Store errors by", "*", "only when RocksDB writes fail"),
    (
        "Insertions / GC evictions",
        "B",
        "evictions only when contacts stop answering",
    ),
    (
        "Connections pruned",
        "*",
        "only once an agent reaches --max-connections",
    ),
];

/// Fault panels (title prefixes): the controller serves `chaosnet_fault_*` only while a
/// fault runs, so these are evaluated at two instants of the test's `chaosnet fault
/// --duration` (while Prometheus saw it active, and after it saw the heal) and must show a
/// finite value > 0 at one of them. The `Faults` annotations of every dashboard must show a
/// series at the first.
const FAULTED: &[&str] = &[
    "Active faults by kind",
    "Fault timeline",
    "Fault injections and heals",
];

/// Panels that must show a finite value > 0 once `chaosnet matrix` has connected every
/// ordered pair of sites of the default scenario: cone and symmetric x cone pairs punch (the
/// latter with birthday probing), symmetric1 x symmetric2 relays. Without this a panel over
/// pre-declared zero series would pass with a wrong label value in its selector.
const DRIVEN: &[(&str, &str)] = &[
    // (panel title prefix, target refId or "*")
    ("Connect attempts by path and outcome", "*"),
    ("Connection share by mode", "*"),
    ("Punch success", "*"),
    ("Punches started by kind", "*"),
    ("Time to connect p", "*"),
    ("Birthday probes to success", "*"),
    ("Signals by outcome", "*"),
    ("Relay circuits opened / refused / closed", "*"),
    // Counted as the relay splices them: the matrix's symmetric x symmetric connections stay
    // up through their circuits (keepalives), so their bytes show while the circuits are open.
    ("Relay bytes by", "*"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn dashboards_dir() -> PathBuf {
    repo().join("dashboards")
}

/// (file name, dashboard JSON) for every `dashboards/*.json`.
fn dashboards() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dashboards_dir()).expect("dashboards/") {
        let p = e.expect("entry").path();
        if p.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let name = p.file_name().expect("name").to_string_lossy().to_string();
        let v: Value = serde_json::from_slice(&std::fs::read(&p).expect("read"))
            .unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
        out.push((name, v));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 2, "dashboards/*.json: found {}", out.len());
    out
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p.clone());
        for q in p["panels"].as_array().into_iter().flatten() {
            out.push(q.clone());
        }
    }
    out
}

fn check_datasource(ds: &Value, at: &str) {
    assert_eq!(ds["type"], "prometheus", "{at}: datasource type: {ds}");
    assert_eq!(
        ds["uid"], "${datasource}",
        "{at}: datasource must be the ${{datasource}} variable, not a hard-coded uid: {ds}"
    );
}

#[test]
fn dashboards_are_well_formed() {
    for (name, d) in dashboards() {
        let uid = d["uid"].as_str().unwrap_or("");
        assert!(!uid.is_empty(), "{name}: uid");
        assert!(
            d["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{name}: title"
        );
        let ps = panels(&d);
        assert!(!ps.is_empty(), "{name}: panels");
        let vars = d["templating"]["list"].as_array().expect("templating");
        let var = |n: &str| vars.iter().find(|v| v["name"] == n).cloned();
        let dsv = var("datasource").unwrap_or_else(|| panic!("{name}: datasource variable"));
        assert_eq!(dsv["type"], "datasource", "{name}");
        assert_eq!(dsv["query"], "prometheus", "{name}");
        for n in ["site", "agent"] {
            let v = var(n).unwrap_or_else(|| panic!("{name}: variable {n}"));
            check_datasource(&v["datasource"], &format!("{name}: variable {n}"));
        }
        let mut ids = std::collections::HashSet::new();
        for p in ps {
            let title = p["title"].as_str().unwrap_or("?");
            let at = format!("{name}: panel {title:?}");
            assert!(ids.insert(p["id"].to_string()), "{at}: duplicate id");
            if p["type"] == "row" {
                continue;
            }
            assert!(
                p["description"].as_str().is_some_and(|s| s.len() > 20),
                "{at}: description (what healthy looks like)"
            );
            check_datasource(&p["datasource"], &at);
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "{at}: targets");
            for t in targets {
                check_datasource(&t["datasource"], &at);
                assert!(
                    t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                    "{at}: expr"
                );
            }
        }
    }
    // No datasource uid other than the variable anywhere in the files.
    for (name, d) in dashboards() {
        let s = d.to_string();
        for (i, _) in s.match_indices("\"uid\":") {
            let rest = &s[i + 6..];
            let ok = rest.starts_with("\"${datasource}\"")
                || rest.starts_with("\"chaosnet-")
                || rest.starts_with("null");
            assert!(
                ok,
                "{name}: hard-coded uid near {}",
                &rest[..rest.len().min(60)]
            );
        }
    }
}

fn promtool(args: &[&str]) -> Output {
    Command::new("promtool")
        .args(args)
        .current_dir(dashboards_dir())
        .output()
        .expect("promtool (apt install prometheus)")
}

#[test]
fn alert_rules_check_and_unit_tests_pass() {
    let o = promtool(&["check", "rules", "alerts.yml"]);
    assert!(o.status.success(), "promtool check rules:\n{}", text(&o));
    let o = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(o.status.success(), "promtool test rules:\n{}", text(&o));
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn query(prom: &str, expr: &str) -> Value {
    let body =
        http_get(prom, &format!("/api/v1/query?query={}", urlencode(expr))).unwrap_or_default();
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

/// An instant query evaluated at `time` (Prometheus' own timestamp, seconds).
fn query_at(prom: &str, expr: &str, time: f64) -> Value {
    let path = format!("/api/v1/query?query={}&time={time:.3}", urlencode(expr));
    serde_json::from_str(&http_get(prom, &path).unwrap_or_default()).unwrap_or(Value::Null)
}

/// Polls `expr` until it returns a series; Prometheus' evaluation time then.
fn wait_for_series(prom: &str, expr: &str, timeout: Duration) -> Option<f64> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let v = query(prom, expr);
        if let Some(t) = v["data"]["result"][0]["value"][0].as_f64() {
            return Some(t);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    None
}

/// A short, gentle fault through `chaosnet fault --duration` (1 ms of delay on one agent),
/// which serves the controller's metrics to the lab's Prometheus while it runs. Returns the
/// Prometheus times at which the fault was seen active and healed.
fn fault_window(runs: &Path, prom: &str) -> (f64, f64) {
    let t0 = Instant::now();
    let child = Command::new(common::cli::chaosnet())
        .arg("--runs-dir")
        .arg(runs)
        .args([
            "fault",
            "delay",
            "--delay-ms",
            "1",
            "--site",
            "open1",
            "--mode",
            "one",
            "--seed",
            "7",
            "--duration",
            "8",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn chaosnet fault");
    let active = wait_for_series(
        prom,
        "chaosnet_fault_active{job=\"chaosnet-controller\"} == 1",
        Duration::from_secs(40),
    );
    let healed = wait_for_series(
        prom,
        "chaosnet_fault_heals_total{job=\"chaosnet-controller\"} > 0",
        Duration::from_secs(40),
    );
    let o = child.wait_with_output().expect("chaosnet fault");
    assert!(o.status.success(), "chaosnet fault failed:\n{}", text(&o));
    let (Some(active), Some(healed)) = (active, healed) else {
        panic!(
            "Prometheus never saw the fault (active {active:?}, healed {healed:?}):\n{}",
            text(&o)
        );
    };
    eprintln!(
        "chaosnet fault --duration 8: Prometheus saw it active, then healed, in {:?}",
        t0.elapsed()
    );
    (active, healed)
}

/// The finite values of an instant query's result.
fn values(v: &Value) -> Vec<f64> {
    v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
        .filter(|x| x.is_finite())
        .collect()
}

/// The first few series of a query result as ` {label=value,..}=value`, for the log: what a
/// healthy lab shows on each panel.
fn sample_values(v: &Value) -> String {
    let results = v["data"]["result"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    for r in results.iter().take(6) {
        let labels = r["metric"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        out.push_str(&format!(
            " {{{labels}}}={}",
            r["value"][1].as_str().unwrap_or("?")
        ));
    }
    if results.len() > 6 {
        out.push_str(" ...");
    }
    out
}

/// Takes the lab down when dropped, also when an assertion fails.
struct Lab {
    runs: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let o = run(&self.runs, &["down"]);
        if !o.status.success() {
            eprintln!("chaosnet down failed:\n{}", text(&o));
        }
    }
}

fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("${run}", ".*")
        .replace("${site}", ".*")
        .replace("${agent}", ".*")
        .replace("$run", ".*")
        .replace("$site", ".*")
        .replace("$agent", ".*")
}

#[test]
fn every_panel_query_returns_data_from_a_real_lab() {
    if !require_root() {
        return;
    }
    let started = Instant::now();
    let _ = agent_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = dir.path().join("runs");
    let prom_port = free_port();
    let lab = Lab { runs: runs.clone() };
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

    // Every agent scraped as up.
    let prom = format!("127.0.0.1:{prom_port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = query(&prom, "up{job=\"chaosnet-agents\"}");
        let results = v["data"]["result"].as_array().cloned().unwrap_or_default();
        let up = results.iter().filter(|r| r["value"][1] == "1").count();
        if results.len() == 26 && up == 26 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus sees {up} of {} targets up (want 26): {v}",
            results.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "all 26 agents up in Prometheus after {:?}",
        started.elapsed()
    );
    // Every ordered pair of sites connects afresh: punches, birthday probes, signals and
    // relay circuits for the NAT-traversal panels. Whether each pair reached its best path is
    // tests/connectivity.rs's business; here the panels only need the events.
    let o = run(&runs, &["matrix", "--json"]);
    let m: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    let mut modes = std::collections::BTreeMap::<String, usize>::new();
    for p in m["pairs"].as_array().into_iter().flatten() {
        let mode = p["outcome"]["mode"].as_str().unwrap_or("failed");
        *modes.entry(mode.to_string()).or_default() += 1;
    }
    eprintln!("chaosnet matrix (exit {:?}): {modes:?}", o.status.code());
    assert!(
        !modes.is_empty(),
        "chaosnet matrix measured nothing:\n{}",
        text(&o)
    );
    let matrix_done = Instant::now();
    // The fault panels' data, meanwhile.
    let (t_active, t_healed) = fault_window(&runs, &prom);
    // Scrape interval is 5 s: 20 s more gives every [1m] rate() at least 4 samples.
    std::thread::sleep(Duration::from_secs(20).saturating_sub(matrix_done.elapsed()));

    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, d) in dashboards() {
        for a in d["annotations"]["list"].as_array().into_iter().flatten() {
            let Some(expr) = a["expr"].as_str() else {
                continue;
            };
            let v = query_at(&prom, &substitute(expr), t_active);
            checked += 1;
            let n = v["data"]["result"].as_array().map_or(0, Vec::len);
            eprintln!(
                "{} {name}: annotation {} while the fault was active: {n} series{}",
                if n > 0 { "ok  " } else { "FAIL" },
                a["name"],
                sample_values(&v)
            );
            if n == 0 {
                failures.push(format!(
                    "{name}: annotation {}: no series while a fault was active: {expr}\n  -> {v}",
                    a["name"]
                ));
            }
        }
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                let ref_id = t["refId"].as_str().unwrap_or("?");
                let exempt = EXEMPT
                    .iter()
                    .find(|(p, r, _)| title.starts_with(p) && (*r == "*" || *r == ref_id))
                    .map(|(_, _, why)| why);
                let driven = DRIVEN
                    .iter()
                    .any(|(p, r)| title.starts_with(p) && (*r == "*" || *r == ref_id));
                let Some(expr) = t["expr"].as_str() else {
                    continue;
                };
                let q = substitute(expr);
                assert!(
                    !q.contains('$'),
                    "{name}: {title}: unsubstituted variable in {q}"
                );
                if FAULTED.iter().any(|p| title.starts_with(p)) {
                    let at = [t_active, t_healed].map(|t| query_at(&prom, &q, t));
                    checked += 1;
                    let ok = at.iter().all(|v| v["status"] == "success");
                    let real = at.iter().flat_map(values).any(|x| x > 0.0);
                    eprintln!(
                        "{} {name}: {title} [{ref_id}] during the fault:{} / after its heal:{}",
                        if ok && real { "ok  " } else { "FAIL" },
                        sample_values(&at[0]),
                        sample_values(&at[1])
                    );
                    if !ok || !real {
                        failures.push(format!(
                            "{name}: {title} [{ref_id}]: no finite value > 0 during or right after a fault: {q}\n  -> {} / {}",
                            at[0], at[1]
                        ));
                    }
                    continue;
                }
                let v = query(&prom, &q);
                checked += 1;
                let n = v["data"]["result"].as_array().map_or(0, Vec::len);
                let ok = v["status"] == "success";
                let real = v["data"]["result"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
                    .any(|x| x.is_finite() && x > 0.0);
                eprintln!(
                    "{} {name}: {title} [{}]: {n} series{}{}",
                    if ok && (n > 0 || exempt.is_some()) && (real || !driven) {
                        "ok  "
                    } else {
                        "FAIL"
                    },
                    ref_id,
                    sample_values(&v),
                    exempt.map_or(String::new(), |why| format!(" (exempt: {why})"))
                );
                if !ok {
                    failures.push(format!("{name}: {title}: does not parse: {q}\n  -> {v}"));
                } else if n == 0 && exempt.is_none() {
                    failures.push(format!("{name}: {title}: no series: {q}"));
                } else if driven && !real {
                    failures.push(format!(
                        "{name}: {title} [{ref_id}]: no finite value > 0 after chaosnet matrix: {q}\n  -> {v}"
                    ));
                }
            }
        }
    }
    drop(lab);
    assert!(
        failures.is_empty(),
        "{} of {checked} queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{checked} panel queries checked in {:?}", started.elapsed());
}
