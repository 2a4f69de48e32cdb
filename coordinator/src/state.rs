//! State shared by every service of one coordinator replica.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trainfleet_core::config::CoordinatorConfig;

use crate::control::Control;
use crate::registry::WorkerRegistry;

/// Metadata key of the leader's address on an UNAVAILABLE answer from a follower.
pub const LEADER_METADATA: &str = "trainfleet-leader";
/// Metadata key on an UNAVAILABLE answer from a replica that knows of no leader (an election is
/// in progress). Workers retry soon instead of backing off as from an unreachable cluster.
pub const ELECTION_METADATA: &str = "trainfleet-election";

/// What a replica serves while it leads: built from the store when leadership starts, dropped
/// when it ends.
#[derive(Debug)]
pub struct Term {
    /// Jobs, tasks, models, datasets.
    pub control: Arc<Control>,
    /// Workers and their liveness.
    pub registry: Arc<WorkerRegistry>,
    /// Fires when the term ends (step-down or shutdown): long-polls and watches end with it.
    pub stop: CancellationToken,
    /// The term's store (fenced on etcd), for writes outside the journal (tokens).
    pub store: Arc<dyn trainfleet_core::kv::KvStore>,
}

/// One coordinator replica's shared state. Services hold it behind an `Arc`.
#[derive(Debug)]
pub struct State {
    /// Validated settings.
    pub config: CoordinatorConfig,
    /// This replica's id (host name and port), reported by `GetLeader`.
    pub id: String,
    /// Address clients should dial to reach this replica.
    pub advertise_address: String,
    /// The current term while this replica leads.
    term: RwLock<Option<Arc<Term>>>,
    /// The leader's address as last seen (empty: unknown).
    leader: RwLock<String>,
    /// Fires once when the replica stops.
    pub shutdown: CancellationToken,
    /// When this replica started, for `GetLeader.uptime`.
    pub started: Instant,
}

impl State {
    /// The term, or UNAVAILABLE naming the leader (in response metadata, for clients that
    /// follow it) when this replica does not lead.
    pub fn term(&self) -> Result<Arc<Term>, tonic::Status> {
        if let Some(term) = self.term.read().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(term);
        }
        let leader = self.leader();
        let mut status = tonic::Status::unavailable(if leader.is_empty() {
            "this coordinator is not the leader and no leader is known yet; retry shortly"
                .to_owned()
        } else {
            format!("this coordinator is not the leader; the leader is {leader}")
        });
        if leader.is_empty() {
            status
                .metadata_mut()
                .insert(ELECTION_METADATA, "in-progress".parse().expect("ASCII"));
        } else if let Ok(value) = leader.parse() {
            status.metadata_mut().insert(LEADER_METADATA, value);
        }
        Err(status)
    }

    /// Starts serving `term` (this replica leads).
    pub fn begin_term(&self, term: Arc<Term>) {
        *self.leader.write().unwrap_or_else(|p| p.into_inner()) = self.advertise_address.clone();
        *self.term.write().unwrap_or_else(|p| p.into_inner()) = Some(term);
    }

    /// Stops serving the current term (step-down or shutdown); returns it.
    pub fn end_term(&self) -> Option<Arc<Term>> {
        let term = self.term.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = &term {
            t.stop.cancel();
        }
        term
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        self.term
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// The leader's address as last seen.
    pub fn leader(&self) -> String {
        self.leader
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records who leads (from the election).
    pub fn set_leader(&self, address: String) {
        *self.leader.write().unwrap_or_else(|p| p.into_inner()) = address;
    }

    /// State for a replica bound to `local_addr`, not leading yet.
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
            term: RwLock::new(None),
            leader: RwLock::new(String::new()),
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
            store.clone(),
            registry.clone(),
            artifacts,
            config.lease_timeout,
            shutdown.clone(),
        )
        .await
        .unwrap();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let state = Arc::new(State::new(config, addr, shutdown.clone()));
        state.begin_term(Arc::new(Term {
            control,
            registry,
            stop: shutdown.child_token(),
            store,
        }));
        state
    }
}
