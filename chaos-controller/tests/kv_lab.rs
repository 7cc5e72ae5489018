//! Key-value sync in the real NAT lab, as root: 12 agents over every NAT type split into an
//! east and a west half by a partition, 500 distinct writes on each side while it holds,
//! then the heal: every agent must converge to one digest holding all 1,000 keys. Nothing
//! may cross the cut while it holds. Skips without root unless `CHAOSNET_REQUIRE_ROOT=1`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use chaos_controller::lab::Lab;
use common::cli::{agent_bin, run, text};
use common::require_root;

const WRITES_PER_SIDE: usize = 500;
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// East: seed-0 and the `e*` sites; west: seed-1 and the `w*` sites. Six agents each.
const SCENARIO: &str = "name: kv-halves
seed: 5
seeds: 2
agent: {task_rate: 1}
sites:
  - {name: epub, nat: none, agents: 1}
  - {name: econe, nat: full-cone, agents: 2}
  - {name: eprc, nat: port-restricted-cone, agents: 1}
  - {name: esym, nat: symmetric, agents: 1}
  - {name: wpub, nat: none, agents: 1}
  - {name: wrest, nat: restricted-cone, agents: 2}
  - {name: wprc, nat: port-restricted-cone, agents: 1}
  - {name: wsym, nat: symmetric, agents: 1}
";

fn east(name: &str) -> bool {
    name == "seed-0" || name.starts_with('e')
}

/// (count, digest) of every agent, `None` where the API did not answer.
fn summaries(lab: &Lab, names: &[String]) -> Vec<Option<(usize, String)>> {
    names
        .iter()
        .map(|n| {
            lab.agent(n)
                .kv_summary(API_TIMEOUT)
                .ok()
                .map(|s| (s.count, s.digest))
        })
        .collect()
}

fn run_dir(runs: &Path) -> std::path::PathBuf {
    let id = std::fs::read_link(runs.join("current")).expect("current run");
    runs.join(id)
}

#[test]
fn writes_on_both_sides_of_a_partition_converge_after_the_heal() {
    if !require_root() {
        return;
    }
    let _lab = common::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = dir.path().join("runs");
    let scenario = dir.path().join("kv.yaml");
    std::fs::write(&scenario, SCENARIO).expect("write scenario");
    let bin = agent_bin();
    let o = run(
        &runs,
        &[
            "up",
            "-f",
            scenario.to_str().expect("utf-8"),
            "--agent-bin",
            bin.to_str().expect("utf-8"),
        ],
    );
    assert!(o.status.success(), "up failed:\n{}", text(&o));
    let down = || {
        let o = run(&runs, &["down"]);
        assert!(o.status.success(), "down failed:\n{}", text(&o));
    };
    let lab = Lab::adopt(&run_dir(&runs)).expect("adopt the lab");
    let names: Vec<String> = lab.plan().agents.iter().map(|a| a.name.clone()).collect();
    assert_eq!(names.len(), 12, "{names:?}");
    let (e, w): (Vec<&String>, Vec<&String>) = names.iter().partition(|n| east(n));
    assert_eq!((e.len(), w.len()), (6, 6), "{names:?}");

    // Cut east from west.
    let mut cut = vec![
        "fault",
        "partition",
        "--shape",
        "isolate",
        "--name",
        "seed-0",
    ];
    cut.extend(["--name", "e*"]);
    let o = run(&runs, &cut);
    if !o.status.success() {
        down();
        panic!("partition failed:\n{}", text(&o));
    }

    let started = Instant::now();
    for (side, members) in [("east", &e), ("west", &w)] {
        for i in 0..WRITES_PER_SIDE {
            let agent = members[i % members.len()];
            if let Err(err) = lab
                .agent(agent)
                .kv_put(&format!("{side}-{i}"), "v", API_TIMEOUT)
            {
                down();
                panic!("PUT on {agent}: {err}");
            }
        }
    }
    eprintln!(
        "{} writes in {:.1} s",
        2 * WRITES_PER_SIDE,
        started.elapsed().as_secs_f64()
    );
    // Let the halves sync among themselves for a while: nothing may cross the cut.
    std::thread::sleep(Duration::from_secs(20));
    let during = summaries(&lab, &names);
    let crossed: Vec<(&String, usize)> = names
        .iter()
        .zip(&during)
        .filter_map(|(n, s)| s.as_ref().map(|(c, _)| (n, *c)))
        .filter(|(_, c)| *c > WRITES_PER_SIDE)
        .collect();
    let digests: BTreeSet<&str> = during.iter().flatten().map(|(_, d)| d.as_str()).collect();

    let o = run(&runs, &["heal", "--all"]);
    if !o.status.success() {
        down();
        panic!("heal failed:\n{}", text(&o));
    }
    let healed = Instant::now();
    let took = loop {
        let s = summaries(&lab, &names);
        let first = s.first().cloned().flatten();
        if first
            .as_ref()
            .is_some_and(|f| f.0 == 2 * WRITES_PER_SIDE && s.iter().all(|x| x.as_ref() == Some(f)))
        {
            break Ok(healed.elapsed());
        }
        if healed.elapsed() > Duration::from_secs(180) {
            break Err(s);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    down();
    assert!(
        crossed.is_empty(),
        "keys crossed the partition while it held: {crossed:?}"
    );
    assert!(
        digests.len() >= 2,
        "the halves cannot agree while cut apart: {during:?}"
    );
    match took {
        Ok(t) => eprintln!(
            "12 agents converged on {} keys {:.1} s after the heal",
            2 * WRITES_PER_SIDE,
            t.as_secs_f64()
        ),
        Err(s) => panic!("no convergence within 180 s of the heal: {s:?}"),
    }
}
