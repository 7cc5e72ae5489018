//! Key-value sync in virtual time: replicas that diverge during a partition converge to one
//! digest after it heals, through the periodic Rateless IBLT sessions of the core.

use std::time::Duration;

use chaosnet_proto::Time;
use chaosnet_sim::{LinkModel, SimConfig, World};

const NODES: usize = 12;
const WRITES_PER_SIDE: usize = 500;

fn digests(w: &World) -> Vec<([u8; 32], usize)> {
    (0..w.len())
        .map(|i| (w.node(i).node.kv().digest(), w.node(i).node.kv().len()))
        .collect()
}

fn converged(w: &World, count: usize) -> bool {
    let d = digests(w);
    d.iter().all(|x| *x == d[0] && x.1 == count)
}

/// Runs in steps of 100 ms until every node holds `count` keys with one digest, or `limit`.
fn time_to_converge(w: &mut World, count: usize, limit: Duration) -> Option<Duration> {
    let start = w.now();
    while w.now().since(start) < limit {
        if converged(w, count) {
            return Some(w.now().since(start));
        }
        w.run_for(Duration::from_millis(100));
    }
    converged(w, count).then(|| w.now().since(start))
}

fn partitioned_world(seed: u64) -> (World, Vec<usize>, Vec<usize>) {
    let mut w = World::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    // Two seeds, one per half, so each half keeps a way in during the partition.
    let s0 = w.add_node(&[], |c| c.task_rate_per_s = 0.0);
    let s1 = w.add_node(&[s0], |c| c.task_rate_per_s = 0.0);
    w.start_at(s0, Time::ZERO);
    w.start_at(s1, Time::from_millis(10));
    let mut all = vec![s0, s1];
    for i in 2..NODES {
        let n = w.add_node(&[s0, s1], |c| c.task_rate_per_s = 0.0);
        w.start_at(n, Time::from_millis(20 * i as u64));
        all.push(n);
    }
    w.run_until(Time::from_millis(20_000));
    let (a, b): (Vec<usize>, Vec<usize>) = all.iter().partition(|&&i| i % 2 == 0);
    (w, a, b)
}

#[test]
fn a_partition_with_writes_on_both_sides_converges_after_the_heal() {
    let (mut w, a, b) = partitioned_world(11);
    assert!(
        (0..w.len()).all(|i| w.node(i).node.joined()),
        "every node joined"
    );
    let cut = LinkModel {
        loss_pct: 100.0,
        ..LinkModel::default()
    };
    for &x in &a {
        for &y in &b {
            w.set_link(x, y, cut);
        }
    }
    for (side, members) in [("a", &a), ("b", &b)] {
        for i in 0..WRITES_PER_SIDE {
            let node = members[i % members.len()];
            w.with_node(node, |n, _| n.kv_write(&format!("{side}/{i}"), "v"))
                .expect("within limits");
        }
    }
    // During the partition each half converges on its own writes only.
    w.run_for(Duration::from_secs(30));
    for members in [&a, &b] {
        let first = w.node(members[0]).node.kv().digest();
        for &m in members.iter() {
            assert_eq!(w.node(m).node.kv().len(), WRITES_PER_SIDE, "node {m}");
            assert_eq!(w.node(m).node.kv().digest(), first, "node {m}");
        }
    }
    assert!(!converged(&w, 2 * WRITES_PER_SIDE));

    for &x in &a {
        for &y in &b {
            w.set_link(x, y, LinkModel::default());
        }
    }
    let t = time_to_converge(&mut w, 2 * WRITES_PER_SIDE, Duration::from_secs(120));
    eprintln!("converged {t:?} after the heal");
    assert!(t.is_some(), "did not converge: {:?}", digests(&w));
}

#[test]
fn a_write_reaches_every_node() {
    let (mut w, a, _) = partitioned_world(12);
    w.run_for(Duration::from_secs(5));
    w.with_node(a[1], |n, _| n.kv_write("hello", "world"))
        .expect("within limits");
    let t = time_to_converge(&mut w, 1, Duration::from_secs(60));
    eprintln!("one write reached all {NODES} nodes in {t:?}");
    assert!(t.is_some());
    let t = w.node(0).node.kv().get("hello").cloned().expect("present");
    assert_eq!((t.value.as_str(), t.version), ("world", 1));
}
