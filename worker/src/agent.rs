//! The worker's conversation with the coordinator: connect, register, then heartbeat and
//! long-poll until something breaks, then reconnect with backoff and register again.
//!
//! Every failure ends the session the same way (drop it, back off, register anew). That keeps
//! the state machine to two states, "connected" and "backing off", and makes a restarted
//! coordinator, a declared-lost worker and a network blip all heal by the same path.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use trainfleet_core::config::WorkerConfig;
use trainfleet_core::device::{Device, DeviceKind};
use trainfleet_proto::v1;
use trainfleet_proto::v1::worker_service_client::WorkerServiceClient;

use crate::backoff::Backoff;
use crate::error::{Error, Result};

/// Extra time a long-poll may take beyond the wait it asked for before the worker gives up on it.
const POLL_GRACE: Duration = Duration::from_secs(10);
/// Deadline of a Register or Heartbeat call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A worker's identity and settings, ready to talk to a coordinator.
#[derive(Debug, Clone)]
pub struct Agent {
    config: WorkerConfig,
    worker_id: String,
    host: String,
    devices: Vec<Device>,
}

impl Agent {
    /// An agent for `config` with the given devices (usually [`crate::devices::detect`]).
    pub fn new(config: WorkerConfig, devices: Vec<Device>) -> Self {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let worker_id = config.worker_id.clone().unwrap_or_else(|| {
            format!(
                "{}-{:08x}",
                trainfleet_core::ids::sanitize_for_id(&host),
                rand::random::<u32>()
            )
        });
        Self {
            config,
            worker_id,
            host,
            devices,
        }
    }

    /// The id this worker registers with.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Talks to the coordinator until `shutdown` fires, reconnecting as often as needed.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let endpoint = endpoint(&self.config.coordinator)?;
        let mut backoff = Backoff::new(self.config.reconnect_initial, self.config.reconnect_max);
        let gpus = self
            .devices
            .iter()
            .filter(|d| d.kind == DeviceKind::Cuda)
            .count();
        tracing::info!(
            worker_id = %self.worker_id,
            coordinator = %self.config.coordinator,
            gpus,
            slots = self.config.slots,
            "worker starting"
        );
        loop {
            let outcome = tokio::select! {
                r = self.session(&endpoint, &mut backoff) => r,
                _ = shutdown.cancelled() => break,
            };
            let err = match outcome {
                Ok(never) => match never {},
                Err(err) => err,
            };
            let delay = backoff.next_delay();
            tracing::warn!(
                coordinator = %self.config.coordinator,
                attempt = backoff.attempt(),
                retry_in = %humantime::format_duration(round_ms(delay)),
                error = %err,
                "lost contact with the coordinator"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        tracing::info!(worker_id = %self.worker_id, "worker stopped");
        Ok(())
    }

    /// One session: connect, register, then heartbeat and poll until either fails. Only returns
    /// with an error; shutdown is handled by the caller dropping this future.
    async fn session(
        &self,
        endpoint: &Endpoint,
        backoff: &mut Backoff,
    ) -> Result<std::convert::Infallible> {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Error::Connect(error_chain(&e)))?;
        let mut client = WorkerServiceClient::new(channel);
        let registered = client
            .register(with_timeout(self.register_request(), CALL_TIMEOUT))
            .await
            .map_err(|s| Error::Rpc("Register", s))?
            .into_inner();
        backoff.reset();
        let interval = registered
            .heartbeat_interval
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(2));
        tracing::info!(
            worker_id = %self.worker_id,
            coordinator = %self.config.coordinator,
            coordinator_version = %registered.coordinator_version,
            heartbeat_interval = %humantime::format_duration(interval),
            "registered"
        );
        let session_id = registered.session_id;
        tokio::select! {
            r = self.heartbeat_loop(client.clone(), &session_id, interval) => r,
            r = self.poll_loop(client, &session_id) => r,
        }
    }

    async fn heartbeat_loop(
        &self,
        mut client: WorkerServiceClient<Channel>,
        session_id: &str,
        interval: Duration,
    ) -> Result<std::convert::Infallible> {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // registration counted as the first beat
        loop {
            tick.tick().await;
            let request = v1::HeartbeatRequest {
                worker_id: self.worker_id.clone(),
                session_id: session_id.to_owned(),
                tasks: Vec::new(),
                free_slots: self.config.slots,
            };
            client
                .heartbeat(with_timeout(request, CALL_TIMEOUT))
                .await
                .map_err(|s| Error::Rpc("Heartbeat", s))?;
        }
    }

    async fn poll_loop(
        &self,
        mut client: WorkerServiceClient<Channel>,
        session_id: &str,
    ) -> Result<std::convert::Infallible> {
        loop {
            let request = v1::PollTaskRequest {
                worker_id: self.worker_id.clone(),
                session_id: session_id.to_owned(),
                free_slots: self.config.slots,
                max_wait: prost_types::Duration::try_from(self.config.poll_wait).ok(),
            };
            let response = client
                .poll_task(with_timeout(request, self.config.poll_wait + POLL_GRACE))
                .await
                .map_err(|s| Error::Rpc("PollTask", s))?
                .into_inner();
            if let Some(task) = response.task {
                // No task kind is executable yet; the coordinator never assigns one.
                tracing::warn!(task_id = %task.id, kind = task.kind, "received a task this worker cannot run yet");
            }
        }
    }

    fn register_request(&self) -> v1::RegisterRequest {
        v1::RegisterRequest {
            worker_id: self.worker_id.clone(),
            host: self.host.clone(),
            devices: self.devices.iter().map(device_to_wire).collect(),
            slots: self.config.slots,
            version: trainfleet_core::VERSION.to_owned(),
            libtorch_version: crate::LIBTORCH_VERSION.to_owned(),
            labels: self.config.labels.clone().into_iter().collect(),
        }
    }
}

fn device_to_wire(d: &Device) -> v1::Device {
    v1::Device {
        kind: match d.kind {
            DeviceKind::Cpu => v1::DeviceKind::Cpu,
            DeviceKind::Cuda => v1::DeviceKind::Cuda,
        } as i32,
        index: d.index,
        name: d.name.clone(),
        memory_bytes: d.memory_bytes,
        cores: d.cores,
    }
}

/// A channel endpoint for `host:port` or `http(s)://host:port`.
pub fn endpoint(coordinator: &str) -> Result<Endpoint> {
    let uri = if coordinator.contains("://") {
        coordinator.to_owned()
    } else {
        format!("http://{coordinator}")
    };
    let endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| Error::BadAddress(coordinator.to_owned(), e.to_string()))?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10)))
}

fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// "transport error: tcp connect error: Connection refused (os error 111)", not just the
/// outermost "transport error".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
