#!/usr/bin/env bash
# Connectivity benchmarks (root, release build): the default scenario's NAT-pair matrix
# with cold NATs (conntrack state between each pair's sites forgotten first), repeated, so
# every pair really punches or relays; then birthday probing between the symmetric and the
# port-restricted site, both directions. Prints, per NAT pair and mode, the time to connect
# (p50/p95), the share of pairs at theory's best path where theory allows direct or punched,
# the distribution of spray probes to success, and relayed against direct goodput on the
# same pair (open1-0 -> open1-1, relayed through seed-0): sequential 60 kB echoes
# (`POST /echo`), so latency-bound rather than a bulk transfer.
# Usage: scripts/bench-connect.sh   (REPEAT=3 matrix rounds, BIRTHDAY=20 per direction)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CARGO_TARGET_DIR:-target}/release/chaosnet
repeat=${REPEAT:-3}
birthday=${BIRTHDAY:-20}
[ -x "$bin" ] || { echo "missing $bin: run 'make release'" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "the connectivity benchmark needs root" >&2; exit 1; }
dir=$(mktemp -d)
trap '"$bin" --runs-dir "$dir" down >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT

echo "== connectivity: default scenario, cold matrix x$repeat, birthday x$birthday per direction, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$bin" --runs-dir "$dir" up >/dev/null 2>&1 || { echo "up failed" >&2; exit 1; }
sleep 5
"$bin" --runs-dir "$dir" matrix --cold --repeat "$repeat" --json >"$dir/matrix.json" || true
"$bin" --runs-dir "$dir" matrix --cold --from symmetric1 --to portrestr1 --repeat "$birthday" --json >"$dir/b1.json" || true
"$bin" --runs-dir "$dir" matrix --cold --from portrestr1 --to symmetric1 --repeat "$birthday" --json >"$dir/b2.json" || true

# Relayed vs direct goodput on one pair.
run_dir=$(find "$dir" -mindepth 1 -maxdepth 1 -type d | head -1)
node() { python3 -c "import json,sys;s=json.load(open('$run_dir/state.json'));print([a[sys.argv[2]] for a in s['plan']['agents'] if a['name']==sys.argv[1]][0])" "$1" "$2"; }
api() { curl -s --unix-socket "$run_dir/$(node "$1" api_socket)" -XPOST "localhost/$2" -H 'content-type: application/json' -d "$3"; }
to=$(node open1-1 node_id); via=$(node seed-0 node_id)
for round in 1 2 3; do
  api open1-0 connect "{\"node_id\":\"$to\",\"via\":\"$via\"}" >/dev/null
  api open1-0 echo "{\"node_id\":\"$to\",\"count\":300}" >"$dir/relayed$round.json"
  api open1-0 connect "{\"node_id\":\"$to\"}" >/dev/null
  api open1-0 echo "{\"node_id\":\"$to\",\"count\":300}" >"$dir/direct$round.json"
done

python3 - "$dir" <<'EOF'
import json, sys, statistics
d = sys.argv[1]
def pairs(f):
    try:
        return json.load(open(f"{d}/{f}"))["pairs"]
    except Exception as e:
        print(f"cannot read {f}: {e}"); return []
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")
m = pairs("matrix.json")
groups = {}
for p in m:
    key = ("same LAN" if p["same_lan"] else f'{p["from"]["behaviour"]} -> {p["to"]["behaviour"]}',
           p["outcome"]["mode"] or "failed")
    groups.setdefault(key, []).append(p["outcome"]["elapsed_ms"])
print(f"{'pair':<46} {'mode':<8} {'n':>3} {'p50 ms':>9} {'p95 ms':>9}")
for (pair, mode), xs in sorted(groups.items()):
    print(f"{pair:<46} {mode:<8} {len(xs):>3} {pct(xs, .5):>9.0f} {pct(xs, .95):>9.0f}")
allowed = [p for p in m if p["expected"]["best"] in ("direct", "punched")]
good = [p for p in allowed if p["outcome"]["mode"] in ("direct", "punched")]
print(f"direct or punched where theory allows it: {len(good)}/{len(allowed)} = {100 * len(good) / max(1, len(allowed)):.1f}%")
print(f"pairs at theory's best: {sum(p['pass'] for p in m)}/{len(m)}")
for name in ("b1.json", "b2.json"):
    b = pairs(name)
    if not b: continue
    ok = sum(p["outcome"]["mode"] == "punched" for p in b)
    probes = sorted(p["outcome"]["birthday_probes"] for p in b if p["outcome"]["birthday_probes"] is not None)
    t = [p["outcome"]["elapsed_ms"] for p in b if p["outcome"]["mode"] == "punched"]
    print(f'birthday {b[0]["from"]["site"]} -> {b[0]["to"]["site"]}: {ok}/{len(b)} punched; '
          f'time p50 {pct(t, .5):.0f} ms p95 {pct(t, .95):.0f} ms; '
          f'easy-side probes to success (n={len(probes)}): p50 {pct(probes, .5)} p95 {pct(probes, .95)} max {probes[-1] if probes else "-"}')
def rate(f):
    try:
        return json.load(open(f"{d}/{f}"))["mib_per_s"]
    except Exception:
        return float("nan")
rel = [rate(f"relayed{i}.json") for i in (1, 2, 3)]
dirc = [rate(f"direct{i}.json") for i in (1, 2, 3)]
r, dd = statistics.median(rel), statistics.median(dirc)
print(f"echo goodput open1-0 -> open1-1 (60 kB x 300, median of 3): relayed {r:.1f} MiB/s, direct {dd:.1f} MiB/s, ratio {r / dd:.2f}")
EOF
