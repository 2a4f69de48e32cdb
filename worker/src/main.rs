//! `trainfleet-worker`: registers with a coordinator and runs the tasks it is given. Settings come
//! from a YAML file, then `TRAINFLEET_*` environment variables, then flags.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;
use trainfleet_core::config::WorkerConfig;
use trainfleet_core::job::JobSpec;
use trainfleet_core::process::{init_tracing, shutdown_signal};
use trainfleet_worker::data::DataSettings;
use trainfleet_worker::train::{Event, RunOptions};
use trainfleet_worker::{Agent, devices};

/// A trainfleet worker: pulls training tasks from a coordinator and runs them with libtorch.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// YAML settings file (see configs/worker.yaml). Give it before a subcommand:
    /// `trainfleet-worker --config worker.yaml train --config job.yaml ...`.
    #[arg(long, short, env = "TRAINFLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Coordinator to connect to: host:port or http://host:port.
    #[arg(long, env = "TRAINFLEET_COORDINATOR")]
    coordinator: Option<String>,
    /// Stable id for this worker (default: <hostname>-<random>).
    #[arg(long, env = "TRAINFLEET_WORKER_ID")]
    worker_id: Option<String>,
    /// Tasks to run at once.
    #[arg(long, env = "TRAINFLEET_SLOTS")]
    slots: Option<u32>,
    /// Where datasets are cached.
    #[arg(long, env = "TRAINFLEET_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Where run artifacts are written.
    #[arg(long, env = "TRAINFLEET_ARTIFACT_DIR")]
    artifact_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the devices this worker would report (JSON), and whether libtorch can use CUDA.
    Devices,
    /// Train a model from a job YAML on this machine, no coordinator involved.
    Train {
        /// Job spec (see configs/synth-digits.yaml).
        #[arg(long = "config", short = 'c', visible_alias = "job")]
        job: PathBuf,
        /// Output directory for the model, metrics and checkpoints.
        #[arg(long)]
        out: PathBuf,
        /// Continue from the checkpoint in --out if there is one.
        #[arg(long)]
        resume: bool,
    },
    /// Check a trained model: weights match their sha256, the model rebuilds from its card, and
    /// re-evaluating test samples reproduces the recorded results.
    Verify {
        /// A run's output directory.
        dir: PathBuf,
        /// Test samples to re-evaluate.
        #[arg(long, default_value_t = 1000)]
        samples: usize,
    },
}

impl Args {
    fn worker_config(&self) -> anyhow::Result<WorkerConfig> {
        let mut config = match &self.config {
            Some(path) => WorkerConfig::from_file(path)?,
            None => WorkerConfig::default(),
        };
        if let Some(v) = &self.coordinator {
            config.coordinator = v.clone();
        }
        if let Some(v) = &self.worker_id {
            config.worker_id = Some(v.clone());
        }
        if let Some(v) = self.slots {
            config.slots = v;
        }
        if let Some(v) = &self.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = &self.artifact_dir {
            config.artifact_dir = v.clone();
        }
        let origin = match &self.config {
            Some(path) => format!("{} with flag/environment overrides", path.display()),
            None => "flags/environment".to_owned(),
        };
        config.validate(&origin)?;
        Ok(config)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Each cause once: many errors here already say their source in their message.
            let text = trainfleet_core::error::chain(err.as_ref());
            eprintln!("trainfleet-worker: error: {text}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(Command::Devices) => print_devices(),
        Some(Command::Train {
            ref job,
            ref out,
            resume,
        }) => {
            let config = args.worker_config()?;
            let data_dir = DataSettings::new(config.data_dir, config.dataset_mirror);
            let spec = JobSpec::from_file(job)?;
            let (job, out) = (job.clone(), out.clone());
            // Ctrl-C / SIGTERM stop training within one batch; the last epoch's checkpoint stays.
            let cancel = Arc::new(AtomicBool::new(false));
            let flag = cancel.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                flag.store(true, Ordering::Relaxed);
            });
            tokio::task::spawn_blocking(move || {
                train(&spec, &job, &data_dir, &out, resume, &cancel)
            })
            .await?
        }
        Some(Command::Verify { ref dir, samples }) => {
            let config = args.worker_config()?;
            let data_dir = DataSettings::new(config.data_dir, config.dataset_mirror);
            let dir = dir.clone();
            let verified = tokio::task::spawn_blocking(move || {
                trainfleet_worker::job::verify(&dir, &data_dir, samples)
            })
            .await??;
            println!(
                "weights sha256 {} verified; {} rebuilt; {}/{} test predictions match the recorded ones; accuracy {:.2}%",
                &verified.card.weights_sha256[..16],
                verified.card.model.arch.name(),
                verified.matching,
                verified.samples,
                verified.accuracy * 100.0
            );
            if verified.matching != verified.samples {
                anyhow::bail!("the reloaded model does not reproduce its recorded predictions");
            }
            Ok(())
        }
        None => {
            let config = args.worker_config()?;
            // Probing CUDA loads the driver; do it off the async runtime.
            let devices = tokio::task::spawn_blocking(devices::detect).await?;
            let shutdown = CancellationToken::new();
            let signalled = shutdown.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                signalled.cancel();
            });
            Agent::new(config, devices).run(shutdown).await?;
            Ok(())
        }
    }
}

fn train(
    spec: &JobSpec,
    job: &Path,
    data_dir: &DataSettings,
    out: &Path,
    resume: bool,
    cancel: &AtomicBool,
) -> anyhow::Result<()> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} batches  {msg}  eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    // Epoch lines go to stdout whether or not the bar is drawn (it hides itself off a terminal).
    let say = |line: String| {
        if bar.is_hidden() {
            println!("{line}")
        } else {
            bar.println(line)
        }
    };
    let mut on_event = |event: &Event<'_>| match event {
        Event::Resumed { epoch } => say(format!(
            "resuming after epoch {epoch} from {}",
            out.display()
        )),
        Event::EpochStarted {
            epoch,
            epochs,
            batches,
        } => {
            bar.reset();
            bar.set_length(*batches);
            bar.set_prefix(format!("{epoch}/{epochs}"));
        }
        Event::Batch {
            batch,
            loss,
            images_per_sec,
            ..
        } => {
            bar.set_position(*batch);
            bar.set_message(format!("loss {loss:.4}  {images_per_sec:.0} img/s"));
        }
        Event::Epoch(r) => say(format!(
            "epoch {:>3}  train loss {:.4} acc {:.2}%  val {}  {:.0} img/s  lr {:.2e}",
            r.epoch,
            r.train_loss,
            r.train_accuracy * 100.0,
            match (r.val_loss, r.val_accuracy) {
                (Some(l), Some(a)) => format!("loss {l:.4} acc {:.2}%", a * 100.0),
                _ => "-".to_owned(),
            },
            r.images_per_sec,
            r.learning_rate
        )),
    };
    let options = RunOptions {
        resume,
        cancel: Some(cancel),
        report: true,
        ..Default::default()
    };
    let trained = match trainfleet_worker::job::run(spec, data_dir, out, &options, &mut on_event) {
        Ok(trained) => trained,
        Err(trainfleet_worker::Error::Cancelled) => {
            bar.abandon();
            eprintln!(
                "interrupted; the last completed epoch is checkpointed. Continue with:\n  \
                 trainfleet-worker train --config {} --out {} --resume",
                job.display(),
                out.display()
            );
            std::process::exit(130);
        }
        Err(e) => anyhow::bail!("{} ({})", e, job.display()),
    };
    bar.finish_and_clear();
    let test = &trained.outcome.test;
    println!(
        "test accuracy {:.2}%  macro-F1 {:.4}  loss {:.4}  ({} samples){}",
        test.accuracy * 100.0,
        test.macro_f1,
        test.loss,
        test.samples,
        test.top5_accuracy
            .map(|t| format!("  top-5 {:.2}%", t * 100.0))
            .unwrap_or_default()
    );
    if let Some(reason) = &trained.outcome.stopped_early {
        println!("stopped early: {reason}");
    }
    println!(
        "model: {} (sha256 {})",
        out.join("model.safetensors").display(),
        trained.card.weights_sha256
    );
    // The report: a failure to make it is said, and the run stands.
    let report = trained
        .report_parts
        .unwrap_or_else(|| Err("not gathered".into()))
        .map_err(trainfleet_worker::Error::Report)
        .and_then(|parts| {
            let dir = std::fs::canonicalize(out).unwrap_or_else(|_| out.to_owned());
            let report = trainfleet_worker::report::build::standalone_report(
                spec,
                &trained.card,
                &trained.outcome.epochs,
                &parts,
                &format!("file://{}", dir.display()),
            );
            trainfleet_worker::report::write(&dir.join("report"), &report)
        });
    match report {
        Ok(written) => println!("report: file://{}", written.html.display()),
        Err(e) => eprintln!("warning: no report for this run: {e}"),
    }
    Ok(())
}

fn print_devices() -> anyhow::Result<()> {
    let devices: Vec<serde_json::Value> = devices::detect()
        .iter()
        .map(|d| {
            serde_json::json!({
                "device": d.torch_name(),
                "name": d.name,
                "memory_bytes": d.memory_bytes,
                "cores": d.cores,
            })
        })
        .collect();
    let report = serde_json::json!({
        "libtorch_version": trainfleet_worker::LIBTORCH_VERSION,
        "cuda_available": devices::cuda_available(),
        "devices": devices,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
