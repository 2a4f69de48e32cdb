//! Binds the listener and serves every service: trainfleet.v1, `grpc.health.v1` (per service) and
//! server reflection v1 and v1alpha (grpcurl speaks v1, older clients v1alpha).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use trainfleet_core::config::CoordinatorConfig;
use trainfleet_proto::v1::access_service_server::AccessServiceServer;
use trainfleet_proto::v1::cluster_service_server::ClusterServiceServer;
use trainfleet_proto::v1::dataset_service_server::DatasetServiceServer;
use trainfleet_proto::v1::job_service_server::JobServiceServer;
use trainfleet_proto::v1::model_service_server::ModelServiceServer;
use trainfleet_proto::v1::sweep_service_server::SweepServiceServer;
use trainfleet_proto::v1::worker_service_server::WorkerServiceServer;
use trainfleet_proto::{FILE_DESCRIPTOR_SET, WORKER_SERVICE};

use trainfleet_core::artifacts::ArtifactStore;
use trainfleet_core::config::StoreKind;
use trainfleet_core::kv::KvStore;
use trainfleet_core::kv::embedded::EmbeddedStore;
use trainfleet_core::kv::etcd::{EtcdOptions, EtcdStore};

use crate::auth::layer::AuthLayer;
use crate::control::{Control, run_archiver, run_reaper, run_ticker};
use crate::deadline::DeadlineLayer;
use crate::election::Election;
use crate::error::{Error, Result};
use crate::forward::ForwardLayer;
use crate::health::Health;
use crate::limits;
use crate::registry::WorkerRegistry;
use crate::services::access::AccessApi;
use crate::services::cluster::ClusterApi;
use crate::services::datasets::DatasetApi;
use crate::services::jobs::JobApi;
use crate::services::models::ModelApi;
use crate::services::sweeps::SweepApi;
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
        let artifacts = ArtifactStore::open(&self.config.artifacts)
            .map_err(|e| startup("artifact store", &e))?;
        let (health, health_service) = tonic_health::server::health_reporter();
        // Nothing is served until the store is open (the term has begun in standalone mode; etcd
        // is connected in a cluster).
        let health = Health::new(health).await;
        let store_kind = self.config.store;
        let forward_tls = forward_tls(&self.config).map_err(|e| startup("TLS", &e))?;
        let etcd_config = self.config.etcd.clone();
        let forward_wait = self.config.etcd.forward_wait;
        let state = Arc::new(State::new(self.config, self.local_addr, shutdown.clone()));
        let standalone_store: Option<Arc<dyn KvStore>> = match (self.store, store_kind) {
            (Some(store), _) => Some(store),
            (None, StoreKind::Embedded) => {
                let path = state.config.data_dir.join("state.redb");
                Some(Arc::new(
                    EmbeddedStore::open(&path).map_err(|e| startup("state store", &e))?,
                ))
            }
            (None, StoreKind::Etcd) => None,
        };
        let tls = match &state.config.tls {
            Some(settings) => {
                Some(crate::tls::ServerTls::load(settings).map_err(|e| startup("TLS", &e))?)
            }
            None => None,
        };
        let access = Arc::new(
            crate::auth::Access::new(&state.config.auth).map_err(|e| startup("auth", &e))?,
        );
        // The replicas' shared store, for what a follower writes unfenced (its audit records).
        let (roles, shared_store): (_, Option<Arc<dyn KvStore>>) = match standalone_store {
            // One replica: its term starts before anything is served, and a store that cannot
            // be loaded stops the start.
            Some(store) => {
                tokio::spawn(crate::auth::run_refresher(
                    access.clone(),
                    store.clone(),
                    shutdown.clone(),
                ));
                let stop = shutdown.child_token();
                let term = begin_term(&state, store, artifacts, &health, stop, shutdown.clone())
                    .await
                    .map_err(|e| startup("loading state", &e))?;
                let roles = tokio::spawn(async move {
                    term.stop.cancelled().await;
                    term.end().await;
                    Ok(())
                });
                (roles, None)
            }
            None => {
                let etcd = EtcdStore::connect(EtcdOptions {
                    endpoints: etcd_config.endpoints.clone(),
                    prefix: etcd_config.prefix.clone(),
                    user: etcd_config.user.clone().zip(etcd_config.password.clone()),
                    call_timeout: etcd_config.call_timeout,
                    tls: etcd_config.tls.clone(),
                    ..EtcdOptions::default()
                })
                .await
                .map_err(|e| startup("etcd", &e))?;
                // Every replica reads the tokens, leader or not (unfenced reads).
                tokio::spawn(crate::auth::run_refresher(
                    access.clone(),
                    Arc::new(etcd.clone()),
                    shutdown.clone(),
                ));
                let shared: Arc<dyn KvStore> = Arc::new(etcd.clone());
                let roles = tokio::spawn(replica(
                    state.clone(),
                    etcd,
                    etcd_config.lease_ttl,
                    artifacts,
                    health.clone(),
                ));
                (roles, Some(shared))
            }
        };
        let (audit, audit_rx) = crate::auth::audit::AuditLog::new(&state.id);
        tokio::spawn(crate::auth::audit::run_writer(
            state.clone(),
            shared_store,
            audit_rx,
            shutdown.clone(),
        ));
        if let Some(addr) = state.config.metrics_listen {
            let scraped = state.clone();
            let render: trainfleet_core::metrics_http::Render = Arc::new(move || scrape(&scraped));
            let bound = trainfleet_core::metrics_http::serve(addr, render, shutdown.clone())
                .await
                .map_err(|e| startup(&format!("metrics on {addr}"), &e))?;
            tracing::info!(addr = %bound, "metrics at http://{bound}/metrics");
        }
        // A follower serves too: it forwards public calls to the leader.
        health.replica(ServingStatus::Serving).await;

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

        let tls_shown = tls.as_ref().map_or_else(
            || "off".to_owned(),
            |_| crate::tls::describe(state.config.tls.as_ref().expect("TLS settings")),
        );
        tracing::info!(addr = %self.local_addr, advertise = %state.advertise_address, store = ?store_kind, tls = %tls_shown, "coordinator serving");
        let stop = {
            let shutdown = shutdown.clone();
            let health = health.clone();
            let state = state.clone();
            async move {
                shutdown.cancelled().await;
                tracing::info!("shutting down: health NOT_SERVING, draining in-flight calls");
                state.end_term();
                health.replica(ServingStatus::NotServing).await;
                health.leader(ServingStatus::NotServing).await;
            }
        };
        // Each service decodes at most its limit and encodes at most the response limit.
        macro_rules! limit {
            ($server:expr, $name:expr) => {
                $server
                    .max_decoding_message_size(limits::max_request_bytes($name))
                    .max_encoding_message_size(limits::MAX_RESPONSE_BYTES)
            };
        }
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_max_header_list_size(limits::MAX_HEADER_LIST_BYTES)
            .max_concurrent_streams(limits::MAX_CONCURRENT_STREAMS)
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
            // Outermost: a stranger is refused by whichever replica it reached.
            .layer(AuthLayer::new(access.clone(), audit))
            // Inside the access check, so that a call stopped at its limit is audited and
            // counted as DEADLINE_EXCEEDED; outside forwarding, which it bounds too.
            .layer(DeadlineLayer::new(state.config.max_poll_wait))
            .layer(ForwardLayer::new(state.clone(), forward_wait, forward_tls))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(limit!(
                WorkerServiceServer::new(WorkerApi::new(state.clone())),
                WORKER_SERVICE
            ))
            .add_service(limit!(
                ClusterServiceServer::new(ClusterApi::new(state.clone())),
                "trainfleet.v1.ClusterService"
            ))
            .add_service(limit!(
                JobServiceServer::new(JobApi::new(state.clone())),
                "trainfleet.v1.JobService"
            ))
            .add_service(limit!(
                DatasetServiceServer::new(DatasetApi::new(state.clone())),
                "trainfleet.v1.DatasetService"
            ))
            .add_service(limit!(
                ModelServiceServer::new(ModelApi::new(state.clone())),
                "trainfleet.v1.ModelService"
            ))
            .add_service(limit!(
                SweepServiceServer::new(SweepApi::new(state.clone())),
                "trainfleet.v1.SweepService"
            ))
            .add_service(limit!(
                AccessServiceServer::new(AccessApi::new(state.clone(), access.clone())),
                "trainfleet.v1.AccessService"
            ));
        let served = match tls {
            Some(tls) => {
                tokio::spawn(tls.clone().watch(shutdown.clone()));
                router
                    .serve_with_incoming_shutdown(
                        crate::tls::incoming(self.listener, tls, shutdown.clone()),
                        stop,
                    )
                    .await
            }
            // Accepted sockets get TCP_NODELAY here: the builder's `tcp_nodelay` applies only to
            // listeners tonic binds itself. Without it, a small response written right after
            // another (a task lease after a heartbeat answer) waits for the peer's delayed ACK,
            // about 40 ms.
            None => {
                router
                    .serve_with_incoming_shutdown(
                        TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                        stop,
                    )
                    .await
            }
        };
        shutdown.cancel();
        // The term ends, its journal drains, and a leader resigns.
        match roles.await {
            Ok(Err(e)) => tracing::error!(error = %e, "the replica's role loop failed"),
            Err(e) => tracing::error!(error = %e, "the replica's role loop panicked"),
            Ok(Ok(())) => {}
        }
        served.map_err(|e| Error::Serve {
            addr: self.local_addr.to_string(),
            source: e.into(),
        })?;
        tracing::info!("coordinator stopped");
        Ok(())
    }
}

/// The metrics text, with the state gauges read from `state` now.
fn scrape(state: &State) -> String {
    let mut now = crate::metrics::StateNow {
        leader: state.is_leader(),
        ..Default::default()
    };
    if let Ok(term) = state.term() {
        let queue = term.control.queue();
        let oldest = queue.queued.iter().map(|t| t.enqueued_at).min();
        now.queue = Some((queue.queued.len(), oldest));
        let workers = term.registry.list(None);
        let alive = workers
            .iter()
            .filter(|w| w.liveness == crate::registry::Liveness::Alive)
            .count();
        now.workers = Some((alive, workers.len() - alive));
    }
    let metrics = crate::metrics::get();
    metrics.state(&now);
    crate::metrics::encode()
}

/// How a follower dials the leader: TLS (trusting `tls.ca_file`, else the system's roots) when
/// this replica serves TLS, since the leader then does too.
fn forward_tls(
    config: &CoordinatorConfig,
) -> std::result::Result<Option<trainfleet_proto::ClientTls>, String> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let names = trainfleet_proto::TlsSettingNames {
        ca: "tls.ca_file",
        cert: "tls.cert_file",
        key: "tls.key_file",
    };
    trainfleet_proto::ClientTls::from_files(tls.ca_file.as_deref(), None, None, &names)
        .map(|t| Some(t.with_server_name(tls.server_name.clone())))
}

/// A term being served: what has to be stopped when it ends.
struct RunningTerm {
    state: Arc<State>,
    health: Health,
    stop: CancellationToken,
    control: Arc<Control>,
    journal: tokio::task::JoinHandle<()>,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts leading over `store`: loads everything, starts the reaper and the ticker, serves.
/// `stop` ends the term; a failed journal write fires `fatal`.
async fn begin_term(
    state: &Arc<State>,
    store: Arc<dyn KvStore>,
    artifacts: ArtifactStore,
    health: &Health,
    stop: CancellationToken,
    fatal: CancellationToken,
) -> Result<RunningTerm> {
    let config = &state.config;
    let registry = Arc::new(WorkerRegistry::new(
        config.lease_timeout,
        config.lost_worker_retention,
    ));
    let (control, journal) = Control::load(
        store.clone(),
        registry.clone(),
        artifacts,
        config.lease_timeout,
        fatal,
    )
    .await?;
    let loops = vec![
        tokio::spawn(run_reaper(control.clone(), registry.clone(), stop.clone())),
        tokio::spawn(run_ticker(control.clone(), stop.clone())),
        tokio::spawn(run_archiver(
            control.clone(),
            config.retention.clone(),
            stop.clone(),
        )),
    ];
    state.begin_term(Arc::new(Term {
        control: control.clone(),
        registry,
        stop: stop.clone(),
        store,
    }));
    health.leader(ServingStatus::Serving).await;
    crate::metrics::get().leader_changes.inc();
    Ok(RunningTerm {
        state: state.clone(),
        health: health.clone(),
        stop,
        control,
        journal,
        loops,
    })
}

impl RunningTerm {
    /// Stops serving, waits for the background loops, and lets the journal drain (a deposed
    /// leader's writes are refused by the fence).
    async fn end(self) {
        self.stop.cancel();
        crate::metrics::get().leader_changes.inc();
        self.health.leader(ServingStatus::NotServing).await;
        self.state.end_term();
        for l in self.loops {
            let _ = l.await;
        }
        drop(self.control);
        if tokio::time::timeout(std::time::Duration::from_secs(10), self.journal)
            .await
            .is_err()
        {
            tracing::warn!("the state journal did not drain within 10 s");
        }
    }
}

/// A replica of an etcd-backed cluster: campaigns, leads a fenced term until its lease is lost
/// (or a write is refused by the fence), then campaigns again; a follower keeps the leader's
/// address current for redirects. On shutdown a leader resigns, so another takes over at once.
async fn replica(
    state: Arc<State>,
    etcd: EtcdStore,
    ttl: std::time::Duration,
    artifacts: ArtifactStore,
    health: Health,
) -> Result<()> {
    let shutdown = state.shutdown.clone();
    let election = Election::new(etcd.clone(), state.advertise_address.clone(), ttl);
    let watcher = tokio::spawn({
        let (election, state, shutdown) = (election.clone(), state.clone(), shutdown.clone());
        async move {
            loop {
                if !state.is_leader()
                    && let Ok(leader) = election.leader().await
                {
                    state.set_leader(leader.unwrap_or_default());
                }
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    });
    loop {
        let leadership = match election.campaign(&shutdown).await {
            Ok(l) => l,
            Err(Error::ShuttingDown) => break,
            Err(e) => {
                tracing::error!(error = %e, "campaign stopped");
                break;
            }
        };
        tracing::info!(key = %String::from_utf8_lossy(&leadership.key), revision = leadership.revision, "elected leader");
        let fenced: Arc<dyn KvStore> =
            Arc::new(etcd.fenced(leadership.key.clone(), leadership.revision));
        let stop = shutdown.child_token();
        let lost = leadership.lost.clone();
        let relay = tokio::spawn({
            let stop = stop.clone();
            async move {
                tokio::select! {
                    _ = lost.cancelled() => stop.cancel(),
                    _ = stop.cancelled() => {}
                }
            }
        });
        match begin_term(
            &state,
            fenced,
            artifacts.clone(),
            &health,
            stop.clone(),
            stop.clone(),
        )
        .await
        {
            Ok(term) => {
                stop.cancelled().await;
                term.end().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "could not lead (loading state failed); stepping down");
                stop.cancel();
            }
        }
        let _ = relay.await;
        if shutdown.is_cancelled() && !leadership.lost.is_cancelled() {
            leadership.resign().await;
            break;
        }
        leadership.abandon();
        if shutdown.is_cancelled() {
            break;
        }
        tracing::warn!("stepped down; campaigning again");
    }
    watcher.abort();
    Ok(())
}
