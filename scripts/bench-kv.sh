#!/usr/bin/env bash
# Key-value sync benchmark, run by `make bench`: Rateless IBLT coded symbols per difference
# for d = 1, 10, 100, 1,000 and 10,000 (median, p95 and max over SEEDS seeds), then whole
# sync sessions between two replicas d apart with the bytes they put on the wire (medians
# over SESSION_SEEDS seeds). In the core, no network: proto/examples/riblt_overhead.rs.
# Then per-update latency in virtual time: a write at one of NODES (50) simulated nodes
# until 95% and all of them hold it, over WRITES (40) writes: sim/examples/kv_latency.rs.
# Prints Markdown tables to paste into BENCHMARKS.md. Takes about a minute in release.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${SEEDS:-100}
session_seeds=${SESSION_SEEDS:-10}
cargo run --release -q -p chaosnet-proto --example riblt_overhead -- "$seeds" "$session_seeds"
cargo run --release -q -p chaosnet-sim --example kv_latency -- "${NODES:-50}" "${WRITES:-40}"
