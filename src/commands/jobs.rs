//! Job verbs against a remote coordinator: `submit`, `watch`, `status`, `jobs`, `cancel`, and
//! `models`. Human output by default, `--json` for scripts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::json;
use trainfleet_proto::AuthChannel;
use trainfleet_proto::v1;
use trainfleet_proto::v1::job_event::Event;
use trainfleet_proto::v1::job_service_client::JobServiceClient;
use trainfleet_proto::v1::model_service_client::ModelServiceClient;

use crate::cli::Remote;
use crate::client::{connect, connect_streaming, status_error};
use crate::table;

/// Arguments of `trainfleet submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    remote: Remote,
    /// The job YAML (the file `trainfleet run` takes).
    config: Option<PathBuf>,
    /// Instead of a training job, a sleep job of this length (a smoke check, e.g. "2s").
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "config")]
    sleep: Option<Duration>,
    /// Follow the job until it ends, with progress.
    #[arg(long)]
    watch: bool,
    /// Client token: submitting again with the same key returns the first job.
    #[arg(long, default_value = "")]
    idempotency_key: String,
}

/// Arguments of verbs that take one job id.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    #[command(flatten)]
    remote: Remote,
    /// The job id.
    id: String,
}

/// Arguments of `trainfleet cancel`.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    #[command(flatten)]
    remote: Remote,
    /// The job id.
    id: String,
    /// Why, recorded on the job.
    #[arg(long, default_value = "")]
    reason: String,
}

/// Arguments of `trainfleet jobs`.
#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    #[command(flatten)]
    remote: Remote,
    /// Only jobs in these states (queued, training, evaluating, succeeded, failed, cancelled).
    #[arg(long, value_delimiter = ',')]
    state: Vec<String>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

/// Arguments of `trainfleet models`.
#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    #[command(flatten)]
    remote: Remote,
    /// Only models of this dataset (e.g. synth-digits).
    #[arg(long, default_value = "")]
    dataset: String,
}

/// `submit`: queues a job and prints it (or follows it with `--watch`).
pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    use v1::submit_job_request::Spec;
    let spec = match (&args.config, args.sleep) {
        (Some(path), _) => Spec::Yaml(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the job file {}", path.display()))?,
        ),
        (None, Some(d)) => Spec::Sleep(v1::SleepJob {
            duration: prost_types::Duration::try_from(d).ok(),
            name: "smoke".into(),
        }),
        (None, None) => anyhow::bail!("give a job YAML file, or --sleep DURATION for a smoke job"),
    };
    let channel = connect(&args.remote.endpoint).await?;
    let job = submit_spec(channel, spec, args.idempotency_key).await?;
    if args.watch {
        let done = watch(&args.remote.endpoint, &job.id, args.remote.json).await?;
        return finished(&done, args.remote.json);
    }
    if args.remote.json {
        println!("{}", serde_json::to_string_pretty(&job_json(&job))?);
    } else {
        println!("submitted {} ({})", job.id, state_name(job.state));
    }
    Ok(())
}

/// Submits `spec`; returns the job as queued.
pub async fn submit_spec(
    channel: AuthChannel,
    spec: v1::submit_job_request::Spec,
    idempotency_key: String,
) -> anyhow::Result<v1::Job> {
    JobServiceClient::new(channel)
        .submit(v1::SubmitJobRequest {
            spec: Some(spec),
            idempotency_key,
        })
        .await
        .map_err(|s| status_error("Submit", s))?
        .into_inner()
        .job
        .context("the coordinator answered Submit without a job")
}

/// `watch`: follows a job until it ends.
pub async fn watch_cmd(args: JobArgs) -> anyhow::Result<()> {
    let done = watch(&args.remote.endpoint, &args.id, args.remote.json).await?;
    finished(&done, args.remote.json)
}

/// `status`: one job.
pub async fn status(args: JobArgs) -> anyhow::Result<()> {
    let job = JobServiceClient::new(connect(&args.remote.endpoint).await?)
        .get(v1::GetJobRequest { id: args.id })
        .await
        .map_err(|s| status_error("Get", s))?
        .into_inner();
    if args.remote.json {
        println!("{}", serde_json::to_string_pretty(&job_json(&job))?);
    } else {
        println!("{}", describe(&job));
    }
    Ok(())
}

/// `jobs`: newest first.
pub async fn list(args: JobsArgs) -> anyhow::Result<()> {
    let states = args
        .state
        .iter()
        .map(|s| {
            v1::JobState::from_str_name(&format!("JOB_STATE_{}", s.to_uppercase()))
                .map(|s| s as i32)
                .with_context(|| format!("unknown job state {s:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let jobs = JobServiceClient::new(connect(&args.remote.endpoint).await?)
        .list(v1::ListJobsRequest {
            states,
            page_size: args.limit,
            page_token: String::new(),
        })
        .await
        .map_err(|s| status_error("List", s))?
        .into_inner()
        .jobs;
    if args.remote.json {
        let all: Vec<_> = jobs.iter().map(job_json).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if jobs.is_empty() {
        println!("no jobs");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                job_name(j),
                state_name(j.state).to_owned(),
                j.attempt.to_string(),
                if j.worker_id.is_empty() {
                    "-".into()
                } else {
                    j.worker_id.clone()
                },
                j.epochs.len().to_string(),
                j.result
                    .as_ref()
                    .and_then(|r| r.metrics.get("accuracy"))
                    .map_or("-".into(), |a| format!("{a:.4}")),
                j.result.as_ref().map_or("-".into(), |r| {
                    if r.promoted {
                        "yes".into()
                    } else {
                        "no".into()
                    }
                }),
                source_name(j).to_owned(),
            ]
        })
        .collect();
    println!(
        "{}",
        table::render(
            &[
                "JOB", "NAME", "STATE", "ATTEMPT", "WORKER", "EPOCHS", "ACCURACY", "CHAMPION",
                "FROM",
            ],
            &rows
        )
    );
    Ok(())
}

/// `cancel`: asks the coordinator to stop a job.
pub async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let job = JobServiceClient::new(connect(&args.remote.endpoint).await?)
        .cancel(v1::CancelJobRequest {
            id: args.id,
            reason: args.reason,
        })
        .await
        .map_err(|s| status_error("Cancel", s))?
        .into_inner();
    if args.remote.json {
        println!("{}", serde_json::to_string_pretty(&job_json(&job))?);
    } else if job.state == v1::JobState::Cancelled as i32 {
        println!("{} cancelled", job.id);
    } else {
        println!("{} cancelling: its worker stops within one batch", job.id);
    }
    Ok(())
}

/// `models`: the registry, newest first, champions marked.
pub async fn models(args: ModelsArgs) -> anyhow::Result<()> {
    let models = ModelServiceClient::new(connect(&args.remote.endpoint).await?)
        .list(v1::ListModelsRequest {
            dataset: args.dataset,
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .map_err(|s| status_error("ListModels", s))?
        .into_inner()
        .models;
    if args.remote.json {
        let all: Vec<_> = models
            .iter()
            .map(|m| {
                json!({
                    "id": m.id, "dataset": m.dataset, "dataset_version": m.dataset_version,
                    "dataset_version_number": m.dataset_version_number,
                    "eval_samples_uri": m.eval_samples_uri,
                    "job_id": m.job_id, "parent_id": m.parent_id, "config_hash": m.config_hash,
                    "metrics": m.metrics, "artifact_uri": m.artifact_uri,
                    "artifact_sha256": m.artifact_sha256, "champion": m.champion,
                    "promoted": m.gate.as_ref().is_some_and(|g| g.promoted),
                    "reasons": m.gate.as_ref().map(|g| g.reasons.clone()).unwrap_or_default(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if models.is_empty() {
        println!("no models");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                m.dataset.clone(),
                match m.dataset_version_number {
                    0 => "-".to_owned(),
                    n => format!("v{n}"),
                },
                m.metrics
                    .get("accuracy")
                    .map_or("-".into(), |a| format!("{a:.4}")),
                if m.champion {
                    "*".into()
                } else {
                    String::new()
                },
                m.gate
                    .as_ref()
                    .map(|g| g.reasons.join("; "))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    println!(
        "{}",
        table::render(
            &[
                "MODEL", "DATASET", "VERSION", "ACCURACY", "CHAMPION", "GATE"
            ],
            &rows
        )
    );
    Ok(())
}

/// Follows a job's events with progress bars (or JSON lines) until it ends; returns the final
/// job.
///
/// The watch survives a coordinator failover: when the stream breaks with UNAVAILABLE (the
/// leader stepped down or died), the leader is found again and the watch resumes there (the new
/// stream starts with the job's current state).
pub async fn watch(endpoint: &str, id: &str, json: bool) -> anyhow::Result<v1::Job> {
    let open = || async {
        let channel = connect_streaming(endpoint).await?;
        anyhow::Ok(
            JobServiceClient::new(channel)
                .watch(v1::WatchJobRequest { id: id.to_owned() })
                .await
                .map_err(|s| status_error("Watch", s))?
                .into_inner(),
        )
    };
    let mut stream = open().await?;
    let mut reconnects = 0;
    let bars = MultiProgress::new();
    // Bars draw only on a terminal; elsewhere (CI logs, pipes) the same lines are printed plainly.
    let say = |line: String| {
        if bars.is_hidden() {
            println!("{line}");
        } else {
            let _ = bars.println(line);
        }
    };
    let epochs = bars.add(ProgressBar::new(0));
    epochs.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} epochs {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    epochs.set_prefix("epochs");
    let batches = bars.add(ProgressBar::new(0));
    batches.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} batches {msg} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    batches.set_prefix("batches");
    loop {
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => {
                anyhow::bail!("the coordinator ended the watch of {id} before the job finished")
            }
            Err(s) if s.code() == tonic::Code::Unavailable && reconnects < 20 => {
                reconnects += 1;
                say(format!(
                    "{id}: the coordinator is unavailable ({}); following the leader",
                    s.message()
                ));
                tokio::time::sleep(Duration::from_millis(500)).await;
                match open().await {
                    Ok(s) => stream = s,
                    Err(e) => say(format!("{id}: {e:#}")),
                }
                continue;
            }
            Err(s) => return Err(status_error("Watch", s)),
        };
        if json && let Some(line) = event_json(&event) {
            println!("{line}");
        }
        match event.event {
            Some(Event::State(state)) if !json => {
                say(format!("{id}: {}", state_name(state)));
            }
            Some(Event::Epoch(e)) if !json => {
                epochs.set_position(e.epoch.into());
                let mut names: Vec<_> = e.values.iter().collect();
                names.sort_by(|a, b| a.0.cmp(b.0));
                let text: Vec<String> = names
                    .iter()
                    .filter(|(k, _)| k.contains("loss") || k.contains("accuracy"))
                    .map(|(k, v)| format!("{k} {}", number(k, **v)))
                    .collect();
                say(format!("  epoch {}: {}", e.epoch, text.join("  ")));
            }
            Some(Event::Progress(p)) if !json => {
                epochs.set_length(p.total_epochs.into());
                epochs.set_position(p.epoch.saturating_sub(1).into());
                batches.set_length(p.total_batches.into());
                batches.set_position(p.batch.into());
                batches.set_message(format!("{:.0} img/s", p.images_per_sec));
            }
            Some(Event::Finished(job)) => {
                epochs.finish_and_clear();
                batches.finish_and_clear();
                return Ok(job);
            }
            _ => {}
        }
    }
}

/// Prints a finished job's summary; an error when it did not succeed.
pub fn finished(job: &v1::Job, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&job_json(job))?);
    } else {
        println!("{}", describe(job));
    }
    match v1::JobState::try_from(job.state) {
        Ok(v1::JobState::Succeeded) => Ok(()),
        _ => anyhow::bail!(
            "job {} ended {}: {}",
            job.id,
            state_name(job.state),
            job.error
        ),
    }
}

/// A job in words: state, attempts, metrics, artifacts, the gate's decision.
pub fn describe(job: &v1::Job) -> String {
    let mut out = format!(
        "job {} ({}): {}",
        job.id,
        job_name(job),
        state_name(job.state)
    );
    out.push_str(&archived_line(job));
    if !job.error.is_empty() {
        out.push_str(&format!("\n  error: {}", job.error));
    }
    for a in &job.attempts {
        let resumed = if a.resumed_from_epoch > 0 {
            format!(", resumed after epoch {}", a.resumed_from_epoch)
        } else {
            String::new()
        };
        let outcome = if a.outcome.is_empty() {
            "running"
        } else {
            a.outcome.as_str()
        };
        out.push_str(&format!(
            "\n  {} attempt {} on {}{resumed}: {outcome}",
            a.task, a.attempt, a.worker_id
        ));
    }
    if let Some(r) = &job.result {
        let mut metrics: Vec<_> = r.metrics.iter().collect();
        metrics.sort_by(|a, b| a.0.cmp(b.0));
        let text: Vec<String> = metrics
            .iter()
            .map(|(k, v)| format!("{k} {}", number(k, **v)))
            .collect();
        out.push_str(&format!("\n  model {}: {}", r.model_id, text.join("  ")));
        out.push_str(&format!("\n  artifacts: {}", r.run_uri));
        if r.report_uri.is_empty() {
            out.push_str(&format!("\n  report: not made ({})", r.report_error));
        } else {
            out.push_str(&format!("\n  report: {}", r.report_uri));
        }
        if !r.mlflow_run_id.is_empty() {
            out.push_str(&format!("\n  mlflow run: {}", r.mlflow_run_id));
        }
        if !r.tracking_error.is_empty() {
            out.push_str(&format!("\n  mlflow: not recorded: {}", r.tracking_error));
        }
        out.push_str(&format!(
            "\n  {}: {}",
            if r.promoted {
                "promoted"
            } else {
                "not promoted"
            },
            r.reasons.join("; ")
        ));
    }
    out
}

/// A metric for people: counts (samples, epochs) as integers, the rest with four decimals.
/// A metric value: counts as integers, scores with 4 decimals.
pub fn number(name: &str, v: f64) -> String {
    if (name.ends_with("samples") || name.contains("epoch")) && v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

/// A job's name as shown: its own, its spec's, or "sleep".
pub fn job_name(job: &v1::Job) -> String {
    if !job.name.is_empty() {
        return job.name.clone();
    }
    job.spec
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_else(|| "sleep".into())
}

/// A job state in lower case, as the CLI shows it.
pub fn state_name(state: i32) -> &'static str {
    match v1::JobState::try_from(state) {
        Ok(v1::JobState::Queued) => "queued",
        Ok(v1::JobState::Training) => "training",
        Ok(v1::JobState::Evaluating) => "evaluating",
        Ok(v1::JobState::Succeeded) => "succeeded",
        Ok(v1::JobState::Failed) => "failed",
        Ok(v1::JobState::Cancelled) => "cancelled",
        Ok(v1::JobState::Paused) => "paused",
        _ => "unknown",
    }
}

fn event_json(event: &v1::JobEvent) -> Option<serde_json::Value> {
    Some(match event.event.as_ref()? {
        Event::State(s) => json!({"state": state_name(*s)}),
        Event::Epoch(e) => json!({"epoch": e.epoch, "metrics": e.values}),
        Event::Progress(p) => json!({
            "epoch": p.epoch, "total_epochs": p.total_epochs, "batch": p.batch,
            "total_batches": p.total_batches, "images_per_sec": p.images_per_sec,
        }),
        Event::Finished(j) => json!({"finished": job_json(j)}),
    })
}

/// A job as JSON for scripts.
pub fn job_json(job: &v1::Job) -> serde_json::Value {
    json!({
        "id": job.id,
        "name": job_name(job),
        "state": state_name(job.state),
        "attempt": job.attempt,
        "worker_id": job.worker_id,
        "error": job.error,
        "epochs": job.epochs.iter().map(|e| json!({"epoch": e.epoch, "metrics": e.values})).collect::<Vec<_>>(),
        "attempts": job.attempts.iter().map(|a| json!({
            "task": a.task, "attempt": a.attempt, "worker_id": a.worker_id,
            "resumed_from_epoch": a.resumed_from_epoch, "outcome": a.outcome,
            "started_at": a.started_at.as_ref().map(|t| t.to_string()),
            "finished_at": a.finished_at.as_ref().map(|t| t.to_string()),
        })).collect::<Vec<_>>(),
        "created_at": job.created_at.as_ref().map(|t| t.to_string()),
        "finished_at": job.finished_at.as_ref().map(|t| t.to_string()),
        "result": job.result.as_ref().map(|r| json!({
            "model_id": r.model_id, "metrics": r.metrics, "promoted": r.promoted,
            "reasons": r.reasons, "artifacts": r.run_uri,
            "report": r.report_uri, "report_error": r.report_error,
            "mlflow_run_id": r.mlflow_run_id, "tracking_error": r.tracking_error,
        })),
        "retrain_dataset": job.retrain_dataset,
        "spec_yaml": job.spec_yaml,
        "source": source_name(job),
        "archived_at": job.archived_at.as_ref().map(|t| t.to_string()),
    })
}

/// Where the coordinator read a job from: "store" (live) or "archive" (past retention).
pub fn source_name(job: &v1::Job) -> &'static str {
    match v1::JobSource::try_from(job.source) {
        Ok(v1::JobSource::Archive) => "archive",
        _ => "store",
    }
}

/// "\n  archived <when> (read from the archive)" for an archived job; empty otherwise.
pub fn archived_line(job: &v1::Job) -> String {
    match (&job.archived_at, source_name(job)) {
        (Some(at), "archive") => format!("\n  archived {at} (read from the archive)"),
        _ => String::new(),
    }
}
