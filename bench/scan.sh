#!/usr/bin/env bash
# Builds and runs the dataset-scan benchmark (see bench/scan.rs). Needs coreutils' sha256sum.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
source scripts/env.sh
cargo build --release -p trainfleet-bench
exec target/release/scan "$@"
