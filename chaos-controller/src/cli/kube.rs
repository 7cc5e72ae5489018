//! `chaosnet kube render|apply|down`: a scenario's fleet as Kubernetes objects
//! ([`crate::runtime::kube::render`]), printed for `kubectl apply -f -` or applied to the
//! cluster of the kubeconfig ([`crate::runtime::kube::Cluster`]), and removed by run label.
//! What the kube runtime does not do yet is listed in its module.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::lab::{ScenarioArgs, load_scenario};
use crate::plan::RunId;
use crate::planner;
use crate::runtime::docker::default_image;
use crate::runtime::kube::{self, Cluster, KubeOptions};

#[derive(Debug, Subcommand)]
pub(super) enum KubeCmd {
    /// Print the scenario's fleet as Kubernetes objects (YAML), without a cluster: a
    /// namespace, seeds and one StatefulSet per site, NATed pods with the router sidecar.
    /// Apply with `chaosnet kube render | kubectl apply -f -`.
    Render(RenderArgs),
    /// Render the scenario's fleet and server-side apply it (field manager `chaosnet`) to
    /// the cluster of the kubeconfig (KUBECONFIG, ~/.kube/config, or in-cluster). Returns
    /// once the API server accepted every object; it does not wait for pods to be ready.
    Apply(ApplyArgs),
    /// Delete a run's namespace (and everything in it) by its label `chaosnet.run`;
    /// idempotent, and needs no local state.
    Down(KubeDownArgs),
}

#[derive(Debug, Args)]
pub(super) struct ApplyArgs {
    #[command(flatten)]
    render: RenderArgs,
    /// The kubeconfig context (default: the current one).
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(super) struct KubeDownArgs {
    /// The run to delete.
    #[arg(long, value_name = "ID", group = "which")]
    run: Option<String>,
    /// Every chaosnet run in the cluster.
    #[arg(long, group = "which")]
    all: bool,
    /// The kubeconfig context (default: the current one).
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct RenderArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// The run id, in names and labels (default: a new random one).
    #[arg(long, value_name = "ID")]
    run_id: Option<String>,
    /// The namespace (default: chaosnet-<run id>).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// The image of agents and routers, loaded into the cluster (default
    /// chaosnet-agent:<version>, from `make image`).
    #[arg(long, env = "CHAOSNET_IMAGE", value_name = "IMAGE")]
    image: Option<String>,
    /// File whose first line is the control API's token (default: a new random one, in
    /// the rendered Secret).
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// Size of each pod's volume for its node graph, in MiB.
    #[arg(long, default_value_t = 256)]
    storage_mib: u32,
}

pub(super) fn kube(cmd: &KubeCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        KubeCmd::Render(a) => {
            let (objects, _) = render(a)?;
            print!("{}", kube::to_yaml(&objects));
            Ok(ExitCode::SUCCESS)
        }
        KubeCmd::Apply(a) => {
            let (objects, ns) = render(&a.render)?;
            let rt = runtime()?;
            let cluster = rt.block_on(Cluster::connect(a.context.as_deref()))?;
            let done = rt.block_on(cluster.apply(&objects))?;
            eprintln!(
                "chaosnet: applied {} objects (field manager {}); watch the pods with `kubectl -n {ns} get pods -w`",
                done.len(),
                kube::FIELD_MANAGER
            );
            Ok(ExitCode::SUCCESS)
        }
        KubeCmd::Down(a) => {
            let rt = runtime()?;
            let cluster = rt.block_on(Cluster::connect(a.context.as_deref()))?;
            let gone =
                rt.block_on(cluster.delete_runs(if a.all { None } else { a.run.as_deref() }))?;
            if gone.is_empty() {
                eprintln!("chaosnet: no chaosnet namespace matched: nothing to delete");
            }
            for ns in gone {
                eprintln!("chaosnet: deleting namespace {ns} (and everything in it)");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The controller is synchronous; kube-rs is async: one small runtime to block on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime for the cluster client")
}

/// The scenario's objects and their namespace.
fn render(a: &RenderArgs) -> anyhow::Result<(Vec<kube::Object>, String)> {
    let (scenario, _) = load_scenario(&a.scenario)?;
    let run = match &a.run_id {
        Some(id) => RunId(id.clone()),
        None => crate::lab::new_run_id(),
    };
    let plan = planner::plan(&scenario, &run)?;
    let api_token = match &a.api_token_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("--api-token-file {}", f.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        None => random_token()?,
    };
    if api_token.is_empty() {
        bail!("the API token file is empty");
    }
    let opts = KubeOptions {
        namespace: a
            .namespace
            .clone()
            .unwrap_or_else(|| format!("chaosnet-{}", run.0)),
        image: a.image.clone().unwrap_or_else(default_image),
        api_token,
        storage_mib: a.storage_mib,
    };
    let objects = kube::render(&plan, &opts)?;
    eprintln!(
        "chaosnet: rendered {} objects for run {} in namespace {} (image {})",
        objects.len(),
        run.0,
        opts.namespace,
        opts.image
    );
    Ok((objects, opts.namespace))
}

/// 24 random bytes as hex, from the kernel.
fn random_token() -> anyhow::Result<String> {
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom for the API token")?;
    Ok(hex::encode(b))
}
