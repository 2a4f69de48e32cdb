//! `trainfleet workers`: the workers a coordinator knows.

use serde_json::json;
use trainfleet_proto::v1;
use trainfleet_proto::v1::cluster_service_client::ClusterServiceClient;

use crate::cli::Remote;
use crate::client::{connect, status_error};
use crate::table;

/// Arguments of `trainfleet workers`.
#[derive(Debug, clap::Args)]
pub struct WorkersArgs {
    #[command(flatten)]
    remote: Remote,
    /// Only workers in this state.
    #[arg(long, value_enum)]
    state: Option<StateFilter>,
}

/// Worker states a user can filter on.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StateFilter {
    /// Heartbeating in time.
    Alive,
    /// Missed the heartbeat deadline.
    Lost,
}

/// Lists workers as a table or JSON.
pub async fn run(args: WorkersArgs) -> anyhow::Result<()> {
    let channel = connect(&args.remote.endpoint).await?;
    let state = match args.state {
        None => v1::WorkerState::Unspecified,
        Some(StateFilter::Alive) => v1::WorkerState::Alive,
        Some(StateFilter::Lost) => v1::WorkerState::Lost,
    };
    let workers = ClusterServiceClient::new(channel)
        .list_workers(v1::ListWorkersRequest {
            state: state as i32,
        })
        .await
        .map_err(|s| status_error("ListWorkers", s))?
        .into_inner()
        .workers;
    if args.remote.json {
        println!("{}", serde_json::to_string_pretty(&workers_json(&workers))?);
    } else {
        println!("{}", workers_table(&workers));
    }
    Ok(())
}

/// Workers as an aligned table: one line per worker, its devices summarised.
pub fn workers_table(workers: &[v1::WorkerInfo]) -> String {
    if workers.is_empty() {
        return "no workers".to_owned();
    }
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            vec![
                w.worker_id.clone(),
                state_name(w.state).to_owned(),
                w.host.clone(),
                format!("{}/{}", w.free_slots, w.slots),
                devices_summary(&w.devices),
                w.version.clone(),
            ]
        })
        .collect();
    table::render(
        &[
            "WORKER",
            "STATE",
            "HOST",
            "FREE/SLOTS",
            "DEVICES",
            "VERSION",
        ],
        &rows,
    )
}

fn devices_summary(devices: &[v1::Device]) -> String {
    devices
        .iter()
        .map(|d| match v1::DeviceKind::try_from(d.kind) {
            Ok(v1::DeviceKind::Cuda) => format!(
                "cuda:{} {} ({})",
                d.index,
                d.name,
                table::gib(d.memory_bytes)
            ),
            _ => format!("cpu {} cores ({})", d.cores, table::gib(d.memory_bytes)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn state_name(state: i32) -> &'static str {
    match v1::WorkerState::try_from(state) {
        Ok(v1::WorkerState::Alive) => "alive",
        Ok(v1::WorkerState::Lost) => "lost",
        _ => "unknown",
    }
}

fn workers_json(workers: &[v1::WorkerInfo]) -> serde_json::Value {
    let ts = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| t.to_string());
    json!(workers
        .iter()
        .map(|w| json!({
            "worker_id": w.worker_id,
            "state": state_name(w.state),
            "host": w.host,
            "slots": w.slots,
            "free_slots": w.free_slots,
            "version": w.version,
            "libtorch_version": w.libtorch_version,
            "devices": w.devices.iter().map(|d| json!({
                "kind": v1::DeviceKind::try_from(d.kind).map(|k| k.as_str_name()).unwrap_or("UNKNOWN"),
                "index": d.index,
                "name": d.name,
                "memory_bytes": d.memory_bytes,
                "cores": d.cores,
            })).collect::<Vec<_>>(),
            "registered_at": ts(&w.registered_at),
            "last_heartbeat_at": ts(&w.last_heartbeat_at),
            "heartbeat_deadline": ts(&w.heartbeat_deadline),
            "running_tasks": w.running_tasks,
            "peer": w.peer,
        }))
        .collect::<Vec<_>>())
}
