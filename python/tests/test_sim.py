"""chaosnet_sim against the CLI: the same scenario and seed must give the same numbers from
Python as from `chaosnet sim --json`, bad YAML must raise ValueError with its line:col, and
the seed alone must decide the run.

The CLI is $CHAOSNET_BIN, else $CARGO_TARGET_DIR/debug/chaosnet, else target/debug/chaosnet
(`make python-test` builds it and sets CHAOSNET_BIN).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import chaosnet_sim

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "scenarios" / "default.yaml"
AGENTS = 200
DURATION_S = 20
SEED = 7

# What describes this process rather than the run: never compared.
WALL_FIELDS = {"wall_s", "speedup", "peak_rss_bytes"}


def chaosnet_bin() -> Path:
    if os.environ.get("CHAOSNET_BIN"):
        return Path(os.environ["CHAOSNET_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / "chaosnet"


def run_py(seed: int = SEED) -> dict:
    return chaosnet_sim.run(SCENARIO.read_text(), agents=AGENTS, duration_s=DURATION_S, seed=seed)


def deterministic(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in WALL_FIELDS}


@pytest.fixture(scope="module")
def py_run() -> dict:
    return run_py()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> tuple[dict, list]:
    exe = chaosnet_bin()
    if not exe.is_file():
        pytest.fail(f"no chaosnet binary at {exe}: cargo build -p chaos-controller, or set CHAOSNET_BIN")
    out = tmp_path_factory.mktemp("sim")
    cmd = [
        str(exe), "sim", "-f", str(SCENARIO), "--agents", str(AGENTS),
        "--duration-s", str(DURATION_S), "--seed", str(SEED), "--json", "--out", str(out),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    # 0 every SLO held, 1 one failed: both are finished runs; 2 is a run that did not happen.
    assert p.returncode in (0, 1), f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr}"
    return json.loads(p.stdout), json.loads((out / "series.json").read_text())


def test_numbers_match_cli(py_run, cli_run):
    cli_summary, cli_series = cli_run
    py = py_run["summary"]
    # The numbers the issue names, one by one so a failure says which...
    for key in ["agents", "joined", "lookups_ok", "lookups_total", "connects", "rounds", "pass", "digest"]:
        assert py[key] == cli_summary[key], key
    # ...then everything else that does not depend on the process (verdicts, tasks, ...).
    assert deterministic(py) == deterministic(cli_summary)
    assert set(py) == set(cli_summary)
    # Seeds come on top of the site agents; the run did something.
    assert py["agents"] > AGENTS and py["seed"] == SEED
    assert py["joined"] == py["agents"] and py["lookups_total"] > 0
    # The series is the CLI's series.json, round for round.
    assert py_run["series"] == cli_series
    assert len(py_run["series"]) == py["rounds"]


@pytest.mark.parametrize(
    "text, where, what",
    [
        ("name: x\nsites: [\n", "2:8", "unclosed bracket"),
        ("name: x\nseeds: 3\nsites:\n  - name: a\n    nat: bogus\n", "5:10", "unknown variant `bogus`"),
    ],
)
def test_bad_yaml_raises_value_error_with_line_col(text, where, what):
    with pytest.raises(ValueError) as e:
        chaosnet_sim.run(text)
    msg = str(e.value)
    assert re.match(r"^<scenario>:\d+:\d+: ", msg), msg
    assert msg.startswith(f"<scenario>:{where}: ") and what in msg, msg
    # file_name only labels the message.
    with pytest.raises(ValueError, match=rf"^mine\.yaml:{where}: "):
        chaosnet_sim.run(text, file_name="mine.yaml")


def test_bad_option_raises_value_error():
    with pytest.raises(ValueError, match="duration-s"):
        chaosnet_sim.run(chaosnet_sim.DEFAULT_SCENARIO_YAML, duration_s=0)


def test_same_seed_same_run_other_seed_other_run(py_run):
    # The second run with the same seed goes on a thread while this one keeps ticking: with
    # the GIL held for the whole simulation (seconds), the ticks would stop until it ended.
    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(run=run_py(SEED)))
    started = time.monotonic()
    worker.start()
    ticks = 0
    while worker.is_alive():
        ticks += 1
        time.sleep(0.01)
    worker.join()
    elapsed = time.monotonic() - started
    again = box["run"]
    assert again["summary"]["digest"] == py_run["summary"]["digest"]
    assert deterministic(again["summary"]) == deterministic(py_run["summary"])
    assert again["series"] == py_run["series"]
    # ~100 ticks a second when the GIL is free; allow a loaded machine a tenth of that.
    assert elapsed < 0.5 or ticks >= 10 * elapsed, f"{ticks} ticks in {elapsed:.1f} s: GIL held?"

    other = run_py(SEED + 1)
    assert other["summary"]["seed"] == SEED + 1
    assert other["summary"]["digest"] != py_run["summary"]["digest"]


def test_series_frame(py_run):
    pd = pytest.importorskip("pandas")
    df = chaosnet_sim.series_frame(py_run)
    assert isinstance(df, pd.DataFrame)
    assert len(df) == py_run["summary"]["rounds"]
    assert "reachability" in df.columns and "counts.lookups_ok" in df.columns


def test_series_frame_without_pandas(py_run, monkeypatch):
    # A None entry in sys.modules makes `import pandas` raise ImportError, installed or not.
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="needs pandas"):
        chaosnet_sim.series_frame(py_run)


def test_notebook_example_runs():
    # The example is documentation: run it so it cannot rot.
    example = REPO / "python" / "examples" / "sim_notebook.py"
    p = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "digest" in p.stdout and "phase" in p.stdout
