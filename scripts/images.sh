#!/usr/bin/env bash
# `make images`: builds the coordinator and worker images from the release binaries, offline.
#
#   1. the base: `debian:bookworm-slim`, used as it is when the image store has it; otherwise
#      made here with Debian's debootstrap (--variant=minbase, slimmed like the official slim
#      image) and imported under that name, since no registry can be reached;
#   2. release binaries (cargo build --release), stripped; the worker's rpath is set to the
#      relative $ORIGIN/../python/torch/lib (patchelf), so the build machine's path is not in it;
#   3. a build context under target/images/context: bin/, the host's CA bundle and, for the
#      worker, python/ with torch/lib and nvidia/*/lib from the PyTorch wheel in .venv (hard
#      links, no copy);
#   4. podman build (buildah) of k8s/images/Dockerfile, one target per image, tagged
#      VERSION and VERSION-REVISION; layers are cached, so a second run rebuilds nothing.
#
# Settings for podman come from k8s/images/containers.conf (CONTAINERS_CONF); /etc is untouched.
# Environment: IMAGES="coordinator worker" (which to build), IMAGE_PREFIX (default "trainfleet-").
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CONTAINERS_CONF="$ROOT/k8s/images/containers.conf"

BASE=docker.io/library/debian:bookworm-slim
IMAGES=${IMAGES:-coordinator worker}
PREFIX=${IMAGE_PREFIX:-trainfleet-}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
REVISION=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || REVISION="${REVISION}-dirty"
SOURCE=$(sed -n 's/^repository = "\(.*\)"/\1/p' Cargo.toml | head -n1)
CONTEXT="$ROOT/target/images/context"

log() { printf '\033[1mimages:\033[0m %s\n' "$*" >&2; }
die() { printf 'images: error: %s\n' "$*" >&2; exit 1; }
for tool in podman debootstrap patchelf; do
  command -v "$tool" >/dev/null || die "$tool not found: run scripts/setup.sh (make setup) first"
done
started=$(date +%s)

# --- 1. the base image -------------------------------------------------------------------------
if podman image exists "$BASE"; then
  log "base $BASE: present"
else
  log "base $BASE: not in the image store; making it with debootstrap --variant=minbase"
  rootfs=$(mktemp -d "${TMPDIR:-/tmp}/trainfleet-base.XXXXXX")
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase bookworm "$rootfs" \
    "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$rootfs.log" 2>&1 \
    || { tail -n 20 "$rootfs.log" >&2; die "debootstrap failed (log above)"; }
  rm -f "$rootfs.log"
  # What the official slim image leaves out: documentation, manuals, translations, apt caches.
  rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  tar -C "$rootfs" --numeric-owner -c . | podman import --quiet - "$BASE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  log "base $BASE: imported"
fi

# --- 2. release binaries -----------------------------------------------------------------------
packages=()
for image in $IMAGES; do
  case "$image" in
    coordinator) packages+=(-p trainfleet-coordinator) ;;
    worker) packages+=(-p trainfleet-worker) ;;
    *) die "unknown image '$image' (coordinator, worker)" ;;
  esac
done
log "cargo build --release ${packages[*]}"
cargo build --release --bins "${packages[@]}"

# --- 3. the build context ----------------------------------------------------------------------
mkdir -p "$CONTEXT/bin"
stage_binary() {
  local name=$1 staged="$CONTEXT/bin/$1"
  # Only when the binary changed, so that the COPY layer's checksum stays the same otherwise.
  if [ ! -e "$staged" ] || [ "target/release/$name" -nt "$staged" ]; then
    cp "target/release/$name" "$staged.tmp"
    # Symbols too: the coordinator image stays under 100 MB (panic messages keep their text).
    strip --strip-all "$staged.tmp"
    if [ "$name" = trainfleet-worker ]; then
      patchelf --set-rpath '$ORIGIN/../python/torch/lib' "$staged.tmp"
    fi
    mv "$staged.tmp" "$staged"
  fi
}
for image in $IMAGES; do stage_binary "trainfleet-$image"; done
ca=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca" ] || die "$ca is missing: install Debian's ca-certificates (the images carry its roots)"
cmp -s "$ca" "$CONTEXT/ca-certificates.crt" || cp "$ca" "$CONTEXT/ca-certificates.crt"
if [[ " $IMAGES " == *" worker "* ]]; then
  torch=$(readlink -f .venv/libtorch)
  [ -d "$torch/lib" ] || die "no libtorch in .venv: run scripts/setup.sh first"
  site=$(dirname "$torch")
  if [ ! -e "$CONTEXT/python.staged" ] || [ "$(cat "$CONTEXT/python.staged")" != "$torch" ]; then
    log "staging libtorch and the CUDA libraries from $site"
    rm -rf "$CONTEXT/python"
    mkdir -p "$CONTEXT/python/torch/lib"
    # libtorch_python needs a Python interpreter; nothing here uses it.
    find "$torch/lib" -maxdepth 1 -name '*.so*' ! -name 'libtorch_python.so' \
      -exec cp -al {} "$CONTEXT/python/torch/lib/" \;
    cp -al "$torch/version.py" "$CONTEXT/python/torch/version.py"
    if [ -d "$site/nvidia" ]; then
      (cd "$site" && find nvidia -path '*/lib/*.so*' -print0 | cpio --quiet -0 -pdl "$CONTEXT/python")
    fi
    printf '%s' "$torch" >"$CONTEXT/python.staged"
  fi
fi

# --- 4. podman build ---------------------------------------------------------------------------
for image in $IMAGES; do
  name="${PREFIX}${image}"
  log "building $name:$VERSION ($REVISION)"
  built=$(date +%s)
  # --format docker keeps HEALTHCHECK (the OCI image format has no such field).
  podman build --quiet --format docker --pull=never --layers \
    --file k8s/images/Dockerfile --target "$image" \
    --build-arg BASE="$BASE" --build-arg VERSION="$VERSION" \
    --build-arg REVISION="$REVISION" --build-arg SOURCE="$SOURCE" \
    --tag "$name:$VERSION" --tag "$name:$VERSION-$REVISION" \
    "$CONTEXT" >/dev/null
  size=$(podman image inspect --format '{{.Size}}' "$name:$VERSION")
  log "$name:$VERSION-$REVISION: $((size / 1000000)) MB, built in $(($(date +%s) - built)) s"
done
log "done in $(($(date +%s) - started)) s"
