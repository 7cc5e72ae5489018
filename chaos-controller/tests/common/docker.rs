//! Helpers for tests against the real Docker engine: running the CLI, the skip-or-fail
//! check, building the image from the debug binaries, and removing it however a test ends.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::cli::{agent_bin, chaosnet, text};

/// Runs `docker <args>` and waits.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker")
}

/// Runs `docker <args>`, which must succeed; its stdout, trimmed.
pub fn docker_ok(args: &[&str]) -> String {
    let o = docker(args);
    assert!(o.status.success(), "docker {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Whether the engine answers; otherwise the reason.
pub fn docker_reachable() -> Result<(), String> {
    match Command::new("docker")
        .arg("info")
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`docker info` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("docker not runnable: {e}")),
    }
}

/// True when an engine answers. Otherwise prints "skipped" and returns false, or panics
/// when `CHAOSNET_REQUIRE_DOCKER=1`.
pub fn require_docker() -> bool {
    match docker_reachable() {
        Ok(()) => true,
        Err(why) if std::env::var("CHAOSNET_REQUIRE_DOCKER").as_deref() == Ok("1") => {
            panic!("CHAOSNET_REQUIRE_DOCKER=1 but the docker engine is not reachable: {why}")
        }
        Err(why) => {
            println!("skipped: docker engine not reachable ({why})");
            false
        }
    }
}

/// Builds `tag` with `scripts/build-image.sh` from the debug agent and controller.
pub fn build_image(tag: &str, env: &[(&str, &str)]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Command::new("bash")
        .arg(root.join("scripts/build-image.sh"))
        .arg("--bin")
        .arg(agent_bin())
        .arg("--controller")
        .arg(chaosnet())
        .args(["--tag", tag])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/build-image.sh")
}

/// Removes the test image however the test ends.
pub struct ImageGuard(pub String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["image", "rm", "--force", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
