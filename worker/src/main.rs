//! `trainfleet-worker`: registers with a coordinator and runs the tasks it is given. Settings come
//! from a YAML file, then `TRAINFLEET_*` environment variables, then flags.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use trainfleet_core::config::WorkerConfig;
use trainfleet_core::job::JobSpec;
use trainfleet_core::process::{init_tracing, shutdown_signal};
use trainfleet_worker::data::DataSettings;
use trainfleet_worker::{Agent, console, devices};

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
    /// A directory or object-store prefix jobs may read data from (repeat the flag, or
    /// comma-separate in the variable); replaces `data_roots` of the config file. The data
    /// cache (--data-dir) is always allowed.
    #[arg(
        long = "data-root",
        env = "TRAINFLEET_DATA_ROOTS",
        value_delimiter = ','
    )]
    data_roots: Vec<String>,
    /// A file with this worker's token (role worker), for a coordinator with access control on.
    #[arg(long, env = "TRAINFLEET_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 0.0.0.0:9091.
    #[arg(long, env = "TRAINFLEET_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// The CA of the coordinator's certificate (PEM): dial it with TLS.
    #[arg(long, env = "TRAINFLEET_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// This worker's client certificate (PEM; URI SAN spiffe://trainfleet/worker/<worker_id>).
    #[arg(long, env = "TRAINFLEET_TLS_CERT", requires_all = ["ca_cert", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "TRAINFLEET_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Verify the coordinators' certificate as this name (a Service name it carries) instead of
    /// the dialed host: the leader's advertised address may be a pod IP.
    #[arg(long, env = "TRAINFLEET_TLS_SERVER_NAME", requires = "ca_cert")]
    tls_server_name: Option<String>,
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
        if !self.data_roots.is_empty() {
            config.data_roots = self.data_roots.clone();
        }
        if let Some(v) = &self.token_file {
            config.token_file = Some(v.clone());
        }
        if let Some(v) = self.metrics_listen {
            config.metrics_listen = Some(v);
        }
        if let Some(ca_file) = &self.ca_cert {
            config.tls = Some(trainfleet_core::config::ClientTlsFiles {
                ca_file: ca_file.clone(),
                cert_file: self.tls_cert.clone(),
                key_file: self.tls_key.clone(),
                server_name: self.tls_server_name.clone(),
            });
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
        Some(Command::Devices) => console::print_devices(),
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
                console::train(&spec, &job, &data_dir, &out, resume, &cancel)
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
            console::print_verified(&verified)
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
            if let Some(addr) = config.metrics_listen {
                let render: trainfleet_core::metrics_http::Render =
                    std::sync::Arc::new(trainfleet_worker::telemetry::render);
                let bound = trainfleet_core::metrics_http::serve(addr, render, shutdown.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("metrics on {addr}: {e}"))?;
                tracing::info!(addr = %bound, "metrics at http://{bound}/metrics");
            }
            Agent::new(config, devices)?.run(shutdown).await?;
            Ok(())
        }
    }
}
