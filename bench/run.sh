#!/usr/bin/env bash
# Builds the release worker and runs the training-throughput benchmark. Results are printed as
# JSON; bench/RESULTS.md records them with the machine and this command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
cargo build --release -p trainfleet-worker
exec .venv/bin/python bench/train_throughput.py "$@"
