//! Helpers for the root-only netns tests: root check, a lab lock, run guards, a hand-built
//! plan builder (no planner), the naive one-command-per-step apply for the benchmark, and
//! UDP probe helpers that run inside lab namespaces.

#![allow(dead_code, unreachable_pub)]

pub mod cli;
pub mod docker;
pub mod otlp;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use chaos_controller::apply::{self, in_netns};
use chaos_controller::nat::{self, RouterParams};
use chaos_controller::plan::{
    AgentPlan, Bridge, IfAddr, Namespace, NatKind, NsRole, Plan, Route, Ruleset, RunId, SitePlan,
    Sysctl, Veth, VethEnd,
};

/// True when the test may run (euid 0). Otherwise prints "skipped" and returns false, or
/// panics when `CHAOSNET_REQUIRE_ROOT=1`.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CHAOSNET_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("CHAOSNET_REQUIRE_ROOT=1 but not running as root");
    }
    eprintln!("skipped: needs root");
    false
}

/// Tests that create runs hold this shared; `teardown_all` tests hold it exclusively, so
/// they never remove another test's run.
static LAB: RwLock<()> = RwLock::new(());

pub fn shared() -> RwLockReadGuard<'static, ()> {
    LAB.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    LAB.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A fresh random run id with no namespace on the machine.
pub fn random_run_id() -> RunId {
    loop {
        let mut b = [0u8; 3];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .expect("read /dev/urandom");
        let id = RunId(hex::encode(b));
        let prefix = id.ns("");
        let taken = std::fs::read_dir("/run/netns")
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            })
            .unwrap_or(false);
        if !taken {
            return id;
        }
    }
}

/// Tears the run down when dropped (also on panic), then releases the lab lock.
pub struct RunGuard {
    pub run: RunId,
    _lock: RwLockReadGuard<'static, ()>,
}

impl RunGuard {
    pub fn new(run: &RunId) -> RunGuard {
        RunGuard {
            run: run.clone(),
            _lock: shared(),
        }
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if let Err(e) = apply::teardown(&self.run) {
            eprintln!("teardown of run {} failed: {e}", self.run.0);
        }
    }
}

/// Namespaces of `run` on the machine now.
pub fn run_namespaces(run: &RunId) -> Vec<String> {
    let prefix = run.ns("");
    apply::list_chaosnet_namespaces()
        .expect("list namespaces")
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

pub fn addr(ip: Ipv4Addr, prefix: u8) -> Option<IfAddr> {
    Some(IfAddr { ip, prefix })
}

/// Conntrack preset (udp, udp_stream, tcp_established seconds).
pub const HOME: (u32, u32, u32) = (30, 300, 7200);
pub const CORPORATE: (u32, u32, u32) = (30, 120, 3600);

/// What a built site looks like.
#[derive(Clone, Debug)]
pub struct Site {
    /// Routers, outermost first.
    pub routers: Vec<String>,
    /// Public address (outer router's WAN).
    pub public_ip: Ipv4Addr,
    /// LAN gateway (innermost router's bridge address).
    pub gateway: Ipv4Addr,
    /// The innermost router's namespace (hosts attach to it).
    pub lan_router: String,
    /// Next host index on the LAN.
    pub next_host: u8,
    /// LAN base (a.b.c.0/24).
    pub lan: Ipv4Addr,
}

/// Builds plans by hand: an internet bridge, observers, NAT sites and hosts.
pub struct Lab {
    pub plan: Plan,
    inet_ports: usize,
}

impl Lab {
    /// An internet namespace with bridge `br0` and its (tagged, empty) ruleset.
    pub fn new(run: &RunId) -> Lab {
        let inet = run.ns("inet");
        let plan = Plan {
            run_id: run.clone(),
            namespaces: vec![Namespace {
                name: inet.clone(),
                role: NsRole::Internet,
            }],
            bridges: vec![Bridge {
                ns: inet.clone(),
                name: "br0".into(),
                addr: None,
            }],
            veths: vec![],
            routes: vec![],
            sysctls: vec![],
            rulesets: vec![Ruleset {
                ns: inet,
                text: nat::internet_ruleset(run),
            }],
            sites: vec![],
            agents: vec![],
        };
        Lab {
            plan,
            inet_ports: 0,
        }
    }

    pub fn inet(&self) -> String {
        self.plan.run_id.ns("inet")
    }

    fn ns(&mut self, role_name: &str, role: NsRole) -> String {
        let name = self.plan.run_id.ns(role_name);
        self.plan.namespaces.push(Namespace {
            name: name.clone(),
            role,
        });
        name
    }

    /// Connects `ns`/`ifname` (with `ip`) to the internet bridge.
    fn attach_to_internet(&mut self, ns: &str, ifname: &str, ip: IfAddr) {
        let port = format!("p{}", self.inet_ports);
        self.inet_ports += 1;
        let inet = self.inet();
        self.plan.veths.push(Veth {
            a: VethEnd {
                ns: ns.to_string(),
                name: ifname.into(),
                addr: Some(ip),
                master: None,
            },
            b: VethEnd {
                ns: inet,
                name: port,
                addr: None,
                master: Some("br0".into()),
            },
        });
    }

    /// A host on the internet itself (an observer or public seed), at `ip`/15.
    pub fn public_host(&mut self, role: &str, ip: Ipv4Addr) -> String {
        let ns = self.ns(
            role,
            NsRole::Host {
                agent: role.to_string(),
            },
        );
        self.attach_to_internet(&ns, "eth0", IfAddr { ip, prefix: 15 });
        ns
    }

    fn router_sysctls(&mut self, ns: &str, preset: (u32, u32, u32)) {
        let (udp, stream, tcp) = preset;
        for (k, v) in [
            ("net.ipv4.ip_forward", "1".to_string()),
            ("net.ipv4.conf.all.rp_filter", "0".into()),
            ("net.ipv4.conf.default.rp_filter", "0".into()),
            ("net.netfilter.nf_conntrack_udp_timeout", udp.to_string()),
            (
                "net.netfilter.nf_conntrack_udp_timeout_stream",
                stream.to_string(),
            ),
            (
                "net.netfilter.nf_conntrack_tcp_timeout_established",
                tcp.to_string(),
            ),
        ] {
            self.plan.sysctls.push(Sysctl {
                ns: ns.to_string(),
                key: k.into(),
                value: v,
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn router_ruleset(
        &mut self,
        ns: &str,
        site: &str,
        kind: Option<NatKind>,
        wan_ip: Ipv4Addr,
        lan: Ipv4Addr,
        hairpin: bool,
        timeout: u32,
    ) {
        let p = RouterParams {
            run_id: self.plan.run_id.clone(),
            site: site.into(),
            wan_if: "wan".into(),
            wan_ip,
            lan_if: "br0".into(),
            lan_net: IfAddr {
                ip: lan,
                prefix: 24,
            },
            mapping_timeout_s: timeout,
            hairpin,
        };
        let text = match kind {
            Some(k) => nat::router_ruleset(k, &p).expect("a NAT kind with a template"),
            None => nat::carrier_ruleset(&p),
        };
        self.plan.rulesets.push(Ruleset {
            ns: ns.to_string(),
            text,
        });
    }

    /// A NAT site: a router (`<site>-r0`) with WAN `wan_ip`/15 and LAN `lan`/24 (gateway
    /// `.1`). With `cgnat`, `<site>-r0` is a carrier router (port-restricted, LAN
    /// 100.64.`idx`.0/24) in front of a home router `<site>-r1` of kind `kind`.
    #[allow(clippy::too_many_arguments)]
    pub fn nat_site(
        &mut self,
        site: &str,
        kind: NatKind,
        cgnat: bool,
        wan_ip: Ipv4Addr,
        lan: Ipv4Addr,
        hairpin: bool,
        preset: (u32, u32, u32),
    ) -> Site {
        let o = lan.octets();
        let gw = Ipv4Addr::new(o[0], o[1], o[2], 1);
        let r0 = self.ns(
            &format!("{site}-r0"),
            NsRole::Router {
                site: site.into(),
                layer: 0,
            },
        );
        self.attach_to_internet(
            &r0,
            "wan",
            IfAddr {
                ip: wan_ip,
                prefix: 15,
            },
        );
        self.router_sysctls(&r0, preset);
        let mut routers = vec![r0.clone()];
        let lan_router = if cgnat {
            // Carrier network 100.64.<third octet of the LAN>.0/24.
            let carrier_lan = Ipv4Addr::new(100, 64, o[2], 0);
            let carrier_gw = Ipv4Addr::new(100, 64, o[2], 1);
            let home_wan = Ipv4Addr::new(100, 64, o[2], 2);
            self.plan.bridges.push(Bridge {
                ns: r0.clone(),
                name: "br0".into(),
                addr: addr(carrier_gw, 24),
            });
            self.router_ruleset(&r0, site, None, wan_ip, carrier_lan, false, preset.1);
            let r1 = self.ns(
                &format!("{site}-r1"),
                NsRole::Router {
                    site: site.into(),
                    layer: 1,
                },
            );
            self.plan.veths.push(Veth {
                a: VethEnd {
                    ns: r1.clone(),
                    name: "wan".into(),
                    addr: addr(home_wan, 24),
                    master: None,
                },
                b: VethEnd {
                    ns: r0.clone(),
                    name: "c0".into(),
                    addr: None,
                    master: Some("br0".into()),
                },
            });
            self.plan.routes.push(Route {
                ns: r1.clone(),
                dest: None,
                via: carrier_gw,
            });
            self.router_sysctls(&r1, preset);
            self.router_ruleset(&r1, site, Some(kind), home_wan, lan, hairpin, preset.1);
            routers.push(r1.clone());
            r1
        } else {
            self.router_ruleset(&r0, site, Some(kind), wan_ip, lan, hairpin, preset.1);
            r0.clone()
        };
        self.plan.bridges.push(Bridge {
            ns: lan_router.clone(),
            name: "br0".into(),
            addr: addr(gw, 24),
        });
        self.plan.sites.push(SitePlan {
            name: site.into(),
            nat: kind,
            cgnat,
            routers: routers.clone(),
            public_ip: Some(wan_ip),
            lan: IfAddr {
                ip: lan,
                prefix: 24,
            },
            hairpin,
            labels: Default::default(),
        });
        Site {
            routers,
            public_ip: wan_ip,
            gateway: gw,
            lan_router,
            next_host: 2,
            lan,
        }
    }

    /// A LAN host `<site>-h<i>` of `site`; returns its namespace and address.
    pub fn lan_host(&mut self, site_name: &str, site: &mut Site) -> (String, Ipv4Addr) {
        let i = site.next_host;
        site.next_host += 1;
        let o = site.lan.octets();
        let ip = Ipv4Addr::new(o[0], o[1], o[2], i);
        let ns = self.ns(
            &format!("{site_name}-h{i}"),
            NsRole::Host {
                agent: format!("{site_name}-a{i}"),
            },
        );
        self.plan.veths.push(Veth {
            a: VethEnd {
                ns: ns.clone(),
                name: "eth0".into(),
                addr: addr(ip, 24),
                master: None,
            },
            b: VethEnd {
                ns: site.lan_router.clone(),
                name: format!("h{i}"),
                addr: None,
                master: Some("br0".into()),
            },
        });
        self.plan.routes.push(Route {
            ns: ns.clone(),
            dest: None,
            via: site.gateway,
        });
        (ns, ip)
    }
}

/// 1 internet + `routers` port-restricted sites + `hosts_per_router` hosts each.
pub fn big_plan(run: &RunId, routers: u8, hosts_per_router: u8) -> Plan {
    let mut lab = Lab::new(run);
    for r in 0..routers {
        let name = format!("s{r}");
        let mut site = lab.nat_site(
            &name,
            NatKind::PortRestrictedCone,
            false,
            Ipv4Addr::new(198, 18, 0, 10 + r),
            Ipv4Addr::new(10, 0, r, 0),
            false,
            HOME,
        );
        for _ in 0..hosts_per_router {
            lab.lan_host(&name, &mut site);
        }
    }
    lab.plan
}

/// A trivial agent plan for the process runtime tests.
pub fn agent(name: &str, ns: &str, args: &[&str]) -> AgentPlan {
    AgentPlan {
        name: name.into(),
        site: "test".into(),
        ns: ns.into(),
        lan_ip: Ipv4Addr::new(10, 0, 1, 2),
        port: 4433,
        seed: false,
        node_id: "00".repeat(32),
        key_seed_hex: "ab".repeat(32),
        data_dir: PathBuf::from(format!("agents/{name}/data")),
        api_socket: PathBuf::from(format!("agents/{name}/api.sock")),
        args: args.iter().map(|s| s.to_string()).collect(),
        runtime: Default::default(),
    }
}

/// A UDP socket bound inside `ns` at `ip:port`.
pub fn udp(ns: &str, ip: Ipv4Addr, port: u16) -> UdpSocket {
    in_netns(ns, || UdpSocket::bind(SocketAddrV4::new(ip, port)))
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("bind {ip}:{port} in {ns}: {e}"))
}

/// Waits up to `timeout` for a datagram carrying `token`; returns its source.
pub fn recv_token(sock: &UdpSocket, token: &str, timeout: Duration) -> Option<SocketAddr> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        sock.set_read_timeout(Some(left)).expect("set timeout");
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if &buf[..n] == token.as_bytes() => return Some(from),
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return None;
            }
            // ICMP errors reported on the socket (ECONNREFUSED): keep waiting.
            Err(_) => continue,
        }
    }
}

/// Short wait for "dropped" checks.
pub const DROP_WAIT: Duration = Duration::from_millis(300);

/// Sends `token` from `from` to `to` (up to 3 tries, `DROP_WAIT` each) and returns the
/// source address `at` saw, or `None` when nothing arrived.
pub fn probe(from: &UdpSocket, to: SocketAddr, at: &UdpSocket, token: &str) -> Option<SocketAddr> {
    for _ in 0..3 {
        from.send_to(token.as_bytes(), to).expect("send");
        if let Some(src) = recv_token(at, token, DROP_WAIT) {
            return Some(src);
        }
    }
    None
}

/// The naive path for the benchmark: one `ip` (or `ip netns exec`) command per step.
pub fn naive_apply(plan: &Plan) {
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut c = Command::new("ip");
        c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        if stdin.is_some() {
            c.stdin(Stdio::piped());
        }
        let mut child = c.spawn().expect("spawn ip");
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            pipe.write_all(text.as_bytes()).expect("write stdin");
        }
        let out = child.wait_with_output().expect("wait ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for n in &plan.namespaces {
        run(&["netns", "add", &n.name], None);
    }
    for v in &plan.veths {
        run(
            &[
                "link", "add", &v.a.name, "netns", &v.a.ns, "type", "veth", "peer", "name",
                &v.b.name, "netns", &v.b.ns,
            ],
            None,
        );
    }
    for n in &plan.namespaces {
        let ns = n.name.as_str();
        run(&["-n", ns, "link", "set", "lo", "up"], None);
        for b in plan.bridges.iter().filter(|b| b.ns == ns) {
            run(&["-n", ns, "link", "add", &b.name, "type", "bridge"], None);
            if let Some(a) = b.addr {
                run(
                    &[
                        "-n",
                        ns,
                        "addr",
                        "add",
                        &format!("{}/{}", a.ip, a.prefix),
                        "dev",
                        &b.name,
                    ],
                    None,
                );
            }
            run(&["-n", ns, "link", "set", &b.name, "up"], None);
        }
        for e in plan
            .veths
            .iter()
            .flat_map(|v| [&v.a, &v.b])
            .filter(|e| e.ns == ns)
        {
            if let Some(a) = e.addr {
                run(
                    &[
                        "-n",
                        ns,
                        "addr",
                        "add",
                        &format!("{}/{}", a.ip, a.prefix),
                        "dev",
                        &e.name,
                    ],
                    None,
                );
            }
            if let Some(m) = &e.master {
                run(&["-n", ns, "link", "set", &e.name, "master", m], None);
            }
            run(&["-n", ns, "link", "set", &e.name, "up"], None);
        }
        for r in plan.routes.iter().filter(|r| r.ns == ns) {
            let dest = r
                .dest
                .map_or("default".to_string(), |d| format!("{}/{}", d.ip, d.prefix));
            run(
                &["-n", ns, "route", "add", &dest, "via", &r.via.to_string()],
                None,
            );
        }
        for rs in plan.rulesets.iter().filter(|r| r.ns == ns) {
            run(&["netns", "exec", ns, "nft", "-f", "-"], Some(&rs.text));
        }
        for s in plan.sysctls.iter().filter(|s| s.ns == ns) {
            run(
                &[
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    &format!("{}={}", s.key, s.value),
                ],
                None,
            );
        }
        if matches!(n.role, NsRole::Router { .. }) {
            run(&["netns", "exec", ns, "conntrack", "-F"], None);
        }
    }
}

/// The naive teardown: one `ip netns del` per namespace.
pub fn naive_teardown(plan: &Plan) {
    for n in &plan.namespaces {
        let st = Command::new("ip")
            .args(["netns", "del", &n.name])
            .status()
            .expect("ip netns del");
        assert!(st.success());
    }
}
