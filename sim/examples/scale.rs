//! How the harness scales: `N` nodes (plus 3 seeds) joining 5 ms apart, then running the
//! autonomous task loop (0.1 tasks/s each) for the rest of `S` virtual seconds, with no
//! event recording. Prints wall time, the ratio to virtual time, peak RSS and the task
//! outcomes.
//!
//! `cargo run --release -p chaosnet-sim --example scale -- [N] [S] [SEED]`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chaosnet_proto::{Event, TaskOutcome, Time};
use chaosnet_sim::{SimConfig, World};

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("arguments are numbers: N S SEED"))
        .collect();
    let n = args.first().copied().unwrap_or(10_000) as usize;
    let secs = args.get(1).copied().unwrap_or(600);
    let seed = args.get(2).copied().unwrap_or(1);
    let t0 = Instant::now();
    let mut w = World::new(SimConfig {
        seed,
        record_events: false,
        tap: Some(|e| matches!(e, Event::TaskFinished { .. } | Event::Joined)),
        ..SimConfig::default()
    });
    let seeds: Vec<usize> = (0..3)
        .map(|_| w.add_node(&[], |c| c.task_rate_per_s = 0.1))
        .collect();
    for &s in &seeds {
        w.start_at(s, Time::ZERO);
    }
    for i in 0..n {
        let x = w.add_node(&seeds, |c| c.task_rate_per_s = 0.1);
        w.start_at(x, Time::from_millis(5 * i as u64));
    }
    let built = t0.elapsed();
    let mut tasks: BTreeMap<(String, bool), u64> = BTreeMap::new();
    let mut joined = 0u64;
    let mut last = Instant::now();
    // Drained every 100 ms of virtual time: the tap holds every event until then, and a
    // second's worth during the join phase would be most of the peak RSS measured.
    for tenth in 1..=secs * 10 {
        w.run_until(Time::from_millis(tenth * 100));
        let s = tenth / 10;
        for (_, _, e) in w.take_events() {
            match e {
                Event::TaskFinished { kind, outcome, .. } => {
                    *tasks
                        .entry((format!("{kind:?}"), outcome == TaskOutcome::Ok))
                        .or_default() += 1;
                }
                Event::Joined => joined += 1,
                _ => {}
            }
        }
        if last.elapsed() > Duration::from_secs(10) {
            last = Instant::now();
            eprintln!(
                "  virtual {s} s, wall {:.1} s, rss {} MiB",
                t0.elapsed().as_secs_f64(),
                peak_rss_kib() / 1024
            );
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let rss = peak_rss_kib();
    println!(
        "nodes {} virtual {secs} s wall {wall:.1} s (build {:.1} s) ratio {:.1}x peak_rss {} MiB ({:.1} KiB/node) joined {joined}",
        n + 3,
        built.as_secs_f64(),
        secs as f64 / wall,
        rss / 1024,
        rss as f64 / (n + 3) as f64
    );
    // Equal digests mean equal runs: a change meant to be behaviour-neutral keeps it.
    println!("  digest {:016x}", w.digest());
    for ((k, ok), c) in tasks {
        println!("  task {k} {} {c}", if ok { "ok" } else { "failed" });
    }
}
