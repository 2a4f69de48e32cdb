//! `trainfleet-worker`: registers with a coordinator and runs the tasks it is given. Settings come
//! from a YAML file, then `TRAINFLEET_*` environment variables, then flags.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use trainfleet_core::config::WorkerConfig;
use trainfleet_core::process::{init_tracing, shutdown_signal};
use trainfleet_worker::{Agent, devices};

/// A trainfleet worker: pulls training tasks from a coordinator and runs them with libtorch.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// YAML settings file (see configs/worker.yaml).
    #[arg(long, short, env = "TRAINFLEET_CONFIG", global = true)]
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
    #[arg(long, env = "TRAINFLEET_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where run artifacts are written.
    #[arg(long, env = "TRAINFLEET_ARTIFACT_DIR")]
    artifact_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the devices this worker would report (JSON), and whether libtorch can use CUDA.
    Devices,
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
            eprintln!("trainfleet-worker: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(Command::Devices) => print_devices(),
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
