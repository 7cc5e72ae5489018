# chaosnet: `make chaosnet up|down|status`, `make test`, `make bench`, `make build`.
# Every target installs the Debian packages it lacks first (scripts/install-deps.sh says
# what and why), so a fresh Debian machine needs nothing by hand.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: chaosnet up down status build release test manifests soak lint fmt bench deps clean image fuzz fuzz-seeds python python-test

# Options for `make chaosnet up`: SCENARIO=path.yaml, AGENTS=N, MONITOR=1.
# The lab runs release binaries: a debug agent costs several times the CPU, and 100 of them
# saturate 2 cores.
CHAOSNET = $(or $(CARGO_TARGET_DIR),target)/release/chaosnet
UP_FLAGS = $(if $(SCENARIO),-f $(SCENARIO)) $(if $(AGENTS),--agents $(AGENTS)) $(if $(MONITOR),--monitor)

# `make chaosnet up` is two goals: `chaosnet` (a no-op namespace) and `up`.
chaosnet:
	@:

deps:
	@bash scripts/install-deps.sh test

build: deps
	$(CARGO) build --workspace --bins

release: deps
	$(CARGO) build --release --workspace --bins

## Tests: core in virtual time, agents on loopback with real QUIC and RocksDB, promtool,
## then the Python bindings and the Kubernetes manifests (kustomize + kubernetes-validate
## --strict, no cluster).
test: deps
	$(CARGO) test --workspace --no-fail-fast
	$(MAKE) python-test
	bash scripts/check-manifests.sh

## The Python bindings (python/, module chaosnet_sim): `maturin develop` (debug) into the venv
## CHAOSNET_VENV (default /var/cache/chaosnet/venv), installing a pinned maturin first when
## it is missing; python-test then runs python/tests with pytest against the `chaosnet` CLI.
python: deps
	CARGO="$(CARGO)" bash scripts/python.sh develop

python-test: deps
	CARGO="$(CARGO)" bash scripts/python.sh test

## The Kubernetes manifests alone: every overlay built and validated (no cluster needed).
manifests:
	bash scripts/check-manifests.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Benchmarks: results go to BENCHMARKS.md by hand, with the command that produced them.
bench: release
	bash scripts/bench-agent.sh
	bash scripts/bench-lab.sh
	bash scripts/bench-connect.sh
	bash scripts/bench-chaos.sh
	bash scripts/bench-kv.sh
	bash scripts/bench-sim.sh
	@if docker info >/dev/null 2>&1; then bash scripts/bench-docker.sh; else echo "bench-docker: skipped, no Docker engine"; fi

## The soak: 30 agents, one fault every 10 s for 30 minutes (DURATION_S to change), with RSS,
## open files and run-dir size sampled; a benchmark of its own because of its length.
soak: release
	bash scripts/bench-soak.sh

## Fuzzing (cargo-fuzz, libFuzzer; fuzz/ is outside the workspace, so CI never builds it).
## Each target runs FUZZ_RUNS executions (default 10M) or FUZZ_SECONDS (default 1800) per
## target, whichever comes first; results go to BENCHMARKS.md by hand. cargo-fuzz needs a
## nightly compiler's flags and no nightly can be fetched here: scripts/fuzz.sh sets
## RUSTC_BOOTSTRAP=1 so the stable toolchain builds it (FUZZ_CARGO="cargo +nightly" for a
## real nightly). Installs cargo-fuzz from crates.io when missing.
fuzz:
	nice -n 19 bash scripts/fuzz.sh

## Regenerates the seed corpus (valid frames of every kind) after a wire change.
fuzz-seeds:
	$(CARGO) run --manifest-path fuzz/Cargo.toml --bin seeds -- fuzz/seeds

## The agent container image chaosnet-agent:<version>, FROM scratch (no registry needed).
image: release
	bash scripts/build-image.sh

## The fleet in the NAT lab (needs root): `make chaosnet up|status|down`.
up: release
	$(CHAOSNET) up $(UP_FLAGS)

down:
	@if [ -x $(CHAOSNET) ]; then $(CHAOSNET) down; else echo "nothing built yet: no run to take down"; fi

status:
	$(CHAOSNET) status

clean:
	$(CARGO) clean
