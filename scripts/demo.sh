#!/usr/bin/env bash
# The main job on a fresh machine: installs what is missing (scripts/setup.sh), builds knas
# and the policies, and runs a KNAS search with the pruning policy on the embedded MNIST
# data: supernet pruning on the rank-aggregate score, then brief training of the top 3
# (why pruning: the README's quick start), with `knas search`'s defaults: 100 scores, the
# top 3 trained. Extra arguments go to `knas search` (e.g. --budget 200 --top-k 5).
# Rerunning it resumes (or shows) the run stored in knas-runs.db.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bin knas
target/release/knas policy build --all --profile policy --out-dir policies
exec target/release/knas search --policy policies/pruning.wasm "$@"
