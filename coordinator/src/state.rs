//! State shared by every service of one coordinator replica.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trainfleet_core::config::CoordinatorConfig;

use crate::registry::WorkerRegistry;

/// One coordinator replica's shared state. Services hold it behind an `Arc`.
#[derive(Debug)]
pub struct State {
    /// Validated settings.
    pub config: CoordinatorConfig,
    /// This replica's id (host name and port), reported by `GetLeader`.
    pub id: String,
    /// Address clients should dial to reach this replica.
    pub advertise_address: String,
    /// Workers and their liveness.
    pub registry: Arc<WorkerRegistry>,
    /// Fires once when the replica stops; long-polls watch it so that shutdown is not held up by
    /// a 30 s `PollTask`.
    pub shutdown: CancellationToken,
    /// When this replica started, for `GetLeader.uptime`.
    pub started: Instant,
}

impl State {
    /// State for a replica bound to `local_addr`.
    pub fn new(
        config: CoordinatorConfig,
        local_addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> Self {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let advertise_address = config.advertise_address.clone().unwrap_or_else(|| {
            if local_addr.ip().is_unspecified() {
                format!("{host}:{}", local_addr.port())
            } else {
                local_addr.to_string()
            }
        });
        Self {
            registry: Arc::new(WorkerRegistry::new(
                config.lease_timeout,
                config.lost_worker_retention,
            )),
            id: format!("{host}:{}", local_addr.port()),
            advertise_address,
            config,
            shutdown,
            started: Instant::now(),
        }
    }
}
