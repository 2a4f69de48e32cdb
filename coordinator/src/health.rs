//! The replica's `grpc.health.v1` statuses. Two kinds of name, set apart:
//!
//! - **replica names**: `""` (the server as a whole) and every public service name. SERVING on
//!   every replica that serves, leader or follower, since a follower forwards public calls to the
//!   leader ([`crate::forward`]). Point readiness and liveness probes here: a rolling update and
//!   `helm install --wait` see every healthy replica ready. NOT_SERVING before the replica can
//!   serve (its store is not open yet) and once it shuts down.
//! - **leader names**: [`LEADER_HEALTH_SERVICE`] and the worker protocol's service name.
//!   SERVING only on the replica that leads now (and on a standalone coordinator), for those
//!   who want traffic on the leader alone.

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use trainfleet_proto::{LEADER_HEALTH_SERVICE, PUBLIC_SERVICES, WORKER_SERVICE};

/// The health reporter of one replica.
#[derive(Clone)]
pub struct Health(HealthReporter);

impl Health {
    /// Everything NOT_SERVING until told otherwise.
    pub async fn new(reporter: HealthReporter) -> Self {
        let health = Self(reporter);
        health.replica(ServingStatus::NotServing).await;
        health.leader(ServingStatus::NotServing).await;
        health
    }

    /// Sets the replica names: `""` and the public services.
    pub async fn replica(&self, status: ServingStatus) {
        for name in PUBLIC_SERVICES.iter().copied().chain([""]) {
            self.0.set_service_status(name, status).await;
        }
    }

    /// Sets the leader names: [`LEADER_HEALTH_SERVICE`] and the worker service.
    pub async fn leader(&self, status: ServingStatus) {
        for name in [LEADER_HEALTH_SERVICE, WORKER_SERVICE] {
            self.0.set_service_status(name, status).await;
        }
    }
}
