//! Tier 2: network segregation on one machine. Agents of mainnet, testnet and two private
//! networks with the same name but different keys are all told about each other's seeds, so
//! they really try to cross; every connection that comes up must stay inside one network and
//! key, and the refusals are counted. Also: key rotation and an expired key.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    Agent, AgentConfig, fail_fleet, metric_sum, wait_all_joined, wait_all_ready, write_key_file,
};
use serde_json::Value;

const PER_GROUP: usize = 3;
const REFUSALS: &str = "chaosnet_handshake_refusals_total";

fn refusals(a: &Agent, reason: &str) -> f64 {
    metric_sum(&a.metrics(), REFUSALS, &[("reason", reason)])
}

fn connect_ok(a: &Agent, b: &Agent) -> Result<(), String> {
    match a.connect(&b.node_id) {
        Ok(r) if r.status == 200 && r.json()["mode"] == "direct" => Ok(()),
        Ok(r) => Err(format!("{} -> {}: {} {}", a.name, b.name, r.status, r.body)),
        Err(e) => Err(format!("{} -> {}: {e}", a.name, b.name)),
    }
}

#[test]
fn networks_and_keys_never_mix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_a = dir.path().join("alpha-a.key");
    let key_b = dir.path().join("alpha-b.key");
    write_key_file(&key_a, [0xaa; 32], None);
    write_key_file(&key_b, [0xbb; 32], None);

    // (group label, network, key file)
    let groups: [(&str, &str, Option<&Path>); 4] = [
        ("main", "mainnet", None),
        ("test", "testnet", None),
        ("alphaA", "private:alpha", Some(&key_a)),
        ("alphaB", "private:alpha", Some(&key_b)),
    ];
    // The first agent of each group is that group's seed. Seeds start first so their ids and
    // addresses are known; every agent, seeds included, is given all four seeds.
    let mut seeds: Vec<Agent> = Vec::new();
    let mut rng_seed = 100;
    let base_cfg = |network: &str, key: Option<&Path>, rng: u64| {
        let mut c = AgentConfig::on(network, rng);
        if let Some(k) = key {
            c = c.key(k);
        }
        c
    };
    for (label, network, key) in groups {
        rng_seed += 1;
        seeds.push(Agent::prepare(
            &format!("{label}0"),
            base_cfg(network, key, rng_seed),
        ));
    }
    // The mainnet seed first, as for everyone.
    let seed_args: Vec<String> = seeds.iter().map(Agent::seed_arg).collect();
    for s in seeds.iter_mut() {
        s.config.seeds = seed_args
            .iter()
            .filter(|a| !a.starts_with(&s.node_id))
            .cloned()
            .collect();
        s.start();
    }
    let mut members: Vec<Agent> = Vec::new();
    for (label, network, key) in groups {
        for i in 1..PER_GROUP {
            rng_seed += 1;
            let mut cfg = base_cfg(network, key, rng_seed);
            // The mainnet seed first, then the other networks' seeds (one is the group's own).
            cfg.seeds = seed_args.clone();
            members.push(Agent::spawn(&format!("{label}{i}"), cfg));
        }
    }
    wait_all_ready(&seeds);
    wait_all_ready(&members);

    // Which group every node id belongs to.
    let mut group_of: HashMap<String, usize> = HashMap::new();
    let mut all: Vec<(&Agent, usize)> = Vec::new();
    for (g, s) in seeds.iter().enumerate() {
        group_of.insert(s.node_id.clone(), g);
        all.push((s, g));
    }
    for (i, m) in members.iter().enumerate() {
        let g = i / (PER_GROUP - 1);
        group_of.insert(m.node_id.clone(), g);
        all.push((m, g));
    }
    let everyone: Vec<&Agent> = all.iter().map(|(a, _)| *a).collect();

    // Members join through their own network's seed (the others refuse them).
    let member_refs: Vec<&Agent> = members.iter().collect();
    wait_all_joined(&member_refs, Duration::from_secs(45));

    // Refusals were counted: wrong network somewhere, bad key on every private agent.
    for (a, g) in &all {
        if *g >= 2 {
            a.wait_metrics("bad_key refusal counted", Duration::from_secs(30), |m| {
                metric_sum(m, REFUSALS, &[("reason", "bad_key")]) > 0.0
            });
        }
    }
    let wrong_network: f64 = everyone.iter().map(|a| refusals(a, "wrong_network")).sum();
    if wrong_network <= 0.0 {
        fail_fleet("no agent counted a wrong_network refusal", &everyone[..4]);
    }

    // Within a group, every member connects to every other; across groups, nothing does.
    let mut errors = Vec::new();
    for (a, ga) in &all {
        for (b, gb) in &all {
            if a.node_id == b.node_id {
                continue;
            }
            if ga == gb {
                if let Err(e) = connect_ok(a, b) {
                    errors.push(format!("same network failed: {e}"));
                }
            } else if let Ok(r) = a.connect(&b.node_id)
                && r.status == 200
            {
                errors.push(format!(
                    "cross-network connect succeeded: {} -> {}: {}",
                    a.name, b.name, r.body
                ));
            }
        }
    }

    // No connection listed by any agent leaves its network and key.
    for (a, g) in &all {
        let st = a.status();
        for c in st["connections"].as_array().cloned().unwrap_or_default() {
            let id = c["node_id"].as_str().unwrap_or("").to_string();
            match group_of.get(&id) {
                Some(other) if other == g => {}
                Some(other) => errors.push(format!(
                    "{} (group {g}) lists a connection to {} of group {other}",
                    a.name,
                    &id[..8.min(id.len())]
                )),
                None => errors.push(format!(
                    "{} lists a connection to unknown node {id}",
                    a.name
                )),
            }
        }
        // Contacts too: a node of another network must never get into the node graph.
        let peers = a.get("/peers").expect("GET /peers").json();
        for p in peers.as_array().cloned().unwrap_or_default() {
            let id = p["node_id"].as_str().unwrap_or("").to_string();
            if group_of.get(&id).is_some_and(|other| other != g) {
                errors.push(format!(
                    "{} has a contact of another network: {}",
                    a.name,
                    &id[..8]
                ));
            }
        }
    }
    if !errors.is_empty() {
        let shown: Vec<&str> = errors.iter().take(20).map(|s| s.as_str()).collect();
        fail_fleet(
            &format!(
                "{} segregation errors, e.g.:\n{}",
                errors.len(),
                shown.join("\n")
            ),
            &everyone,
        );
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

#[test]
fn key_rotation_accepts_old_and_new_and_refuses_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = dir.path().join("old.key");
    let new = dir.path().join("new.key");
    let old_expired = dir.path().join("old-expired.key");
    write_key_file(&old, [0x01; 32], None);
    write_key_file(&new, [0x02; 32], None);
    // The same secret as `old`, but its grace window ended long ago.
    write_key_file(&old_expired, [0x01; 32], Some(now_unix() - 3600));
    let net = "private:rot";

    let o = Agent::spawn("old-only", AgentConfig::on(net, 11).key(&old));
    let n = Agent::spawn("new-only", AgentConfig::on(net, 12).key(&new));
    o.wait_ready();
    n.wait_ready();
    // Rotating: new is current, old still accepted.
    let r = Agent::spawn(
        "rotating",
        AgentConfig::on(net, 13)
            .key(&new)
            .key(&old)
            .seed(&o)
            .seed(&n),
    );
    // Past the grace window: new, and old marked expired.
    let x = Agent::spawn(
        "rotated",
        AgentConfig::on(net, 14)
            .key(&new)
            .key(&old_expired)
            .seed(&n),
    );
    r.wait_ready();
    x.wait_ready();
    wait_all_joined(&[&r, &x], Duration::from_secs(30));

    for (a, b) in [(&r, &o), (&r, &n), (&x, &n)] {
        if let Err(e) = connect_ok(a, b) {
            fail_fleet(&format!("key rotation: {e}"), &[a, b]);
        }
    }
    // The rotated node holds `old` only as expired: it refuses a node holding just `old`.
    let before = refusals(&x, "bad_key");

    // A node still holding only `old` knocks at `rotated` (old expired there) and `new-only`:
    // both refuse it, while `old-only` and `rotating` (old still in grace) accept it.
    let e = Agent::spawn(
        "old-holder",
        AgentConfig::on(net, 15)
            .key(&old)
            .seed(&x)
            .seed(&o)
            .seed(&r)
            .seed(&n),
    );
    e.wait_ready();
    x.wait_metrics(
        "rotated counts bad_key for the old-key node",
        Duration::from_secs(30),
        |m| metric_sum(m, REFUSALS, &[("reason", "bad_key")]) > before,
    );
    n.wait_metrics(
        "new-only counts bad_key for the old-key node",
        Duration::from_secs(30),
        |m| metric_sum(m, REFUSALS, &[("reason", "bad_key")]) > 0.0,
    );
    for target in [&x, &n] {
        if let Ok(resp) = e.connect(&target.node_id)
            && resp.status == 200
        {
            fail_fleet(
                &format!(
                    "the old-key node connected to {}: {}",
                    target.name, resp.body
                ),
                &[&e, target],
            );
        }
    }
    for a in [&x, &n] {
        let st = a.status();
        if st["connections"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["node_id"] == Value::String(e.node_id.clone()))
        }) {
            a.fail(&format!("lists a connection to the old-key node: {st}"));
        }
    }
    for target in [&o, &r] {
        if let Err(err) = connect_ok(&e, target) {
            fail_fleet(&format!("old key still in grace: {err}"), &[&e, target]);
        }
    }

    // A node whose only key has expired refuses to start, saying why.
    let mut dead = Agent::prepare("expired-only", AgentConfig::on(net, 16).key(&old_expired));
    dead.start();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = dead.exited() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            dead.fail("an agent with only an expired key kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        status.code(),
        Some(2),
        "exit code 2 for a configuration error"
    );
    let log = dead.log_tail(5);
    assert!(
        log.contains("expired"),
        "the error names the expired key: {log}"
    );
}

/// Whether `a`'s `/status` lists a connection to `b`.
fn lists(a: &Agent, b: &Agent) -> bool {
    a.status()["connections"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["node_id"] == b.node_id.as_str()))
}

/// Three members of a private network hold one key that expires 30 s from now. Before it
/// does, A (by SIGHUP) and C (by the API) rotate their key files in place: the new key
/// first, the old one until it expires. B keeps only the old key. By +45 s B is cut off from
/// both, while the connection between A and C never drops.
#[test]
fn an_expiring_key_disconnects_live_and_a_reloaded_key_keeps_the_connection() {
    let start = std::time::Instant::now();
    let expiry = now_unix() + 30;
    let (old, new) = ([0x31; 32], [0x32; 32]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |n: &str| dir.path().join(format!("{n}.key"));
    for n in ["a", "b", "c"] {
        write_key_file(&file(n), old, Some(expiry));
    }
    let net = "private:live";
    let a = Agent::start_ready("a", AgentConfig::on(net, 51).key(&file("a")));
    let b = Agent::start_ready("b", AgentConfig::on(net, 52).key(&file("b")).seed(&a));
    let c = Agent::start_ready("c", AgentConfig::on(net, 53).key(&file("c")).seed(&a));
    wait_all_joined(&[&b, &c], Duration::from_secs(30));
    for (x, y) in [(&b, &c), (&a, &c), (&a, &b)] {
        if let Err(e) = connect_ok(x, y) {
            fail_fleet(&format!("before the expiry: {e}"), &[x, y]);
        }
    }

    common::write_keys_file(&file("a"), &[(new, None), (old, Some(expiry))]);
    a.signal("HUP");
    common::write_keys_file(&file("c"), &[(new, None), (old, Some(expiry))]);
    match c.post("/network-keys/reload", "{}", Duration::from_secs(15)) {
        Ok(r) if r.status == 200 && r.json()["keys"] == 2 => {}
        other => c.fail(&format!("POST /network-keys/reload: {other:?}")),
    }
    let remote_before = a.status()["connections"].clone();

    let mut a_c_dropped = false;
    let cut_off = loop {
        a_c_dropped |= !lists(&a, &c) || !lists(&c, &a);
        if !lists(&a, &b) && !lists(&c, &b) && !lists(&b, &a) && !lists(&b, &c) {
            break true;
        }
        if start.elapsed() > Duration::from_secs(45) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    if !cut_off {
        fail_fleet(
            &format!(
                "45 s after the keys were made, B (expired key only) is still connected: \
                 a {}, c {}, b {}",
                a.status()["connections"],
                c.status()["connections"],
                b.status()["connections"]
            ),
            &[&a, &b, &c],
        );
    }
    if a_c_dropped || !lists(&a, &c) {
        fail_fleet(
            &format!(
                "the connection between the two reloaded members dropped (before: {remote_before}, \
                 now: {})",
                a.status()["connections"]
            ),
            &[&a, &c],
        );
    }
    let closed_for_key: f64 = [&a, &b, &c]
        .iter()
        .map(|x| refusals(x, "no_valid_key"))
        .sum();
    if closed_for_key < 1.0 {
        fail_fleet(
            "no connection was counted as closed for no_valid_key",
            &[&a, &b, &c],
        );
    }
    println!(
        "expired member cut off {:.1} s after start (key expired at +30 s)",
        start.elapsed().as_secs_f64()
    );
    // B can no longer get in: its only key is expired.
    if b.connect(&a.node_id).is_ok_and(|r| r.status == 200) {
        fail_fleet("B reconnected to A with an expired key", &[&a, &b]);
    }
}
