#!/usr/bin/env bash
# Per-trial overhead of a sweep of trivial trials: trainfleet (bench/sweep_overhead.rs) and Ray
# Tune (bench/sweep_ray.py, from PyPI in its own venv, .bench-ray) side by side in one run, same
# trials, same parallelism. Extra arguments go to both, e.g. --trials 100 --workers 2 --rounds 3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
source scripts/env.sh
cargo build --release -p trainfleet-coordinator -p trainfleet-bench
if [ ! -x .bench-ray/bin/python ]; then
  python3 -m venv .bench-ray
  .bench-ray/bin/pip install --quiet "ray[tune]==2.60.0"
fi
ours=$(target/release/sweep_overhead "$@")
# Ray prints its experiment tables to stdout too; the JSON is the last line.
theirs=$(.bench-ray/bin/python bench/sweep_ray.py "$@" 2>/dev/null | tail -n 1)
echo "$ours"
echo "$theirs"
python3 - "$ours" "$theirs" <<'PY'
import json, sys
a, b = (json.loads(x) for x in sys.argv[1:3])
print(f"per trial: trainfleet {a['per_trial_ms_median']:.2f} ms, {b['system']} "
      f"{b['per_trial_ms_median']:.1f} ms; ratio (Ray / trainfleet) "
      f"{b['per_trial_ms_median'] / a['per_trial_ms_median']:.0f}x")
PY
