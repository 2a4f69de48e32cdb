//! The loop inside one coordinator, with the clock in the test's hand. Scan results are
//! written by the test as a worker would report them (the real scan has its own tests and
//! end-to-end tests); the retrain asks for a GPU so the CPU "worker" that runs the scans
//! leaves it queued until the test leases it with a GPU worker.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trainfleet_core::device::DeviceKind;
use trainfleet_core::policy::RetrainPolicy;
use trainfleet_proto::v1;

use super::super::tests::{Fixture, close, open, register, register_with};
use super::super::{Report, Submission};
use super::*;
use crate::records::DatasetRecord;

const JOB: &str = "name: digits\nmodel: {arch: simple_cnn}\nresources: {gpu: true}\n";

pub(super) fn root(n: u64) -> String {
    trainfleet_core::artifacts::sha256_hex(format!("version {n}").as_bytes())
}

async fn register_dataset(f: &Fixture, dir: &std::path::Path, policy: RetrainPolicy) {
    f.control
        .register_dataset(DatasetRecord {
            name: "digits".into(),
            directory: dir.display().to_string(),
            format: "imagefolder".into(),
            builtin: String::new(),
            url: String::new(),
            policy,
            job_yaml: JOB.into(),
            sweep: None,
            created_at: SystemTime::now(),
            versions: Vec::new(),
            retrain: Default::default(),
        })
        .await
        .unwrap();
}

/// Runs one scan job on the CPU worker `w`, reporting version `n` with `samples` files.
pub(super) async fn scan(f: &Fixture, session: &str, n: u64, samples: u64) {
    f.control
        .submit(
            Submission::Scan {
                dataset: "digits".into(),
                full: false,
            },
            String::new(),
        )
        .await
        .unwrap();
    let task = lease(f, "w", session).await;
    assert_eq!(
        task.kind,
        v1::TaskKind::Scan as i32,
        "the CPU worker never gets the retrain"
    );
    report_scan(f, &task, n, samples, &format!("file:///m/{n}.json")).await;
}

/// Leases the next task to worker `id` (session `session`) at once.
pub(super) async fn lease(f: &Fixture, id: &str, session: &str) -> v1::Task {
    f.control
        .poll(
            id,
            session,
            1,
            Duration::from_millis(10),
            &CancellationToken::new(),
        )
        .await
        .unwrap()
        .expect("a task to lease")
        .to_wire()
}

/// Completes scan `task` (held by worker "w") as a worker would: version `n` of `samples`
/// files, its manifest at `manifest_uri`.
async fn report_scan(f: &Fixture, task: &v1::Task, n: u64, samples: u64, manifest_uri: &str) {
    let detail = serde_json::json!({
        "root": root(n), "samples": samples, "by_class": {}, "by_split": {},
        "added": samples, "removed": 0, "changed": 0, "manifest_uri": manifest_uri,
    });
    f.control
        .complete(
            "w",
            &task.id,
            task.attempt,
            Report::Success {
                metrics: BTreeMap::new(),
                artifacts: BTreeMap::new(),
                detail_json: detail.to_string(),
            },
        )
        .await
        .unwrap();
}

/// Pretends `job_id`'s retrain on version `n` produced the champion (the real path, with
/// training and the gate, is tested end to end).
fn crown(f: &Fixture, job_id: &str, n: u64) {
    let mut inner = f.control.lock();
    let model = records::ModelRecord {
        id: format!("m-{n}"),
        dataset: "digits".into(),
        dataset_version: root(n),
        job_id: job_id.into(),
        parent_id: String::new(),
        config_hash: String::new(),
        metrics: BTreeMap::new(),
        artifact_uri: String::new(),
        artifact_sha256: String::new(),
        run_uri: String::new(),
        gate: Default::default(),
        created_at: SystemTime::now(),
        labels: BTreeMap::new(),
        dataset_version_number: n,
        eval_samples_uri: String::new(),
        report_uri: String::new(),
    };
    inner.models.insert(model.id.clone(), model);
    inner.set_champion("digits", &format!("m-{n}"), "test", &mut Vec::new());
}

fn outcomes(f: &Fixture) -> Vec<(String, i32)> {
    let mut h = wire_history(f, 100);
    h.reverse();
    h.into_iter().map(|d| (d.trigger, d.outcome)).collect()
}

use v1::retrain_decision::Outcome;

/// The dataset's newest `n` decisions as the wire shows them.
pub(super) fn wire_history(f: &Fixture, n: usize) -> Vec<v1::RetrainDecision> {
    let h = f.control.history("digits", n).unwrap();
    h.iter().map(|d| d.to_wire()).collect()
}

fn retrain_jobs(f: &Fixture) -> Vec<v1::Job> {
    f.list_live()
        .into_iter()
        .filter(|j| j.spec.is_some())
        .collect()
}

#[tokio::test]
async fn a_burst_of_five_versions_makes_one_retrain_on_the_newest_and_a_repeat_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path()).await;
    register_dataset(&f, dir.path(), RetrainPolicy::default()).await;
    let w = register(&f, "w");
    for n in 1..=5 {
        scan(&f, &w, n, 1000 + 100 * n).await;
    }
    assert_eq!(
        outcomes(&f),
        [
            ("scan".into(), Outcome::Fired as i32),
            ("scan".into(), Outcome::Coalesced as i32),
            ("scan".into(), Outcome::Coalesced as i32),
            ("scan".into(), Outcome::Coalesced as i32),
            ("scan".into(), Outcome::Coalesced as i32),
        ]
    );
    let jobs = retrain_jobs(&f);
    assert_eq!(jobs.len(), 1, "five versions, one retrain");
    let pinned = JobSpec::from_yaml(&jobs[0].spec_yaml, "job").unwrap();
    assert_eq!(
        pinned.dataset.version.as_deref(),
        Some(root(5).as_str()),
        "newest wins"
    );
    assert_eq!(pinned.dataset.manifest.as_deref(), Some("file:///m/5.json"));
    assert_eq!(pinned.dataset.name.as_deref(), Some("digits"));

    // A GPU worker starts it; asking again for the same version trains nothing more.
    let g = register_with(&f, "g", DeviceKind::Cuda);
    let task = lease(&f, "g", &g).await;
    assert_eq!(task.job_id, jobs[0].id);
    let again = f
        .control
        .retrain("digits", "5", "test")
        .await
        .unwrap()
        .to_wire();
    assert_eq!(again.outcome, Outcome::Skipped as i32);
    assert!(again.reason.contains("idempotent"), "{}", again.reason);
    assert_eq!(retrain_jobs(&f).len(), 1);

    // An older version by hand is another retrain (different data).
    let older = f
        .control
        .retrain("digits", "4", "compare")
        .await
        .unwrap()
        .to_wire();
    assert_eq!(older.outcome, Outcome::Fired as i32, "{}", older.reason);
    assert!(older.reason.contains("by hand") && older.reason.contains("asked: compare"));
    assert_eq!(retrain_jobs(&f).len(), 2);

    // Everything survives a restart: the history and the book.
    close(f).await;
    let f = open(dir.path()).await;
    assert_eq!(outcomes(&f).len(), 7);
    let book = f.control.lock().datasets["digits"].retrain.clone();
    assert_eq!(book.started_keys.len(), 1);
    assert!(book.pending.is_some(), "the manual retrain waits");
    close(f).await;
}

#[tokio::test]
async fn min_interval_defers_and_the_ticker_fires_when_it_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path()).await;
    register_dataset(
        &f,
        dir.path(),
        RetrainPolicy {
            min_interval: Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .await;
    let w = register(&f, "w");
    scan(&f, &w, 1, 1000).await;
    // Start the first retrain now, so the next one must wait an hour.
    let g = register_with(&f, "g", DeviceKind::Cuda);
    lease(&f, "g", &g).await;
    let started = f.control.lock().datasets["digits"]
        .retrain
        .last_retrain_at
        .unwrap();
    scan(&f, &w, 2, 2000).await;
    let last = wire_history(&f, 1).remove(0);
    assert_eq!(last.outcome, Outcome::Deferred as i32, "{}", last.reason);
    let until = started + Duration::from_secs(3600);
    assert_eq!(last.defer_until, Some(crate::convert::timestamp(until)));

    f.control
        .tick(until - Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(retrain_jobs(&f).len(), 1, "not a second early");
    f.control.tick(until).await.unwrap();
    let last = wire_history(&f, 1).remove(0);
    assert_eq!(
        (last.trigger.as_str(), last.outcome),
        ("deferred", Outcome::Fired as i32)
    );
    assert_eq!(retrain_jobs(&f).len(), 2);
    f.control
        .tick(until + Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        retrain_jobs(&f).len(),
        2,
        "a deferred decision is taken once"
    );
    close(f).await;
}

#[tokio::test]
async fn a_schedule_scans_at_its_time_in_its_time_zone() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path()).await;
    register_dataset(
        &f,
        dir.path(),
        RetrainPolicy {
            schedule: Some("0 0 * * *".into()),
            time_zone: Some("Europe/Paris".into()),
            ..Default::default()
        },
    )
    .await;
    // Paris midnight on 2026-01-15 is 23:00 UTC; pretend the last one was the night before.
    let midnight = SystemTime::UNIX_EPOCH + Duration::from_secs(1_768_518_000);
    f.control
        .lock()
        .datasets
        .get_mut("digits")
        .unwrap()
        .retrain
        .next_scan_at = Some(midnight);
    let scans = |f: &Fixture| {
        f.list_live()
            .into_iter()
            .filter(|j| j.name == "scan digits")
            .count()
    };
    f.control
        .tick(midnight - Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(scans(&f), 0, "a second before midnight");
    f.control.tick(midnight).await.unwrap();
    assert_eq!(scans(&f), 1, "at midnight, Paris time");
    let next = f.control.lock().datasets["digits"].retrain.next_scan_at;
    assert_eq!(next, Some(midnight + Duration::from_secs(24 * 3600)));
    f.control
        .tick(midnight + Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(scans(&f), 1, "once");

    // The scheduled scan finds a new version: the decision says it came from the schedule.
    let w = register(&f, "w");
    let task = lease(&f, "w", &w).await;
    report_scan(&f, &task, 1, 10, "").await;
    assert_eq!(outcomes(&f), [("schedule".into(), Outcome::Fired as i32)]);
    close(f).await;
}

#[tokio::test]
async fn growth_is_measured_from_the_champions_version_and_a_failed_retrain_frees_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path()).await;
    register_dataset(
        &f,
        dir.path(),
        RetrainPolicy {
            on_growth_pct: Some(10.0),
            on_content_change: false,
            ..Default::default()
        },
    )
    .await;
    let w = register(&f, "w");
    scan(&f, &w, 1, 1000).await;
    let g = register_with(&f, "g", DeviceKind::Cuda);
    let first = lease(&f, "g", &g).await;
    crown(&f, &first.job_id, 1);
    scan(&f, &w, 2, 1099).await;
    let d = wire_history(&f, 1).remove(0);
    assert_eq!(d.outcome, Outcome::Skipped as i32);
    assert!(
        d.reason.contains("9.9%") && d.reason.contains("1000 → 1099"),
        "{}",
        d.reason
    );
    scan(&f, &w, 3, 1100).await;
    let d = wire_history(&f, 1).remove(0);
    assert_eq!(d.outcome, Outcome::Fired as i32, "{}", d.reason);
    assert!(d.reason.contains("10.0%"), "{}", d.reason);

    // The retrain fails on its worker: the key is given back and the version can be retried.
    let task = lease(&f, "g", &g).await;
    assert_eq!(task.job_id, d.job_id);
    f.control
        .complete(
            "g",
            &task.id,
            1,
            Report::Failure {
                reason: "refusing to train on drifted data".into(),
                permanent: true,
            },
        )
        .await
        .unwrap();
    let retry = f
        .control
        .retrain("digits", "", "after fixing the data")
        .await
        .unwrap()
        .to_wire();
    assert_eq!(retry.outcome, Outcome::Fired as i32, "{}", retry.reason);
    close(f).await;
}

#[tokio::test]
async fn a_job_naming_a_registered_dataset_is_pinned_to_the_version_it_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path()).await;
    register_dataset(&f, dir.path(), RetrainPolicy::default()).await;
    let by_name = |version: &str| {
        let v = if version.is_empty() {
            String::new()
        } else {
            format!(", version: \"{version}\"")
        };
        Submission::Train(Box::new(
            JobSpec::from_yaml(
                &format!("model: {{arch: simple_cnn}}\ndataset: {{name: digits{v}}}\n"),
                "job",
            )
            .unwrap(),
        ))
    };
    let err = f
        .control
        .submit(by_name(""), String::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::FailedPrecondition(ref m) if m.contains("scan it first")),
        "{err}"
    );
    let w = register(&f, "w");
    scan(&f, &w, 1, 10).await;
    scan(&f, &w, 2, 20).await;
    let spec = |job: &v1::Job| JobSpec::from_yaml(&job.spec_yaml, "job").unwrap();
    let latest = f.submit(by_name(""), String::new()).await.unwrap();
    let latest = spec(&latest);
    assert_eq!(latest.dataset.version.as_deref(), Some(root(2).as_str()));
    assert_eq!(latest.dataset.path.as_deref(), Some(dir.path()));
    assert_eq!(latest.dataset.manifest.as_deref(), Some("file:///m/2.json"));
    let first = f.submit(by_name("1"), String::new()).await.unwrap();
    assert_eq!(
        spec(&first).dataset.version.as_deref(),
        Some(root(1).as_str())
    );
    let err = f
        .control
        .submit(by_name("9"), String::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NotFound(ref m) if m.contains("no version \"9\"")),
        "{err}"
    );
    let other = Submission::Train(Box::new(
        JobSpec::from_yaml("model: {arch: simple_cnn}\ndataset: {name: cats}\n", "job").unwrap(),
    ));
    let err = f.submit(other, String::new()).await.unwrap_err();
    assert!(
        matches!(err, Error::NotFound(ref m) if m.contains("not registered")),
        "{err}"
    );
    close(f).await;
}

#[tokio::test]
async fn a_relabel_with_the_same_count_fires_the_content_rule() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path()).await;
    register_dataset(&f, dir.path(), RetrainPolicy::default()).await;
    let w = register(&f, "w");
    scan(&f, &w, 1, 500).await;
    let g = register_with(&f, "g", DeviceKind::Cuda);
    let first = lease(&f, "g", &g).await;
    crown(&f, &first.job_id, 1);
    // Same 500 files, one relabelled: another root, the same count.
    scan(&f, &w, 2, 500).await;
    let d = wire_history(&f, 1).remove(0);
    assert_eq!(d.outcome, Outcome::Fired as i32, "{}", d.reason);
    assert!(
        d.reason
            .contains("content changed with the same 500 samples"),
        "{}",
        d.reason
    );
    close(f).await;
}

#[tokio::test]
async fn manual_retrains_need_a_version_and_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path()).await;
    register_dataset(&f, dir.path(), RetrainPolicy::default()).await;
    let err = f.control.retrain("digits", "", "").await.unwrap_err();
    assert!(
        matches!(err, Error::FailedPrecondition(ref m) if m.contains("scan it first")),
        "{err}"
    );
    let err = f.control.retrain("nope", "", "").await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    let w = register(&f, "w");
    scan(&f, &w, 1, 10).await;
    let err = f.control.retrain("digits", "7", "").await.unwrap_err();
    assert!(
        matches!(err, Error::NotFound(ref m) if m.contains("\"7\"")),
        "{err}"
    );
    close(f).await;
}
