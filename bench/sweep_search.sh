#!/usr/bin/env bash
# A real search, ASHA against random with the same budget (bench/sweep_search.py): synth-digits,
# learning rate x width, 16 trials of up to 9 epochs, a coordinator and two real workers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
source scripts/env.sh
cargo build --release --workspace --bins
exec python3 bench/sweep_search.py target/release
