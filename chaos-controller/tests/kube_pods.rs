//! NAT inside a pod, for real, on pods emulated with Docker. This is NOT a Kubernetes cluster
//! (none can run here): it is the one part of a pod that decides the NAT's fidelity, the
//! network namespace its containers share, built the way a kubelet builds it. The router
//! container owns the namespace and the agent container joins it with
//! `--network container:<router>`, which is the sharing a pod's containers get from its
//! pause container.
//!
//! The containers get the securityContext of `manifests/base`, mapped to docker flags:
//! every container `--cap-drop ALL --read-only --security-opt no-new-privileges`; the
//! router alone `--cap-add NET_ADMIN` and runs as uid 0 (`chaosnet pod-router`, the
//! `router` sidecar); agents and seeds run as uid 10001 with no capability at all.
//!
//! On one internal bridge (198.18.240.0/24, no uplink): two public seed pods (no router)
//! and four NATed pods, full-cone, restricted-cone... one of each filtering behaviour plus a
//! second symmetric one, so that theory asks for every path: direct, punched, punched with
//! birthday probes, and relayed. The test
//! 1. probes each NATed pod's mapping and filtering from the seeds' namespaces as the
//!    NAT-lab tests do (same public port to two observers? replies? other port, other
//!    address?) and checks the tuple of its type;
//! 2. starts the agents (seeds with identities from key files, as a Secret mounts them;
//!    pods given the first seed by container name, as a headless Service's DNS name),
//!    waits until each joined, and checks each NATed agent's public address is its pod's;
//! 3. connects every ordered pair of NATed agents with a fresh connection, from cold NATs
//!    (conntrack entries between the two pods deleted first, as `chaosnet matrix --cold`),
//!    and judges each against theory (`matrix::theory`), as `chaosnet matrix` does.
//!
//! Skipped with a printed reason when not root or when no engine answers, unless
//! `CHAOSNET_REQUIRE_ROOT=1` / `CHAOSNET_REQUIRE_DOCKER=1` turn the skip into a failure.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaos_controller::agentapi::{self, Connect};
use chaos_controller::http::{self, Endpoint, Request};
use chaos_controller::matrix::{self, Behaviour};
use chaos_controller::plan::NatKind;
use chaosnet_contract::api::{ConnectRequest, Status};
use common::cli::{agent_bin, text};
use common::docker::{ImageGuard, build_image, docker, docker_ok, require_docker};
use common::{probe, require_root, udp};

/// The label on everything this test creates, so a killed earlier run is cleaned up too.
const LABEL: &str = "chaosnet.test=kube-pods";
const SUBNET: &str = "198.18.240.0/24";
const INNER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const P2P_PORT: u16 = 4433;

/// Removes every container, network and namespace name of this test (also a killed
/// earlier run's), however the test ends.
struct Cleanup {
    netns: Vec<String>,
    /// Dropped last: the image outlives the containers made from it.
    _image: ImageGuard,
}

fn remove_labelled() {
    let ids = docker(&["ps", "-aq", "--filter", &format!("label={LABEL}")]);
    for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
        let _ = docker(&["rm", "-f", "-v", id]);
    }
    let nets = docker(&["network", "ls", "-q", "--filter", &format!("label={LABEL}")]);
    for id in String::from_utf8_lossy(&nets.stdout).split_whitespace() {
        let _ = docker(&["network", "rm", id]);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
        remove_labelled();
    }
}

/// One emulated pod: its containers' names, its address, its NAT.
struct Pod {
    name: String,
    ip: Ipv4Addr,
    nat: NatKind,
    /// The named network namespace the test attached to the pod (for probes).
    ns: String,
    /// The agent's API socket, in the host directory bind-mounted at /api.
    api: PathBuf,
}

fn status(pod: &Pod) -> Option<Status> {
    let r = http::call(
        &Endpoint::Unix(pod.api.clone()),
        &Request::get("/status"),
        Duration::from_secs(3),
    )
    .ok()?;
    (r.status == 200)
        .then(|| serde_json::from_str(&r.body).ok())
        .flatten()
}

/// Names the network namespace of container `cname` as `ns` (a bind mount of its
/// `/proc/<pid>/ns/net`; deleting the name later leaves the container alone).
fn attach(ns: &str, cname: &str) {
    let pid = docker_ok(&["inspect", "--format", "{{.State.Pid}}", cname]);
    let _ = Command::new("ip")
        .args(["netns", "delete", ns])
        .stderr(Stdio::null())
        .status();
    let o = Command::new("ip")
        .args(["netns", "attach", ns, &pid])
        .output()
        .expect("run ip");
    assert!(
        o.status.success(),
        "ip netns attach {ns} {pid}: {}",
        text(&o)
    );
}

fn logs(cname: &str) -> String {
    let o = docker(&["logs", cname]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Makes `pod`'s router forget its conntrack entries to and from `peer` (exit 1, nothing
/// matched, is fine).
fn forget(pod: &Pod, peer: Ipv4Addr) {
    for dir in ["-d", "-s"] {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pod.ns,
                "conntrack",
                "-D",
                dir,
                &peer.to_string(),
            ])
            .output()
            .expect("run conntrack");
        assert!(
            o.status.code().is_some_and(|c| c <= 1),
            "conntrack -D in {}: {}",
            pod.ns,
            text(&o)
        );
    }
}

/// The securityContext of `manifests/base` as docker flags, for every container.
const HARDENED: &[&str] = &[
    "--cap-drop",
    "ALL",
    "--read-only",
    "--security-opt",
    "no-new-privileges",
    "--label",
    LABEL,
];

#[test]
fn nat_in_docker_emulated_pods() {
    if !require_root() || !require_docker() {
        return;
    }
    let started = Instant::now();
    remove_labelled();
    let tag = format!("chaosnet-agent:test-pods-{}", std::process::id());
    let prefix = format!("cnk{}", std::process::id() % 100_000);
    let mut cleanup = Cleanup {
        netns: Vec::new(),
        _image: ImageGuard(tag.clone()),
    };
    let build = build_image(&tag, &[]);
    assert!(build.status.success(), "build-image.sh: {}", text(&build));

    let net = format!("{prefix}-net");
    docker_ok(&[
        "network",
        "create",
        "--internal",
        "--subnet",
        SUBNET,
        "--label",
        LABEL,
        &net,
    ]);

    // Host directories: seed keys (read-only in the seeds, as a Secret) and API sockets.
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    let api = dir.path().join("api");
    for d in [&keys, &api] {
        std::fs::create_dir(d).expect("mkdir");
        nix::unistd::chown(d, Some(10001.into()), Some(10001.into())).expect("chown");
    }
    let mut seed_ids = Vec::new();
    let mut seeds = Vec::new();
    for (i, ip) in [
        Ipv4Addr::new(198, 18, 240, 10),
        Ipv4Addr::new(198, 18, 240, 11),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("{prefix}-seed{i}");
        let kdir = dir.path().join(format!("keygen{i}"));
        let k = Command::new(agent_bin())
            .args(["keygen", "--data-dir"])
            .arg(&kdir)
            .output()
            .expect("run chaosnet-agent keygen");
        assert!(k.status.success(), "keygen: {}", text(&k));
        let id = String::from_utf8_lossy(&k.stdout).trim().to_string();
        let key = keys.join(format!("seed{i}.key"));
        std::fs::copy(kdir.join("node.key"), &key).expect("copy key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        nix::unistd::chown(&key, Some(10001.into()), Some(10001.into())).expect("chown");
        seed_ids.push(id);
        seeds.push(Pod {
            name,
            ip,
            nat: NatKind::None,
            ns: format!("{prefix}-seed{i}"),
            api: api.join(format!("seed{i}.sock")),
        });
    }
    let ip_s: Vec<String> = seeds.iter().map(|s| s.ip.to_string()).collect();
    for (i, s) in seeds.iter().enumerate() {
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &s.name,
            "--network",
            &net,
            "--ip",
            &ip_s[i],
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(HARDENED.iter().map(|a| a.to_string()));
        args.extend([
            "--user".to_string(),
            "10001:10001".into(),
            "-v".into(),
            format!("{}:/keys:ro", keys.display()),
            "-v".into(),
            format!("{}:/api", api.display()),
            tag.clone(),
            "run".into(),
            "--network".into(),
            "testnet".into(),
            "--listen".into(),
            format!("{}:{P2P_PORT}", s.ip),
            "--data-dir".into(),
            "/data".into(),
            "--node-key-file".into(),
            format!("/keys/seed{i}.key"),
            "--api".into(),
            format!("unix:/api/seed{i}.sock"),
            "--task-rate".into(),
            "0".into(),
        ]);
        // The other seed by address, so the two find each other without DNS.
        let other = 1 - i;
        args.push("--seed".into());
        args.push(format!("{}@{}:{P2P_PORT}", seed_ids[other], ip_s[other]));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_ok(&refs);
        attach(&s.ns, &s.name);
        cleanup.netns.push(s.ns.clone());
    }

    // The NATed pods: a router container owning the namespace, nothing else yet.
    let kinds = [
        NatKind::FullCone,
        NatKind::PortRestrictedCone,
        NatKind::Symmetric,
        NatKind::Symmetric,
    ];
    let mut pods = Vec::new();
    for (i, nat) in kinds.into_iter().enumerate() {
        let name = format!("{prefix}-pod{i}");
        let ip = Ipv4Addr::new(198, 18, 240, 21 + i as u8);
        let ip_text = ip.to_string();
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &net,
            "--ip",
            &ip_text,
        ];
        args.extend_from_slice(HARDENED);
        args.extend_from_slice(&[
            "--cap-add",
            "NET_ADMIN",
            "--user",
            "0:0",
            "--entrypoint",
            "/usr/local/bin/chaosnet",
            &tag,
            "pod-router",
            "--nat",
            nat.name(),
            "--inner",
            "10.77.0.2",
            "--site",
            &name,
            "--mapping-timeout-s",
            "120",
        ]);
        docker_ok(&args);
        pods.push(Pod {
            ns: name.clone(),
            api: api.join(format!("pod{i}.sock")),
            name,
            ip,
            nat,
        });
    }
    for p in &pods {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !logs(&p.name).contains("ready:") {
            let running = docker_ok(&["inspect", "--format", "{{.State.Running}}", &p.name]);
            assert!(
                running == "true" && Instant::now() < deadline,
                "router {} never got ready:\n{}",
                p.name,
                logs(&p.name)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        attach(&p.ns, &p.name);
        cleanup.netns.push(p.ns.clone());
        // The sidecar's startupProbe: ready once the address and the table are in place.
        let check = docker(&[
            "exec",
            &p.name,
            "/usr/local/bin/chaosnet",
            "pod-router",
            "--check",
            "--nat",
            p.nat.name(),
        ]);
        assert!(
            check.status.success(),
            "--check in {}: {}",
            p.name,
            text(&check)
        );
    }
    // ...and not ready where no router ran (a seed's namespace, without NET_ADMIN).
    let check = docker(&[
        "exec",
        &seeds[0].name,
        "/usr/local/bin/chaosnet",
        "pod-router",
        "--check",
        "--nat",
        "symmetric",
    ]);
    assert_eq!(
        check.status.code(),
        Some(1),
        "--check in a seed: {}",
        text(&check)
    );

    // 1. Mapping and filtering, probed from the seeds' namespaces.
    let (o1, o2) = (&seeds[0], &seeds[1]);
    let o1p1 = udp(&o1.ns, o1.ip, 3478);
    let o1p2 = udp(&o1.ns, o1.ip, 3479);
    let o2p1 = udp(&o2.ns, o2.ip, 3478);
    let a1 = SocketAddr::from((o1.ip, 3478));
    let a2 = SocketAddr::from((o2.ip, 3478));
    for p in &pods {
        let tag = |t: &str| format!("{}-{t}", p.name);
        let hm = udp(&p.ns, INNER, 40001);
        let m1 = probe(&hm, a1, &o1p1, &tag("map1")).expect("seed 0 reachable from the pod");
        let m2 = probe(&hm, a2, &o2p1, &tag("map2")).expect("seed 1 reachable from the pod");
        let hf = udp(&p.ns, INNER, 40002);
        let m = probe(&hf, a1, &o1p1, &tag("filt")).expect("seed 0 reachable");
        assert!(
            probe(&o1p1, m, &hf, &tag("reply")).is_some(),
            "{}: replies pass",
            p.name
        );
        let same_ip_other_port = probe(&o1p2, m, &hf, &tag("o1p2")).is_some();
        let other_ip = probe(&o2p1, m, &hf, &tag("o2p1")).is_some();
        let SocketAddr::V4(m1v4) = m1 else {
            panic!("IPv4 pods")
        };
        let got = (m1 == m2, same_ip_other_port, other_ip, *m1v4.ip());
        let want = match p.nat {
            NatKind::Symmetric => (false, false, false, p.ip),
            NatKind::PortRestrictedCone => (true, false, false, p.ip),
            NatKind::RestrictedCone => (true, true, false, p.ip),
            _ => (true, true, true, p.ip),
        };
        assert_eq!(
            got, want,
            "pod {} ({:?}): (eim, same ip other port, other ip, public address)",
            p.name, p.nat
        );
        println!(
            "pod {} ({}): mapping and filtering as its type",
            p.name,
            p.nat.name()
        );
    }

    // 2. The agents, joined into their pods' namespaces, capabilities dropped.
    let seed0 = format!("{}@{}:{P2P_PORT}", seed_ids[0], seeds[0].name);
    for (i, p) in pods.iter().enumerate() {
        let agent = format!("{}-agent", p.name);
        let container_net = format!("container:{}", p.name);
        let api_arg = format!("unix:/api/pod{i}.sock");
        let listen = format!("{INNER}:{P2P_PORT}");
        let vol = format!("{}:/api", api.display());
        let mut args = vec!["run", "-d", "--name", &agent, "--network", &container_net];
        args.extend_from_slice(HARDENED);
        args.extend_from_slice(&[
            "--user",
            "10001:10001",
            "-v",
            &vol,
            &tag,
            "run",
            "--network",
            "testnet",
            "--listen",
            &listen,
            "--data-dir",
            "/data",
            "--api",
            &api_arg,
            "--seed",
            &seed0,
            "--task-rate",
            "0",
        ]);
        docker_ok(&args);
    }
    let everyone: Vec<&Pod> = seeds.iter().chain(pods.iter()).collect();
    let mut ids = Vec::new();
    for p in &everyone {
        let deadline = Instant::now() + Duration::from_secs(60);
        let st = loop {
            match status(p) {
                Some(s) if s.joined => break s,
                _ if Instant::now() > deadline => {
                    let cname = if p.nat == NatKind::None {
                        p.name.clone()
                    } else {
                        format!("{}-agent", p.name)
                    };
                    panic!("{} never joined:\n{}", p.name, logs(&cname));
                }
                _ => std::thread::sleep(Duration::from_millis(300)),
            }
        };
        if p.nat != NatKind::None {
            let public = p.ip.to_string();
            assert!(
                st.observed_addrs
                    .iter()
                    .any(|a| a.starts_with(&format!("{public}:"))),
                "{}: observed addresses {:?} do not carry the pod's address {public}",
                p.name,
                st.observed_addrs
            );
        }
        ids.push(st.node_id.clone());
    }
    println!("every agent joined after {:.1?}", started.elapsed());

    // 3. Every ordered pair of NATed agents, fresh connections, judged against theory.
    let mut failures = Vec::new();
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            // Cold NATs, as `chaosnet matrix --cold`: each router forgets what it holds
            // for the other pod, so earlier traffic (the node graph's lookups) opens no hole.
            forget(a, b.ip);
            forget(b, a.ip);
            let body = serde_json::to_string(&ConnectRequest::fresh(&ids[seeds.len() + j]))
                .expect("serialize");
            let r = http::call(
                &Endpoint::Unix(a.api.clone()),
                &Request {
                    method: "POST",
                    path: "/connect",
                    body: Some(&body),
                },
                Duration::from_secs(60),
            )
            .map_err(agentapi::ApiError::from)
            .and_then(agentapi::parse_connect);
            if let Ok(Connect::Connected(c)) = &r {
                assert_eq!(
                    c.node_id,
                    ids[seeds.len() + j],
                    "connected to the wrong node"
                );
            }
            let expected = matrix::theory(Behaviour::of(a.nat), Behaviour::of(b.nat), false);
            let outcome = matrix::outcome(r);
            let pass = matrix::judge(expected, &outcome);
            println!(
                "{} ({}) -> {} ({}): {:?} (best {:?}) {:.0} ms {}",
                a.name,
                a.nat.name(),
                b.name,
                b.nat.name(),
                outcome.mode,
                expected.best,
                outcome.elapsed_ms,
                if pass { "ok" } else { "FAIL" }
            );
            if !pass {
                failures.push(format!("{} -> {}: {outcome:?}", a.name, b.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "pairs below theory:\n{}",
        failures.join("\n")
    );
    println!("docker-emulated pods test took {:.1?}", started.elapsed());
    drop(cleanup);
}
