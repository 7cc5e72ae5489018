#!/usr/bin/env bash
# Installs the Debian packages chaosnet needs and says why; changes nothing when all are there.
# Usage: scripts/install-deps.sh [build|test|lab|all]   (default: test)
set -euo pipefail

profile=${1:-test}
declare -A why=(
  [librocksdb-dev]="RocksDB library the agent links against (building it from source takes ~20 min)"
  [libclang1-14]="libclang for bindgen in librocksdb-sys"
  [libclang-common-14-dev]="clang builtin headers (stdbool.h) for bindgen"
  [pkg-config]="locating system libraries at build time"
  [prometheus]="promtool for metric checks and the local Prometheus server"
  [iproute2]="ip netns / veth / bridge for the NAT lab"
  [nftables]="nft for NAT and fault rules in the lab"
  [conntrack]="flushing NAT state in the lab"
  [iptables]="statistic-based loss rules in the lab"
  [procps]="sysctl for per-namespace conntrack timeouts"
)
build=(librocksdb-dev libclang1-14 libclang-common-14-dev pkg-config)
lab=("${build[@]}" iproute2 nftables conntrack iptables procps)
test=("${lab[@]}" prometheus)
case "$profile" in
  build) want=("${build[@]}") ;;
  test) want=("${test[@]}") ;;
  lab) want=("${lab[@]}") ;;
  all) want=("${test[@]}") ;;
  *) echo "usage: $0 [build|test|lab|all]" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed. Install the Rust toolchain (rustup, Rust >= 1.89) first." >&2
  exit 1
fi

[ ${#missing[@]} -eq 0 ] && exit 0

echo "chaosnet: installing missing Debian packages:"
for p in "${missing[@]}"; do echo "  - $p: ${why[$p]}"; done
if [ "$(id -u)" -ne 0 ]; then
  echo "error: not root. Run as root, or: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: apt-get not found. Install these packages with your distro's tools: ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "chaosnet: installed ${missing[*]}"
