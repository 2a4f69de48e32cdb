//! Running what the coordinator leases: train (with checkpoints uploaded every epoch and resume
//! from a requeued attempt's checkpoint), eval (challenger and champion on the same split) and
//! sleep (benchmarks and smoke checks).
//!
//! libtorch work runs on tokio's blocking pool; progress goes into a [`Running`] record that the
//! heartbeat loop reads, and cancellation comes back through its flags, checked every batch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trainfleet_core::artifacts::{self, ArtifactStore, CHECKPOINT, FileEntry, MANIFEST, Manifest};
use trainfleet_core::job::JobSpec;
use trainfleet_proto::v1;

use crate::data::DataSettings;
use crate::error::Error;
use crate::job;
use crate::train::{Event, RunOptions};

/// What a task needs besides itself.
#[derive(Debug)]
pub struct Context {
    /// Dataset cache and downloader.
    pub data: DataSettings,
    /// Local scratch: runs in progress and downloaded models.
    pub work_dir: PathBuf,
    /// Where results go.
    pub artifacts: ArtifactStore,
    /// Where a job may read data from (the data cache always).
    pub roots: trainfleet_core::data_roots::DataRoots,
}

/// Progress of a running task, as the next heartbeat will report it.
#[derive(Debug, Default)]
pub struct Progress {
    /// Current epoch (1-based) and total.
    pub epoch: u32,
    /// See `epoch`.
    pub total_epochs: u32,
    /// Batches done and per epoch.
    pub batch: u32,
    /// See `batch`.
    pub total_batches: u32,
    /// Recent throughput.
    pub images_per_sec: f64,
    /// Epochs finished and not yet reported.
    pub unreported: Vec<v1::EpochMetrics>,
    /// Newest checkpoint uploaded, and the epoch it completed.
    pub checkpoint: String,
    /// See `checkpoint`.
    pub checkpoint_epoch: u32,
}

/// A task this worker runs.
#[derive(Debug)]
pub struct Running {
    /// The task.
    pub task_id: String,
    /// Its attempt.
    pub attempt: u32,
    /// Progress for heartbeats.
    pub progress: Mutex<Progress>,
    /// Stop within one batch (a CANCEL directive, or the worker stopping).
    pub cancel: AtomicBool,
    /// The coordinator gave the task to someone else, or the worker is stopping: stop and do
    /// not report.
    pub abandoned: AtomicBool,
    /// It ended and only its report is pending.
    pub ended: AtomicBool,
}

impl Running {
    /// A record for a newly leased task.
    pub fn new(task: &v1::Task) -> Self {
        Self {
            task_id: task.id.clone(),
            attempt: task.attempt,
            progress: Mutex::new(Progress::default()),
            cancel: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        }
    }

    pub(crate) fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The heartbeat entry for this task; takes the unreported epochs (give them back with
    /// [`Running::unreport`] if the heartbeat fails).
    pub fn report(&self) -> v1::TaskProgress {
        let mut p = self.progress();
        v1::TaskProgress {
            task_id: self.task_id.clone(),
            attempt: self.attempt,
            epoch: p.epoch,
            total_epochs: p.total_epochs,
            batch: p.batch,
            total_batches: p.total_batches,
            images_per_sec: p.images_per_sec,
            finished_epochs: std::mem::take(&mut p.unreported),
            checkpoint: p.checkpoint.clone(),
            checkpoint_epoch: p.checkpoint_epoch,
        }
    }

    /// Puts back epochs a failed heartbeat did not deliver.
    pub fn unreport(&self, mut epochs: Vec<v1::EpochMetrics>) {
        let mut p = self.progress();
        epochs.append(&mut p.unreported);
        p.unreported = epochs;
    }
}

/// How a task ended.
#[derive(Debug)]
pub enum Finished {
    /// Done, with its result.
    Success(v1::TaskResult),
    /// Failed; `permanent` when a retry cannot help.
    Failure {
        /// Why.
        reason: String,
        /// See above.
        permanent: bool,
    },
    /// Stopped by a cancel directive.
    Cancelled,
    /// A train task stopped at its `pause_at_epoch` (an ASHA rung), checkpoint uploaded.
    Paused(v1::TaskPaused),
}

impl Finished {
    fn from_error(err: Error) -> Self {
        match err {
            Error::Cancelled => Finished::Cancelled,
            other => Finished::Failure {
                permanent: is_permanent(&other),
                reason: other.to_string(),
            },
        }
    }
}

/// Whether another attempt cannot help.
fn is_permanent(err: &Error) -> bool {
    match err {
        // Artifact I/O is transient from a task's point of view: another attempt may work.
        Error::Spec(trainfleet_core::Error::Artifact { .. }) => false,
        Error::Spec(_)
        | Error::Drift { .. }
        | Error::Unsupported(_)
        | Error::Corrupt { .. }
        | Error::Checksum { .. } => true,
        _ => false,
    }
}

/// Runs `task` to its end.
pub async fn execute(task: v1::Task, running: Arc<Running>, ctx: Arc<Context>) -> Finished {
    let kind = v1::TaskKind::try_from(task.kind).unwrap_or(v1::TaskKind::Unspecified);
    let result = match kind {
        v1::TaskKind::Sleep => sleep(&task, &running).await,
        v1::TaskKind::Train => train(task, running, ctx).await,
        v1::TaskKind::Eval => eval(task, ctx).await,
        v1::TaskKind::Scan => scan(task, ctx).await,
        other => Err(Error::Unsupported(format!(
            "this worker cannot run {} tasks",
            other.as_str_name()
        ))),
    };
    result.unwrap_or_else(Finished::from_error)
}

async fn sleep(task: &v1::Task, running: &Running) -> crate::Result<Finished> {
    let total = task
        .sleep
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default();
    let until = tokio::time::Instant::now() + total;
    while tokio::time::Instant::now() < until {
        if running.cancel.load(Ordering::Relaxed) {
            return Ok(Finished::Cancelled);
        }
        let step = (until - tokio::time::Instant::now()).min(Duration::from_millis(50));
        tokio::time::sleep(step).await;
    }
    Ok(Finished::Success(v1::TaskResult::default()))
}

/// Puts the manifest of the dataset version a job pins into the data cache (filed under its
/// root, checked to be that version), where the loader reads the file list from.
async fn fetch_pinned_manifest(ctx: &Context, spec: &JobSpec) -> crate::Result<()> {
    let (Some(version), Some(uri)) = (&spec.dataset.version, &spec.dataset.manifest) else {
        return Ok(());
    };
    let cache_dir = spec.dataset.cache_dir.as_deref().unwrap_or(&ctx.data.dir);
    if crate::data::imagefolder::cached_manifest(cache_dir, version)?.is_some() {
        return Ok(());
    }
    let bytes = ctx.artifacts.get_bytes(&ctx.artifacts.key_of(uri)?).await?;
    let manifest: trainfleet_core::manifest::Manifest =
        serde_json::from_slice(&bytes).map_err(|e| Error::Drift {
            path: uri.clone(),
            message: format!("the pinned version's manifest is not readable: {e}"),
        })?;
    manifest.check_root(version)?;
    let path = crate::data::imagefolder::manifest_cache_path(cache_dir, version);
    let parent = path.parent().expect("under the cache");
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    // Written under a temporary name and renamed: a reader never sees half a manifest.
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    Ok(())
}

/// Opens a dataset's object-store prefix. A `file://` prefix must exist (opening would create
/// it, and an empty dataset is not what a vanished directory should look like).
fn open_source(url: &str) -> crate::Result<ArtifactStore> {
    if let Some(path) = url.strip_prefix("file://")
        && !Path::new(path).is_dir()
    {
        return Err(Error::Spec(trainfleet_core::Error::Dataset {
            path: url.to_owned(),
            message: "cannot scan: not a directory".into(),
        }));
    }
    Ok(ArtifactStore::open(url)?)
}

/// Copies the pinned version of an object-store image folder into the data cache, every file
/// checked against the manifest's sha256 (files already there and intact are kept).
async fn copy_remote_version(ctx: &Context, spec: &JobSpec) -> crate::Result<()> {
    let (Some(url), Some(version)) = (&spec.dataset.url, &spec.dataset.version) else {
        return Ok(());
    };
    let cache_dir = spec.dataset.cache_dir.as_deref().unwrap_or(&ctx.data.dir);
    let manifest =
        crate::data::imagefolder::cached_manifest(cache_dir, version)?.ok_or_else(|| {
            Error::Drift {
                path: url.clone(),
                message: format!("no manifest of version {} to copy it by", &version[..12]),
            }
        })?;
    let store = open_source(url)?;
    let dir = crate::data::remote_copy_dir(cache_dir, version);
    let mut copied = 0;
    for file in &manifest.files {
        let local = dir.join(&file.path);
        if let Ok(bytes) = std::fs::read(&local)
            && trainfleet_core::manifest::sha256_hex(&bytes) == file.sha256
        {
            continue;
        }
        let bytes = store
            .get_bytes(&file.path)
            .await
            .map_err(|e| Error::Drift {
                path: store.uri(&file.path),
                message: format!(
                    "part of version {} but cannot be read now: {e}",
                    &version[..12]
                ),
            })?;
        if trainfleet_core::manifest::sha256_hex(&bytes) != file.sha256 {
            return Err(Error::Drift {
                path: store.uri(&file.path),
                message: format!("its content changed since version {}", &version[..12]),
            });
        }
        let parent = local.parent().expect("under the copy");
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let tmp = local.with_extension("tmp");
        std::fs::write(&tmp, &bytes).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &local).map_err(|e| Error::io(&local, e))?;
        copied += 1;
    }
    tracing::info!(%url, version = %&version[..12], copied, files = manifest.files.len(), "object-store version copied");
    Ok(())
}

fn run_dir(ctx: &Context, task: &v1::Task) -> PathBuf {
    ctx.work_dir
        .join("runs")
        .join(&task.job_id)
        .join(format!("attempt-{}", task.attempt))
}

async fn train(
    task: v1::Task,
    running: Arc<Running>,
    ctx: Arc<Context>,
) -> crate::Result<Finished> {
    let spec = JobSpec::from_yaml(&task.spec_yaml, "task spec")?;
    crate::local_paths::check(&spec, &ctx.roots)?;
    fetch_pinned_manifest(&ctx, &spec).await?;
    copy_remote_version(&ctx, &spec).await?;
    let dir = run_dir(&ctx, &task);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let prefix = artifacts::run_prefix(&task.job_id, task.attempt);
    let resume = !task.resume_from.is_empty();
    if resume {
        let key = ctx.artifacts.key_of(&task.resume_from)?;
        ctx.artifacts.get_file(&key, &dir.join(CHECKPOINT)).await?;
        tracing::info!(
            task_id = %task.id, attempt = task.attempt, from_epoch = task.resume_epoch,
            "resuming from the previous attempt's checkpoint"
        );
    }
    let handle = tokio::runtime::Handle::current();
    // MLflow sees the epochs as they end; the eval records the complete run either way.
    let live = spec
        .tracking
        .mlflow_uri
        .as_deref()
        .map(|uri| crate::tracking::Live::start(uri, &task.job_id, &spec));
    let (trained, epochs) = {
        let (ctx, running, dir, prefix, live) = (
            ctx.clone(),
            running.clone(),
            dir.clone(),
            prefix.clone(),
            live.clone(),
        );
        let pause_at = task.pause_at_epoch;
        tokio::task::spawn_blocking(move || {
            // Abandoning also sets `cancel` (see the agent), so one flag covers both.
            let options = RunOptions {
                resume,
                cancel: Some(&running.cancel),
                stop_after_epoch: pause_at,
                report: false,
            };
            let mut epochs = Vec::new();
            let mut on_event = |event: &Event<'_>| {
                if let Event::Epoch(report) = event {
                    if let Some(live) = &live {
                        live.epoch(report);
                    }
                    epochs.push(v1::EpochMetrics {
                        epoch: report.epoch,
                        values: epoch_values(report).into_iter().collect(),
                    });
                }
                on_train_event(event, &running, &ctx, &dir, &prefix, &handle);
            };
            let trained = job::run(&spec, &ctx.data, &dir, &options, &mut on_event);
            (trained, epochs)
        })
        .await
        .map_err(|e| Error::Unsupported(format!("the training thread failed: {e}")))?
    };
    // Stopped at its pause epoch (not by a cancel): report the rung's checkpoint.
    if task.pause_at_epoch > 0
        && matches!(trained, Err(Error::Cancelled))
        && !running.cancel.load(Ordering::Relaxed)
    {
        return crate::rung::paused(&task, &running, prefix, epochs);
    }
    let trained = match trained {
        Ok(trained) => trained,
        Err(e) => {
            // The MLflow run ends with the job: cancelled, or failed with no attempt to follow.
            // A task handed to another worker, or a failure worth a retry, leaves it running.
            if let Some(live) = &live
                && !running.abandoned.load(Ordering::Relaxed)
            {
                match &e {
                    Error::Cancelled => live.end("KILLED"),
                    e if is_permanent(e) => live.end("FAILED"),
                    _ => {}
                }
            }
            return Err(e);
        }
    };
    let mut files = BTreeMap::new();
    for name in [
        crate::artifacts::MODEL_WEIGHTS,
        crate::artifacts::MODEL_CARD,
        crate::artifacts::METRICS,
        crate::artifacts::CONFIG,
        CHECKPOINT,
    ] {
        let path = dir.join(name);
        if path.exists() {
            let (_, entry) = ctx
                .artifacts
                .put_file(&format!("{prefix}/{name}"), &path)
                .await?;
            files.insert(name.to_owned(), entry);
        }
    }
    let manifest = Manifest {
        job_id: task.job_id.clone(),
        attempt: task.attempt,
        files,
        dataset_root: trained.card.dataset.root_sha256.clone(),
        code_version: trainfleet_core::VERSION.to_owned(),
        libtorch_version: crate::LIBTORCH_VERSION.to_owned(),
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest).expect("manifests serialise");
    ctx.artifacts
        .put_bytes(&format!("{prefix}/{MANIFEST}"), manifest_json)
        .await?;
    // Everything is in the artifact store now; the local copy would only double the disk used.
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the local run directory");
    }
    let test = &trained.outcome.test;
    let mut metrics = BTreeMap::from([
        ("accuracy".to_owned(), test.accuracy),
        ("loss".to_owned(), test.loss),
        ("macro_f1".to_owned(), test.macro_f1),
        ("epochs".to_owned(), trained.outcome.epochs.len() as f64),
    ]);
    if let Some(from) = trained.outcome.resumed_from {
        metrics.insert("resumed_from_epoch".to_owned(), from.into());
    }
    // Every epoch, also those the heartbeats have not carried yet (a short last epoch ends
    // between two beats) and those before a resume.
    let epochs: Vec<_> = trained
        .outcome
        .epochs
        .iter()
        .map(|e| serde_json::json!({"epoch": e.epoch, "values": epoch_values(e)}))
        .collect();
    let detail = serde_json::json!({
        "epochs": epochs,
        "kept_epoch": trained.outcome.kept_epoch,
        "stopped_early": trained.outcome.stopped_early,
        "resumed_from": trained.outcome.resumed_from,
        "dataset_root": manifest.dataset_root,
        "system": {
            "device": trained.card.training.device,
            "threads": trained.card.training.threads,
        },
        "load_seconds": trained.load_seconds,
        "train_seconds": trained.outcome.epochs.iter().map(|e| e.train_seconds).sum::<f64>(),
    });
    Ok(Finished::Success(v1::TaskResult {
        metrics: metrics.into_iter().collect(),
        artifacts: [
            ("run".to_owned(), ctx.artifacts.uri(&prefix)),
            (
                "model".to_owned(),
                ctx.artifacts
                    .uri(&format!("{prefix}/{}", crate::artifacts::MODEL_WEIGHTS)),
            ),
            (
                "manifest".to_owned(),
                ctx.artifacts.uri(&format!("{prefix}/{MANIFEST}")),
            ),
        ]
        .into_iter()
        .collect(),
        detail_json: detail.to_string(),
    }))
}

fn on_train_event(
    event: &Event<'_>,
    running: &Running,
    ctx: &Context,
    dir: &Path,
    prefix: &str,
    handle: &tokio::runtime::Handle,
) {
    match event {
        Event::Resumed { epoch } => running.progress().epoch = *epoch,
        Event::EpochStarted {
            epoch,
            epochs,
            batches,
        } => {
            let mut p = running.progress();
            p.epoch = *epoch;
            p.total_epochs = *epochs;
            p.batch = 0;
            p.total_batches = *batches as u32;
        }
        Event::Batch {
            batch,
            images_per_sec,
            ..
        } => {
            let mut p = running.progress();
            p.batch = *batch as u32;
            p.images_per_sec = *images_per_sec;
        }
        Event::Epoch(report) => {
            let telemetry = crate::telemetry::get();
            telemetry.images_per_second.set(report.images_per_sec);
            telemetry.epoch_seconds.observe(report.train_seconds);
            let values = epoch_values(report);
            // The checkpoint of this epoch is on disk: publish it so that another worker can
            // resume from here if this one dies.
            let key = format!("{prefix}/{CHECKPOINT}");
            let uploaded: Result<(String, FileEntry), _> =
                handle.block_on(ctx.artifacts.put_file(&key, &dir.join(CHECKPOINT)));
            let mut p = running.progress();
            p.unreported.push(v1::EpochMetrics {
                epoch: report.epoch,
                values: values.into_iter().collect(),
            });
            match uploaded {
                Ok((uri, _)) => {
                    p.checkpoint = uri;
                    p.checkpoint_epoch = report.epoch;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "checkpoint upload failed; will retry next epoch")
                }
            }
        }
    }
}

/// An epoch's metrics by their wire names.
fn epoch_values(report: &crate::train::EpochReport) -> BTreeMap<String, f64> {
    let mut values = BTreeMap::from([
        ("train_loss".to_owned(), report.train_loss),
        ("train_accuracy".to_owned(), report.train_accuracy),
        ("learning_rate".to_owned(), report.learning_rate),
        ("images_per_sec".to_owned(), report.images_per_sec),
    ]);
    if let Some(v) = report.val_loss {
        values.insert("val_loss".to_owned(), v);
    }
    if let Some(v) = report.val_accuracy {
        values.insert("val_accuracy".to_owned(), v);
    }
    values
}

async fn eval(task: v1::Task, ctx: Arc<Context>) -> crate::Result<Finished> {
    let inputs = task.eval.clone().unwrap_or_default();
    let base = ctx.work_dir.join("eval").join(&task.id);
    let fetch = |uri: String, to: PathBuf| {
        let ctx = ctx.clone();
        async move {
            let prefix = ctx.artifacts.key_of(&uri)?;
            for name in [
                crate::artifacts::MODEL_WEIGHTS,
                crate::artifacts::MODEL_CARD,
                crate::artifacts::CONFIG,
            ] {
                ctx.artifacts
                    .get_file(&format!("{prefix}/{name}"), &to.join(name))
                    .await?;
            }
            // The epochs, for the report only: a run without them still gets evaluated.
            let metrics = format!("{prefix}/{}", crate::artifacts::METRICS);
            if let Err(e) = ctx
                .artifacts
                .get_file(&metrics, &to.join(crate::artifacts::METRICS))
                .await
            {
                tracing::warn!(error = %e, "the run's metrics.json is not readable; the report will lack its curves");
            }
            Ok::<PathBuf, Error>(to)
        }
    };
    let challenger = fetch(inputs.challenger.clone(), base.join("challenger")).await?;
    let spec = JobSpec::from_file(&challenger.join(crate::artifacts::CONFIG))?;
    crate::local_paths::check(&spec, &ctx.roots)?;
    fetch_pinned_manifest(&ctx, &spec).await?;
    copy_remote_version(&ctx, &spec).await?;
    let champion = match inputs.champion.as_str() {
        "" => None,
        uri => Some(fetch(uri.to_owned(), base.join("champion")).await?),
    };
    let data = ctx.data.clone();
    let report_dir = base.join("report");
    let challenger_dir = challenger.clone();
    let tracking_spec = spec.clone();
    let (scores, report) = {
        let (inputs, task, report_dir) = (inputs.clone(), task.clone(), report_dir.clone());
        tokio::task::spawn_blocking(move || {
            let scores = job::evaluate_pair(&challenger, champion.as_deref(), &data)?;
            // A report that cannot be made is logged and recorded, never an eval failure.
            let report = write_report(&task, &inputs, &challenger, &spec, &scores, &report_dir);
            Ok::<_, Error>((scores, report))
        })
        .await
        .map_err(|e| Error::Unsupported(format!("the eval thread failed: {e}")))??
    };
    let report_prefix = format!("evals/{}/attempt-{}/report", task.id, task.attempt);
    let report_files = report.as_ref().ok().map(|w| w.files.clone());
    let report = match report {
        Ok(written) => publish_report(&ctx, &report_prefix, &written).await,
        Err(e) => Err(e),
    };
    let tracked = match tracking_spec.tracking.mlflow_uri.clone() {
        None => None,
        Some(uri) => {
            let gate = crate::report::build::decision(&tracking_spec, &inputs, &scores);
            let record = TrackInputs {
                job_id: task.job_id.clone(),
                spec: tracking_spec,
                challenger_dir,
                report_dir,
                report_files: report_files.filter(|_| report.is_ok()).unwrap_or_default(),
                report_uri: report.as_ref().ok().cloned(),
                run_uri: inputs.challenger.clone(),
                dataset_version: inputs.dataset_version.as_ref().map_or(0, |v| v.number),
                challenger: scores.challenger.clone(),
                champion: scores.champion.clone(),
                gate,
            };
            let outcome = tokio::task::spawn_blocking(move || track(&uri, &record))
                .await
                .unwrap_or_else(|e| Err(format!("the tracking thread failed: {e}")));
            Some(outcome)
        }
    };
    let _ = std::fs::remove_dir_all(&base);
    // Which samples were scored, and how each model did on each: the proof that both models
    // saw the same samples, and what a report needs for its misclassified grid.
    let samples = serde_json::json!({
        "dataset_root": scores.dataset_root,
        "ids": scores.sample_ids,
        "challenger_correct": scores.challenger_correct,
        "champion_correct": (!inputs.champion.is_empty()).then_some(&scores.champion_correct),
    });
    let key = format!("evals/{}/attempt-{}/samples.json", task.id, task.attempt);
    let samples_uri = ctx
        .artifacts
        .put_bytes(&key, serde_json::to_vec(&samples).expect("json"))
        .await?;
    let mut detail = serde_json::to_value(&scores).expect("scores serialise");
    detail["samples_uri"] = samples_uri.clone().into();
    match report {
        Ok(uri) => detail["report_uri"] = uri.into(),
        Err(e) => {
            tracing::warn!(task_id = %task.id, error = %e, "no report for this run");
            detail["report_error"] = e.to_string().into();
        }
    }
    match tracked {
        None => {}
        Some(Ok(run_id)) => detail["mlflow_run_id"] = run_id.into(),
        Some(Err(e)) => {
            tracing::warn!(task_id = %task.id, error = %e, "the run is not (fully) recorded in MLflow");
            detail["tracking_error"] = e.into();
        }
    }
    Ok(Finished::Success(v1::TaskResult {
        metrics: scores.challenger.clone().into_iter().collect(),
        artifacts: [("samples".to_owned(), samples_uri)].into_iter().collect(),
        detail_json: detail.to_string(),
    }))
}

/// Builds the run's report from the eval's scores and writes it to `dir`.
fn write_report(
    task: &v1::Task,
    inputs: &v1::EvalInputs,
    challenger: &Path,
    spec: &JobSpec,
    scores: &job::PairScores,
    dir: &Path,
) -> crate::Result<crate::report::Written> {
    let parts = scores
        .report_parts
        .as_ref()
        .map_err(|e| Error::Report(e.clone()))?;
    let card = crate::artifacts::read_card(challenger)?;
    let metrics = crate::artifacts::read_metrics(challenger).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reporting without the training curves");
        crate::artifacts::MetricsFile {
            epochs: Vec::new(),
            test: parts.evaluation.clone(),
        }
    });
    let report = crate::report::build::run_report(&crate::report::build::Inputs {
        job_id: &task.job_id,
        run_uri: &inputs.challenger,
        eval: inputs,
        spec,
        card: &card,
        metrics: &metrics,
        scores,
        parts,
    });
    crate::report::write(dir, &report)
}

/// What the eval records in MLflow (owned: it crosses to a blocking thread).
struct TrackInputs {
    job_id: String,
    spec: JobSpec,
    challenger_dir: PathBuf,
    report_dir: PathBuf,
    report_files: Vec<String>,
    report_uri: Option<String>,
    run_uri: String,
    dataset_version: u64,
    challenger: BTreeMap<String, f64>,
    champion: Option<BTreeMap<String, f64>>,
    gate: trainfleet_core::gate::GateRecord,
}

/// Records the run in MLflow: its params, epochs, scores, tags, report and model files. Errors
/// come back as text for the job's result; they never fail the eval.
fn track(uri: &str, t: &TrackInputs) -> Result<String, String> {
    let card = crate::artifacts::read_card(&t.challenger_dir).map_err(|e| e.to_string())?;
    let epochs = crate::artifacts::read_metrics(&t.challenger_dir)
        .map(|m| m.epochs)
        .unwrap_or_default();
    let mut files: Vec<(String, PathBuf)> = t
        .report_files
        .iter()
        .map(|name| (format!("report/{name}"), t.report_dir.join(name)))
        .collect();
    for name in [
        crate::artifacts::MODEL_WEIGHTS,
        crate::artifacts::MODEL_CARD,
        crate::artifacts::METRICS,
        crate::artifacts::CONFIG,
    ] {
        let path = t.challenger_dir.join(name);
        if path.exists() {
            files.push((format!("model/{name}"), path));
        }
    }
    let record = crate::tracking::RunRecord {
        job_id: &t.job_id,
        spec: &t.spec,
        card: &card,
        epochs: &epochs,
        challenger: &t.challenger,
        champion: t.champion.as_ref(),
        gate: &t.gate,
        dataset_version: t.dataset_version,
        run_uri: &t.run_uri,
        report_uri: t.report_uri.as_deref(),
        files,
    };
    let run_id = crate::tracking::record(uri, &record).map_err(|e| e.to_string())?;
    tracing::info!(job_id = %t.job_id, %run_id, mlflow = %uri, "run recorded in MLflow");
    Ok(run_id)
}

/// Uploads a written report under `prefix`; returns the URI of its HTML page.
async fn publish_report(
    ctx: &Context,
    prefix: &str,
    written: &crate::report::Written,
) -> crate::Result<String> {
    let dir = written
        .html
        .parent()
        .expect("the page is in the report directory");
    let mut page = String::new();
    for name in &written.files {
        let (uri, _) = ctx
            .artifacts
            .put_file(&format!("{prefix}/{name}"), &dir.join(name))
            .await?;
        if name == crate::report::HTML {
            page = uri;
        }
    }
    Ok(page)
}

/// Scans a dataset directory into a manifest, reusing the previous manifest's hashes, uploads it
/// and reports the root, counts and diff.
async fn scan(task: v1::Task, ctx: Arc<Context>) -> crate::Result<Finished> {
    use trainfleet_core::manifest::{
        Manifest as DatasetManifest, ScanOptions, finish_scan, scan_imagefolder, scan_object_store,
    };
    let inputs = task.scan.clone().unwrap_or_default();
    let previous: Option<DatasetManifest> = match inputs.previous_manifest.as_str() {
        "" => None,
        uri => {
            let key = ctx.artifacts.key_of(uri)?;
            let raw = ctx.artifacts.get_bytes(&key).await?;
            Some(serde_json::from_slice(&raw).map_err(|e| {
                Error::Unsupported(format!("the previous manifest {uri} is not readable: {e}"))
            })?)
        }
    };
    let options = ScanOptions {
        full: inputs.full,
        ..Default::default()
    };
    let scanned = if !inputs.object_store_url.is_empty() {
        ctx.roots
            .check_url("scan.object_store_url", &inputs.object_store_url)?;
        let store = open_source(&inputs.object_store_url)?;
        scan_object_store(&store, previous.as_ref(), options).await?
    } else if !inputs.dataset_yaml.is_empty() {
        // Builtins and IDX sets: the manifest lists samples, loaded as a training job would.
        let spec: trainfleet_core::job::DatasetSpec = serde_yaml::from_str(&inputs.dataset_yaml)
            .map_err(|e| Error::Unsupported(format!("the scan's dataset section: {e}")))?;
        crate::local_paths::check_dataset(&spec, "dataset", &ctx.roots)?;
        let data = ctx.data.clone();
        let manifest = tokio::task::spawn_blocking(move || {
            let dataset = crate::data::load_with(&spec, &data.dir, &data.downloader)?;
            crate::data::sample_manifest(&dataset)
        })
        .await
        .map_err(|e| Error::Unsupported(format!("the scan thread failed: {e}")))??;
        let hashed = manifest.files.len();
        let options = ScanOptions {
            test_pct: 0,
            ..options
        };
        finish_scan(
            manifest.files,
            hashed,
            Vec::new(),
            previous.as_ref(),
            options,
        )
    } else {
        let dir = PathBuf::from(&inputs.directory);
        // A directory that is not there reads nothing; the scan says so in its own words.
        if dir.exists() {
            ctx.roots.check_path("scan.directory", &dir)?;
        }
        tokio::task::spawn_blocking(move || scan_imagefolder(&dir, previous.as_ref(), options))
            .await
            .map_err(|e| Error::Unsupported(format!("the scan thread failed: {e}")))??
    };
    let m = &scanned.manifest;
    let key = format!("datasets/{}/manifests/{}.json", inputs.dataset, m.root);
    let manifest_uri = ctx
        .artifacts
        .put_bytes(&key, serde_json::to_vec(m).expect("manifests serialise"))
        .await?;
    tracing::info!(
        dataset = %inputs.dataset, root = %m.root, files = m.files.len(),
        hashed = scanned.hashed, reused = scanned.reused, skipped = scanned.skipped.len(),
        "dataset scanned"
    );
    let split_name = |s: &trainfleet_core::manifest::Split| {
        serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let detail = serde_json::json!({
        "root": m.root,
        "samples": m.files.len(),
        "by_class": m.classes,
        "by_split": m.splits.iter().map(|(k, v)| (split_name(k), *v)).collect::<BTreeMap<_, _>>(),
        "added": scanned.added.len(),
        "removed": scanned.removed.len(),
        "changed": scanned.changed.len(),
        "manifest_uri": manifest_uri,
        "hashed": scanned.hashed,
        "reused": scanned.reused,
        "skipped": scanned.skipped.len(),
        "skipped_examples": scanned.skipped.iter().take(20).collect::<Vec<_>>(),
        "empty_classes": scanned.empty_classes,
    });
    Ok(Finished::Success(v1::TaskResult {
        metrics: [
            ("files".to_owned(), m.files.len() as f64),
            ("hashed".to_owned(), scanned.hashed as f64),
        ]
        .into_iter()
        .collect(),
        artifacts: [("manifest".to_owned(), manifest_uri)]
            .into_iter()
            .collect(),
        detail_json: detail.to_string(),
    }))
}
