//! nftables rulesets of the NAT lab, rendered from the templates in `netns-scripts/`.
//!
//! What it does: holds the `.nft` templates (compiled in with `include_str!`, so the files a
//! person reads and runs by hand are the rules the controller applies) and fills in their
//! placeholders with pure string substitution:
//!
//! | placeholder     | meaning                                                        |
//! |-----------------|----------------------------------------------------------------|
//! | `@RUN_ID@`      | run id, in the table's comment                                 |
//! | `@SITE@`        | site name, in the table's comment                              |
//! | `@WAN_IF@`      | the router's WAN interface (`wan`)                             |
//! | `@WAN_IP@`      | the router's WAN address: its public address                  |
//! | `@LAN_IF@`      | the router's LAN bridge (`br0`)                                |
//! | `@LAN_NET@`     | the LAN subnet, e.g. `10.3.0.0/24`                             |
//! | `@MAP_TIMEOUT@` | lifetime in seconds of the NAT's own mapping table entries    |
//! | `@HP@`          | empty with hairpinning on; a `# hairpin off: ` comment prefix otherwise |
//! | `@POD@`         | empty in a pod ([`pod_ruleset`]); a `# not in a pod: ` comment prefix otherwise |
//! | `@PODTCP@`      | as `@POD@`, for the rule that opens the pod's TCP services         |
//! | `@POD_TCP@`     | the pod's TCP service ports, e.g. `9100, 9101`                     |
//!
//! Behaviour per type (RFC 4787 terms; each template's header says more):
//! - port-restricted cone (EIM + APDF): `masquerade`, inbound only established/related;
//! - symmetric (EDM + APDF): `masquerade random`, inbound only established/related;
//! - full cone (EIM + EIF): `snat` plus a dynamic map "public port -> LAN ip . port" written
//!   after source NAT, and an inbound `dnat` through that map (UDP);
//! - restricted cone (EIM + ADF): the full cone's map plus a dynamic set of
//!   "public port . remote IP" pairs; inbound `dnat` only for pairs in the set (UDP);
//! - carrier-grade NAT: the port-restricted template on the carrier router (EIM + APDF, as
//!   RFC 6888 asks of a CGN), stacked in front of a home router of any type.
//!
//! In a pod ([`pod_ruleset`], Kubernetes or its Docker emulation) router and agent share one
//! network namespace: the pod's `eth0` is the WAN, the agent binds an inner address on `lo`,
//! and its packets are locally generated, so translation happens in `postrouting` as
//! for a LAN host and inbound packets meet the `input` chain instead of `forward`. The same
//! templates serve: the `@POD@` rules accept in `input` what the mapping table let in (full
//! and restricted cone) and the pod's own TCP services; everything else unsolicited on the
//! WAN is dropped as on a router.
//!
//! Every ruleset is one `table ip chaosnet` commented with the run id, declared, deleted and
//! defined again in one transaction (idempotent under `nft -f`, works on nft 1.0.6), with a
//! nat prerouting chain even where it is empty, a forward chain with policy drop, and an
//! input chain that drops unsolicited packets on the WAN.
//!
//! What it does not do: run `nft`, check syntax (the root-only test in
//! `tests/planner.rs` runs `nft -c` on every rendered ruleset), flush conntrack after a
//! change (the applier must), or emulate NAT for TCP beyond port-restricted behaviour.

use std::net::Ipv4Addr;

use crate::plan::{IfAddr, NatKind, RunId};

/// Template of the port-restricted cone router (EIM + APDF).
pub const PORT_RESTRICTED_CONE_TEMPLATE: &str =
    include_str!("../../netns-scripts/port-restricted-cone.nft");
/// Template of the symmetric router (EDM + APDF).
pub const SYMMETRIC_TEMPLATE: &str = include_str!("../../netns-scripts/symmetric.nft");
/// Template of the full cone router (EIM + EIF).
pub const FULL_CONE_TEMPLATE: &str = include_str!("../../netns-scripts/full-cone.nft");
/// Template of the restricted cone router (EIM + ADF).
pub const RESTRICTED_CONE_TEMPLATE: &str = include_str!("../../netns-scripts/restricted-cone.nft");
/// Template of the internet namespace (a tagged, empty table).
pub const INTERNET_TEMPLATE: &str = include_str!("../../netns-scripts/internet.nft");

/// Name of the nftables table every template defines (in the `ip` family).
pub const TABLE: &str = "chaosnet";

/// What `@HP@` becomes when hairpinning is off: it turns the hairpin rules into comments,
/// so the rendered ruleset still shows what was left out.
const HAIRPIN_OFF: &str = "# hairpin off: ";
/// What `@POD@` and `@PODTCP@` become on a router namespace of the lab.
const NOT_IN_POD: &str = "# not in a pod: ";
/// What `@PODTCP@` becomes in a pod without TCP services.
const NO_POD_TCP: &str = "# no TCP services: ";

/// The interface of a pod's inner (agent) address: the agent binds it on `lo`, so its
/// packets are locally generated and leave by the WAN, source-translated.
pub const POD_INNER_IF: &str = "lo";

/// Everything the ruleset of a pod's router container needs besides its NAT kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodParams {
    /// The run, named in the table's comment.
    pub run_id: RunId,
    /// The site (the agent group), named in the table's comment.
    pub site: String,
    /// The pod's interface (`eth0`): the site's WAN.
    pub wan_if: String,
    /// The pod's address: the public address the NAT translates to.
    pub wan_ip: Ipv4Addr,
    /// The agent's inner address, on [`POD_INNER_IF`]; its P2P socket binds it.
    pub inner_ip: Ipv4Addr,
    /// TCP ports of the pod's own services (metrics, control API), reachable on the pod's
    /// address; nothing else unsolicited gets in.
    pub open_tcp_ports: Vec<u16>,
    /// Lifetime of the NAT's own mapping table entries, in seconds (as
    /// [`RouterParams::mapping_timeout_s`]).
    pub mapping_timeout_s: u32,
}

/// Everything a router template needs besides its NAT kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterParams {
    /// The run, named in the table's comment.
    pub run_id: RunId,
    /// The site, named in the table's comment.
    pub site: String,
    /// WAN interface name inside the router namespace.
    pub wan_if: String,
    /// WAN address: the public address the NAT translates to.
    pub wan_ip: Ipv4Addr,
    /// LAN interface (the bridge) inside the router namespace.
    pub lan_if: String,
    /// LAN subnet (network address and prefix; host bits are cleared when rendering).
    pub lan_net: IfAddr,
    /// Lifetime of the NAT's own mapping table entries (full/restricted cone filtering and
    /// hairpinning), in seconds, refreshed by every packet of the mapping. The planner uses
    /// the site's conntrack `udp_stream_s`: as long as conntrack may keep a UDP binding.
    pub mapping_timeout_s: u32,
    /// Whether a LAN host can reach another LAN host through the public address.
    pub hairpin: bool,
}

/// The template for a NAT kind; `None` for [`NatKind::None`] (no router at all).
pub fn template(kind: NatKind) -> Option<&'static str> {
    match kind {
        NatKind::None => None,
        NatKind::FullCone => Some(FULL_CONE_TEMPLATE),
        NatKind::RestrictedCone => Some(RESTRICTED_CONE_TEMPLATE),
        NatKind::PortRestrictedCone => Some(PORT_RESTRICTED_CONE_TEMPLATE),
        NatKind::Symmetric => Some(SYMMETRIC_TEMPLATE),
    }
}

/// The ruleset of a site's (home) router of this kind; `None` for [`NatKind::None`], whose
/// hosts sit on the internet without a router.
pub fn router_ruleset(kind: NatKind, p: &RouterParams) -> Option<String> {
    template(kind).map(|t| render_router(t, p))
}

/// The ruleset of a carrier-grade NAT router: endpoint-independent mapping and
/// address-and-port-dependent filtering (the port-restricted cone template), as RFC 6888
/// (REQ-1, via RFC 4787) asks of a CGN. Its LAN is the carrier network the home router's
/// WAN sits on.
pub fn carrier_ruleset(p: &RouterParams) -> String {
    render_router(PORT_RESTRICTED_CONE_TEMPLATE, p)
}

/// The ruleset of the internet namespace: an empty table tagged with the run id (the
/// internet neither translates nor filters).
pub fn internet_ruleset(run_id: &RunId) -> String {
    render(INTERNET_TEMPLATE, &[("@RUN_ID@", sanitize(&run_id.0))])
}

/// The ruleset of a pod's router container for NAT kind `kind`; `None` for
/// [`NatKind::None`] (a public pod runs no router).
pub fn pod_ruleset(kind: NatKind, p: &PodParams) -> Option<String> {
    let as_router = RouterParams {
        run_id: p.run_id.clone(),
        site: p.site.clone(),
        wan_if: p.wan_if.clone(),
        wan_ip: p.wan_ip,
        lan_if: POD_INNER_IF.to_string(),
        lan_net: IfAddr {
            ip: p.inner_ip,
            prefix: 32,
        },
        mapping_timeout_s: p.mapping_timeout_s,
        // One agent per pod: there is no LAN neighbour to hairpin to.
        hairpin: false,
    };
    let ports: Vec<String> = p.open_tcp_ports.iter().map(u16::to_string).collect();
    let pod = [
        ("@POD@", String::new()),
        (
            "@PODTCP@",
            if ports.is_empty() {
                NO_POD_TCP.to_string()
            } else {
                String::new()
            },
        ),
        (
            "@POD_TCP@",
            if ports.is_empty() {
                "-".to_string()
            } else {
                ports.join(", ")
            },
        ),
    ];
    template(kind).map(|t| render_with(t, &as_router, pod))
}

fn render_router(template: &str, p: &RouterParams) -> String {
    let off = [
        ("@POD@", NOT_IN_POD.to_string()),
        ("@PODTCP@", NOT_IN_POD.to_string()),
        ("@POD_TCP@", "-".to_string()),
    ];
    render_with(template, p, off)
}

fn render_with(template: &str, p: &RouterParams, pod: [(&str, String); 3]) -> String {
    let net = network_of(p.lan_net);
    let [pod0, pod1, pod2] = pod;
    render(
        template,
        &[
            pod0,
            pod1,
            pod2,
            ("@RUN_ID@", sanitize(&p.run_id.0)),
            ("@SITE@", sanitize(&p.site)),
            ("@WAN_IF@", sanitize(&p.wan_if)),
            ("@WAN_IP@", p.wan_ip.to_string()),
            ("@LAN_IF@", sanitize(&p.lan_if)),
            ("@LAN_NET@", format!("{}/{}", net.ip, net.prefix)),
            ("@MAP_TIMEOUT@", p.mapping_timeout_s.max(1).to_string()),
            (
                "@HP@",
                if p.hairpin {
                    String::new()
                } else {
                    HAIRPIN_OFF.to_string()
                },
            ),
        ],
    )
}

/// Replaces every placeholder. Placeholders never appear in a value (values are sanitized
/// to `[A-Za-z0-9._-]` or are numbers and addresses), so the order does not matter.
fn render(template: &str, values: &[(&str, String)]) -> String {
    values
        .iter()
        .fold(template.to_string(), |text, (key, value)| {
            text.replace(key, value)
        })
}

/// Keeps only characters that are safe inside an nft identifier or quoted comment. The
/// planner passes validated names, so this changes nothing in practice; it guarantees that
/// no value can break out of its quotes or inject a rule.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect()
}

/// The network address of a subnet (host bits cleared).
pub fn network_of(a: IfAddr) -> IfAddr {
    let prefix = a.prefix.min(32);
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    IfAddr {
        ip: Ipv4Addr::from(u32::from(a.ip) & mask),
        prefix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(hairpin: bool) -> RouterParams {
        RouterParams {
            run_id: RunId("abc123".into()),
            site: "home1".into(),
            wan_if: "wan".into(),
            wan_ip: Ipv4Addr::new(198, 19, 1, 1),
            lan_if: "br0".into(),
            lan_net: IfAddr {
                ip: Ipv4Addr::new(10, 1, 0, 1),
                prefix: 24,
            },
            mapping_timeout_s: 300,
            hairpin,
        }
    }

    const KINDS: [NatKind; 4] = [
        NatKind::FullCone,
        NatKind::RestrictedCone,
        NatKind::PortRestrictedCone,
        NatKind::Symmetric,
    ];

    /// Lines that are rules (not comments or blank).
    fn rules(text: &str) -> Vec<&str> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    }

    #[test]
    fn every_placeholder_is_filled() {
        for kind in KINDS {
            for hp in [false, true] {
                let text = router_ruleset(kind, &params(hp)).expect("a router kind");
                for line in rules(&text) {
                    // `@name` is nft's set reference; a placeholder would be `@UPPER@`.
                    assert!(
                        !line
                            .split('@')
                            .skip(1)
                            .any(|w| w.chars().next().is_some_and(|c| c.is_ascii_uppercase())),
                        "{kind:?}: unfilled placeholder in {line:?}"
                    );
                }
            }
        }
        assert!(!internet_ruleset(&RunId("abc123".into())).contains("@RUN_ID@"));
    }

    #[test]
    fn none_has_no_router() {
        assert!(router_ruleset(NatKind::None, &params(false)).is_none());
    }

    #[test]
    fn every_ruleset_is_idempotent_tagged_and_has_the_pitfall_guards() {
        // (name, text, whether unsolicited inbound UDP may be let in through the map)
        let mut all: Vec<(String, String, bool)> = KINDS
            .iter()
            .map(|k| {
                (
                    format!("{k:?}"),
                    router_ruleset(*k, &params(false)).expect("router kind"),
                    matches!(k, NatKind::FullCone | NatKind::RestrictedCone),
                )
            })
            .collect();
        all.push(("carrier".into(), carrier_ruleset(&params(false)), false));
        for (name, text, inbound) in &all {
            let r = rules(text);
            // Declare, delete, define: idempotent without `destroy` (nft 1.0.6).
            assert_eq!(r[0], "table ip chaosnet { }", "{name}");
            assert_eq!(r[1], "delete table ip chaosnet", "{name}");
            assert_eq!(r[2], "table ip chaosnet {", "{name}");
            assert!(
                text.contains("comment \"chaosnet run abc123 site home1:"),
                "{name}"
            );
            assert!(
                text.contains("type nat hook prerouting priority dstnat;"),
                "{name}: nat prerouting chain missing"
            );
            assert!(
                text.contains("type filter hook forward priority filter; policy drop;"),
                "{name}"
            );
            assert!(r.contains(&"ct state established,related accept"), "{name}");
            assert_eq!(
                r.contains(&"iifname \"wan\" oifname \"br0\" ct status dnat accept"),
                *inbound,
                "{name}: forward lets mapped inbound in only for full/restricted cone"
            );
            // Unsolicited WAN input is dropped, after letting replies in.
            let est = r
                .iter()
                .position(|l| *l == "iifname \"wan\" ct state established,related accept")
                .expect("input accepts replies");
            let drop = r
                .iter()
                .position(|l| *l == "iifname \"wan\" drop")
                .expect("input drops the rest");
            assert!(est < drop, "{name}");
            assert!(
                text.contains("oifname \"wan\" ip saddr 10.1.0.0/24"),
                "{name}: LAN traffic out of the WAN is translated"
            );
        }
    }

    #[test]
    fn each_kind_renders_its_characteristic_rule() {
        let p = params(false);
        let prc = router_ruleset(NatKind::PortRestrictedCone, &p).expect("router");
        let sym = router_ruleset(NatKind::Symmetric, &p).expect("router");
        let full = router_ruleset(NatKind::FullCone, &p).expect("router");
        let restr = router_ruleset(NatKind::RestrictedCone, &p).expect("router");

        assert!(rules(&prc).contains(&"oifname \"wan\" ip saddr 10.1.0.0/24 masquerade"));
        assert!(!prc.contains("masquerade random"));
        assert!(
            !rules(&prc)
                .iter()
                .any(|l| l.contains("iifname \"wan\" ip daddr"))
        );

        assert!(rules(&sym).contains(&"oifname \"wan\" ip saddr 10.1.0.0/24 masquerade random"));

        let eif = "iifname \"wan\" ip daddr 198.19.1.1 meta l4proto udp dnat ip to udp dport map @mappings";
        assert!(
            rules(&full).contains(&eif),
            "full cone: inbound through the map"
        );
        assert!(
            rules(&full).contains(&"oifname \"wan\" ip saddr 10.1.0.0/24 snat ip to 198.19.1.1")
        );
        assert!(full.contains("update @mappings { udp sport timeout 300s : ct original ip saddr . ct original proto-src }"));
        // The map is written after source NAT, so its key is the public port.
        assert!(full.contains("type filter hook postrouting priority srcnat + 1;"));

        let adf = "iifname \"wan\" ip daddr 198.19.1.1 meta l4proto udp udp dport . ip saddr @contacted dnat ip to udp dport map @mappings";
        assert!(
            rules(&restr).contains(&adf),
            "restricted cone: inbound only from contacted IPs"
        );
        assert!(
            !rules(&restr).contains(&eif),
            "restricted cone must not be full cone"
        );
        assert!(restr.contains("update @contacted { udp sport . ip daddr timeout 300s }"));
    }

    #[test]
    fn hairpin_rules_are_comments_unless_enabled() {
        let hp_dnat = "iifname \"br0\" ip daddr 198.19.1.1 meta l4proto udp dnat ip to udp dport map @mappings";
        for kind in KINDS {
            let off = router_ruleset(kind, &params(false)).expect("router");
            let on = router_ruleset(kind, &params(true)).expect("router");
            assert!(!rules(&off).contains(&hp_dnat), "{kind:?}");
            assert!(off.contains(&format!("{HAIRPIN_OFF}{hp_dnat}")), "{kind:?}");
            assert!(rules(&on).contains(&hp_dnat), "{kind:?}");
            assert!(
                rules(&on).iter().any(|l| l.starts_with(
                    "ip saddr 10.1.0.0/24 ip daddr 10.1.0.0/24 ct status dnat snat ip to 198.19.1.1"
                )),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn values_cannot_inject_rules() {
        let mut p = params(false);
        p.site = "x\" ; drop\n flush ruleset".into();
        let text = router_ruleset(NatKind::FullCone, &p).expect("router");
        assert!(text.contains("site xdropflushruleset:"));
        assert!(!text.contains("flush ruleset"));
    }

    #[test]
    fn lan_net_is_rendered_as_a_network() {
        let text = router_ruleset(NatKind::Symmetric, &params(false)).expect("router");
        assert!(text.contains("10.1.0.0/24"));
        assert!(!text.contains("10.1.0.1/24"));
        assert_eq!(
            network_of(IfAddr {
                ip: Ipv4Addr::new(100, 64, 7, 9),
                prefix: 24
            }),
            IfAddr {
                ip: Ipv4Addr::new(100, 64, 7, 0),
                prefix: 24
            }
        );
    }
    fn pod(ports: Vec<u16>) -> PodParams {
        PodParams {
            run_id: RunId("abc123".into()),
            site: "prc".into(),
            wan_if: "eth0".into(),
            wan_ip: Ipv4Addr::new(198, 18, 240, 21),
            inner_ip: Ipv4Addr::new(10, 77, 0, 2),
            open_tcp_ports: ports,
            mapping_timeout_s: 120,
        }
    }

    #[test]
    fn pod_rulesets_translate_the_inner_address_and_accept_in_input() {
        assert!(pod_ruleset(NatKind::None, &pod(vec![9100])).is_none());
        for kind in KINDS {
            let text = pod_ruleset(kind, &pod(vec![9100, 9101])).expect("a router kind");
            let r = rules(&text);
            assert!(
                !text.contains("@POD") && !text.contains("@WAN") && !text.contains("@LAN"),
                "{kind:?}: unfilled placeholder\n{text}"
            );
            assert!(
                r.iter()
                    .any(|l| l.starts_with("oifname \"eth0\" ip saddr 10.77.0.2/32 ")),
                "{kind:?}: the inner address is translated on the WAN\n{text}"
            );
            assert!(
                r.contains(&"iifname \"eth0\" meta l4proto tcp tcp dport { 9100, 9101 } accept"),
                "{kind:?}: the pod's TCP services are open\n{text}"
            );
            let dnat_in = r.contains(&"iifname \"eth0\" ct status dnat accept");
            let eif = matches!(kind, NatKind::FullCone | NatKind::RestrictedCone);
            assert_eq!(
                dnat_in, eif,
                "{kind:?}: input accepts the map's dnat only for EIF/ADF"
            );
            // The drop stays the last word on the WAN.
            let last_wan = r.iter().rev().find(|l| l.starts_with("iifname \"eth0\""));
            assert_eq!(last_wan, Some(&"iifname \"eth0\" drop"), "{kind:?}");
            assert!(
                !r.iter()
                    .any(|l| l.contains("dnat ip to") && l.contains("\"lo\"")),
                "{kind:?}: no hairpin in a pod"
            );
            // No TCP services: the rule is a comment, not an empty set nft would reject.
            let none = pod_ruleset(kind, &pod(Vec::new())).expect("a router kind");
            assert!(
                !rules(&none).iter().any(|l| l.contains("tcp dport")),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn router_rulesets_keep_the_pod_rules_as_comments() {
        for kind in KINDS {
            let text = router_ruleset(kind, &params(true)).expect("a router kind");
            assert!(
                !rules(&text).iter().any(|l| l.contains("tcp dport")
                    || l.contains("ct status dnat accept") && l.starts_with("iifname \"wan\" ct")),
                "{kind:?}: pod rules are live on a router\n{text}"
            );
            assert!(text.contains(NOT_IN_POD), "{kind:?}");
        }
    }
}
