# chaosnet_sim, notebook style: run a scenario in virtual time, read its summary, walk its
# series, and (when pandas is installed) look at the series as a DataFrame.
#
#   make python                                   # builds the module into the venv
#   /var/cache/chaosnet/venv/bin/python python/examples/sim_notebook.py [SCENARIO.yaml]
#
# The `# %%` lines are cell markers (Jupyter, VS Code): paste the cells into a notebook or run
# the file as a script. Without a file argument it runs the embedded default scenario.

# %% Run: 200 site agents (seeds come on top), a 20 s fault phase, a fixed seed.
import sys
from pathlib import Path

import chaosnet_sim

if len(sys.argv) > 1:
    path = Path(sys.argv[1])
    yaml, name = path.read_text(), str(path)
else:
    yaml, name = chaosnet_sim.DEFAULT_SCENARIO_YAML, "<default>"

try:
    result = chaosnet_sim.run(yaml, agents=200, duration_s=20, seed=7, file_name=name)
except ValueError as e:  # a bad scenario: "file:line:col: message"
    sys.exit(f"bad scenario: {e}")

# %% Summary: the same dict as `chaosnet sim --json` prints.
s = result["summary"]
print(f"{s['scenario']} seed {s['seed']}: {s['agents']} agents, {s['joined']} joined")
print(f"{s['virtual_s']:.0f} virtual s in {s['wall_s']:.1f} s wall ({s['speedup']:.1f}x)")
print(f"lookups {s['lookups_ok']}/{s['lookups_total']}, mean hops {s['lookup_hops_mean']:.2f}")
print(f"connects {s['connects']}, failures {s['connect_failures']}")
print(f"end reachability {s['reachability_end']:.3f}, pass={s['pass']}, digest {s['digest']}")
for slo, ok, msg in s["verdicts"]:
    print(f"  SLO {slo}: {'PASS' if ok else 'FAIL'} {msg}")

# %% Series: one dict per probe round, plain Python.
print(f"\n{'round':>5} {'t_s':>7} {'phase':<8} {'reach':>6} {'alive':>6} {'faults':>6} {'lookups':>8}")
for iv in result["series"]:
    c = iv["counts"]
    print(
        f"{iv['round']:>5} {iv['t_s']:>7.1f} {iv['phase']:<8} {iv['reachability']:>6.3f} "
        f"{iv['alive']:>6.3f} {iv['active_faults']:>6} {c['lookups_ok']:>4}/{c['lookups_total']:<4}"
    )

# %% DataFrame (optional): series_frame needs pandas and says so when it is missing.
try:
    df = chaosnet_sim.series_frame(result)
except ImportError as e:
    print(f"\n(no DataFrame: {e})")
else:
    print()
    print(df[["t_s", "phase", "reachability", "alive", "counts.lookups_ok"]].to_string())
