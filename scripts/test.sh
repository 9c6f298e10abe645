#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what is missing (libtorch, the
# wasm target, Prometheus, helm), then every Rust test of the workspace: unit tests and
# the integration tests that drive the real binary, real policy components, a real
# Prometheus server and helm.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/install-test-tools.sh
# Tests that need those tools must find them, not skip.
export KNAS_REQUIRE_TOOLS=1
export PATH="$PWD/.tools/bin:$PATH"
# Two cores: keep libtorch from oversubscribing them while tests run in parallel.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cargo test --locked "$@"
