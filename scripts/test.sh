#!/usr/bin/env bash
# Every check CI runs, in the order that fails fastest. Called by `make test` (after setup and
# with scripts/env.sh sourced).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "format"
cargo fmt --all -- --check

step "no import circle among the coordinator's modules"
python3 scripts/module_cycles.py coordinator/src

step "build (binaries are what the end-to-end tests start)"
cargo build --workspace --bins --tests

step "images (release binaries; tests/images.rs runs them)"
./scripts/images.sh

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
cargo test --workspace --no-fail-fast
