#!/usr/bin/env bash
# Builds the release coordinator and the dispatch benchmark, then runs it (see bench/dispatch.rs
# for what it measures). Extra arguments go to the benchmark, e.g. --workers 50 --jobs 20000.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
source scripts/env.sh
cargo build --release -p trainfleet-coordinator -p trainfleet-bench
exec target/release/dispatch "$@"
