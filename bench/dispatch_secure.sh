#!/usr/bin/env bash
# Builds the release coordinator and the secure-dispatch benchmark, then runs it: the same
# dispatch load with TLS, worker certificates and tokens off and on, alternating rounds (see
# bench/dispatch_secure.rs). Extra arguments go to the benchmark, e.g. --rounds 5.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
source scripts/env.sh
cargo build --release -p trainfleet-coordinator -p trainfleet-bench
exec target/release/dispatch_secure "$@"
