#!/usr/bin/env bash
# Installs everything trainfleet needs to build, run and test on Debian/Ubuntu. Idempotent: a
# second run checks and returns in a few seconds.
#
#   - Debian packages: protoc (tonic/etcd-client code generation), etcd-server (tests, local
#     clusters), openssl (test certificates), a C++ toolchain (torch-sys compiles its C++ shim),
#     python3-venv, chromium (the report test opens a report in it, offline); for the images and
#     the container tests: podman and buildah (no Docker engine runs here), runc (crun fails on
#     some hosts' cgroups), netavark and aardvark-dns (container networks with DNS names),
#     debootstrap (the base image, since none can be pulled), patchelf and cpio (staging); Go
#     with sprig and yaml.v3 (the chart checks render the Helm chart with Helm's template engine);
#     prometheus (the metrics test scrapes both binaries with it; promtool checks the alert rules).
#   - .venv: PyTorch 2.13.0 from PyPI (the libtorch that tch 0.26 is written against), the
#     Python gRPC reflection client used by the end-to-end tests, MLflow (the tracking
#     server the MLflow test records runs in), and kubernetes-validate (the chart checks).
#   - .tools: `buf` from npm, a second reflection client (`buf curl`, grpcurl-style).
#
# Rust itself is expected (https://rustup.rs); everything else comes from here.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

TORCH_VERSION=2.13.0
PY_PACKAGES=("torch==${TORCH_VERSION}" "safetensors==0.8.0" "grpcio==1.85.1" "grpcio-reflection==1.85.1" "grpcio-health-checking==1.85.1" "mlflow==3.17.2" "kubernetes-validate==1.37.0")
BUF_VERSION=1.75.0

log() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

# --- Debian packages ---------------------------------------------------------------------------
APT_PACKAGES=(protobuf-compiler libprotobuf-dev etcd-server openssl ca-certificates g++ make pkg-config python3-venv npm chromium
  podman buildah runc netavark aardvark-dns containernetworking-plugins fuse-overlayfs debootstrap patchelf cpio
  golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev prometheus)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
# npm and python3-venv only matter when the machine lacks node or a working venv module.
if command -v npm >/dev/null; then missing=("${missing[@]/npm}"); fi
if python3 -c 'import venv, ensurepip' 2>/dev/null; then missing=("${missing[@]/python3-venv}"); fi
read -r -a missing <<<"${missing[*]}"
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install them by hand"
  log "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v protoc >/dev/null || die "protoc not found after installing protobuf-compiler"
command -v etcd >/dev/null || die "etcd not found after installing etcd-server"
command -v openssl >/dev/null || die "openssl not found (the etcd TLS test makes its certificates with it)"
command -v prometheus >/dev/null && command -v promtool >/dev/null \
  || die "prometheus or promtool not found after installing prometheus (the metrics test needs them)"
for tool in podman buildah runc debootstrap patchelf; do
  command -v "$tool" >/dev/null || die "$tool not found after installing it (the images need it)"
done
command -v chromium >/dev/null || die "chromium not found (the report test renders a report in it)"
command -v go >/dev/null || die "go not found after installing golang-go (the chart checks build their renderer with it)"
command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs, then rerun"

# --- Python: libtorch and the reflection client -----------------------------------------------
stamp=".venv/.trainfleet-requirements"
wanted="${PY_PACKAGES[*]}"
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  # PyTorch with its CUDA libraries unpacks to about 5 GB; pip's cache would keep a second copy
  # of every wheel, so it is off. Say so up front rather than fail half-installed.
  free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
  need_kb=$((8 * 1024 * 1024))
  [ "$free_kb" -ge "$need_kb" ] || die "only $((free_kb / 1024)) MiB free on $(df -P . | awk 'NR==2 {print $6}'); the .venv (PyTorch ${TORCH_VERSION} with its CUDA libraries) needs about 8 GiB while it installs: free some space and rerun"
  log "creating .venv with ${PY_PACKAGES[*]} (PyTorch is a large download the first time)"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check --no-cache-dir "${PY_PACKAGES[@]}"
  printf '%s' "$wanted" >"$stamp"
fi
PYTHONWARNINGS=ignore .venv/bin/python - <<PY || die "the PyTorch in .venv is not ${TORCH_VERSION}; delete .venv and rerun"
import torch, sys
sys.exit(0 if torch.__version__.split("+")[0] == "${TORCH_VERSION}" else 1)
PY

# A stable path to libtorch for .cargo/config.toml, whatever the Python minor version.
torch_dir=$(PYTHONWARNINGS=ignore .venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')
[ "$(readlink .venv/libtorch 2>/dev/null)" = "$torch_dir" ] || ln -sfn "$torch_dir" .venv/libtorch

# --- buf (grpcurl-style client from npm) ------------------------------------------------------
if [ ! -x .tools/node_modules/.bin/buf ] || ! .tools/node_modules/.bin/buf --version 2>/dev/null | grep -qx "$BUF_VERSION"; then
  log "installing buf ${BUF_VERSION} into .tools"
  mkdir -p .tools
  npm install --silent --no-audit --no-fund --prefix .tools "@bufbuild/buf@${BUF_VERSION}" >/dev/null
fi

log "ready: libtorch $(PYTHONWARNINGS=ignore .venv/bin/python -c 'import torch; print(torch.__version__)'), $(protoc --version), etcd $(etcd --version | head -n1 | awk '{print $3}'), buf $(.tools/node_modules/.bin/buf --version)"
