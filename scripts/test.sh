#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what is missing (scripts/setup.sh),
# then every Rust test of the workspace (unit, integration against the real binary).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Two cores: keep libtorch from oversubscribing them while tests run in parallel.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cargo test --workspace --locked "$@"
