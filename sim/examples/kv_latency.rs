//! Per-update latency of key-value sync in virtual time (`make bench` runs it through
//! `scripts/bench-kv.sh`): 50 nodes (2 seeds), one write at a random node, the time until
//! 95% and 100% of the nodes hold it; repeated over many writes. Links: 20 ms ± 5 ms one
//! way, no loss; sync every 2 s ± 20% (the agent's default).
//!
//! `cargo run --release -p chaosnet-sim --example kv_latency -- [NODES] [WRITES]`

use std::time::Duration;

use chaosnet_proto::Time;
use chaosnet_sim::{SimConfig, World};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let nodes = args.first().copied().unwrap_or(50).max(3);
    let writes = args.get(1).copied().unwrap_or(40);
    let mut w = World::new(SimConfig {
        seed: 3,
        ..SimConfig::default()
    });
    let s0 = w.add_node(&[], |_| {});
    let s1 = w.add_node(&[s0], |_| {});
    w.start_at(s0, Time::ZERO);
    w.start_at(s1, Time::from_millis(10));
    for i in 2..nodes {
        let n = w.add_node(&[s0, s1], |_| {});
        w.start_at(n, Time::from_millis(20 * i as u64));
    }
    w.run_until(Time::from_millis(60_000));
    let (mut p95, mut all) = (Vec::new(), Vec::new());
    for k in 0..writes {
        let at = (k * 7 + 3) % nodes;
        let key = format!("k{k}");
        w.with_node(at, |n, _| n.kv_write(&key, "v"))
            .expect("within limits");
        let start = w.now();
        let (mut t95, mut t100) = (None, None);
        while w.now().since(start) < Duration::from_secs(120) && t100.is_none() {
            w.run_for(Duration::from_millis(50));
            let holding = (0..w.len())
                .filter(|&i| w.node(i).node.kv().get(&key).is_some())
                .count();
            let t = w.now().since(start).as_secs_f64();
            if t95.is_none() && holding * 100 >= 95 * nodes {
                t95 = Some(t);
            }
            if holding == nodes {
                t100 = Some(t);
            }
        }
        p95.extend(t95);
        all.extend(t100);
        // Let the fleet settle before the next write.
        w.run_for(Duration::from_secs(5));
    }
    p95.sort_by(f64::total_cmp);
    all.sort_by(f64::total_cmp);
    println!(
        "| nodes | writes | to 95% p50 | p95 | max | to 100% p50 | p95 | max |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    println!(
        "| {nodes} | {writes} | {:.1} s | {:.1} s | {:.1} s | {:.1} s | {:.1} s | {:.1} s |",
        percentile(&p95, 0.5),
        percentile(&p95, 0.95),
        p95.last().copied().unwrap_or(f64::NAN),
        percentile(&all, 0.5),
        percentile(&all, 0.95),
        all.last().copied().unwrap_or(f64::NAN),
    );
    if all.len() < writes {
        println!(
            "{} of {writes} writes never reached every node",
            writes - all.len()
        );
    }
}
