"""Ray Tune's side of bench/sweep_overhead.rs: the same random search of trivial trials (one
reported epoch, no training), on a local Ray with as many CPUs as trainfleet has workers, one
trial per CPU. Times tuner.fit() only (Ray is started before), per trial.

Prints one JSON object."""

import argparse
import json
import math
import time

import ray
from ray import tune


def trainable(config):
    accuracy = 1.0 / (1.0 + (math.log10(config["learning_rate"]) + 2.5) ** 2)
    tune.report({"val_accuracy": accuracy})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    per_trial = []
    for seed in range(args.rounds):
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space={"learning_rate": tune.loguniform(1e-4, 1e-1)},
            tune_config=tune.TuneConfig(
                num_samples=args.trials,
                metric="val_accuracy",
                mode="max",
                search_alg=tune.search.BasicVariantGenerator(
                    random_state=seed, max_concurrent=args.workers
                ),
            ),
            run_config=tune.RunConfig(verbose=0),
        )
        started = time.perf_counter()
        results = tuner.fit()
        took = time.perf_counter() - started
        assert len(results) == args.trials and not results.errors, results.errors
        per_trial.append(took * 1e3 / args.trials)
    per_trial.sort()
    print(json.dumps({
        "system": "ray-tune " + ray.__version__,
        "trials": args.trials,
        "workers": args.workers,
        "rounds": args.rounds,
        "per_trial_ms_median": per_trial[len(per_trial) // 2],
        "per_trial_ms_all": per_trial,
    }))


if __name__ == "__main__":
    main()
