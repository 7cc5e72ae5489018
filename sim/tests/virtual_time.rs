//! Virtual-time tests of the core: whole networks in the seeded in-memory harness.

use std::time::Duration;

use chaosnet_proto::{Command, Event, TaskKind, TaskOutcome, TaskWeights, Time};
use chaosnet_sim::{LinkModel, SimConfig, World};

/// Builds `seeds` seed nodes and `others` nodes bootstrapping from them, starts the seeds
/// at t=0 and the others staggered 20 ms apart, and runs until every node joined or 60 s.
fn joined_world(seed: u64, seeds: usize, others: usize, link: LinkModel, record: bool) -> World {
    let mut w = World::new(SimConfig {
        seed,
        link,
        record_events: record,
        ..SimConfig::default()
    });
    let seed_idx: Vec<usize> = (0..seeds)
        .map(|_| w.add_node(&[], |c| c.task_rate_per_s = 0.0))
        .collect();
    for &s in &seed_idx {
        w.start_at(s, Time::ZERO);
    }
    for i in 0..others {
        let n = w.add_node(&seed_idx, |c| c.task_rate_per_s = 0.0);
        w.start_at(n, Time::from_millis(20 * i as u64));
    }
    w.run_until(Time::from_millis(20 * others as u64 + 30_000));
    w
}

/// Every node looks up every other node, in waves of 20 sources. Returns (found, total).
fn lookup_everyone(w: &mut World) -> (usize, usize) {
    let n = w.len();
    let ids: Vec<_> = (0..n).map(|i| w.node(i).node.id()).collect();
    let mut found = 0;
    let mut total = 0;
    for wave in (0..n).collect::<Vec<_>>().chunks(20) {
        let mut cmds = Vec::new();
        for &src in wave {
            for (dst, target) in ids.iter().enumerate() {
                if dst != src {
                    cmds.push((src, w.command(src, Command::Lookup { target: *target })));
                }
            }
        }
        w.run_for(Duration::from_secs(30));
        for (src, id) in cmds {
            total += 1;
            if w.result(src, id)
                .is_some_and(|r| r.outcome == TaskOutcome::Ok)
            {
                found += 1;
            }
        }
    }
    (found, total)
}

#[test]
fn two_hundred_nodes_join_through_three_seeds_and_find_each_other() {
    let run = |seed| {
        let mut w = joined_world(seed, 3, 197, LinkModel::default(), false);
        let joined = (0..w.len()).filter(|&i| w.node(i).node.joined()).count();
        let (found, total) = lookup_everyone(&mut w);
        (joined, found, total, w.digest())
    };
    let (joined, found, total, digest) = run(7);
    eprintln!("200 nodes: {joined} joined, {found}/{total} lookups found the target");
    assert_eq!(joined, 200, "every node joins");
    assert_eq!(total, 200 * 199);
    let rate = found as f64 / total as f64;
    assert!(
        rate >= 0.995,
        "lookup success {rate:.4} ({found}/{total}) below 99.5%"
    );
    // Same seed, same run: every event of every node at the same virtual time.
    assert_eq!(run(7), (joined, found, total, digest));
}

#[test]
fn a_different_seed_gives_a_different_run() {
    let a = joined_world(1, 2, 30, LinkModel::default(), false).digest();
    let b = joined_world(2, 2, 30, LinkModel::default(), false).digest();
    let a2 = joined_world(1, 2, 30, LinkModel::default(), false).digest();
    assert_eq!(a, a2);
    assert_ne!(a, b);
}

#[test]
fn lookups_survive_five_percent_loss() {
    let link = LinkModel {
        latency_ms: 30,
        jitter_ms: 20,
        loss_pct: 5.0,
    };
    let mut w = joined_world(3, 3, 47, link, false);
    let joined = (0..w.len()).filter(|&i| w.node(i).node.joined()).count();
    assert_eq!(joined, 50);
    let (found, total) = lookup_everyone(&mut w);
    assert!(
        found as f64 / total as f64 >= 0.97,
        "{found}/{total} found under 5% loss"
    );
    assert!(w.stats.lost > 0, "the link really lost messages");
}

#[test]
fn a_restarted_node_rejoins_from_its_persisted_graph_without_seeds() {
    let mut w = joined_world(5, 1, 30, LinkModel::default(), true);
    let victim = 10;
    assert!(!w.node(victim).store.is_empty(), "contacts were persisted");
    w.kill(victim);
    w.kill(0); // the only seed is gone too
    w.run_for(Duration::from_secs(5));
    w.restart(victim);
    w.run_for(Duration::from_secs(20));
    let node = &w.node(victim).node;
    assert!(node.joined(), "rejoined through restored contacts");
    assert!(node.graph().len() > 5);
    let target = w.node(20).node.id();
    let cmd = w.command(victim, Command::Lookup { target });
    w.run_for(Duration::from_secs(10));
    assert_eq!(
        w.result(victim, cmd).map(|r| r.outcome),
        Some(TaskOutcome::Ok)
    );
}

#[test]
fn the_task_loop_runs_weighted_tasks_and_records_every_outcome() {
    let mut w = World::new(SimConfig {
        seed: 11,
        ..SimConfig::default()
    });
    let s = w.add_node(&[], |c| c.task_rate_per_s = 0.0);
    let weights = TaskWeights {
        ping: 1,
        lookup: 1,
        connect: 0,
        echo: 1,
        claim: 1,
    };
    let nodes: Vec<usize> = (0..10)
        .map(|_| {
            w.add_node(&[s], |c| {
                c.task_rate_per_s = 5.0;
                c.task_weights = weights;
                c.echo_bytes = 4096;
            })
        })
        .collect();
    for i in 0..w.len() {
        w.start_at(i, Time::ZERO);
    }
    w.run_until(Time::from_millis(60_000));
    let mut ok = 0;
    let mut seen = std::collections::HashSet::new();
    for &n in &nodes {
        for (_, e) in &w.node(n).events {
            if let Event::TaskFinished { kind, outcome, .. } = e {
                seen.insert(*kind);
                if *outcome == TaskOutcome::Ok {
                    ok += 1;
                }
            }
        }
    }
    // ~5 tasks/s for ~60 s on 10 nodes: thousands of tasks, nearly all succeed on a clean link.
    assert!(ok > 2000, "only {ok} tasks succeeded");
    assert!(
        seen.contains(&TaskKind::Ping)
            && seen.contains(&TaskKind::Lookup)
            && seen.contains(&TaskKind::Echo)
            && seen.contains(&TaskKind::Claim)
    );
    // Claim tasks leave doubly signed claims on both sides of each exchange.
    for &n in &nodes {
        let me = w.node(n).node.id();
        let claims: Vec<_> = w.node(n).node.claims().cloned().collect();
        assert!(!claims.is_empty(), "node {n} holds no claim");
        assert!(
            claims
                .iter()
                .all(|c| c.check().is_ok() && c.other(&me).is_some())
        );
    }
    assert!(
        !seen.contains(&TaskKind::Connect),
        "a zero weight disables the task"
    );
}

#[test]
fn idle_buckets_are_refreshed_with_lookups() {
    let mut w = World::new(SimConfig {
        seed: 4,
        ..SimConfig::default()
    });
    let s = w.add_node(&[], |c| c.task_rate_per_s = 0.0);
    let n = w.add_node(&[s], |c| {
        c.task_rate_per_s = 0.0;
        c.bucket_refresh_ms = 2_000;
    });
    for i in 0..6 {
        let x = w.add_node(&[s], |c| c.task_rate_per_s = 0.0);
        w.start_at(x, Time::from_millis(i * 10));
    }
    w.start_at(s, Time::ZERO);
    w.start_at(n, Time::ZERO);
    w.run_until(Time::from_millis(5_000));
    let before = lookups(&w, n);
    w.run_until(Time::from_millis(30_000));
    let after = lookups(&w, n);
    assert!(
        after > before + 5,
        "refresh lookups ran: {before} -> {after}"
    );
}

fn lookups(w: &World, n: usize) -> usize {
    w.node(n)
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::LookupFinished { .. }))
        .count()
}

#[test]
fn connect_command_finds_unknown_nodes_by_lookup() {
    let mut w = joined_world(9, 2, 40, LinkModel::default(), true);
    let target = w.node(41).node.id();
    let cmd = w.command(
        5,
        Command::Connect {
            peer: target,
            fresh: true,
        },
    );
    w.run_for(Duration::from_secs(15));
    let r = w.result(5, cmd).expect("connect finished");
    assert_eq!(r.outcome, TaskOutcome::Ok);
    // Connecting to a node that does not exist ends as not found, not as a hang.
    let ghost = chaosnet_proto::NodeId([0xee; 32]);
    let cmd = w.command(
        5,
        Command::Connect {
            peer: ghost,
            fresh: true,
        },
    );
    w.run_for(Duration::from_secs(30));
    assert_eq!(
        w.result(5, cmd).map(|r| r.outcome),
        Some(TaskOutcome::NotFound)
    );
}
