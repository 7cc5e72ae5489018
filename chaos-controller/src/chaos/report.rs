//! Run reports: what a finished run found ([`RunReport`], with its [`FaultRecord`]s and
//! [`Verdict`]s), written as `report.md`, `report.json` and a self-contained `report.html`
//! with SVG charts.
//!
//! Charts are drawn with `plotters` (SVG backend only, no fonts: the browser renders the
//! text): reachability and agents alive over time with fault windows shaded, connection mode
//! shares over time, and the NAT-pair matrix (share of sampled connects that succeeded, by
//! source and target NAT type) as a heat map. Tables give the verdicts, each fault with its
//! mechanism, controller cost and time to recover, and the matrix in numbers.
//!
//! Rendering is pure ([`markdown`], [`html`], [`nat_matrix`]); [`write_all`] writes the files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use super::probe::Round;
use super::schedule::Timeline;
use super::spec::{ChaosSpec, When};
use crate::plan::SEED_SITE;

/// The verdict of one SLO.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// SLO name.
    pub slo: String,
    /// Probe kind.
    pub probe: String,
    /// When it was judged.
    pub when: When,
    /// Its bound, e.g. `>= 0.99`.
    pub bound: String,
    /// Held.
    pub pass: bool,
    /// The deciding value (the failing one, or the worst one when it held).
    pub value: Option<f64>,
    /// When the deciding value was measured, ms into the fault phase.
    pub at_ms: Option<i64>,
    /// One line for people.
    pub message: String,
}

/// One injected occurrence, as it happened.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultRecord {
    /// Occurrence id.
    pub id: u32,
    /// Fault name.
    pub fault: String,
    /// Kind.
    pub kind: String,
    /// Targets.
    pub targets: Vec<String>,
    /// Mechanism used.
    pub mechanism: String,
    /// Inject time, ms into the fault phase.
    pub inject_at_ms: i64,
    /// Heal time, ms into the fault phase (`None` for a restart).
    pub heal_at_ms: Option<i64>,
    /// Controller time spent injecting, ms.
    pub inject_cost_ms: f64,
    /// Controller time spent healing, ms.
    pub heal_cost_ms: Option<f64>,
    /// Seconds from the heal to the first round at the recovery threshold.
    pub recovery_s: Option<f64>,
}

/// Everything a report shows.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// Run id.
    pub run_id: String,
    /// Scenario name.
    pub scenario: String,
    /// Seed used.
    pub seed: u64,
    /// The chaos settings.
    pub chaos: ChaosSpec,
    /// The timeline.
    pub timeline: Timeline,
    /// Probe rounds.
    pub rounds: Vec<Round>,
    /// Faults as they happened.
    pub faults: Vec<FaultRecord>,
    /// Verdicts.
    pub verdicts: Vec<Verdict>,
    /// Every SLO held.
    pub pass: bool,
    /// Whether netem was available, and why not.
    pub netem: (bool, String),
    /// Agent name -> (site, NAT label).
    pub agents: BTreeMap<String, (String, String)>,
}

/// One cell of the NAT-pair matrix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    /// Connects that succeeded.
    pub ok: usize,
    /// Connects tried.
    pub tried: usize,
    /// Successful connects by mode (`direct`, `punched`, `relayed`).
    pub modes: BTreeMap<String, usize>,
}

/// The NAT-pair matrix: (source NAT, target NAT) -> cell, over the rounds during which no
/// fault was active (the network's own connectivity by NAT pair; fault windows are in the
/// time chart).
pub fn nat_matrix(r: &RunReport) -> BTreeMap<(String, String), Cell> {
    let mut m: BTreeMap<(String, String), Cell> = BTreeMap::new();
    let nat = |a: &str| {
        r.agents.get(a).map_or("?".to_string(), |(site, nat)| {
            if site == SEED_SITE {
                "seed".to_string()
            } else {
                nat.clone()
            }
        })
    };
    for round in r.rounds.iter().filter(|x| x.active.is_empty()) {
        for p in &round.pairs {
            let e = m.entry((nat(&p.from), nat(&p.to))).or_default();
            e.tried += 1;
            if p.ok {
                e.ok += 1;
                *e.modes
                    .entry(p.mode.clone().unwrap_or_else(|| "?".into()))
                    .or_default() += 1;
            }
        }
    }
    m
}

fn secs(ms: i64) -> String {
    format!("{:+.1} s", ms as f64 / 1000.0)
}

fn opt_f(v: Option<f64>, unit: &str) -> String {
    v.map_or("-".to_string(), |x| format!("{x:.1}{unit}"))
}

/// The Markdown report.
pub fn markdown(r: &RunReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# chaosnet run {} ({}), seed {}\n\n**Verdict: {}**\n",
        r.run_id,
        r.scenario,
        r.seed,
        if r.pass { "PASS" } else { "FAIL" }
    );
    let _ = writeln!(
        s,
        "## SLOs\n\n| SLO | probe | when | bound | value | at | result |\n|---|---|---|---|---|---|---|"
    );
    for v in &r.verdicts {
        let _ = writeln!(
            s,
            "| {} | {} | {:?} | {} | {} | {} | {} |",
            v.slo,
            v.probe,
            v.when,
            v.bound,
            opt_f(v.value, ""),
            v.at_ms.map_or("-".into(), secs),
            if v.pass {
                "pass".to_string()
            } else {
                format!("**FAIL**: {}", v.message)
            }
        );
    }
    let _ = writeln!(
        s,
        "\n## Faults\n\nDelay mechanism: {}.\n\n| # | fault | kind | targets | mechanism | injected | healed | inject cost | heal cost | recovered after |\n|---|---|---|---|---|---|---|---|---|---|",
        if r.netem.0 {
            "tc netem".to_string()
        } else {
            format!(
                "agent userspace impairment (tc netem unavailable: {})",
                r.netem.1.lines().next().unwrap_or("").trim()
            )
        }
    );
    for f in &r.faults {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} ms | {} | {} |",
            f.id,
            f.fault,
            f.kind,
            f.targets.join(", "),
            f.mechanism,
            secs(f.inject_at_ms),
            f.heal_at_ms.map_or("-".into(), secs),
            f.inject_cost_ms,
            opt_f(f.heal_cost_ms, " ms"),
            match (f.heal_at_ms, f.recovery_s) {
                (None, _) => "-".to_string(),
                (Some(_), Some(x)) => format!("{x:.1} s"),
                (Some(_), None) => "never".to_string(),
            }
        );
    }
    let _ = writeln!(
        s,
        "\n## NAT-pair matrix (rounds without an active fault)\n\n| from | to | ok / tried | share | direct | punched | relayed | failed |\n|---|---|---|---|---|---|---|---|"
    );
    for ((a, b), c) in nat_matrix(r) {
        let mode = |k: &str| c.modes.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "| {a} | {b} | {} / {} | {:.0}% | {} | {} | {} | {} |",
            c.ok,
            c.tried,
            c.ok as f64 * 100.0 / c.tried.max(1) as f64,
            mode("direct"),
            mode("punched"),
            mode("relayed"),
            c.tried - c.ok
        );
    }
    let _ = writeln!(
        s,
        "\n## Probe rounds\n\n| round | t | phase | reachability | alive | direct | punched | relayed | active faults |\n|---|---|---|---|---|---|---|---|---|"
    );
    for x in &r.rounds {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0}% ({} pairs) | {}/{} | {:.0}% | {:.0}% | {:.0}% | {:?} |",
            x.n,
            secs(x.t_ms),
            x.phase,
            x.reach() * 100.0,
            x.pairs.len(),
            x.alive.0,
            x.alive.1,
            x.mode_share("direct") * 100.0,
            x.mode_share("punched") * 100.0,
            x.mode_share("relayed") * 100.0,
            x.active
        );
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Why a chart could not be drawn.
pub type ChartError = String;

fn time_range(r: &RunReport) -> (f64, f64) {
    let lo = r.rounds.first().map_or(0, |x| x.t_ms).min(0) as f64 / 1000.0;
    let hi = r
        .rounds
        .last()
        .map_or(r.timeline.phase_ms as i64, |x| x.t_ms)
        .max(r.timeline.phase_ms as i64) as f64
        / 1000.0;
    (lo - 1.0, hi + 1.0)
}

/// Reachability, alive and mode shares over time with fault windows shaded.
pub fn timeline_svg(r: &RunReport) -> Result<String, ChartError> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (900, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (lo, hi) = time_range(r);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Reachability, agents alive and connection modes",
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(lo..hi, 0.0..1.05)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds into the fault phase")
            .y_desc("share")
            .draw()
            .map_err(|e| e.to_string())?;
        let end_s = r.timeline.phase_ms as f64 / 1000.0;
        for f in &r.faults {
            let a = f.inject_at_ms as f64 / 1000.0;
            let b = f
                .heal_at_ms
                .map_or(a + 0.3, |h| h as f64 / 1000.0)
                .min(end_s.max(a + 0.3));
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(a, 0.0), (b, 1.05)],
                    RED.mix(0.12).filled(),
                )))
                .map_err(|e| e.to_string())?;
        }
        let series = |f: &dyn Fn(&super::probe::Round) -> f64| -> Vec<(f64, f64)> {
            r.rounds
                .iter()
                .map(|x| (x.t_ms as f64 / 1000.0, f(x)))
                .collect()
        };
        type Line = (&'static str, RGBColor, Vec<(f64, f64)>);
        let lines: [Line; 5] = [
            ("reachability", BLUE, series(&|x| x.reach())),
            ("alive", GREEN, series(&|x| x.alive_share())),
            (
                "direct",
                RGBColor(120, 120, 120),
                series(&|x| x.mode_share("direct")),
            ),
            (
                "punched",
                RGBColor(230, 140, 0),
                series(&|x| x.mode_share("punched")),
            ),
            ("relayed", MAGENTA, series(&|x| x.mode_share("relayed"))),
        ];
        for (name, color, pts) in lines {
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(buf)
}

/// The NAT-pair matrix as a heat map (red 0% .. green 100%; grey: not sampled).
pub fn matrix_svg(r: &RunReport) -> Result<String, ChartError> {
    let m = nat_matrix(r);
    let mut kinds: Vec<String> = m.keys().flat_map(|(a, b)| [a.clone(), b.clone()]).collect();
    kinds.sort();
    kinds.dedup();
    let n = kinds.len().max(1);
    let cell = 70i32;
    let left = 170i32;
    let top = 60i32;
    let w = left + cell * n as i32 + 20;
    let h = top + cell * n as i32 + 40;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (w as u32, h as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let font = ("sans-serif", 13).into_font();
        root.draw(&Text::new(
            "NAT-pair matrix: source (rows) to target (columns), connects that succeeded (no fault active)",
            (10, 10),
            font.clone(),
        ))
        .map_err(|e| e.to_string())?;
        for (j, k) in kinds.iter().enumerate() {
            root.draw(&Text::new(
                k.clone(),
                (left + j as i32 * cell + 4, top - 18),
                ("sans-serif", 11).into_font(),
            ))
            .map_err(|e| e.to_string())?;
        }
        for (i, a) in kinds.iter().enumerate() {
            let y = top + i as i32 * cell;
            root.draw(&Text::new(a.clone(), (10, y + cell / 2 - 6), font.clone()))
                .map_err(|e| e.to_string())?;
            for (j, b) in kinds.iter().enumerate() {
                let x = left + j as i32 * cell;
                let (color, label) = match m.get(&(a.clone(), b.clone())) {
                    Some(c) if c.tried > 0 => {
                        let (ok, tried) = (c.ok, c.tried);
                        let v = ok as f64 / tried as f64;
                        (
                            RGBColor((220.0 * (1.0 - v)) as u8 + 30, (190.0 * v) as u8 + 40, 60),
                            format!("{:.0}% ({tried})", v * 100.0),
                        )
                    }
                    _ => (RGBColor(220, 220, 220), "-".to_string()),
                };
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell - 2, y + cell - 2)],
                    color.filled(),
                ))
                .map_err(|e| e.to_string())?;
                root.draw(&Text::new(
                    label,
                    (x + 6, y + cell / 2 - 6),
                    ("sans-serif", 12).into_font().color(&WHITE),
                ))
                .map_err(|e| e.to_string())?;
            }
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(buf)
}

/// The HTML report: one file, charts inline.
pub fn html(r: &RunReport) -> String {
    let chart = |x: Result<String, ChartError>| {
        x.unwrap_or_else(|e| format!("<p>chart not drawn: {}</p>", esc(&e)))
    };
    let mut s = String::new();
    let verdict = if r.pass { "PASS" } else { "FAIL" };
    let _ = write!(
        s,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>chaosnet run {id}</title><style>\
         body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}\
         .pass{{color:#070;font-weight:bold}}.fail{{color:#b00;font-weight:bold}}</style></head><body>\
         <h1>chaosnet run {id} <small>({scen}, seed {seed})</small></h1>\
         <p>Verdict: <span class=\"{cls}\">{verdict}</span></p>",
        id = esc(&r.run_id),
        scen = esc(&r.scenario),
        seed = r.seed,
        cls = verdict.to_lowercase(),
    );
    s.push_str("<h2>SLOs</h2><table><tr><th>SLO</th><th>probe</th><th>when</th><th>bound</th><th>value</th><th>at</th><th>result</th></tr>");
    for v in &r.verdicts {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            esc(&v.slo),
            esc(&v.probe),
            v.when,
            esc(&v.bound),
            opt_f(v.value, ""),
            v.at_ms.map_or("-".into(), secs),
            if v.pass { "pass" } else { "fail" },
            if v.pass {
                "pass".to_string()
            } else {
                esc(&v.message)
            }
        );
    }
    s.push_str("</table><h2>Over time</h2><p>Shaded: fault windows.</p>");
    s.push_str(&chart(timeline_svg(r)));
    s.push_str("<h2>NAT-pair matrix</h2>");
    s.push_str(&chart(matrix_svg(r)));
    let _ = write!(
        s,
        "<h2>Faults</h2><p>Delay mechanism: {}</p><table><tr><th>#</th><th>fault</th><th>kind</th><th>targets</th><th>mechanism</th><th>injected</th><th>healed</th><th>inject cost</th><th>heal cost</th><th>recovered after</th></tr>",
        if r.netem.0 {
            "tc netem".to_string()
        } else {
            esc(&format!(
                "agent userspace impairment (tc netem unavailable: {})",
                r.netem.1.lines().next().unwrap_or("").trim()
            ))
        }
    );
    for f in &r.faults {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0} ms</td><td>{}</td><td>{}</td></tr>",
            f.id,
            esc(&f.fault),
            esc(&f.kind),
            esc(&f.targets.join(", ")),
            esc(&f.mechanism),
            secs(f.inject_at_ms),
            f.heal_at_ms.map_or("-".into(), secs),
            f.inject_cost_ms,
            opt_f(f.heal_cost_ms, " ms"),
            match (f.heal_at_ms, f.recovery_s) {
                (None, _) => "-".to_string(),
                (Some(_), Some(x)) => format!("{x:.1} s"),
                (Some(_), None) => "never".to_string(),
            }
        );
    }
    s.push_str("</table></body></html>\n");
    s
}

/// Writes `report.md`, `report.json` and `report.html` into `run_dir`; returns their paths.
pub fn write_all(run_dir: &Path, r: &RunReport) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for (name, text) in [
        ("report.md", markdown(r)),
        (
            "report.json",
            serde_json::to_string_pretty(r).map_err(std::io::Error::other)?,
        ),
        ("report.html", html(r)),
    ] {
        let p = run_dir.join(name);
        std::fs::write(&p, text)?;
        out.push(p.display().to_string());
    }
    Ok(out)
}
