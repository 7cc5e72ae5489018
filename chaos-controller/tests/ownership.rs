//! The controller touches only what it owns (issue #14, item 5), as root:
//! - a stranger's `cn00beef-x` namespace, and the process in it, survive `down --all`,
//!   while a run chaosnet made is removed by the same command;
//! - a `sleep` whose pid sits in a stale `monitor.json` survives `down --all` and `down`;
//! - a run id in use (its run directory, or a namespace with its prefix that chaosnet did
//!   not make) is refused before anything is created;
//! - a run made by `up` is owned (a marker per namespace), private (state.json 0600, run
//!   directory 0700) and `down` leaves no marker behind.
//!
//! Every test takes the lab lock exclusively: `down --all` removes every chaosnet run on
//! the machine.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos_controller::apply::{self, ApplyError, in_netns, owner};
use chaos_controller::lab::RunState;
use common::cli::{namespaces_of, run, text};
use common::{big_plan, exclusive, random_run_id, require_root};

fn quiet(_: apply::Step) {}

fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

fn alive(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

/// A namespace made with plain `ip netns add` (no chaosnet marker), with a `sleep` inside;
/// both removed when dropped.
struct Stranger {
    ns: String,
    sleep: Child,
}

impl Stranger {
    fn new(ns: &str) -> Stranger {
        assert!(
            !netns_exists(ns),
            "{ns} exists already: remove it (ip netns del {ns}) before running this test"
        );
        let st = Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .expect("ip netns add");
        assert!(st.success(), "ip netns add {ns}");
        let sleep = in_netns(ns, || {
            Command::new("sleep")
                .arg("300")
                .stdin(Stdio::null())
                .spawn()
        })
        .expect("enter the stranger's namespace")
        .expect("spawn sleep");
        Stranger {
            ns: ns.to_string(),
            sleep,
        }
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        let _ = self.sleep.kill();
        let _ = self.sleep.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Spawns `sleep 300` in the root namespace.
fn sleep() -> Child {
    Command::new("sleep")
        .arg("300")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep")
}

#[test]
fn a_foreign_namespace_and_its_process_survive_down_all() {
    if !require_root() {
        return;
    }
    let _lock = exclusive();
    let mut stranger = Stranger::new("cn00beef-x");
    // A run chaosnet made, so the test also shows down --all still removes what it owns.
    let ours = random_run_id();
    apply::apply(&big_plan(&ours, 1, 1), &quiet).expect("apply our run");
    assert!(!namespaces_of(&ours.0).is_empty());

    let runs = tempfile::tempdir().expect("tempdir");
    let o = run(runs.path(), &["down", "--all"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        netns_exists("cn00beef-x"),
        "the stranger's namespace survives: {}",
        text(&o)
    );
    assert!(alive(&mut stranger.sleep), "its process survives");
    assert_eq!(
        namespaces_of(&ours.0),
        Vec::<String>::new(),
        "our run is gone"
    );
    assert!(
        !owner::run_marked(Path::new(owner::OWNER_DIR), &ours),
        "our run's markers are gone"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("cn00beef-x"),
        "down --all names what it left: {out}"
    );
    // apply::teardown_all (the library call) leaves it too.
    apply::teardown_all().expect("teardown_all");
    assert!(netns_exists("cn00beef-x"));
    assert!(alive(&mut stranger.sleep));
}

#[test]
fn a_pid_in_a_stale_monitor_json_survives_down() {
    if !require_root() {
        return;
    }
    let _lock = exclusive();
    let runs = tempfile::tempdir().expect("tempdir");
    let mut victim = sleep();
    let pid = victim.id();
    let id = random_run_id();
    let run_dir = runs.path().join(&id.0);
    // A run with a state file (so `down --run` finds it) whose monitoring died long ago;
    // its pids are now someone else's `sleep`.
    let plan = chaos_controller::planner::plan(
        &chaos_controller::scenario::Scenario::default_scenario(),
        &id,
    )
    .expect("plan");
    RunState::new(plan).save(&run_dir).expect("state");
    std::fs::write(
        run_dir.join("monitor.json"),
        format!(
            r#"{{"proxy_pid": {pid}, "proxy_addr": "127.0.0.1:1", "prometheus_pid": {pid}, "prometheus_url": "http://127.0.0.1:9090", "grafana_pid": {pid}, "grafana_url": "http://127.0.0.1:3000/"}}"#
        ),
    )
    .expect("monitor.json");
    // A second, state-less run dir with only a stale monitor.json.
    let other = runs.path().join("0ddba1");
    std::fs::create_dir_all(&other).expect("mkdir");
    std::fs::write(
        other.join("monitor.json"),
        format!(r#"{{"proxy_pid": {pid}, "prometheus_pid": {pid}}}"#),
    )
    .expect("monitor.json");

    let o = run(runs.path(), &["down", "--run", &id.0]);
    assert!(o.status.success(), "{}", text(&o));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        alive(&mut victim),
        "down signalled a stranger's pid: {}",
        text(&o)
    );

    let o = run(runs.path(), &["down", "--all"]);
    assert!(o.status.success(), "{}", text(&o));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        alive(&mut victim),
        "down --all signalled a stranger's pid: {}",
        text(&o)
    );
    let _ = victim.kill();
    let _ = victim.wait();
}

#[test]
fn apply_refuses_a_run_id_whose_namespace_it_did_not_make() {
    if !require_root() {
        return;
    }
    let _lock = exclusive();
    let id = random_run_id();
    let ns = id.ns("x");
    let mut stranger = Stranger::new(&ns);
    let plan = big_plan(&id, 1, 1);
    let e = apply::apply(&plan, &quiet).expect_err("a namespace of this run id is not ours");
    assert!(
        matches!(&e, ApplyError::NotOwned { names, .. } if names == &vec![ns.clone()]),
        "{e}"
    );
    assert!(e.to_string().contains(&ns), "{e}");
    assert_eq!(
        namespaces_of(&id.0),
        vec![ns.clone()],
        "nothing was created"
    );
    assert!(!owner::run_marked(Path::new(owner::OWNER_DIR), &id));
    assert!(netns_exists(&ns) && alive(&mut stranger.sleep));
    // Nor does teardown of that run id touch it.
    apply::teardown(&id).expect("teardown");
    assert!(netns_exists(&ns) && alive(&mut stranger.sleep));
}

#[test]
fn up_refuses_a_run_id_in_use_and_creates_nothing() {
    if !require_root() {
        return;
    }
    let _lock = exclusive();
    let runs = tempfile::tempdir().expect("tempdir");
    // An existing run directory.
    let id = random_run_id();
    std::fs::create_dir_all(runs.path().join(&id.0)).expect("mkdir");
    let o = run(
        runs.path(),
        &["up", "--run-id", &id.0, "--agent-bin", "/bin/true"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("already in use") && err.contains("run directory"),
        "{err}"
    );
    assert_eq!(
        namespaces_of(&id.0),
        Vec::<String>::new(),
        "no namespace created"
    );
    assert!(
        !RunState::path(&runs.path().join(&id.0)).exists(),
        "no state written"
    );
    assert!(!owner::run_marked(Path::new(owner::OWNER_DIR), &id));

    // A namespace with the run id's prefix that chaosnet did not make.
    let id = random_run_id();
    let ns = id.ns("x");
    let mut stranger = Stranger::new(&ns);
    let o = run(
        runs.path(),
        &["up", "--run-id", &id.0, "--agent-bin", "/bin/true"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already in use") && err.contains(&ns), "{err}");
    assert_eq!(
        namespaces_of(&id.0),
        vec![ns.clone()],
        "nothing else created"
    );
    assert!(
        !runs.path().join(&id.0).exists(),
        "no run directory created"
    );
    assert!(netns_exists(&ns) && alive(&mut stranger.sleep));
}

#[test]
fn an_up_run_is_owned_private_and_down_leaves_no_marker() {
    if !require_root() {
        return;
    }
    let _lock = exclusive();
    let runs = tempfile::tempdir().expect("tempdir");
    let id = random_run_id();
    let scenario = runs.path().join("one.yaml");
    std::fs::write(
        &scenario,
        "name: one\nseed: 1\nseeds: 1\nsites:\n  - {name: pub, nat: none, agents: 1}\n",
    )
    .expect("scenario");
    let t0 = Instant::now();
    let o = run(
        runs.path(),
        &[
            "up",
            "--run-id",
            &id.0,
            "-f",
            scenario.to_str().expect("utf-8"),
            "--join-timeout-s",
            "30",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    eprintln!("up in {:.2?}", t0.elapsed());
    let run_dir = runs.path().join(&id.0);
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(
        mode(&RunState::path(&run_dir)),
        0o600,
        "state.json holds key seeds"
    );
    assert_eq!(mode(&run_dir), 0o700);
    let base = Path::new(owner::OWNER_DIR);
    let names = namespaces_of(&id.0);
    assert!(!names.is_empty());
    for n in &names {
        assert!(owner::is_marked(base, n), "{n} carries a marker");
    }
    // The same run id again is refused, and the running lab is untouched.
    let o2 = run(
        runs.path(),
        &[
            "up",
            "--run-id",
            &id.0,
            "-f",
            scenario.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(o2.status.code(), Some(2), "{}", text(&o2));
    assert_eq!(namespaces_of(&id.0), names);

    let o = run(runs.path(), &["down"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(namespaces_of(&id.0), Vec::<String>::new());
    assert!(!owner::run_marked(base, &id), "down removed the markers");
}
