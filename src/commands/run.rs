//! `trainfleet run`: a coordinator and a worker in one process, on loopback, with no services.
//!
//! With a job file it trains, evaluates against the dataset's champion and records the model,
//! with progress; state lives in `--state-dir`, so a second run compares with the first run's
//! model. Without one it shows the two halves connected; with `--serve` it stays up so that the
//! API can be explored with grpcurl or `buf curl`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use trainfleet_coordinator::Coordinator;
use trainfleet_core::config::{CoordinatorConfig, WorkerConfig};
use trainfleet_proto::v1;
use trainfleet_proto::v1::cluster_service_client::ClusterServiceClient;
use trainfleet_worker::{Agent, devices};

use trainfleet_proto::v1::job_service_client::JobServiceClient;

use crate::client::{connect, status_error};
use crate::commands::jobs::{finished, submit_spec, watch};
use crate::commands::workers::workers_table;

/// How long `run` waits for its worker to register before it gives up.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `trainfleet run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A job YAML to train, evaluate against the current champion and record (e.g.
    /// configs/synth-digits.yaml). Without it, `run` shows the embedded cluster and stops.
    config: Option<PathBuf>,
    /// Address of the embedded coordinator; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Directory for state and artifacts.
    #[arg(long, env = "TRAINFLEET_STATE_DIR", default_value = ".trainfleet")]
    state_dir: PathBuf,
    /// Keep serving until Ctrl-C, to explore the API from another terminal.
    #[arg(long)]
    serve: bool,
    /// A directory or object-store prefix jobs may read data from, besides the current
    /// directory (repeat for more). Anything else a job names is refused.
    #[arg(
        long = "data-root",
        env = "TRAINFLEET_DATA_ROOTS",
        value_delimiter = ','
    )]
    data_roots: Vec<String>,
}

/// A coordinator and a worker running in this process.
pub struct Embedded {
    /// The coordinator's address.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    coordinator: tokio::task::JoinHandle<trainfleet_coordinator::Result<()>>,
    worker: tokio::task::JoinHandle<trainfleet_worker::Result<()>>,
}

impl Embedded {
    /// Starts both with their state under `state_dir`, and waits for the worker to register;
    /// returns the workers as listed. Jobs may read data under `data_roots` (and the worker's
    /// data cache).
    pub async fn start(
        state_dir: &std::path::Path,
        listen: SocketAddr,
        data_roots: Vec<String>,
    ) -> anyhow::Result<(Self, Vec<v1::WorkerInfo>)> {
        let config = CoordinatorConfig {
            listen,
            heartbeat_interval: Duration::from_secs(1),
            lease_timeout: Duration::from_secs(5),
            data_dir: state_dir.join("state"),
            artifacts: state_dir.join("artifacts").display().to_string(),
            ..CoordinatorConfig::default()
        };
        config.validate("trainfleet run")?;
        let coordinator = Coordinator::bind(config).await?;
        let addr = coordinator.local_addr();
        let shutdown = CancellationToken::new();
        let coordinator = tokio::spawn(coordinator.serve(shutdown.clone()));
        let worker_config = WorkerConfig {
            coordinator: addr.to_string(),
            worker_id: Some("local".to_owned()),
            reconnect_initial: Duration::from_millis(50),
            data_dir: state_dir.join("data"),
            artifact_dir: state_dir.join("work"),
            data_roots,
            ..WorkerConfig::default()
        };
        let detected = tokio::task::spawn_blocking(devices::detect).await?;
        let agent = match Agent::new(worker_config, detected) {
            Ok(agent) => agent,
            Err(e) => {
                shutdown.cancel();
                let _ = coordinator.await;
                return Err(e.into());
            }
        };
        let worker = tokio::spawn(agent.run(shutdown.clone()));
        let embedded = Self {
            addr,
            shutdown,
            coordinator,
            worker,
        };
        match wait_for_worker(addr, "local").await {
            Ok(workers) => Ok((embedded, workers)),
            Err(e) => {
                embedded.stop().await?;
                Err(e)
            }
        }
    }

    /// Stops the worker and the coordinator (the journal is flushed first).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.worker.await??;
        self.coordinator.await??;
        Ok(())
    }
}

/// Starts the embedded cluster, waits for the worker, prints it, and stops (or serves).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // On one's own machine the current directory is the natural place for data; anything else
    // is named with --data-root.
    let mut roots = vec![std::env::current_dir()?.display().to_string()];
    roots.extend(args.data_roots.iter().cloned());
    let (embedded, workers) = Embedded::start(&args.state_dir, args.listen, roots).await?;
    let addr = embedded.addr;
    let outcome = async {
        println!("coordinator listening on {addr} (embedded, standalone)");
        println!("{}", workers_table(&workers));
        if let Some(path) = &args.config {
            return run_job(addr, path).await;
        }
        if args.serve {
            println!(
                "\nserving until Ctrl-C; try:\n  grpcurl -plaintext {addr} list\n  \
                 grpcurl -plaintext {addr} trainfleet.v1.ClusterService/ListWorkers"
            );
            trainfleet_core::process::shutdown_signal().await;
        }
        anyhow::Ok(())
    }
    .await;
    embedded.stop().await?;
    outcome
}

/// Submits the job in `path` to the embedded coordinator and follows it to the end. Ctrl-C
/// cancels it (the worker stops within one batch) and waits for that to be recorded.
async fn run_job(addr: SocketAddr, path: &std::path::Path) -> anyhow::Result<()> {
    let yaml = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the job file {}", path.display()))?;
    let endpoint = addr.to_string();
    let job = submit_spec(
        connect(&endpoint).await?,
        v1::submit_job_request::Spec::Yaml(yaml),
        String::new(),
    )
    .await?;
    println!("job {} queued", job.id);
    let follow = watch(&endpoint, &job.id, false);
    tokio::pin!(follow);
    let done = tokio::select! {
        done = &mut follow => done?,
        _ = trainfleet_core::process::shutdown_signal() => {
            eprintln!("interrupted: cancelling {} (state stays consistent)", job.id);
            JobServiceClient::new(connect(&endpoint).await?)
                .cancel(v1::CancelJobRequest { id: job.id.clone(), reason: "Ctrl-C".into() })
                .await
                .map_err(|s| status_error("Cancel", s))?;
            follow.await?
        }
    };
    finished(&done, false)
}

async fn wait_for_worker(addr: SocketAddr, worker_id: &str) -> anyhow::Result<Vec<v1::WorkerInfo>> {
    let mut client = ClusterServiceClient::new(connect(&addr.to_string()).await?);
    let started = tokio::time::Instant::now();
    loop {
        let workers = client
            .list_workers(v1::ListWorkersRequest {
                state: v1::WorkerState::Alive as i32,
            })
            .await
            .map_err(|s| status_error("ListWorkers", s))?
            .into_inner()
            .workers;
        if workers.iter().any(|w| w.worker_id == worker_id) {
            return Ok(workers);
        }
        if started.elapsed() > REGISTER_TIMEOUT {
            return None.with_context(|| {
                format!("the embedded worker did not register within {REGISTER_TIMEOUT:?}; see the log above")
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
