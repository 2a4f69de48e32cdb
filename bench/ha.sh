#!/usr/bin/env bash
# Builds the release coordinator and runs the HA benchmark (see bench/ha.rs): failover time over
# leader kills, and the etcd write rate of idle workers. Needs etcd (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
source scripts/env.sh
cargo build --release -p trainfleet-bench -p trainfleet-coordinator
exec target/release/ha "$@"
