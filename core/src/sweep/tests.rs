use super::*;

const BASE: &str = "job:
  dataset:
    builtin: synth-digits
    validation_pct: 10
  model:
    arch: simple_cnn
  training:
    epochs: 9
";

fn parse(rest: &str) -> Result<SweepSpec> {
    SweepSpec::from_yaml(&format!("{BASE}{rest}"), "sweep.yaml", None)
}

fn refused(rest: &str) -> String {
    parse(rest).expect_err("should be refused").to_string()
}

#[test]
fn grid_runs_the_cross_product_in_order() {
    let spec = parse(
        "space:
  training.learning_rate: {grid: [0.1, 0.01]}
  training.batch_size: {grid: [32, 64, 128]}
strategy: grid
",
    )
    .unwrap();
    assert_eq!(spec.trials(), 6);
    let points: Vec<(String, String)> = (0..6)
        .map(|i| {
            let v = spec.propose(i);
            (
                space::show(&v["training.batch_size"]),
                space::show(&v["training.learning_rate"]),
            )
        })
        .collect();
    let expect = [
        ("32", "0.1"),
        ("32", "0.01"),
        ("64", "0.1"),
        ("64", "0.01"),
        ("128", "0.1"),
        ("128", "0.01"),
    ];
    for (got, want) in points.iter().zip(expect) {
        assert_eq!((got.0.as_str(), got.1.as_str()), want);
    }
    let job = spec.trial_job(4, &spec.propose(4)).unwrap();
    assert_eq!(job.training.batch_size, 128);
    assert_eq!(job.training.learning_rate, 0.1);
    assert_eq!(job.name, "sweep-t004");
    assert_eq!(job.labels["trial"], "4");
}

#[test]
fn random_draws_stay_in_range_and_repeat_with_the_seed() {
    let text = "space:
  training.learning_rate: {log: [0.0001, 0.1]}
  training.batch_size: {int: [16, 64]}
  training.momentum: {double: [0.5, 0.9]}
  training.optimizer: {categorical: [sgd, adam]}
max_trials: 50
seed: 3
";
    let spec = parse(text).unwrap();
    let again = parse(text).unwrap();
    let mut seeds = std::collections::BTreeSet::new();
    let mut small_lr = 0;
    for i in 0..50 {
        let values = spec.propose(i);
        assert_eq!(
            values,
            again.propose(i),
            "trial {i} is a pure function of seed and index"
        );
        let job = spec.trial_job(i, &values).unwrap();
        let t = &job.training;
        assert!((1e-4..0.1).contains(&t.learning_rate));
        assert!((16..=64).contains(&t.batch_size));
        assert!((0.5..0.9).contains(&t.momentum));
        small_lr += usize::from(t.learning_rate < 1e-3);
        seeds.insert(t.seed);
    }
    assert_eq!(seeds.len(), 50, "each trial has its own seed");
    assert!(
        (8..=30).contains(&small_lr),
        "log-uniform: about a third below 1e-3, got {small_lr}"
    );
    let other = parse(&text.replace("seed: 3", "seed: 4")).unwrap();
    assert_ne!(spec.propose(0), other.propose(0));
}

#[test]
fn warm_start_configs_come_first_then_proposals_continue() {
    let spec = parse(
        "space:
  training.learning_rate: {log: [0.0001, 0.1]}
  training.batch_size: {int: [16, 64]}
max_trials: 4
warm_start:
  - {training.learning_rate: 0.005}
",
    )
    .unwrap();
    assert_eq!(
        space::show(&spec.propose(0)["training.learning_rate"]),
        "0.005"
    );
    let plain = SweepSpec {
        warm_start: Vec::new(),
        ..spec.clone()
    };
    assert_eq!(
        spec.propose(1),
        plain.propose(0),
        "proposals shift past the warm start"
    );

    // A grid runs its warm starts, then every point.
    let grid = parse(
        "space:
  training.learning_rate: {grid: [0.1, 0.01]}
strategy: grid
warm_start:
  - {training.learning_rate: 0.05}
",
    )
    .unwrap();
    assert_eq!(grid.trials(), 3);
    let lrs: Vec<String> = (0..3)
        .map(|i| space::show(&grid.propose(i)["training.learning_rate"]))
        .collect();
    assert_eq!(lrs, ["0.05", "0.1", "0.01"]);
}

#[test]
fn asha_sets_every_trials_epochs_to_the_last_rung() {
    let spec = parse(
        "space:
  training.learning_rate: {log: [0.0001, 0.1]}
strategy: asha
asha: {min_epochs: 1, eta: 3}
max_trials: 8
",
    )
    .unwrap();
    assert_eq!(spec.rungs(), vec![1, 3, 9]);
    assert_eq!(
        spec.trial_job(0, &spec.propose(0)).unwrap().training.epochs,
        9
    );
}

#[test]
fn bad_specs_name_the_field_and_its_line() {
    let cases = [
        (
            "space:\n  training.learning_rte: {log: [0.001, 0.1]}\nmax_trials: 2\n",
            "sweep.yaml:10:3: `space.training.learning_rte`",
        ),
        (
            "space:\n  training.learning_rate: {double: [0.1, 0.01]}\nmax_trials: 2\n",
            "min 0.1 is above max 0.01",
        ),
        (
            "space:\n  training.weight_decay: {log: [0, 0.1]}\nmax_trials: 2\n",
            "`space.training.weight_decay` a log range must be above 0",
        ),
        (
            "space:\n  training.learning_rate: {log: [0.001, 20]}\nmax_trials: 2\n",
            "`space.training.learning_rate` 20.0 makes the job invalid",
        ),
        (
            "space:\n  nope.lr: {const: 1}\nmax_trials: 2\n",
            "`space.nope.lr`",
        ),
        (
            "space:\n  training.learning_rate: {log: [0.001, 0.1]}\n",
            "`max_trials` is required with strategy random",
        ),
        (
            "space:\n  training.learning_rate: {log: [0.001, 0.1]}\nstrategy: asha\nmax_trials: 3\n",
            "`asha` is required",
        ),
        (
            "space:\n  training.learning_rate: {log: [0.001, 0.1]}\nstrategy: asha\nmax_trials: 3\nasha:\n  min_epochs: 9\n",
            "sweep.yaml:14:3: `asha.min_epochs` is 9",
        ),
        (
            "space:\n  training.learning_rate: {grid: [0.001, 0.1]}\nstrategy: grid\nmax_trials: 3\n",
            "above the grid's 2 points",
        ),
        (
            "space:\n  training.learning_rate: {loog: [0.001, 0.1]}\n",
            "sweep.yaml:10:28: space.training.learning_rate: unknown field `loog`, expected one of `const`",
        ),
        (
            "space:\n  training.learning_rate: {log: [0.001, 0.1]}\nmax_trials: 2\nobjective: {metric: test_accuracy}\n",
            "`objective.metric` is \"test_accuracy\"",
        ),
    ];
    for (rest, want) in cases {
        let got = refused(rest);
        assert!(got.contains(want), "{rest}\n  got:  {got}\n  want: {want}");
    }
    let no_validation = SweepSpec::from_yaml(
        "job: {dataset: {builtin: synth-digits, validation_pct: 0}, model: {arch: simple_cnn}}\nspace: {training.learning_rate: {log: [0.001, 0.1]}}\nmax_trials: 2\n",
        "s.yaml",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(no_validation.contains("validation_pct"), "{no_validation}");
    let file_on_wire = SweepSpec::from_yaml(
        "job_file: x.yaml\nspace: {training.learning_rate: {log: [0.001, 0.1]}}\nmax_trials: 2\n",
        "request",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        file_on_wire.contains("request:1:1: `job_file` cannot be read here"),
        "{file_on_wire}"
    );
}

#[test]
fn a_const_arch_lets_widths_that_only_it_takes_validate() {
    let spec = parse(
        "space:
  model.arch: {const: cnn}
  model.channels: {categorical: [[8, 16], [16, 32]]}
max_trials: 2
",
    )
    .unwrap();
    let job = spec.trial_job(0, &spec.propose(0)).unwrap();
    assert!(job.model.channels.is_some());
}

#[test]
fn a_retrain_sweep_takes_its_base_job_and_hashes_without_warm_starts() {
    let base = parse("space: {training.learning_rate: {const: 0.01}}\nmax_trials: 1\n")
        .unwrap()
        .job
        .unwrap();
    let text = "space: {training.learning_rate: {log: [0.001, 0.1]}}\nmax_trials: 4\n";
    let spec = SweepSpec::with_base(text, "policy.sweep_yaml", base.clone()).unwrap();
    assert_eq!(spec.base(), &base);
    let mut warm = spec.clone();
    warm.warm_start = vec![[("training.learning_rate".to_owned(), 0.05.into())].into()];
    assert_eq!(spec.config_hash(), warm.config_hash());
    let mut other_job = base.clone();
    other_job.training.epochs += 1;
    let other = SweepSpec::with_base(text, "policy.sweep_yaml", other_job).unwrap();
    assert_ne!(spec.config_hash(), other.config_hash());
    let wider = SweepSpec::with_base(&text.replace("0.1]", "0.2]"), "p", base.clone()).unwrap();
    assert_ne!(spec.config_hash(), wider.config_hash());

    let named = SweepSpec::with_base(&format!("{BASE}{text}"), "policy.sweep_yaml", base)
        .unwrap_err()
        .to_string();
    assert!(
        named.contains("policy.sweep_yaml:1:1: `job` is set, but a retrain sweep's base job"),
        "{named}"
    );
}
