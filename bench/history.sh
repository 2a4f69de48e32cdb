#!/usr/bin/env bash
# Builds the release coordinator and runs the history benchmark (see bench/history.rs): 100,000
# finished jobs behind a coordinator, without and with retention, embedded and on etcd.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
source scripts/env.sh
cargo build --release -p trainfleet-bench -p trainfleet-coordinator
exec target/release/history "$@"
