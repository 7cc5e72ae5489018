//! End to end against the real Docker engine, as root: the `chaosnet` binary runs the fleet
//! as containers wired into the NAT lab.
//!
//! One test function runs the flows one after another (they share the image built here
//! from the debug agent, and the 2-core machine):
//! 1. clear errors before anything is created: a missing image names `make image`, an
//!    unreachable engine says to start it; a container that fails to start makes `up`
//!    remove the whole run (containers, volumes, namespaces);
//! 2. the default scenario scaled to one agent per site with `--runtime docker`: every agent
//!    joins, every agent is a labelled container, each host namespace name is the
//!    container's network namespace, every site's NAT behaves as its type when probed from
//!    inside the containers' namespaces, `chaosnet matrix` finds every site pair at its best
//!    path, `exec` and `logs` work, a restarted container rejoins with the contacts it
//!    persisted in its volume, and `down` leaves no container, volume, namespace or
//!    root-namespace link;
//! 3. mixed runtimes: seeds as processes and site agents as containers, then the reverse;
//! 4. chaos on containers: `chaosnet run` on a scenario whose sites run as containers (seeds
//!    as processes), with a partition, a kill and a loss fault, exits 0 with the same report
//!    (timeline, faults and their mechanisms, verdicts) as the same scenario under
//!    `--runtime process`; by hand on the kept lab, `chaosnet fault kill --site S` stops
//!    the site's container and `heal` starts it again (it rejoins), `pause` freezes the
//!    container, partition and loss tables land in the container's namespace, `delay` sets
//!    the agent's impairment (or netem), `restart` restarts the same container, and
//!    `heal --all` leaves no fault state.
//!
//! Skipped with a printed reason when not root or when no engine answers, unless
//! `CHAOSNET_REQUIRE_ROOT=1` / `CHAOSNET_REQUIRE_DOCKER=1` turn the skip into a failure.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use chaos_controller::lab::RunState;
use chaos_controller::plan::{NatKind, Plan};
use chaos_controller::scenario::Scenario;
use common::cli::{agent_bin, namespaces_of, run, sh, text};
use common::docker::{ImageGuard, build_image, docker, require_docker};
use common::{probe, require_root, udp};

/// Removes whatever a run left (containers, volumes, namespaces) if a check fails midway.
struct RunCleanup(std::path::PathBuf);

impl Drop for RunCleanup {
    fn drop(&mut self) {
        let _ = run(&self.0, &["down"]);
    }
}

fn docker_lines(args: &[&str]) -> Vec<String> {
    let o = docker(args);
    assert!(o.status.success(), "docker {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Root and an engine, or a printed skip (a failure when required).
fn require_root_and_docker() -> bool {
    require_root() && require_docker()
}

/// Names of the root namespace's links.
fn root_links() -> BTreeSet<String> {
    let o = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .collect()
}

fn status(runs: &Path) -> Value {
    let o = run(runs, &["status", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).expect("status JSON")
}

fn labelled(kind: &str, run_id: &str) -> Vec<String> {
    let filter = format!("label=chaosnet.run={run_id}");
    match kind {
        "containers" => docker_lines(&["ps", "-a", "-q", "--filter", &filter]),
        _ => docker_lines(&["volume", "ls", "-q", "--filter", &filter]),
    }
}

/// `down` removed everything of `run_id`, and no link appeared in the root namespace.
fn assert_gone(runs: &Path, run_id: &str, links_before: &BTreeSet<String>) {
    let o = run(runs, &["down"]);
    assert!(o.status.success(), "down: {}", text(&o));
    assert_eq!(labelled("containers", run_id), Vec::<String>::new());
    assert_eq!(labelled("volumes", run_id), Vec::<String>::new());
    assert_eq!(namespaces_of(run_id), Vec::<String>::new());
    // Docker names its own bridge-network links veth*; others may be starting containers.
    let new: Vec<String> = root_links()
        .difference(links_before)
        .filter(|n| !n.starts_with("veth"))
        .cloned()
        .collect();
    assert!(new.is_empty(), "links left in the root namespace: {new:?}");
}

/// One agent per site of the default scenario (`--agents` with this many), and the seeds.
fn small_default() -> (String, usize) {
    let s = Scenario::default_scenario();
    (s.sites.len().to_string(), s.seeds + s.sites.len())
}

fn plan_of(runs: &Path, run_id: &str) -> Plan {
    RunState::load(&runs.join(run_id)).expect("state").plan
}

/// Waits until `agent` reports joined.
fn wait_joined(runs: &Path, agent: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let st = status(runs);
        if st["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["agent"] == agent && a["joined"] == true)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

#[test]
fn docker_runtime_end_to_end() {
    if !require_root_and_docker() {
        return;
    }
    let started = Instant::now();
    let image = format!("chaosnet-agent:test-runtime-{}", std::process::id());
    let _image = ImageGuard(image.clone());
    let build = build_image(&image, &[]);
    assert!(build.status.success(), "build-image.sh: {}", text(&build));

    let dir = tempfile::tempdir().expect("tempdir");
    clear_errors(dir.path());
    docker_fleet(dir.path(), &image);
    mixed_runtimes(dir.path(), &image);
    chaos_on_containers(dir.path(), &image);
    println!("docker runtime test took {:.1?}", started.elapsed());
}

/// Engine and image problems stop `up` before anything exists, with a message saying
/// what to do; a container that cannot start makes `up` remove everything it created.
fn clear_errors(dir: &Path) {
    let runs = dir.join("runs-errors");
    let o = run(
        &runs,
        &[
            "up",
            "--runtime",
            "docker",
            "--image",
            "chaosnet-agent:no-such-tag",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("make image"), "names the fix: {err}");
    assert!(
        !runs.exists() || std::fs::read_dir(&runs).map(|d| d.count()).unwrap_or(0) == 0,
        "nothing created"
    );

    let o = Command::new(common::cli::chaosnet())
        .arg("--runs-dir")
        .arg(&runs)
        .args(["up", "--runtime", "docker"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .stdin(Stdio::null())
        .output()
        .expect("run chaosnet");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not reachable") && err.contains("start it"),
        "says to start the engine: {err}"
    );
    assert!(
        !runs.exists() || std::fs::read_dir(&runs).map(|d| d.count()).unwrap_or(0) == 0,
        "nothing created"
    );

    // An image whose entrypoint does not exist: the lab is built, the first container
    // fails to start, and `up` removes everything it created.
    let broken = format!("chaosnet-agent:test-broken-{}", std::process::id());
    let _broken = ImageGuard(broken.clone());
    let ctx = dir.join("broken-image");
    std::fs::create_dir_all(&ctx).expect("mkdir");
    std::fs::write(ctx.join("empty"), "").expect("write");
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY empty /empty\nUSER 10001:10001\nENTRYPOINT [\"/no-such-agent\"]\n",
    )
    .expect("write");
    let b = Command::new("docker")
        .args(["build", "-q", "-t", &broken])
        .arg(&ctx)
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null())
        .output()
        .expect("docker build");
    assert!(b.status.success(), "docker build: {}", text(&b));
    let links_before = root_links();
    let (per_site, _) = small_default();
    let o = run(
        &runs,
        &[
            "up",
            "--agents",
            &per_site,
            "--runtime",
            "docker",
            "--image",
            &broken,
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot start agent"), "{err}");
    let run_id = std::fs::read_link(runs.join("current"))
        .expect("the run was created")
        .display()
        .to_string();
    assert_eq!(labelled("containers", &run_id), Vec::<String>::new());
    assert_eq!(labelled("volumes", &run_id), Vec::<String>::new());
    assert_eq!(namespaces_of(&run_id), Vec::<String>::new());
    let new: Vec<String> = root_links()
        .difference(&links_before)
        .filter(|n| !n.starts_with("veth"))
        .cloned()
        .collect();
    assert!(new.is_empty(), "links left in the root namespace: {new:?}");
}

fn docker_fleet(dir: &Path, image: &str) {
    let runs = dir.join("runs-docker");
    let links_before = root_links();
    let _cleanup = RunCleanup(runs.clone());
    let (per_site, n) = small_default();
    let o = run(
        &runs,
        &[
            "up",
            "--agents",
            &per_site,
            "--runtime",
            "docker",
            "--image",
            image,
        ],
    );
    assert!(o.status.success(), "up failed:\n{}", text(&o));
    let st = status(&runs);
    let run_id = st["run_id"].as_str().expect("run_id").to_string();
    let agents = st["agents"].as_array().expect("agents").clone();
    assert_eq!(agents.len(), n, "the seeds and one agent per site");
    for a in &agents {
        assert_eq!(a["joined"], true, "{a}");
        assert_eq!(a["runtime"], "docker", "{a}");
    }

    // Every agent is a labelled container with its labelled volume, and its host
    // namespace name is the container's network namespace.
    assert_eq!(labelled("containers", &run_id).len(), n);
    assert_eq!(labelled("volumes", &run_id).len(), n);
    let plan = plan_of(&runs, &run_id);
    for a in &plan.agents {
        let cname = format!("chaosnet-{run_id}-{}", a.name);
        let info = docker_lines(&[
            "inspect",
            "--format",
            "{{.State.Pid}} {{.HostConfig.NetworkMode}} {{index .Config.Labels \"chaosnet.agent\"}} {{.HostConfig.Memory}}",
            &cname,
        ]);
        let f: Vec<&str> = info[0].split_whitespace().collect();
        assert_eq!(&f[1..], ["none", a.name.as_str(), "268435456"], "{cname}");
        let pid_ns = std::fs::metadata(format!("/proc/{}/ns/net", f[0])).expect("pid ns");
        let named = std::fs::metadata(format!("/run/netns/{}", a.ns)).expect("named ns");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            pid_ns.ino(),
            named.ino(),
            "{} is the container's netns",
            a.ns
        );
    }

    nat_from_containers(&plan);

    // The NAT-pair matrix (#4) from containers: every pair at the best path theory allows.
    let o = run(&runs, &["matrix"]);
    assert!(o.status.success(), "matrix: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("pairs at their best path"),
        "{}",
        text(&o)
    );

    // exec runs in the container's namespace: it has the agent's lab address.
    let site_agent = plan
        .agents
        .iter()
        .find(|a| a.lan_ip.octets()[0] == 10)
        .expect("a NATed agent");
    let o = run(
        &runs,
        &["exec", &site_agent.name, "--", "ip", "-4", "-o", "addr"],
    );
    assert!(o.status.success(), "exec: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&site_agent.lan_ip.to_string()),
        "{}",
        text(&o)
    );

    // Restart: same container and volume, it comes back with its persisted contacts.
    let cname = format!("chaosnet-{run_id}-{}", site_agent.name);
    let id_before = docker_lines(&["inspect", "--format", "{{.Id}}", &cname]);
    let o = run(&runs, &["restart", &site_agent.name]);
    assert!(o.status.success(), "restart: {}", text(&o));
    assert_eq!(
        docker_lines(&["inspect", "--format", "{{.Id}}", &cname]),
        id_before,
        "the same container"
    );
    assert!(
        wait_joined(&runs, &site_agent.name, Duration::from_secs(30)),
        "{} rejoined after the restart",
        site_agent.name
    );
    let o = run(&runs, &["logs", &site_agent.name]);
    assert!(o.status.success(), "logs: {}", text(&o));
    let log = String::from_utf8_lossy(&o.stdout);
    let restored: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("starting"))
        .filter_map(|l| l.split("restored=").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(restored.len(), 2, "two starts in the log:\n{log}");
    assert_eq!(restored[0], 0, "the first start has an empty graph");
    assert!(
        restored[1] > 0,
        "the restart restored contacts from its volume:\n{log}"
    );

    assert_gone(&runs, &run_id, &links_before);
}

/// The NAT probes of `default_lab_nat.rs`, from inside the containers' namespaces: the
/// first two seeds observe, the first host of each site probes.
fn nat_from_containers(plan: &Plan) {
    let seeds: Vec<_> = plan.agents.iter().filter(|a| a.seed).take(2).collect();
    let (o1, o2) = (seeds[0], seeds[1]);
    let (p1, p2) = (3478u16, 3479u16);
    let o1p1 = udp(&o1.ns, o1.lan_ip, p1);
    let o1p2 = udp(&o1.ns, o1.lan_ip, p2);
    let o2p1 = udp(&o2.ns, o2.lan_ip, p1);
    let a1 = SocketAddr::from((o1.lan_ip, p1));
    let a2 = SocketAddr::from((o2.lan_ip, p1));
    let mut checked = 0;
    for site in &plan.sites {
        let Some(host) = plan.agents.iter().find(|a| a.site == site.name) else {
            continue;
        };
        let tag = |t: &str| format!("{}-{t}", site.name);
        let hm = udp(&host.ns, host.lan_ip, 40001);
        let m1 = probe(&hm, a1, &o1p1, &tag("map1")).expect("O1 reachable");
        let m2 = probe(&hm, a2, &o2p1, &tag("map2")).expect("O2 reachable");
        let hf = udp(&host.ns, host.lan_ip, 40002);
        let m = probe(&hf, a1, &o1p1, &tag("filt")).expect("O1 reachable");
        assert!(
            probe(&o1p1, m, &hf, &tag("reply")).is_some(),
            "replies pass"
        );
        let same_ip_other_port = probe(&o1p2, m, &hf, &tag("o1p2")).is_some();
        let other_ip = probe(&o2p1, m, &hf, &tag("o2p1")).is_some();
        let public = site.public_ip.unwrap_or(host.lan_ip);
        let SocketAddr::V4(m1v4) = m1 else {
            panic!("IPv4 lab")
        };
        let got = (m1 == m2, same_ip_other_port, other_ip, *m1v4.ip());
        let want: (bool, bool, bool, Ipv4Addr) = match (site.nat, site.cgnat) {
            (NatKind::None, _) => (true, true, true, public),
            (NatKind::Symmetric, _) => (false, false, false, public),
            (_, true) | (NatKind::PortRestrictedCone, _) => (true, false, false, public),
            (NatKind::RestrictedCone, _) => (true, true, false, public),
            (NatKind::FullCone, _) => (true, true, true, public),
        };
        assert_eq!(
            got, want,
            "site {} ({:?}, cgnat {}): (eim, same ip other port, other ip, public)",
            site.name, site.nat, site.cgnat
        );
        checked += 1;
    }
    assert_eq!(checked, plan.sites.len(), "every site probed");
}

/// Seeds as processes and site agents as containers, then the reverse (seeds `auto`, which
/// finds the engine and the image, so docker), each in one run.
fn mixed_runtimes(dir: &Path, image: &str) {
    for (i, (seeds, sites)) in [("process", "docker"), ("auto", "process")]
        .into_iter()
        .enumerate()
    {
        let runs = dir.join(format!("runs-mixed-{i}"));
        let links_before = root_links();
        let _cleanup = RunCleanup(runs.clone());
        let scenario = dir.join(format!("mixed-{i}.yaml"));
        std::fs::write(
            &scenario,
            format!(
                "name: mixed\nseed: 7\nseeds: 2\nruntime: {{seeds: {seeds}, sites: {sites}}}\n\
                 sites:\n  - {{name: home, nat: port-restricted-cone, agents: 2}}\n  \
                 - {{name: office, nat: symmetric, agents: 1}}\n  \
                 - {{name: open, nat: none, agents: 1, runtime: {seeds}}}\n"
            ),
        )
        .expect("write scenario");
        let o = run(
            &runs,
            &[
                "up",
                "-f",
                scenario.to_str().expect("utf-8"),
                "--image",
                image,
            ],
        );
        assert!(
            o.status.success(),
            "mixed up ({seeds}/{sites}):\n{}",
            text(&o)
        );
        let st = status(&runs);
        let run_id = st["run_id"].as_str().expect("run_id").to_string();
        let agents = st["agents"].as_array().expect("agents").clone();
        assert_eq!(agents.len(), 6);
        let mut containers = 0;
        for a in &agents {
            assert_eq!(a["joined"], true, "{a}");
            let want = match (a["site"] == "internet" || a["site"] == "open", seeds) {
                (true, "auto") => "docker",
                (true, s) => s,
                (false, _) => sites,
            };
            assert_eq!(a["runtime"], want, "{a}");
            containers += usize::from(want == "docker");
        }
        assert_eq!(labelled("containers", &run_id).len(), containers);
        assert_gone(&runs, &run_id, &links_before);
    }
}

/// The chaos scenario of [`chaos_on_containers`]: seeds as processes, every site's agents as
/// containers; a partition, a kill and a loss fault, one after another.
const CHAOS: &str = "name: docker-chaos
seed: 5
seeds: 2
agent: {task_rate: 0.5}
runtime: {seeds: process, sites: docker}
sites:
  - {name: pub, nat: none, agents: 2}
  - {name: cone, nat: full-cone, agents: 1}
  - {name: home, nat: port-restricted-cone, agents: 1}
chaos:
  warmup_s: 3
  duration_s: 22
  settle_s: 8
  probe_interval_s: 2
  sample_pairs: 12
  connect_timeout_ms: 2000
  faults:
    - {name: cut, kind: partition, shape: isolate, select: {site: cone}, at_s: 1, duration_s: 5}
    - {name: crash, kind: kill, mode: 'fixed:1', select: {site: pub}, at_s: 8, duration_s: 5}
    - {name: lossy, kind: loss, loss_pct: 30, select: {site: home}, at_s: 15, duration_s: 5}
  slos:
    - {name: recovered, probe: recovery, max: 30}
    - {name: reach-at-end, probe: reachability, when: end, min: 0.99}
    - {name: all-back, probe: alive, when: end, min: 1.0}
";

fn report_of(runs: &Path) -> (String, std::path::PathBuf, Value) {
    let id = std::fs::read_link(runs.join("current"))
        .expect("current run")
        .display()
        .to_string();
    let dir = runs.join(&id);
    let r =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).expect("report"))
            .expect("report json");
    (id, dir, r)
}

/// What a report must say the same under every runtime: the timeline, each fault's
/// occurrence, kind, targets and mechanism, and each verdict.
fn comparable(r: &Value) -> Value {
    let faults: Vec<Value> = r["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .map(|f| {
            serde_json::json!([
                f["id"],
                f["fault"],
                f["kind"],
                f["targets"],
                f["mechanism"],
                f["heal_at_ms"].is_number()
            ])
        })
        .collect();
    let verdicts: Vec<Value> = r["verdicts"]
        .as_array()
        .expect("verdicts")
        .iter()
        .map(|v| serde_json::json!([v["slo"], v["pass"]]))
        .collect();
    serde_json::json!({"timeline": r["timeline"], "faults": faults, "verdicts": verdicts,
        "pass": r["pass"], "agents": r["agents"]})
}

fn container_state(cname: &str) -> (bool, bool) {
    let s = docker_lines(&[
        "inspect",
        "--format",
        "{{.State.Running}} {{.State.Paused}}",
        cname,
    ]);
    let f: Vec<&str> = s[0].split_whitespace().collect();
    (f[0] == "true", f[1] == "true")
}

fn fault(runs: &Path, args: &[&str]) -> String {
    let mut a = vec!["fault"];
    a.extend_from_slice(args);
    let o = run(runs, &a);
    assert!(o.status.success(), "fault {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The agent's impairment, read from its API socket in the run directory.
fn impairment(run_dir: &Path, agent: &str) -> Value {
    use chaos_controller::http::{self, Endpoint, Request};
    let r = http::call(
        &Endpoint::Unix(run_dir.join("agents").join(agent).join("api.sock")),
        &Request::get("/impairment"),
        Duration::from_secs(5),
    )
    .expect("agent API");
    serde_json::from_str(&r.body).expect("impairment JSON")
}

fn chaos_on_containers(dir: &Path, image: &str) {
    let scenario = dir.join("docker-chaos.yaml");
    std::fs::write(&scenario, CHAOS).expect("write scenario");
    let scenario = scenario.to_str().expect("utf-8");
    let bin = agent_bin().display().to_string();

    // --- the run, sites as containers, kept for the faults by hand
    let runs = dir.join("runs-chaos-docker");
    let links_before = root_links();
    let _cleanup = RunCleanup(runs.clone());
    let o = run(
        &runs,
        &[
            "run",
            scenario,
            "--image",
            image,
            "--agent-bin",
            &bin,
            "--keep",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "run on containers:\n{}", text(&o));
    let (run_id, run_dir, on_docker) = report_of(&runs);
    let plan = plan_of(&runs, &run_id);
    for a in &plan.agents {
        let want = if a.seed { "process" } else { "docker" };
        assert_eq!(a.runtime.name(), want, "{}", a.name);
    }
    // The killed agent was a container, and came back in the same container: its log (the
    // engine's) shows two starts.
    let killed = on_docker["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .find(|f| f["kind"] == "kill")
        .and_then(|f| f["targets"][0].as_str())
        .expect("a kill")
        .to_string();
    let o = run(&runs, &["logs", &killed]);
    assert!(o.status.success(), "logs: {}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .matches("starting")
            .count(),
        2,
        "{killed} was killed and started again as its container: {}",
        text(&o)
    );
    assert_eq!(
        labelled("containers", &run_id).len(),
        4,
        "one per site agent"
    );

    // --- faults by hand on the kept lab's containers
    let cname = |agent: &str| format!("chaosnet-{run_id}-{agent}");
    let ns = |agent: &str| format!("cn{run_id}-h-{agent}");
    fault(&runs, &["kill", "--site", "cone"]);
    assert_eq!(
        container_state(&cname("cone-0")),
        (false, false),
        "kill stops the site's container"
    );
    let o = run(&runs, &["heal"]);
    assert!(o.status.success(), "heal: {}", text(&o));
    assert_eq!(
        container_state(&cname("cone-0")),
        (true, false),
        "heal starts it again"
    );
    assert!(
        wait_joined(&runs, "cone-0", Duration::from_secs(30)),
        "cone-0 rejoined after the heal"
    );
    fault(&runs, &["pause", "--name", "home-0"]);
    assert_eq!(container_state(&cname("home-0")), (true, true), "paused");
    fault(
        &runs,
        &["partition", "--shape", "isolate", "--name", "cone-0"],
    );
    assert!(
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns("cone-0"),
            "nft",
            "list",
            "tables"
        ])
        .contains("chaos_"),
        "the partition's table is in the container's namespace"
    );
    fault(&runs, &["loss", "--name", "pub-0", "--loss-pct", "20"]);
    assert!(
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns("pub-0"),
            "nft",
            "list",
            "ruleset"
        ])
        .contains("numgen random mod 10000 < 2000")
    );
    let out = fault(
        &runs,
        &[
            "delay",
            "--name",
            "pub-1",
            "--delay-ms",
            "40",
            "--jitter-ms",
            "5",
        ],
    );
    if out.contains("userspace") {
        assert_eq!(impairment(&run_dir, "pub-1")["delay_ms"], 40, "{out}");
    } else {
        assert!(
            sh(&["tc", "-n", &ns("pub-1"), "qdisc", "show"]).contains("netem"),
            "{out}"
        );
    }
    let id_before = docker_lines(&["inspect", "--format", "{{.Id}}", &cname("pub-1")]);
    fault(&runs, &["restart", "--name", "pub-1"]);
    assert_eq!(
        docker_lines(&["inspect", "--format", "{{.Id}}", &cname("pub-1")]),
        id_before,
        "a restart keeps the container"
    );
    let o = run(&runs, &["heal", "--all"]);
    assert!(o.status.success(), "heal --all: {}", text(&o));
    assert_eq!(container_state(&cname("home-0")), (true, false), "resumed");
    for a in ["cone-0", "pub-0", "pub-1"] {
        let tables = sh(&["ip", "netns", "exec", &ns(a), "nft", "list", "tables"]);
        assert!(!tables.contains("chaos_"), "{a}: {tables}");
    }
    assert_eq!(impairment(&run_dir, "pub-1")["delay_ms"], 0);
    assert_gone(&runs, &run_id, &links_before);

    // --- the same scenario under processes: the same report
    let runs = dir.join("runs-chaos-process");
    let _cleanup = RunCleanup(runs.clone());
    let o = run(
        &runs,
        &["run", scenario, "--runtime", "process", "--agent-bin", &bin],
    );
    assert_eq!(o.status.code(), Some(0), "run on processes:\n{}", text(&o));
    let (process_id, _, on_processes) = report_of(&runs);
    assert!(namespaces_of(&process_id).is_empty(), "down after the run");
    assert_eq!(comparable(&on_docker), comparable(&on_processes));
}
