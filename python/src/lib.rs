//! `chaosnet_sim`: `chaosnet sim` from Python. Runs a scenario (its YAML text) in virtual time
//! with [`chaos_controller::simulate::run`] and hands back the run's summary (the same
//! [`Summary`] as `chaosnet sim --json`) and its series (one [`Interval`] per probe round).
//!
//! This crate is the native half, `chaosnet_sim._native`: one function, `run_json`, returning
//! `{"summary": ..., "series": ...}` as JSON text. The Python half
//! (`python/chaosnet_sim/__init__.py`) turns it into dicts and lists with `json.loads`, so
//! the keys and values are exactly those of the CLI's JSON and no Python object model is
//! kept in step with the Rust types by hand.
//!
//! What it does: parse and validate the scenario (a bad one raises `ValueError` with its
//! `file:line:col: message`), apply `agents`, `duration_s` and `seed` as the CLI's flags do,
//! and simulate with the GIL released, so other Python threads run meanwhile.
//!
//! What it does not do: write the report, `events.jsonl` or any other file (the CLI does;
//! nothing here touches the disk), run a lab, show progress, or run `chaosnet sim --matrix`.
//! The simulator's warnings (PromQL SLOs not judged, faults without a model) still go to
//! stderr, as in the CLI. `wall_s`, `speedup` and `peak_rss_bytes` describe this Python
//! process, not a CLI run: they are the only fields that differ from `chaosnet sim --json`
//! for the same scenario and seed.

use chaos_controller::scenario::Scenario;
use chaos_controller::simulate::{self, SimOptions, Summary, drive::Interval};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use serde::Serialize;

/// What `run_json` returns, before it becomes JSON.
#[derive(Serialize)]
struct Output<'a> {
    summary: &'a Summary,
    series: &'a [Interval],
}

/// Parses, simulates and serializes; no Python in here, so it runs without the GIL.
///
/// Every failure is a message for `ValueError`: a scenario error already reads
/// `file:line:col: message`, and a [`simulate::SimError`] names the bad option.
fn simulate_json(text: &str, file_name: &str, opts: &SimOptions) -> Result<String, String> {
    let scenario = Scenario::from_str(text, file_name).map_err(|e| e.to_string())?;
    let run = simulate::run(scenario, opts).map_err(|e| e.to_string())?;
    let out = Output {
        summary: &run.summary,
        series: &run.series,
    };
    // Plain data (numbers, strings, maps with string keys): cannot fail, but say so if it does
    // rather than panic across the FFI boundary.
    serde_json::to_string(&out).map_err(|e| format!("cannot serialize the run: {e}"))
}

/// `run_json(scenario_yaml, agents=None, duration_s=None, seed=None, file_name="<scenario>")`:
/// the run as JSON text `{"summary": {...}, "series": [...]}`. Raises `ValueError` for a bad
/// scenario or option. `file_name` only labels error messages.
#[pyfunction]
#[pyo3(signature = (scenario_yaml, agents=None, duration_s=None, seed=None, file_name="<scenario>"))]
fn run_json(
    py: Python<'_>,
    scenario_yaml: &str,
    agents: Option<usize>,
    duration_s: Option<u64>,
    seed: Option<u64>,
    file_name: &str,
) -> PyResult<String> {
    let opts = SimOptions {
        agents,
        duration_s,
        seed,
        // A progress bar would draw over a notebook's or pytest's output; verbose lines too.
        progress: false,
        verbose: false,
    };
    // A 10,000-agent run takes minutes: release the GIL (pyo3's `detach`, formerly
    // `allow_threads`) so the interpreter's other threads are not frozen for that long.
    py.detach(|| simulate_json(scenario_yaml, file_name, &opts))
        .map_err(PyValueError::new_err)
}

/// The native module `chaosnet_sim._native`; `import chaosnet_sim` for the Python API.
#[pymodule]
#[pyo3(name = "_native")]
mod native {
    #[pymodule_export]
    use super::run_json;

    /// The text of `scenarios/default.yaml` (every NAT type), as `chaosnet sim` without `-f`.
    #[pymodule_export]
    const DEFAULT_SCENARIO_YAML: &str = chaos_controller::scenario::DEFAULT_SCENARIO_YAML;
}
