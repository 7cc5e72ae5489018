//! SLO verdicts: each SLO of the scenario judged against the probe rounds and the fault
//! records of a finished run, with a one-line message naming the SLO, the deciding value
//! and when it was measured. Pure. What it does not do: measure (see `probe`) or decide when
//! a run is finished (see `drive`).

use super::super::probe::Round;
use super::super::report::{FaultRecord, Verdict};
use super::super::spec::{ProbeKind, SloSpec, When};

/// Seconds from a heal at `heal_ms` to the first round starting at or after it whose
/// reachability is at least `to`.
pub fn recovery_after(rounds: &[Round], heal_ms: i64, to: f64) -> Option<f64> {
    rounds
        .iter()
        .filter(|r| r.t_ms >= heal_ms && !r.pairs.is_empty())
        .find(|r| r.reach() >= to)
        .map(|r| (r.t_ms - heal_ms) as f64 / 1000.0)
}

fn value_of(slo: &SloSpec, r: &Round) -> Option<f64> {
    match &slo.probe {
        ProbeKind::Reachability => Some(r.reach()),
        ProbeKind::Alive => Some(r.alive_share()),
        ProbeKind::ModeShare { mode } => Some(r.mode_share(mode)),
        ProbeKind::Promql { .. } => r.promql.get(&slo.name).copied().flatten(),
        ProbeKind::Converged => r.converged(),
        ProbeKind::Recovery { .. } => None,
    }
}

/// Judges every SLO against the rounds and fault records.
pub fn judge(slos: &[SloSpec], rounds: &[Round], faults: &[FaultRecord]) -> Vec<Verdict> {
    slos.iter()
        .map(|s| {
            let mut v = Verdict {
                slo: s.name.clone(),
                probe: s.probe.name().to_string(),
                when: s.when,
                bound: s.bound_text(),
                pass: true,
                value: None,
                at_ms: None,
                message: String::new(),
            };
            if let ProbeKind::Recovery { .. } = s.probe {
                let end = rounds.last().map_or(0, |r| r.t_ms);
                let mut worst: Option<(f64, i64, &FaultRecord)> = None;
                for f in faults {
                    let Some(h) = f.heal_at_ms else { continue };
                    // Never recovered: the time to the end of the run, which fails any
                    // finite bound below it.
                    let rec = f.recovery_s.unwrap_or(f64::INFINITY);
                    let shown = if rec.is_finite() {
                        rec
                    } else {
                        (end - h) as f64 / 1000.0
                    };
                    let bad = !s.holds(rec);
                    if worst.is_none_or(|(w, _, _)| rec > w) || bad {
                        worst = Some((rec, h, f));
                        v.value = Some(shown);
                        v.at_ms = Some(h);
                    }
                    if bad && v.pass {
                        v.pass = false;
                        v.message = format!(
                            "SLO {:?} failed: recovery after heal of #{} {} at {:+.1} s took {} (needs {} s)",
                            s.name,
                            f.id,
                            f.fault,
                            h as f64 / 1000.0,
                            if rec.is_finite() {
                                format!("{rec:.1} s")
                            } else {
                                format!("more than {shown:.1} s (never recovered)")
                            },
                            s.bound_text()
                        );
                    }
                }
                if v.pass {
                    v.message = match v.value {
                        Some(x) => format!("worst recovery {x:.1} s ({} s)", s.bound_text()),
                        None => "no heals to judge".into(),
                    };
                }
                return v;
            }
            let judged: Vec<&Round> = rounds
                .iter()
                .filter(|r| match s.when {
                    When::Start => r.phase == "start",
                    When::End => r.phase == "end",
                    When::Continuous => true,
                    When::DuringFault => !r.active.is_empty(),
                })
                .collect();
            if judged.is_empty() {
                v.message = "no round to judge (nothing measured in this window)".into();
                return v;
            }
            let mut worst: Option<(f64, i64)> = None;
            for r in judged {
                match value_of(s, r) {
                    None => {
                        v.pass = false;
                        v.at_ms = Some(r.t_ms);
                        v.message = format!(
                            "SLO {:?} failed: {} had no value at {:+.1} s ({})",
                            s.name,
                            s.probe.name(),
                            r.t_ms as f64 / 1000.0,
                            r.phase
                        );
                        return v;
                    }
                    Some(x) if !s.holds(x) => {
                        v.pass = false;
                        v.value = Some(x);
                        v.at_ms = Some(r.t_ms);
                        v.message = format!(
                            "SLO {:?} failed: {} = {x:.3} at {:+.1} s ({}), needs {}",
                            s.name,
                            s.probe.name(),
                            r.t_ms as f64 / 1000.0,
                            r.phase,
                            s.bound_text()
                        );
                        return v;
                    }
                    Some(x) => {
                        // Closest to the bound is the most telling value of a pass.
                        let margin = s.min.map_or(f64::INFINITY, |m| x - m).min(
                            s.max.map_or(f64::INFINITY, |m| m - x),
                        );
                        if worst.is_none_or(|(w, _)| margin < w) {
                            worst = Some((margin, r.t_ms));
                            v.value = Some(x);
                            v.at_ms = Some(r.t_ms);
                        }
                    }
                }
            }
            v.message = format!(
                "{} = {:.3} ({})",
                s.probe.name(),
                v.value.unwrap_or(f64::NAN),
                s.bound_text()
            );
            v
        })
        .collect()
}
