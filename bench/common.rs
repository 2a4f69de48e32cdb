//! Pieces the benchmark programs share: a loopback channel and a synthetic worker's
//! registration (the real WorkerService calls a worker makes, without a worker process).

use tonic::transport::{Channel, Endpoint};
use trainfleet_proto::v1;
use trainfleet_proto::v1::worker_service_client::WorkerServiceClient;

/// A channel to `addr` (`host:port`), with TCP_NODELAY.
pub async fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// Registers a one-slot CPU worker called `id`; returns its session.
pub async fn register(
    client: &mut WorkerServiceClient<Channel>,
    id: &str,
) -> anyhow::Result<String> {
    Ok(client
        .register(v1::RegisterRequest {
            worker_id: id.to_owned(),
            host: "bench".into(),
            devices: vec![v1::Device {
                kind: v1::DeviceKind::Cpu as i32,
                name: "bench cpu".into(),
                memory_bytes: 1 << 30,
                cores: 1,
                index: 0,
            }],
            slots: 1,
            version: "bench".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .session_id)
}
