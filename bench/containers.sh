#!/usr/bin/env bash
# The cross-host benchmark (bench/containers.rs): failover when the leader's container is
# killed, forwarding overhead of a follower, worker container start → registered. Builds the
# images first (scripts/images.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
source scripts/env.sh
./scripts/images.sh
exec cargo test --release --test bench_containers -- --ignored --nocapture --test-threads 1
