//! The control plane's unit tests and the fixture its modules' tests share.

use std::collections::BTreeMap;

use trainfleet_core::device::DeviceKind;
use trainfleet_core::kv::embedded::EmbeddedStore;

use super::*;
use crate::registry::Registration;
use trainfleet_proto::v1;

pub(crate) struct Fixture {
    pub(crate) control: Arc<Control>,
    pub(crate) registry: Arc<WorkerRegistry>,
    journal: tokio::task::JoinHandle<()>,
}

pub(crate) async fn open(dir: &std::path::Path) -> Fixture {
    let store = Arc::new(EmbeddedStore::open(&dir.join("state.redb")).unwrap());
    let artifacts = ArtifactStore::open(dir.join("artifacts").to_str().unwrap()).unwrap();
    let registry = Arc::new(WorkerRegistry::new(
        Duration::from_secs(10),
        Duration::from_secs(3600),
    ));
    let (control, journal) = Control::load(
        store,
        registry.clone(),
        artifacts,
        Duration::from_secs(10),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    Fixture {
        control,
        registry,
        journal,
    }
}

/// The jobs room through the wire form, as the services answer.
impl Fixture {
    pub(crate) async fn submit(&self, s: Submission, key: String) -> Result<v1::Job> {
        Ok(self.control.submit(s, key).await?.to_wire())
    }

    pub(crate) async fn get(&self, id: &str) -> Result<v1::Job> {
        Ok(self.control.get(id).await?.to_wire())
    }

    pub(crate) async fn list(
        &self,
        states: &[records::JobState],
        size: usize,
        token: &str,
    ) -> (Vec<v1::Job>, String) {
        let (page, next) = self.control.list(states, size, token).await.unwrap();
        (page.iter().map(records::JobView::to_wire).collect(), next)
    }

    /// Every job in memory (none archived), newest first, for checks that cannot await.
    pub(crate) fn list_live(&self) -> Vec<v1::Job> {
        let inner = self.control.lock();
        inner.jobs.values().rev().map(JobRecord::to_wire).collect()
    }

    pub(crate) async fn cancel(&self, id: &str, reason: &str) -> Result<v1::Job> {
        Ok(self.control.cancel(id, reason).await?.to_wire())
    }
}

/// Records model `model_id` of `job_id` (dataset "digits") with a run in the artifact store whose
/// weights verify, as an eval that passed would leave it.
pub(crate) async fn verified_model(f: &Fixture, model_id: &str, job_id: &str) {
    use trainfleet_core::artifacts::{FileEntry, MANIFEST, Manifest, sha256_hex};
    let store = f.control.artifacts().clone();
    let prefix = format!("runs/{job_id}/attempt-1");
    let weights = format!("weights of {model_id}").into_bytes();
    let entry = FileEntry {
        size: weights.len() as u64,
        sha256: sha256_hex(&weights),
    };
    store
        .put_bytes(&format!("{prefix}/model.safetensors"), weights)
        .await
        .unwrap();
    let manifest = Manifest {
        job_id: job_id.into(),
        attempt: 1,
        files: BTreeMap::from([("model.safetensors".to_owned(), entry)]),
        dataset_root: String::new(),
        code_version: String::new(),
        libtorch_version: String::new(),
    };
    store
        .put_bytes(
            &format!("{prefix}/{MANIFEST}"),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .await
        .unwrap();
    let record = records::ModelRecord {
        id: model_id.into(),
        dataset: "digits".into(),
        dataset_version: String::new(),
        job_id: job_id.into(),
        parent_id: String::new(),
        config_hash: String::new(),
        metrics: BTreeMap::new(),
        artifact_uri: String::new(),
        artifact_sha256: String::new(),
        run_uri: store.uri(&prefix),
        gate: Default::default(),
        created_at: SystemTime::now(),
        labels: BTreeMap::new(),
        dataset_version_number: 0,
        eval_samples_uri: String::new(),
        report_uri: String::new(),
    };
    let ack = f
        .control
        .journal
        .record(vec![trainfleet_core::kv::TxnOp::Put(
            records::model_key(model_id),
            records::encode(&record),
        )]);
    f.control.lock().models.insert(model_id.into(), record);
    ack.durable().await.unwrap();
}

pub(crate) async fn close(f: Fixture) {
    drop(f.control);
    f.journal.await.unwrap();
}

pub(crate) fn register(f: &Fixture, id: &str) -> String {
    register_with(f, id, DeviceKind::Cpu)
}

pub(crate) fn register_with(f: &Fixture, id: &str, kind: DeviceKind) -> String {
    let session = f
        .registry
        .register(Registration {
            worker_id: id.into(),
            host: "h".into(),
            devices: vec![Device {
                kind,
                index: 0,
                name: "device".into(),
                memory_bytes: 1 << 30,
                cores: 2,
            }],
            slots: 1,
            version: "0".into(),
            libtorch_version: String::new(),
            labels: BTreeMap::new(),
            peer: String::new(),
        })
        .session_id;
    f.control.worker_registered(id);
    session
}

fn sleep_job() -> Submission {
    Submission::Sleep {
        name: "nap".into(),
        duration: Duration::ZERO,
    }
}

#[tokio::test]
async fn a_lost_workers_task_moves_on_stale_reports_are_refused_and_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path()).await;
    let never = CancellationToken::new();
    let job = f.submit(sleep_job(), "key-1".into()).await.unwrap();
    let again = f.submit(sleep_job(), "key-1".into()).await.unwrap();
    assert_eq!(
        again.id, job.id,
        "the idempotency key returns the first job"
    );

    let s1 = register(&f, "w1");
    let first = f
        .control
        .poll("w1", &s1, 1, Duration::from_millis(10), &never)
        .await
        .unwrap()
        .expect("a queued task is handed out at once");
    assert_eq!((first.attempt, first.job_id.as_str()), (1, job.id.as_str()));
    assert_eq!(
        f.get(&job.id).await.unwrap().state,
        v1::JobState::Training as i32
    );

    // w1 goes silent; the sleep job allows one attempt, so it fails with the history.
    f.control.workers_lost(&["w1".to_owned()]);
    let failed = f.get(&job.id).await.unwrap();
    assert_eq!(failed.state, v1::JobState::Failed as i32);
    assert!(
        failed.error.contains("lost with worker w1"),
        "{}",
        failed.error
    );

    // Its late report is refused and changes nothing.
    let err = f
        .control
        .complete("w1", &first.id, 1, Report::Cancelled)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
    assert_eq!(f.get(&job.id).await.unwrap(), failed);

    // A second job completes normally on w2, whose poll was parked before it was queued.
    let s2 = register(&f, "w2");
    let parked = tokio::spawn({
        let control = f.control.clone();
        async move {
            control
                .poll(
                    "w2",
                    &s2,
                    1,
                    Duration::from_secs(30),
                    &CancellationToken::new(),
                )
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = f.submit(sleep_job(), String::new()).await.unwrap();
    let task = parked
        .await
        .unwrap()
        .unwrap()
        .expect("the parked poll got it");
    assert_eq!(task.job_id, second.id);
    f.control
        .complete(
            "w2",
            &task.id,
            task.attempt,
            Report::Success {
                metrics: BTreeMap::new(),
                artifacts: BTreeMap::new(),
                detail_json: String::new(),
            },
        )
        .await
        .unwrap();
    let done = f.get(&second.id).await.unwrap();
    assert_eq!(done.state, v1::JobState::Succeeded as i32);
    let (listed, next) = f.list(&[], 1, "").await;
    assert_eq!(listed[0].id, second.id, "newest first");
    assert_eq!(next, second.id);
    let (rest, _) = f.list(&[], 10, &next).await;
    assert_eq!(rest.iter().map(|j| &j.id).collect::<Vec<_>>(), [&job.id]);
    close(f).await;

    // A coordinator restarted on the same store knows both jobs, their attempts and workers.
    let f = open(dir.path()).await;
    assert_eq!(f.get(&job.id).await.unwrap(), failed);
    assert_eq!(f.get(&second.id).await.unwrap(), done);
    assert_eq!(f.registry.list(None).len(), 2);
    let again = f.submit(sleep_job(), "key-1".into()).await.unwrap();
    assert_eq!(again.id, job.id, "idempotency keys survive too");
    close(f).await;
}

#[tokio::test]
async fn cancel_takes_a_queued_job_at_once_and_refuses_a_finished_one() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path()).await;
    let job = f.submit(sleep_job(), String::new()).await.unwrap();
    let cancelled = f.cancel(&job.id, "changed my mind").await.unwrap();
    assert_eq!(cancelled.state, v1::JobState::Cancelled as i32);
    assert_eq!(cancelled.error, "cancelled: changed my mind");
    let err = f.cancel(&job.id, "").await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
    assert!(matches!(
        f.cancel("j-nope", "").await.unwrap_err(),
        Error::NotFound(_)
    ));
    let s = register(&f, "w");
    let nothing = f
        .control
        .poll(
            "w",
            &s,
            1,
            Duration::from_millis(20),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert!(
        nothing.is_none(),
        "a cancelled job's task is never handed out"
    );
    close(f).await;
}

#[tokio::test]
async fn a_train_result_fills_an_epoch_the_heartbeats_lost_and_keeps_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path()).await;
    let spec = trainfleet_core::job::JobSpec::from_yaml(
        "dataset: {builtin: synth-digits}\nmodel: {arch: simple_cnn}\ntraining: {epochs: 4}\n",
        "job",
    )
    .unwrap();
    let job = f
        .submit(Submission::Train(Box::new(spec)), String::new())
        .await
        .unwrap();
    let values = |v: f64| BTreeMap::from([("val_accuracy".to_owned(), v)]);
    let epochs: Vec<(u32, f64)> = {
        let mut inner = f.control.lock();
        // Epoch 2's heartbeat was acknowledged by a leader that died before its commit: the new
        // leader knows 1, 3 and 4, and the worker does not send 2 again.
        inner.jobs.get_mut(&job.id).unwrap().epochs =
            vec![(1, values(0.1)), (3, values(0.3)), (4, values(0.4))];
        let detail = serde_json::json!({"epochs": (1..=4).map(|n| serde_json::json!(
            {"epoch": n, "values": {"val_accuracy": f64::from(n) / 10.0}})).collect::<Vec<_>>()});
        inner.record_epochs(&job.id, &detail.to_string());
        inner.jobs[&job.id]
            .epochs
            .iter()
            .map(|(n, v)| (*n, v["val_accuracy"]))
            .collect()
    };
    assert_eq!(epochs, [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]);
    close(f).await;
}
