//! Binds the listener and serves every service: trainfleet.v1, `grpc.health.v1` (per service) and
//! server reflection v1 and v1alpha (grpcurl speaks v1, older clients v1alpha).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use trainfleet_core::config::CoordinatorConfig;
use trainfleet_proto::v1::cluster_service_server::ClusterServiceServer;
use trainfleet_proto::v1::dataset_service_server::DatasetServiceServer;
use trainfleet_proto::v1::job_service_server::JobServiceServer;
use trainfleet_proto::v1::model_service_server::ModelServiceServer;
use trainfleet_proto::v1::sweep_service_server::SweepServiceServer;
use trainfleet_proto::v1::worker_service_server::WorkerServiceServer;
use trainfleet_proto::{FILE_DESCRIPTOR_SET, PUBLIC_SERVICES, WORKER_SERVICE};

use trainfleet_core::artifacts::ArtifactStore;
use trainfleet_core::kv::KvStore;
use trainfleet_core::kv::embedded::EmbeddedStore;

use crate::control::{Control, run_reaper, run_ticker};
use crate::error::{Error, Result};
use crate::registry::WorkerRegistry;
use crate::services::cluster::ClusterApi;
use crate::services::datasets::DatasetApi;
use crate::services::jobs::JobApi;
use crate::services::models::ModelApi;
use crate::services::pending::SweepApi;
use crate::services::worker::WorkerApi;
use crate::state::{State, Term};

/// A coordinator bound to its address, not yet serving. Binding first lets callers learn the port
/// (config `listen` with port 0) before any client needs it.
#[derive(Debug)]
pub struct Coordinator {
    config: CoordinatorConfig,
    listener: TcpListener,
    local_addr: SocketAddr,
    store: Option<Arc<dyn KvStore>>,
}

impl Coordinator {
    /// Binds `config.listen`. The config must already be validated.
    pub async fn bind(config: CoordinatorConfig) -> Result<Self> {
        let serve_error = |source: std::io::Error| Error::Serve {
            addr: config.listen.to_string(),
            source: source.into(),
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(serve_error)?;
        let local_addr = listener.local_addr().map_err(serve_error)?;
        Ok(Self {
            config,
            listener,
            local_addr,
            store: None,
        })
    }

    /// Keeps state in `store` instead of the embedded store under `data_dir`.
    pub fn with_store(mut self, store: Arc<dyn KvStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` fires, then reports NOT_SERVING, ends open long-polls, waits for
    /// in-flight calls and returns.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<()> {
        let startup = |what: &str, e: &dyn std::fmt::Display| Error::Serve {
            addr: self.local_addr.to_string(),
            source: format!("{what}: {e}").into(),
        };
        let store: Arc<dyn KvStore> = match self.store {
            Some(store) => store,
            None => {
                let path = self.config.data_dir.join("state.redb");
                Arc::new(EmbeddedStore::open(&path).map_err(|e| startup("state store", &e))?)
            }
        };
        let artifacts = ArtifactStore::open(&self.config.artifacts)
            .map_err(|e| startup("artifact store", &e))?;
        let registry = Arc::new(WorkerRegistry::new(
            self.config.lease_timeout,
            self.config.lost_worker_retention,
        ));
        let (control, journal) = Control::load(
            store,
            registry.clone(),
            artifacts,
            self.config.lease_timeout,
            shutdown.clone(),
        )
        .await
        .map_err(|e| startup("loading state", &e))?;
        let state = Arc::new(State::new(self.config, self.local_addr, shutdown.clone()));
        state.begin_term(Arc::new(Term {
            control: control.clone(),
            registry: registry.clone(),
            stop: shutdown.child_token(),
        }));
        let reaper = tokio::spawn(run_reaper(control.clone(), registry, shutdown.clone()));
        let ticker = tokio::spawn(run_ticker(control.clone(), shutdown.clone()));

        let (health, health_service) = tonic_health::server::health_reporter();
        let names = || PUBLIC_SERVICES.iter().copied().chain([WORKER_SERVICE, ""]);
        for name in names() {
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }

        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_error = |e: tonic_reflection::server::Error| Error::Serve {
            addr: self.local_addr.to_string(),
            source: e.into(),
        };
        let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
        let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;

        tracing::info!(addr = %self.local_addr, advertise = %state.advertise_address, "coordinator serving");
        let stop = {
            let shutdown = shutdown.clone();
            let health = health.clone();
            async move {
                shutdown.cancelled().await;
                tracing::info!("shutting down: health NOT_SERVING, draining in-flight calls");
                for name in names() {
                    health
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                }
            }
        };
        let served = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(WorkerServiceServer::new(WorkerApi::new(state.clone())))
            .add_service(ClusterServiceServer::new(ClusterApi::new(state.clone())))
            .add_service(
                JobServiceServer::new(JobApi::new(state.clone()))
                    .max_decoding_message_size(crate::services::jobs::MAX_REQUEST_BYTES),
            )
            .add_service(DatasetServiceServer::new(DatasetApi::new(state.clone())))
            .add_service(ModelServiceServer::new(ModelApi::new(state.clone())))
            .add_service(SweepServiceServer::new(SweepApi))
            // Accepted sockets get TCP_NODELAY here: the builder's `tcp_nodelay` applies only to
            // listeners tonic binds itself. Without it, a small response written right after
            // another (a task lease after a heartbeat answer) waits for the peer's delayed ACK,
            // about 40 ms.
            .serve_with_incoming_shutdown(
                TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                stop,
            )
            .await;
        shutdown.cancel();
        let _ = reaper.await;
        let _ = ticker.await;
        // Let the journal write what it holds before returning.
        drop(state);
        drop(control);
        if tokio::time::timeout(std::time::Duration::from_secs(10), journal)
            .await
            .is_err()
        {
            tracing::warn!("the state journal did not drain within 10 s");
        }
        served.map_err(|e| Error::Serve {
            addr: self.local_addr.to_string(),
            source: e.into(),
        })?;
        tracing::info!("coordinator stopped");
        Ok(())
    }
}
