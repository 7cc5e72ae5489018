#!/usr/bin/env bash
# A loopback fleet of chaosnet agents as plain processes on 127.0.0.1: no namespaces, no NAT.
# This is the stop-gap main job until the NAT-lab controller (`chaosnet up`) lands.
# Usage: scripts/loopback-fleet.sh up|status|down   (AGENTS=N, default 8; TASK_RATE, default 1)
set -euo pipefail
cd "$(dirname "$0")/.."

agents=${AGENTS:-8}
rate=${TASK_RATE:-1}
run_dir=runs/loopback
bin=${CARGO_TARGET_DIR:-target}/debug/chaosnet-agent
p2p_base=19000
api_base=19100

http_get() { # host port path -> body (bash /dev/tcp: needs no curl)
  exec 3<>"/dev/tcp/$1/$2" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$3" "$1" >&3
  sed '1,/^\r$/d' <&3
  exec 3>&-
}

json_field() { # body field -> first value of that top-level scalar field
  grep -o "\"$2\":[^,}]*" <<<"$1" | head -n1 | cut -d: -f2- | tr -d '"'
}

up() {
  if [ -f "$run_dir/pids" ]; then
    echo "a loopback fleet is already up ($run_dir); run 'make chaosnet down' first" >&2
    exit 1
  fi
  [ -x "$bin" ] || { echo "agent binary $bin missing: run 'make build'" >&2; exit 1; }
  mkdir -p "$run_dir"
  : >"$run_dir/pids"
  "$bin" keygen --data-dir "$run_dir/a0" --force >/dev/null
  seed_id=$("$bin" id --data-dir "$run_dir/a0")
  for i in $(seq 0 $((agents - 1))); do
    args=(run --network mainnet --listen "127.0.0.1:$((p2p_base + i))" --data-dir "$run_dir/a$i"
      --api "127.0.0.1:$((api_base + i))" --task-rate "$rate" --rng-seed "$i" --bucket-refresh-ms 60000)
    [ "$i" -gt 0 ] && args+=(--seed "$seed_id@127.0.0.1:$p2p_base")
    "$bin" "${args[@]}" >"$run_dir/a$i.log" 2>&1 &
    echo $! >>"$run_dir/pids"
  done
  printf 'starting %d agents ' "$agents"
  for _ in $(seq 1 60); do
    joined=0
    for i in $(seq 0 $((agents - 1))); do
      body=$(http_get 127.0.0.1 $((api_base + i)) /status 2>/dev/null || true)
      [ "$(json_field "$body" joined)" = "true" ] && joined=$((joined + 1))
    done
    printf '\rstarting %d agents: %d joined ' "$agents" "$joined"
    if [ "$joined" -eq "$agents" ]; then echo; status; return 0; fi
    sleep 0.5
  done
  echo
  echo "not every agent joined within 30 s; log tails:" >&2
  for i in $(seq 0 $((agents - 1))); do echo "--- a$i"; tail -n 5 "$run_dir/a$i.log"; done >&2
  exit 1
}

status() {
  [ -f "$run_dir/pids" ] || { echo "no loopback fleet is up"; return 0; }
  printf '%-6s %-18s %-10s %-7s %-9s %-11s %s\n' AGENT NODE_ID API JOINED CONTACTS CONNECTIONS NAT
  for i in $(seq 0 $(($(wc -l <"$run_dir/pids") - 1))); do
    body=$(http_get 127.0.0.1 $((api_base + i)) /status 2>/dev/null || true)
    if [ -z "$body" ]; then printf '%-6s %s\n' "a$i" "(not answering)"; continue; fi
    conns=$(grep -o '"mode":"direct"' <<<"$body" | wc -l)
    printf '%-6s %-18s %-10s %-7s %-9s %-11s %s\n' "a$i" "$(json_field "$body" node_id | cut -c1-16)" \
      "$((api_base + i))" "$(json_field "$body" joined)" "$(json_field "$body" contacts)" "$conns" \
      "$(json_field "$body" nat_type)"
  done
}

down() {
  if [ -f "$run_dir/pids" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$run_dir/pids"
    sleep 0.5
    while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done <"$run_dir/pids"
  fi
  rm -rf "$run_dir"
  echo "loopback fleet down"
}

case "${1:-}" in
  up) up ;;
  status) status ;;
  down) down ;;
  *) echo "usage: $0 up|status|down" >&2; exit 2 ;;
esac
