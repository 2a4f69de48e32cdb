//! Sweep overhead benchmark: what does the control plane cost per trivial trial?
//!
//! Starts the release `trainfleet-coordinator` on loopback (its embedded store, durable writes),
//! connects `--workers` instant trainers and starts a random sweep of `--trials` trials through
//! SweepService. An instant trainer (`InstantTrainer`, a fake named so: it stands in for
//! libtorch, which is not what this measures) speaks the real WorkerService; for each train task
//! it writes the run's manifest into the artifact store (the coordinator reads it, as it does a
//! real run's) and reports one epoch whose validation accuracy is a function of the trial's
//! learning rate. The time is from Start to the sweep's end as `Get` sees it; per-trial
//! overhead is that time divided by the trials. `bench/sweep_overhead.sh` runs this beside Ray
//! Tune's equivalent (`bench/sweep_ray.py`) in the same run.
//!
//! Prints one JSON object.

#[path = "common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use common::{Stopped, channel, register, wait_addr};
use trainfleet_core::artifacts::{Manifest, run_prefix};
use trainfleet_core::job::JobSpec;
use trainfleet_proto::v1;
use trainfleet_proto::v1::sweep_service_client::SweepServiceClient;
use trainfleet_proto::v1::worker_service_client::WorkerServiceClient;

#[derive(Debug, Parser)]
struct Args {
    /// The coordinator binary.
    #[arg(long, default_value = "target/release/trainfleet-coordinator")]
    coordinator: PathBuf,
    /// Instant trainers (each one slot), and the sweep's parallelism.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Trials in the sweep.
    #[arg(long, default_value_t = 100)]
    trials: u32,
    /// Sweeps run one after another (the figures are each sweep's).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// A fake trainer: completes every train task at once with a manifest and one epoch.
async fn instant_trainer(addr: String, id: String, artifacts: PathBuf) -> anyhow::Result<()> {
    let mut client = WorkerServiceClient::new(channel(&addr).await?);
    let session = register(&mut client, &id).await?;
    loop {
        let Some(task) = client
            .poll_task(v1::PollTaskRequest {
                worker_id: id.clone(),
                session_id: session.clone(),
                free_slots: 1,
                max_wait: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
            })
            .await?
            .into_inner()
            .task
        else {
            continue;
        };
        let spec = JobSpec::from_yaml(&task.spec_yaml, "task")?;
        let prefix = run_prefix(&task.job_id, task.attempt);
        write_manifest(&artifacts, &prefix, &task)?;
        let accuracy = 1.0 / (1.0 + (spec.training.learning_rate.log10() + 2.5).powi(2));
        let detail = serde_json::json!({
            "epochs": [{"epoch": 1, "values": {"val_accuracy": accuracy}}],
        });
        client
            .complete_task(v1::CompleteTaskRequest {
                worker_id: id.clone(),
                session_id: session.clone(),
                task_id: task.id,
                attempt: task.attempt,
                outcome: Some(v1::complete_task_request::Outcome::Success(
                    v1::TaskResult {
                        metrics: [("accuracy".to_owned(), accuracy)].into_iter().collect(),
                        artifacts: [(
                            "run".to_owned(),
                            format!("file://{}/{prefix}", artifacts.display()),
                        )]
                        .into_iter()
                        .collect(),
                        detail_json: detail.to_string(),
                    },
                )),
                permanent: false,
                poll_next: None,
            })
            .await?;
    }
}

fn write_manifest(artifacts: &Path, prefix: &str, task: &v1::Task) -> anyhow::Result<()> {
    let dir = artifacts.join(prefix);
    std::fs::create_dir_all(&dir)?;
    let manifest = Manifest {
        job_id: task.job_id.clone(),
        attempt: task.attempt,
        files: Default::default(),
        dataset_root: "bench".into(),
        code_version: "bench".into(),
        libtorch_version: "none (instant trainer)".into(),
    };
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&manifest)?)?;
    Ok(())
}

fn sweep_yaml(trials: u32, parallelism: usize, seed: usize) -> String {
    format!(
        "name: overhead\n\
         job:\n  dataset: {{builtin: synth-digits}}\n  model: {{arch: simple_cnn}}\n  training: {{epochs: 1}}\n\
         space:\n  training.learning_rate: {{log: [0.0001, 0.1]}}\n\
         strategy: random\nmax_trials: {trials}\nparallelism: {parallelism}\nseed: {seed}\npromote_best: false\n"
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let artifacts = dir.path().join("artifacts").canonicalize().or_else(|_| {
        std::fs::create_dir_all(dir.path().join("artifacts"))?;
        dir.path().join("artifacts").canonicalize()
    })?;
    let addr_file = dir.path().join("addr");
    let child = Command::new(&args.coordinator)
        .args(["--listen", "127.0.0.1:0", "--addr-file"])
        .arg(&addr_file)
        .arg("--data-dir")
        .arg(dir.path().join("state"))
        .arg("--artifacts")
        .arg(&artifacts)
        .args(["--heartbeat-interval", "1s", "--lease-timeout", "60s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", args.coordinator.display()))?;
    let _coordinator = Stopped(child);
    let addr = wait_addr(&addr_file)?;
    for i in 0..args.workers {
        tokio::spawn(instant_trainer(
            addr.clone(),
            format!("instant-{i}"),
            artifacts.clone(),
        ));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sweeps = SweepServiceClient::new(channel(&addr).await?);
    let mut per_trial_ms = Vec::new();
    for round in 0..args.rounds {
        let started = Instant::now();
        let sweep = sweeps
            .start(v1::StartSweepRequest {
                spec: Some(v1::start_sweep_request::Spec::SpecYaml(sweep_yaml(
                    args.trials,
                    args.workers,
                    round,
                ))),
                idempotency_key: String::new(),
            })
            .await?
            .into_inner();
        let done = loop {
            let s = sweeps
                .get(v1::GetSweepRequest {
                    id: sweep.id.clone(),
                })
                .await?
                .into_inner();
            if s.state != v1::SweepState::Running as i32 {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let took = started.elapsed();
        anyhow::ensure!(
            done.state == v1::SweepState::Succeeded as i32
                && done.trials.len() == args.trials as usize,
            "the sweep ended {} with {} trials: {}",
            done.state,
            done.trials.len(),
            done.error
        );
        per_trial_ms.push(took.as_secs_f64() * 1e3 / f64::from(args.trials));
    }
    per_trial_ms.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "system": "trainfleet",
            "trials": args.trials,
            "workers": args.workers,
            "rounds": args.rounds,
            "per_trial_ms_median": per_trial_ms[per_trial_ms.len() / 2],
            "per_trial_ms_all": per_trial_ms,
        })
    );
    Ok(())
}
