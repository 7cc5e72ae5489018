//! Benchmark of the key-value sync's cost (`make bench` runs it through
//! `scripts/bench-kv.sh`): Rateless IBLT symbols per difference over many seeds, and whole
//! sync sessions between two replicas with the bytes they put on the wire.
//!
//! `cargo run --release -p chaosnet-proto --example riblt_overhead -- [SEEDS] [SESSION_SEEDS]`

use std::time::Instant;

use chaosnet_proto::SecretKey;
use chaosnet_proto::kv::riblt::{ITEM_LEN, Item, symbols_to_decode};
use chaosnet_proto::kv::set::KvSet;
use chaosnet_proto::kv::sync::{Step, SyncConfig, SyncSession, respond};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIFFS: [usize; 5] = [1, 10, 100, 1_000, 10_000];
/// Items both sides share, besides the differences.
const COMMON: usize = 1_000;

fn items(rng: &mut StdRng, n: usize) -> Vec<Item> {
    (0..n)
        .map(|_| {
            let mut i = [0u8; ITEM_LEN];
            rng.fill_bytes(&mut i);
            i
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn len<T: serde::Serialize>(v: &T) -> usize {
    postcard::to_stdvec(v).map(|b| b.len()).unwrap_or(0)
}

/// One session's cost: symbols received, bytes up, bytes down, rounds.
type Cost = (usize, usize, usize, u32);

/// What one session between replicas `d` apart (half the differences on each side) cost,
/// with small tuples (about 20-byte keys, 8-byte values).
fn session(seed: u64, d: usize) -> Cost {
    let ka = SecretKey::from_bytes([1; 32]);
    let kb = SecretKey::from_bytes([2; 32]);
    let mut a = KvSet::new("bench", 1_000_000);
    let mut b = KvSet::new("bench", 1_000_000);
    for i in 0..COMMON {
        let t = a
            .write(&ka, &format!("common/{seed:04}/{i:06}"), "value-01")
            .expect("valid");
        b.merge(t).expect("valid");
    }
    for i in 0..d {
        let key = format!("diff/{seed:04}/{i:07}");
        if i % 2 == 0 {
            a.write(&ka, &key, "value-01").expect("valid");
        } else {
            b.write(&kb, &key, "value-01").expect("valid");
        }
    }
    let cfg = SyncConfig::default();
    let (mut s, mut req) = SyncSession::start(&a, cfg.clone());
    let (mut up, mut down) = (0, 0);
    loop {
        up += len(&req);
        let (resp, _) = respond(&mut b, req, &cfg);
        down += len(&resp);
        match s.on_response(&mut a, resp) {
            Step::Send(r) => req = r,
            Step::Done(rep) => {
                assert_eq!(a.digest(), b.digest(), "session left the replicas apart");
                return (rep.symbols, up, down, rep.rounds);
            }
        }
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let seeds = args.first().copied().unwrap_or(100);
    let session_seeds = args.get(1).copied().unwrap_or(10);
    let started = Instant::now();

    println!("## RIBLT symbols per difference ({seeds} seeds, {COMMON} shared items)\n");
    println!("| d | median | p95 | max |");
    println!("|---:|---:|---:|---:|");
    for d in DIFFS {
        let mut ratios: Vec<f64> = (0..seeds as u64)
            .map(|seed| {
                let mut rng = StdRng::seed_from_u64(seed * 1_000_003 + d as u64);
                let common = items(&mut rng, COMMON);
                let a_own = items(&mut rng, d / 2);
                let b_own = items(&mut rng, d - d / 2);
                let a: Vec<Item> = common.iter().chain(&a_own).copied().collect();
                let b: Vec<Item> = common.iter().chain(&b_own).copied().collect();
                let n = symbols_to_decode(&a, &b, 100 * d + 100).expect("decodes");
                n as f64 / d as f64
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "| {d} | {:.3} | {:.3} | {:.3} |",
            percentile(&ratios, 0.5),
            percentile(&ratios, 0.95),
            ratios[ratios.len() - 1]
        );
    }

    println!(
        "\n## Whole sync sessions ({session_seeds} seeds; medians; windows of 16 doubling to 1,024)\n"
    );
    println!(
        "| d | symbols sent | per difference | rounds | bytes up | bytes down | wire bytes per difference |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for d in DIFFS {
        let mut runs: Vec<Cost> = (0..session_seeds as u64).map(|s| session(s, d)).collect();
        let med = |f: &dyn Fn(&Cost) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            percentile(&v, 0.5)
        };
        let symbols = med(&|r| r.0 as f64);
        let rounds = med(&|r| f64::from(r.3));
        let up = med(&|r| r.1 as f64);
        let down = med(&|r| r.2 as f64);
        let total = med(&|r| (r.1 + r.2) as f64);
        runs.clear();
        println!(
            "| {d} | {symbols:.0} | {:.2} | {rounds:.0} | {up:.0} | {down:.0} | {:.0} |",
            symbols / d as f64,
            total / d as f64
        );
    }
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
}
