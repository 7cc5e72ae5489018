#!/usr/bin/env bash
# NAT-lab benchmarks (root): bring-up of 100 agents in mixed NATs (process runtime, release
# build) from `chaosnet up` to all joined, and teardown time with a leftover check.
# Usage: scripts/bench-lab.sh   (RUNS=3 by default; AGENTS=97 non-seed agents + 3 seeds)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CARGO_TARGET_DIR:-target}/release/chaosnet
runs=${RUNS:-3}
agents=${AGENTS:-97}
[ -x "$bin" ] || { echo "missing $bin: run 'make release'" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "the lab benchmark needs root" >&2; exit 1; }
dir=$(mktemp -d)
trap '"$bin" --runs-dir "$dir" down --all >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT

echo "== lab: $((agents + 3)) agents (default scenario scaled), $runs runs, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq 1 "$runs"); do
  out=$("$bin" --runs-dir "$dir" up --agents "$agents" --join-timeout-s 60 2>&1 >/dev/null) || { echo "$out" >&2; exit 1; }
  id=$(grep -o 'run [0-9a-f]\{6\}' <<<"$out" | head -1 | cut -d' ' -f2)
  lab=$(grep -o 'lab up: [0-9]* namespaces in [0-9.]*[mµ]*s' <<<"$out")
  join=$(grep -o 'joined in [0-9.]*[mµ]*s' <<<"$out")
  down=$("$bin" --runs-dir "$dir" down | grep -o 'removed in [0-9.]*[mµ]*s')
  left=$(ip netns list | grep -c "^cn$id-" || true)
  echo "run $i: $lab; all agents $join (from up); teardown $down; namespaces left: $left"
done
