#!/usr/bin/env bash
# Agent benchmarks on 127.0.0.1 (release build), run by `make bench`:
#   1. idle RSS and CPU of one agent with 20 peers at 1 task/s (and of the seed);
#   2. lookup latency p50/p95/max and found ratio with 50 agents (500 lookups from 10 agents);
#   3. QUIC echo throughput between two endpoints (agent/examples/quic_throughput.rs);
#   4. key-value per-update latency with 50 agents: a write at one agent until 95% and all of
#      them hold it (GET /kv/{key} polled on every agent in parallel; needs python3).
# Ends with a summary block to paste into BENCHMARKS.md. Takes ~4-5 minutes.
#
# Every agent runs from a mktemp data dir and is killed at exit, even on failure or Ctrl-C.
# Ports: P2P 27000+ (UDP), API 28000+ (TCP); override with BENCH_P2P_BASE / BENCH_API_BASE.
# BENCH_ONLY="1 3" runs a subset. Installs nothing: HTTP goes through curl, or python3 if
# curl is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=${CARGO_TARGET_DIR:-target}
bin=$target_dir/release/chaosnet-agent
example=$target_dir/release/examples/quic_throughput
p2p_base=${BENCH_P2P_BASE:-27000}
api_base=${BENCH_API_BASE:-28000}
only=${BENCH_ONLY:-1 2 3 4}

# Benchmark parameters (fixed; the summary states them).
idle_peers=20 idle_rate=1 idle_settle_s=20 idle_window_s=60
lk_agents=50 lk_rate=0.2 lk_settle_s=10 lk_from=10 lk_each=50
tp_mib=256 tp_chunk_kib=64 tp_runs=5
kv_agents=50 kv_rate=0.2 kv_settle_s=20 kv_writes=20
join_timeout_s=90

work=$(mktemp -d "${TMPDIR:-/tmp}/chaosnet-bench.XXXXXX")
pids_file=$work/pids
: >"$pids_file"
bench_pid=

# Stops every process this script started (agents and the throughput example): TERM, up to
# 5 s of grace, then KILL. Only pids we recorded, never by name.
stop_all() {
  local pid alive
  [ -s "$pids_file" ] || return 0
  while read -r pid; do kill -TERM "$pid" 2>/dev/null || true; done <"$pids_file"
  for _ in $(seq 1 50); do
    alive=0
    while read -r pid; do kill -0 "$pid" 2>/dev/null && alive=1; done <"$pids_file"
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$pids_file"
  : >"$pids_file"
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # The running benchmark first, so it starts nothing more; then what it started.
  [ -n "${bench_pid:-}" ] && kill -TERM "$bench_pid" 2>/dev/null
  stop_all
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# HTTP: curl if present, else python3's urllib.
# ---------------------------------------------------------------------------------------------
if command -v curl >/dev/null; then
  http_client=curl
  http_get() { curl -sS --max-time 5 "$1"; }
  http_post() { curl -sS --max-time 60 -H 'content-type: application/json' -d "$2" "$1"; }
elif command -v python3 >/dev/null; then
  http_client=python3-urllib
  py_http='import sys, urllib.error, urllib.request
url = sys.argv[1]
data = sys.argv[2].encode() if len(sys.argv) > 2 else None
req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
try:
    r = urllib.request.urlopen(req, timeout=60 if data else 5)
except urllib.error.HTTPError as e:
    r = e
sys.stdout.write(r.read().decode())'
  http_get() { python3 -c "$py_http" "$1"; }
  http_post() { python3 -c "$py_http" "$1" "$2"; }
else
  echo "bench: neither curl nor python3 found; cannot talk to the agents' API" >&2
  exit 1
fi

json_field() { # body field -> first value of that top-level scalar field
  grep -o "\"$2\":[^,}]*" <<<"$1" | head -n1 | cut -d: -f2- | tr -d '"'
}

# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------
# The agent binary comes from `make bench` (cargo build --release --workspace --bins); building
# it here too would rebuild it whenever the workspace's feature set differs from the agent's.
[ -x "$bin" ] || { echo "bench: $bin missing: run 'make release' (or 'make bench')" >&2; exit 1; }
if [ -n "$(find agent/src proto/src -name '*.rs' -newer "$bin" -print -quit)" ]; then
  log "warning: $bin is older than agent/ or proto/ sources; 'make release' rebuilds it"
fi
log "building the throughput example (no-op when up to date)"
cargo build --release --examples -p chaosnet-agent

# ---------------------------------------------------------------------------------------------
# Fleets
# ---------------------------------------------------------------------------------------------

# ports_free P2P API N: fails, naming them, if any of UDP P2P..P2P+N-1 or TCP API..API+N-1 is
# already bound (needs ss; without it, a taken port shows up as an agent exiting at start).
ports_free() {
  command -v ss >/dev/null || return 0
  local taken
  taken=$( { ss -Hlun | awk -v lo="$1" -v hi=$(($1 + $3 - 1)) '{ n = split($4, a, ":"); p = a[n] + 0; if (p >= lo && p <= hi) print "udp/" p }'
    ss -Hltn | awk -v lo="$2" -v hi=$(($2 + $3 - 1)) '{ n = split($4, a, ":"); p = a[n] + 0; if (p >= lo && p <= hi) print "tcp/" p }'
  } | sort -u | tr '\n' ' ')
  if [ -n "$taken" ]; then
    echo "ports already in use: $taken(set BENCH_P2P_BASE / BENCH_API_BASE to move the range)" >&2
    return 1
  fi
}

# start_fleet NAME N RATE P2P API: keygen + start N agents (agent 0 is every other's seed).
# Sets fleet_dir, fleet_pids[], fleet_ids[].
start_fleet() {
  local name=$1 n=$2 rate=$3 p2p=$4 api=$5 i pid seed_id args
  fleet_dir=$work/$name
  fleet_pids=() fleet_ids=()
  ports_free "$p2p" "$api" "$n"
  mkdir -p "$fleet_dir"
  for i in $(seq 0 $((n - 1))); do
    "$bin" keygen --data-dir "$fleet_dir/a$i" --force >/dev/null
    fleet_ids+=("$("$bin" id --data-dir "$fleet_dir/a$i")")
  done
  seed_id=${fleet_ids[0]}
  for i in $(seq 0 $((n - 1))); do
    args=(run --network mainnet --listen "127.0.0.1:$((p2p + i))" --data-dir "$fleet_dir/a$i"
      --api "127.0.0.1:$((api + i))" --task-rate "$rate" --rng-seed "$i")
    [ "$i" -gt 0 ] && args+=(--seed "$seed_id@127.0.0.1:$p2p")
    "$bin" "${args[@]}" >"$fleet_dir/a$i.log" 2>&1 &
    pid=$!
    echo "$pid" >>"$pids_file"
    fleet_pids+=("$pid")
  done
}

# wait_joined N API: until every agent's /status says joined; fails on timeout or a dead agent.
wait_joined() {
  local n=$1 api=$2 i joined start body
  start=$SECONDS
  while :; do
    for i in $(seq 0 $((n - 1))); do
      if ! kill -0 "${fleet_pids[$i]}" 2>/dev/null; then
        echo "agent a$i exited; its log:" >&2
        tail -n 20 "$fleet_dir/a$i.log" >&2
        return 1
      fi
    done
    joined=0
    for i in $(seq 0 $((n - 1))); do
      body=$(http_get "http://127.0.0.1:$((api + i))/status" 2>/dev/null || true)
      [[ $body == *'"joined":true'* ]] && joined=$((joined + 1))
    done
    if [ "$joined" -eq "$n" ]; then
      log "all $n agents joined after $((SECONDS - start)) s"
      return 0
    fi
    if [ $((SECONDS - start)) -ge "$join_timeout_s" ]; then
      echo "only $joined of $n agents joined within $join_timeout_s s; log tails:" >&2
      for i in $(seq 0 $((n - 1))); do echo "--- a$i"; tail -n 3 "$fleet_dir/a$i.log"; done >&2
      return 1
    fi
    sleep 1
  done
}

# ---------------------------------------------------------------------------------------------
# 1. Idle RSS and CPU
# ---------------------------------------------------------------------------------------------
clk_tck=$(getconf CLK_TCK)
proc_ticks() { # pid -> utime+stime in clock ticks (fields 14 and 15, after the "(comm)")
  local stat
  stat=$(<"/proc/$1/stat")
  stat=${stat##*) }
  awk '{ print $12 + $13 }' <<<"$stat"
}
proc_status_kib() { # pid field -> value in kB from /proc/pid/status
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

bench_idle() {
  local n=$((idle_peers + 1)) who pid t0 t1 c0 c1 rss max t_end i
  log "1. idle: $n agents at $idle_rate task/s; settle ${idle_settle_s} s, sample ${idle_window_s} s"
  start_fleet idle "$n" "$idle_rate" "$p2p_base" "$api_base"
  wait_joined "$n" "$api_base"
  sleep "$idle_settle_s"
  local body contacts=() conns=()
  for i in 0 1; do
    body=$(http_get "http://127.0.0.1:$((api_base + i))/status")
    contacts[i]=$(json_field "$body" contacts)
    conns[i]=$(grep -o '"mode":"' <<<"$body" | wc -l)
  done
  # Sample agent 1 (a non-seed) and agent 0 (the seed) every second over the window.
  local -A max_rss
  max_rss[0]=0 max_rss[1]=0
  c0=$(proc_ticks "${fleet_pids[1]}") && s0=$(proc_ticks "${fleet_pids[0]}")
  t0=$(date +%s.%N)
  t_end=$((SECONDS + idle_window_s))
  while [ "$SECONDS" -lt "$t_end" ]; do
    for i in 0 1; do
      rss=$(proc_status_kib "${fleet_pids[$i]}" VmRSS)
      [ "$rss" -gt "${max_rss[$i]}" ] && max_rss[$i]=$rss
    done
    sleep 1
  done
  c1=$(proc_ticks "${fleet_pids[1]}") && s1=$(proc_ticks "${fleet_pids[0]}")
  t1=$(date +%s.%N)
  for i in 1 0; do
    pid=${fleet_pids[$i]}
    if [ "$i" -eq 1 ]; then who="non-seed (a1)"; d=$((c1 - c0)); else who="seed (a0)"; d=$((s1 - s0)); fi
    rss=$(proc_status_kib "$pid" VmRSS)
    [ "$rss" -gt "${max_rss[$i]}" ] && max_rss[$i]=$rss
    awk -v who="$who" -v rss="$rss" -v max="${max_rss[$i]}" -v hwm="$(proc_status_kib "$pid" VmHWM)" \
      -v d="$d" -v tck="$clk_tck" -v t0="$t0" -v t1="$t1" -v th="$(proc_status_kib "$pid" Threads)" \
      -v anon="$(proc_status_kib "$pid" RssAnon)" -v file="$(proc_status_kib "$pid" RssFile)" \
      -v contacts="${contacts[$i]}" -v conns="${conns[$i]}" 'BEGIN {
        cpu = d / tck / (t1 - t0) * 100
        printf "  %-14s RSS %.1f MiB at end (anon %.1f + file %.1f), max sampled %.1f, VmHWM %.1f\n",
          who ":", rss / 1024, anon / 1024, file / 1024, max / 1024, hwm / 1024
        printf "  %-14s CPU %.2f%% of one core (%d ticks in %.1f s); %d threads, %s contacts, %s connections\n",
          "", cpu, d, t1 - t0, th, contacts, conns
      }'
  done >"$work/result1"
  # Where the non-seed's resident pages are: the largest mappings (file-backed pages of the
  # binary and shared libraries are clean and shared, anonymous ones are the agent's own).
  awk '/^[0-9a-f]+-[0-9a-f]+ / { name = (NF >= 6 ? $6 : "[anon]"); sub(/.*\//, "", name) }
       /^Rss:/ { rss[name] += $2 }
       END { for (n in rss) printf "%d %s\n", rss[n], n }' "/proc/${fleet_pids[1]}/smaps" |
    sort -rn | head -n 5 | awk '{ printf "%s%s %.1f", sep, $2, $1 / 1024; sep = ", " }
      END { printf "\n" }' | sed 's/^/  a1 largest mappings (MiB): /' >>"$work/result1"
  cat "$work/result1" >&2
}

# ---------------------------------------------------------------------------------------------
# 2. Lookup latency
# ---------------------------------------------------------------------------------------------
bench_lookup() {
  local n=$lk_agents p2p=$((p2p_base + 100)) api=$((api_base + 100)) k from to body found ms
  log "2. lookups: $n agents at $lk_rate task/s; $lk_from agents x $lk_each lookups"
  start_fleet lookup "$n" "$lk_rate" "$p2p" "$api"
  wait_joined "$n" "$api"
  sleep "$lk_settle_s"
  RANDOM=42 # reproducible choice of targets
  : >"$work/lookups"
  for k in $(seq 0 $((lk_from - 1))); do
    from=$((1 + k * (n - 1) / lk_from)) # spread over the non-seed agents: 1, 5, 10, ...
    for _ in $(seq 1 "$lk_each"); do
      to=$((RANDOM % (n - 1)))
      [ "$to" -ge "$from" ] && to=$((to + 1))
      body=$(http_post "http://127.0.0.1:$((api + from))/lookup" "{\"node_id\":\"${fleet_ids[$to]}\"}" || true)
      found=$(json_field "$body" found)
      ms=$(json_field "$body" elapsed_ms)
      if [ -z "$found" ] || [ -z "$ms" ]; then
        echo "error a$from a$to ${body:0:120}" >>"$work/lookups"
      else
        echo "$found $ms a$from a$to" >>"$work/lookups"
      fi
    done
  done
  local errors total
  errors=$(grep -c '^error' "$work/lookups" || true)
  total=$(wc -l <"$work/lookups")
  [ "$errors" -gt 0 ] && { echo "  API errors (first 3):"; grep '^error' "$work/lookups" | head -n 3; } >&2
  grep -v '^error' "$work/lookups" | sort -g -k2,2 | awk -v total="$total" -v errors="$errors" '
    { ms[NR] = $2; if ($1 == "true") found++ }
    function pct(p,  i) { i = int(p * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR; return ms[i] }
    END {
      if (NR == 0) { print "  no lookup answered"; exit 1 }
      printf "  %d lookups (%d API errors): p50 %.1f ms, p95 %.1f ms, max %.1f ms; found %d/%d = %.1f%%\n",
        total, errors, pct(0.50), pct(0.95), ms[NR], found, total, 100 * found / total
    }' >"$work/result2"
  cat "$work/result2" >&2
}

# ---------------------------------------------------------------------------------------------
# 3. QUIC echo throughput
# ---------------------------------------------------------------------------------------------
bench_throughput() {
  local mode out pid
  : >"$work/result3"
  for mode in chaos plain; do
    log "3. QUIC echo throughput ($mode socket): $tp_runs x $tp_mib MiB"
    out=$work/tp-$mode.out
    args=(--mib "$tp_mib" --chunk-kib "$tp_chunk_kib" --runs "$tp_runs")
    [ "$mode" = plain ] && args+=(--plain)
    timeout 300 "$example" "${args[@]}" >"$out" 2>&1 &
    pid=$!
    echo "$pid" >>"$pids_file"
    wait "$pid" || { cat "$out" >&2; return 1; }
    cat "$out" >&2
    awk -v m="$mode" '
      /^run / { runs = runs sep $(NF - 1); sep = ", " }
      /^median_mib_s=/ { split($0, a, "="); med = a[2] }
      END { printf "  %-12s median %s MiB/s (runs: %s)\n",
              (m == "chaos" ? "ChaosSocket" : "plain UDP"), med, runs }' "$out" >>"$work/result3"
  done
}

# ---------------------------------------------------------------------------------------------
# 4. Key-value per-update latency
# ---------------------------------------------------------------------------------------------
bench_kv() {
  local n=$kv_agents p2p=$((p2p_base + 300)) api=$((api_base + 300))
  command -v python3 >/dev/null || { echo "  needs python3" >&2; return 1; }
  log "4. kv: $n agents at $kv_rate task/s (sync every 2 s), $kv_writes writes"
  start_fleet kv "$n" "$kv_rate" "$p2p" "$api"
  wait_joined "$n" "$api"
  sleep "$kv_settle_s"
  python3 - "$api" "$n" "$kv_writes" >"$work/result4" <<'PY'
import json, sys, threading, time, urllib.request
api, n, writes = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def call(i, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{api + i}{path}", method=method,
                                 data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0
def holders(key):
    got = [0] * n
    def one(i):
        got[i] = call(i, "GET", f"/kv/{key}") == 200
    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts: t.start()
    for t in ts: t.join()
    return sum(got)
t95, t100, missed = [], [], 0
for w in range(writes):
    key = f"bench-{w}"
    at = (w * 7 + 1) % n
    if call(at, "PUT", f"/kv/{key}", json.dumps({"value": "v"}).encode()) != 200:
        missed += 1
        continue
    start, d95 = time.monotonic(), None
    while time.monotonic() - start < 60:
        h = holders(key)
        t = time.monotonic() - start
        if d95 is None and h * 100 >= 95 * n:
            d95 = t
        if h == n:
            t100.append(t)
            break
    if d95 is not None:
        t95.append(d95)
    else:
        missed += 1
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, max(0, round((len(v) - 1) * p)))] if v else float("nan")
print(f"  to 95% of {n}: p50 {pct(t95, .5):.1f} s, p95 {pct(t95, .95):.1f} s, max {max(t95, default=float('nan')):.1f} s; "
      f"to all: p50 {pct(t100, .5):.1f} s, max {max(t100, default=float('nan')):.1f} s; "
      f"{len(t100)}/{writes} reached all, {missed} missed 95% within 60 s (polls every agent in parallel, about 0.1 s per round)")
PY
  cat "$work/result4" >&2
}

# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
t_start=$SECONDS
declare -A status
for b in 1 2 3 4; do
  [[ " $only " == *" $b "* ]] || { status[$b]=skipped; continue; }
  case $b in 1) fn=bench_idle ;; 2) fn=bench_lookup ;; 3) fn=bench_throughput ;; 4) fn=bench_kv ;; esac
  # A subshell with its own `set -e`, so one failing benchmark does not stop the others. It
  # runs in the background so that a signal to this script runs the trap at once (bash defers
  # traps until a foreground child ends).
  set +e
  (set -e; "$fn") &
  bench_pid=$!
  wait "$bench_pid"
  rc=$?
  bench_pid=
  set -e
  stop_all
  if [ "$rc" -eq 0 ]; then status[$b]=ok; else status[$b]="FAILED (exit $rc)"; fi
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

result() { # n -> the result lines, or the status
  if [ "${status[$1]}" = ok ] && [ -s "$work/result$1" ]; then cat "$work/result$1"; else echo "  ${status[$1]}"; fi
}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain 2>/dev/null)" ] && commit="$commit (dirty tree)"

cat <<EOF

===================== chaosnet agent benchmarks =====================
date:     $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $commit
command:  make bench   (= cargo build --release --workspace --bins && bash scripts/bench-agent.sh)
machine:  $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(awk '/MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)
kernel:   $(uname -sr)
rustc:    $(rustc --version)
load avg: $load_start at start, $load_end at end (1/5/15 min; other work on the machine skews CPU and latency)
http:     $http_client; all on 127.0.0.1, release build, no impairment
runtime:  $((SECONDS - t_start)) s

1. Idle agent, $idle_peers peers + seed, --task-rate $idle_rate, sampled ${idle_window_s} s after joined + ${idle_settle_s} s
   (targets: RSS <= 12 MiB, CPU <= 1% of one core)
$(result 1)
2. Lookup latency, $lk_agents agents, --task-rate $lk_rate, joined + ${lk_settle_s} s, $lk_from agents x $lk_each POST /lookup of random other agents
   (elapsed_ms as reported by the agent)
$(result 2)
3. QUIC echo throughput, 2 endpoints, $tp_mib MiB each way in $tp_chunk_kib KiB chunks, median of $tp_runs
   (agent TLS + transport config; tokio current_thread runtime per side, each in its own OS thread;
   MiB/s = one direction's payload / wall time)
$(result 3)
4. Key-value per-update latency, $kv_agents agents, --task-rate $kv_rate, joined + ${kv_settle_s} s, $kv_writes writes at different agents
$(result 4)
=====================================================================
EOF

for b in 1 2 3 4; do [ "${status[$b]}" = ok ] || [ "${status[$b]}" = skipped ] || exit 1; done
