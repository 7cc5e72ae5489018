//! `chaosnet matrix`: the NAT-pair matrix of the running fleet ([`crate::matrix`]), measured
//! through the lab, printed and written to `<run>/matrix.json`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use super::bar;
use crate::apply::{self, NetCmd};
use crate::lab::{self, Lab};
use crate::matrix;

#[derive(Debug, Args)]
pub(super) struct MatrixArgs {
    /// Every ordered pair of agents, not one agent per site.
    #[arg(long)]
    all: bool,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Pairs measured at once (1 with --cold).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Before each pair, make both sites' routers forget (conntrack) every mapping and
    /// filter entry between the two sites, so each pair starts from cold NATs as
    /// strangers would, instead of reusing state left by earlier traffic between them.
    /// Pairs then run one at a time.
    #[arg(long)]
    cold: bool,
    /// Only pairs dialing from this site.
    #[arg(long, value_name = "SITE")]
    from: Option<String>,
    /// Only pairs dialing to this site.
    #[arg(long, value_name = "SITE")]
    to: Option<String>,
    /// Measure every selected pair this many times.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Give up on one pair after this long.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
    /// Run id (default: the current run).
    #[arg(long)]
    run: Option<String>,
}

/// Makes the router namespace `ns` forget the NAT mappings and filter state it holds for
/// traffic to or from `peer` (`conntrack -D -s/-d`), as if the two had never talked. Other
/// flows keep their state. conntrack exits 1 when no entry matched, which is fine here; only
/// a failure to run it at all is an error.
fn forget_conntrack_of(lab: &Lab, ns: &str, peer: std::net::Ipv4Addr) -> Result<(), String> {
    let ip = peer.to_string();
    for dir in ["-d", "-s"] {
        lab.net(ns, &NetCmd::new("conntrack", &["-D", dir, &ip]))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `chaosnet matrix`.
pub(super) fn matrix(runs: &Path, o: &MatrixArgs) -> anyhow::Result<ExitCode> {
    let run_dir = lab::run_dir_of(runs, o.run.as_deref())?;
    let lab = Lab::adopt(&run_dir)?;
    let pairs = matrix::select(
        matrix::pairs(lab.plan(), o.all),
        o.from.as_deref(),
        o.to.as_deref(),
        o.repeat,
    );
    if pairs.is_empty() {
        bail!("no pair to measure (fewer than two agents, or --from/--to match no site)");
    }
    if o.cold {
        apply::preflight()?;
    }
    let plan = lab.plan();
    let cold = o.cold;
    let before = |a: &matrix::Endpoint, b: &matrix::Endpoint| -> Result<(), String> {
        if !cold {
            return Ok(());
        }
        for (here, there) in [(a, b), (b, a)] {
            for ns in matrix::routers_of(plan, &here.site) {
                forget_conntrack_of(&lab, ns, there.public_ip)?;
            }
        }
        Ok(())
    };
    let parallel = if o.cold { 1 } else { o.parallel };
    let pb = bar(pairs.len() as u64, "matrix");
    let rows = matrix::measure(
        &lab,
        pairs,
        parallel,
        Duration::from_secs(o.timeout_s),
        &before,
        &|r| {
            pb.set_message(format!("{} -> {}", r.from.agent, r.to.agent));
            pb.inc(1);
        },
    );
    pb.finish_and_clear();
    let out = serde_json::json!({ "run_id": lab.run_id().0, "pairs": rows });
    let text = serde_json::to_string_pretty(&out)?;
    let file = run_dir.join("matrix.json");
    std::fs::write(&file, &text).with_context(|| format!("cannot write {}", file.display()))?;
    if o.json {
        println!("{text}");
    } else {
        print!("{}", matrix::render(&rows));
    }
    Ok(if rows.iter().all(|r| r.pass) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
