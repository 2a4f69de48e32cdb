//! The training engine end to end, in process: tiny synth-digits runs on the CPU.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use trainfleet_core::job::{Arch, JobSpec, ModelSpec};
use trainfleet_worker::error::Error;
use trainfleet_worker::job;
use trainfleet_worker::train::{EpochReport, Event, RunOptions};

fn tiny_job(epochs: u32) -> JobSpec {
    let warmup = u32::from(epochs > 1);
    let yaml = format!(
        "name: tiny\n\
         dataset:\n  builtin: synth-digits\n  synth: {{train_samples: 640, test_samples: 200, seed: 9}}\n\
         model:\n  arch: simple_cnn\n\
         training:\n  epochs: {epochs}\n  batch_size: 32\n  optimizer: sgd\n  learning_rate: 0.05\n  \
         momentum: 0.9\n  schedule: cosine\n  warmup_epochs: {warmup}\n  grad_clip: 5.0\n  threads: 1\n  seed: 5\n  device: cpu\n"
    );
    JobSpec::from_yaml(&yaml, "tiny.yaml").unwrap()
}

/// Epoch reports without their wall-clock fields, which legitimately differ between runs.
/// Everything else is compared exactly (f64 equality, no tolerance).
fn deterministic(epochs: &[EpochReport]) -> Vec<EpochReport> {
    epochs
        .iter()
        .map(|e| EpochReport {
            train_seconds: 0.0,
            images_per_sec: 0.0,
            ..e.clone()
        })
        .collect()
}

fn run(
    spec: &JobSpec,
    data: &Path,
    out: &Path,
    options: &RunOptions<'_>,
) -> trainfleet_worker::Result<job::Trained> {
    job::run(spec, &settings(data), out, options, &mut |_| {})
}

fn settings(dir: &Path) -> trainfleet_worker::data::DataSettings {
    trainfleet_worker::data::DataSettings::new(dir.to_owned(), None)
}

/// libtorch's RNG and thread count are process-wide: two trainings in one process at once would
/// draw from each other's random streams. Tests that train hold this lock.
static ONE_TRAINING_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ONE_TRAINING_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

#[test]
fn a_run_killed_after_an_epoch_and_resumed_ends_exactly_like_an_uninterrupted_one() {
    let _serial = exclusive();
    let data = tempfile::tempdir().unwrap();
    let (straight, resumed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let spec = tiny_job(3);

    let full = run(&spec, data.path(), straight.path(), &RunOptions::default()).unwrap();

    let stop = RunOptions {
        stop_after_epoch: 1,
        ..Default::default()
    };
    assert!(matches!(
        run(&spec, data.path(), resumed.path(), &stop),
        Err(Error::Cancelled)
    ));
    assert!(resumed.path().join("checkpoint.safetensors").exists());
    assert!(
        !resumed.path().join("model.json").exists(),
        "an interrupted run leaves no model card"
    );

    let mut events = Vec::new();
    let options = RunOptions {
        resume: true,
        ..Default::default()
    };
    let second = job::run(
        &spec,
        &settings(data.path()),
        resumed.path(),
        &options,
        &mut |e| {
            if let Event::Resumed { epoch } | Event::EpochStarted { epoch, .. } = e {
                events.push(*epoch);
            }
        },
    )
    .unwrap();
    assert_eq!(
        events,
        vec![1, 2, 3],
        "resumed after epoch 1, then ran epochs 2 and 3 only"
    );
    assert_eq!(second.outcome.resumed_from, Some(1));
    assert_eq!(
        deterministic(&second.outcome.epochs),
        deterministic(&full.outcome.epochs)
    );
    assert_eq!(
        second.outcome.test, full.outcome.test,
        "identical test evaluation, bit for bit"
    );
    assert_eq!(
        second.card.weights_sha256, full.card.weights_sha256,
        "identical weights"
    );
    assert!(
        full.outcome.test.accuracy > 0.5,
        "it learned something: {}",
        full.outcome.test.accuracy
    );
}

#[test]
fn resuming_with_a_different_config_is_refused() {
    let _serial = exclusive();
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let stop = RunOptions {
        stop_after_epoch: 1,
        ..Default::default()
    };
    assert!(matches!(
        run(&tiny_job(2), data.path(), out.path(), &stop),
        Err(Error::Cancelled)
    ));
    let mut other = tiny_job(2);
    other.training.learning_rate = 0.01;
    let err = run(
        &other,
        data.path(),
        out.path(),
        &RunOptions {
            resume: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("was written for a different job config"),
        "{err}"
    );
}

#[test]
fn cancel_stops_within_one_batch() {
    let _serial = exclusive();
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let cancel = AtomicBool::new(true);
    let mut batches = 0;
    let options = RunOptions {
        cancel: Some(&cancel),
        ..Default::default()
    };
    let result = job::run(
        &tiny_job(2),
        &settings(data.path()),
        out.path(),
        &options,
        &mut |e| {
            if let Event::Batch { .. } = e {
                batches += 1;
            }
        },
    );
    assert!(matches!(result, Err(Error::Cancelled)));
    assert_eq!(batches, 0);
    assert!(!out.path().join("model.safetensors").exists());
}

#[test]
fn saved_model_reloads_with_identical_predictions_and_tampering_is_caught() {
    let _serial = exclusive();
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let trained = run(
        &tiny_job(1),
        data.path(),
        out.path(),
        &RunOptions::default(),
    )
    .unwrap();
    let verified = job::verify(out.path(), &settings(data.path()), 10_000).unwrap();
    assert_eq!(verified.samples, 200);
    assert_eq!(verified.matching, 200);
    assert_eq!(verified.accuracy, trained.outcome.test.accuracy);

    let weights = out.path().join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let err = job::verify(out.path(), &settings(data.path()), 10)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("checksum mismatch") && err.contains(&trained.card.weights_sha256),
        "{err}"
    );
}

#[test]
fn early_stopping_keeps_the_best_epoch() {
    let _serial = exclusive();
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut spec = tiny_job(6);
    spec.training.learning_rate = 2.0; // diverges after a while: validation stops improving
    spec.training.grad_clip = None;
    spec.training.early_stopping = Some(trainfleet_core::job::EarlyStopping {
        metric: trainfleet_core::job::WatchedMetric::ValLoss,
        patience: 1,
        min_delta: 0.0,
    });
    let trained = run(&spec, data.path(), out.path(), &RunOptions::default()).unwrap();
    let o = &trained.outcome;
    if let Some(reason) = &o.stopped_early {
        assert!(o.epochs.len() < 6, "{reason}");
        assert!(reason.contains("val_loss did not improve"), "{reason}");
        let best = o
            .epochs
            .iter()
            .map(|e| e.val_loss.unwrap())
            .fold(f64::INFINITY, f64::min);
        let kept = o.epochs.iter().find(|e| e.epoch == o.kept_epoch).unwrap();
        assert_eq!(
            kept.val_loss.unwrap(),
            best,
            "the kept weights are the best epoch's"
        );
    } else {
        // Every epoch improved: then the last one is kept.
        assert_eq!(o.kept_epoch, 6);
    }
}

#[test]
fn every_architecture_trains_one_step() {
    let _serial = exclusive();
    let data = tempfile::tempdir().unwrap();
    for arch in Arch::ALL {
        let extra = match arch {
            Arch::Cnn => ModelSpec {
                channels: Some(vec![8, 16]),
                ..Default::default()
            },
            Arch::MobilenetV2 => ModelSpec {
                width_mult: Some(0.5),
                ..Default::default()
            },
            _ => ModelSpec::default(),
        };
        let out = tempfile::tempdir().unwrap();
        let mut spec = tiny_job(1);
        spec.model = ModelSpec { arch, ..extra };
        spec.dataset.synth.train_samples = 12;
        spec.dataset.synth.test_samples = 4;
        spec.dataset.validation_pct = 0;
        spec.training.batch_size = 12;
        spec.training.warmup_epochs = 0;
        let trained = run(&spec, data.path(), out.path(), &RunOptions::default()).unwrap();
        assert_eq!(trained.outcome.epochs.len(), 1, "{arch:?}");
        assert!(trained.outcome.epochs[0].train_loss.is_finite(), "{arch:?}");
    }
}

#[test]
fn a_bad_spec_fails_before_any_work() {
    let _serial = exclusive();
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut spec = tiny_job(1);
    spec.training.device = "cuda:7".into();
    let err = run(&spec, data.path(), out.path(), &RunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("training.device is cuda:7 but this worker has"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(data.path()).unwrap().count(),
        0,
        "no dataset was generated"
    );
}

#[test]
fn initial_weights_are_loaded_before_training() {
    let _serial = exclusive();
    let data = tempfile::tempdir().unwrap();
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let trained = run(
        &tiny_job(2),
        data.path(),
        first.path(),
        &RunOptions::default(),
    )
    .unwrap();
    // Start from those weights with a learning rate too small to move them: the new model scores
    // what the old one did.
    let mut spec = tiny_job(1);
    spec.model.init_weights = Some(first.path().join("model.safetensors"));
    spec.training.learning_rate = 1e-12;
    let again = run(&spec, data.path(), second.path(), &RunOptions::default()).unwrap();
    assert_eq!(again.outcome.test.accuracy, trained.outcome.test.accuracy);

    let mut wrong = tiny_job(1);
    wrong.model = ModelSpec {
        arch: Arch::Cnn,
        ..Default::default()
    };
    wrong.model.init_weights = Some(first.path().join("model.safetensors"));
    let err = run(&wrong, data.path(), second.path(), &RunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.init_weights") && err.contains("names and shapes must match"),
        "{err}"
    );
}
