#!/usr/bin/env bash
# What a run report costs inside an eval: `trainfleet run configs/synth-digits.yaml` (release
# build) three times, each in a fresh state directory, reading the worker's log: the eval task's
# start and end, and its "report written" line (drawing the PNGs, rendering the HTML and writing
# the files, and the page's size; the thumbnails are taken during the eval, the upload follows).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
source scripts/env.sh
cargo build --release --bin trainfleet
for run in 1 2 3; do
  dir=$(mktemp -d)
  NO_COLOR=1 RUST_LOG=info target/release/trainfleet run configs/synth-digits.yaml \
    --state-dir "$dir" >/dev/null 2>"$dir/log"
  python3 - "$dir/log" "$run" <<'PY'
import re, sys
from datetime import datetime
log = [re.sub(r"\x1b\[[0-9;]*m", "", l) for l in open(sys.argv[1])]
def when(line):
    return datetime.fromisoformat(line.split()[0].rstrip("Z"))
start = next(when(l) for l in log if "task started" in l and "-eval" in l)
end = next(when(l) for l in log if "task finished" in l and "-eval" in l)
written = next(l for l in log if "report written" in l)
ms = int(re.search(r"millis=(\d+)", written).group(1))
size = int(re.search(r"html_bytes=(\d+)", written).group(1))
eval_ms = (end - start).total_seconds() * 1000
print(f"run {sys.argv[2]}: report {ms} ms of a {eval_ms:.0f} ms eval ({100 * ms / eval_ms:.1f} %), report.html {size / 1e6:.2f} MB")
PY
  rm -rf "$dir"
done
