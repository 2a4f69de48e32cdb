#!/usr/bin/env bash
# The images of the container tests' other members, built offline, idempotently (an image that
# exists is kept):
#
#   trainfleet-e2e-etcd:VERSION   the host's etcd (Debian etcd-server) on the bookworm-slim base
#   trainfleet-e2e-s3:MOTO        an S3 API server: moto (PyPI, pure Python) on a Debian python3
#                                 base made with debootstrap, since no image can be pulled
#   trainfleet-e2e-client:GRPCIO  a grpcurl-like client pod: grpcio and grpcio-reflection on the
#                                 same python3 base; tests mount tests/clients/ and run reflect.py
#
# Needs the base that scripts/images.sh makes. Prints nothing on success but what it builds.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
export CONTAINERS_CONF="$ROOT/k8s/images/containers.conf"
BASE=docker.io/library/debian:bookworm-slim
MOTO_VERSION=5.2.5
GRPCIO_VERSION=1.85.1
ETCD_VERSION=$(etcd --version | awk '/etcd Version/ {print $3}')
WORK="$ROOT/target/e2e-images"
log() { printf '\033[1me2e images:\033[0m %s\n' "$*" >&2; }

podman image exists "$BASE" || { echo "no $BASE: run scripts/images.sh first" >&2; exit 1; }

if ! podman image exists "trainfleet-e2e-etcd:$ETCD_VERSION"; then
  log "trainfleet-e2e-etcd:$ETCD_VERSION from $(command -v etcd)"
  mkdir -p "$WORK/etcd"
  cp "$(command -v etcd)" "$WORK/etcd/etcd"
  printf 'FROM %s\nCOPY etcd /usr/local/bin/etcd\nENTRYPOINT ["etcd"]\n' "$BASE" >"$WORK/etcd/Containerfile"
  podman build --quiet --pull=never -t "trainfleet-e2e-etcd:$ETCD_VERSION" "$WORK/etcd" >/dev/null
fi

# The python3 base of the S3 server and the client (debootstrap, once).
python_base() {
  if ! podman image exists trainfleet-e2e-python:bookworm; then
    log "trainfleet-e2e-python:bookworm (debootstrap --variant=minbase --include=python3)"
    rootfs=$(mktemp -d "${TMPDIR:-/tmp}/trainfleet-python.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include=python3 bookworm "$rootfs" \
      "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$rootfs.log" 2>&1 \
      || { tail -n 20 "$rootfs.log" >&2; exit 1; }
    rm -f "$rootfs.log"
    rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" --numeric-owner -c . | podman import --quiet - trainfleet-e2e-python:bookworm >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
  fi
}

if ! podman image exists "trainfleet-e2e-s3:$MOTO_VERSION"; then
  python_base
  log "trainfleet-e2e-s3:$MOTO_VERSION (moto from PyPI)"
  rm -rf "$WORK/s3" && mkdir -p "$WORK/s3"
  # Debian bookworm's python3 is 3.11, like the .venv's: the same wheels fit.
  .venv/bin/pip install --quiet --disable-pip-version-check --isolated --target "$WORK/s3/site" \
    "moto[s3]==$MOTO_VERSION" "flask<4" "flask-cors<7"
  cat >"$WORK/s3/Containerfile" <<'FILE'
FROM trainfleet-e2e-python:bookworm
COPY site /opt/moto
ENV PYTHONPATH=/opt/moto
EXPOSE 5000
ENTRYPOINT ["python3", "-c", "import sys; from moto.server import main; main(sys.argv[1:])", "--host", "0.0.0.0", "--port", "5000"]
FILE
  podman build --quiet --pull=never -t "trainfleet-e2e-s3:$MOTO_VERSION" "$WORK/s3" >/dev/null
fi

if ! podman image exists "trainfleet-e2e-client:$GRPCIO_VERSION"; then
  python_base
  log "trainfleet-e2e-client:$GRPCIO_VERSION (grpcio and grpcio-reflection from PyPI)"
  rm -rf "$WORK/client" && mkdir -p "$WORK/client"
  .venv/bin/pip install --quiet --disable-pip-version-check --isolated --target "$WORK/client/site" \
    "grpcio==$GRPCIO_VERSION" "grpcio-reflection==$GRPCIO_VERSION"
  cat >"$WORK/client/Containerfile" <<'FILE'
FROM trainfleet-e2e-python:bookworm
COPY site /opt/grpc
ENV PYTHONPATH=/opt/grpc
USER 65534:65534
ENTRYPOINT ["python3"]
FILE
  podman build --quiet --pull=never -t "trainfleet-e2e-client:$GRPCIO_VERSION" "$WORK/client" >/dev/null
fi
