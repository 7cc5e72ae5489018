//! Unit tests of the node state machine, driven by hand.

use std::net::SocketAddr;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::types::{LinkImpairment, NodeEvent};
use super::*;
use crate::graph::GraphChange;
use crate::id::NodeId;
use crate::reach::{ConnMode, NatType};
use crate::signal::{BirthdayRole, Countersign, SecretKey, Signal};
use crate::time::Time;
use crate::wire::{ErrorCode, MAX_NODES_PER_RESPONSE, Request, Response};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

fn drain(n: &mut Node) -> Vec<Output> {
    std::iter::from_fn(|| n.poll_output()).collect()
}

/// Answers every ping the node sends after `rtt`, as a shell would.
fn answer_pings(n: &mut Node, now: Time, rtt: Duration) {
    for out in drain(n) {
        if let Output::Request {
            id,
            request: Request::Ping { nonce },
            ..
        } = out
        {
            n.handle_response(
                now + rtt,
                id,
                Ok(Response::Pong {
                    nonce,
                    observed: None,
                    nat: NatType::Unknown,
                }),
            );
        }
    }
}

#[test]
fn peer_choice_closes_the_slowest_idle_connection() {
    let mut cfg = NodeConfig::new(SecretKey::from_bytes([0; 32]));
    cfg.max_connections = 3;
    cfg.task_rate_per_s = 0.0;
    let mut n = Node::new(cfg, Vec::new());
    let now = Time::from_millis(1_000);
    let peers: Vec<NodeId> = (1..=4u8).map(|i| NodeId([i; 32])).collect();
    // Three connections with RTTs of 200, 5 and 50 ms.
    for (i, rtt) in [200u64, 5, 50].into_iter().enumerate() {
        n.handle_connection_up(now, peers[i], addr(i as u16), ConnMode::Direct);
        n.command(now, Command::Ping { peer: peers[i] });
        answer_pings(&mut n, now, Duration::from_millis(rtt));
    }
    drain(&mut n);
    // A fourth connection exceeds the limit: the 200 ms peer goes.
    n.handle_connection_up(now, peers[3], addr(9), ConnMode::Direct);
    let closed: Vec<NodeId> = drain(&mut n)
        .into_iter()
        .filter_map(|o| match o {
            Output::Disconnect { peer } => Some(peer),
            _ => None,
        })
        .collect();
    assert_eq!(closed, vec![peers[0]]);
    assert_eq!(n.connections().count(), 3);
}

#[test]
fn gc_evicts_silent_contacts_of_full_buckets_and_promotes_pending_ones() {
    let mut cfg = NodeConfig::new(SecretKey::from_bytes([0; 32]));
    let me = cfg.id;
    cfg.k = 2;
    cfg.task_rate_per_s = 0.0;
    cfg.gc_interval_ms = 1_000;
    let mut n = Node::new(cfg, Vec::new());
    n.start(Time::ZERO);
    drain(&mut n);
    let mut rng = StdRng::seed_from_u64(3);
    let ids: Vec<NodeId> = (0..3).map(|_| me.random_in_bucket(250, &mut rng)).collect();
    for (i, id) in ids.iter().enumerate() {
        n.handle_connection_up(
            Time::from_millis(i as u64),
            *id,
            addr(i as u16),
            ConnMode::Direct,
        );
    }
    assert_eq!(n.graph().len(), 2);
    assert_eq!(n.graph().pending_len(), 1);
    drain(&mut n);
    // GC pings the two oldest; only the second answers.
    n.handle_timeout(Time::from_millis(1_000));
    let pings: Vec<(RequestId, NodeId)> = drain(&mut n)
        .into_iter()
        .filter_map(|o| match o {
            Output::Request {
                id,
                peer,
                request: Request::Ping { .. },
                ..
            } => Some((id, peer)),
            _ => None,
        })
        .collect();
    assert_eq!(
        pings.len(),
        2,
        "GC pings the oldest contacts of the full bucket"
    );
    for (id, peer) in pings {
        let t = Time::from_millis(1_010);
        if peer == ids[0] {
            n.handle_response(t, id, Err(Failure::Timeout));
        } else {
            n.handle_response(
                t,
                id,
                Ok(Response::Pong {
                    nonce: 0,
                    observed: None,
                    nat: NatType::Unknown,
                }),
            );
        }
    }
    let outs = drain(&mut n);
    assert!(outs.contains(&Output::Persist(GraphChange::Remove(ids[0]))));
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Persist(GraphChange::Upsert(c)) if c.id == ids[2]))
    );
    assert!(n.graph().get(&ids[0]).is_none());
    assert!(
        n.graph().get(&ids[2]).is_some(),
        "the pending contact took the freed slot"
    );
}

#[test]
fn inbound_requests_are_answered_within_limits() {
    let mut cfg = NodeConfig::new(SecretKey::from_bytes([0; 32]));
    cfg.task_rate_per_s = 0.0;
    let mut n = Node::new(cfg, Vec::new());
    let now = Time::ZERO;
    for i in 1..=40u8 {
        n.handle_connection_up(now, NodeId([i; 32]), addr(u16::from(i)), ConnMode::Direct);
    }
    drain(&mut n);
    let asker = NodeId([1; 32]);
    n.handle_request(
        now,
        asker,
        InboundId(1),
        Request::FindNode {
            target: NodeId([9; 32]),
        },
    );
    n.handle_request(now, asker, InboundId(2), Request::Introduce { max: 32 });
    n.handle_request(now, asker, InboundId(3), Request::Ping { nonce: 7 });
    let outs = drain(&mut n);
    let Output::Respond {
        response: Response::Nodes { peers },
        ..
    } = &outs[0]
    else {
        panic!("{outs:?}")
    };
    assert_eq!(peers.len(), 20, "k closest");
    assert!(
        peers.iter().all(|p| p.id != asker),
        "the asker is not told about itself"
    );
    assert_eq!(peers[0].id, NodeId([9; 32]));
    let Output::Respond {
        response: Response::Nodes { peers },
        ..
    } = &outs[1]
    else {
        panic!()
    };
    assert!(peers.len() <= MAX_NODES_PER_RESPONSE && peers.iter().all(|p| p.id != asker));
    assert_eq!(
        outs[2],
        Output::Respond {
            inbound: InboundId(3),
            response: Response::Pong {
                nonce: 7,
                observed: Some(addr(1)),
                nat: NatType::Unknown,
            }
        }
    );
}

#[test]
fn nat_type_needs_two_observers() {
    let mut cfg = NodeConfig::new(SecretKey::from_bytes([0; 32]));
    cfg.task_rate_per_s = 0.0;
    cfg.listen_addrs = vec![addr(1)];
    let mut n = Node::new(cfg, Vec::new());
    assert_eq!(n.nat_type(), NatType::Unknown);
    let now = Time::ZERO;
    let a = NodeId([1; 32]);
    let b = NodeId([2; 32]);
    for p in [a, b] {
        n.handle_connection_up(now, p, addr(50), ConnMode::Direct);
    }
    let mapped = SocketAddr::from(([198, 18, 0, 1], 4000));
    for (p, seen) in [(a, mapped), (b, mapped)] {
        n.command(now, Command::Ping { peer: p });
        for out in drain(&mut n) {
            if let Output::Request { id, .. } = out {
                n.handle_response(
                    now,
                    id,
                    Ok(Response::Pong {
                        nonce: 0,
                        observed: Some(seen),
                        nat: NatType::Unknown,
                    }),
                );
            }
        }
    }
    assert_eq!(n.nat_type(), NatType::Cone);
    n.command(now, Command::Ping { peer: b });
    for out in drain(&mut n) {
        if let Output::Request { id, .. } = out {
            let other = SocketAddr::from(([198, 18, 0, 1], 4001));
            n.handle_response(
                now,
                id,
                Ok(Response::Pong {
                    nonce: 0,
                    observed: Some(other),
                    nat: NatType::Unknown,
                }),
            );
        }
    }
    assert_eq!(n.nat_type(), NatType::Symmetric);
}

#[test]
fn node_events_say_each_change_once() {
    let mut cfg = NodeConfig::new(SecretKey::from_bytes([0; 32]));
    cfg.task_rate_per_s = 0.0;
    let mut n = Node::new(cfg, Vec::new());
    let now = Time::from_millis(1_000);
    let peer = NodeId([1; 32]);
    n.handle_connection_up(now, peer, addr(1), ConnMode::Relayed);
    n.handle_connection_up(now, peer, addr(1), ConnMode::Relayed);
    n.handle_connection_up(now, peer, addr(2), ConnMode::Punched);
    n.handle_connection_down(now, peer);
    n.handle_connection_down(now, peer);
    let impairment = LinkImpairment {
        loss_ppm: 50_000,
        delay_ms: 100,
        jitter_ms: 10,
    };
    n.handle_impairment(now, impairment);
    n.handle_impairment(now, impairment);
    n.handle_impairment(now, LinkImpairment::default());
    let events: Vec<NodeEvent> = drain(&mut n)
        .into_iter()
        .filter_map(|o| match o {
            Output::Event(Event::Node(e)) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        vec![
            NodeEvent::PeerConnected {
                peer,
                mode: ConnMode::Relayed
            },
            NodeEvent::ConnectionUpgraded {
                peer,
                from: ConnMode::Relayed,
                to: ConnMode::Punched
            },
            NodeEvent::PeerDisconnected {
                peer,
                mode: ConnMode::Punched
            },
            NodeEvent::FaultObserved { impairment },
            NodeEvent::FaultObserved {
                impairment: LinkImpairment::default()
            },
        ]
    );
}

#[test]
fn addresses_nat_type_and_reachability_changes_are_told() {
    let mut cfg = NodeConfig::new(SecretKey::from_bytes([0; 32]));
    cfg.task_rate_per_s = 0.0;
    cfg.listen_addrs = vec![addr(4433)];
    let mut n = Node::new(cfg, Vec::new());
    let now = Time::from_millis(1_000);
    // Two observers see us at our own listen address: no NAT, reachable.
    for (i, seen) in [(1u8, addr(4433)), (2, addr(4433))] {
        let peer = NodeId([i; 32]);
        n.handle_connection_up(now, peer, addr(u16::from(i)), ConnMode::Direct);
        n.command(now, Command::Ping { peer });
        for out in drain(&mut n) {
            if let Output::Request {
                id,
                request: Request::Ping { nonce },
                ..
            } = out
            {
                let pong = Response::Pong {
                    nonce,
                    observed: Some(seen),
                    nat: NatType::Public,
                };
                n.handle_response(now, id, Ok(pong));
            }
        }
    }
    let told: Vec<NodeEvent> = drain(&mut n)
        .into_iter()
        .filter_map(|o| match o {
            Output::Event(Event::Node(e)) if !matches!(e, NodeEvent::PeerConnected { .. }) => {
                Some(e)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        told,
        vec![
            NodeEvent::NatTypeChanged {
                from: NatType::Unknown,
                to: NatType::Public
            },
            NodeEvent::ReachabilityChanged { reachable: true },
        ],
        "the listen address was already the local address: no address event"
    );
}

#[test]
fn claims_are_cross_signed_and_bad_ones_refused_and_counted() {
    use crate::claim::Claim;
    let (ka, kb, kc) = (
        SecretKey::from_bytes([1; 32]),
        SecretKey::from_bytes([2; 32]),
        SecretKey::from_bytes([3; 32]),
    );
    let mut cfg = NodeConfig::new(kb.clone());
    cfg.task_rate_per_s = 0.0;
    let mut b = Node::new(cfg, Vec::new());
    let now = Time::from_millis(100_000);
    let (a, c) = (ka.node_id(), kc.node_id());
    b.handle_connection_up(now, a, addr(1), ConnMode::Direct);
    let refused = |n: &mut Node| {
        drain(n)
            .into_iter()
            .filter_map(|o| match o {
                Output::Event(Event::Claim { outcome }) => Some(outcome),
                Output::Respond { response, .. } => {
                    assert!(matches!(
                        response,
                        Response::Error {
                            code: ErrorCode::Forbidden
                        }
                    ));
                    None
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // An offer that claims to come from c, delivered by a: forged.
    let forged = Claim::offer(&kc, b.id(), now.as_millis());
    b.handle_request(now, a, InboundId(1), Request::Claim { claim: forged });
    assert_eq!(refused(&mut b), vec![ClaimOutcome::Forged]);
    // An offer already "countersigned" by someone else: forged too.
    let mut twice = Claim::offer(&ka, b.id(), now.as_millis());
    twice.countersign(&kc);
    b.handle_request(now, a, InboundId(2), Request::Claim { claim: twice });
    assert_eq!(refused(&mut b), vec![ClaimOutcome::Forged]);
    assert_eq!(b.claims().count(), 0);
    // A good offer is countersigned, answered and stored.
    let offer = Claim::offer(&ka, b.id(), now.as_millis());
    b.handle_request(now, a, InboundId(3), Request::Claim { claim: offer });
    let outs = drain(&mut b);
    let answered = outs.iter().find_map(|o| match o {
        Output::Respond {
            response: Response::Claimed { claim },
            ..
        } => Some(claim.clone()),
        _ => None,
    });
    let claim = answered.expect("a countersigned claim");
    assert_eq!(claim.check(), Ok(()));
    assert!(outs.contains(&Output::StoreClaim(claim.clone())));
    assert_eq!(b.claims().cloned().collect::<Vec<_>>(), vec![claim.clone()]);

    // Fetching a's claims: the good one is kept, a singly signed and a forged one refused.
    let single = Claim::offer(&ka, c, now.as_millis());
    let mut foreign = Claim::offer(&kc, kb.node_id(), now.as_millis());
    foreign.countersign(&kb);
    foreign.issued_ms += 1;
    let cmd = b.command(now, Command::FetchClaims { peer: a });
    let id = drain(&mut b)
        .into_iter()
        .find_map(|o| match o {
            Output::Request {
                id,
                request: Request::GetClaims,
                ..
            } => Some(id),
            _ => None,
        })
        .expect("a GetClaims request on the live connection");
    let claims = vec![claim.clone(), single, foreign];
    b.handle_response(now, id, Ok(Response::Claims { claims }));
    let outs = drain(&mut b);
    let outcomes: Vec<ClaimOutcome> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Event(Event::Claim { outcome }) => Some(*outcome),
            _ => None,
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ClaimOutcome::Verified,
            ClaimOutcome::SinglySigned,
            ClaimOutcome::Forged
        ]
    );
    let result = outs.iter().find_map(|o| match o {
        Output::Event(Event::CommandFinished { id, result }) if *id == cmd => Some(result.clone()),
        _ => None,
    });
    assert_eq!(result.map(|r| r.claims), Some(vec![claim]));
}

/// A target with a direct connection from each of `requesters` (keys 100, 101, ...) at
/// public addresses 198.18.7.<i>:4000; returns it and the requesters' keys.
fn punch_target(requesters: u8, tweak: impl FnOnce(&mut NodeConfig)) -> (Node, Vec<SecretKey>) {
    let mut cfg = NodeConfig::new(SecretKey::from_bytes([0; 32]));
    cfg.task_rate_per_s = 0.0;
    tweak(&mut cfg);
    let mut n = Node::new(cfg, Vec::new());
    let keys: Vec<SecretKey> = (0..requesters)
        .map(|i| SecretKey::from_bytes([100 + i; 32]))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        let at = SocketAddr::from(([198, 18, 7, i as u8], 4000));
        n.handle_connection_up(Time::ZERO, k.node_id(), at, ConnMode::Direct);
    }
    drain(&mut n);
    (n, keys)
}

/// Sends `n` a signal from `key` claiming `claims` and a symmetric NAT (so we would spray),
/// delivered by the requester itself; returns the punch plan and the answer.
fn signal_claiming(
    n: &mut Node,
    now: Time,
    key: &SecretKey,
    nonce: u64,
    claims: Vec<SocketAddr>,
) -> (Option<PunchPlan>, Option<Response>) {
    let to = n.id();
    let signal = Signal::with_addrs(key, to, nonce, now.as_millis(), NatType::Symmetric, claims);
    let request = Request::Signal {
        signal,
        hops: Vec::new(),
        trace: None,
    };
    n.handle_request(now, key.node_id(), InboundId(nonce), request);
    let (mut plan, mut answer) = (None, None);
    for out in drain(n) {
        match out {
            Output::Punch { plan: p, .. } => plan = Some(p),
            Output::Respond { response, .. } => answer = Some(response),
            _ => {}
        }
    }
    (plan, answer)
}

#[test]
fn a_signal_claiming_a_victims_address_aims_no_probe_at_it() {
    let (mut n, keys) = punch_target(1, |_| {});
    let victim = SocketAddr::from(([198, 18, 66, 66], 5000));
    let now = Time::from_millis(1_000);
    let (plan, answer) = signal_claiming(&mut n, now, &keys[0], 1, vec![victim]);
    assert!(
        matches!(answer, Some(Response::SignalAnswer { .. })),
        "{answer:?}"
    );
    let plan = plan.expect("a punch towards the requester");
    assert!(
        plan.peer_addrs.iter().all(|a| a.ip() != victim.ip()),
        "probes aimed at the claimed victim: {:?}",
        plan.peer_addrs
    );
    // The spray goes where the requester really is: the address we see it at.
    assert_eq!(
        plan.peer_addrs[0],
        SocketAddr::from(([198, 18, 7, 0], 4000))
    );
    assert_eq!(plan.birthday, Some(BirthdayRole::Easy));
    // A claim on the requester's own IP (another port) is still probed.
    let own = SocketAddr::from(([198, 18, 7, 0], 4001));
    let (plan, _) = signal_claiming(&mut n, now, &keys[0], 2, vec![victim, own]);
    assert!(plan.expect("a punch").peer_addrs.contains(&own));
}

#[test]
fn punches_for_others_are_budgeted_per_requester_and_per_destination_ip() {
    let limits = PunchLimits {
        per_requester_probes: 5_000,
        per_requester_probes_per_s: 100,
        per_ip_probes: 9_000,
        per_ip_probes_per_s: 100,
    };
    let (mut n, keys) = punch_target(8, |c| c.punch = limits);
    let now = Time::from_millis(1_000);
    let cost = |n: &mut Node, k: &SecretKey, nonce: u64, t: Time| {
        let (plan, answer) = signal_claiming(n, t, k, nonce, Vec::new());
        (plan.map(|p| p.probe_cost()), answer)
    };
    // One requester: two birthday punches fit its 5,000 probes, the third does not.
    let (first, _) = cost(&mut n, &keys[0], 1, now);
    let each = first.expect("the first punch");
    assert!(
        each > 2_000 && 2 * each <= 5_000,
        "a birthday punch costs {each}"
    );
    assert!(cost(&mut n, &keys[0], 2, now).0.is_some());
    let (third, answer) = cost(&mut n, &keys[0], 3, now);
    assert_eq!(third, None, "over the requester's budget");
    assert_eq!(
        answer,
        Some(Response::Error {
            code: ErrorCode::RateLimited
        })
    );
    // It refills over time: 100 probes a second.
    let later = now + Duration::from_millis(u64::from(each) * 10 + 100);
    assert!(cost(&mut n, &keys[0], 4, later).0.is_some());

    // Requesters behind one IP share that IP's 9,000 probes, however many they are.
    let (mut n, keys) = punch_target(8, |c| c.punch = limits);
    let same_ip = SocketAddr::from(([198, 18, 9, 9], 4000));
    for k in &keys {
        n.handle_connection_up(now, k.node_id(), same_ip, ConnMode::Direct);
    }
    drain(&mut n);
    let allowed = keys
        .iter()
        .enumerate()
        .filter(|(i, k)| cost(&mut n, k, 10 + *i as u64, now).0.is_some())
        .count();
    assert_eq!(allowed, 9_000 / each as usize, "punches towards one IP");
}

#[test]
fn a_carrier_on_the_requesters_lan_vouches_for_its_public_ip_and_no_other() {
    // The carrier (key 100) is connected to us from 198.18.7.0, the requester's NAT; it saw
    // the requester on their LAN, at a private address.
    let (mut n, keys) = punch_target(1, |_| {});
    let carrier = &keys[0];
    let requester = SecretKey::from_bytes([7; 32]);
    let public = SocketAddr::from(([198, 18, 7, 0], 4100));
    let victim = SocketAddr::from(([198, 18, 66, 66], 5000));
    let lan = SocketAddr::from(([10, 1, 0, 7], 4000));
    let now = Time::from_millis(1_000);
    let signal = Signal::with_addrs(
        &requester,
        n.id(),
        1,
        now.as_millis(),
        NatType::Symmetric,
        vec![victim, public],
    );
    let hop = Countersign::new(carrier, &signal, 0, lan);
    let request = Request::Signal {
        signal,
        hops: vec![hop],
        trace: None,
    };
    n.handle_request(now, carrier.node_id(), InboundId(1), request);
    let plan = drain(&mut n)
        .into_iter()
        .find_map(|o| match o {
            Output::Punch { plan, .. } => Some(plan),
            _ => None,
        })
        .expect("a punch");
    assert_eq!(
        plan.peer_addrs[0], public,
        "the spray aims at the vouched claim"
    );
    assert_eq!(plan.birthday, Some(BirthdayRole::Easy));
    assert!(plan.peer_addrs.contains(&lan));
    assert!(!plan.peer_addrs.contains(&victim), "{:?}", plan.peer_addrs);
}
