//! As root: the planner's own plan for the default scenario is applied, and every site's NAT
//! is probed for its RFC 4787 mapping and filtering behaviour, using two public seed hosts of
//! that same plan as observers. This checks the planner, the templates and apply together,
//! exactly as `chaosnet up` builds them (no agents are started).

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use chaos_controller::apply;
use chaos_controller::plan::NatKind;
use chaos_controller::planner;
use chaos_controller::scenario::Scenario;
use common::{RunGuard, probe, random_run_id, require_root, shared, udp};

/// What a probe found.
#[derive(Debug, PartialEq, Eq)]
struct Behaviour {
    /// Same public mapping towards two destinations.
    eim: bool,
    /// Inbound accepted from the contacted IP on another port.
    same_ip_other_port: bool,
    /// Inbound accepted from an IP never contacted.
    other_ip: bool,
    /// Public address the observers saw.
    public: Ipv4Addr,
}

fn quiet(_: apply::Step) {}

#[test]
fn every_site_of_the_default_plan_behaves_as_its_nat_type() {
    if !require_root() {
        return;
    }
    let _lock = shared();
    let run = random_run_id();
    let _guard = RunGuard::new(&run);
    let plan = planner::plan(&Scenario::default_scenario(), &run).expect("plan");
    apply::apply(&plan, &quiet).expect("apply");

    // Observers: the first two public seeds.
    let seeds: Vec<_> = plan.agents.iter().filter(|a| a.seed).take(2).collect();
    assert_eq!(seeds.len(), 2, "the default scenario has public seeds");
    let (o1, o2) = (seeds[0], seeds[1]);
    let (p1, p2) = (3478u16, 3479u16);
    let o1p1 = udp(&o1.ns, o1.lan_ip, p1);
    let o1p2 = udp(&o1.ns, o1.lan_ip, p2);
    let o2p1 = udp(&o2.ns, o2.lan_ip, p1);
    let a1 = SocketAddr::from((o1.lan_ip, p1));
    let a2 = SocketAddr::from((o2.lan_ip, p1));

    let mut checked = Vec::new();
    for site in &plan.sites {
        let Some(host) = plan.agents.iter().find(|a| a.site == site.name) else {
            continue;
        };
        let tag = |t: &str| format!("{}-{t}", site.name);
        // Mapping: one local port towards both observers.
        let hm = udp(&host.ns, host.lan_ip, 40001);
        let m1 = probe(&hm, a1, &o1p1, &tag("map1"))
            .unwrap_or_else(|| panic!("{}: O1 unreachable", site.name));
        let m2 = probe(&hm, a2, &o2p1, &tag("map2"))
            .unwrap_or_else(|| panic!("{}: O2 unreachable", site.name));
        // Filtering: another local port talks to O1:p1 only, then O1:p2 and O2:p1 knock.
        let hf = udp(&host.ns, host.lan_ip, 40002);
        let m = probe(&hf, a1, &o1p1, &tag("filt"))
            .unwrap_or_else(|| panic!("{}: O1 unreachable", site.name));
        assert!(
            probe(&o1p1, m, &hf, &tag("reply")).is_some(),
            "{}: replies must pass",
            site.name
        );
        let same_ip_other_port = probe(&o1p2, m, &hf, &tag("o1p2")).is_some();
        let other_ip = probe(&o2p1, m, &hf, &tag("o2p1")).is_some();
        let SocketAddr::V4(m1v4) = m1 else {
            panic!("IPv4 lab")
        };
        let got = Behaviour {
            eim: m1 == m2,
            same_ip_other_port,
            other_ip,
            public: *m1v4.ip(),
        };

        let public = site.public_ip.unwrap_or(host.lan_ip);
        let want = match (site.nat, site.cgnat) {
            (NatKind::None, _) => Behaviour {
                eim: true,
                same_ip_other_port: true,
                other_ip: true,
                public,
            },
            // A carrier NAT (EIM + APDF) in front of a home NAT filters like the carrier.
            (NatKind::Symmetric, _) => Behaviour {
                eim: false,
                same_ip_other_port: false,
                other_ip: false,
                public,
            },
            (_, true) | (NatKind::PortRestrictedCone, _) => Behaviour {
                eim: true,
                same_ip_other_port: false,
                other_ip: false,
                public,
            },
            (NatKind::RestrictedCone, _) => Behaviour {
                eim: true,
                same_ip_other_port: true,
                other_ip: false,
                public,
            },
            (NatKind::FullCone, _) => Behaviour {
                eim: true,
                same_ip_other_port: true,
                other_ip: true,
                public,
            },
        };
        assert_eq!(
            got, want,
            "site {} ({:?}, cgnat {})",
            site.name, site.nat, site.cgnat
        );
        checked.push(site.nat);
    }
    for kind in [
        NatKind::None,
        NatKind::FullCone,
        NatKind::RestrictedCone,
        NatKind::PortRestrictedCone,
        NatKind::Symmetric,
    ] {
        assert!(
            checked.contains(&kind),
            "the default scenario covers {kind:?}"
        );
    }
    assert!(
        plan.sites.iter().any(|s| s.cgnat),
        "the default scenario covers CGNAT"
    );
}
