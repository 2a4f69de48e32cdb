//! Dataset verbs: `dataset register|list|scan|versions|report`, and the champion pointer's
//! `promote` and `rollback` (`retrain` and `dataset history` are in `decisions.rs`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use trainfleet_proto::v1;
use trainfleet_proto::v1::dataset_service_client::DatasetServiceClient;
use trainfleet_proto::v1::model_service_client::ModelServiceClient;

use crate::cli::Remote;
use crate::client::{connect, connect_streaming, status_error};
use crate::table;

/// `trainfleet dataset ...`.
#[derive(Debug, clap::Subcommand)]
pub enum DatasetCommand {
    /// Register a directory (one sub-directory per class) with its retrain policy, or replace
    /// the policy of a registered one (its versions stay).
    Register(RegisterArgs),
    /// Registered datasets.
    List(ListArgs),
    /// Scan now (on a worker); a new version is recorded only when the content changed, and
    /// the retrain policy is applied to it.
    Scan(ScanArgs),
    /// Versions, newest first.
    Versions(NameArgs),
    /// Every retrain decision, newest first: fired or not, and why.
    History(NameArgs),
    /// Before training: sample images of each class and the class distribution per split, as
    /// an offline HTML page and PNGs, from the data as this machine loads it.
    Report(ReportArgs),
}

/// Arguments of `dataset report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    remote: Remote,
    /// The registered dataset.
    name: String,
    /// Directory to write the report to (default: ./<name>-report).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Cache for builtin downloads and generated data (as `trainfleet run` uses it).
    #[arg(long, env = "TRAINFLEET_DATA_DIR", default_value = ".trainfleet/data")]
    data_dir: PathBuf,
}

/// Arguments of `dataset register`.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    remote: Remote,
    /// Name: 1..=64 characters of [a-z0-9-].
    name: String,
    /// A directory (as the coordinator and workers see it).
    #[arg(long, group = "source", required_unless_present_any = ["builtin", "url"])]
    dir: Option<PathBuf>,
    /// Layout of the directory or prefix: imagefolder (one sub-directory per class) or idx.
    #[arg(long, default_value = "imagefolder")]
    format: String,
    /// A builtin dataset: mnist, fashion-mnist, kmnist, cifar10, cifar100, synth-digits.
    #[arg(long, group = "source")]
    builtin: Option<String>,
    /// An image folder in an object store: s3://bucket/prefix, file:///srv/prefix, ...
    #[arg(long, group = "source")]
    url: Option<String>,
    /// Retrain when the sample count grew by at least this percentage since the champion's
    /// version (0 disables).
    #[arg(long, default_value_t = 10.0)]
    on_growth_pct: f64,
    /// Do not retrain when the content changed with the same sample count.
    #[arg(long)]
    no_content_change: bool,
    /// Cron schedule of scans: 5 fields ("0 0 * * *"), or 6 with leading seconds.
    #[arg(long, default_value = "")]
    schedule: String,
    /// IANA time zone of the schedule (default UTC).
    #[arg(long, default_value = "")]
    time_zone: String,
    /// Least time between two retrains, e.g. "1h".
    #[arg(long, value_parser = humantime::parse_duration)]
    min_interval: Option<Duration>,
    /// Do not train a version with a class holding fewer usable samples than this (0: no such
    /// rule; default 1: no class left empty).
    #[arg(long, default_value_t = 1)]
    min_samples_per_class: u64,
    /// The job YAML a retrain runs (its `dataset` is set to this dataset and pinned version).
    #[arg(long)]
    job: Option<PathBuf>,
    /// Retrain with this sweep (a sweep spec without `job`: its base job is --job) instead of
    /// the job alone; the best trial meets the champion.
    #[arg(long, requires = "job")]
    sweep: Option<PathBuf>,
    /// Configurations of the previous retrain sweep that the next one proposes first (0: none).
    #[arg(long, default_value_t = 3, requires = "sweep")]
    warm_start_top_k: u32,
    /// Trials of a warm-started retrain sweep (0: the spec's max_trials).
    #[arg(long, default_value_t = 0, requires = "sweep")]
    warm_max_trials: u32,
}

/// Arguments of `dataset list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    remote: Remote,
}

/// Arguments of `dataset scan`.
#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    #[command(flatten)]
    remote: Remote,
    /// Dataset name.
    name: String,
    /// Re-read every file, even those whose size and mtime are unchanged.
    #[arg(long)]
    full: bool,
}

/// Arguments of verbs that take a dataset name.
#[derive(Debug, clap::Args)]
pub struct NameArgs {
    #[command(flatten)]
    pub(super) remote: Remote,
    /// Dataset name.
    pub(super) name: String,
}

/// Arguments of `trainfleet promote`.
#[derive(Debug, clap::Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    remote: Remote,
    /// The model.
    model: String,
    /// Why (recorded).
    #[arg(long)]
    reason: String,
    /// Only if the champion is this model now ("none": only if there is none).
    #[arg(long, default_value = "")]
    expect: String,
}

/// Arguments of `trainfleet rollback`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    remote: Remote,
    /// The dataset whose champion moves back.
    dataset: String,
    /// Why (recorded).
    #[arg(long)]
    reason: String,
    /// Only if the champion is this model now.
    #[arg(long, default_value = "")]
    expect: String,
}

/// Runs a `dataset` subcommand.
pub async fn run(command: DatasetCommand) -> anyhow::Result<()> {
    match command {
        DatasetCommand::Register(args) => register(args).await,
        DatasetCommand::List(args) => list(args).await,
        DatasetCommand::Scan(args) => scan(args).await,
        DatasetCommand::Versions(args) => versions(args).await,
        DatasetCommand::History(args) => super::decisions::history(args).await,
        DatasetCommand::Report(args) => report(args).await,
    }
}

/// `dataset report`: loads the registered dataset here, as a training job would, and writes
/// its samples and distribution.
async fn report(args: ReportArgs) -> anyhow::Result<()> {
    let mut datasets = client(&args.remote.endpoint).await?;
    let dataset = datasets
        .list(v1::ListDatasetsRequest {})
        .await
        .map_err(|s| status_error("ListDatasets", s))?
        .into_inner()
        .datasets
        .into_iter()
        .find(|d| d.name == args.name)
        .with_context(|| {
            format!(
                "no dataset named {:?} is registered (see `trainfleet dataset list`)",
                args.name
            )
        })?;
    let source = dataset.source.unwrap_or_default();
    use v1::dataset_source::Location;
    let yaml = match source.location {
        Some(Location::Builtin(builtin)) => format!("builtin: {builtin}\n"),
        Some(Location::Directory(dir)) => {
            let format = if source.format.is_empty() {
                "imagefolder"
            } else {
                &source.format
            };
            format!("format: {format}\npath: {}\n", serde_json::to_string(&dir)?)
        }
        Some(Location::ObjectStoreUrl(url)) => anyhow::bail!(
            "{} is an object-store prefix ({url}); `dataset report` reads data from this \
             machine: copy the prefix here and report on the copy",
            args.name
        ),
        None => anyhow::bail!("the coordinator sent no source for {}", args.name),
    };
    let spec: trainfleet_core::job::DatasetSpec = serde_yaml::from_str(&yaml)
        .with_context(|| format!("the dataset section built for {}", args.name))?;
    let latest = datasets
        .list_versions(v1::ListDatasetVersionsRequest {
            name: args.name.clone(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .map_err(|s| status_error("ListVersions", s))?
        .into_inner()
        .versions
        .into_iter()
        .next();
    let settings = trainfleet_worker::data::DataSettings::new(args.data_dir.clone(), None);
    let name = args.name.clone();
    let mut report = tokio::task::spawn_blocking(move || {
        let loaded =
            trainfleet_worker::data::load_with(&spec, &settings.dir, &settings.downloader)?;
        trainfleet_worker::report::dataset::collect(&name, &loaded)
    })
    .await??;
    if let Some(v) = latest {
        report.dataset.version = v.number;
        report.recorded_root = v.root_hash;
    }
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{}-report", args.name)));
    let written = trainfleet_worker::report::dataset::write(&out, &report)?;
    let page = std::fs::canonicalize(&written.html).unwrap_or(written.html);
    if args.remote.json {
        return print_json(&json!({
            "html": page, "files": written.files, "classes": report.classes,
            "counts": report.dataset.counts, "root": report.dataset.root,
            "version": report.dataset.version,
            "skipped_count": report.dataset.skipped_count,
            "skipped": report.dataset.skipped.iter()
                .map(|(path, reason)| json!({"path": path, "reason": reason}))
                .collect::<Vec<_>>(),
        }));
    }
    for (split, counts) in &report.dataset.counts {
        println!("{split:<5} {:>7} samples", counts.iter().sum::<u64>());
    }
    println!(
        "{} classes, images {:?}",
        report.classes.len(),
        report.shape
    );
    for (path, reason) in &report.dataset.skipped {
        println!("left out: {path}: {reason}");
    }
    let more = report
        .dataset
        .skipped_count
        .saturating_sub(report.dataset.skipped.len() as u64);
    if more > 0 {
        println!("left out: and {more} more");
    }
    println!("report: file://{}", page.display());
    Ok(())
}

pub(super) async fn client(
    endpoint: &str,
) -> anyhow::Result<DatasetServiceClient<trainfleet_proto::AuthChannel>> {
    Ok(DatasetServiceClient::new(connect(endpoint).await?))
}

pub(super) fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn register(args: RegisterArgs) -> anyhow::Result<()> {
    let job_yaml = match &args.job {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the job file {}", path.display()))?,
        None => String::new(),
    };
    let sweep_yaml = match &args.sweep {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the sweep file {}", path.display()))?,
        None => String::new(),
    };
    let dataset = client(&args.remote.endpoint)
        .await?
        .register(v1::RegisterDatasetRequest {
            name: args.name,
            source: Some(v1::DatasetSource {
                location: Some(match (&args.dir, &args.builtin, &args.url) {
                    (Some(dir), _, _) => {
                        v1::dataset_source::Location::Directory(dir.display().to_string())
                    }
                    (_, Some(name), _) => v1::dataset_source::Location::Builtin(name.clone()),
                    (_, _, Some(url)) => v1::dataset_source::Location::ObjectStoreUrl(url.clone()),
                    _ => anyhow::bail!("give --dir, --builtin or --url"),
                }),
                format: if args.builtin.is_some() {
                    String::new()
                } else {
                    args.format.clone()
                },
            }),
            policy: Some(v1::RetrainPolicy {
                on_growth_pct: args.on_growth_pct,
                on_content_change: !args.no_content_change,
                schedule: args.schedule,
                time_zone: args.time_zone,
                min_interval: args
                    .min_interval
                    .and_then(|d| prost_types::Duration::try_from(d).ok()),
                job_yaml,
                min_samples_per_class: Some(args.min_samples_per_class),
                warm_start_top_k: args.sweep.is_some().then_some(args.warm_start_top_k),
                warm_max_trials: args.warm_max_trials,
                sweep_yaml,
            }),
        })
        .await
        .map_err(|s| status_error("Register", s))?
        .into_inner();
    if args.remote.json {
        return print_json(&dataset_json(&dataset));
    }
    println!("registered {}", dataset.name);
    Ok(())
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let datasets = client(&args.remote.endpoint)
        .await?
        .list(v1::ListDatasetsRequest {})
        .await
        .map_err(|s| status_error("ListDatasets", s))?
        .into_inner()
        .datasets;
    if args.remote.json {
        return print_json(&json!(
            datasets.iter().map(dataset_json).collect::<Vec<_>>()
        ));
    }
    if datasets.is_empty() {
        println!("no datasets");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = datasets
        .iter()
        .map(|d| {
            let policy = d.policy.clone().unwrap_or_default();
            vec![
                d.name.clone(),
                source(d),
                short(&d.latest_version),
                policy_summary(&policy),
                format!("{}{}", d.pending_retrain_job, d.pending_retrain_sweep),
            ]
        })
        .collect();
    println!(
        "{}",
        table::render(
            &["DATASET", "SOURCE", "LATEST", "POLICY", "PENDING RETRAIN"],
            &rows
        )
    );
    Ok(())
}

async fn scan(args: ScanArgs) -> anyhow::Result<()> {
    // A big scan can take longer than a unary call's usual deadline.
    let answer = DatasetServiceClient::new(connect_streaming(&args.remote.endpoint).await?)
        .scan(v1::ScanDatasetRequest {
            name: args.name.clone(),
            full: args.full,
        })
        .await
        .map_err(|s| status_error("Scan", s))?
        .into_inner();
    let version = answer.version.unwrap_or_default();
    if args.remote.json {
        return print_json(&json!({"changed": answer.changed, "version": version_json(&version)}));
    }
    if answer.changed {
        println!(
            "{}: new version {} ({}): {} samples, +{} -{} ~{}",
            args.name,
            version.number,
            short(&version.root_hash),
            version.sample_count,
            version.added,
            version.removed,
            version.changed
        );
    } else {
        println!(
            "{}: unchanged, still version {} ({})",
            args.name,
            version.number,
            short(&version.root_hash)
        );
    }
    Ok(())
}

async fn versions(args: NameArgs) -> anyhow::Result<()> {
    let versions = client(&args.remote.endpoint)
        .await?
        .list_versions(v1::ListDatasetVersionsRequest {
            name: args.name,
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .map_err(|s| status_error("ListVersions", s))?
        .into_inner()
        .versions;
    if args.remote.json {
        return print_json(&json!(
            versions.iter().map(version_json).collect::<Vec<_>>()
        ));
    }
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            let splits = v.counts.as_ref().map_or(String::new(), |c| {
                let mut s: Vec<_> = c.by_split.iter().map(|(k, n)| format!("{k} {n}")).collect();
                s.sort();
                s.join(", ")
            });
            vec![
                v.number.to_string(),
                short(&v.root_hash),
                v.sample_count.to_string(),
                format!("+{} -{} ~{}", v.added, v.removed, v.changed),
                splits,
                time(&v.created_at),
            ]
        })
        .collect();
    println!(
        "{}",
        table::render(
            &["VERSION", "ROOT", "SAMPLES", "DIFF", "SPLITS", "SCANNED"],
            &rows
        )
    );
    for v in versions.iter().filter(|v| v.skipped_count > 0) {
        let noun = if v.skipped_count == 1 {
            "entry"
        } else {
            "entries"
        };
        println!("version {}: {} {noun} left out", v.number, v.skipped_count);
        for entry in &v.skipped {
            println!("  {}: {}", entry.path, entry.reason);
        }
        let more = v.skipped_count.saturating_sub(v.skipped.len() as u64);
        if more > 0 {
            println!("  … and {more} more (the scan's log lists them)");
        }
    }
    Ok(())
}

/// `trainfleet promote`: moves the champion pointer by hand.
pub async fn promote(args: PromoteArgs) -> anyhow::Result<()> {
    let model = ModelServiceClient::new(connect(&args.remote.endpoint).await?)
        .promote(v1::PromoteModelRequest {
            id: args.model,
            reason: args.reason,
            expected_champion: args.expect,
        })
        .await
        .map_err(|s| status_error("Promote", s))?
        .into_inner();
    if args.remote.json {
        return print_json(&json!({"champion": model.id, "dataset": model.dataset}));
    }
    println!("{} is now the champion of {}", model.id, model.dataset);
    Ok(())
}

/// `trainfleet rollback`: moves the champion pointer back.
pub async fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let model = ModelServiceClient::new(connect(&args.remote.endpoint).await?)
        .rollback(v1::RollbackRequest {
            dataset: args.dataset,
            reason: args.reason,
            expected_champion: args.expect,
        })
        .await
        .map_err(|s| status_error("Rollback", s))?
        .into_inner();
    if args.remote.json {
        return print_json(&json!({"champion": model.id, "dataset": model.dataset}));
    }
    println!(
        "rolled back: {} is the champion of {} again",
        model.id, model.dataset
    );
    Ok(())
}

/// A hash shortened for tables.
pub fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}

pub(super) fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref().map(|t| t.to_string()).unwrap_or_default()
}

fn source(d: &v1::Dataset) -> String {
    use v1::dataset_source::Location;
    match d.source.as_ref().and_then(|s| s.location.clone()) {
        Some(Location::Directory(dir)) => dir,
        Some(Location::Builtin(b)) => format!("builtin {b}"),
        Some(Location::ObjectStoreUrl(u)) => u,
        None => String::new(),
    }
}

fn policy_summary(p: &v1::RetrainPolicy) -> String {
    let mut parts = Vec::new();
    if p.on_growth_pct > 0.0 {
        parts.push(format!("growth ≥ {}%", p.on_growth_pct));
    }
    if p.on_content_change {
        parts.push("content change".into());
    }
    if !p.schedule.is_empty() {
        let zone = if p.time_zone.is_empty() {
            "UTC"
        } else {
            &p.time_zone
        };
        parts.push(format!("scan \"{}\" {zone}", p.schedule));
    }
    if let Some(d) = p.min_interval.and_then(|d| Duration::try_from(d).ok())
        && !d.is_zero()
    {
        parts.push(format!("min {}", humantime::format_duration(d)));
    }
    if !p.sweep_yaml.is_empty() {
        let k = p.warm_start_top_k.unwrap_or(3);
        parts.push(format!("retrains with a sweep (warm start: top {k})"));
    }
    match p.min_samples_per_class.unwrap_or(1) {
        0 => {}
        1 => parts.push("no empty class".into()),
        n => parts.push(format!("≥ {n} per class")),
    }
    parts.join(", ")
}

fn dataset_json(d: &v1::Dataset) -> serde_json::Value {
    let p = d.policy.clone().unwrap_or_default();
    json!({
        "name": d.name, "source": source(d), "latest_version": d.latest_version,
        "pending_retrain_job": d.pending_retrain_job,
        "pending_retrain_sweep": d.pending_retrain_sweep,
        "last_retrain_at": d.last_retrain_at.map(|t| t.to_string()),
        "next_scan_at": d.next_scan_at.map(|t| t.to_string()),
        "policy": {
            "on_growth_pct": p.on_growth_pct, "on_content_change": p.on_content_change,
            "schedule": p.schedule, "time_zone": p.time_zone,
            "min_interval_s": p.min_interval.map(|d| d.seconds),
            "min_samples_per_class": p.min_samples_per_class.unwrap_or(1),
            "job_yaml": p.job_yaml, "sweep_yaml": p.sweep_yaml,
            "warm_start_top_k": p.warm_start_top_k, "warm_max_trials": p.warm_max_trials,
        },
    })
}

fn version_json(v: &v1::DatasetVersion) -> serde_json::Value {
    let counts = v.counts.clone().unwrap_or_default();
    json!({
        "dataset": v.dataset, "number": v.number, "root": v.root_hash,
        "samples": v.sample_count, "by_class": counts.by_class, "by_split": counts.by_split,
        "added": v.added, "removed": v.removed, "changed": v.changed,
        "manifest_uri": v.manifest_uri, "created_at": time(&v.created_at),
        "skipped_count": v.skipped_count,
        "skipped": v.skipped.iter().map(|e| json!({"path": e.path, "reason": e.reason})).collect::<Vec<_>>(),
    })
}
