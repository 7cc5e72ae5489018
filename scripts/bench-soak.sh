#!/usr/bin/env bash
# Soak benchmark (root): `chaosnet run scenarios/soak.yaml`, 30 agents over every NAT type, one
# fault every 10 s (kill, isolate, loss, pause on one random peer, 5 s each) for DURATION_S
# (default 1800), process runtime. While it runs, samples every SAMPLE_S (default 30) the
# RSS of every agent process and of the controller, the controller's open files, and the
# run directory's size. Prints the run's verdicts and:
#   - RSS growth of the agents that were never restarted (same pid in the first sample
#     after WARM_S, default 120 s, and in the last sample) and of the controller;
#   - the controller's open files and the run directory's size, first vs last;
#   - panics in any agent or controller log (must be 0).
# Exit code: the run's (0 pass, 1 an SLO failed, 2 could not run), or 1 when a panic
# was found. Results go to BENCHMARKS.md ("Soak") by hand, with this command.
# Usage: scripts/bench-soak.sh   (BIN=path/to/chaosnet, default the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/chaosnet}
duration=${DURATION_S:-1800}
sample=${SAMPLE_S:-30}
warm=${WARM_S:-120}
[ -x "$bin" ] || { echo "missing $bin: run 'make release' or set BIN" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "the soak needs root" >&2; exit 2; }
dir=$(mktemp -d /tmp/chaosnet-soak.XXXXXX)
keep=${KEEP_DIR:-0}
# Only this script's own run: `down` of the private runs dir's current run, never --all.
trap '"$bin" --runs-dir "$dir" down >/dev/null 2>&1 || true; [ "$keep" = 1 ] || rm -rf "$dir"' EXIT

sed "s/^  duration_s: 1800$/  duration_s: $duration/" scenarios/soak.yaml >"$dir/soak.yaml"
grep -q "duration_s: $duration$" "$dir/soak.yaml" || { echo "cannot set duration_s" >&2; exit 2; }
echo "== soak: 30 agents, one fault every 10 s for ${duration} s, $(nproc) cores, $bin"

"$bin" --runs-dir "$dir" run "$dir/soak.yaml" >"$dir/run.out" 2>"$dir/run.err" &
ctl=$!
samples=$dir/samples.tsv
: >"$samples"
start=$(date +%s)
while kill -0 "$ctl" 2>/dev/null; do
    t=$(($(date +%s) - start))
    for p in $(pgrep -f -- "chaosnet-agent run" || true); do
        # This run's agents only: started with the run's paths, or from its directory.
        { tr '\0' ' ' <"/proc/$p/cmdline"; readlink "/proc/$p/cwd"; } 2>/dev/null |
            grep -qF -- "$dir" || continue
        rss=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        [ -n "$rss" ] && printf '%s\tagent\t%s\t%s\n' "$t" "$p" "$rss" >>"$samples"
    done
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$ctl/status" 2>/dev/null || true)
    fds=$(ls "/proc/$ctl/fd" 2>/dev/null | wc -l)
    du=$(du -sk "$dir" 2>/dev/null | cut -f1)
    [ -n "$rss" ] && printf '%s\tcontroller\t%s\t%s\t%s\t%s\n' "$t" "$ctl" "$rss" "$fds" "$du" >>"$samples"
    sleep "$sample"
done
rc=0
wait "$ctl" || rc=$?
cat "$dir/run.out"
grep -E "SLO|verdict|error" "$dir/run.err" >&2 || true

python3 - "$samples" "$warm" <<'PY'
import sys, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
warm = int(sys.argv[2])
agents = [r for r in rows if r[1] == "agent"]
ctl = [r for r in rows if r[1] == "controller"]
times = sorted({int(r[0]) for r in agents if int(r[0]) >= warm})
if len(times) < 2:
    print("soak: too few samples after warm-up"); sys.exit(0)
first, last = times[0], times[-1]
at = collections.defaultdict(dict)
for t, _, pid, rss in agents:
    at[int(t)][pid] = int(rss)
same = sorted(set(at[first]) & set(at[last]))
a0 = sum(at[first][p] for p in same); a1 = sum(at[last][p] for p in same)
print(f"soak: agents never restarted between +{first} s and +{last} s: {len(same)} of {len(at[last])}; "
      f"RSS {a0/1024:.1f} MiB -> {a1/1024:.1f} MiB ({(a1-a0)*100/max(a0,1):+.1f}%)")
growth = sorted(((at[last][p]-at[first][p])*100/at[first][p], p) for p in same)
if growth:
    print(f"soak: per-agent RSS growth min {growth[0][0]:+.1f}% median {growth[len(growth)//2][0]:+.1f}% max {growth[-1][0]:+.1f}%")
c = [r for r in ctl if int(r[0]) >= warm]
if len(c) >= 2:
    c0, c1 = c[0], c[-1]
    print(f"soak: controller RSS {int(c0[3])/1024:.1f} MiB -> {int(c1[3])/1024:.1f} MiB "
          f"({(int(c1[3])-int(c0[3]))*100/int(c0[3]):+.1f}%), open files {c0[4]} -> {c1[4]}, "
          f"run dir {int(c0[5])/1024:.1f} MiB -> {int(c1[5])/1024:.1f} MiB")
PY
panics=$({ grep -rl "panicked" "$dir" --include='*.log' --include='run.err' 2>/dev/null || true; } | wc -l)
echo "soak: files with a panic: $panics"
[ "$panics" -eq 0 ] || rc=1
echo "soak: exit code $rc"
exit "$rc"
