//! Virtual-time tests of connectivity over the harness's seeded NAT models: the NAT-pair
//! matrix, birthday probing, multi-hop signalling, forged and replayed signals, the signal
//! rate limit, relay limits, and life after the seeds are gone.

use std::collections::BTreeMap;
use std::time::Duration;

use chaosnet_proto::{
    Activity, ActivityKind, Command, CommandResult, ConnMode, Countersign, ErrorCode, Event,
    NatType, NodeConfig, NodeEvent, Request, Response, Signal, SignalOutcome, TaskOutcome,
};
use chaosnet_sim::{LinkModel, NatBehaviour, SimConfig, World};

/// Where a node sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Site {
    Public,
    FullCone,
    Restricted,
    PortRestricted,
    Symmetric,
    /// Port-restricted behind port-restricted.
    Cgnat,
}

impl Site {
    const ALL: [Site; 6] = [
        Site::Public,
        Site::FullCone,
        Site::Restricted,
        Site::PortRestricted,
        Site::Symmetric,
        Site::Cgnat,
    ];

    fn label(self) -> &'static str {
        match self {
            Site::Public => "public",
            Site::FullCone => "full-cone",
            Site::Restricted => "restricted",
            Site::PortRestricted => "port-restr",
            Site::Symmetric => "symmetric",
            Site::Cgnat => "cgnat",
        }
    }
}

/// A link that loses everything.
const BLOCKED: LinkModel = LinkModel {
    latency_ms: 20,
    jitter_ms: 5,
    loss_pct: 100.0,
};

/// Longer than the NAT models' mapping timeout (30 s).
const PERMITS_EXPIRE: Duration = Duration::from_secs(35);

fn quiet(c: &mut NodeConfig) {
    c.task_rate_per_s = 0.0;
}

/// Adds a node at `site` (with a NAT of its own), bootstrapping from `seeds`.
fn place(w: &mut World, site: Site, seeds: &[usize], tweak: fn(&mut NodeConfig)) -> usize {
    let nat = match site {
        Site::Public => return w.add_node(seeds, tweak),
        Site::FullCone => w.add_nat(NatBehaviour::full_cone()),
        Site::Restricted => w.add_nat(NatBehaviour::restricted_cone()),
        Site::PortRestricted => w.add_nat(NatBehaviour::port_restricted_cone()),
        Site::Symmetric => w.add_nat(NatBehaviour::symmetric()),
        Site::Cgnat => {
            let outer = w.add_nat(NatBehaviour::port_restricted_cone());
            w.add_nat_behind(outer, NatBehaviour::port_restricted_cone())
        }
    };
    w.add_node_behind(nat, seeds, tweak)
}

fn world(seed: u64) -> World {
    World::new(SimConfig {
        seed,
        ..SimConfig::default()
    })
}

/// `n` public seeds, started at t=0.
fn seeds(w: &mut World, n: usize) -> Vec<usize> {
    let s: Vec<usize> = (0..n).map(|_| w.add_node(&[], quiet)).collect();
    for &i in &s {
        w.start_at(i, w.now());
    }
    s
}

fn start_all(w: &mut World, nodes: &[usize]) {
    for (k, &i) in nodes.iter().enumerate() {
        w.start_at(i, w.now() + Duration::from_millis(10 * k as u64));
    }
}

/// Commands a fresh connect from `a` to `b` and runs until it ends (at most 60 s).
fn connect(w: &mut World, a: usize, b: usize) -> CommandResult {
    let peer = w.node(b).node.id();
    let id = w.command(a, Command::Connect { peer, fresh: true });
    for _ in 0..600 {
        if w.result(a, id).is_some() {
            break;
        }
        w.run_for(Duration::from_millis(100));
    }
    w.result(a, id)
        .cloned()
        .expect("a connect ends within 60 s")
}

fn count(w: &World, i: usize, f: impl Fn(&Event) -> bool) -> usize {
    w.node(i).events.iter().filter(|(_, e)| f(e)).count()
}

fn signal_outcomes(w: &World, i: usize, outcome: SignalOutcome) -> usize {
    count(
        w,
        i,
        |e| matches!(e, Event::Signal { outcome: o } if *o == outcome),
    )
}

fn punches_started(w: &World, i: usize) -> usize {
    count(w, i, |e| matches!(e, Event::PunchStarted { .. }))
}

/// The best path theory allows for a fresh connect from `a` to `b`: a target without a NAT
/// or behind a full cone takes a plain dial; two endpoint-dependent mappings need a relay;
/// anything else punches (birthday probing where one side is symmetric and the other
/// filters by port).
fn best(a: Site, b: Site) -> ConnMode {
    match (a, b) {
        (_, Site::Public | Site::FullCone) => ConnMode::Direct,
        (Site::Symmetric, Site::Symmetric) => ConnMode::Relayed,
        _ => ConnMode::Punched,
    }
}

/// Whether the pair needs birthday probing: one side symmetric, the other filtering by port.
fn needs_birthday(a: Site, b: Site) -> bool {
    let pf = |s: Site| matches!(s, Site::PortRestricted | Site::Cgnat);
    (a == Site::Symmetric && pf(b)) || (b == Site::Symmetric && pf(a))
}

struct PairOutcome {
    result: CommandResult,
    birthday_hit: Option<u32>,
    /// The mode once a relayed result had its chance to upgrade.
    settled: Option<ConnMode>,
    /// The target's own NAT classification when the connect ended.
    target_nat: NatType,
    /// The peer NAT type every punched or relayed attempt of the dialer was labelled with.
    signalled_attempts: Vec<(ConnMode, NatType)>,
}

/// Birthday probing fails now and then (≈2% with the default budget); the core then relays
/// and tries to upgrade a few seconds later. The mode after that is what a pair ends with.
fn settle(w: &mut World, a: usize, r: &CommandResult) -> Option<ConnMode> {
    if r.mode != Some(ConnMode::Relayed) {
        return r.mode;
    }
    let before = count(w, a, |e| matches!(e, Event::Upgraded { .. }));
    w.run_for(Duration::from_secs(30));
    let upgraded = w.node(a).events.iter().filter_map(|(_, e)| match e {
        Event::Upgraded { to } => Some(*to),
        _ => None,
    });
    upgraded.skip(before).last().or(r.mode)
}

/// A fresh world with three public seeds and `a`, `b` at their sites; `a` connects to `b`.
fn run_pair(seed: u64, a: Site, b: Site, same_lan: bool) -> PairOutcome {
    let mut w = world(seed);
    let s = seeds(&mut w, 3);
    let (ia, ib) = if same_lan {
        let nat = w.add_nat(NatBehaviour::port_restricted_cone());
        let ia = w.add_node_behind(nat, &s, quiet);
        let ib = w.add_node_behind(nat, &s, quiet);
        (ia, ib)
    } else {
        (place(&mut w, a, &s, quiet), place(&mut w, b, &s, quiet))
    };
    // They must not meet before the connect: a live connection, or NAT permits left by
    // packets they sent each other, would make any connect trivially direct.
    w.set_link(ia, ib, BLOCKED);
    start_all(&mut w, &[ia, ib]);
    w.run_for(Duration::from_secs(20));
    assert!(w.node(ia).node.joined() && w.node(ib).node.joined());
    w.run_for(PERMITS_EXPIRE);
    w.set_link(ia, ib, LinkModel::default());
    let result = connect(&mut w, ia, ib);
    let target_nat = w.node(ib).node.nat_type();
    let settled = settle(&mut w, ia, &result);
    let signalled_attempts = w
        .node(ia)
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::ConnectAttempt { path, peer_nat, .. } if *path != ConnMode::Direct => {
                Some((*path, *peer_nat))
            }
            _ => None,
        })
        .collect();
    let birthday_hit = w
        .birthday_records()
        .iter()
        .filter(|r| r.connected && ([r.easy, r.hard] == [ia, ib] || [r.easy, r.hard] == [ib, ia]))
        .find_map(|r| r.probes_to_hit);
    PairOutcome {
        result,
        birthday_hit,
        settled,
        target_nat,
        signalled_attempts,
    }
}

/// Quiet, and without the dial-back test: the mapping alone classifies.
fn untested(c: &mut NodeConfig) {
    quiet(c);
    c.dialback_interval_ms = 0;
}

#[test]
fn mappings_are_classified_from_observed_addresses() {
    let mut w = world(11);
    let s = seeds(&mut w, 3);
    let nodes: Vec<(Site, usize)> = Site::ALL
        .iter()
        .map(|&site| (site, place(&mut w, site, &s, untested)))
        .collect();
    let ids: Vec<usize> = nodes.iter().map(|n| n.1).collect();
    start_all(&mut w, &ids);
    w.run_for(Duration::from_secs(20));
    for (site, i) in nodes {
        let want = match site {
            Site::Public => NatType::Public,
            Site::Symmetric => NatType::Symmetric,
            _ => NatType::Cone,
        };
        assert_eq!(w.node(i).node.nat_type(), want, "{site:?}");
    }
}

#[test]
fn the_nat_pair_matrix_reaches_the_best_path_for_every_pair() {
    let mut table: BTreeMap<(Site, Site), String> = BTreeMap::new();
    let mut bad = Vec::new();
    let mut seed = 100;
    for a in Site::ALL {
        for b in Site::ALL {
            seed += 1;
            let o = run_pair(seed, a, b, false);
            let r = &o.result;
            let want = best(a, b);
            let birthday_ok = |o: &PairOutcome| {
                !needs_birthday(a, b)
                    || o.result.birthday_probes.is_some()
                    || o.birthday_hit.is_some()
            };
            // A missed birthday punch may only be made good by the upgrade that follows it.
            let ok = r.outcome == TaskOutcome::Ok
                && ((r.mode == Some(want) && birthday_ok(&o))
                    || (needs_birthday(a, b) && o.settled == Some(want)));
            let probes = r.birthday_probes.or(o.birthday_hit);
            let mut cell = match (r.mode, probes) {
                (Some(m), Some(n)) => format!("{} ({n}p)", m.as_str()),
                (Some(m), None) => m.as_str().to_string(),
                (None, _) => format!("FAILED {}", r.outcome.as_str()),
            };
            if o.settled != r.mode
                && let Some(m) = o.settled
            {
                cell = format!("{cell} -> {}", m.as_str());
            }
            if !ok {
                bad.push(format!(
                    "{} -> {}: got {cell}, want {} (attempts {:?})",
                    a.label(),
                    b.label(),
                    want.as_str(),
                    r.attempts
                ));
            }
            // Punches and relays follow a signal answer, which carries the target's NAT type:
            // their attempts (and so the metrics' NAT-pair labels) name it.
            if want != ConnMode::Direct && o.signalled_attempts.is_empty() {
                bad.push(format!(
                    "{} -> {}: no punched or relayed attempt",
                    a.label(),
                    b.label()
                ));
            }
            for (path, peer_nat) in &o.signalled_attempts {
                if *peer_nat != o.target_nat {
                    bad.push(format!(
                        "{} -> {}: {} attempt labelled peer NAT {}, the target is {}",
                        a.label(),
                        b.label(),
                        path.as_str(),
                        peer_nat.as_str(),
                        o.target_nat.as_str()
                    ));
                }
            }
            table.insert((a, b), cell);
        }
    }
    let lan = run_pair(seed + 1, Site::PortRestricted, Site::PortRestricted, true);
    eprintln!(
        "dialer \\ target | {}",
        Site::ALL.map(Site::label).join(" | ")
    );
    for a in Site::ALL {
        let row: Vec<&str> = Site::ALL.iter().map(|b| table[&(a, *b)].as_str()).collect();
        eprintln!("{} | {}", a.label(), row.join(" | "));
    }
    eprintln!("same LAN: {:?}", lan.result.mode);
    if lan.result.mode != Some(ConnMode::Direct) {
        bad.push(format!("same LAN: got {:?}", lan.result));
    }
    assert!(bad.is_empty(), "pairs short of theory:\n{}", bad.join("\n"));
}

#[test]
fn birthday_probing_punches_symmetric_and_port_restricted_pairs() {
    const TRIALS: u64 = 200;
    let (mut punched, mut relayed) = (0u64, 0u64);
    let mut hits: Vec<u32> = Vec::new();
    for t in 0..TRIALS {
        // Both directions: the symmetric side dials half the time.
        let (a, b) = if t % 2 == 0 {
            (Site::Symmetric, Site::PortRestricted)
        } else {
            (Site::PortRestricted, Site::Symmetric)
        };
        let o = run_pair(10_000 + t, a, b, false);
        match o.result.mode {
            Some(ConnMode::Punched) => {
                punched += 1;
                let n = o.result.birthday_probes.or(o.birthday_hit);
                hits.push(n.expect("a symmetric x port-restricted punch records its probes"));
            }
            Some(ConnMode::Relayed) => relayed += 1,
            other => panic!(
                "trial {t} ({a:?} -> {b:?}) ended with {other:?}: {:?}",
                o.result
            ),
        }
    }
    hits.sort_unstable();
    let pct = |p: usize| hits[(hits.len() * p / 100).min(hits.len() - 1)];
    eprintln!(
        "birthday: {punched}/{TRIALS} punched, {relayed} relayed; probes to success p50 {} p90 {} p99 {} max {}",
        pct(50),
        pct(90),
        pct(99),
        hits[hits.len() - 1]
    );
    for lo in (0..1024).step_by(128) {
        let n = hits.iter().filter(|&&h| h > lo && h <= lo + 128).count();
        eprintln!(
            "  {:>4}..={:<4} {:>3} {}",
            lo + 1,
            lo + 128,
            n,
            "#".repeat(n)
        );
    }
    assert_eq!(punched + relayed, TRIALS, "no trial fails");
    assert!(
        punched * 100 >= 95 * TRIALS,
        "birthday probing punched {punched}/{TRIALS}, below 95%"
    );
}

#[test]
fn signals_travel_several_hops_to_a_target_the_requester_cannot_see() {
    let mut w = world(21);
    let s = seeds(&mut w, 1);
    let publics: Vec<usize> = (0..6).map(|_| w.add_node(&s, quiet)).collect();
    let a = w.add_node(&s, quiet);
    let nat = w.add_nat(NatBehaviour::port_restricted_cone());
    let b = w.add_node_behind(nat, &s, quiet);
    w.set_link(a, b, BLOCKED);
    let mut all = publics.clone();
    all.extend([a, b]);
    start_all(&mut w, &all);
    w.run_for(Duration::from_secs(20));
    // The last carrier: the node closest to b, where greedy forwarding ends. Only it keeps
    // a connection to b, and a cannot reach it.
    let bid = w.node(b).node.id();
    let others: Vec<usize> = s.iter().chain(&publics).copied().collect();
    let h = *others
        .iter()
        .min_by_key(|&&i| w.node(i).node.id().distance(&bid))
        .expect("there are public nodes");
    w.set_link(a, h, BLOCKED);
    w.disconnect(a, h);
    for &x in &others {
        if x != h {
            w.disconnect(b, x);
        }
    }
    w.run_for(PERMITS_EXPIRE);
    w.set_link(a, b, LinkModel::default());
    let forwarded_before: Vec<usize> = (0..w.len())
        .map(|i| signal_outcomes(&w, i, SignalOutcome::Forwarded))
        .collect();
    let r = connect(&mut w, a, b);
    assert_eq!(r.outcome, TaskOutcome::Ok, "{r:?}");
    assert_eq!(r.mode, Some(ConnMode::Punched), "{r:?}");
    let carriers: Vec<usize> = (0..w.len())
        .filter(|&i| signal_outcomes(&w, i, SignalOutcome::Forwarded) > forwarded_before[i])
        .collect();
    eprintln!("signal carriers: {carriers:?}, last {h}");
    assert!(
        carriers.len() >= 2,
        "carried over several hops: {carriers:?}"
    );
    assert!(
        carriers.contains(&h),
        "the last hop is the node connected to b"
    );
    assert!(!carriers.contains(&a) && !carriers.contains(&b));
    assert_eq!(signal_outcomes(&w, b, SignalOutcome::Accepted), 1);
}

/// Seeds, then `n` public nodes bootstrapping from them, joined.
fn public_world(seed: u64, n: usize, tweak: fn(&mut NodeConfig)) -> (World, Vec<usize>) {
    let mut w = world(seed);
    let s = seeds(&mut w, 1);
    let nodes: Vec<usize> = (0..n).map(|_| w.add_node(&s, tweak)).collect();
    start_all(&mut w, &nodes);
    w.run_for(Duration::from_secs(20));
    let mut all = s;
    all.extend(nodes);
    (w, all)
}

fn signal_to(w: &mut World, from: usize, to: usize, signal: Signal, hops: Vec<Countersign>) -> u64 {
    w.inject_request(
        from,
        to,
        Request::Signal {
            signal,
            hops,
            trace: None,
        },
    )
}

fn answer(w: &World, ticket: u64) -> Response {
    match w.injected(ticket) {
        Some(Ok(r)) => r.clone(),
        other => panic!("no answer to an injected request: {other:?}"),
    }
}

const FORBIDDEN: Response = Response::Error {
    code: ErrorCode::Forbidden,
};

#[test]
fn forged_and_replayed_signals_are_refused_and_start_no_punch() {
    let (mut w, n) = public_world(31, 3, quiet);
    let (b, m, a) = (n[1], n[2], n[3]);
    let (aid, bid) = (w.node(a).node.id(), w.node(b).node.id());
    let a_key = w.node(a).node.config().key.clone();
    let m_key = w.node(m).node.config().key.clone();
    let now_ms = w.now().as_millis();
    let nat = NatType::Public;
    let hop_addr = w.node(a).addr;

    // a's genuine signal, delivered by m as if it were a.
    let genuine = Signal::new(&a_key, bid, 1, now_ms, nat);
    // m claims to be a.
    let mut impostor = Signal::new(&m_key, bid, 2, now_ms, nat);
    impostor.from = aid;
    // A signature of garbage.
    let mut garbage = Signal::new(&m_key, bid, 3, now_ms, nat);
    garbage.sig = vec![7; 64];
    // A chain whose last countersigner is a, delivered by m.
    let chained = Signal::new(&a_key, bid, 4, now_ms, nat);
    let a_hop = Countersign::new(&a_key, &chained, 0, hop_addr);
    // m countersigns, but tampers with the address afterwards.
    let mine = Signal::new(&a_key, bid, 5, now_ms, nat);
    let mut m_hop = Countersign::new(&m_key, &mine, 0, hop_addr);
    m_hop.observed = w.node(b).addr;

    let forged = [
        (genuine, vec![]),
        (impostor, vec![]),
        (garbage, vec![]),
        (chained, vec![a_hop]),
        (mine, vec![m_hop]),
    ];
    let tickets: Vec<u64> = forged
        .into_iter()
        .map(|(sig, hops)| signal_to(&mut w, m, b, sig, hops))
        .collect();
    w.run_for(Duration::from_secs(2));
    for (k, t) in tickets.iter().enumerate() {
        assert_eq!(answer(&w, *t), FORBIDDEN, "forged signal {k}");
    }
    assert_eq!(signal_outcomes(&w, b, SignalOutcome::Forged), 5);
    assert_eq!(punches_started(&w, b), 0, "no punch for a forged signal");
    assert_eq!(w.stats.punches, 0);

    // m's own signal is accepted once; the same signal again is a replay.
    let own = Signal::new(&m_key, bid, 6, w.now().as_millis(), nat);
    let first = signal_to(&mut w, m, b, own.clone(), vec![]);
    w.run_for(Duration::from_secs(1));
    assert!(
        matches!(answer(&w, first), Response::SignalAnswer { .. }),
        "a genuine signal is accepted"
    );
    assert_eq!(punches_started(&w, b), 1);
    let again = signal_to(&mut w, m, b, own, vec![]);
    // A stale one (issued a minute away from b's clock) is refused as a replay too.
    let stale = Signal::new(&m_key, bid, 7, w.now().as_millis() + 60_000, nat);
    let stale = signal_to(&mut w, m, b, stale, vec![]);
    w.run_for(Duration::from_secs(1));
    assert_eq!(answer(&w, again), FORBIDDEN);
    assert_eq!(answer(&w, stale), FORBIDDEN);
    assert_eq!(signal_outcomes(&w, b, SignalOutcome::Replayed), 2);
    assert_eq!(punches_started(&w, b), 1, "no punch for a replay");
    assert_eq!(w.stats.punches, 1);
}

#[test]
fn the_signal_rate_limit_holds_under_a_flood() {
    let (mut w, n) = public_world(41, 3, quiet);
    let (b, m, a) = (n[1], n[2], n[3]);
    let bid = w.node(b).node.id();
    let cfg = w.node(b).node.config().clone();
    let m_key = w.node(m).node.config().key.clone();
    let a_key = w.node(a).node.config().key.clone();
    // 300 distinct, genuine signals from m, one every 10 ms.
    let mut tickets = Vec::new();
    let start = w.now();
    for nonce in 0..300 {
        let sig = Signal::new(&m_key, bid, nonce, w.now().as_millis(), NatType::Public);
        tickets.push(signal_to(&mut w, m, b, sig, vec![]));
        w.run_for(Duration::from_millis(10));
    }
    let span = w.now().since(start).as_secs_f64();
    // An honest peer's signal in the middle of the flood.
    let honest = Signal::new(&a_key, bid, 1, w.now().as_millis(), NatType::Public);
    let honest = signal_to(&mut w, a, b, honest, vec![]);
    w.run_for(Duration::from_secs(2));
    let answers: Vec<Response> = tickets.iter().map(|t| answer(&w, *t)).collect();
    let accepted = answers
        .iter()
        .filter(|r| matches!(r, Response::SignalAnswer { .. }))
        .count();
    let limited = answers
        .iter()
        .filter(|r| {
            **r == Response::Error {
                code: ErrorCode::RateLimited,
            }
        })
        .count();
    let bound = f64::from(cfg.signal_burst) + cfg.signal_per_s * span;
    eprintln!(
        "flood: {accepted} accepted, {limited} rate-limited over {span:.2} s (bound {bound:.1})"
    );
    assert_eq!(accepted + limited, 300);
    assert!(
        accepted as f64 <= bound + 1.0,
        "{accepted} accepted > {bound:.1}"
    );
    assert!(
        accepted >= cfg.signal_burst as usize,
        "the burst goes through"
    );
    assert!(matches!(answer(&w, honest), Response::SignalAnswer { .. }));
}

fn small_relay(c: &mut NodeConfig) {
    quiet(c);
    c.relay.max_circuits = 4;
    c.relay.max_circuits_per_peer = 2;
    c.relay.max_duration_ms = 20_000;
}

fn relay_events(w: &World, r: usize, event: chaosnet_proto::RelayEvent) -> usize {
    count(
        w,
        r,
        |e| matches!(e, Event::Relay { event: x } if *x == event),
    )
}

#[test]
fn relay_limits_hold_while_another_peer_still_gets_a_circuit() {
    use chaosnet_proto::Failure;
    use chaosnet_proto::RelayEvent;
    // The relay is the only seed, so every node holds a connection to it.
    let mut w = world(51);
    let r = w.add_node(&[], small_relay);
    w.start_at(r, w.now());
    let nodes: Vec<usize> = (0..8).map(|_| w.add_node(&[r], quiet)).collect();
    start_all(&mut w, &nodes);
    w.run_for(Duration::from_secs(20));
    let (d1, d2, d3) = (nodes[0], nodes[1], nodes[2]);
    let targets = &nodes[3..];

    // d1 floods: only `max_circuits_per_peer` circuits open.
    let flood: Vec<u64> = targets.iter().map(|&t| w.open_circuit(d1, r, t)).collect();
    w.run_for(Duration::from_secs(3));
    let results: Vec<_> = flood.iter().map(|c| w.circuit_result(*c)).collect();
    let opened = results.iter().filter(|x| **x == Some(Ok(()))).count();
    let refused = results
        .iter()
        .filter(|x| **x == Some(Err(Failure::Refused)))
        .count();
    assert_eq!((opened, refused), (2, targets.len() - 2), "{results:?}");

    // Another peer still gets circuits, up to the total.
    let honest = [
        w.open_circuit(d2, r, targets[0]),
        w.open_circuit(d2, r, targets[1]),
    ];
    w.run_for(Duration::from_secs(3));
    for c in honest {
        assert_eq!(w.circuit_result(c), Some(Ok(())));
    }
    assert_eq!(w.node(r).node.relay_circuits(), 4);
    assert_eq!(w.circuits_through(r), 4);
    let over = w.open_circuit(d3, r, targets[2]);
    w.run_for(Duration::from_secs(3));
    assert_eq!(
        w.circuit_result(over),
        Some(Err(Failure::Refused)),
        "total limit"
    );
    assert_eq!(relay_events(&w, r, RelayEvent::Opened), 4);
    assert_eq!(
        relay_events(&w, r, RelayEvent::Refused),
        targets.len() - 2 + 1
    );

    // Circuits end at their maximum duration, which frees the slots.
    w.run_for(Duration::from_secs(20));
    assert_eq!(w.node(r).node.relay_circuits(), 0);
    assert_eq!(relay_events(&w, r, RelayEvent::Closed), 4);
    let again = w.open_circuit(d3, r, targets[2]);
    w.run_for(Duration::from_secs(3));
    assert_eq!(w.circuit_result(again), Some(Ok(())));
}

#[test]
fn nated_nodes_signal_and_relay_through_non_seeds_after_the_seeds_die() {
    let mut w = world(61);
    let s = seeds(&mut w, 3);
    let publics: Vec<usize> = (0..6).map(|_| w.add_node(&s, quiet)).collect();
    let pr1 = place(&mut w, Site::PortRestricted, &s, quiet);
    let pr2 = place(&mut w, Site::PortRestricted, &s, quiet);
    let sym1 = place(&mut w, Site::Symmetric, &s, quiet);
    let sym2 = place(&mut w, Site::Symmetric, &s, quiet);
    let cg = place(&mut w, Site::Cgnat, &s, quiet);
    let pairs = [
        (pr1, pr2, ConnMode::Punched),
        (sym1, pr1, ConnMode::Punched),
        (cg, pr2, ConnMode::Punched),
        (sym1, sym2, ConnMode::Relayed),
    ];
    for (a, b, _) in pairs {
        w.set_link(a, b, BLOCKED);
    }
    let mut all = publics.clone();
    all.extend([pr1, pr2, sym1, sym2, cg]);
    start_all(&mut w, &all);
    w.run_for(Duration::from_secs(20));
    for &i in &all {
        assert!(w.node(i).node.joined(), "node {i} joined");
    }
    for &i in &s {
        w.kill(i);
    }
    w.run_for(PERMITS_EXPIRE);
    for (a, b, _) in pairs {
        w.set_link(a, b, LinkModel::default());
    }
    let forwarded = |w: &World| -> Vec<usize> {
        (0..w.len())
            .map(|i| signal_outcomes(w, i, SignalOutcome::Forwarded))
            .collect()
    };
    for (a, b, want) in pairs {
        let before = forwarded(&w);
        let r = connect(&mut w, a, b);
        let after = forwarded(&w);
        let carriers: Vec<usize> = (0..w.len()).filter(|&i| after[i] > before[i]).collect();
        eprintln!("{a} -> {b}: {:?}, signal carried by {carriers:?}", r.mode);
        assert!(
            !carriers.is_empty(),
            "{a} -> {b}: some node carried the signal"
        );
        assert!(
            carriers.iter().all(|c| !s.contains(c)),
            "no seed is alive to carry it"
        );
        assert_eq!(r.outcome, TaskOutcome::Ok, "{a} -> {b}: {r:?}");
        let got = settle(&mut w, a, &r);
        assert_eq!(got, Some(want), "{a} -> {b}: {r:?}");
        if let Some(relay) = r.relay {
            let relay = (0..w.len())
                .find(|&i| w.node(i).node.id() == relay)
                .expect("the relay is a node");
            assert!(publics.contains(&relay), "relayed through non-seed {relay}");
        }
    }
}

#[test]
fn a_nat_world_is_deterministic() {
    let run = |seed| {
        let mut w = world(seed);
        let s = seeds(&mut w, 2);
        let a = place(&mut w, Site::Symmetric, &s, quiet);
        let b = place(&mut w, Site::Cgnat, &s, quiet);
        let c = place(&mut w, Site::Symmetric, &s, quiet);
        start_all(&mut w, &[a, b, c]);
        w.run_for(Duration::from_secs(20));
        let r1 = connect(&mut w, a, b);
        let r2 = connect(&mut w, c, a);
        (r1.mode, r2.mode, w.digest(), w.birthday_records().to_vec())
    };
    let first = run(71);
    assert_eq!(run(71), first, "same seed, same run");
    assert_ne!(run(72).2, first.2, "another seed, another run");
}

#[test]
fn punching_survives_five_percent_loss() {
    let mut w = World::new(SimConfig {
        seed: 81,
        link: LinkModel {
            latency_ms: 30,
            jitter_ms: 20,
            loss_pct: 5.0,
        },
        ..SimConfig::default()
    });
    let s = seeds(&mut w, 3);
    let pairs: Vec<(usize, usize)> = (0..4)
        .map(|_| {
            let a = place(&mut w, Site::PortRestricted, &s, quiet);
            let b = place(&mut w, Site::Restricted, &s, quiet);
            (a, b)
        })
        .collect();
    for &(a, b) in &pairs {
        w.set_link(a, b, BLOCKED);
        start_all(&mut w, &[a, b]);
    }
    w.run_for(Duration::from_secs(20));
    w.run_for(PERMITS_EXPIRE);
    let lossy = LinkModel {
        latency_ms: 30,
        jitter_ms: 20,
        loss_pct: 5.0,
    };
    for &(a, b) in &pairs {
        w.set_link(a, b, lossy);
        let r = connect(&mut w, a, b);
        assert_eq!(r.mode, Some(ConnMode::Punched), "{r:?}");
    }
    assert!(w.stats.lost > 0, "the links really lost packets");
}

/// The mode of `a`'s live connection to `b`, as `a`'s core sees it.
fn conn_mode(w: &World, a: usize, b: usize) -> Option<ConnMode> {
    let bid = w.node(b).node.id();
    w.node(a)
        .node
        .connections()
        .find(|(id, _)| **id == bid)
        .map(|(_, c)| c.mode)
}

#[test]
fn a_closed_connection_leaves_a_nat_permit_until_the_mapping_times_out() {
    let mut w = world(91);
    let s = seeds(&mut w, 3);
    let a = place(&mut w, Site::Public, &s, quiet);
    let b = place(&mut w, Site::PortRestricted, &s, quiet);
    start_all(&mut w, &[a, b]);
    w.run_for(Duration::from_secs(20));
    // b dials a: b's NAT now lets a's packets in, and keeps doing so while the connection
    // lives and for the mapping timeout after it closed.
    let r = connect(&mut w, b, a);
    assert_eq!(r.mode, Some(ConnMode::Direct));
    w.disconnect(a, b);
    w.run_for(Duration::from_secs(10));
    let r = connect(&mut w, a, b);
    assert_eq!(r.mode, Some(ConnMode::Direct), "permit still alive: {r:?}");
    w.disconnect(a, b);
    w.run_for(PERMITS_EXPIRE);
    let r = connect(&mut w, a, b);
    assert_eq!(r.mode, Some(ConnMode::Punched), "permit expired: {r:?}");
}

#[test]
fn a_relayed_pair_upgrades_to_punched_and_frees_its_circuit() {
    let mut w = world(93);
    let s = seeds(&mut w, 3);
    let a = place(&mut w, Site::PortRestricted, &s, quiet);
    let b = place(&mut w, Site::PortRestricted, &s, quiet);
    // Nothing passes between a and b at first: the punch fails and they are relayed.
    w.set_link(a, b, BLOCKED);
    start_all(&mut w, &[a, b]);
    w.run_for(Duration::from_secs(20));
    w.run_for(PERMITS_EXPIRE);
    let r = connect(&mut w, a, b);
    assert_eq!(r.mode, Some(ConnMode::Relayed), "{r:?}");
    let relay = s
        .iter()
        .copied()
        .find(|&i| Some(w.node(i).node.id()) == r.relay)
        .expect("a seed relays");
    assert_eq!(w.node(relay).node.relay_circuits(), 1);
    assert_eq!(conn_mode(&w, a, b), Some(ConnMode::Relayed));
    // The path clears; the upgrade a few seconds later punches.
    w.set_link(a, b, LinkModel::default());
    w.run_for(Duration::from_secs(20));
    let upgraded = count(&w, a, |e| {
        matches!(
            e,
            Event::Upgraded {
                to: ConnMode::Punched
            }
        )
    });
    assert_eq!(upgraded, 1);
    assert_eq!(conn_mode(&w, a, b), Some(ConnMode::Punched));
    assert_eq!(conn_mode(&w, b, a), Some(ConnMode::Punched));
    assert_eq!(
        w.node(relay).node.relay_circuits(),
        0,
        "the circuit is freed"
    );
    assert_eq!(w.circuits_through(relay), 0);
}

/// The core names what each output serves, so the shell can trace a connect as one tree: the
/// connect, its lookup under it, the lookup's find_node requests under the lookup, the
/// signal under the connect, and each carrier's forwarded signal under the inbound signal it
/// carries. Every activity that starts also ends.
#[test]
fn a_punched_connect_is_one_tree_of_activities() {
    let mut w = world(33);
    let s = seeds(&mut w, 1);
    let publics: Vec<usize> = (0..4).map(|_| w.add_node(&s, quiet)).collect();
    let a = place(&mut w, Site::PortRestricted, &s, quiet);
    let b = place(&mut w, Site::Restricted, &s, quiet);
    // They must not meet before the connect (see run_pair).
    w.set_link(a, b, BLOCKED);
    let mut all = publics.clone();
    all.extend([a, b]);
    start_all(&mut w, &all);
    w.run_for(Duration::from_secs(20));
    w.run_for(PERMITS_EXPIRE);
    w.set_link(a, b, LinkModel::default());
    let from = w.node(a).events.len();
    let sent_from = w.node(a).sent.len();
    let carried_from: Vec<usize> = (0..w.len()).map(|i| w.node(i).sent.len()).collect();
    let r = connect(&mut w, a, b);
    assert_eq!(r.mode, Some(ConnMode::Punched), "{r:?}");
    w.run_for(Duration::from_secs(5));

    let bid = w.node(b).node.id();
    let events: Vec<&Event> = w.node(a).events[from..].iter().map(|(_, e)| e).collect();
    let connect = events
        .iter()
        .find_map(|e| match e {
            Event::ActivityStarted {
                activity,
                parent: None,
                kind: ActivityKind::Connect { peer },
            } if *peer == bid => Some(*activity),
            _ => None,
        })
        .expect("the connect starts an activity");
    let lookup = events
        .iter()
        .find_map(|e| match e {
            Event::ActivityStarted {
                activity,
                parent: Some(p),
                kind: ActivityKind::Lookup { target, purpose },
            } if *p == connect && *target == bid && *purpose == "connect" => Some(*activity),
            _ => None,
        })
        .expect("the connect's lookup is a child of it");
    assert!(events.iter().any(|e| matches!(e,
        Event::ActivityEnded { activity, outcome: "ok", mode: Some(ConnMode::Punched) } if *activity == connect)));
    let sent = &w.node(a).sent[sent_from..];
    assert!(
        sent.iter()
            .any(|(_, kind, p)| *kind == "find_node" && *p == Some(lookup)),
        "the lookup's requests hang under it: {sent:?}"
    );
    assert!(
        sent.iter()
            .any(|(_, kind, p)| *kind == "signal" && *p == Some(connect)),
        "the signal hangs under the connect: {sent:?}"
    );
    assert!(
        sent.iter()
            .any(|(_, kind, p)| *kind == "connect" && *p == Some(connect)),
        "every path tried hangs under the connect: {sent:?}"
    );
    let forwarded: Vec<Option<Activity>> = (0..w.len())
        .filter(|&i| i != a)
        .flat_map(|i| w.node(i).sent[carried_from[i]..].iter())
        .filter(|(_, kind, _)| *kind == "signal")
        .map(|(_, _, p)| *p)
        .collect();
    assert!(!forwarded.is_empty(), "someone carried the signal");
    let target_punch: Vec<Option<Activity>> = w.node(b).sent[carried_from[b]..]
        .iter()
        .filter(|(_, kind, _)| *kind == "punch")
        .map(|(_, _, p)| *p)
        .collect();
    assert!(
        !target_punch.is_empty()
            && target_punch
                .iter()
                .all(|p| matches!(p, Some(Activity::Inbound(_)))),
        "the target's punch hangs under the signal that asked for it: {target_punch:?}"
    );
    assert!(
        forwarded
            .iter()
            .all(|p| matches!(p, Some(Activity::Inbound(_)))),
        "a carried signal hangs under the inbound one: {forwarded:?}"
    );

    // No activity is left open anywhere (the shell would leak a span).
    for i in 0..w.len() {
        let mut open: std::collections::HashSet<Activity> = Default::default();
        for (_, e) in &w.node(i).events {
            match e {
                Event::ActivityStarted { activity, .. } => {
                    assert!(open.insert(*activity), "{activity:?} started twice")
                }
                Event::ActivityEnded { activity, .. } => {
                    assert!(open.remove(activity), "{activity:?} ended unstarted")
                }
                _ => {}
            }
        }
        assert!(open.is_empty(), "node {i} left {open:?} open");
    }
}

/// Everything a world recorded, per node: its events, what it sent and its persisted graph.
type Recording = Vec<(
    Vec<(chaosnet_proto::Time, Event)>,
    Vec<String>,
    Vec<chaosnet_proto::Contact>,
)>;

fn recording(w: &World) -> Recording {
    (0..w.len())
        .map(|i| {
            let n = w.node(i);
            let sent = n.sent.iter().map(|s| format!("{s:?}")).collect();
            (n.events.clone(), sent, n.store.values().cloned().collect())
        })
        .collect()
}

#[test]
fn a_churning_nat_world_replays_event_for_event() {
    // Tasks running on every node, NATs of every kind, and nodes killed, restarted and
    // disconnected while connections and circuits are open: every path where the harness
    // or the core could depend on an iteration order.
    let run = |seed| {
        let mut w = world(seed);
        let s = seeds(&mut w, 3);
        let busy = |c: &mut NodeConfig| {
            c.task_rate_per_s = 2.0;
            c.bucket_refresh_ms = 5_000;
            c.gc_interval_ms = 2_000;
        };
        let mut nodes: Vec<usize> = (0..6).map(|_| w.add_node(&s, busy)).collect();
        for site in Site::ALL {
            for _ in 0..2 {
                nodes.push(place(&mut w, site, &s, busy));
            }
        }
        start_all(&mut w, &nodes);
        w.run_for(Duration::from_secs(15));
        for &i in &nodes[..4] {
            w.kill(i);
        }
        w.kill(s[0]);
        w.disconnect(nodes[6], nodes[7]);
        w.run_for(Duration::from_secs(10));
        for &i in &nodes[..4] {
            w.restart(i);
        }
        w.run_for(Duration::from_secs(20));
        (w.digest(), w.stats, recording(&w))
    };
    let first = run(81);
    let events: usize = first.2.iter().map(|n| n.0.len()).sum();
    assert!(events > 1_000, "the run did something: {events} events");
    assert!(first == run(81), "same seed, same events at the same times");
}

/// Waits (at most `secs` of virtual time) for every node to classify itself as expected.
fn settle_nat_types(w: &mut World, nodes: &[(Site, usize)], secs: u64) {
    for _ in 0..secs {
        if nodes
            .iter()
            .all(|&(site, i)| w.node(i).node.nat_type() == measured(site))
        {
            return;
        }
        w.run_for(Duration::from_secs(1));
    }
}

/// The NAT type a dial-back test must find for `site`. A carrier NAT in front of a home
/// NAT filters like the stricter of the two: port-restricted.
fn measured(site: Site) -> NatType {
    match site {
        Site::Public => NatType::Public,
        Site::FullCone => NatType::FullCone,
        Site::Restricted => NatType::RestrictedCone,
        Site::PortRestricted | Site::Cgnat => NatType::PortRestrictedCone,
        Site::Symmetric => NatType::Symmetric,
    }
}

#[test]
fn dial_back_tells_every_nat_type_apart_and_says_so_once() {
    let mut w = world(16);
    let s = seeds(&mut w, 3);
    // Helpers: public nodes the tested nodes have no reason to talk to first.
    let helpers: Vec<usize> = (0..3).map(|_| w.add_node(&s, quiet)).collect();
    start_all(&mut w, &helpers);
    w.run_for(Duration::from_secs(5));
    let nodes: Vec<(Site, usize)> = Site::ALL
        .iter()
        .map(|&site| (site, place(&mut w, site, &s[..1], quiet)))
        .collect();
    let idx: Vec<usize> = nodes.iter().map(|n| n.1).collect();
    start_all(&mut w, &idx);
    settle_nat_types(&mut w, &nodes, 60);
    let got: Vec<(Site, NatType)> = nodes
        .iter()
        .map(|&(site, i)| (site, w.node(i).node.nat_type()))
        .collect();
    let want: Vec<(Site, NatType)> = nodes
        .iter()
        .map(|&(site, _)| (site, measured(site)))
        .collect();
    assert_eq!(got, want);
    for &(site, i) in &nodes {
        let n = &w.node(i).node;
        assert_eq!(
            n.reachable(),
            site == Site::FullCone || site == Site::Public,
            "{site:?}"
        );
        // Subscribers heard the final type, and the node's reachability, exactly once.
        let changes: Vec<NatType> = w
            .node(i)
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Node(NodeEvent::NatTypeChanged { to, .. }) => Some(*to),
                _ => None,
            })
            .collect();
        assert_eq!(
            changes.last(),
            Some(&measured(site)),
            "{site:?}: {changes:?}"
        );
        let reach = count(&w, i, |e| {
            matches!(
                e,
                Event::Node(NodeEvent::ReachabilityChanged { reachable: true })
            )
        });
        assert_eq!(reach, usize::from(n.reachable()), "{site:?}");
    }
    // A full-cone peer is then dialled directly, with no signalling.
    let (fc, pr) = (nodes[1].1, nodes[3].1);
    let sent_before = signal_outcomes(&w, pr, SignalOutcome::Sent);
    let r = connect(&mut w, pr, fc);
    assert_eq!(
        (r.outcome, r.mode),
        (TaskOutcome::Ok, Some(ConnMode::Direct)),
        "{r:?}"
    );
    assert_eq!(signal_outcomes(&w, pr, SignalOutcome::Sent), sent_before);
}

#[test]
fn dial_back_is_no_amplifier() {
    let mut w = world(17);
    let s = seeds(&mut w, 2);
    let probers: Vec<usize> = (0..2).map(|_| w.add_node(&s, untested)).collect();
    start_all(&mut w, &probers);
    w.run_for(Duration::from_secs(5));
    let (asker, server) = (probers[0], s[0]);
    let probes = |w: &World, i: usize| {
        w.node(i)
            .sent
            .iter()
            .filter(|(_, k, _)| *k == "dial_back_probe")
            .count()
    };
    // A burst of requests with no hello from a test socket: the per-peer burst waits for
    // hellos and gives up, the rest is refused at once, and not one probe leaves.
    let tickets: Vec<u64> = (0..10)
        .map(|k| {
            w.inject_request(
                asker,
                server,
                Request::DialBack {
                    token: k,
                    other_port: k % 2 == 0,
                },
            )
        })
        .collect();
    w.run_for(Duration::from_secs(5));
    let answers: Vec<Response> = tickets
        .iter()
        .map(|t| {
            w.injected(*t)
                .cloned()
                .expect("answered")
                .expect("delivered")
        })
        .collect();
    let count = |code| {
        answers
            .iter()
            .filter(|r| **r == Response::Error { code })
            .count()
    };
    assert_eq!(
        (count(ErrorCode::NoRoute), count(ErrorCode::RateLimited)),
        (4, 6),
        "{answers:?}"
    );
    assert_eq!(probes(&w, server), 0, "no hello, no probe");
    // As a helper, a node probes only sane addresses, and only a burst per asking peer:
    // one probe order per request it accepts, never more.
    let helper = probers[1];
    let bad = w.inject_request(
        asker,
        helper,
        Request::DialBackVia {
            token: 99,
            to: "0.0.0.0:4433".parse().expect("addr"),
        },
    );
    let tickets: Vec<u64> = (0..10)
        .map(|k| {
            w.inject_request(
                asker,
                helper,
                Request::DialBackVia {
                    token: k,
                    to: "198.18.200.1:4433".parse().expect("addr"),
                },
            )
        })
        .collect();
    w.run_for(Duration::from_secs(2));
    assert_eq!(
        w.injected(bad),
        Some(&Ok(Response::Error {
            code: ErrorCode::BadRequest
        }))
    );
    let sent = tickets
        .iter()
        .filter(|t| w.injected(**t) == Some(&Ok(Response::DialBackSent)))
        .count();
    // The burst is 4, and the unspecified address above did not use up a token.
    assert_eq!(sent, 4);
    assert_eq!(probes(&w, helper), 4);
}
