#!/usr/bin/env bash
# `make fuzz`: every cargo-fuzz target (fuzz/fuzz_targets/) from the committed seeds
# (fuzz/seeds/<target>/) for FUZZ_RUNS executions or FUZZ_SECONDS, whichever comes first,
# one after another. Prints one line per target (executions, seconds, crashes) for
# BENCHMARKS.md and exits 1 if any target crashed; a crash's input is kept in
# fuzz/artifacts/<target>/ and its log in $FUZZ_WORK/<target>.log.
#
# Toolchain: cargo-fuzz needs nightly-only compiler flags (sanitizer coverage, ASan). These
# machines reach crates.io but not rustup's servers, so no nightly toolchain can be fetched:
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept those flags. With a nightly installed,
# `FUZZ_CARGO="cargo +nightly" make fuzz` uses it instead.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${FUZZ_RUNS:-10000000}
SECONDS_PER_TARGET=${FUZZ_SECONDS:-1800}
WORK=${FUZZ_WORK:-${CARGO_TARGET_DIR:-target}/fuzz}
TARGETS=${FUZZ_TARGETS:-wire_frame signal_verify hello relay_framing}
CARGO_FUZZ=${FUZZ_CARGO:-cargo}
export RUSTC_BOOTSTRAP=${RUSTC_BOOTSTRAP-1}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz from crates.io (the libFuzzer driver for cargo)"
  cargo install cargo-fuzz --locked --version 0.13.2
fi

crashed=0
for t in $TARGETS; do
  mkdir -p "$WORK/corpus/$t"
  log="$WORK/$t.log"
  if $CARGO_FUZZ fuzz run --target-dir "$WORK/build" "$t" "$WORK/corpus/$t" "fuzz/seeds/$t" -- \
      -runs="$RUNS" -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 >"$log" 2>&1; then
    result="0 crashes"
  else
    result="CRASHED: see $log and fuzz/artifacts/$t/"
    crashed=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  corpus=$(find "$WORK/corpus/$t" -type f | wc -l)
  echo "fuzz $t: ${execs:-?} executions in ${secs:-?} s, corpus $corpus inputs, $result"
done
exit $crashed
