#!/usr/bin/env bash
# The Python bindings (python/, module chaosnet_sim):
#   scripts/python.sh develop   build the module with `maturin develop` (debug) into the venv
#   scripts/python.sh test      the same, then build the `chaosnet` CLI and run python/tests
#                               with pytest (the module's numbers against `chaosnet sim --json`)
#
# The venv is ${CHAOSNET_VENV:-/var/cache/chaosnet/venv}, as for scripts/check-manifests.sh;
# it is created when missing, and maturin and pytest (pinned below) are installed into it from
# PyPI when missing or of another version. pandas is never installed: the module does not need
# it, and the pandas test runs only where someone installed it. Builds go to $CARGO_TARGET_DIR
# when set, else to cargo's default target/, as every other Makefile target.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
. scripts/venv.sh

maturin_version=1.16.0
pytest_version=9.2.0
venv=${CHAOSNET_VENV:-/var/cache/chaosnet/venv}
cargo=${CARGO:-cargo}

die() {
    echo "python: error: $*" >&2
    exit 1
}

mode=${1:-}
case "$mode" in
develop | test) ;;
-h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
*) die "usage: $0 develop|test" ;;
esac

ensure_venv "$venv" python

# pip's own check (`pip show`) is quick and asks no registry when both are there already.
want=()
"$venv/bin/pip" show maturin 2>/dev/null | grep -qx "Version: $maturin_version" || want+=("maturin==$maturin_version")
if [ "$mode" = test ]; then
    "$venv/bin/pip" show pytest 2>/dev/null | grep -qx "Version: $pytest_version" || want+=("pytest==$pytest_version")
fi
if [ ${#want[@]} -gt 0 ]; then
    echo "python: installing ${want[*]} from PyPI into $venv"
    "$venv/bin/pip" install -q "${want[@]}" || die "pip install ${want[*]} failed"
fi

# maturin installs into the venv named by VIRTUAL_ENV; it asks cargo for the target directory,
# so CARGO_TARGET_DIR is honoured as it is for cargo itself.
echo "python: maturin develop (debug) into $venv"
VIRTUAL_ENV=$venv PATH="$venv/bin:$PATH" "$venv/bin/maturin" develop --quiet -m python/Cargo.toml ||
    die "maturin develop failed"

[ "$mode" = test ] || exit 0

# The tests compare the module with the CLI: build it (a no-op after `cargo test --workspace`).
$cargo build --quiet -p chaos-controller --bin chaosnet || die "cargo build -p chaos-controller failed"
target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target=$PWD/$target ;; esac
export CHAOSNET_BIN=${CHAOSNET_BIN:-$target/debug/chaosnet}
# -p no:cacheprovider: no .pytest_cache in the work tree.
"$venv/bin/python" -m pytest -p no:cacheprovider -q python/tests
