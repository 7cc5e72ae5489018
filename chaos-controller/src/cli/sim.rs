//! `chaosnet sim`: a scenario in virtual time ([`crate::simulate`]). Needs no root, no lab
//! and no agent binary.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::bar;
use crate::scenario::Scenario;
use crate::simulate::{self, SimOptions};

#[derive(Debug, Args)]
pub(super) struct SimArgs {
    /// Scenario file (default: the embedded default scenario, every NAT type).
    #[arg(short = 'f', long = "file", value_name = "SCENARIO.yaml")]
    file: Option<PathBuf>,
    /// Scale the non-seed agents to N (up to 100,000; a lab takes 1,000). Past the
    /// scenario's count the fleet grows by copies of its sites (`<site>-r<k>`, same NAT,
    /// conntrack and labels), so LANs keep their size; below it, sites shrink in proportion.
    #[arg(long, value_name = "N")]
    agents: Option<usize>,
    /// Length of the fault phase in virtual seconds (default: the scenario's
    /// chaos.duration_s, else 30). Join, warm-up and settle come on top.
    #[arg(long, value_name = "S")]
    duration_s: Option<u64>,
    /// Overrides the scenario's seed (node keys, fault timeline, probe samples, the
    /// simulated network's randomness).
    #[arg(long, value_name = "K")]
    seed: Option<u64>,
    /// Print the summary as JSON on stdout (agents, virtual_s, wall_s, lookups_ok,
    /// lookups_total, connects by mode, peak_rss_bytes, verdicts...).
    #[arg(long)]
    json: bool,
    /// Measure the cold NAT-pair matrix instead of running the chaos section: every
    /// ordered pair of sites from cold NATs, judged against theory, as `chaosnet matrix
    /// --cold` does in the lab.
    #[arg(long)]
    matrix: bool,
    /// Print every injection, heal and probe round (virtual times) to stderr.
    #[arg(short, long)]
    verbose: bool,
    /// Where the report goes (default: <runs-dir>/sim-<name>-<seed>).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// `chaosnet sim`.
pub(super) fn sim(runs: &Path, a: &SimArgs) -> anyhow::Result<ExitCode> {
    let scenario = match &a.file {
        Some(f) => Scenario::load(f)?,
        None => Scenario::default_scenario(),
    };
    let opts = SimOptions {
        agents: a.agents,
        duration_s: a.duration_s,
        seed: a.seed,
        progress: std::io::stderr().is_terminal(),
        verbose: a.verbose,
    };
    if a.matrix {
        let pb = bar(0, "matrix");
        let rows = simulate::run_matrix(scenario, &opts, &|r| {
            pb.set_message(format!("{} -> {}", r.from.agent, r.to.agent));
            pb.inc(1);
        })?;
        pb.finish_and_clear();
        if a.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            print!("{}", crate::matrix::render(&rows));
        }
        return Ok(if rows.iter().all(|r| r.pass) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let run = simulate::run(scenario, &opts)?;
    let s = &run.summary;
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| runs.join(format!("sim-{}-{}", s.scenario, s.seed)));
    let paths = run
        .write(&dir)
        .with_context(|| format!("cannot write the report to {}", dir.display()))?;
    for (slo, pass, msg) in &s.verdicts {
        eprintln!(
            "chaosnet: SLO {slo:<24} {}  {msg}",
            if *pass { "PASS" } else { "FAIL" }
        );
    }
    eprintln!("chaosnet: report: {}", paths.join(", "));
    if a.json {
        println!("{}", serde_json::to_string_pretty(s)?);
    } else {
        eprintln!(
            "chaosnet: {} agents ({} joined), {:.0} virtual s in {:.1} s wall ({:.1}x), lookups {}/{}, connects {:?}, peak RSS {} MiB",
            s.agents,
            s.joined,
            s.virtual_s,
            s.wall_s,
            s.speedup,
            s.lookups_ok,
            s.lookups_total,
            s.connects,
            s.peak_rss_bytes >> 20
        );
    }
    eprintln!(
        "chaosnet: verdict: {}",
        if s.pass {
            "PASS"
        } else {
            "FAIL (an SLO failed)"
        }
    );
    Ok(ExitCode::from(run.exit_code()))
}
