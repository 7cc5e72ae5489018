#!/usr/bin/env bash
# Simulator benchmark, run by `make bench`: `chaosnet sim` (release) on scenarios/sim-10k.yaml
# with AGENTS site agents (default 10,000, plus 3 seeds): join, then 10 virtual minutes of
# join, lookup and connect tasks at 0.1 tasks/s per agent, with the fleet cut into two halves
# from +300 s to +360 s, judged by the scenario's SLOs. Prints the summary (wall time, the
# ratio to virtual time, peak RSS) and the verdicts; the report goes to $OUT
# (default runs/sim-bench). Then the scale example without NATs or probes (the harness alone,
# as the issue's first table measured it). Takes 10-30 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${AGENTS:-10000}
out=${OUT:-runs/sim-bench}
bin=${CARGO_TARGET_DIR:-target}/release/chaosnet
[ -x "$bin" ] || cargo build --release -q -p chaos-controller --bin chaosnet
echo "== chaosnet sim -f scenarios/sim-10k.yaml --agents $agents (load: $(cut -d' ' -f1-3 /proc/loadavg))"
status=0
"$bin" sim -f scenarios/sim-10k.yaml --agents "$agents" --json --out "$out" >"$out.json" || status=$?
python3 - "$out.json" "$agents" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
n = s["agents"]
print(f"| agents | virtual s | wall s | ratio | peak RSS | per agent | lookups ok | connects |")
print(f"|---|---|---|---|---|---|---|---|")
print(f"| {n:,} | {s['virtual_s']:.0f} | {s['wall_s']:.1f} | {s['speedup']:.1f}x | "
      f"{s['peak_rss_bytes'] / 2**20:.0f} MiB | {s['peak_rss_bytes'] / 1024 / n:.1f} KiB | "
      f"{s['lookups_ok']}/{s['lookups_total']} | {s['connects']} |")
for slo, ok, msg in s["verdicts"]:
    print(f"  SLO {slo}: {'PASS' if ok else 'FAIL'} {msg}")
PY
echo "exit code $status (0 pass, 1 an SLO failed)"
echo "== the harness alone: sim/examples/scale.rs $agents nodes, 600 virtual s, no NATs"
cargo run --release -q -p chaosnet-sim --example scale -- "$agents" 600 1
