//! `trainfleet.v1.ClusterService`: workers, leadership, queue.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use trainfleet_proto::v1;
use trainfleet_proto::v1::cluster_service_server::ClusterService;

use crate::convert;
use crate::error::Error;
use crate::state::State;

/// Serves the operator's view of the cluster.
#[derive(Debug, Clone)]
pub struct ClusterApi {
    state: Arc<State>,
}

impl ClusterApi {
    /// The service over a replica's state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn list_workers(
        &self,
        request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        let filter = convert::liveness_filter(request.get_ref().state).map_err(Error::from)?;
        let workers = self
            .state
            .term()?
            .registry
            .list(filter)
            .into_iter()
            .map(convert::worker_info)
            .collect();
        Ok(Response::new(v1::ListWorkersResponse { workers }))
    }

    async fn get_leader(
        &self,
        _request: Request<v1::GetLeaderRequest>,
    ) -> Result<Response<v1::GetLeaderResponse>, Status> {
        let is_self = self.state.is_leader();
        let mode = match self.state.config.store {
            trainfleet_core::config::StoreKind::Embedded => "standalone",
            trainfleet_core::config::StoreKind::Etcd if is_self => "etcd-leader",
            trainfleet_core::config::StoreKind::Etcd => "etcd-follower",
        };
        Ok(Response::new(v1::GetLeaderResponse {
            leader_id: if is_self {
                self.state.id.clone()
            } else {
                String::new()
            },
            address: if is_self {
                self.state.advertise_address.clone()
            } else {
                self.state.leader()
            },
            is_self,
            mode: mode.to_owned(),
            uptime: Some(convert::duration(self.state.started.elapsed())),
        }))
    }

    async fn get_queue(
        &self,
        _request: Request<v1::GetQueueRequest>,
    ) -> Result<Response<v1::GetQueueResponse>, Status> {
        Ok(Response::new(self.state.term()?.control.queue().to_wire()))
    }
}
