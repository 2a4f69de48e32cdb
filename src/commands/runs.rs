//! `trainfleet runs list|show|compare`: training runs as experiments. A run is a training job:
//! its resolved config (params), every epoch's metrics, how and on what it ran (device,
//! versions, dataset version), its artifacts' sha256, its report and its MLflow run, all read
//! from the coordinator.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use trainfleet_core::job::JobSpec;
use trainfleet_proto::v1;
use trainfleet_proto::v1::job_service_client::JobServiceClient;
use trainfleet_worker::report::compare::{self, RunSeries};

use crate::cli::Remote;
use crate::client::{connect, status_error};
use crate::commands::jobs::{archived_line, job_json, job_name, number, state_name};
use crate::table;

/// `trainfleet runs ...`.
#[derive(Debug, clap::Subcommand)]
pub enum RunsCommand {
    /// Training runs, newest first, with their dataset version and scores.
    List(ListArgs),
    /// One run: params, every epoch, device and versions, dataset version, artifact hashes.
    Show(ShowArgs),
    /// Two or more runs side by side: final metrics, the params that differ, and an HTML page
    /// with their curves overlaid.
    Compare(CompareArgs),
}

/// Arguments of `runs list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    remote: Remote,
    /// Only runs on this dataset (registered name or builtin).
    #[arg(long)]
    dataset: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

/// Arguments of `runs show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    remote: Remote,
    /// The run (job id).
    id: String,
}

/// Arguments of `runs compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    #[command(flatten)]
    remote: Remote,
    /// The runs (job ids), at least two.
    #[arg(num_args = 2.., required = true)]
    ids: Vec<String>,
    /// Where to write the HTML comparison (default: compare-<first>-<second>.html here).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs the `runs` subcommand.
pub async fn run(command: RunsCommand) -> anyhow::Result<()> {
    match command {
        RunsCommand::List(args) => list(args).await,
        RunsCommand::Show(args) => show(args).await,
        RunsCommand::Compare(args) => compare_runs(args).await,
    }
}

fn is_run(job: &v1::Job) -> bool {
    !job.spec_yaml.is_empty()
}

fn dataset_of(job: &v1::Job) -> String {
    job.spec
        .as_ref()
        .map(|s| s.dataset.clone())
        .unwrap_or_default()
}

async fn get(endpoint: &str, id: &str) -> anyhow::Result<v1::Job> {
    let job = JobServiceClient::new(connect(endpoint).await?)
        .get(v1::GetJobRequest { id: id.to_owned() })
        .await
        .map_err(|s| status_error("Get", s))?
        .into_inner();
    anyhow::ensure!(
        is_run(&job),
        "job {id} trains nothing (a scan or sleep job), so it is not a run"
    );
    Ok(job)
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let mut client = JobServiceClient::new(connect(&args.remote.endpoint).await?);
    let mut runs = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list(v1::ListJobsRequest {
                states: Vec::new(),
                page_size: 200,
                page_token,
            })
            .await
            .map_err(|s| status_error("List", s))?
            .into_inner();
        runs.extend(
            page.jobs
                .into_iter()
                .filter(|j| is_run(j) && args.dataset.as_ref().is_none_or(|d| &dataset_of(j) == d)),
        );
        if runs.len() >= args.limit || page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    runs.truncate(args.limit);
    if args.remote.json {
        let all: Vec<_> = runs.iter().map(run_json).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if runs.is_empty() {
        println!("no runs");
        return Ok(());
    }
    let metric = |j: &v1::Job, k: &str| {
        j.result
            .as_ref()
            .and_then(|r| r.metrics.get(k))
            .map_or("-".into(), |v| format!("{v:.4}"))
    };
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|j| {
            let run = j.run.as_ref();
            vec![
                j.id.clone(),
                job_name(j),
                dataset_of(j),
                run.map_or("-".into(), |r| {
                    version_label(r.dataset_version, &r.dataset_root)
                }),
                state_name(j.state).to_owned(),
                j.epochs.len().to_string(),
                metric(j, "accuracy"),
                metric(j, "macro_f1"),
                j.result
                    .as_ref()
                    .map_or("-".into(), |r| if r.promoted { "yes" } else { "no" }.into()),
                run.map_or("-".into(), |r| r.device.clone()),
            ]
        })
        .collect();
    println!(
        "{}",
        table::render(
            &[
                "RUN", "NAME", "DATASET", "VERSION", "STATE", "EPOCHS", "ACCURACY", "MACRO_F1",
                "PROMOTED", "DEVICE"
            ],
            &rows
        )
    );
    Ok(())
}

fn version_label(number: u64, root: &str) -> String {
    let short = &root[..root.len().min(12)];
    match number {
        0 if short.is_empty() => "-".into(),
        0 => short.to_owned(),
        n => format!("v{n} {short}"),
    }
}

/// The run's params: its resolved config flattened (`training.learning_rate`), without
/// `tracking` (where it was recorded is not how it was trained).
fn params(job: &v1::Job) -> anyhow::Result<BTreeMap<String, String>> {
    let spec = JobSpec::from_yaml(&job.spec_yaml, &format!("run {}", job.id))?;
    let mut value = serde_json::to_value(&spec)?;
    if let Some(map) = value.as_object_mut() {
        map.remove("tracking");
    }
    Ok(trainfleet_worker::tracking::flatten_params(&value))
}

fn run_json(job: &v1::Job) -> serde_json::Value {
    let mut value = job_json(job);
    if let Some(r) = &job.run {
        value["run"] = serde_json::json!({
            "device": r.device, "threads": r.threads,
            "trainfleet_version": r.trainfleet_version, "libtorch_version": r.libtorch_version,
            "dataset_root": r.dataset_root, "dataset_version": r.dataset_version,
            "artifact_sha256": r.artifact_sha256, "run_uri": r.run_uri,
            "load_seconds": r.load_seconds, "train_seconds": r.train_seconds,
            "worker_id": r.worker_id,
        });
    }
    value["params"] = serde_json::to_value(params(job).unwrap_or_default()).unwrap_or_default();
    value
}

/// Metric names of the epochs, in a stable, readable order.
fn epoch_columns(job: &v1::Job) -> Vec<String> {
    const PREFERRED: [&str; 6] = [
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "learning_rate",
        "images_per_sec",
    ];
    let mut names: Vec<String> = PREFERRED
        .iter()
        .filter(|k| job.epochs.iter().any(|e| e.values.contains_key(**k)))
        .map(|k| k.to_string())
        .collect();
    let mut others: Vec<String> = job
        .epochs
        .iter()
        .flat_map(|e| e.values.keys().cloned())
        .filter(|k| !PREFERRED.contains(&k.as_str()))
        .collect();
    others.sort();
    others.dedup();
    names.extend(others);
    names
}

async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let job = get(&args.remote.endpoint, &args.id).await?;
    if args.remote.json {
        println!("{}", serde_json::to_string_pretty(&run_json(&job))?);
        return Ok(());
    }
    println!(
        "run {} ({}): {}{}",
        job.id,
        job_name(&job),
        state_name(job.state),
        archived_line(&job)
    );
    if let Some(r) = &job.run {
        println!(
            "  dataset: {} {}",
            dataset_of(&job),
            version_label(r.dataset_version, &r.dataset_root)
        );
        println!("  dataset root: {}", r.dataset_root);
        println!(
            "  system: {} ({} threads) on {}, trainfleet {}, libtorch {}",
            r.device, r.threads, r.worker_id, r.trainfleet_version, r.libtorch_version
        );
        println!(
            "  time: {:.1} s loading data, {:.1} s training",
            r.load_seconds, r.train_seconds
        );
    }
    if !job.epochs.is_empty() {
        let columns = epoch_columns(&job);
        let mut header = vec!["EPOCH".to_owned()];
        header.extend(columns.iter().map(|c| c.to_uppercase()));
        let rows: Vec<Vec<String>> = job
            .epochs
            .iter()
            .map(|e| {
                let mut row = vec![e.epoch.to_string()];
                row.extend(columns.iter().map(|c| {
                    e.values.get(c).map_or("-".into(), |v| match c.as_str() {
                        "images_per_sec" => format!("{v:.0}"),
                        "learning_rate" => format!("{v:.2e}"),
                        _ => format!("{v:.4}"),
                    })
                }));
                row
            })
            .collect();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        println!("\n{}", indent(&table::render(&header, &rows)));
    }
    if let Some(r) = &job.result {
        let metrics: Vec<String> = r
            .metrics
            .iter()
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .map(|(k, v)| format!("{k} {}", number(k, *v)))
            .collect();
        println!("\n  model {}: {}", r.model_id, metrics.join("  "));
        println!(
            "  {}: {}",
            if r.promoted {
                "promoted"
            } else {
                "not promoted"
            },
            r.reasons.join("; ")
        );
        if !r.report_uri.is_empty() {
            println!("  report: {}", r.report_uri);
        }
        if !r.mlflow_run_id.is_empty() {
            println!("  mlflow run: {}", r.mlflow_run_id);
        }
    }
    if let Some(r) = &job.run {
        println!("\n  artifacts: {}", r.run_uri);
        let files: BTreeMap<_, _> = r.artifact_sha256.iter().collect();
        for (name, sha) in files {
            println!("    {name:<24} sha256 {sha}");
        }
    }
    println!("\n  params:");
    for (k, v) in params(&job)? {
        println!("    {k} = {v}");
    }
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn series(job: &v1::Job) -> anyhow::Result<RunSeries> {
    let mut facts = BTreeMap::new();
    if let Some(r) = &job.run {
        facts.insert(
            "dataset".to_owned(),
            format!(
                "{} {}",
                dataset_of(job),
                version_label(r.dataset_version, &r.dataset_root)
            ),
        );
        facts.insert(
            "device".into(),
            format!("{} ({} threads)", r.device, r.threads),
        );
        facts.insert(
            "versions".into(),
            format!(
                "trainfleet {}, libtorch {}",
                r.trainfleet_version, r.libtorch_version
            ),
        );
        facts.insert("train seconds".into(), format!("{:.1}", r.train_seconds));
        if let Some(sha) = r.artifact_sha256.get("model.safetensors") {
            facts.insert("weights sha256".into(), sha.clone());
        }
    }
    if let Some(r) = &job.result {
        facts.insert("model".into(), r.model_id.clone());
        facts.insert(
            "gate".into(),
            format!(
                "{}: {}",
                if r.promoted {
                    "promoted"
                } else {
                    "not promoted"
                },
                r.reasons.join("; ")
            ),
        );
    }
    Ok(RunSeries {
        id: job.id.clone(),
        name: job_name(job),
        epochs: job
            .epochs
            .iter()
            .map(|e| (e.epoch, e.values.clone().into_iter().collect()))
            .collect(),
        params: params(job)?,
        metrics: job
            .result
            .as_ref()
            .map(|r| r.metrics.clone().into_iter().collect())
            .unwrap_or_default(),
        facts,
    })
}

async fn compare_runs(args: CompareArgs) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for id in &args.ids {
        runs.push(series(&get(&args.remote.endpoint, id).await?)?);
    }
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("compare-{}-{}.html", args.ids[0], args.ids[1])));
    let page = compare::render(&runs);
    trainfleet_worker::artifacts::write_atomically(&out, page.as_bytes())
        .with_context(|| format!("cannot write {}", out.display()))?;
    let page_path = std::fs::canonicalize(&out).unwrap_or(out);
    if args.remote.json {
        let value = serde_json::json!({
            "runs": runs.iter().map(|r| serde_json::json!({"id": r.id, "metrics": r.metrics, "params": r.params})).collect::<Vec<_>>(),
            "differing_params": compare::differing_params(&runs),
            "html": page_path,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let mut header = vec!["METRIC".to_owned()];
    header.extend(runs.iter().map(|r| r.id.clone()));
    let keys: std::collections::BTreeSet<&String> =
        runs.iter().flat_map(|r| r.metrics.keys()).collect();
    let rows: Vec<Vec<String>> = keys
        .into_iter()
        .map(|k| {
            let mut row = vec![k.clone()];
            row.extend(
                runs.iter()
                    .map(|r| r.metrics.get(k).map_or("-".into(), |v| number(k, *v))),
            );
            row
        })
        .collect();
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    println!("{}", table::render(&header_refs, &rows));
    let differing = compare::differing_params(&runs);
    let mut header = vec!["PARAM".to_owned()];
    header.extend(runs.iter().map(|r| r.id.clone()));
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    if differing.is_empty() {
        println!("\nthe same params");
    } else {
        let rows: Vec<Vec<String>> = differing
            .into_iter()
            .map(|(k, values)| std::iter::once(k).chain(values).collect())
            .collect();
        println!("\n{}", table::render(&header_refs, &rows));
    }
    println!("\ncurves overlaid: file://{}", page_path.display());
    Ok(())
}
