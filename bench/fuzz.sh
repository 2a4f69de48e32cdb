#!/usr/bin/env bash
# Fuzzes every target in bench/fuzz for SECONDS each (default 120) with cargo-fuzz (libFuzzer;
# the machine's nightly toolchain, no sanitizer: the code is safe Rust, so what a fuzzer finds
# here is a panic, a hang or unbounded memory), then minimizes the corpus. A crash is copied to
# bench/fuzz/regressions/<target>/, which tests/fuzz_regressions.rs replays on stable in CI; the
# run then fails. Prints one line per target for bench/RESULTS.md.
#
#   bench/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh

SECONDS_EACH=${1:-120}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(idx cifar image job_yaml manifest wire)
FUZZ=bench/fuzz

rustup toolchain list | grep -q '^nightly' \
  || { echo "fuzz.sh: cargo-fuzz needs a nightly toolchain (rustup toolchain install nightly)" >&2; exit 1; }
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# The same dependency versions as the product.
cp Cargo.lock "$FUZZ/Cargo.lock"
# The worker crate links libtorch (the targets never call it, but the binary needs it to load).
export LD_LIBRARY_PATH="$PWD/.venv/libtorch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -d "$FUZZ/corpus" ] || .venv/bin/python "$FUZZ/seed.py"

found=0
printf '| target | seconds | runs | runs/s | corpus | crashes |\n|---|---|---|---|---|---|\n' > "$FUZZ/results.md"
for t in "${TARGETS[@]}"; do
  mkdir -p "$FUZZ/corpus/$t" "$FUZZ/artifacts/$t"
  log="$FUZZ/artifacts/$t.log"
  # Inputs up to 1 MiB; a run over 10 s or 2 GiB counts as a crash.
  if ! cargo +nightly fuzz run --fuzz-dir "$FUZZ" --sanitizer none "$t" "$FUZZ/corpus/$t" -- \
      -max_total_time="$SECONDS_EACH" -max_len=1048576 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
    found=1
    if compgen -G "$FUZZ/artifacts/$t/*" >/dev/null; then
      mkdir -p "$FUZZ/regressions/$t"
      cp "$FUZZ/artifacts/$t"/* "$FUZZ/regressions/$t/"
      echo "fuzz.sh: $t crashed; input kept in $FUZZ/regressions/$t (log: $log)" >&2
    else
      echo "fuzz.sh: $t did not run (log: $log)" >&2
    fi
    tail -30 "$log" >&2
  fi
  cargo +nightly fuzz cmin --fuzz-dir "$FUZZ" --sanitizer none "$t" "$FUZZ/corpus/$t" >/dev/null 2>&1 || true
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  crashes=0
  [ -d "$FUZZ/regressions/$t" ] && crashes=$(find "$FUZZ/regressions/$t" -type f | wc -l)
  corpus=$(find "$FUZZ/corpus/$t" -type f | wc -l)
  printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$SECONDS_EACH" "${runs:-?}" \
    "$(( ${runs:-0} / SECONDS_EACH ))" "$corpus" "$crashes" | tee -a "$FUZZ/results.md"
done
exit $found
