//! `trainfleet demo`: the retrain loop on synth-digits, offline, in a few minutes on 2 cores.
//!
//! An embedded coordinator and worker (as `trainfleet run`), an image folder of generated
//! digits that starts at half its size and grows step by step, registered with a policy that
//! scans on a short schedule and retrains when the data grew by 10 %. Each step prints what the
//! policy decided and why, the retrain's training and the gate's verdict; the end shows the
//! champion and its lineage. Nothing is faked: the scans, retrains, evals and promotions are the
//! ones a cluster would run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rayon::prelude::*;
use trainfleet_proto::v1;
use trainfleet_proto::v1::dataset_service_client::DatasetServiceClient;
use trainfleet_proto::v1::job_service_client::JobServiceClient;
use trainfleet_proto::v1::model_service_client::ModelServiceClient;
use trainfleet_worker::data::synth;

use crate::client::{connect, status_error};
use crate::commands::datasets::short;
use crate::commands::decisions::outcome_name;
use crate::commands::jobs::{describe, watch};
use crate::commands::run::Embedded;
use crate::table;

/// A file that marks a directory as the demo's own, so that a rerun may wipe it.
const MARKER: &str = ".trainfleet-demo";
/// The dataset's name.
const DATASET: &str = "digits";

/// Arguments of `trainfleet demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Directory for the demo's images, state and artifacts. Emptied at the start (only if an
    /// earlier demo made it, or it is empty).
    #[arg(long, default_value = ".trainfleet-demo")]
    dir: PathBuf,
    /// Images in the full dataset.
    #[arg(long, default_value_t = 6000)]
    samples: usize,
    /// Percent of the images present at the start.
    #[arg(long, default_value_t = 50)]
    start_pct: usize,
    /// Growth steps from there to 100 %.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Training epochs of each retrain.
    #[arg(long, default_value_t = 2)]
    epochs: u32,
    /// How often the coordinator scans the folder (cron with a leading seconds field).
    #[arg(long, default_value = "*/2 * * * * *")]
    schedule: String,
    /// Address of the embedded coordinator; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=100).contains(&args.start_pct) && args.samples >= 100,
        "--start-pct must be 1..=100 and --samples at least 100"
    );
    prepare(&args.dir)?;
    let data = args.dir.join("data").join(DATASET);
    println!(
        "generating {} synth-digits images (28×28, 10 classes) into {}",
        args.samples,
        data.display()
    );
    let (images, labels) = tokio::task::spawn_blocking({
        let n = args.samples;
        move || synth::generate(2026, 1, n)
    })
    .await?;
    let sizes: Vec<usize> = (0..=args.steps)
        .map(|step| {
            let pct = args.start_pct + (100 - args.start_pct) * step / args.steps.max(1);
            args.samples * pct / 100
        })
        .collect();
    write_images(&data, &images, &labels, 0..sizes[0])?;

    // The demo's worker reads the demo's own data folder and nothing else.
    let root = std::path::absolute(args.dir.join("data"))?
        .display()
        .to_string();
    let (embedded, _) = Embedded::start(&args.dir.join("cluster"), args.listen, vec![root]).await?;
    let endpoint = embedded.addr.to_string();
    println!("embedded coordinator on {endpoint}, one worker\n");
    let outcome = tokio::select! {
        r = play(&args, &endpoint, &data, &images, &labels, &sizes) => r,
        _ = trainfleet_core::process::shutdown_signal() => {
            eprintln!("interrupted; stopping (state stays consistent in {})", args.dir.display());
            Ok(())
        }
    };
    embedded.stop().await?;
    outcome
}

/// Empties `dir` if an earlier demo made it (or it is empty), and marks it.
fn prepare(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let ours = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir)?.next().is_none();
        anyhow::ensure!(
            ours || empty,
            "{} exists and is not a demo directory; choose another with --dir",
            dir.display()
        );
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot empty {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(MARKER),
        "made by `trainfleet demo`; emptied by the next one\n",
    )?;
    Ok(())
}

/// Writes images `range` as `<label>/<index>.png`.
fn write_images(
    root: &Path,
    images: &[u8],
    labels: &[u8],
    range: std::ops::Range<usize>,
) -> anyhow::Result<()> {
    const PIXELS: usize = synth::SIZE * synth::SIZE;
    for label in 0..10 {
        std::fs::create_dir_all(root.join(label.to_string()))?;
    }
    range.into_par_iter().try_for_each(|i| {
        let pixels = images[i * PIXELS..(i + 1) * PIXELS].to_vec();
        let img = image::GrayImage::from_raw(synth::SIZE as u32, synth::SIZE as u32, pixels)
            .context("image size")?;
        let path = root.join(labels[i].to_string()).join(format!("{i:05}.png"));
        img.save(&path)
            .with_context(|| format!("cannot write {}", path.display()))
    })
}

fn job_yaml(epochs: u32) -> String {
    format!(
        "name: digits-cnn\n\
         dataset: {{grayscale: true, validation_pct: 10, test_pct: 20}}\n\
         model: {{arch: simple_cnn}}\n\
         training: {{epochs: {epochs}, batch_size: 64, optimizer: adam, learning_rate: 0.001, \
         seed: 42, device: auto}}\n"
    )
}

async fn play(
    args: &DemoArgs,
    endpoint: &str,
    data: &Path,
    images: &[u8],
    labels: &[u8],
    sizes: &[usize],
) -> anyhow::Result<()> {
    let mut datasets = DatasetServiceClient::new(connect(endpoint).await?);
    let register = |schedule: String| v1::RegisterDatasetRequest {
        name: DATASET.into(),
        source: Some(v1::DatasetSource {
            location: Some(v1::dataset_source::Location::Directory(
                data.display().to_string(),
            )),
            format: "imagefolder".into(),
        }),
        policy: Some(v1::RetrainPolicy {
            on_growth_pct: 10.0,
            on_content_change: true,
            schedule,
            time_zone: "UTC".into(),
            min_interval: None,
            job_yaml: job_yaml(args.epochs),
            ..Default::default()
        }),
    };
    datasets
        .register(register(args.schedule.clone()))
        .await
        .map_err(|s| status_error("Register", s))?;
    println!(
        "registered dataset `{DATASET}`: scan on \"{}\" (UTC), retrain when it grew ≥ 10 % since \
         the champion's version\n",
        args.schedule
    );
    let mut printed = 0;
    for (step, &size) in sizes.iter().enumerate() {
        if step == 0 {
            println!(
                "── step 1: {size} images ({}% of the data); waiting for the scheduled scan",
                size * 100 / args.samples
            );
        } else {
            // New files are written aside and moved in, so a scan sees whole images.
            let staging = data.with_file_name("staging");
            write_images(&staging, images, labels, sizes[step - 1]..size)?;
            move_into(&staging, data)?;
            println!(
                "── step {}: +{} images → {size} ({}% of the data); waiting for the scheduled \
                 scan",
                step + 1,
                size - sizes[step - 1],
                size * 100 / args.samples
            );
        }
        follow(&mut datasets, endpoint, size as u64, &mut printed).await?;
    }
    // No more scans: the folder is complete, and the cluster stops without work in flight.
    datasets
        .register(register(String::new()))
        .await
        .map_err(|s| status_error("Register", s))?;
    // A scheduled scan that started before may still run; let it finish.
    let mut jobs = JobServiceClient::new(connect(endpoint).await?);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        let active = jobs
            .list(v1::ListJobsRequest {
                states: vec![
                    v1::JobState::Queued as i32,
                    v1::JobState::Training as i32,
                    v1::JobState::Evaluating as i32,
                ],
                ..Default::default()
            })
            .await
            .map_err(|s| status_error("ListJobs", s))?
            .into_inner()
            .jobs;
        if active.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    summary(endpoint).await
}

/// Moves every `<label>/<file>` of `staging` into `data`, then removes `staging`.
fn move_into(staging: &Path, data: &Path) -> anyhow::Result<()> {
    for class in std::fs::read_dir(staging)? {
        let class = class?;
        for file in std::fs::read_dir(class.path())? {
            let file = file?;
            std::fs::rename(
                file.path(),
                data.join(class.file_name()).join(file.file_name()),
            )?;
        }
    }
    std::fs::remove_dir_all(staging)?;
    Ok(())
}

/// Prints the policy's decisions as they are recorded, following each retrain it fires to
/// the gate's verdict, until the version with `samples` images has been decided and trained.
async fn follow(
    datasets: &mut DatasetServiceClient<trainfleet_proto::AuthChannel>,
    endpoint: &str,
    samples: u64,
    printed: &mut usize,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let mut decisions = datasets
            .history(v1::DatasetHistoryRequest {
                name: DATASET.into(),
                page_size: 1000,
            })
            .await
            .map_err(|s| status_error("History", s))?
            .into_inner()
            .decisions;
        decisions.reverse();
        let mut reached = false;
        for decision in decisions.into_iter().skip(*printed) {
            *printed += 1;
            let version = datasets
                .get_version(v1::GetDatasetVersionRequest {
                    name: DATASET.into(),
                    version: decision.version_number.to_string(),
                })
                .await
                .map_err(|s| status_error("GetVersion", s))?
                .into_inner();
            println!(
                "   version {} ({}, {} images): {} by {}: {}",
                decision.version_number,
                short(&decision.version_root),
                version.sample_count,
                outcome_name(decision.outcome).to_uppercase(),
                decision.trigger,
                decision.reason
            );
            if decision.outcome == v1::retrain_decision::Outcome::Fired as i32 {
                let done = watch(endpoint, &decision.job_id, false).await?;
                for line in describe(&done).lines().filter(|l| {
                    l.contains("model ") || l.contains("promoted") || l.contains("error")
                }) {
                    println!("   {}", line.trim());
                }
            }
            reached |= version.sample_count == samples;
        }
        if reached {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no decision about the {samples}-image version within 10 minutes; is the worker \
             scanning?"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every model with its gate verdict, then the champion and its lineage.
async fn summary(endpoint: &str) -> anyhow::Result<()> {
    let mut models = ModelServiceClient::new(connect(endpoint).await?);
    let mut all = models
        .list(v1::ListModelsRequest {
            dataset: DATASET.into(),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .map_err(|s| status_error("ListModels", s))?
        .into_inner()
        .models;
    all.reverse();
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|m| {
            let gate = m.gate.clone().unwrap_or_default();
            vec![
                m.id.clone(),
                format!("v{}", m.dataset_version_number),
                m.metrics
                    .get("eval_samples")
                    .map_or("-".into(), |n| format!("{n}")),
                m.metrics
                    .get("accuracy")
                    .map_or("-".into(), |a| format!("{a:.4}")),
                if gate.promoted { "yes" } else { "no" }.into(),
                if m.champion { "*" } else { "" }.into(),
            ]
        })
        .collect();
    println!(
        "\n{}",
        table::render(
            &[
                "MODEL", "DATA", "TEST N", "ACCURACY", "PROMOTED", "CHAMPION"
            ],
            &rows
        )
    );
    let champion = models
        .get_champion(v1::GetChampionRequest {
            dataset: DATASET.into(),
        })
        .await
        .map_err(|s| status_error("GetChampion", s))?
        .into_inner();
    println!(
        "\nchampion {}: accuracy {:.4} on version {}'s test split",
        champion.id,
        champion
            .metrics
            .get("accuracy")
            .copied()
            .unwrap_or_default(),
        champion.dataset_version_number
    );
    println!("  dataset version  {}", champion.dataset_version);
    println!("  config hash      {}", champion.config_hash);
    println!("  weights          {}", champion.artifact_uri);
    println!("  weights sha256   {}", champion.artifact_sha256);
    if !champion.report_uri.is_empty() {
        println!("  report           {}", champion.report_uri);
    }
    let mut lineage = vec![format!(
        "{} (v{})",
        champion.id, champion.dataset_version_number
    )];
    let mut parent = champion.parent_id.clone();
    while !parent.is_empty() {
        let m = models
            .get(v1::GetModelRequest { id: parent.clone() })
            .await
            .map_err(|s| status_error("GetModel", s))?
            .into_inner();
        lineage.push(format!("{} (v{})", m.id, m.dataset_version_number));
        parent = m.parent_id;
    }
    lineage.reverse();
    println!("  lineage          {}", lineage.join(" → "));
    println!(
        "\nexplore: trainfleet dataset history {DATASET}, trainfleet models, trainfleet runs \
         list, with `trainfleet run --serve --state-dir <dir>/cluster` to keep the cluster up"
    );
    Ok(())
}
