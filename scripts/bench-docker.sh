#!/usr/bin/env bash
# Docker runtime benchmark (root + a Docker engine): N agents as containers (default 50: the
# default scenario scaled to 47 site agents + 3 seeds, release build) from `chaosnet up` to
# all joined, then the same fleet as processes, and the memory each costs per agent:
#   - agent PSS: the agents' own proportional set size (/proc/<pid>/smaps_rollup);
#   - shim PSS: the containerd-shim process of each container (docker runtime only);
#   - host: the drop of MemAvailable from before `up` to all joined, per agent (includes
#     kernel memory such as cgroups, namespaces and page cache; noisy on a shared machine).
# Memory is read MEASURE_AT_S (default 40) seconds after `up` started, so agents of both
# runtimes are about as old (an agent's memory grows in its first seconds).
# Usage: scripts/bench-docker.sh   (AGENTS=47 non-seed agents, RUNS=1, IMAGE=chaosnet-agent:<version>;
#        the image is built from the release agent when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
bin=$target/release/chaosnet
agent=$target/release/chaosnet-agent
runs=${RUNS:-1}
measure_at=${MEASURE_AT_S:-40}
agents=${AGENTS:-47}
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
image=${IMAGE:-chaosnet-agent:$version}
[ -x "$bin" ] && [ -x "$agent" ] || { echo "missing $bin or $agent: run 'make release'" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "the docker benchmark needs root" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "the Docker engine is not reachable (docker info fails)" >&2; exit 1; }
if ! docker image inspect "$image" >/dev/null 2>&1; then
  bash scripts/build-image.sh --bin "$agent" --tag "$image"
fi
dir=$(mktemp -d)
# Only this benchmark's runs: never `down --all` (other labs may share the machine).
trap '"$bin" --runs-dir "$dir" down >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT

mem_available_kib() { awk '/^MemAvailable:/ {print $2}' /proc/meminfo; }
pss_kib() { # sum of Pss over the given pids
  local sum=0 p v
  for p in "$@"; do
    v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
mib() { awk -v k="$1" -v n="$2" 'BEGIN { printf "%.1f", k / 1024 / n }'; }

n=$((agents + 3))
echo "== docker runtime: $n agents (default scenario scaled), image $image, $runs run(s), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for rt in docker process; do
  for i in $(seq 1 "$runs"); do
    sync
    before=$(mem_available_kib)
    t0=$(date +%s)
    out=$("$bin" --runs-dir "$dir" up --agents "$agents" --runtime "$rt" --image "$image" --join-timeout-s 120 2>&1 >/dev/null) || { echo "$out" >&2; exit 1; }
    id=$(grep -o 'run [0-9a-f]\{6\}' <<<"$out" | head -1 | cut -d' ' -f2)
    join=$(grep -o 'joined in [0-9.]*[mµ]*s' <<<"$out")
    wait_s=$((measure_at - ($(date +%s) - t0)))
    [ "$wait_s" -gt 0 ] && sleep "$wait_s"
    after=$(mem_available_kib)
    if [ "$rt" = docker ]; then
      ids=$(docker ps -q --no-trunc --filter "label=chaosnet.run=$id")
      pids=$(for c in $ids; do docker inspect -f '{{.State.Pid}}' "$c"; done)
      shims=$(for c in $ids; do pgrep -f "containerd-shim.*-id $c" || true; done)
      shim=" shim PSS $(mib "$(pss_kib $shims)" "$n") MiB/agent;"
    else
      pids=$(grep -o '"pid": [0-9]*' "$dir/$id/state.json" | grep -o '[0-9]*$')
      shim=""
    fi
    agent_pss=$(pss_kib $pids)
    down=$("$bin" --runs-dir "$dir" down | grep -o 'removed in [0-9.]*[mµ]*s')
    left=$(docker ps -aq --filter "label=chaosnet.run=$id" | wc -l)
    echo "$rt run $i: all $n agents $join (from up); agent PSS $(mib "$agent_pss" "$n") MiB/agent;$shim host MemAvailable drop $(mib $((before - after)) "$n") MiB/agent; teardown $down; containers left: $left"
  done
done
