#!/usr/bin/env bash
# Installs whatever knas needs that a fresh Debian/Ubuntu machine with rustup and python3
# lacks, into project-local, git-ignored places. Idempotent: a second run does nothing.
#
#   - libtorch: the `torch` wheel from PyPI, pinned to the version the `tch` crate needs,
#     in .venv/ (linked as .libtorch for the build; binaries carry an rpath to it);
#   - the wasm32-unknown-unknown Rust target, for building policies.
set -euo pipefail
cd "$(dirname "$0")/.."

# tch 0.26 is built against exactly this libtorch release.
TORCH_VERSION=2.13.0

say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[setup]\033[0m %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs), then rerun."
command -v python3 >/dev/null || die "python3 not found: install it (apt-get install python3 python3-venv), then rerun."
# The tch crate compiles a C++ glue layer against libtorch.
command -v c++ >/dev/null || die "no C++ compiler (c++) found: install one (apt-get install g++), then rerun."
# Cargo.toml's rust-version: an older toolchain would fail deep inside the build.
RUST_VERSION=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
rustc_version=$(rustc --version | cut -d' ' -f2)
[ "$(printf '%s\n%s\n' "$RUST_VERSION" "${rustc_version%%-*}" | sort -V | head -n1)" = "$RUST_VERSION" ] \
  || die "Rust $rustc_version is older than the $RUST_VERSION knas needs: rustup update, then rerun."

installed_torch() {
  [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null
}

if [ "$(installed_torch || true)" != "$TORCH_VERSION" ]; then
  say "installing libtorch: torch==$TORCH_VERSION from PyPI into .venv (a few GB, about a minute)"
  # --no-cache-dir: pip would otherwise keep another copy of the wheels (gigabytes) in ~/.cache.
  # A venv without pip (left by a failed `python3 -m venv`) is made again.
  if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    python3 -m venv --clear .venv || die "python3 -m venv failed: install the venv module (apt-get install python3-venv), then rerun."
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-cache-dir --progress-bar off "torch==$TORCH_VERSION" \
    || die "pip could not install torch==$TORCH_VERSION (needs access to PyPI)."
fi

torch_dir=$(.venv/bin/python -W ignore -c 'import torch, pathlib; print(pathlib.Path(torch.__file__).parent)' 2>/dev/null) \
  || die "torch==$TORCH_VERSION is installed in .venv but does not import: remove .venv (rm -rf .venv), then rerun."

if [ "$(readlink .libtorch 2>/dev/null)" != "$torch_dir" ]; then
  ln -sfn "$torch_dir" .libtorch
  say "linked .libtorch -> $torch_dir"
fi

if command -v rustup >/dev/null; then
  if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    say "adding the wasm32-unknown-unknown Rust target (for policies)"
    rustup target add wasm32-unknown-unknown
  fi
else
  rustc --print target-libdir --target wasm32-unknown-unknown >/dev/null 2>&1 \
    || die "the wasm32-unknown-unknown target is missing and rustup is not available to add it."
fi
