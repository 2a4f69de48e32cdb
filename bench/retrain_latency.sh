#!/usr/bin/env bash
# Builds the release binaries and runs the retrain-latency benchmark (see bench/retrain_latency.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
source scripts/env.sh
cargo build --release -p trainfleet-bench -p trainfleet-coordinator -p trainfleet-worker
exec target/release/retrain_latency "$@"
