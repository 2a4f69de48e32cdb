//! Every example in configs/ parses and validates: they are documentation users copy (jobs,
//! sweeps, coordinator and worker settings).

use trainfleet_core::config::{CoordinatorConfig, WorkerConfig};
use trainfleet_core::job::JobSpec;
use trainfleet_core::sweep::SweepSpec;

#[test]
fn example_coordinator_and_worker_settings_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    CoordinatorConfig::from_file(&dir.join("coordinator.yaml")).unwrap();
    WorkerConfig::from_file(&dir.join("worker.yaml")).unwrap();
}

#[test]
fn every_example_job_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "coordinator.yaml" || name == "worker.yaml" || !name.ends_with(".yaml") {
            continue;
        }
        // Sweep specs (their base job inside, read relative to them) are sweeps, not jobs.
        if name.starts_with("sweep-") {
            SweepSpec::from_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            continue;
        }
        // A retrain sweep's base job is the dataset policy's job: checked over synth-digits'.
        if name.starts_with("retrain-sweep-") {
            let base = JobSpec::from_file(&dir.join("synth-digits.yaml")).unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            SweepSpec::with_base(&text, &name, base).unwrap_or_else(|e| panic!("{name}: {e}"));
            continue;
        }
        JobSpec::from_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        checked += 1;
    }
    assert!(
        checked >= 5,
        "mnist, fashion-mnist, kmnist, cifar10, synth-digits: found {checked}"
    );
}
