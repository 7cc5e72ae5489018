#!/usr/bin/env bash
# Chaos engine benchmarks (root), 50 agents (3 seeds + 47 public agents, process runtime):
#  1. controller cost of one fault inject and one heal, per kind (`chaosnet fault ... --duration`,
#     the times the controller reports for its own work, CLI start-up excluded);
#  2. the smallest fault interval the controller sustains: `chaosnet run` with one fault every
#     I seconds (duration I/2) for 15 s, for shrinking I; an interval is sustained when every
#     inject is done within I/2 of its scheduled time (events.jsonl logs an inject when it is
#     done, so the lag includes the inject's own cost).
#  Agents that do not join do not matter here (`--keep-on-failure`, `run --allow-unjoined`):
#  the controller's own work is measured.
# Usage: scripts/bench-chaos.sh   (BIN=path/to/chaosnet, default the release build;
#        ITER=10 injections per kind; INTERVALS="2 1 0.5 0.25 0.1"; KINDS="loss partition")
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/chaosnet}
iter=${ITER:-10}
intervals=${INTERVALS:-"2 1 0.5 0.25 0.1"}
kinds=${KINDS:-"loss partition"}
[ -x "$bin" ] || { echo "missing $bin: run 'make release' or set BIN" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "the chaos benchmark needs root" >&2; exit 1; }
dir=$(mktemp -d)
# Only this script's own runs: `down` of the private runs dir's current run, never --all.
trap '"$bin" --runs-dir "$dir" down >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT

lab="name: bench
seed: 5
seeds: 3
agent: {task_rate: 0.5}
sites:
  - {name: pub, nat: none, agents: 47}
"
echo "== chaos: 50 agents, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $bin"
printf '%s' "$lab" > "$dir/lab.yaml"
"$bin" --runs-dir "$dir" up -f "$dir/lab.yaml" --join-timeout-s 60 --keep-on-failure >/dev/null 2>"$dir/up.log" || grep "did not join" "$dir/up.log" >&2

stats() { # name, then numbers on stdin
  awk -v n="$1" '{s+=$1; if ($1>m) m=$1; c++} END {if (c) printf "%-34s n=%d mean %.1f ms, max %.1f ms\n", n, c, s/c, m}'
}
for spec in "partition --shape isolate" "kill" "pause" "loss --loss-pct 20" "bandwidth --rate-kbit 512" "delay --delay-ms 50"; do
  inj=(); heal=()
  for i in $(seq 1 "$iter"); do
    # shellcheck disable=SC2086
    out=$("$bin" --runs-dir "$dir" fault $spec --mode one --seed "$i" --duration 0.3 2>&1) || { echo "$out" >&2; exit 1; }
    inj+=("$(grep -o 'injected .*, [0-9]* ms)' <<<"$out" | grep -o '[0-9]* ms)$' | grep -o '[0-9]*')")
    heal+=("$(grep -o 'healed #[0-9]* ([0-9]* ms)' <<<"$out" | grep -o '([0-9]*' | tr -d '(')")
  done
  kind=${spec%% *}
  printf '%s\n' "${inj[@]}" | stats "inject $kind"
  printf '%s\n' "${heal[@]}" | stats "heal   $kind"
done
"$bin" --runs-dir "$dir" down >/dev/null

for kind in $kinds; do
  case $kind in
    loss) extra="loss_pct: 20, mode: one" ;;
    partition) extra="shape: isolate, mode: one" ;;
    *) extra="mode: one" ;;
  esac
  for i in $intervals; do
    d=$(awk -v i="$i" 'BEGIN {print i/2}')
    printf '%schaos:\n  warmup_s: 2\n  duration_s: 15\n  settle_s: 1\n  probe_interval_s: 5\n  sample_pairs: 4\n  faults:\n    - {kind: %s, %s, every_s: %s, duration_s: %s}\n' \
      "$lab" "$kind" "$extra" "$i" "$d" > "$dir/every.yaml"
    "$bin" --runs-dir "$dir" run "$dir/every.yaml" --allow-unjoined >/dev/null 2>"$dir/run.log" || true
    ev="$dir/$(readlink "$dir/current")/events.jsonl"
    python3 - "$ev" "$i" "$kind" <<'PY'
import json, math, sys
ev, every, kind = sys.argv[1], float(sys.argv[2]), sys.argv[3]
inj = [json.loads(l) for l in open(ev) if '"event":"inject"' in l]
lags = [e["t_ms"] - e["scheduled_ms"] for e in inj]
cost = [e["cost_ms"] for e in inj]
want = math.ceil(15 / every - 1e-9)
ok = len(inj) >= want and lags and max(lags) <= every * 500
print(f"every {every:>5} s {kind:<9}: {len(inj)}/{want} injects, lag mean {sum(lags)/max(len(lags),1):.0f} ms max {max(lags or [0]):.0f} ms, "
      f"inject cost mean {sum(cost)/max(len(cost),1):.0f} ms -> {'sustained' if ok else 'NOT sustained'}")
PY
  done
done
