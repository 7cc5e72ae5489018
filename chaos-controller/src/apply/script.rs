//! Pure half of `apply`: checks a [`Plan`] before anything is created, and turns it into
//! `ip -batch` scripts and per-namespace work items.
//!
//! Validation is strict because plan strings end up in batch scripts and file paths: every
//! namespace must carry the run's `cn<run>-` prefix (so apply can never touch a namespace
//! that is not this run's), interface names must be kernel-valid, and every reference
//! (namespace, bridge) must resolve. Nothing here touches the system.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use crate::plan::{IfAddr, NsRole, Plan, RunId};

use super::ApplyError;

/// Longest namespace name accepted.
const MAX_NS_LEN: usize = 64;
/// The kernel's interface name limit (IFNAMSIZ - 1).
const MAX_IFNAME_LEN: usize = 15;

/// First interface index given to veth ends; pair `k` gets `BASE + 2k` and `BASE + 2k + 1`.
///
/// Why: in fresh namespaces both ends of a pair would otherwise get the same ifindex (2, 3,
/// ...), and the kernel's linkwatch treats a carrier change on a device whose ifindex equals
/// its peer's as non-urgent, batching it for up to one second. Until it runs, bridge ports
/// stay disabled, so the first packets (and the first ARP request) of a fresh lab are lost
/// and traffic only flows after the one-second ARP retry. Distinct indexes make every veth
/// carrier change urgent. Plans stay far below the ifindex limit.
const VETH_INDEX_BASE: usize = 1000;

/// Everything one namespace needs after its links exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NsWork {
    /// The namespace.
    pub(crate) ns: String,
    /// `ip -batch` input: lo up, bridges, addresses, masters, links up, routes.
    pub(crate) ip_batch: String,
    /// nft inputs, in plan order (applied before the sysctls, which loads conntrack).
    pub(crate) rulesets: Vec<String>,
    /// (dotted key, value) pairs, in plan order.
    pub(crate) sysctls: Vec<(String, String)>,
    /// Whether to flush conntrack at the end (router namespaces).
    pub(crate) flush_conntrack: bool,
    /// Whether the namespace has a bridge (whose ports apply waits for).
    pub(crate) has_bridge: bool,
}

/// The rendered plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scripts {
    /// `ip -batch` input creating every namespace.
    pub(crate) netns_add: String,
    /// `ip -batch` input creating every veth pair directly in its two namespaces.
    pub(crate) veths: String,
    /// Per-namespace work, in the plan's namespace order.
    pub(crate) per_ns: Vec<NsWork>,
}

/// True for a run id of exactly 6 lowercase hex characters.
pub(crate) fn valid_run_id(id: &RunId) -> bool {
    id.0.len() == 6
        && id
            .0
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// If `name` is a chaosnet namespace (`cn` + 6 lowercase hex + `-` + role), its run id.
pub(crate) fn run_of_ns(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(crate::plan::NS_PREFIX)?;
    let (id, role) = (rest.get(..6)?, rest.get(6..)?);
    let role = role.strip_prefix('-')?;
    (valid_run_id(&RunId(id.to_string())) && !role.is_empty()).then_some(id)
}

fn safe_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn check_ifname(ns: &str, name: &str) -> Result<(), ApplyError> {
    if name.is_empty()
        || name.len() > MAX_IFNAME_LEN
        || !safe_chars(name)
        || name == "."
        || name == ".."
        || name == "lo"
    {
        return Err(ApplyError::InvalidPlan(format!(
            "interface name {name:?} in {ns} is not valid (1..=15 of [A-Za-z0-9_.-], not `lo`)"
        )));
    }
    Ok(())
}

fn check_addr(ns: &str, what: &str, a: &IfAddr) -> Result<(), ApplyError> {
    if a.prefix > 32 {
        return Err(ApplyError::InvalidPlan(format!(
            "{what} in {ns}: prefix length /{} is more than 32",
            a.prefix
        )));
    }
    Ok(())
}

/// Checks `plan` before anything is created.
pub(crate) fn validate(plan: &Plan) -> Result<(), ApplyError> {
    let bad = |m: String| Err(ApplyError::InvalidPlan(m));
    if !valid_run_id(&plan.run_id) {
        return bad(format!(
            "run id {:?} is not 6 lowercase hex characters",
            plan.run_id.0
        ));
    }
    let prefix = plan.run_id.ns("");
    let mut namespaces = HashSet::new();
    for n in &plan.namespaces {
        let role = n.name.strip_prefix(&prefix).unwrap_or("");
        if role.is_empty() || n.name.len() > MAX_NS_LEN || !safe_chars(role) {
            return bad(format!(
                "namespace {:?} must be `{prefix}<role>` with role of [A-Za-z0-9_.-], at most {MAX_NS_LEN} characters in all",
                n.name
            ));
        }
        if !namespaces.insert(n.name.as_str()) {
            return bad(format!("namespace {} appears twice", n.name));
        }
    }
    let known = |ns: &str, what: &str| -> Result<(), ApplyError> {
        if namespaces.contains(ns) {
            Ok(())
        } else {
            Err(ApplyError::InvalidPlan(format!(
                "{what} refers to namespace {ns:?}, which the plan does not create"
            )))
        }
    };
    // Interface names per namespace, and which of them are bridges.
    let mut ifaces: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut bridges: HashSet<(&str, &str)> = HashSet::new();
    for b in &plan.bridges {
        known(&b.ns, &format!("bridge {}", b.name))?;
        check_ifname(&b.ns, &b.name)?;
        if let Some(a) = &b.addr {
            check_addr(&b.ns, &b.name, a)?;
        }
        if !ifaces.entry(&b.ns).or_default().insert(&b.name) {
            return bad(format!("interface {} appears twice in {}", b.name, b.ns));
        }
        bridges.insert((&b.ns, &b.name));
    }
    for v in &plan.veths {
        for end in [&v.a, &v.b] {
            known(&end.ns, &format!("veth end {}", end.name))?;
            check_ifname(&end.ns, &end.name)?;
            if let Some(a) = &end.addr {
                check_addr(&end.ns, &end.name, a)?;
            }
            if !ifaces.entry(&end.ns).or_default().insert(&end.name) {
                return bad(format!(
                    "interface {} appears twice in {}",
                    end.name, end.ns
                ));
            }
            if let Some(m) = &end.master
                && !bridges.contains(&(end.ns.as_str(), m.as_str()))
            {
                return bad(format!(
                    "veth end {} in {} names master {m:?}, which is not a bridge there",
                    end.name, end.ns
                ));
            }
        }
    }
    for r in &plan.routes {
        known(&r.ns, "a route")?;
        if let Some(d) = &r.dest {
            check_addr(&r.ns, "route destination", d)?;
        }
    }
    for s in &plan.sysctls {
        known(&s.ns, &format!("sysctl {}", s.key))?;
        let key_ok = !s.key.is_empty()
            && s.key.split('.').count() >= 2
            && s.key.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if !key_ok {
            return bad(format!("sysctl key {:?} in {} is not valid", s.key, s.ns));
        }
        if s.value.is_empty() || s.value.chars().any(char::is_control) {
            return bad(format!(
                "sysctl {} in {}: value {:?} is empty or has control characters",
                s.key, s.ns, s.value
            ));
        }
    }
    for r in &plan.rulesets {
        known(&r.ns, "an nft ruleset")?;
    }
    Ok(())
}

fn cidr(a: &IfAddr) -> String {
    format!("{}/{}", a.ip, a.prefix)
}

/// Renders a validated plan. Call [`validate`] first: names are pasted into scripts as is.
pub(crate) fn render(plan: &Plan) -> Scripts {
    let mut netns_add = String::new();
    for n in &plan.namespaces {
        let _ = writeln!(netns_add, "netns add {}", n.name);
    }
    let mut veths = String::new();
    for (k, v) in plan.veths.iter().enumerate() {
        // Distinct ifindexes for the two ends (see VETH_INDEX_BASE).
        let index = VETH_INDEX_BASE + 2 * k;
        let _ = writeln!(
            veths,
            "link add {} index {index} netns {} type veth peer name {} index {} netns {}",
            v.a.name,
            v.a.ns,
            v.b.name,
            index + 1,
            v.b.ns
        );
    }
    let mut per_ns = Vec::with_capacity(plan.namespaces.len());
    for n in &plan.namespaces {
        let ns = n.name.as_str();
        let mut s = String::from("link set lo up\n");
        for b in plan.bridges.iter().filter(|b| b.ns == ns) {
            let _ = writeln!(s, "link add {} type bridge", b.name);
            if let Some(a) = &b.addr {
                let _ = writeln!(s, "addr add {} dev {}", cidr(a), b.name);
            }
            let _ = writeln!(s, "link set {} up", b.name);
        }
        for end in plan
            .veths
            .iter()
            .flat_map(|v| [&v.a, &v.b])
            .filter(|e| e.ns == ns)
        {
            if let Some(a) = &end.addr {
                let _ = writeln!(s, "addr add {} dev {}", cidr(a), end.name);
            }
            if let Some(m) = &end.master {
                let _ = writeln!(s, "link set {} master {m}", end.name);
            }
            let _ = writeln!(s, "link set {} up", end.name);
        }
        // Routes last: a gateway must be on a connected subnet of an interface that is up.
        for r in plan.routes.iter().filter(|r| r.ns == ns) {
            match &r.dest {
                None => {
                    let _ = writeln!(s, "route add default via {}", r.via);
                }
                Some(d) => {
                    let _ = writeln!(s, "route add {} via {}", cidr(d), r.via);
                }
            }
        }
        per_ns.push(NsWork {
            ns: ns.to_string(),
            ip_batch: s,
            rulesets: plan
                .rulesets
                .iter()
                .filter(|r| r.ns == ns)
                .map(|r| r.text.clone())
                .collect(),
            sysctls: plan
                .sysctls
                .iter()
                .filter(|x| x.ns == ns)
                .map(|x| (x.key.clone(), x.value.clone()))
                .collect(),
            flush_conntrack: matches!(n.role, NsRole::Router { .. }),
            has_bridge: plan.bridges.iter().any(|b| b.ns == ns),
        });
    }
    Scripts {
        netns_add,
        veths,
        per_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Bridge, Namespace, Route, Ruleset, Sysctl, Veth, VethEnd};
    use std::net::Ipv4Addr;

    fn addr(s: &str, prefix: u8) -> Option<IfAddr> {
        Some(IfAddr {
            ip: s.parse().expect("test address"),
            prefix,
        })
    }

    fn tiny() -> Plan {
        let run = RunId("a1b2c3".into());
        let (inet, r, h) = (run.ns("inet"), run.ns("r0"), run.ns("h0"));
        Plan {
            namespaces: vec![
                Namespace {
                    name: inet.clone(),
                    role: NsRole::Internet,
                },
                Namespace {
                    name: r.clone(),
                    role: NsRole::Router {
                        site: "s".into(),
                        layer: 0,
                    },
                },
                Namespace {
                    name: h.clone(),
                    role: NsRole::Host { agent: "a".into() },
                },
            ],
            bridges: vec![
                Bridge {
                    ns: inet.clone(),
                    name: "br0".into(),
                    addr: None,
                },
                Bridge {
                    ns: r.clone(),
                    name: "br0".into(),
                    addr: addr("10.0.1.1", 24),
                },
            ],
            veths: vec![
                Veth {
                    a: VethEnd {
                        ns: r.clone(),
                        name: "wan".into(),
                        addr: addr("198.18.0.10", 15),
                        master: None,
                    },
                    b: VethEnd {
                        ns: inet.clone(),
                        name: "r0".into(),
                        addr: None,
                        master: Some("br0".into()),
                    },
                },
                Veth {
                    a: VethEnd {
                        ns: h.clone(),
                        name: "eth0".into(),
                        addr: addr("10.0.1.2", 24),
                        master: None,
                    },
                    b: VethEnd {
                        ns: r.clone(),
                        name: "h0".into(),
                        addr: None,
                        master: Some("br0".into()),
                    },
                },
            ],
            routes: vec![Route {
                ns: h.clone(),
                dest: None,
                via: Ipv4Addr::new(10, 0, 1, 1),
            }],
            sysctls: vec![Sysctl {
                ns: r.clone(),
                key: "net.ipv4.ip_forward".into(),
                value: "1".into(),
            }],
            rulesets: vec![Ruleset {
                ns: r.clone(),
                text: "table ip t {}\n".into(),
            }],
            sites: vec![],
            agents: vec![],
            run_id: run,
        }
    }

    #[test]
    fn renders_batches_in_dependency_order() {
        let p = tiny();
        validate(&p).expect("valid");
        let s = render(&p);
        assert_eq!(
            s.netns_add,
            "netns add cna1b2c3-inet\nnetns add cna1b2c3-r0\nnetns add cna1b2c3-h0\n"
        );
        assert_eq!(
            s.veths,
            "link add wan index 1000 netns cna1b2c3-r0 type veth peer name r0 index 1001 netns cna1b2c3-inet\n\
             link add eth0 index 1002 netns cna1b2c3-h0 type veth peer name h0 index 1003 netns cna1b2c3-r0\n"
        );
        assert_eq!(
            s.per_ns[1].ip_batch,
            "link set lo up\nlink add br0 type bridge\naddr add 10.0.1.1/24 dev br0\n\
             link set br0 up\naddr add 198.18.0.10/15 dev wan\nlink set wan up\n\
             link set h0 master br0\nlink set h0 up\n"
        );
        assert_eq!(
            s.per_ns[2].ip_batch,
            "link set lo up\naddr add 10.0.1.2/24 dev eth0\nlink set eth0 up\n\
             route add default via 10.0.1.1\n"
        );
        assert!(s.per_ns[1].flush_conntrack && !s.per_ns[2].flush_conntrack);
        assert_eq!(s.per_ns[1].rulesets.len(), 1);
        assert_eq!(s.per_ns[1].sysctls[0].0, "net.ipv4.ip_forward");
    }

    #[test]
    fn rejects_foreign_or_unsafe_names() {
        let mut p = tiny();
        p.namespaces[0].name = "docker-netns".into();
        assert!(validate(&p).is_err());

        let mut p = tiny();
        p.veths[0].a.name = "wan\nnetns del x".into();
        assert!(validate(&p).is_err());

        let mut p = tiny();
        p.veths[0].a.name = "a-very-long-interface".into();
        assert!(validate(&p).is_err());

        let mut p = tiny();
        p.veths[1].b.master = Some("br9".into());
        assert!(
            validate(&p)
                .expect_err("invalid")
                .to_string()
                .contains("br9")
        );

        let mut p = tiny();
        p.sysctls[0].key = "../../etc/passwd".into();
        assert!(validate(&p).is_err());

        let mut p = tiny();
        p.routes[0].ns = "cna1b2c3-nope".into();
        assert!(
            validate(&p)
                .expect_err("invalid")
                .to_string()
                .contains("does not create")
        );

        let mut p = tiny();
        p.run_id = RunId("XYZ".into());
        assert!(validate(&p).is_err());
    }

    #[test]
    fn recognises_chaosnet_namespaces() {
        assert_eq!(run_of_ns("cna1b2c3-inet"), Some("a1b2c3"));
        assert_eq!(run_of_ns("cna1b2c3-"), None);
        assert_eq!(run_of_ns("cnA1b2c3-inet"), None);
        assert_eq!(run_of_ns("cna1b2c-inet"), None);
        assert_eq!(run_of_ns("cnzz0001-a"), None);
        assert_eq!(run_of_ns("other"), None);
    }
}
