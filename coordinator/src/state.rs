//! State shared by every service of one coordinator replica.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trainfleet_core::config::CoordinatorConfig;

use crate::control::Control;
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
    /// Jobs, tasks, models.
    pub control: Arc<Control>,
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
        registry: Arc<WorkerRegistry>,
        control: Arc<Control>,
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
            registry,
            control,
            id: format!("{host}:{}", local_addr.port()),
            advertise_address,
            config,
            shutdown,
            started: Instant::now(),
        }
    }
}

#[cfg(test)]
impl State {
    /// A replica's state over a fresh embedded store in `dir`, for unit tests of services.
    pub async fn for_tests(config: CoordinatorConfig, dir: &std::path::Path) -> Arc<Self> {
        let store = Arc::new(
            trainfleet_core::kv::embedded::EmbeddedStore::open(&dir.join("state.redb")).unwrap(),
        );
        let artifacts = trainfleet_core::artifacts::ArtifactStore::open(
            dir.join("artifacts").to_str().unwrap(),
        )
        .unwrap();
        let registry = Arc::new(WorkerRegistry::new(
            config.lease_timeout,
            config.lost_worker_retention,
        ));
        let shutdown = CancellationToken::new();
        let (control, _journal) = Control::load(
            store,
            registry.clone(),
            artifacts,
            config.lease_timeout,
            shutdown.clone(),
        )
        .await
        .unwrap();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        Arc::new(State::new(config, addr, shutdown, registry, control))
    }
}
