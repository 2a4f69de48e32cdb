//! `trainfleet run`: a coordinator and a worker in one process, on loopback, with no services.
//!
//! Until the training engine lands this shows the two halves finding each other; with `--serve`
//! it stays up so that the API can be explored with grpcurl or `buf curl`.

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

use crate::client::{connect, status_error};
use crate::commands::workers::workers_table;

/// How long `run` waits for its worker to register before it gives up.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `trainfleet run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Address of the embedded coordinator; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Directory for state and artifacts.
    #[arg(long, env = "TRAINFLEET_STATE_DIR", default_value = ".trainfleet")]
    state_dir: PathBuf,
    /// Keep serving until Ctrl-C, to explore the API from another terminal.
    #[arg(long)]
    serve: bool,
}

/// Starts the embedded cluster, waits for the worker, prints it, and stops (or serves).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = CoordinatorConfig {
        listen: args.listen,
        heartbeat_interval: Duration::from_secs(1),
        lease_timeout: Duration::from_secs(5),
        data_dir: args.state_dir.join("state"),
        artifacts: args.state_dir.join("artifacts").display().to_string(),
        ..CoordinatorConfig::default()
    };
    config.validate("trainfleet run")?;
    let coordinator = Coordinator::bind(config).await?;
    let addr = coordinator.local_addr();
    let shutdown = CancellationToken::new();
    let coordinator_task = tokio::spawn(coordinator.serve(shutdown.clone()));

    let worker_config = WorkerConfig {
        coordinator: addr.to_string(),
        worker_id: Some("local".to_owned()),
        reconnect_initial: Duration::from_millis(50),
        data_dir: args.state_dir.join("data"),
        artifact_dir: args.state_dir.join("artifacts"),
        ..WorkerConfig::default()
    };
    let detected = tokio::task::spawn_blocking(devices::detect).await?;
    let worker_task = tokio::spawn(Agent::new(worker_config, detected).run(shutdown.clone()));

    let outcome = async {
        let workers = wait_for_worker(addr, "local").await?;
        println!("coordinator listening on {addr} (embedded, standalone)");
        println!("{}", workers_table(&workers));
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

    shutdown.cancel();
    worker_task.await??;
    coordinator_task.await??;
    outcome
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
