//! Root-only tests of `apply` and the process runtime: real namespaces, veths, nftables
//! and conntrack. Each test builds its plan by hand with a fresh random run id and always
//! tears it down (a guard with `Drop`). Without root they print "skipped: needs root"
//! (or fail with `CHAOSNET_REQUIRE_ROOT=1`).
//!
//! All traffic stays inside the lab namespaces: observers and NAT sites sit on a bridge in
//! the run's own internet namespace, which has no uplink.

mod common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use chaos_controller::apply::{self, ApplyError, Phase, Step, in_netns};
use chaos_controller::plan::{NatKind, Ruleset, RunId};
use chaos_controller::runtime::{AgentState, ProcessRuntime, Runtime};

use common::*;

const O1: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const O2: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const WAN: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const LAN: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 0);
const P1: u16 = 3478;
const P2: u16 = 3479;

fn quiet(_: Step) {}

fn root_links() -> HashSet<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|s| s.trim().to_string()))
        .collect()
}

fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sysctl_in(ns: &str, key: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-n", key])
        .output()
        .expect("sysctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn sysctl_root(key: &str) -> String {
    let out = Command::new("sysctl")
        .args(["-n", key])
        .output()
        .expect("sysctl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Pids (not this process) whose network namespace has inode `ino`.
fn pids_in_inode(ino: u64) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != std::process::id() as i32)
        .filter(|p| {
            std::fs::metadata(format!("/proc/{p}/ns/net"))
                .map(|m| m.ino())
                .ok()
                == Some(ino)
        })
        .collect()
}

#[test]
fn preflight_passes_as_root() {
    if !require_root() {
        return;
    }
    apply::preflight().expect("root with iproute2, nftables, conntrack, procps");
}

#[test]
fn apply_builds_the_plan_and_teardown_removes_everything() {
    if !require_root() {
        return;
    }
    let run = random_run_id();
    let guard = RunGuard::new(&run);
    let mut lab = Lab::new(&run);
    let o1 = lab.public_host("o1", O1);
    let mut site = lab.nat_site(
        "home",
        NatKind::PortRestrictedCone,
        false,
        WAN,
        LAN,
        false,
        HOME,
    );
    let (h, h_ip) = lab.lan_host("home", &mut site);
    let plan = lab.plan;

    let links_before = root_links();
    let steps = std::cell::RefCell::new(Vec::new());
    let report = apply::apply(&plan, &|s| steps.borrow_mut().push(s)).expect("apply");
    eprintln!(
        "apply of {} namespaces took {:?}",
        report.namespaces, report.elapsed
    );
    assert_eq!(report.namespaces, plan.namespaces.len());
    let steps = steps.into_inner();
    let last = steps.last().expect("progress reported");
    assert_eq!(
        (last.phase, last.done, last.total),
        (Phase::Done, last.total, last.total)
    );
    let configured: HashSet<_> = steps
        .iter()
        .filter(|s| s.phase == Phase::Configure)
        .filter_map(|s| s.ns.clone())
        .collect();
    assert_eq!(
        configured.len(),
        plan.namespaces.len(),
        "progress per namespace"
    );
    assert!(steps.windows(2).all(|w| w[0].done <= w[1].done));

    // Namespaces, addresses, routes, rules.
    let mut have = run_namespaces(&run);
    have.sort();
    let mut want: Vec<_> = plan.namespaces.iter().map(|n| n.name.clone()).collect();
    want.sort();
    assert_eq!(have, want);
    assert!(ip_out(&["-n", &h, "-4", "-o", "addr", "show", "dev", "eth0"]).contains("10.0.1.2/24"));
    assert!(
        ip_out(&[
            "-n",
            &site.routers[0],
            "-4",
            "-o",
            "addr",
            "show",
            "dev",
            "wan"
        ])
        .contains("198.18.0.10/15")
    );
    assert!(ip_out(&["-n", &h, "route", "show", "default"]).contains("via 10.0.1.1"));
    assert!(ip_out(&["-n", &site.routers[0], "-o", "link", "show", "h2"]).contains("master br0"));
    // Nothing appeared in the root namespace.
    assert_eq!(root_links(), links_before, "root namespace links changed");

    // The host reaches its router, and an observer through the NAT, seen as the WAN IP.
    let hs = udp(&h, h_ip, 40000);
    let rs = udp(&site.routers[0], site.gateway, 7000);
    let seen = probe(
        &hs,
        SocketAddr::from((site.gateway, 7000)),
        &rs,
        "to-router",
    );
    assert_eq!(seen.map(|s| s.ip()), Some(h_ip.into()));
    let os = udp(&o1, O1, P1);
    let seen = probe(&hs, SocketAddr::from((O1, P1)), &os, "to-observer").expect("through NAT");
    assert_eq!(seen.ip(), std::net::IpAddr::from(WAN));
    // And the reply comes back.
    assert!(probe(&os, seen, &hs, "reply").is_some());
    drop((hs, rs, os));

    // Re-applying replaces the run (idempotent by replacement).
    let again = apply::apply(&plan, &quiet).expect("apply again");
    assert_eq!(again.replaced, plan.namespaces.len());
    assert_eq!(run_namespaces(&run).len(), plan.namespaces.len());

    // A process inside a namespace; teardown must kill it.
    let mut sleeper = in_netns(&h, || Command::new("sleep").arg("30").spawn())
        .expect("enter")
        .expect("spawn sleep");
    let h_ino = std::fs::metadata(format!("/run/netns/{h}"))
        .expect("ns")
        .ino();
    assert_eq!(pids_in_inode(h_ino), vec![sleeper.id() as i32]);

    let t0 = Instant::now();
    let down = apply::teardown(&run).expect("teardown");
    eprintln!("teardown: {down:?} in {:?}", t0.elapsed());
    assert_eq!(down.namespaces, plan.namespaces.len());
    assert_eq!(down.processes, 1);
    assert_eq!(down.runs, vec![run.0.clone()]);
    assert!(run_namespaces(&run).is_empty());
    let status = sleeper.wait().expect("reap");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(pids_in_inode(h_ino).is_empty());
    // nft tables and links went with the namespaces; the root namespace is unchanged and
    // never had a chaosnet table.
    assert_eq!(root_links(), links_before);
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft list tables");
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("chaosnet"));

    let second = apply::teardown(&run).expect("second teardown");
    assert_eq!((second.namespaces, second.processes), (0, 0));
    drop(guard);
}

/// What the probes saw of one NAT site.
#[derive(Debug, PartialEq, Eq)]
struct Behaviour {
    /// Same public mapping towards O1 and O2.
    eim: bool,
    /// O1 from its other port reaches the mapping (not APDF).
    same_ip_other_port: bool,
    /// O2, never contacted, reaches the mapping (EIF).
    other_ip: bool,
    /// Public address the observers saw.
    public_ip: Ipv4Addr,
}

/// Builds internet + O1 + O2 + one site with one host, and probes mapping and filtering.
fn probe_site(kind: NatKind, cgnat: bool) -> Behaviour {
    let run = random_run_id();
    let _guard = RunGuard::new(&run);
    let mut lab = Lab::new(&run);
    let o1 = lab.public_host("o1", O1);
    let o2 = lab.public_host("o2", O2);
    let mut site = lab.nat_site("site", kind, cgnat, WAN, LAN, false, HOME);
    let (h, h_ip) = lab.lan_host("site", &mut site);
    apply::apply(&lab.plan, &quiet).expect("apply");

    let o1p1 = udp(&o1, O1, P1);
    let o1p2 = udp(&o1, O1, P2);
    let o2p1 = udp(&o2, O2, P1);
    let a1 = SocketAddr::from((O1, P1));
    let a2 = SocketAddr::from((O2, P1));

    // Mapping: one local port to O1:p1 and O2:p1.
    let hm = udp(&h, h_ip, 40001);
    let m1 = probe(&hm, a1, &o1p1, "map-o1").expect("O1 reached");
    let m2 = probe(&hm, a2, &o2p1, "map-o2").expect("O2 reached");

    // Filtering: another local port talks to O1:p1 only.
    let hf = udp(&h, h_ip, 40002);
    let m = probe(&hf, a1, &o1p1, "filt-o1").expect("O1 reached");
    assert!(
        probe(&o1p1, m, &hf, "established").is_some(),
        "the reply from the contacted ip:port must always pass"
    );
    let same_ip_other_port = probe(&o1p2, m, &hf, "o1-other-port").is_some();
    let other_ip = probe(&o2p1, m, &hf, "o2-unsolicited").is_some();
    let SocketAddr::V4(m1v4) = m1 else {
        panic!("IPv4 expected")
    };
    Behaviour {
        eim: m1 == m2,
        same_ip_other_port,
        other_ip,
        public_ip: *m1v4.ip(),
    }
}

fn expect(kind: NatKind, cgnat: bool, eim: bool, adf_or_eif: bool, eif: bool) {
    if !require_root() {
        return;
    }
    let b = probe_site(kind, cgnat);
    eprintln!("{kind:?} cgnat={cgnat}: {b:?}");
    assert_eq!(
        b,
        Behaviour {
            eim,
            same_ip_other_port: adf_or_eif,
            other_ip: eif,
            public_ip: WAN,
        }
    );
}

#[test]
fn nat_full_cone_is_eim_eif() {
    expect(NatKind::FullCone, false, true, true, true);
}

#[test]
fn nat_restricted_cone_is_eim_adf() {
    expect(NatKind::RestrictedCone, false, true, true, false);
}

#[test]
fn nat_port_restricted_cone_is_eim_apdf() {
    expect(NatKind::PortRestrictedCone, false, true, false, false);
}

#[test]
fn nat_symmetric_is_edm_apdf() {
    expect(NatKind::Symmetric, false, false, false, false);
}

#[test]
fn nat_cgnat_over_port_restricted_is_eim_apdf() {
    // Carrier (EIM+APDF) in front of a home port-restricted cone: EIM+APDF overall, seen as
    // the carrier's WAN address.
    expect(NatKind::PortRestrictedCone, true, true, false, false);
}

#[test]
fn nat_cgnat_over_full_cone_filters_like_the_carrier() {
    // The home NAT would let anyone in, but the carrier filters by address and port.
    expect(NatKind::FullCone, true, true, false, false);
}

#[test]
fn nat_cgnat_over_symmetric_is_edm() {
    expect(NatKind::Symmetric, true, false, false, false);
}

/// H2 sends to H1's public mapping; returns the source H1 saw, if anything arrived.
fn hairpin(kind: NatKind, enabled: bool) -> Option<SocketAddr> {
    let run = random_run_id();
    let _guard = RunGuard::new(&run);
    let mut lab = Lab::new(&run);
    let o1 = lab.public_host("o1", O1);
    let mut site = lab.nat_site("hp", kind, false, WAN, LAN, enabled, HOME);
    let (h1, h1_ip) = lab.lan_host("hp", &mut site);
    let (h2, h2_ip) = lab.lan_host("hp", &mut site);
    apply::apply(&lab.plan, &quiet).expect("apply");
    let o = udp(&o1, O1, P1);
    let a = udp(&h1, h1_ip, 40010);
    let b = udp(&h2, h2_ip, 40011);
    let mapping = probe(&a, SocketAddr::from((O1, P1)), &o, "map").expect("O1 reached");
    probe(&b, mapping, &a, "hairpin")
}

#[test]
fn nat_hairpin_when_enabled() {
    if !require_root() {
        return;
    }
    for kind in [NatKind::FullCone, NatKind::PortRestrictedCone] {
        let seen = hairpin(kind, true).unwrap_or_else(|| panic!("{kind:?}: hairpin on"));
        // The hairpinned packet carries the site's public address as its source.
        assert_eq!(seen.ip(), std::net::IpAddr::from(WAN), "{kind:?}");
        assert_eq!(hairpin(kind, false), None, "{kind:?}: hairpin off");
    }
}

#[test]
fn conntrack_presets_are_per_router_namespace() {
    if !require_root() {
        return;
    }
    let keys = [
        "net.netfilter.nf_conntrack_udp_timeout",
        "net.netfilter.nf_conntrack_udp_timeout_stream",
        "net.netfilter.nf_conntrack_tcp_timeout_established",
    ];
    let root_before: Vec<String> = keys.iter().map(|k| sysctl_root(k)).collect();
    let run = random_run_id();
    let _guard = RunGuard::new(&run);
    let mut lab = Lab::new(&run);
    let home = lab.nat_site(
        "home",
        NatKind::PortRestrictedCone,
        false,
        WAN,
        LAN,
        false,
        HOME,
    );
    let corp = lab.nat_site(
        "corp",
        NatKind::Symmetric,
        false,
        Ipv4Addr::new(198, 18, 0, 11),
        Ipv4Addr::new(10, 0, 2, 0),
        false,
        CORPORATE,
    );
    apply::apply(&lab.plan, &quiet).expect("apply");
    for (site, (udp_s, stream, tcp)) in [(&home, HOME), (&corp, CORPORATE)] {
        let ns = &site.routers[0];
        let got: Vec<String> = keys.iter().map(|k| sysctl_in(ns, k)).collect();
        assert_eq!(
            got,
            vec![udp_s.to_string(), stream.to_string(), tcp.to_string()],
            "{ns}"
        );
        assert_eq!(sysctl_in(ns, "net.ipv4.ip_forward"), "1");
        assert_eq!(sysctl_in(ns, "net.ipv4.conf.all.rp_filter"), "0");
    }
    let root_after: Vec<String> = keys.iter().map(|k| sysctl_root(k)).collect();
    assert_eq!(
        root_before, root_after,
        "the root namespace's sysctls must not change"
    );
}

#[test]
fn failing_apply_cleans_up_after_itself() {
    if !require_root() {
        return;
    }
    let run = random_run_id();
    let _guard = RunGuard::new(&run);
    let mut lab = Lab::new(&run);
    let mut site = lab.nat_site("bad", NatKind::FullCone, false, WAN, LAN, false, HOME);
    let (h, _) = lab.lan_host("bad", &mut site);
    // A broken ruleset in the last namespace: fails late, after everything else exists.
    lab.plan.rulesets.push(Ruleset {
        ns: h.clone(),
        text: "table ip broken { chain c { this is not nft } }\n".into(),
    });
    let err = apply::apply(&lab.plan, &quiet).expect_err("must fail");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, ApplyError::Command { .. }), "{err:?}");
    assert!(msg.contains("nft -f -") && msg.contains(&h), "{msg}");
    assert!(
        run_namespaces(&run).is_empty(),
        "apply left namespaces behind"
    );

    // A failing ip batch names the line.
    let mut lab = Lab::new(&run);
    let mut site = lab.nat_site("bad", NatKind::FullCone, false, WAN, LAN, false, HOME);
    let (h, _) = lab.lan_host("bad", &mut site);
    lab.plan.routes.push(chaos_controller::plan::Route {
        ns: h,
        dest: None,
        via: Ipv4Addr::new(172, 31, 255, 1),
    });
    let msg = apply::apply(&lab.plan, &quiet)
        .expect_err("unreachable gateway")
        .to_string();
    eprintln!("{msg}");
    assert!(msg.contains("route add default via 172.31.255.1"), "{msg}");
    assert!(run_namespaces(&run).is_empty());
}

#[test]
fn invalid_plan_creates_nothing() {
    if !require_root() {
        return;
    }
    let run = random_run_id();
    let _guard = RunGuard::new(&run);
    let mut lab = Lab::new(&run);
    lab.public_host("o1", O1);
    lab.plan.namespaces.push(chaos_controller::plan::Namespace {
        name: "not-ours".into(),
        role: chaos_controller::plan::NsRole::Internet,
    });
    let err = apply::apply(&lab.plan, &quiet).expect_err("foreign namespace");
    assert!(matches!(err, ApplyError::InvalidPlan(_)), "{err}");
    assert!(run_namespaces(&run).is_empty());
    assert!(!std::path::Path::new("/run/netns/not-ours").exists());
}

/// Env var naming the run the helper below applies (in a child process).
const CHILD_RUN: &str = "CHAOSNET_TEST_CHILD_APPLY_RUN";

/// Not a test on its own: the child process of `sigkill_mid_apply_then_teardown_all`.
#[test]
#[ignore = "helper: runs only as the child of sigkill_mid_apply_then_teardown_all"]
fn child_apply_helper() {
    let Ok(id) = std::env::var(CHILD_RUN) else {
        return;
    };
    let plan = big_plan(&RunId(id), 10, 10);
    let _ = apply::apply(&plan, &quiet);
    // Linger, as if agents were being started, until the parent kills us.
    std::thread::sleep(Duration::from_secs(30));
}

#[test]
fn sigkill_mid_apply_then_teardown_all() {
    if !require_root() {
        return;
    }
    // Exclusive: teardown_all removes every run, so no other test may have one now.
    let _lock = exclusive();
    let run = random_run_id();
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args(["--exact", "child_apply_helper", "--ignored", "--nocapture"])
        .env(CHILD_RUN, &run.0)
        .process_group(0)
        .spawn()
        .expect("spawn child");
    let pgid = child.id() as i32;
    // Kill it as soon as part of the run exists.
    let t0 = Instant::now();
    while run_namespaces(&run).len() < 5 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let partial = run_namespaces(&run).len();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::SIGKILL)
        .expect("kill child");
    let _ = child.wait();
    // Let any `ip` the killed controller had started finish (they are in its group).
    let t1 = Instant::now();
    while nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok()
        && t1.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let left = run_namespaces(&run).len();
    eprintln!("killed the controller with {partial} namespaces seen; {left} left behind");
    assert!(left > 0, "the child should have left a partial run");

    // teardown_all removes every run on the machine. This test binary holds the lab lock
    // exclusively, but other programs (a developer's `chaosnet up`) may have runs here too:
    // then only this run is removed, by name, which is the same code path.
    let prefix = run.ns("");
    let foreign: Vec<String> = apply::list_chaosnet_namespaces()
        .expect("list")
        .into_iter()
        .filter(|n| !n.starts_with(&prefix))
        .collect();
    if foreign.is_empty() {
        let report = apply::teardown_all().expect("teardown_all");
        eprintln!("teardown_all: {report:?}");
        assert!(report.runs.contains(&run.0));
        assert!(report.namespaces >= left);
        assert!(apply::list_chaosnet_namespaces().expect("list").is_empty());
        let again = apply::teardown_all().expect("second teardown_all");
        assert_eq!((again.namespaces, again.processes), (0, 0));
    } else {
        eprintln!(
            "teardown_all not run: {} namespaces of other runs exist (e.g. {}); tearing down this run by name",
            foreign.len(),
            foreign[0]
        );
        let report = apply::teardown(&run).expect("teardown");
        assert!(report.namespaces >= left);
        let again = apply::teardown(&run).expect("second teardown");
        assert_eq!((again.namespaces, again.processes), (0, 0));
    }
    assert!(run_namespaces(&run).is_empty());
}

fn sleep_bin() -> std::path::PathBuf {
    for p in ["/usr/bin/sleep", "/bin/sleep"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("no sleep binary");
}

#[test]
fn process_runtime_lifecycle() {
    if !require_root() {
        return;
    }
    let run = random_run_id();
    let _guard = RunGuard::new(&run);
    let mut lab = Lab::new(&run);
    let mut site = lab.nat_site(
        "rt",
        NatKind::PortRestrictedCone,
        false,
        WAN,
        LAN,
        false,
        HOME,
    );
    let (h, _) = lab.lan_host("rt", &mut site);
    apply::apply(&lab.plan, &quiet).expect("apply");

    let dir = tempfile::tempdir().expect("run dir");
    let rt = ProcessRuntime::new(dir.path(), &sleep_bin())
        .expect("runtime")
        .with_stop_grace(Duration::from_secs(2));
    let a = agent("rt-a2", &h, &["30"]);
    let id = rt.start(&a).expect("start");
    let pid = rt.pid("rt-a2").expect("running");
    assert_eq!(id, chaos_controller::runtime::InstanceId::Process { pid });

    // In the host namespace, in its own session, with its key and log in place.
    let ns_ino = std::fs::metadata(format!("/run/netns/{h}"))
        .expect("ns")
        .ino();
    let pid_ino = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .expect("pid ns")
        .ino();
    assert_eq!(pid_ino, ns_ino);
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid as i32))).expect("sid");
    assert_eq!(sid.as_raw(), pid as i32, "agent must lead its own session");
    let key = dir.path().join("agents/rt-a2/data/node.key");
    assert_eq!(
        std::fs::read_to_string(&key).expect("key"),
        format!("{}\n", "ab".repeat(32))
    );
    assert_eq!(
        std::fs::metadata(&key).expect("key").permissions().mode() & 0o777,
        0o600
    );
    assert!(rt.log_path("rt-a2").expect("log").exists());
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd");
    assert_eq!(cwd, std::fs::canonicalize(dir.path()).expect("canon"));
    assert!(matches!(
        rt.start(&a),
        Err(chaos_controller::runtime::RuntimeError::AlreadyRunning { .. })
    ));

    // exec runs inside the same namespace.
    let check = format!("test \"$(readlink /proc/self/ns/net)\" = 'net:[{ns_ino}]'");
    let st = rt
        .exec("rt-a2", &["sh".into(), "-c".into(), check])
        .expect("exec");
    assert!(st.success(), "{st:?}");
    assert_eq!(
        rt.exec("rt-a2", &["false".into()]).expect("exec").code,
        Some(1)
    );

    // pause / resume.
    rt.pause("rt-a2").expect("pause");
    assert_eq!(
        rt.state("rt-a2").expect("state"),
        AgentState::Paused { pid }
    );
    rt.resume("rt-a2").expect("resume");
    assert_eq!(
        rt.state("rt-a2").expect("state"),
        AgentState::Running { pid }
    );

    // stop: SIGTERM ends sleep; stopping again is a no-op.
    rt.pause("rt-a2").expect("pause before stop");
    let t0 = Instant::now();
    rt.stop("rt-a2").expect("stop");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "a paused agent must still stop on TERM"
    );
    assert!(
        matches!(rt.state("rt-a2").expect("state"), AgentState::Exited { status: Some(s) } if s.signal == Some(15))
    );
    rt.stop("rt-a2").expect("stop again");

    // restart (same data dir), then kill.
    rt.restart("rt-a2").expect("restart");
    let pid2 = rt.pid("rt-a2").expect("running again");
    assert_ne!(pid2, pid);
    rt.kill("rt-a2").expect("kill");
    assert!(
        matches!(rt.state("rt-a2").expect("state"), AgentState::Exited { status: Some(s) } if s.signal == Some(9))
    );

    // A later controller adopts pids from the state file; teardown kills what is left.
    rt.start(&a).expect("start again");
    let pid3 = rt.pid("rt-a2").expect("running");
    let later = ProcessRuntime::new(dir.path(), &sleep_bin()).expect("runtime");
    later.adopt(std::slice::from_ref(&a), &rt.instances());
    assert_eq!(later.pid("rt-a2"), Some(pid3));
    let down = apply::teardown(&run).expect("teardown");
    assert_eq!(down.processes, 1);
    assert!(matches!(
        rt.state("rt-a2").expect("state"),
        AgentState::Exited { .. }
    ));
    assert_eq!(
        later.pid("rt-a2"),
        None,
        "adopted pid is gone with its namespace"
    );
    // A recycled or foreign pid is never adopted.
    let mut bogus = std::collections::BTreeMap::new();
    bogus.insert(
        "rt-a2".to_string(),
        chaos_controller::runtime::InstanceId::Process {
            pid: std::process::id(),
        },
    );
    let third = ProcessRuntime::new(dir.path(), &sleep_bin()).expect("runtime");
    third.adopt(std::slice::from_ref(&a), &bogus);
    assert_eq!(third.pid("rt-a2"), None);
}

#[test]
fn process_runtime_runs_the_real_agent_binary() {
    if !require_root() {
        return;
    }
    // The agent is another package: find it in the shared target dir, if it was built.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/chaosnet-agent");
    if !bin.exists() {
        eprintln!("skipped: {} not built", bin.display());
        return;
    }
    let run = random_run_id();
    let _guard = RunGuard::new(&run);
    let mut lab = Lab::new(&run);
    let h = lab.public_host("seed0", Ipv4Addr::new(198, 18, 2, 1));
    apply::apply(&lab.plan, &quiet).expect("apply");
    let dir = tempfile::tempdir().expect("run dir");
    let rt = ProcessRuntime::new(dir.path(), &bin).expect("runtime");
    // `--help` exits at once; this checks the binary starts inside the namespace and its
    // output lands in the log.
    rt.start(&agent("seed-0", &h, &["--help"])).expect("start");
    let t0 = Instant::now();
    while rt.pid("seed-0").is_some() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = std::fs::read_to_string(rt.log_path("seed-0").expect("log")).expect("read log");
    assert!(log.to_lowercase().contains("usage"), "{log}");
}

/// Time to create and delete a veth pair in `scratch` (both need the RTNL lock).
fn veth_roundtrip(scratch: &str) -> Duration {
    let t = Instant::now();
    ip_out(&[
        "-n", scratch, "link", "add", "qa", "type", "veth", "peer", "name", "qb",
    ]);
    ip_out(&["-n", scratch, "link", "del", "qa"]);
    t.elapsed()
}

/// Waits until the kernel has finished the background cleanup of deleted namespaces: until
/// a veth round trip in a scratch namespace (the cleanup holds the RTNL lock it needs) is
/// back near `baseline` three times in a row (at most 30 s). Returns how long that took.
fn wait_kernel_quiet(scratch: &str, baseline: Duration) -> Duration {
    let t0 = Instant::now();
    let mut fast = 0;
    while fast < 3 && t0.elapsed() < Duration::from_secs(30) {
        if veth_roundtrip(scratch) <= baseline * 2 + Duration::from_millis(5) {
            fast += 1;
        } else {
            fast = 0;
        }
    }
    t0.elapsed()
}

#[test]
#[ignore = "benchmark: cargo test -p chaos-controller --test netns -- --ignored bench --nocapture"]
fn bench_apply_100_hosts() {
    if !require_root() {
        return;
    }
    let run = random_run_id();
    let _guard = RunGuard::new(&run);
    let plan = big_plan(&run, 10, 10);
    let n = plan.namespaces.len();
    // A scratch namespace for wait_kernel_quiet, outside the run (apply replaces the run's
    // namespaces) and outside the `cn<6 hex>-` pattern; removed by its own guard.
    struct Scratch(String);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let scratch = Scratch(format!("cnq{}", run.0));
    let scratch = &scratch.0;
    ip_out(&["netns", "add", scratch]);
    let baseline = (0..5)
        .map(|_| veth_roundtrip(scratch))
        .min()
        .expect("five samples");
    eprintln!("veth round trip on an idle kernel: {baseline:?}");
    for (jobs, settle) in [
        (1, true),
        (2, true),
        (4, true),
        (8, true),
        (4, false),
        (4, true),
    ] {
        let opts = apply::ApplyOptions {
            jobs,
            settle_timeout: if settle {
                Duration::from_secs(3)
            } else {
                Duration::ZERO
            },
        };
        wait_kernel_quiet(scratch, baseline);
        let r = apply::apply_with(&plan, &opts, &quiet).expect("apply");
        let t0 = Instant::now();
        // Tear down only the plan's namespaces (keep the scratch one).
        let d = apply::teardown(&run).expect("teardown");
        let td = t0.elapsed();
        let bg = wait_kernel_quiet(scratch, baseline);
        assert_eq!(d.namespaces, n);
        eprintln!(
            "batched apply (jobs={jobs}, settle={settle}): {n} namespaces in {:?} ({:.0} ns/s); \
             teardown {td:?}, kernel cleanup done {bg:?} later",
            r.elapsed,
            n as f64 / r.elapsed.as_secs_f64(),
        );
    }

    // Phase breakdown of one default apply.
    wait_kernel_quiet(scratch, baseline);
    let t = Instant::now();
    let marks = std::cell::RefCell::new(Vec::<(Phase, Duration)>::new());
    apply::apply(&plan, &|s| {
        let mut m = marks.borrow_mut();
        match m.last_mut() {
            Some(last) if last.0 == s.phase => last.1 = t.elapsed(),
            _ => m.push((s.phase, t.elapsed())),
        }
    })
    .expect("apply");
    eprintln!("phases (end times): {:?}", marks.borrow());
    apply::teardown(&run).expect("teardown");

    wait_kernel_quiet(scratch, baseline);
    let t0 = Instant::now();
    naive_apply(&plan);
    let naive = t0.elapsed();
    assert_eq!(run_namespaces(&run).len(), n);
    let t1 = Instant::now();
    naive_teardown(&plan);
    let td = t1.elapsed();
    let bg = wait_kernel_quiet(scratch, baseline);
    eprintln!(
        "one command per step: {n} namespaces in {naive:?} ({:.0} ns/s); teardown {td:?}, \
         kernel cleanup done {bg:?} later",
        n as f64 / naive.as_secs_f64(),
    );
}
