//! The agent container image built by `scripts/build-image.sh` (what `make image` runs): built
//! here FROM scratch from the debug agent and controller binaries, then run with
//! `docker run --network none`, as the agent and as a pod's router (`chaosnet pod-router`).
//!
//! Skipped (with a printed reason) when no Docker engine is reachable, unless
//! `CHAOSNET_REQUIRE_DOCKER=1`, which turns the skip into a failure.

mod common;

use std::time::Instant;

use common::cli::text;
use common::docker::{ImageGuard, build_image, docker, require_docker};

#[test]
fn agent_image_from_scratch_runs_as_non_root() {
    if !require_docker() {
        return;
    }
    let started = Instant::now();
    let tag = format!("chaosnet-agent:test-{}", std::process::id());
    let _guard = ImageGuard(tag.clone());
    let source = "https://example.invalid/chaosnet-image-test";

    let build = build_image(&tag, &[("CHAOSNET_IMAGE_SOURCE", source)]);
    assert!(build.status.success(), "build-image.sh: {}", text(&build));
    let out = String::from_utf8_lossy(&build.stdout);
    assert!(
        out.contains("image size"),
        "no size printed: {}",
        text(&build)
    );

    // --version, with no network at all.
    let v = docker(&["run", "--rm", "--network", "none", &tag, "--version"]);
    assert!(v.status.success(), "--version: {}", text(&v));
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        format!("chaosnet-agent {}", env!("CARGO_PKG_VERSION"))
    );

    // keygen into the /data volume, as uid 10001: the volume is writable by the agent user.
    let k = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        &tag,
        "keygen",
        "--data-dir",
        "/data",
    ]);
    assert!(k.status.success(), "keygen: {}", text(&k));
    let id = String::from_utf8_lossy(&k.stdout).trim().to_string();
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "keygen printed no 64-hex NodeId: {}",
        text(&k)
    );

    // Labels, user, volume, entrypoint.
    let i = docker(&["image", "inspect", "--format", "{{json .Config}}", &tag]);
    assert!(i.status.success(), "inspect: {}", text(&i));
    let config: serde_json::Value = serde_json::from_slice(&i.stdout).expect("inspect JSON");
    assert_eq!(config["User"], "10001:10001", "{config:#}");
    assert!(config["Volumes"].get("/data").is_some(), "{config:#}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/chaosnet-agent"]),
        "{config:#}"
    );
    let labels = &config["Labels"];
    let label = |k: &str| {
        labels[format!("org.opencontainers.image.{k}")]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(label("title"), "chaosnet-agent", "{labels:#}");
    assert_eq!(label("version"), env!("CARGO_PKG_VERSION"), "{labels:#}");
    assert_eq!(label("source"), source, "{labels:#}");
    assert!(!label("description").is_empty(), "{labels:#}");
    assert!(!label("licenses").is_empty(), "{labels:#}");
    assert!(!label("revision").is_empty(), "{labels:#}");

    // No shell in the image.
    let sh = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/bin/sh",
        &tag,
        "-c",
        "true",
    ]);
    assert!(!sh.status.success(), "the image has a shell: {}", text(&sh));

    // The same image is a pod's router: the controller and nft run in it (no network
    // needed to render; `nft --version` proves its libraries made it in).
    let r = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/usr/local/bin/chaosnet",
        &tag,
        "pod-router",
        "--nat",
        "symmetric",
        "--dry-run",
    ]);
    assert!(r.status.success(), "pod-router --dry-run: {}", text(&r));
    let rules = String::from_utf8_lossy(&r.stdout);
    assert!(
        rules.contains("ip saddr 10.77.0.2/32")
            && rules.contains("addr replace 10.77.0.2/32 dev lo"),
        "pod-router rendered no pod NAT: {}",
        text(&r)
    );
    for tool in ["nft", "ip", "conntrack"] {
        let t = docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            &format!("/usr/sbin/{tool}"),
            &tag,
            if tool == "ip" { "-V" } else { "--version" },
        ]);
        assert!(t.status.success(), "{tool} in the image: {}", text(&t));
    }

    println!("image test took {:.1?}", started.elapsed());
}
