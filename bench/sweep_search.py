"""A real search, ASHA against random with the same budget: synth-digits, learning rate x
width (a configurable CNN), 16 trials of up to 9 epochs (ASHA with rungs at 1, 3, 9 and at
3, 9), 2 workers, on a coordinator and two
real workers started here on loopback (stopped by PID). For each strategy: the best validation
accuracy, the wall time to the end of the sweep, the time at which the best trial finished, and
the worker-seconds the trials' tasks used (from the jobs' attempt records).

Run by bench/sweep_search.sh after the binaries are built. Prints one JSON object."""

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release")

BASE = """name: search
dataset:
  builtin: synth-digits
  synth: {train_samples: 3000, test_samples: 500, seed: 7}
  validation_pct: 20
model: {arch: cnn}
training: {epochs: 9, batch_size: 64, optimizer: adam, threads: 1}
"""

SPACE = """space:
  training.learning_rate: {log: [0.0001, 0.03]}
  model.channels: {categorical: [[4, 8], [8, 16], [16, 32]]}
max_trials: 16
parallelism: 2
seed: 1
promote_best: false
"""


def stamp(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main():
    work = tempfile.mkdtemp(prefix="sweep-search-")
    addr_file = os.path.join(work, "addr")
    procs = []
    try:
        procs.append(subprocess.Popen(
            [f"{BIN}/trainfleet-coordinator", "--listen", "127.0.0.1:0", "--addr-file", addr_file,
             "--data-dir", f"{work}/state", "--artifacts", f"{work}/artifacts"],
            stderr=open(f"{work}/coordinator.log", "w")))
        while not os.path.exists(addr_file) or not open(addr_file).read():
            time.sleep(0.05)
        addr = open(addr_file).read()
        for name in ("w1", "w2"):
            with open(f"{work}/{name}.yaml", "w") as f:
                f.write(f"data_dir: {work}/data\nartifact_dir: {work}/work-{name}\n"
                        f"data_roots: [{work}]\n")
            procs.append(subprocess.Popen(
                [f"{BIN}/trainfleet-worker", "--config", f"{work}/{name}.yaml",
                 "--coordinator", addr, "--worker-id", name],
                stderr=open(f"{work}/{name}.log", "w")))
        env = dict(os.environ, TRAINFLEET_ENDPOINT=addr)
        cli = lambda *args: json.loads(subprocess.run(
            [f"{BIN}/trainfleet", *args, "--json"], env=env, check=True, cwd=work,
            capture_output=True, text=True).stdout)
        with open(f"{work}/base.yaml", "w") as f:
            f.write(BASE)
        results = {}
        # Warm the data cache once, so neither strategy pays for generating it.
        with open(f"{work}/warm.yaml", "w") as f:
            f.write(BASE.replace("epochs: 9", "epochs: 1"))
        subprocess.run([f"{BIN}/trainfleet", "submit", "warm.yaml", "--watch"], env=env,
                       check=True, cwd=work, capture_output=True)
        runs = {
            "asha_rungs_1_3_9": "strategy: asha\nasha: {min_epochs: 1, max_epochs: 9, eta: 3}\n",
            "asha_rungs_3_9": "strategy: asha\nasha: {min_epochs: 3, max_epochs: 9, eta: 3}\n",
            "random": "strategy: random\n",
        }
        for strategy, extra in runs.items():
            path = f"{work}/{strategy}.yaml"
            with open(path, "w") as f:
                f.write(f"name: {strategy.replace('_', '-')}\njob_file: base.yaml\n{SPACE}{extra}")
            started = time.time()
            sweep = cli("sweep", "start", path, "--wait")
            wall = time.time() - started
            worker_seconds = 0.0
            finished = {}
            for t in sweep["trials"]:
                job = cli("status", t["job_id"])
                for a in job.get("attempts", []):
                    if a.get("started_at") and a.get("finished_at"):
                        worker_seconds += stamp(a["finished_at"]) - stamp(a["started_at"])
                if job.get("finished_at"):
                    finished[t["number"]] = stamp(job["finished_at"]) - started
            best = sweep["best"]
            results[strategy] = {
                "trials": len(sweep["trials"]),
                "best_val_accuracy": sweep["trials"][best]["objective"],
                "best_params": sweep["trials"][best]["params"],
                "epochs_trained": sum(t["epochs"] for t in sweep["trials"]),
                "wall_seconds": round(wall, 1),
                "best_finished_at_seconds": round(finished.get(best, wall), 1),
                "worker_seconds": round(worker_seconds, 1),
            }
        print(json.dumps(results))
    finally:
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
