//! `chaosnet run`, `timeline`, `fault` and `heal`: the chaos commands. `run` brings the lab
//! up as `up` does ([`super::lab::bring_up`]) in this process, drives it
//! ([`crate::chaos::run`]) and takes it down; `fault` and `heal` act on the current run's lab
//! under whatever runtimes its agents use.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::Args;

use super::lab::{BringUp, RuntimeArgs, Up, bring_up};
use crate::chaos::exec::{Executor, FaultState};
use crate::chaos::metrics::{Exporter, FaultLabels};
use crate::chaos::run::{self as chaos_run, Outcome, RunOptions};
use crate::chaos::{fault as faults, schedule, select, spec};
use crate::lab::{self, Lab};

#[derive(Debug, Args)]
pub(super) struct RunArgs {
    /// The scenario (with a `chaos:` section).
    scenario: PathBuf,
    /// Overrides the scenario's seed (node keys, fault timeline, probe samples).
    #[arg(long)]
    seed: Option<u64>,
    /// Leave the lab up afterwards (every fault healed).
    #[arg(long)]
    keep: bool,
    /// Also start Prometheus (needed by PromQL SLOs); it scrapes the controller too.
    #[arg(long)]
    monitor: bool,
    /// Port of the local Prometheus.
    #[arg(long, default_value_t = 9090)]
    prometheus_port: u16,
    /// The agent binary (default: `chaosnet-agent` next to this binary).
    #[arg(long, value_name = "PATH")]
    agent_bin: Option<PathBuf>,
    /// Go on when some agents did not join (for benchmarks of the controller itself).
    #[arg(long)]
    allow_unjoined: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Debug, Args)]
pub(super) struct TimelineArgs {
    /// The scenario.
    scenario: PathBuf,
    /// Overrides the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Debug, Args)]
pub(super) struct HealArgs {
    /// Also sweep every namespace of the run for fault state without a record (after a
    /// crash): fault nft tables, qdiscs, paused agents, impairments, links down.
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Args)]
pub(super) struct FaultArgs {
    /// kill, restart, pause, partition, loss, delay, bandwidth, nat-swap, ip-change, link-down.
    kind: String,
    /// Select agents of these sites (repeatable; `internet` = the seeds).
    #[arg(long)]
    site: Vec<String>,
    /// Select agents behind these NAT types (repeatable).
    #[arg(long)]
    nat: Vec<String>,
    /// Select seeds or peers.
    #[arg(long)]
    role: Option<String>,
    /// Select agents by name glob (repeatable), e.g. `home*`.
    #[arg(long)]
    name: Vec<String>,
    /// one, all, fixed:N or percent:P.
    #[arg(long, default_value = "all")]
    mode: String,
    /// Heal after this many seconds (the command waits); without it the fault stays until
    /// `chaosnet heal`.
    #[arg(long)]
    duration: Option<f64>,
    /// Seed of the random choices (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// partition: isolate, halves, majority, ring, bridge, sites.
    #[arg(long)]
    shape: Option<String>,
    /// partition: block only the first group towards the others.
    #[arg(long)]
    oneway: bool,
    /// loss: percent dropped each way.
    #[arg(long)]
    loss_pct: Option<f64>,
    /// delay: added delay in ms.
    #[arg(long)]
    delay_ms: Option<u64>,
    /// delay: jitter in ms.
    #[arg(long)]
    jitter_ms: Option<u64>,
    /// bandwidth: rate in kbit/s.
    #[arg(long)]
    rate_kbit: Option<u64>,
    /// nat-swap: the new NAT type.
    #[arg(long)]
    to: Option<String>,
    /// link-down: agent or site.
    #[arg(long)]
    scope: Option<String>,
}

/// `chaosnet run`, as one `chaos_run` span (exported with `--otlp-endpoint`) whose events
/// are the faults injected and healed.
pub(super) fn run(runs: &Path, a: RunArgs) -> anyhow::Result<ExitCode> {
    let span = tracing::info_span!(
        "chaos_run",
        scenario = %a.scenario.display(),
        run_id = tracing::field::Empty,
        verdict = tracing::field::Empty
    );
    let outcome = span.in_scope(|| run_traced(runs, &a));
    let verdict = match &outcome {
        Outcome::Finished(r) if r.pass => "pass",
        Outcome::Finished(_) => "slo_failed",
        Outcome::Failed(_) => "could_not_run",
    };
    span.record("verdict", verdict);
    if let Outcome::Failed(why) = &outcome {
        eprintln!("chaosnet: the run could not happen: {why}");
    }
    Ok(ExitCode::from(outcome.exit_code()))
}

fn run_traced(runs: &Path, a: &RunArgs) -> Outcome {
    let prepared = match chaos_run::prepare(&a.scenario, a.seed) {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(e),
    };
    chaos_run::print_timeline(&prepared.timeline);
    eprintln!("chaosnet: bringing the lab up");
    let label = a.scenario.display().to_string();
    let up = bring_up(
        runs,
        prepared.scenario.clone(),
        &BringUp {
            label: &label,
            runtime: &a.runtime,
            agent_bin: a.agent_bin.clone(),
            join_timeout: Duration::from_secs(60),
            keep_on_failure: a.allow_unjoined,
            monitor: a.monitor.then_some(a.prometheus_port),
            run_id: None,
        },
    );
    let lab = match up {
        Ok(Up::Ready(lab)) => lab,
        Ok(Up::Unjoined(lab)) => {
            eprintln!("chaosnet: warning: going on without every agent joined (--allow-unjoined)");
            lab
        }
        Ok(Up::Removed) => return Outcome::Failed("not every agent joined".into()),
        Err(e) => return Outcome::Failed(format!("{e:#}")),
    };
    tracing::Span::current().record("run_id", lab.run_id().0.as_str());
    let outcome = chaos_run::run(&lab, &prepared, &RunOptions { monitor: a.monitor });
    if a.keep {
        let _ = lab.save();
        eprintln!(
            "chaosnet: the lab stays up (--keep), faults healed; `chaosnet down` removes it ({})",
            lab.run_dir().display()
        );
    } else {
        let id = lab.run_id().0.clone();
        match lab.down() {
            Ok(r) => eprintln!(
                "chaosnet: run {id} down ({} namespaces removed)",
                r.namespaces
            ),
            Err(e) => {
                eprintln!("chaosnet: warning: down failed: {e} (run `chaosnet down --all`)")
            }
        }
    }
    outcome
}

/// `chaosnet timeline`: the seeded timeline, printed and as JSON; nothing created.
pub(super) fn timeline(a: &TimelineArgs) -> anyhow::Result<ExitCode> {
    let prepared = chaos_run::prepare(&a.scenario, a.seed).map_err(|e| anyhow!(e))?;
    chaos_run::print_timeline(&prepared.timeline);
    println!("{}", serde_json::to_string_pretty(&prepared.timeline)?);
    Ok(ExitCode::SUCCESS)
}

fn current(runs: &Path) -> anyhow::Result<Lab> {
    Ok(Lab::adopt(&lab::run_dir_of(runs, None)?)?)
}

/// `chaosnet fault`: one fault from the flags, validated as a scenario's faults are, into
/// the running fleet.
pub(super) fn fault(runs: &Path, a: FaultArgs) -> anyhow::Result<ExitCode> {
    let lab = current(runs)?;
    let plan = lab.plan();
    let targets = select::targets(plan);
    let chaos = spec::single(
        spec::FaultFlags {
            kind: a.kind,
            sites: a.site,
            nats: a.nat,
            role: a.role,
            names: a.name,
            mode: a.mode,
            duration_s: a.duration,
            shape: a.shape,
            oneway: a.oneway,
            loss_pct: a.loss_pct,
            delay_ms: a.delay_ms,
            jitter_ms: a.jitter_ms,
            rate_kbit: a.rate_kbit,
            to: a.to,
            scope: a.scope,
        },
        &targets,
    )
    .map_err(|e| anyhow!("bad fault: {}", e.message))?;
    let seed = a.seed.unwrap_or_else(rand::random::<u64>);
    let tl = schedule::timeline(&chaos, &targets, seed).map_err(|e| anyhow!(e.message))?;
    let Some(mut occ) = tl.occurrences.into_iter().next() else {
        bail!("the fault selected nothing");
    };
    // Ids of hand-made faults start at 1000, clear of a scenario's timeline ids.
    let st = FaultState::load(lab.run_dir());
    occ.id = st
        .active
        .iter()
        .map(|f| f.id + 1)
        .max()
        .unwrap_or(1000)
        .max(1000);
    let ex = Executor::new(&lab);
    let netem = plan
        .agents
        .first()
        .is_some_and(|x| ex.netem_available(&x.ns).0);
    let fp = faults::plan_fault(plan, &occ, netem)?;
    // A fault that heals itself on a monitored lab: serve the controller's metrics meanwhile,
    // so the dashboards shade the window. (Without --duration this command exits at once and
    // nothing could serve them.)
    let exporter = match a.duration {
        Some(_) if !fp.heal.is_empty() => Exporter::start(lab.run_dir(), &plan.run_id.0),
        _ => None,
    };
    let labels = FaultLabels {
        kind: fp.kind.clone(),
        fault: fp.fault.clone(),
        run: plan.run_id.0.clone(),
    };
    if let Some(x) = &exporter {
        x.metrics.declare(&labels);
        eprintln!(
            "chaosnet: controller metrics at http://{}/metrics; waiting for Prometheus to scrape them",
            x.addr
        );
        if !x.metrics.wait_scrape_after(0, Exporter::SCRAPE_WAIT) {
            eprintln!(
                "chaosnet: warning: Prometheus has not scraped the controller; injecting anyway"
            );
        }
    }
    let cost = ex.inject(&fp)?;
    if let Some(x) = &exporter {
        x.metrics.injected(&labels);
    }
    lab.save()?;
    println!(
        "chaosnet: injected #{} {} on {} ({}, {:.0} ms)",
        fp.id,
        fp.kind,
        fp.targets.join(","),
        fp.mechanism,
        cost.as_secs_f64() * 1000.0
    );
    match a.duration {
        Some(d) if !fp.heal.is_empty() => {
            std::thread::sleep(Duration::from_secs_f64(d));
            let (cost, errors) = ex.heal(&fp);
            lab.save()?;
            println!(
                "chaosnet: healed #{} ({:.0} ms)",
                fp.id,
                cost.as_secs_f64() * 1000.0
            );
            if let Some(x) = &exporter {
                // Prometheus sees the heal before the target goes away.
                x.metrics.healed(&labels);
                let seen = x.metrics.scrapes();
                x.metrics.wait_scrape_after(seen, Exporter::SCRAPE_WAIT);
            }
            if !errors.is_empty() {
                bail!("heal errors: {}", errors.join("; "));
            }
        }
        _ if !fp.heal.is_empty() => println!("chaosnet: `chaosnet heal` removes it"),
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// `chaosnet heal [--all]`.
pub(super) fn heal(runs: &Path, a: &HealArgs) -> anyhow::Result<ExitCode> {
    let lab = current(runs)?;
    let ex = Executor::new(&lab);
    let (n, errors) = if a.all {
        ex.heal_all()
    } else {
        let st = FaultState::load(lab.run_dir());
        let mut errors = Vec::new();
        for f in &st.active {
            errors.extend(ex.heal(f).1);
        }
        (st.active.len(), errors)
    };
    lab.save()?;
    println!(
        "chaosnet: healed {n} recorded fault(s){}",
        if a.all { " and swept the run" } else { "" }
    );
    if !errors.is_empty() {
        bail!("heal errors: {}", errors.join("; "));
    }
    Ok(ExitCode::SUCCESS)
}
