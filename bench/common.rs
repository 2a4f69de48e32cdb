//! Pieces the benchmark programs share: a loopback channel, a synthetic worker's registration
//! (the real WorkerService calls a worker makes, without a worker process), a child process
//! stopped by PID, and a coordinator's address file.

// Each benchmark binary includes this file (`#[path]`) and uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

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

/// A child process stopped by PID (SIGTERM, then waited for) when dropped.
pub struct Stopped(pub Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: kill(2) with the PID of a child not reaped yet.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// The address a coordinator started with `--addr-file path` bound (waits up to 20 s).
pub fn wait_addr(path: &Path) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        if let Ok(a) = std::fs::read_to_string(path)
            && !a.is_empty()
        {
            return Ok(a);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "no coordinator address in {} after 20 s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
