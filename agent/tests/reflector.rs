//! Tier 3 (root): a signal cannot turn an agent into a UDP reflector. Three network
//! namespaces on one bridge, all in the lab's emulated internet (198.18.0.0/24): the target
//! agent, an attacker and a victim. The attacker connects to the target under its own key and
//! sends signed signals that claim the victim's address and a symmetric NAT, which on the old
//! code made the target spray ~2,000 birthday probes at random ports of the victim's IP per
//! signal. An nftables counter in the victim's namespace counts every UDP datagram from the
//! target. Nothing leaves the namespaces this test creates, and it removes them.
//!
//! Run it as root under the lab lock: `flock /tmp/chaosnet-lab.lock cargo test -p
//! chaosnet-agent --test reflector` (CHAOSNET_REQUIRE_ROOT=1 makes a skip a failure).

mod common;

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chaosnet_agent::identity::Identity;
use chaosnet_agent::socket::{ChaosSocket, endpoint};
use chaosnet_agent::tls::{self, NetworkId};
use chaosnet_proto::{NatType, NodeId, Request, Response, Signal};
use common::{Agent, AgentConfig, http_unix, plain_hello};

const TARGET_IP: &str = "198.18.0.2";
const ATTACKER_IP: &str = "198.18.0.3";
const VICTIM_IP: &str = "198.18.0.4";
/// Forged signals sent, one a second (within every rate limit on the way).
const SIGNALS: u64 = 5;
/// What the victim may receive from the target, all signals together.
const VICTIM_BOUND: u64 = 50;

#[track_caller]
fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .expect("run a lab command");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces of one run, removed on drop (also when the test fails).
struct Lab {
    prefix: String,
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// A bridge namespace and one namespace per role, each with a veth on the bridge.
    fn build() -> Lab {
        // Not `cn…`: that prefix belongs to the controller's runs, which `down --all` sweeps.
        let lab = Lab {
            prefix: format!("hrefl{}", std::process::id()),
        };
        let br = lab.ns("br");
        run("ip", &["netns", "add", &br]);
        run("ip", &["-n", &br, "link", "add", "br0", "type", "bridge"]);
        run("ip", &["-n", &br, "link", "set", "br0", "up"]);
        for (i, (role, ip)) in [("t", TARGET_IP), ("a", ATTACKER_IP), ("v", VICTIM_IP)]
            .into_iter()
            .enumerate()
        {
            let ns = lab.ns(role);
            run("ip", &["netns", "add", &ns]);
            let (outer, inner) = (format!("p{i}"), "eth0".to_string());
            run(
                "ip",
                &[
                    "-n", &br, "link", "add", &outer, "type", "veth", "peer", "name", &inner,
                    "netns", &ns,
                ],
            );
            run(
                "ip",
                &["-n", &br, "link", "set", &outer, "master", "br0", "up"],
            );
            run(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", &inner],
            );
            run("ip", &["-n", &ns, "link", "set", &inner, "up"]);
            run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
        // Every UDP datagram the victim gets from the target, whatever its port.
        let v = lab.ns("v");
        let nft = |args: &[&str]| {
            let mut all = vec!["netns", "exec", v.as_str(), "nft"];
            all.extend_from_slice(args);
            run("ip", &all);
        };
        nft(&["add", "table", "ip", "refl"]);
        nft(&[
            "add",
            "chain",
            "ip",
            "refl",
            "input",
            "{ type filter hook input priority 0 ; }",
        ]);
        nft(&[
            "add", "rule", "ip", "refl", "input", "ip", "saddr", TARGET_IP, "meta", "l4proto",
            "udp", "counter",
        ]);
        lab
    }

    /// UDP datagrams from the target counted in the victim's namespace.
    fn victim_count(&self) -> u64 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns("v"),
                "nft",
                "list",
                "table",
                "ip",
                "refl",
            ])
            .output()
            .expect("nft list");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("the victim's counter")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for role in ["t", "a", "v", "br"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .status();
        }
    }
}

/// Runs `f` on a thread that entered network namespace `ns`: sockets it creates live there.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open the namespace");
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("the namespace thread")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_naming_a_victim_gets_it_no_probes() {
    if !common::require_root() {
        return;
    }
    let lab = Lab::build();
    let dir = tempfile::tempdir().expect("tempdir");
    let api = dir.path().join("api.sock");
    let mut t = Agent::prepare("target", AgentConfig::mainnet(61));
    t.p2p = format!("{TARGET_IP}:4000").parse().expect("addr");
    t.config.netns = Some(lab.ns("t"));
    t.config.api_arg = Some(format!("unix:{}", api.display()));
    t.start();
    let deadline = Instant::now() + common::READY_TIMEOUT;
    while !http_unix(&api, "GET", "/status", None, Duration::from_secs(5))
        .is_ok_and(|r| r.status == 200)
    {
        if Instant::now() > deadline || !t.is_alive() {
            t.fail("the target's API never answered");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The attacker: a real, authenticated peer of the target, in its own namespace.
    let me = Identity::generate().expect("an identity");
    let key = me.secret_key();
    let handle = tokio::runtime::Handle::current();
    let local: SocketAddr = format!("{ATTACKER_IP}:0").parse().expect("addr");
    let (socket, _h) = in_netns(&lab.ns("a"), move || {
        let _rt = handle.enter();
        ChaosSocket::bind(local, 5).expect("bind in the attacker's namespace")
    });
    let ep = endpoint(socket, None).expect("endpoint");
    let target: NodeId = t.node_id.parse().expect("id");
    let client = tls::client_config(&me, &NetworkId::Mainnet).expect("client config");
    let conn = ep
        .connect_with(client, t.p2p, &tls::server_name(&target))
        .expect("connect")
        .await
        .unwrap_or_else(|e| t.fail(&format!("handshake from the attacker: {e}")));
    for bytes in [plain_hello(), vec![1]] {
        let mut uni = conn.open_uni().await.expect("uni");
        uni.write_all(&bytes).await.expect("write");
        uni.finish().expect("finish");
    }

    let victim: SocketAddr = format!("{VICTIM_IP}:5000").parse().expect("addr");
    let mut answers = Vec::new();
    for nonce in 0..SIGNALS {
        let signal = Signal::with_addrs(
            &key,
            target,
            7_000 + nonce,
            now_ms(),
            NatType::Symmetric,
            vec![victim],
        );
        let req = Request::Signal {
            signal,
            hops: Vec::new(),
            trace: None,
        };
        let answer = common::ask_raw(&conn, &req).await.ok();
        answers.push(answer);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if !answers
        .iter()
        .any(|a| matches!(a, Some(Response::SignalAnswer { .. })))
    {
        t.fail(&format!(
            "no signal was accepted, so nothing was tested: {answers:?}"
        ));
    }
    // Every punch has run out (8 s) by now.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let got = lab.victim_count();
    println!("victim received {got} datagrams from the target after {SIGNALS} forged signals");
    conn.close(quinn::VarInt::from_u32(0), b"done");
    if got >= VICTIM_BOUND {
        t.fail(&format!(
            "the victim received {got} datagrams from the target (bound {VICTIM_BOUND}) after \
             {SIGNALS} signals naming it"
        ));
    }
}
