//! `trainfleet sweep start|status|list|cancel`: hyperparameter sweeps on a coordinator.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use trainfleet_core::sweep::SweepSpec;
use trainfleet_proto::v1;
use trainfleet_proto::v1::job_service_client::JobServiceClient;
use trainfleet_proto::v1::sweep_service_client::SweepServiceClient;

use crate::cli::Remote;
use trainfleet_proto::AuthChannel;

use crate::client::{connect, status_error};
use crate::table;

/// `trainfleet sweep ...`.
#[derive(Debug, clap::Subcommand)]
pub enum SweepCommand {
    /// Start a sweep from its YAML (configs/sweep-*.yaml); checked here first, then queued.
    Start(StartArgs),
    /// One sweep: its trials, their values and objectives, the best, the gate's decision.
    Status(SweepArgs),
    /// Sweeps, newest first.
    List(ListArgs),
    /// Cancel a sweep: running trials stop, paused ones are cancelled, no gate.
    Cancel(CancelArgs),
    /// Write the sweep's offline page: every trial's curve, parameters against the objective,
    /// the rung table, the gate's decision.
    Report(ReportArgs),
}

/// Arguments of `trainfleet sweep report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    remote: Remote,
    /// Sweep id.
    id: String,
    /// Directory to write index.html into.
    #[arg(long, default_value = "sweep-report")]
    out: PathBuf,
}

/// Arguments of `trainfleet sweep start`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    #[command(flatten)]
    remote: Remote,
    /// The sweep file.
    file: PathBuf,
    /// Wait for the sweep to end, printing trials as they finish.
    #[arg(long)]
    wait: bool,
    /// A retry with the same key returns the sweep started before.
    #[arg(long, default_value = "")]
    idempotency_key: String,
}

/// Arguments naming one sweep.
#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    #[command(flatten)]
    remote: Remote,
    /// Sweep id.
    id: String,
}

/// Arguments of `trainfleet sweep list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    remote: Remote,
}

/// Arguments of `trainfleet sweep cancel`.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    #[command(flatten)]
    remote: Remote,
    /// Sweep id.
    id: String,
    /// Why (recorded as the sweep's error).
    #[arg(long, default_value = "")]
    reason: String,
}

/// Runs a sweep verb.
pub async fn run(command: SweepCommand) -> anyhow::Result<()> {
    match command {
        SweepCommand::Start(args) => start(args).await,
        SweepCommand::Status(args) => status(args).await,
        SweepCommand::List(args) => list(args).await,
        SweepCommand::Cancel(args) => cancel(args).await,
        SweepCommand::Report(args) => report(args).await,
    }
}

async fn client(endpoint: &str) -> anyhow::Result<SweepServiceClient<AuthChannel>> {
    Ok(SweepServiceClient::new(connect(endpoint).await?))
}

async fn start(args: StartArgs) -> anyhow::Result<()> {
    // Validated here (with the job file read relative to the sweep file), sent with the base
    // job inline; the coordinator validates it again.
    let spec = SweepSpec::from_file(&args.file)?;
    let sweep = client(&args.remote.endpoint)
        .await?
        .start(v1::StartSweepRequest {
            spec: Some(v1::start_sweep_request::Spec::SpecYaml(spec.to_yaml())),
            idempotency_key: args.idempotency_key,
        })
        .await
        .map_err(|s| status_error("Start", s))?
        .into_inner();
    if !args.wait {
        if args.remote.json {
            println!("{}", serde_json::to_string_pretty(&sweep_json(&sweep))?);
        } else {
            println!(
                "started sweep {} ({}, {} trials, {} at a time)",
                sweep.id, sweep.strategy, sweep.max_trials, spec.parallelism
            );
        }
        return Ok(());
    }
    // Progress goes to stderr, so --json output stays one document.
    let done = wait(&args.remote.endpoint, &sweep.id, true).await?;
    show(&done, args.remote.json)?;
    if done.state == v1::SweepState::Failed as i32 {
        anyhow::bail!("sweep {} failed: {}", done.id, done.error);
    }
    Ok(())
}

/// Polls a sweep until it ends; with `print`, one line per trial as it finishes.
pub async fn wait(endpoint: &str, id: &str, print: bool) -> anyhow::Result<v1::Sweep> {
    let mut client = client(endpoint).await?;
    let mut reported = std::collections::BTreeSet::new();
    loop {
        let sweep = client
            .get(v1::GetSweepRequest { id: id.to_owned() })
            .await
            .map_err(|s| status_error("Get", s))?
            .into_inner();
        if print {
            for t in &sweep.trials {
                let done = t.state != v1::TrialState::Running as i32;
                if done && reported.insert((t.number, t.state, t.epochs)) {
                    eprintln!(
                        "trial {:>3} {:<9} epochs {:>3}  {} {}  {}",
                        t.number,
                        trial_state(t.state),
                        t.epochs,
                        sweep.objective_metric,
                        t.objective.map_or("-".to_owned(), |v| format!("{v:.4}")),
                        params(t)
                    );
                }
            }
        }
        let state = v1::SweepState::try_from(sweep.state).unwrap_or_default();
        if matches!(
            state,
            v1::SweepState::Succeeded | v1::SweepState::Failed | v1::SweepState::Cancelled
        ) {
            return Ok(sweep);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn status(args: SweepArgs) -> anyhow::Result<()> {
    let sweep = client(&args.remote.endpoint)
        .await?
        .get(v1::GetSweepRequest { id: args.id })
        .await
        .map_err(|s| status_error("Get", s))?
        .into_inner();
    show(&sweep, args.remote.json)
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let sweeps = client(&args.remote.endpoint)
        .await?
        .list(v1::ListSweepsRequest::default())
        .await
        .map_err(|s| status_error("List", s))?
        .into_inner()
        .sweeps;
    if args.remote.json {
        let all: Vec<_> = sweeps.iter().map(sweep_json).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = sweeps
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.name.clone(),
                sweep_state(s.state).to_owned(),
                s.strategy.clone(),
                format!("{}/{}", s.started, s.max_trials),
                s.best.map_or("-".to_owned(), |b| b.to_string()),
            ]
        })
        .collect();
    println!(
        "{}",
        table::render(
            &["ID", "NAME", "STATE", "STRATEGY", "TRIALS", "BEST"],
            &rows
        )
    );
    Ok(())
}

async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let sweep = client(&args.remote.endpoint)
        .await?
        .cancel(v1::CancelSweepRequest {
            id: args.id,
            reason: args.reason,
        })
        .await
        .map_err(|s| status_error("Cancel", s))?
        .into_inner();
    show(&sweep, args.remote.json)
}

async fn report(args: ReportArgs) -> anyhow::Result<()> {
    use trainfleet_worker::report::sweep::{GateSummary, SweepPage, TrialSeries, render};
    let channel = connect(&args.remote.endpoint).await?;
    let sweep = SweepServiceClient::new(channel.clone())
        .get(v1::GetSweepRequest { id: args.id })
        .await
        .map_err(|s| status_error("Get", s))?
        .into_inner();
    let mut jobs = JobServiceClient::new(channel);
    let mut trials = Vec::new();
    for t in &sweep.trials {
        // A trial that never ran has no job; one archived still answers.
        let curve = if t.job_id.is_empty() {
            Vec::new()
        } else {
            let job = jobs
                .get(v1::GetJobRequest {
                    id: t.job_id.clone(),
                })
                .await
                .map_err(|s| status_error("Get", s))?
                .into_inner();
            job.epochs
                .iter()
                .filter_map(|e| e.values.get(&sweep.objective_metric).map(|v| (e.epoch, *v)))
                .collect()
        };
        trials.push(TrialSeries {
            number: t.number,
            state: trial_state(t.state).to_owned(),
            params: t.params.clone().into_iter().collect(),
            objective: t.objective,
            curve,
            rungs: t.rungs.iter().map(|r| (r.value, r.promoted)).collect(),
            resumes: t.resumes,
        });
    }
    let page = SweepPage {
        id: sweep.id.clone(),
        name: sweep.name.clone(),
        strategy: sweep.strategy.clone(),
        state: sweep_state(sweep.state).to_owned(),
        metric: sweep.objective_metric.clone(),
        maximize: sweep.maximize,
        rungs: sweep.rungs.clone(),
        trials,
        best: sweep.best,
        gate: sweep.gate.as_ref().map(|g| GateSummary {
            trial: g.trial,
            model_id: g.model_id.clone(),
            promoted: g.promoted,
            reasons: g.reasons.clone(),
        }),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot make {}", args.out.display()))?;
    let path = args.out.join("index.html");
    std::fs::write(&path, render(&page))
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}

fn show(sweep: &v1::Sweep, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&sweep_json(sweep))?);
        return Ok(());
    }
    println!(
        "sweep {} ({}): {}, {} of {} trials started, {} failed",
        sweep.id,
        sweep.name,
        sweep_state(sweep.state),
        sweep.started,
        sweep.max_trials,
        sweep.failed
    );
    if !sweep.retrain_dataset.is_empty() {
        let warm = match sweep.warm_start_from.as_str() {
            "" => String::new(),
            from => format!(", warm-started from {from}'s best"),
        };
        println!("a retrain of dataset {}{warm}", sweep.retrain_dataset);
    }
    let rows: Vec<Vec<String>> = sweep
        .trials
        .iter()
        .map(|t| {
            let best = if sweep.best == Some(t.number) {
                "*"
            } else {
                ""
            };
            vec![
                format!("{}{best}", t.number),
                trial_state(t.state).to_owned(),
                t.epochs.to_string(),
                t.objective.map_or("-".to_owned(), |v| format!("{v:.4}")),
                t.job_id.clone(),
                params(t),
            ]
        })
        .collect();
    let objective = sweep.objective_metric.to_uppercase();
    println!(
        "{}",
        table::render(
            &["TRIAL", "STATE", "EPOCHS", &objective, "JOB", "PARAMS"],
            &rows
        )
    );
    if let Some(g) = &sweep.gate {
        let verdict = if g.model_id.is_empty() {
            "being evaluated".to_owned()
        } else if g.promoted {
            format!("promoted as {}", g.model_id)
        } else {
            format!("not promoted ({})", g.model_id)
        };
        println!("best trial {} vs the champion: {verdict}", g.trial);
        for reason in &g.reasons {
            println!("  {reason}");
        }
    }
    if !sweep.error.is_empty() {
        println!("error: {}", sweep.error);
    }
    Ok(())
}

fn params(t: &v1::Trial) -> String {
    t.params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn sweep_state(state: i32) -> &'static str {
    match v1::SweepState::try_from(state).unwrap_or_default() {
        v1::SweepState::Running => "running",
        v1::SweepState::Gating => "gating",
        v1::SweepState::Succeeded => "succeeded",
        v1::SweepState::Failed => "failed",
        v1::SweepState::Cancelled => "cancelled",
        v1::SweepState::Unspecified => "unknown",
    }
}

fn trial_state(state: i32) -> &'static str {
    match v1::TrialState::try_from(state).unwrap_or_default() {
        v1::TrialState::Running => "running",
        v1::TrialState::Paused => "paused",
        v1::TrialState::Succeeded => "succeeded",
        v1::TrialState::Failed => "failed",
        v1::TrialState::Cancelled => "cancelled",
        v1::TrialState::Stopped => "stopped",
        v1::TrialState::Unspecified => "unknown",
    }
}

/// A sweep as JSON (`--json`), states by name.
pub fn sweep_json(s: &v1::Sweep) -> serde_json::Value {
    json!({
        "id": s.id,
        "name": s.name,
        "state": sweep_state(s.state),
        "strategy": s.strategy,
        "max_trials": s.max_trials,
        "started": s.started,
        "failed": s.failed,
        "best": s.best,
        "objective_metric": s.objective_metric,
        "maximize": s.maximize,
        "rungs": s.rungs,
        "error": s.error,
        "owner": s.owner,
        "retrain_dataset": s.retrain_dataset, "warm_start_from": s.warm_start_from,
        "gate": s.gate.as_ref().map(|g| json!({
            "job_id": g.job_id, "trial": g.trial, "model_id": g.model_id,
            "promoted": g.promoted, "reasons": g.reasons,
        })),
        "trials": s.trials.iter().map(|t| json!({
            "number": t.number,
            "job_id": t.job_id,
            "state": trial_state(t.state),
            "params": t.params,
            "objective": t.objective,
            "epochs": t.epochs,
            "resumes": t.resumes,
            "rungs": t.rungs.iter().map(|r| json!({
                "epochs": r.epochs, "value": r.value, "promoted": r.promoted,
            })).collect::<Vec<_>>(),
            "error": t.error,
            "run_uri": t.run_uri,
        })).collect::<Vec<_>>(),
    })
}
