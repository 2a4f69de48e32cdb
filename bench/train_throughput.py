#!/usr/bin/env python3
"""Training throughput: trainfleet vs the seed-style PyTorch reference, side by side.

Same data (synth-digits IDX files, generated once by trainfleet), same model (the classic CNN),
same optimiser and hyperparameters, same libtorch thread count, same epochs. Each round runs both
(in alternating order, to spread machine noise) as separate processes with that round's seed
(`--seed` + round), so the rounds are also seeds; peak RSS comes from getrusage of each child.
Reports mean per-epoch images/s, the ratio trainfleet/reference, peak RSS, and the numerics: the
first epoch's mean training loss and the test error, mean over the seeds, with their ratios.

    python bench/train_throughput.py [--rounds 5] [--epochs 2] [--threads 2] [--device cpu] [--phases]

--phases also times each phase of a training step on both sides (gather, forward, backward,
optimiser step; milliseconds per step, mean over epochs and rounds), to show where the time goes.

Needs `cargo build --release -p trainfleet-worker` first (bench/run.sh does it).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_measured(cmd, env=None):
    """Runs cmd in a fresh process; returns (stdout, peak RSS in MiB, stderr)."""
    # A tiny Python shim forks the command and reports the child's own ru_maxrss, so each
    # measurement covers exactly one process tree.
    shim = (
        "import resource, subprocess, sys, json;"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "sys.stderr.write(r.stderr);"
        "print(json.dumps({'rc': r.returncode, 'out': r.stdout,"
        " 'rss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
    )
    done = subprocess.run([sys.executable, "-c", shim, *cmd], capture_output=True, text=True, env=env)
    report = json.loads(done.stdout)
    if report["rc"] != 0:
        sys.exit(f"{cmd[0]} failed:\n{done.stderr}\n{report['out']}")
    return report["out"], report["rss_kib"] / 1024, done.stderr


PHASES = ("gather", "forward", "backward", "step")


def worker_phases(stderr):
    """The mean of the PHASES lines a worker run printed (TRAINFLEET_PROFILE_PHASES=1)."""
    epochs = [json.loads(line[len("PHASES "):]) for line in stderr.splitlines() if line.startswith("PHASES ")]
    return {n: statistics.mean(e[n] for e in epochs) for n in PHASES} if epochs else None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-samples", type=int, default=20000)
    p.add_argument("--test-samples", type=int, default=4000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=42, help="seed of the first round; round r uses seed + r")
    p.add_argument("--phases", action="store_true", help="time each phase of a step on both sides")
    a = p.parse_args()

    worker = ROOT / "target/release/trainfleet-worker"
    python = ROOT / ".venv/bin/python"
    data_dir = ROOT / "bench/.data"
    job = {
        "name": "bench-synth-simple-cnn",
        "dataset": {
            "builtin": "synth-digits",
            "synth": {"train_samples": a.train_samples, "test_samples": a.test_samples, "seed": 1},
            # The reference trains on the whole training split; so does trainfleet here.
            "validation_pct": 0,
        },
        "model": {"arch": "simple_cnn"},
        "training": {
            "epochs": a.epochs,
            "batch_size": a.batch_size,
            "optimizer": "adam",
            "learning_rate": 0.001,
            "threads": a.threads,
            "seed": a.seed,
            "device": a.device,
        },
    }
    env = dict(os.environ, PYTHONWARNINGS="ignore", RUST_LOG="warn")
    if a.phases:
        env["TRAINFLEET_PROFILE_PHASES"] = "1"
    results = {"trainfleet": [], "reference": []}
    with tempfile.TemporaryDirectory() as tmp:
        job_path = Path(tmp) / "job.yaml"
        synth = None
        for round_ in range(a.rounds):
            seed = a.seed + round_
            job["training"]["seed"] = seed
            job_path.write_text(json.dumps(job))  # JSON is YAML
            order = ["trainfleet", "reference"] if round_ % 2 == 0 else ["reference", "trainfleet"]
            for who in order:
                if who == "trainfleet":
                    out = Path(tmp) / f"run{round_}"
                    _, rss, stderr = run_measured(
                        [str(worker), "train", "--config", str(job_path), "--out", str(out), "--data-dir", str(data_dir)], env
                    )
                    metrics = json.loads((out / "metrics.json").read_text())
                    card = json.loads((out / "model.json").read_text())
                    ips = statistics.mean(e["images_per_sec"] for e in metrics["epochs"])
                    results[who].append({"ips": ips, "rss": rss, "acc": card["metrics"]["accuracy"],
                                         "loss1": metrics["epochs"][0]["train_loss"], "seed": seed,
                                         "phases_ms": worker_phases(stderr)})
                    synth = next((data_dir / "synth-digits").glob(f"v*-seed1-train{a.train_samples}-test{a.test_samples}"))
                else:
                    if synth is None:
                        continue  # the first trainfleet run generates the data
                    cmd = [str(python), str(ROOT / "bench/reference_seed.py"), "--data", str(synth),
                           "--epochs", str(a.epochs), "--batch-size", str(a.batch_size), "--threads", str(a.threads),
                           "--seed", str(seed)] + (["--phases"] if a.phases else [])
                    out, rss, _ = run_measured(cmd, env)
                    r = json.loads(out)
                    ips = statistics.mean(e["images_per_sec"] for e in r["epochs"])
                    phases = [e["phases_ms"] for e in r["epochs"] if "phases_ms" in e]
                    results[who].append({"ips": ips, "rss": rss, "acc": r["test_accuracy"],
                                         "loss1": r["epochs"][0]["train_loss"], "seed": seed,
                                         "phases_ms": {n: statistics.mean(e[n] for e in phases) for n in PHASES}
                                         if phases else None})
                print(f"round {round_ + 1} {who:<10} {results[who][-1]}" if results[who] else "", file=sys.stderr)

    def med(who, key):
        return statistics.median(r[key] for r in results[who])

    def mean(who, key):
        return statistics.mean(r[key] for r in results[who])

    def error(who):
        return statistics.mean(1 - r["acc"] for r in results[who])

    tf_ips, ref_ips = med("trainfleet", "ips"), med("reference", "ips")
    summary = {
        "config": vars(a),
        "trainfleet": {"images_per_sec": tf_ips, "peak_rss_mib": med("trainfleet", "rss"), "test_accuracy": med("trainfleet", "acc")},
        "reference": {"images_per_sec": ref_ips, "peak_rss_mib": med("reference", "rss"), "test_accuracy": med("reference", "acc")},
        "ratio_images_per_sec": tf_ips / ref_ips,
        "ratio_peak_rss": med("trainfleet", "rss") / med("reference", "rss"),
        "accuracy_points_difference": 100 * (med("trainfleet", "acc") - med("reference", "acc")),
        "seeds": len(results["reference"]),
        "first_epoch_train_loss": {"trainfleet": mean("trainfleet", "loss1"), "reference": mean("reference", "loss1"),
                                   "ratio": mean("trainfleet", "loss1") / mean("reference", "loss1")},
        "test_error": {"trainfleet": error("trainfleet"), "reference": error("reference"),
                       "ratio": error("trainfleet") / error("reference") if error("reference") > 0 else None},
        "runs": results,
    }
    if a.phases:
        def phase(who, n):
            return statistics.mean(r["phases_ms"][n] for r in results[who] if r["phases_ms"])
        summary["phases_ms_per_step"] = {
            n: {"trainfleet": phase("trainfleet", n), "reference": phase("reference", n),
                "ratio": phase("trainfleet", n) / phase("reference", n)}
            for n in PHASES
        }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
