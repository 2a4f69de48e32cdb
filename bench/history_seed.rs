//! The history the history benchmark starts from: the records a finished two-task training
//! job leaves (job, train and eval tasks, the model it trained), written straight into a store.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use trainfleet_coordinator::records::{
    self, AttemptRecord, GateRecord, JobKind, JobOutcome, JobRecord, JobState, ModelRecord,
    RunRecord, TaskMeta, TaskRecord, TaskRole,
};
use trainfleet_coordinator::scheduler::{Needs, Task, TaskState};
use trainfleet_core::job::JobSpec;
use trainfleet_core::kv::{KvStore, TxnOp};

/// The records of one finished training job, `i` seconds after `start`.
fn finished_job(template: &JobSpec, start: SystemTime, i: usize) -> Vec<TxnOp> {
    let created = start + Duration::from_secs(i as u64);
    let millis = created
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let id = format!("j-{millis:011x}-{:06x}", i & 0xff_ffff);
    let metrics = |e: u32| -> BTreeMap<String, f64> {
        [
            ("train_loss", 0.5 / f64::from(e)),
            ("val_loss", 0.6 / f64::from(e)),
            ("accuracy", 0.9 + 0.009 * f64::from(e) / 10.0),
            ("epoch_seconds", 3.25),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    };
    let attempt = |role, at| AttemptRecord {
        role,
        attempt: 1,
        worker_id: "worker-0".into(),
        resumed_from_epoch: 0,
        outcome: "succeeded".into(),
        started_at: at,
        finished_at: Some(at + Duration::from_secs(30)),
    };
    let run_uri = format!("file:///srv/artifacts/runs/{id}/attempt-1");
    let job = JobRecord {
        id: id.clone(),
        name: template.name.clone(),
        kind: JobKind::Train {
            spec: Box::new(template.clone()),
        },
        state: JobState::Succeeded,
        attempt: 1,
        worker_id: String::new(),
        epochs: (1..=10).map(|e| (e, metrics(e))).collect(),
        result: Some(JobOutcome {
            model_id: format!("m-{id}"),
            metrics: metrics(10),
            promoted: false,
            reasons: vec!["accuracy 0.9090 is not above the champion's 0.9950".into()],
            run_uri: run_uri.clone(),
            report_uri: format!("{run_uri}/report/index.html"),
            report_error: String::new(),
            mlflow_run_id: String::new(),
            tracking_error: String::new(),
        }),
        error: String::new(),
        created_at: created,
        started_at: Some(created),
        finished_at: Some(created + Duration::from_secs(60)),
        idempotency_key: String::new(),
        attempts: vec![
            attempt(TaskRole::Train, created),
            attempt(TaskRole::Eval, created + Duration::from_secs(30)),
        ],
        checkpoint: None,
        train_run: Some(run_uri.clone()),
        train_metrics: metrics(10),
        champion_id: "m-champion".into(),
        active_task: format!("{id}-eval"),
        eval_rounds: 1,
        scanned: None,
        retrain: None,
        owner: String::new(),
        sweep: None,
        run: Some(RunRecord {
            device: "cpu".into(),
            threads: 1,
            trainfleet_version: "0.1.0".into(),
            libtorch_version: "2.13.0".into(),
            dataset_root: "ab".repeat(32),
            dataset_version: 1,
            artifact_sha256: ["model.safetensors", "metrics.json", "model.json"]
                .into_iter()
                .map(|f| (f.to_owned(), "cd".repeat(32)))
                .collect(),
            run_uri: run_uri.clone(),
            load_seconds: 0.4,
            train_seconds: 30.0,
            worker_id: "worker-0".into(),
        }),
    };
    let model = ModelRecord {
        id: format!("m-{}", &id[2..]),
        dataset: "synth-digits".into(),
        dataset_version: "ab".repeat(32),
        job_id: id.clone(),
        parent_id: "m-champion".into(),
        config_hash: "ef".repeat(32),
        metrics: metrics(10),
        artifact_uri: format!("{run_uri}/model.safetensors"),
        artifact_sha256: "cd".repeat(32),
        run_uri: run_uri.clone(),
        gate: GateRecord {
            promoted: false,
            reasons: vec!["accuracy 0.9090 is not above the champion's 0.9950".into()],
            metric: "accuracy".into(),
            challenger_value: 0.909,
            champion_value: 0.995,
            champion_id: "m-champion".into(),
            mcnemar: None,
        },
        created_at: created + Duration::from_secs(60),
        labels: BTreeMap::new(),
        dataset_version_number: 1,
        eval_samples_uri: format!("{run_uri}/eval/samples.json"),
        report_uri: format!("{run_uri}/report/index.html"),
    };
    let mut ops = vec![
        TxnOp::Put(records::job_key(&id), records::encode(&job)),
        TxnOp::Put(records::model_key(&model.id), records::encode(&model)),
    ];
    for role in [TaskRole::Train, TaskRole::Eval] {
        let task_id = format!("{id}-{}", role.name());
        let task = TaskRecord {
            task: Task {
                id: task_id.clone(),
                job_id: id.clone(),
                needs: Needs {
                    slots: 1,
                    ..Default::default()
                },
                attempt: 1,
                max_attempts: 3,
                state: TaskState::Succeeded,
                enqueued_at: created,
                cancel_requested: false,
                history: Vec::new(),
            },
            meta: TaskMeta {
                role,
                challenger: run_uri.clone(),
                champion: "file:///srv/artifacts/runs/j-champion/attempt-1".into(),
                session: "s-0123456789abcdef".into(),
                leased_at: Some(created),
                pause_at: 0,
            },
        };
        ops.push(TxnOp::Put(
            records::task_key(&task_id),
            records::encode(&task),
        ));
    }
    ops
}

/// Writes `n` finished jobs into `store`, 100 jobs a transaction.
pub async fn seed(store: &dyn KvStore, n: usize) -> anyhow::Result<(f64, usize)> {
    let template = JobSpec::from_yaml(
        "name: nightly\ndataset: {builtin: synth-digits}\nmodel: {arch: simple_cnn}\n\
         training: {epochs: 10, batch_size: 64, learning_rate: 0.001, optimizer: adam, seed: 1}\n",
        "bench",
    )?;
    // One job a second up to an hour ago: with 100,000 that is the last 29 hours, inside the
    // default finished_age (7 days), so the count rule is the one that archives.
    let start = SystemTime::now() - Duration::from_secs(n as u64 + 3600);
    let mut bytes = 0;
    let began = Instant::now();
    let mut batch = Vec::new();
    for i in 0..n {
        let ops = finished_job(&template, start, i);
        bytes += ops
            .iter()
            .map(|op| match op {
                TxnOp::Put(k, v) => k.len() + v.len(),
                TxnOp::Delete(k) => k.len(),
            })
            .sum::<usize>();
        batch.push(ops);
        if batch.len() == 100 || i + 1 == n {
            store.apply_batch(std::mem::take(&mut batch)).await?;
        }
    }
    Ok((began.elapsed().as_secs_f64(), bytes))
}
