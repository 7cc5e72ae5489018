//! Planner and scenario tests (no root, except `rendered_rulesets_pass_nft_check`, which
//! skips itself without root unless `CHAOSNET_REQUIRE_ROOT=1`).
//!
//! The default scenario's plan is compared with `tests/snapshots/default_plan.json`;
//! regenerate it with `UPDATE_SNAPSHOTS=1 cargo test -p chaos-controller --test planner`.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use chaos_controller::nat;
use chaos_controller::plan::{IfAddr, NatKind, NsRole, Plan, RunId};
use chaos_controller::planner::{self, PlanError};
use chaos_controller::scenario::{Problem, Scenario, ScenarioError};

fn run_id() -> RunId {
    RunId("abc123".into())
}

fn default_plan() -> Plan {
    planner::plan(&Scenario::default_scenario(), &run_id()).expect("default plan")
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn in_subnet(ip: Ipv4Addr, net: IfAddr) -> bool {
    nat::network_of(IfAddr {
        ip,
        prefix: net.prefix,
    }) == nat::network_of(net)
}

// ---------------------------------------------------------------------------------------------
// Plan
// ---------------------------------------------------------------------------------------------

#[test]
fn default_plan_matches_snapshot() {
    let json = serde_json::to_string_pretty(&default_plan()).expect("plan serializes") + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/default_plan.json");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        std::fs::write(&path, &json).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; run with UPDATE_SNAPSHOTS=1 to create it",
            path.display()
        )
    });
    if expected != json {
        let line = expected
            .lines()
            .zip(json.lines())
            .position(|(a, b)| a != b)
            .map_or(expected.lines().count().min(json.lines().count()), |i| i);
        panic!(
            "plan differs from {} at line {}:\n  snapshot: {:?}\n  now:      {:?}\n\
             (UPDATE_SNAPSHOTS=1 regenerates it if the change is intended)",
            path.display(),
            line + 1,
            expected.lines().nth(line),
            json.lines().nth(line)
        );
    }
}

#[test]
fn default_plan_shape() {
    let p = default_plan();
    assert_eq!(p.agents.len(), 26);
    assert_eq!(p.agents.iter().filter(|a| a.seed).count(), 3);
    assert!(p.agents[..3].iter().all(|a| a.seed), "seeds come first");
    // internet + 6 NATed sites (cgnat has two routers) + 26 hosts
    assert_eq!(p.namespaces.len(), 1 + 7 + 26);
    assert_eq!(p.namespaces[0].role, NsRole::Internet);
    let first_host = p
        .namespaces
        .iter()
        .position(|n| matches!(n.role, NsRole::Host { .. }))
        .expect("hosts");
    assert!(
        p.namespaces[first_host..]
            .iter()
            .all(|n| matches!(n.role, NsRole::Host { .. })),
        "routers before hosts"
    );
    assert!(p.namespaces.iter().all(|n| n.name.starts_with("cnabc123-")));
    let carrier = p.sites.iter().find(|s| s.cgnat).expect("a cgnat site");
    assert_eq!(carrier.routers.len(), 2);
    assert!(carrier.routers[0].contains("-cgn-"), "outermost first");
    let open = p
        .sites
        .iter()
        .find(|s| s.nat == NatKind::None)
        .expect("open site");
    assert!(open.routers.is_empty() && open.public_ip.is_none());
    planner::check(&p).expect("invariants hold");
}

#[test]
fn same_seed_same_plan_other_seed_other_ids() {
    let s = Scenario::default_scenario();
    let a = planner::plan(&s, &run_id()).expect("plan");
    let b = planner::plan(&s, &run_id()).expect("plan");
    assert_eq!(a, b);
    let mut s2 = s.clone();
    s2.seed += 1;
    let c = planner::plan(&s2, &run_id()).expect("plan");
    for (x, y) in a.agents.iter().zip(&c.agents) {
        assert_eq!(x.name, y.name);
        assert_ne!(x.node_id, y.node_id, "{}", x.name);
        assert_ne!(x.key_seed_hex, y.key_seed_hex);
    }
    let rng = |p: &Plan| -> Vec<String> {
        p.agents
            .iter()
            .map(|a| {
                let i = a.args.iter().position(|x| x == "--rng-seed").expect("flag");
                a.args[i + 1].clone()
            })
            .collect()
    };
    assert_ne!(rng(&a), rng(&c));
    assert_eq!(rng(&a).iter().collect::<HashSet<_>>().len(), a.agents.len());
}

#[test]
fn node_ids_are_the_public_keys_of_the_key_seeds() {
    for a in default_plan().agents {
        let seed: [u8; 32] = hex::decode(&a.key_seed_hex)
            .expect("hex")
            .try_into()
            .expect("32 bytes");
        assert_eq!(planner::node_id(&seed), a.node_id);
        assert_eq!(a.node_id.len(), 64);
    }
    // Stable across versions: a fixed vector (the derivation is part of the run format).
    assert_eq!(
        planner::key_seed(42, "seed-0"),
        planner::key_seed(42, "seed-0")
    );
    assert_ne!(
        planner::key_seed(42, "seed-0"),
        planner::key_seed(42, "seed-1")
    );
}

#[test]
fn names_are_unique_and_interface_names_fit() {
    let p = default_plan();
    let mut ns = HashSet::new();
    assert!(p.namespaces.iter().all(|n| ns.insert(n.name.clone())));
    let mut ifs = HashSet::new();
    let all_ifs = p
        .bridges
        .iter()
        .map(|b| (b.ns.clone(), b.name.clone()))
        .chain(p.veths.iter().flat_map(|v| {
            [
                (v.a.ns.clone(), v.a.name.clone()),
                (v.b.ns.clone(), v.b.name.clone()),
            ]
        }));
    for (n, i) in all_ifs {
        assert!(ns.contains(&n), "{n}");
        assert!(!i.is_empty() && i.len() <= 15, "{i:?}");
        assert!(ifs.insert((n.clone(), i.clone())), "{i} twice in {n}");
    }
    let mut agents = HashSet::new();
    assert!(p.agents.iter().all(|a| agents.insert(a.name.clone())));
    let sockets: HashSet<_> = p.agents.iter().map(|a| a.api_socket.clone()).collect();
    assert_eq!(sockets.len(), p.agents.len());
}

#[test]
fn interface_names_fit_at_the_limits() {
    // 250 sites of 4 agents: site numbers and host indexes at their widest.
    let mut yaml = String::from("seeds: 1\nsites:\n");
    for i in 0..249 {
        let nat = ["none", "full-cone", "cgnat", "symmetric"][i % 4];
        yaml.push_str(&format!(
            "  - {{name: site-{i:07}, nat: {nat}, agents: 4}}\n"
        ));
    }
    yaml.push_str("  - {name: abcdefghijkl, nat: none, agents: 3}\n");
    let s = Scenario::from_str(&yaml, "big.yaml").expect("valid");
    let p = planner::plan(&s, &run_id()).expect("plan");
    assert!(
        p.veths
            .iter()
            .all(|v| v.a.name.len() <= 15 && v.b.name.len() <= 15)
    );
    assert_eq!(p.agents.len(), 1 + 249 * 4 + 3);

    let s = Scenario::from_str(
        "sites:\n  - {name: wide, nat: symmetric, agents: 245}\n",
        "wide.yaml",
    )
    .expect("valid");
    let p = planner::plan(&s, &run_id()).expect("plan");
    let last = p.agents.last().expect("agents");
    assert_eq!(last.lan_ip, Ipv4Addr::new(10, 1, 0, 254));
    assert_eq!(last.port, 4433 + 244);
}

#[test]
fn addresses_are_unique_and_inside_their_subnets() {
    let p = default_plan();
    let mut seen = HashSet::new();
    let addrs = p
        .bridges
        .iter()
        .filter_map(|b| b.addr)
        .chain(p.veths.iter().flat_map(|v| [v.a.addr, v.b.addr]).flatten());
    for a in addrs {
        assert!(seen.insert(a.ip), "{} twice", a.ip);
    }
    let internet = IfAddr {
        ip: Ipv4Addr::new(198, 18, 0, 0),
        prefix: 15,
    };
    for site in &p.sites {
        for a in p.agents.iter().filter(|a| a.site == site.name) {
            assert!(
                in_subnet(a.lan_ip, site.lan),
                "{} not in {:?}",
                a.lan_ip,
                site.lan
            );
            assert!(a.lan_ip.octets()[3] >= 10);
        }
        if let Some(ip) = site.public_ip {
            assert!(in_subnet(ip, internet), "{ip}");
            assert_eq!(ip.octets()[0..2], [198, 19]);
        }
        if site.nat == NatKind::None {
            assert_eq!(site.lan, internet);
        } else {
            assert_eq!(site.lan.ip.octets()[0], 10);
            assert_eq!(site.lan.prefix, 24);
        }
    }
    for a in p.agents.iter().filter(|a| a.seed) {
        assert_eq!(a.site, "internet");
        assert!(in_subnet(a.lan_ip, internet));
    }
    // Every veth end with an address is inside the subnet of its namespace's bridge or of
    // the internet.
    let carrier = p.sites.iter().find(|s| s.cgnat).expect("cgnat");
    let carrier_lan = p
        .bridges
        .iter()
        .find(|b| b.ns == carrier.routers[0])
        .and_then(|b| b.addr)
        .expect("carrier LAN");
    assert_eq!(carrier_lan.ip.octets()[0..2], [100, 64], "RFC 6598 space");
}

#[test]
fn hosts_route_via_their_router_and_public_hosts_need_none() {
    let p = default_plan();
    let routes: HashMap<&str, Ipv4Addr> = p
        .routes
        .iter()
        .filter(|r| r.dest.is_none())
        .map(|r| (r.ns.as_str(), r.via))
        .collect();
    for site in &p.sites {
        for a in p.agents.iter().filter(|a| a.site == site.name) {
            match site.routers.last() {
                Some(home) => {
                    let lan_addr = p
                        .bridges
                        .iter()
                        .find(|b| &b.ns == home)
                        .and_then(|b| b.addr)
                        .expect("router LAN address");
                    assert_eq!(routes.get(a.ns.as_str()), Some(&lan_addr.ip), "{}", a.name);
                    // The host's veth peer is on that router's bridge.
                    let v = p.veths.iter().find(|v| v.a.ns == a.ns).expect("veth");
                    assert_eq!(&v.b.ns, home);
                    assert_eq!(v.b.master.as_deref(), Some("br0"));
                }
                None => assert!(!routes.contains_key(a.ns.as_str()), "{}", a.name),
            }
        }
    }
    // The home router behind the carrier routes via the carrier's LAN address.
    let c = p.sites.iter().find(|s| s.cgnat).expect("cgnat");
    let carrier_lan = p
        .bridges
        .iter()
        .find(|b| b.ns == c.routers[0])
        .and_then(|b| b.addr)
        .expect("carrier LAN");
    assert_eq!(routes.get(c.routers[1].as_str()), Some(&carrier_lan.ip));
}

#[test]
fn routers_get_forwarding_rp_filter_and_their_conntrack_preset() {
    let p = default_plan();
    let sysctl = |ns: &str, key: &str| -> Option<String> {
        p.sysctls
            .iter()
            .find(|s| s.ns == ns && s.key == key)
            .map(|s| s.value.clone())
    };
    for site in &p.sites {
        for r in &site.routers {
            assert_eq!(sysctl(r, "net.ipv4.ip_forward").as_deref(), Some("1"));
            assert_eq!(
                sysctl(r, "net.ipv4.conf.all.rp_filter").as_deref(),
                Some("0")
            );
            assert_eq!(
                sysctl(r, "net.ipv4.conf.default.rp_filter").as_deref(),
                Some("0")
            );
            let (udp, stream, tcp) = if site.name == "symmetric1" {
                ("30", "120", "3600") // corporate
            } else {
                ("30", "300", "7200") // home
            };
            assert_eq!(
                sysctl(r, "net.netfilter.nf_conntrack_udp_timeout").as_deref(),
                Some(udp)
            );
            assert_eq!(
                sysctl(r, "net.netfilter.nf_conntrack_udp_timeout_stream").as_deref(),
                Some(stream)
            );
            assert_eq!(
                sysctl(r, "net.netfilter.nf_conntrack_tcp_timeout_established").as_deref(),
                Some(tcp)
            );
        }
    }
    let routers: HashSet<&str> = p
        .sites
        .iter()
        .flat_map(|s| s.routers.iter().map(String::as_str))
        .collect();
    assert!(
        p.sysctls.iter().all(|s| routers.contains(s.ns.as_str())),
        "only routers get sysctls"
    );
}

#[test]
fn each_router_gets_the_rules_of_its_nat_kind() {
    let p = default_plan();
    let rules = |ns: &str| -> String {
        p.rulesets
            .iter()
            .find(|r| r.ns == ns)
            .map(|r| r.text.clone())
            .unwrap_or_else(|| panic!("no ruleset for {ns}"))
    };
    assert!(rules(&p.namespaces[0].name).contains("chaosnet run abc123: internet"));
    for site in &p.sites {
        let Some(home) = site.routers.last() else {
            continue;
        };
        let text = rules(home);
        assert!(
            text.contains("comment \"chaosnet run abc123 site"),
            "{}",
            site.name
        );
        assert!(text.contains("type nat hook prerouting"), "{}", site.name);
        let lan = format!("{}/{}", site.lan.ip, site.lan.prefix);
        let mark = match site.nat {
            NatKind::Symmetric => format!("ip saddr {lan} masquerade random\n"),
            NatKind::FullCone => {
                "iifname \"wan\" ip daddr 198.19.2.1 meta l4proto udp dnat ip to udp dport map @mappings".into()
            }
            NatKind::RestrictedCone => "udp dport . ip saddr @contacted dnat".into(),
            NatKind::PortRestrictedCone => format!("ip saddr {lan} masquerade\n"),
            NatKind::None => unreachable!("no router"),
        };
        assert!(text.contains(&mark), "{}: missing {mark:?}", site.name);
        assert_eq!(
            text.lines()
                .any(|l| l.trim_start().starts_with("iifname \"br0\" ip daddr")),
            site.hairpin,
            "{}: hairpin",
            site.name
        );
    }
    // The carrier translates the carrier LAN to the site's public address.
    let c = p.sites.iter().find(|s| s.cgnat).expect("cgnat");
    let carrier = rules(&c.routers[0]);
    assert!(
        carrier.contains("ip saddr 100.64.6.0/24 masquerade\n"),
        "{carrier}"
    );
    let home = rules(&c.routers[1]);
    assert!(home.contains("ip saddr 10.6.0.0/24 masquerade\n"));
    // Only routers and the internet have rulesets.
    assert_eq!(p.rulesets.len(), 1 + 7);
}

#[test]
fn agent_args_follow_the_agent_cli() {
    let s = Scenario::default_scenario();
    let p = planner::plan(&s, &run_id()).expect("plan");
    let seeds: Vec<_> = p.agents.iter().filter(|a| a.seed).collect();
    for a in &p.agents {
        let args = &a.args;
        assert_eq!(args[0], "run");
        let value = |flag: &str| -> Vec<&str> {
            args.windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1].as_str())
                .collect()
        };
        assert_eq!(value("--network"), ["mainnet"]);
        assert!(value("--network-key-file").is_empty());
        assert_eq!(value("--listen"), [format!("{}:{}", a.lan_ip, a.port)]);
        let want: Vec<String> = seeds
            .iter()
            .filter(|x| x.name != a.name)
            .map(|x| format!("{}@{}:{}", x.node_id, x.lan_ip, x.port))
            .collect();
        assert_eq!(value("--seed"), want, "{}", a.name);
        assert_eq!(value("--data-dir"), [format!("agents/{}/data", a.name)]);
        assert_eq!(value("--api"), [format!("unix:agents/{}/api.sock", a.name)]);
        assert_eq!(value("--task-rate"), ["1"]);
        assert_eq!(value("--task-weights"), ["4,3,2,1,1"]);
        assert_eq!(value("--bucket-refresh-ms"), ["60000"]);
        assert_eq!(value("--gc-interval-ms"), ["10000"]);
        assert!(
            args.iter().any(|x| x == "--mdns"),
            "labs turn local discovery on"
        );
        assert_eq!(
            value("--rng-seed"),
            [planner::rng_seed(42, &a.name).to_string()]
        );
        // Every flag is one the agent knows.
        for f in args.iter().filter(|x| x.starts_with("--")) {
            assert!(
                [
                    "--network",
                    "--network-key-file",
                    "--listen",
                    "--seed",
                    "--data-dir",
                    "--api",
                    "--task-rate",
                    "--rng-seed",
                    "--task-weights",
                    "--bucket-refresh-ms",
                    "--gc-interval-ms",
                    "--mdns"
                ]
                .contains(&f.as_str()),
                "{f}"
            );
        }
    }
    // Hosts behind one NAT never share a port (see the planner docs).
    for site in &p.sites {
        let ports: HashSet<u16> = p
            .agents
            .iter()
            .filter(|a| a.site == site.name)
            .map(|a| a.port)
            .collect();
        assert_eq!(
            ports.len(),
            p.agents.iter().filter(|a| a.site == site.name).count()
        );
    }
}

#[test]
fn private_network_passes_the_key_file() {
    let s = Scenario::load(&data("private_with_key.yaml")).expect("valid");
    let key = s.network_key_file.clone().expect("key file");
    assert!(key.is_absolute(), "{}", key.display());
    assert!(key.ends_with("tests/data/lab.key"));
    let p = planner::plan(&s, &run_id()).expect("plan");
    for a in &p.agents {
        let i = a.args.iter().position(|x| x == "--network").expect("flag");
        assert_eq!(a.args[i + 1], "private:lab");
        let k = a
            .args
            .iter()
            .position(|x| x == "--network-key-file")
            .expect("flag");
        assert_eq!(a.args[k + 1], key.to_str().expect("utf-8"));
    }
    // A relative key file (from_str keeps it as written) is refused by the planner.
    let s = Scenario::from_str(
        "network: private:lab\nnetwork_key_file: lab.key\nsites: [{name: a, nat: none}]\n",
        "rel.yaml",
    )
    .expect("valid scenario");
    assert!(matches!(
        planner::plan(&s, &run_id()),
        Err(PlanError::KeyFilePath(_))
    ));
}

#[test]
fn missing_key_file_is_an_error_at_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("s.yaml");
    std::fs::write(
        &f,
        "network: private:lab\nsites: [{name: a, nat: none}]\nnetwork_key_file: nope.key\n",
    )
    .expect("write");
    let e = Scenario::load(&f).expect_err("missing key file");
    let msg = e.to_string();
    assert!(msg.contains("s.yaml:3:1: network_key_file"), "{msg}");
    assert!(msg.contains("nope.key"), "{msg}");
}

#[test]
fn bad_run_id_is_refused() {
    let s = Scenario::default_scenario();
    for bad in ["", "abc12", "ABC123", "abc1234", "zzzzzz", "../../x"] {
        assert!(
            matches!(
                planner::plan(&s, &RunId(bad.into())),
                Err(PlanError::BadRunId(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn scaling_with_agents_n() {
    let mut s = Scenario::default_scenario();
    s.scale_agents(97).expect("scale");
    let p = planner::plan(&s, &run_id()).expect("plan");
    assert_eq!(p.agents.len(), 100);
    assert_eq!(p.agents.iter().filter(|a| a.seed).count(), 3);
    // Every site keeps its share: the smallest (2 of 23) still gets 8 of 97.
    for site in &s.sites {
        assert!(site.agents >= 8, "{}: {}", site.name, site.agents);
    }
    planner::check(&p).expect("invariants");
    // Same N twice: same plan.
    let mut s2 = Scenario::default_scenario();
    s2.scale_agents(97).expect("scale");
    assert_eq!(planner::plan(&s2, &run_id()).expect("plan"), p);
    // Down to one per site.
    s.scale_agents(7).expect("scale");
    assert!(s.sites.iter().all(|x| x.agents == 1));
    // A lopsided scenario: the small site keeps one agent.
    let mut s = Scenario::from_str(
        "sites:\n  - {name: a, nat: none, agents: 1}\n  - {name: b, nat: symmetric, agents: 99}\n",
        "x.yaml",
    )
    .expect("valid");
    s.scale_agents(10).expect("scale");
    assert_eq!(s.sites.iter().map(|x| x.agents).collect::<Vec<_>>(), [1, 9]);
    assert!(s.scale_agents(1).is_err());
    assert!(s.scale_agents(498).is_err(), "a LAN holds 245");
}

// ---------------------------------------------------------------------------------------------
// Bad scenarios: file:line:col and the valid choices; nothing is created (nothing can be:
// parsing and planning are pure).
// ---------------------------------------------------------------------------------------------

fn load_err(name: &str) -> (ScenarioError, String) {
    let e = Scenario::load(&data(name)).expect_err(name);
    let msg = e.to_string();
    (e, msg)
}

fn assert_at(msg: &str, file: &str, line: u64, col: u64) {
    let want = format!("{file}:{line}:{col}: ");
    assert!(msg.contains(&want), "expected {want:?} in {msg:?}");
}

#[test]
fn syntax_error_has_position() {
    let (e, msg) = load_err("bad_syntax.yaml");
    assert!(matches!(e, ScenarioError::Parse { .. }), "{msg}");
    assert_at(&msg, "bad_syntax.yaml", 5, 4);
    assert!(msg.contains("did not find expected '-'"), "{msg}");
    let e = Scenario::from_str("name: x\nsites:\n  - {name: a, nat: none\n", "u.yaml")
        .expect_err("unclosed");
    assert_eq!(e.to_string(), "u.yaml:3:5: unclosed bracket '{'");
}

#[test]
fn unknown_nat_type_lists_the_choices() {
    let (_, msg) = load_err("bad_nat_type.yaml");
    assert_at(&msg, "bad_nat_type.yaml", 4, 10);
    assert!(msg.contains("fullcone"), "{msg}");
    for choice in [
        "none",
        "full-cone",
        "restricted-cone",
        "port-restricted-cone",
        "symmetric",
        "cgnat",
    ] {
        assert!(msg.contains(choice), "{choice} missing from {msg}");
    }
}

#[test]
fn unknown_field_lists_the_fields() {
    let (_, msg) = load_err("unknown_field.yaml");
    assert_at(&msg, "unknown_field.yaml", 4, 5);
    assert!(msg.contains("agnets") && msg.contains("agents"), "{msg}");
}

#[test]
fn duplicate_site_names() {
    let (e, msg) = load_err("duplicate_site.yaml");
    assert_at(&msg, "duplicate_site.yaml", 7, 11);
    assert!(
        matches!(
            e,
            ScenarioError::Invalid {
                problem: Problem::DuplicateSite { first_line: 3, .. },
                ..
            }
        ),
        "{msg}"
    );
}

#[test]
fn malformed_site_name() {
    let (_, msg) = load_err("bad_site_name.yaml");
    assert_at(&msg, "bad_site_name.yaml", 2, 11);
    assert!(msg.contains("a-z 0-9 -") && msg.contains("12"), "{msg}");
    let e =
        Scenario::from_str("sites: [{name: seed, nat: none}]\n", "r.yaml").expect_err("reserved");
    assert!(e.to_string().contains("reserved"), "{e}");
}

#[test]
fn inner_without_cgnat() {
    let (_, msg) = load_err("inner_without_cgnat.yaml");
    assert_at(&msg, "inner_without_cgnat.yaml", 4, 12);
    assert!(msg.contains("cgnat"), "{msg}");
    let e = Scenario::from_str("sites:\n  - {name: a, nat: cgnat, inner: none}\n", "i.yaml")
        .expect_err("inner none");
    let m = e.to_string();
    assert!(m.starts_with("i.yaml:2:"), "{m}");
    assert!(
        m.contains("full-cone, restricted-cone, port-restricted-cone, symmetric"),
        "{m}"
    );
}

#[test]
fn site_without_agents() {
    let (_, msg) = load_err("zero_agents.yaml");
    assert_at(&msg, "zero_agents.yaml", 4, 13);
    assert!(msg.contains("at least 1"), "{msg}");
}

#[test]
fn more_agents_than_a_lan_holds() {
    let (_, msg) = load_err("lan_full.yaml");
    assert_at(&msg, "lan_full.yaml", 4, 13);
    assert!(msg.contains("300") && msg.contains("245"), "{msg}");
}

#[test]
fn private_network_without_key_file() {
    let (_, msg) = load_err("private_without_key.yaml");
    assert_at(&msg, "private_without_key.yaml", 1, 10);
    assert!(msg.contains("network_key_file"), "{msg}");
    let e = Scenario::from_str(
        "network: testnet\nnetwork_key_file: /k\nsites: [{name: a, nat: none}]\n",
        "k.yaml",
    )
    .expect_err("key on public network");
    assert!(e.to_string().starts_with("k.yaml:2:19: "), "{e}");
}

#[test]
fn more_than_1000_agents() {
    let (_, msg) = load_err("too_many_agents.yaml");
    assert_at(&msg, "too_many_agents.yaml", 3, 3);
    assert!(msg.contains("1003") && msg.contains("1000"), "{msg}");
}

#[test]
fn other_value_errors_have_positions() {
    for (yaml, line, col, needle) in [
        (
            "network: devnet\nsites: [{name: a, nat: none}]\n",
            1,
            10,
            "mainnet, testnet, private:<name>",
        ),
        (
            "seeds: 0\nsites: [{name: a, nat: none}]\n",
            1,
            8,
            "seeds must be 1 to 245",
        ),
        (
            "agent:\n  task_rate: -1\nsites: [{name: a, nat: none}]\n",
            2,
            14,
            "task_rate",
        ),
        (
            "agent:\n  gc_interval_ms: 5\nsites: [{name: a, nat: none}]\n",
            2,
            19,
            "gc_interval_ms",
        ),
        (
            "conntrack: {udp_s: 0, udp_stream_s: 1, tcp_established_s: 1}\nsites: [{name: a, nat: none}]\n",
            1,
            12,
            "1 to",
        ),
        ("sites: []\n", 1, 8, "at least one site"),
        (
            "sites:\n  - {name: a, nat: none, hairpin: true}\n",
            2,
            35,
            "hairpin",
        ),
        (
            "name: 'a b'\nsites: [{name: a, nat: none}]\n",
            1,
            7,
            "scenario name",
        ),
    ] {
        let e = Scenario::from_str(yaml, "v.yaml").expect_err(yaml);
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("v.yaml:{line}:{col}: ")),
            "{yaml:?} -> {msg}"
        );
        assert!(msg.contains(needle), "{yaml:?} -> {msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// nft syntax (root)
// ---------------------------------------------------------------------------------------------

/// True when the test may use root; prints why it skips otherwise. With
/// `CHAOSNET_REQUIRE_ROOT=1`, lacking root is a failure instead.
fn have_root() -> bool {
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        return true;
    }
    if std::env::var_os("CHAOSNET_REQUIRE_ROOT").is_some_and(|v| v == "1") {
        panic!("CHAOSNET_REQUIRE_ROOT=1 but not running as root");
    }
    eprintln!("skipped: needs root");
    false
}

/// A throwaway network namespace, deleted on drop. Its name does not start with `cn`, so
/// `chaosnet down --all` never mistakes it for a run.
struct ScratchNs(String);

impl ScratchNs {
    fn new() -> ScratchNs {
        let name = format!("nftcheck-{}", std::process::id());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .output();
        let out = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip netns add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ScratchNs(name)
    }

    fn nft(&self, args: &[&str], file: &Path) -> std::process::Output {
        std::process::Command::new("ip")
            .args(["netns", "exec", &self.0, "nft"])
            .args(args)
            .arg(file)
            .output()
            .expect("run nft")
    }
}

impl Drop for ScratchNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .output();
    }
}

#[test]
fn rendered_rulesets_pass_nft_check() {
    if !have_root() {
        return;
    }
    // Every kind, with and without hairpin, plus the carrier and the internet, as the
    // planner renders them (a scenario with every combination).
    let s = Scenario::from_str(
        "sites:\n\
         - {name: a, nat: full-cone}\n\
         - {name: b, nat: full-cone, hairpin: true}\n\
         - {name: c, nat: restricted-cone}\n\
         - {name: d, nat: restricted-cone, hairpin: true}\n\
         - {name: e, nat: port-restricted-cone}\n\
         - {name: f, nat: port-restricted-cone, hairpin: true}\n\
         - {name: g, nat: symmetric}\n\
         - {name: h, nat: symmetric, hairpin: true}\n\
         - {name: i, nat: cgnat, inner: full-cone, hairpin: true}\n",
        "all.yaml",
    )
    .expect("valid");
    let p = planner::plan(&s, &run_id()).expect("plan");
    // And the pod rulesets (Kubernetes' router container), with and without TCP services.
    let mut texts: Vec<(String, String)> = p
        .rulesets
        .iter()
        .map(|r| (r.ns.clone(), r.text.clone()))
        .collect();
    for kind in [
        NatKind::FullCone,
        NatKind::RestrictedCone,
        NatKind::PortRestrictedCone,
        NatKind::Symmetric,
    ] {
        for ports in [vec![9100, 9101], Vec::new()] {
            let params = nat::PodParams {
                run_id: run_id(),
                site: "pod".into(),
                wan_if: "eth0".into(),
                wan_ip: Ipv4Addr::new(198, 18, 240, 21),
                inner_ip: Ipv4Addr::new(10, 77, 0, 2),
                open_tcp_ports: ports.clone(),
                mapping_timeout_s: 120,
            };
            let text = nat::pod_ruleset(kind, &params).expect("a router kind");
            texts.push((format!("pod {kind:?} tcp {ports:?}"), text));
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = ScratchNs::new();
    for (name, text) in &texts {
        let f = dir.path().join("rules.nft");
        std::fs::write(&f, text).expect("write");
        let out = ns.nft(&["-c", "-f"], &f);
        assert!(
            out.status.success(),
            "nft -c rejects the ruleset of {}:\n{}\n{}",
            name,
            String::from_utf8_lossy(&out.stderr),
            text
        );
        // Loading it twice gives the same result (idempotent), in the scratch namespace.
        for _ in 0..2 {
            let out = ns.nft(&["-f"], &f);
            assert!(
                out.status.success(),
                "{}: {}",
                name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `up --runtime kube` is refused before anything exists: exit 2, the reason in one line,
/// an empty runs directory. (The kube runtime is not built; see the README.)
#[test]
fn up_with_the_kube_runtime_creates_nothing() {
    let runs = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chaosnet"))
        .args(["--runs-dir"])
        .arg(runs.path())
        .args(["up", "--runtime", "kube"])
        .output()
        .expect("run chaosnet");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.contains("the kube runtime is not built yet") && first.contains("manifests/"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(runs.path()).expect("read").collect();
    assert!(left.is_empty(), "up --runtime kube created {left:?}");
}

/// `kube apply` without a cluster: exit 2 and one line saying what to set, before any call.
#[test]
fn kube_apply_without_a_cluster_says_so_in_one_line() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chaosnet"))
        .args(["kube", "apply", "--run-id", "abc123"])
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("no-such-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .expect("run chaosnet");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("no cluster configured"), "{err}");
}
