//! A policy that retrains with a sweep, inside one coordinator: the decision starts a sweep
//! pinned to the version, a newer version re-pins it while no trial has started, the first
//! trial's lease takes the key, and the next retrain sweep proposes the previous one's best
//! configurations first. Trials' results are set as their jobs would report them (real
//! training is in tests/sweeps.rs and tests/retrain.rs).

use std::time::SystemTime;

use trainfleet_core::device::DeviceKind;
use trainfleet_core::policy::RetrainPolicy;
use trainfleet_core::sweep::SweepSpec;
use trainfleet_proto::v1::retrain_decision::Outcome;

use super::super::tests::{close, open, register, register_with};
use super::tests::{lease, root, scan, wire_history};
use crate::records::{DatasetRecord, RetrainSweep, SweepState, TrialState};

const JOB: &str = "name: digits\nmodel: {arch: simple_cnn}\nresources: {gpu: true}\n\
                   dataset: {validation_pct: 10}\n";
const SWEEP: &str = "space:\n  training.learning_rate: {log: [0.001, 0.1]}\n  \
                     training.batch_size: {categorical: [16, 32, 64]}\nmax_trials: 4\n\
                     parallelism: 4\nseed: 3\n";

fn trial_jobs(f: &super::super::tests::Fixture, sweep_id: &str) -> Vec<String> {
    let inner = f.control.lock();
    inner.trials[sweep_id]
        .iter()
        .map(|t| t.job_id.clone())
        .collect()
}

fn pinned_root(f: &super::super::tests::Fixture, job_id: &str) -> String {
    let inner = f.control.lock();
    let spec = inner.jobs[job_id].spec().unwrap();
    spec.dataset.version.clone().unwrap()
}

#[tokio::test]
async fn a_sweep_retrain_repins_starts_and_warm_starts_the_next_from_its_best() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path()).await;
    f.control
        .register_dataset(DatasetRecord {
            name: "digits".into(),
            directory: dir.path().display().to_string(),
            format: "imagefolder".into(),
            builtin: String::new(),
            url: String::new(),
            policy: RetrainPolicy::default(),
            job_yaml: JOB.into(),
            sweep: Some(RetrainSweep {
                yaml: SWEEP.into(),
                warm_start_top_k: 2,
                warm_max_trials: 3,
            }),
            created_at: SystemTime::now(),
            versions: Vec::new(),
            retrain: Default::default(),
        })
        .await
        .unwrap();
    let w = register(&f, "w");

    // Version 1 fires a sweep of 4 trials (nothing to warm-start from), pinned to it.
    scan(&f, &w, 1, 1000).await;
    let fired = wire_history(&f, 1).remove(0);
    assert_eq!(fired.outcome, Outcome::Fired as i32, "{}", fired.reason);
    assert!(fired.job_id.is_empty());
    assert_eq!((fired.sweep_trials, fired.warm_start_configs), (4, 0));
    let first = fired.sweep_id.clone();
    let jobs = trial_jobs(&f, &first);
    assert_eq!(jobs.len(), 4);
    assert!(jobs.iter().all(|j| pinned_root(&f, j) == root(1)));
    let dataset = f.control.lock().datasets["digits"].to_wire();
    assert_eq!(dataset.pending_retrain_sweep, first);

    // Version 2 before any trial started: the same sweep, every trial re-pinned.
    scan(&f, &w, 2, 2000).await;
    let coalesced = wire_history(&f, 1).remove(0);
    assert_eq!(coalesced.outcome, Outcome::Coalesced as i32);
    assert_eq!(coalesced.sweep_id, first);
    assert_eq!(trial_jobs(&f, &first), jobs, "no new trial jobs");
    assert!(jobs.iter().all(|j| pinned_root(&f, j) == root(2)));
    let sweep = f.control.sweep(&first).await.unwrap();
    assert_eq!(sweep.record.spec.base().dataset.version, Some(root(2)));

    // A trial's lease starts the retrain: no longer pending, the key taken.
    let g = register_with(&f, "g", DeviceKind::Cuda);
    let task = lease(&f, "g", &g).await;
    assert!(jobs.contains(&task.job_id));
    let book = f.control.lock().datasets["digits"].retrain.clone();
    assert!(book.pending.is_none());
    assert_eq!(book.started_keys.len(), 1);
    assert!(book.last_retrain_at.is_some());
    let again = f.control.retrain("digits", "2", "again").await.unwrap();
    assert_eq!(again.outcome, crate::records::DecisionOutcome::Skipped);

    // The trials report (lr of trial n gives objective n/10: trials 3 and 2 are the best).
    {
        let mut inner = f.control.lock();
        for t in inner.trials.get_mut(&first).unwrap() {
            t.objective = Some(f64::from(t.number) / 10.0);
            t.epochs = 1;
            t.state = TrialState::Succeeded;
        }
    }
    let best: Vec<_> = {
        let inner = f.control.lock();
        [3, 2]
            .map(|n| inner.trials[&first][n].params.clone())
            .to_vec()
    };
    f.control.cancel_sweep(&first, "test").await.unwrap();
    let book = f.control.lock().datasets["digits"].retrain.clone();
    let warm = book.warm_start.expect("kept for the next sweep");
    assert_eq!(
        (warm.sweep_id.as_str(), &warm.configs),
        (first.as_str(), &best)
    );
    assert!(
        book.started_keys.is_empty(),
        "a cancelled sweep gives its key back"
    );

    // The next retrain proposes those two first and runs 3 trials in all.
    let next = f
        .control
        .retrain("digits", "2", "after")
        .await
        .unwrap()
        .to_wire();
    assert_eq!(next.outcome, Outcome::Fired as i32, "{}", next.reason);
    assert_ne!(next.sweep_id, first);
    assert_eq!(
        (
            next.warm_start_from.as_str(),
            next.warm_start_configs,
            next.sweep_trials
        ),
        (first.as_str(), 2, 3)
    );
    let second = f.control.sweep(&next.sweep_id).await.unwrap();
    assert_eq!(second.record.warm_start_from, first);
    assert_eq!(second.record.retrain.as_ref().unwrap().dataset, "digits");
    let params: Vec<_> = second.trials.iter().map(|t| t.params.clone()).collect();
    assert_eq!(params.len(), 3);
    assert_eq!(params[..2], best[..]);
    let proposed: SweepSpec = (*second.record.spec).clone();
    assert_eq!(proposed.max_trials, Some(3));

    // Everything survives a restart.
    close(f).await;
    let f = open(dir.path()).await;
    let h = wire_history(&f, 10);
    assert_eq!(h[0].sweep_id, next.sweep_id);
    assert_eq!(h[0].warm_start_configs, 2);
    let reloaded = f.control.sweep(&next.sweep_id).await.unwrap();
    assert_eq!(reloaded.record.state, SweepState::Running);
    assert_eq!(reloaded.record.warm_start_from, first);
    close(f).await;
}
