//! The chaos engine's pure half, without root: the `chaos:` schema and its errors with
//! line:col, selector and mode semantics, seeded timeline determinism, the fault plans
//! (nft text tagged with the run id, tc, signals, agent API), and SLO judging.

use std::collections::BTreeMap;

use chaos_controller::chaos::fault::{self, Action, ProcessOp};
use chaos_controller::chaos::probe::{PairResult, Round};
use chaos_controller::chaos::report::FaultRecord;
use chaos_controller::chaos::rng::SeededRng;
use chaos_controller::chaos::run::judge::{judge, recovery_after};
use chaos_controller::chaos::schedule::{self, Occurrence};
use chaos_controller::chaos::select::{self, Mode, Role, Selector};
use chaos_controller::chaos::spec::{self, ChaosSpec, FaultKind, Shape};
use chaos_controller::plan::{NatKind, Plan, RunId};
use chaos_controller::planner;
use chaos_controller::scenario::Scenario;

const SITES: &str = "seeds: 2
sites:
  - {name: pub, nat: none, agents: 4}
  - {name: home, nat: port-restricted-cone, agents: 3, labels: {tier: edge}}
  - {name: corp, nat: symmetric, agents: 2}
  - {name: mob, nat: cgnat, agents: 1}
";

/// A scenario's plan and its `chaos:` section checked against it, as `up` and `run` check
/// it before anything is created.
struct Checked {
    plan: Plan,
    chaos: ChaosSpec,
}

fn parse(chaos: &str) -> Result<Checked, String> {
    let s = Scenario::from_str(&format!("{SITES}{chaos}"), "t.yaml").map_err(|e| e.to_string())?;
    let plan = planner::plan(&s, &RunId("abc123".into())).map_err(|e| e.to_string())?;
    let (chaos, _) = chaos_controller::chaos::check(&s, &plan).map_err(|e| e.to_string())?;
    Ok(Checked { plan, chaos })
}

fn err(chaos: &str) -> String {
    match parse(chaos) {
        Ok(_) => panic!("expected an error for:\n{chaos}"),
        Err(e) => e,
    }
}

/// Line of the first line of the `chaos:` text inside the whole file.
const CHAOS_LINE: u64 = 7;

#[test]
fn schema_parses_with_documented_defaults() {
    let s = parse(
        "chaos:
  faults:
    - kind: kill
      select: {site: home}
      mode: one
      at_s: 5
      duration_s: 3
  slos:
    - {probe: reachability, min: 0.9}
",
    )
    .expect("valid");
    let c = &s.chaos;
    assert_eq!(
        (c.warmup_ms, c.duration_ms, c.settle_ms),
        (5000, 30_000, 10_000)
    );
    assert_eq!((c.probe_interval_ms, c.sample_pairs), (2000, 20));
    let f = &c.faults[0];
    assert_eq!(f.name, "kill-0");
    assert_eq!(f.kind, FaultKind::Kill);
    assert_eq!(f.mode, Mode::One);
    assert_eq!(f.schedule.at_ms, 5000);
    assert_eq!(f.schedule.duration_ms, Some(3000));
    assert_eq!(f.at.line, CHAOS_LINE + 2);
    assert_eq!(c.slos[0].name, "reachability-0");
    assert_eq!(format!("{:?}", c.slos[0].when), "End");
}

#[test]
fn bad_faults_are_refused_with_their_line() {
    let e = err("chaos:\n  faults:\n    - kind: explode\n");
    assert!(e.starts_with(&format!("t.yaml:{}:", CHAOS_LINE + 2)), "{e}");
    assert!(e.contains("unknown fault kind \"explode\""), "{e}");
    assert!(e.contains("partition"), "lists the kinds: {e}");

    let e = err("chaos:\n  faults:\n    - kind: kill\n      select: {site: nowhere}\n");
    assert!(e.starts_with(&format!("t.yaml:{}:", CHAOS_LINE + 3)), "{e}");
    assert!(e.contains("matches no agent"), "{e}");

    let e = err("chaos:\n  faults:\n    - kind: clock-skew\n");
    assert!(e.contains("not supported"), "{e}");

    let e = err("chaos:\n  faults:\n    - kind: loss\n");
    assert!(e.contains("needs loss_pct"), "{e}");

    let e = err("chaos:\n  faults:\n    - kind: kill\n      loss_pct: 5\n");
    assert!(e.contains("loss_pct is only for kind loss"), "{e}");
    assert!(e.starts_with(&format!("t.yaml:{}:", CHAOS_LINE + 3)), "{e}");

    let e = err("chaos:\n  faults:\n    - kind: kill\n      mode: most\n");
    assert!(e.contains("unknown mode \"most\""), "{e}");

    let e = err(
        "chaos:\n  faults:\n    - kind: nat-swap\n      to: symmetric\n      select: {site: pub}\n",
    );
    assert!(e.contains("needs NATed sites"), "{e}");

    let e = err("chaos:\n  faults:\n    - kind: kill\n      every_s: 5\n");
    assert!(e.contains("needs duration_s"), "{e}");

    let e = err("chaos:\n  faults:\n    - kind: kill\n      every_s: 5\n      duration_s: 6\n");
    assert!(e.contains("longer than every_s"), "{e}");

    let e = err("chaos:\n  duration_s: 10\n  faults:\n    - kind: kill\n      at_s: 20\n");
    assert!(e.contains("not inside the fault phase"), "{e}");

    let e = err("chaos:\n  slos:\n    - {probe: reachability}\n");
    assert!(e.contains("needs min or max"), "{e}");

    let e = err("chaos:\n  slos:\n    - {probe: latency, min: 1}\n");
    assert!(e.contains("unknown probe"), "{e}");

    let e = err("chaos:\n  faults:\n    - kind: kill\n      colour: red\n");
    assert!(e.contains("colour"), "unknown field named: {e}");
    assert!(e.starts_with(&format!("t.yaml:{}:", CHAOS_LINE + 3)), "{e}");
}

#[test]
fn overlapping_contradictory_faults_name_both_lines() {
    let e = err("chaos:
  faults:
    - name: stop
      kind: pause
      select: {name: pub-0}
      at_s: 1
      duration_s: 10
    - name: kill-it
      kind: kill
      select: {name: pub-0}
      at_s: 5
      duration_s: 2
");
    assert!(e.starts_with(&format!("t.yaml:{}:", CHAOS_LINE + 7)), "{e}");
    assert!(e.contains("\"kill-it\" overlaps fault \"stop\""), "{e}");
    assert!(e.contains(&format!("line {}", CHAOS_LINE + 2)), "{e}");
    assert!(e.contains("pub-0"), "{e}");

    // Disjoint in time, or composable kinds: accepted.
    parse(
        "chaos:
  faults:
    - {kind: pause, select: {name: pub-0}, at_s: 1, duration_s: 3}
    - {kind: kill, select: {name: pub-0}, at_s: 5, duration_s: 2}
    - {kind: loss, loss_pct: 10, select: {name: pub-0}, at_s: 1, duration_s: 10}
    - {kind: partition, shape: isolate, select: {name: pub-0}, at_s: 2, duration_s: 5}
",
    )
    .expect("no contradiction");
}

#[test]
fn selectors_and_modes() {
    let s = parse("").expect("valid");
    let t = select::targets(&s.plan);
    assert_eq!(t.len(), 12);
    assert_eq!(t[0].name, "seed-0");
    assert_eq!(t[0].role, Role::Seed);
    let names = |sel: &Selector| {
        sel.filter(&t)
            .iter()
            .map(|x| x.name.clone())
            .collect::<Vec<_>>()
    };
    let by_site = Selector {
        sites: vec!["home".into(), "corp".into()],
        ..Default::default()
    };
    assert_eq!(
        names(&by_site),
        ["home-0", "home-1", "home-2", "corp-0", "corp-1"]
    );
    let by_nat = Selector {
        nats: vec!["cgnat".into()],
        ..Default::default()
    };
    assert_eq!(names(&by_nat), ["mob-0"]);
    let seeds = Selector {
        role: Some(Role::Seed),
        ..Default::default()
    };
    assert_eq!(names(&seeds), ["seed-0", "seed-1"]);
    let glob = Selector {
        names: vec!["*-1".into()],
        role: Some(Role::Peer),
        ..Default::default()
    };
    assert_eq!(names(&glob), ["pub-1", "home-1", "corp-1"]);
    let label = Selector {
        labels: vec![("tier".into(), "edge".into())],
        ..Default::default()
    };
    assert_eq!(names(&label), ["home-0", "home-1", "home-2"]);
    assert_eq!(names(&Selector::default()).len(), 12);

    let all: Vec<String> = t.iter().map(|x| x.name.clone()).collect();
    let mut rng = SeededRng::new(3);
    assert_eq!(Mode::All.pick(&all, &mut rng), all);
    assert_eq!(Mode::One.pick(&all, &mut rng).len(), 1);
    assert_eq!(Mode::Fixed(5).pick(&all, &mut rng).len(), 5);
    assert_eq!(Mode::Fixed(50).pick(&all, &mut rng).len(), 12);
    let p = Mode::Percent(25.0).pick(&all, &mut rng);
    assert_eq!(p.len(), 3);
    // Picks keep plan order and never repeat.
    let pos: Vec<usize> = p
        .iter()
        .map(|n| all.iter().position(|x| x == n).expect("known"))
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{p:?}");
    // Seeded: the same stream picks the same agents.
    let a = Mode::Fixed(4).pick(&all, &mut SeededRng::new(9));
    let b = Mode::Fixed(4).pick(&all, &mut SeededRng::new(9));
    assert_eq!(a, b);
}

const CHURN: &str = "chaos:
  duration_s: 60
  faults:
    - name: churn
      kind: kill
      mode: percent:20
      select: {role: peer}
      every_s: 10
      duration_s: 5
    - name: flaky
      kind: loss
      loss_pct: 5
      mode: one
      probability: 0.5
      every_s: 7
      duration_s: 3
";

#[test]
fn same_seed_same_timeline_different_seed_different() {
    let s = parse(CHURN).expect("valid");
    let t = select::targets(&s.plan);
    let a = schedule::timeline(&s.chaos, &t, 42).expect("timeline");
    let b = schedule::timeline(&s.chaos, &t, 42).expect("timeline");
    assert_eq!(a, b);
    assert_eq!(
        serde_json::to_string(&a).expect("json"),
        serde_json::to_string(&b).expect("json")
    );
    let c = schedule::timeline(&s.chaos, &t, 43).expect("timeline");
    assert_ne!(a.occurrences, c.occurrences);

    // Churn: every 10 s from 0 to 50 s, 20% of 10 peers = 2 agents each time, healed 5 s later.
    let churn: Vec<&Occurrence> = a
        .occurrences
        .iter()
        .filter(|o| o.fault == "churn")
        .collect();
    assert_eq!(
        churn.iter().map(|o| o.start_ms).collect::<Vec<_>>(),
        [0, 10_000, 20_000, 30_000, 40_000, 50_000]
    );
    assert!(
        churn
            .iter()
            .all(|o| o.targets.len() == 2 && o.end_ms == Some(o.start_ms + 5000))
    );
    assert!(
        churn
            .iter()
            .all(|o| o.targets.iter().all(|n| !n.starts_with("seed")))
    );
    // Probability 0.5 over 9 draws: some happen and some not (fixed by the seed).
    let flaky = a.occurrences.iter().filter(|o| o.fault == "flaky").count();
    assert!(flaky > 0 && flaky < 9, "{flaky}");
    // Ids follow start order.
    assert!(
        a.occurrences
            .windows(2)
            .all(|w| w[0].start_ms <= w[1].start_ms && w[0].id + 1 == w[1].id)
    );
}

fn partition_occurrence(shape: Shape, oneway: bool, groups: Vec<Vec<&str>>) -> Occurrence {
    let groups: Vec<Vec<String>> = groups
        .into_iter()
        .map(|g| g.into_iter().map(str::to_string).collect())
        .collect();
    Occurrence {
        id: 7,
        fault: "cut".into(),
        fault_index: 0,
        kind: FaultKind::Partition { shape, oneway },
        start_ms: 0,
        end_ms: Some(1000),
        targets: groups.concat(),
        groups,
    }
}

#[test]
fn partition_shapes_block_the_right_pairs() {
    let ring = vec![vec!["a", "b", "c", "d", "e"]];
    let o = partition_occurrence(Shape::Ring, false, ring.clone());
    let m = fault::partition_blocks(Shape::Ring, false, &o.groups);
    // a's ring neighbours are b and e; it is cut from c and d only.
    let out: Vec<&str> = m["a"].0.iter().map(String::as_str).collect();
    assert_eq!(out, ["c", "d"]);

    let m = fault::partition_blocks(
        Shape::Bridge,
        false,
        &partition_occurrence(Shape::Bridge, false, vec![vec!["a"], vec!["b"], vec!["x"]]).groups,
    );
    assert!(m["a"].0.contains("b") && m["b"].0.contains("a"));
    assert!(!m.contains_key("x"), "the bridge is cut from nobody");

    let m = fault::partition_blocks(
        Shape::Halves,
        true,
        &partition_occurrence(Shape::Halves, true, vec![vec!["a"], vec!["b"]]).groups,
    );
    assert!(m["a"].0.contains("b"), "a may not send to b");
    assert!(m["b"].1.contains("a"), "b drops what a sends");
    assert!(
        m["b"].0.is_empty() && m["a"].1.is_empty(),
        "b -> a stays open"
    );
}

fn plan() -> Plan {
    parse("").expect("valid").plan
}

#[test]
fn partition_plan_tags_tables_with_the_run_and_uses_public_addresses() {
    let p = plan();
    // seed-0 and home-0 against pub-0 and home-1 (home is split across the cut).
    let o = partition_occurrence(
        Shape::Halves,
        false,
        vec![vec!["seed-0", "home-0"], vec!["pub-0", "home-1"]],
    );
    let f = fault::plan_fault(&p, &o, false).expect("plan");
    assert_eq!(f.inject.len(), 4);
    assert_eq!(f.heal.len(), 4);
    let script = |ns: &str| {
        f.inject
            .iter()
            .find_map(|a| match a {
                Action::Nft { ns: n, script } if n == ns => Some(script.clone()),
                _ => None,
            })
            .expect("script")
    };
    let seed0 = script("cnabc123-h-seed-0");
    assert!(seed0.contains("table ip chaos_abc123_7 {"), "{seed0}");
    assert!(
        seed0.contains("comment \"chaosnet run abc123 fault cut #7 partition\""),
        "{seed0}"
    );
    // pub-0 is public: its own address; home-1 sits behind a split NAT: public ip . port.
    assert!(seed0.contains("elements = { 198.18.1.10 }"), "{seed0}");
    assert!(seed0.contains("198.19.2.1 . 4434"), "{seed0}");
    // Within the site, home-0 sees home-1 on the LAN.
    let home0 = script("cnabc123-h-home-0");
    assert!(home0.contains("10.2.0.11"), "{home0}");
    // Heals delete the table, idempotently.
    assert!(f.heal.iter().all(|a| matches!(a, Action::Nft { script, .. }
        if script == "table ip chaos_abc123_7 { }\ndelete table ip chaos_abc123_7\n")));
}

#[test]
fn other_fault_plans() {
    let p = plan();
    let occ = |kind: FaultKind, targets: &[&str]| Occurrence {
        id: 3,
        fault: "f".into(),
        fault_index: 0,
        kind,
        start_ms: 0,
        end_ms: None,
        targets: targets.iter().map(|s| s.to_string()).collect(),
        groups: Vec::new(),
    };
    let f = fault::plan_fault(&p, &occ(FaultKind::Kill, &["pub-1"]), false).expect("kill");
    assert_eq!(
        f.inject,
        [Action::Process {
            agent: "pub-1".into(),
            op: ProcessOp::Kill
        }]
    );
    assert_eq!(
        f.heal,
        [Action::Process {
            agent: "pub-1".into(),
            op: ProcessOp::Start
        }]
    );
    let f = fault::plan_fault(&p, &occ(FaultKind::Restart, &["pub-1"]), false).expect("restart");
    assert!(f.heal.is_empty());

    let d = FaultKind::Delay {
        delay_ms: 80,
        jitter_ms: 20,
    };
    let f = fault::plan_fault(&p, &occ(d.clone(), &["home-0"]), false).expect("delay");
    assert!(f.mechanism.contains("userspace"), "{}", f.mechanism);
    assert!(matches!(
        f.inject[0],
        Action::Impair {
            delay_ms: 80,
            jitter_ms: 20,
            ..
        }
    ));
    assert!(matches!(f.heal[0], Action::Impair { delay_ms: 0, .. }));
    let f = fault::plan_fault(&p, &occ(d, &["home-0"]), true).expect("delay");
    assert!(f.mechanism.contains("netem"), "{}", f.mechanism);

    let f = fault::plan_fault(
        &p,
        &occ(FaultKind::Bandwidth { rate_kbit: 512 }, &["home-0"]),
        false,
    )
    .expect("tbf");
    let devs: Vec<(String, String)> = f
        .inject
        .iter()
        .filter_map(|a| match a {
            Action::Tc { ns, args, .. } => Some((ns.clone(), args[3].clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        devs,
        [
            ("cnabc123-h-home-0".to_string(), "eth0".to_string()),
            ("cnabc123-rt-home".to_string(), "h0".to_string())
        ]
    );

    let f = fault::plan_fault(
        &p,
        &occ(FaultKind::Loss { loss_pct: 12.5 }, &["pub-0"]),
        false,
    )
    .expect("loss");
    assert!(
        matches!(&f.inject[0], Action::Nft { script, .. } if script.contains("numgen random mod 10000 < 1250 drop"))
    );

    let f = fault::plan_fault(
        &p,
        &occ(
            FaultKind::NatSwap {
                to: NatKind::Symmetric,
            },
            &["home"],
        ),
        false,
    )
    .expect("swap");
    let swapped = match &f.inject[0] {
        Action::Nft { ns, script } => {
            assert_eq!(ns, "cnabc123-rt-home");
            script.clone()
        }
        other => panic!("{other:?}"),
    };
    assert!(swapped.contains("symmetric"), "{swapped}");
    assert!(swapped.contains("chaosnet run abc123"), "{swapped}");
    assert_eq!(
        f.inject[1],
        Action::ConntrackFlush {
            ns: "cnabc123-rt-home".into()
        }
    );
    let original = &p
        .rulesets
        .iter()
        .find(|r| r.ns == "cnabc123-rt-home")
        .expect("rules")
        .text;
    assert!(matches!(&f.heal[0], Action::Nft { script, .. } if script == original));

    let f = fault::plan_fault(&p, &occ(FaultKind::IpChange, &["corp"]), false).expect("ip");
    let text = format!("{:?}", f.inject);
    assert!(text.contains("198.19.3.101/15"), "{text}");
    assert!(text.contains("198.19.3.1/15"), "{text}");
    assert!(fault::plan_fault(&p, &occ(FaultKind::IpChange, &["pub"]), false).is_err());

    let f = fault::plan_fault(
        &p,
        &occ(FaultKind::LinkDown { site: false }, &["home-2"]),
        false,
    )
    .expect("link");
    let heal = format!("{:?}", f.heal);
    assert!(heal.contains("\"up\""), "{heal}");
    assert!(
        heal.contains("default") && heal.contains("10.2.0.1"),
        "route restored: {heal}"
    );
}

fn round(n: u32, t_ms: i64, phase: &str, active: Vec<u32>, ok: usize, tried: usize) -> Round {
    Round {
        n,
        t_ms,
        phase: phase.into(),
        active,
        alive: (5, 5),
        pairs: (0..tried)
            .map(|i| PairResult {
                from: "a".into(),
                to: "b".into(),
                ok: i < ok,
                mode: (i < ok).then(|| "direct".to_string()),
                elapsed_ms: 1.0,
                error: None,
            })
            .collect(),
        promql: BTreeMap::new(),
        kv: None,
    }
}

#[test]
fn slos_are_judged_and_failures_name_slo_value_and_time() {
    let s = parse(
        "chaos:
  slos:
    - {name: at-end, probe: reachability, when: end, min: 0.99}
    - {name: impossible, probe: reachability, when: continuous, min: 1.01}
    - {name: during, probe: reachability, when: during-fault, max: 0.6}
    - {name: rec, probe: recovery, max: 5}
    - {name: direct, probe: mode-share, mode: direct, when: end, min: 0.9}
",
    )
    .expect("valid");
    let rounds = vec![
        round(0, -2000, "start", vec![], 10, 10),
        round(1, 2000, "faults", vec![1], 5, 10),
        round(2, 6000, "faults", vec![], 8, 10),
        round(3, 9000, "settle", vec![], 10, 10),
        round(4, 12_000, "end", vec![], 10, 10),
    ];
    let heal_ms = 5000;
    let rec = FaultRecord {
        id: 1,
        fault: "cut".into(),
        kind: "partition".into(),
        targets: vec![],
        mechanism: "nft".into(),
        inject_at_ms: 0,
        heal_at_ms: Some(heal_ms),
        inject_cost_ms: 1.0,
        heal_cost_ms: Some(1.0),
        recovery_s: recovery_after(&rounds, heal_ms, 0.99),
    };
    assert_eq!(rec.recovery_s, Some(4.0));
    let v = judge(&s.chaos.slos, &rounds, &[rec]);
    let by: BTreeMap<&str, _> = v.iter().map(|x| (x.slo.as_str(), x)).collect();
    assert!(by["at-end"].pass);
    assert!(!by["impossible"].pass);
    let m = &by["impossible"].message;
    assert!(
        m.contains("\"impossible\"") && m.contains("1.000") && m.contains("-2.0 s"),
        "{m}"
    );
    assert!(by["during"].pass, "{}", by["during"].message);
    assert!(by["rec"].pass, "{}", by["rec"].message);
    assert!(by["direct"].pass);
}

#[test]
fn a_fault_from_flags_is_validated_as_a_scenarios_fault_is() {
    let c = parse("").expect("valid");
    let targets = select::targets(&c.plan);
    let flags = spec::FaultFlags {
        kind: "loss".into(),
        sites: vec!["home".into()],
        mode: "fixed:2".into(),
        duration_s: Some(4.0),
        loss_pct: Some(12.5),
        ..spec::FaultFlags::default()
    };
    let from_flags = spec::single(flags.clone(), &targets).expect("valid flags");
    let from_yaml = parse(
        "chaos:\n  faults:\n    - {kind: loss, loss_pct: 12.5, select: {site: home}, mode: 'fixed:2', duration_s: 4}\n",
    )
    .expect("valid yaml")
    .chaos;
    let (mut a, b) = (from_flags.faults[0].clone(), from_yaml.faults[0].clone());
    a.at = b.at;
    assert_eq!(a, b, "the same fault either way");

    let bad = |f: spec::FaultFlags| spec::single(f, &targets).expect_err("refused").message;
    let m = bad(spec::FaultFlags {
        sites: vec!["mars".into()],
        ..flags.clone()
    });
    assert!(m.contains("matches no agent"), "{m}");
    let m = bad(spec::FaultFlags {
        loss_pct: None,
        ..flags.clone()
    });
    assert!(m.contains("needs loss_pct"), "{m}");
    let m = bad(spec::FaultFlags {
        kind: "nat-swap".into(),
        loss_pct: None,
        to: Some("open".into()),
        ..flags
    });
    assert!(m.contains("nat-swap `to` must be one of"), "{m}");
}
