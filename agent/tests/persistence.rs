//! Tier 2: the node graph survives `kill -9`, and the agent refuses unusable data dirs with
//! exit code 2 and a clear message.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{
    Agent, AgentConfig, BIN, fail_fleet, free_tcp_port, free_udp_port, wait_all_joined,
    wait_all_ready,
};
use serde_json::Value;

const FLEET: usize = 6;
const ROUNDS: usize = 3;

#[test]
fn node_graph_survives_kill_9_and_rejoins_without_seeds() {
    let mut seed = Agent::start_ready("seed", AgentConfig::mainnet(1).task_rate(20.0));
    let mut fleet: Vec<Agent> = (0..FLEET)
        .map(|i| {
            Agent::spawn(
                &format!("a{i}"),
                AgentConfig::mainnet(10 + i as u64)
                    .task_rate(20.0)
                    .seed(&seed),
            )
        })
        .collect();
    wait_all_ready(&fleet);
    {
        let mut all: Vec<&Agent> = fleet.iter().collect();
        all.push(&seed);
        wait_all_joined(&all, Duration::from_secs(45));
    }
    // The victim learns about more than the seed before the first kill.
    fleet[0].wait_status(
        "victim knows several contacts",
        Duration::from_secs(30),
        |st| st["contacts"].as_u64().is_some_and(|n| n >= 3),
    );

    // The seed dies for good: from now on only the restored graph can bring the victim back.
    seed.kill();
    for round in 1..=ROUNDS {
        let victim = &mut fleet[0];
        // With 20 tasks/s the graph is written all the time; kill in the middle of it.
        victim.wait_metrics("victim ran tasks", Duration::from_secs(30), |m| {
            common::metric_sum(m, "chaosnet_tasks_total", &[]) > 0.0
        });
        victim.kill();
        let mut cfg = victim.config.clone();
        cfg.seeds.clear();
        cfg.rng_seed += 1000;
        victim.restart_with(cfg);
        let first = victim.wait_ready();
        let contacts = first["contacts"].as_u64().unwrap_or(0);
        if contacts == 0 {
            victim.fail(&format!(
                "round {round}: restarted without seeds and its first /status shows no contacts \
                 (node graph not restored): {first}"
            ));
        }
        victim.wait_status(
            &format!("round {round}: rejoined through restored contacts"),
            Duration::from_secs(45),
            |st| st["joined"] == Value::Bool(true),
        );
        // It really talks to the fleet again (not just to itself).
        let peer = fleet[1 + round % (FLEET - 1)].node_id.clone();
        let victim = &fleet[0];
        match victim.connect(&peer) {
            Ok(r) if r.status == 200 => {}
            Ok(r) => fail_fleet(
                &format!(
                    "round {round}: restarted victim cannot connect: {} {}",
                    r.status, r.body
                ),
                &[victim, &fleet[1]],
            ),
            Err(e) => victim.fail(&format!("round {round}: /connect failed: {e}")),
        }
        let log = victim.log_tail(400).to_lowercase();
        if log.contains("corrupt") {
            victim.fail(&format!("round {round}: the log mentions corruption"));
        }
    }
}

/// Runs the agent in the foreground (bounded) and returns its output.
fn run_to_exit(data_dir: &Path, extra: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--network",
            "mainnet",
            "--task-rate",
            "0",
            "--rng-seed",
            "1",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{}", free_udp_port()))
        .arg("--api")
        .arg(format!("127.0.0.1:{}", free_tcp_port()))
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn chaosnet-agent");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "the agent did not exit within 20 s on a bad data dir; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[track_caller]
fn assert_config_error(out: &Output, what: &str, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: expected exit code 2, got {:?}; stderr:\n{stderr}",
        out.status
    );
    for w in words {
        assert!(
            stderr.contains(&w.to_lowercase()),
            "{what}: stderr does not mention {w:?}:\n{stderr}"
        );
    }
}

#[test]
fn a_data_dir_in_use_is_refused() {
    let a = Agent::start_ready("owner", AgentConfig::mainnet(1));
    let out = run_to_exit(&a.data_dir, &[]);
    assert_config_error(&out, "second agent on a data dir in use", &["lock"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        stderr.contains("another") || stderr.contains("already"),
        "the message should say another agent holds the dir:\n{stderr}"
    );
    // The owner is unaffected.
    a.status();
}

#[test]
fn a_graph_path_that_is_a_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    common::keygen(&data);
    std::fs::write(data.join("graph"), b"not a directory\n").expect("write graph file");
    let out = run_to_exit(&data, &[]);
    assert_config_error(
        &out,
        "graph path is a regular file",
        &["graph", "directory"],
    );
    assert_eq!(
        std::fs::read(data.join("graph")).expect("read graph file"),
        b"not a directory\n",
        "the agent replaced the file at the graph path"
    );
}

#[test]
fn a_garbage_node_key_is_refused_and_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let garbage = b"this is not a key \x00\xff\n".to_vec();
    let key = data.join("node.key");
    std::fs::write(&key, &garbage).expect("write garbage key");
    let out = run_to_exit(&data, &[]);
    assert_config_error(&out, "garbage node.key", &["node key", "malformed"]);
    assert_eq!(
        std::fs::read(&key).expect("read key file"),
        garbage,
        "the agent overwrote the garbage key file"
    );
    assert!(
        !data.join("graph").exists(),
        "the agent created the node graph despite an unusable key"
    );
    // `id` and `keygen` (without --force) refuse it too and keep it.
    let id = Command::new(BIN)
        .args(["id", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run id");
    assert_config_error(&id, "id on a garbage key", &["malformed"]);
    let kg = Command::new(BIN)
        .args(["keygen", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run keygen");
    assert_config_error(&kg, "keygen over an existing key", &["exists"]);
    assert_eq!(std::fs::read(&key).expect("read key file"), garbage);
}

#[test]
fn a_testnet_data_dir_started_as_mainnet_is_refused() {
    let mut a = Agent::start_ready("testnet-node", AgentConfig::on("testnet", 7));
    a.kill();
    let out = run_to_exit(&a.data_dir, &[]);
    assert_config_error(
        &out,
        "a testnet data dir started as mainnet",
        &[
            "belongs to network testnet",
            "started on mainnet",
            "--data-dir",
        ],
    );
    // On its own network it still starts, graph and all.
    a.restart_with(AgentConfig::on("testnet", 7));
    a.wait_ready();
}
