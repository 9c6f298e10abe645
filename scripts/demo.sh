#!/usr/bin/env bash
# The main job on a fresh machine: installs what is missing (scripts/setup.sh), builds knas,
# and runs a complete KNAS selection on the embedded MNIST data. Extra arguments are passed
# to `knas select` (e.g. --candidates 200 --top-k 5).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bin knas
exec target/release/knas select --candidates 100 --top-k 3 "$@"
