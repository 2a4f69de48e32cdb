//! `trainfleet.v1.WorkerService`: the protocol workers speak.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use trainfleet_proto::v1;
use trainfleet_proto::v1::worker_service_server::WorkerService;

use crate::convert;
use crate::error::Error;
use crate::state::State;

/// Serves registration, long-polls and heartbeats.
#[derive(Debug, Clone)]
pub struct WorkerApi {
    state: Arc<State>,
}

impl WorkerApi {
    /// The service over a replica's state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    #[tracing::instrument(skip_all, fields(worker_id = %request.get_ref().worker_id))]
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let registration =
            convert::registration(request.into_inner(), peer).map_err(Error::from)?;
        let summary: Vec<String> = registration
            .devices
            .iter()
            .map(|d| format!("{} ({})", d.torch_name(), d.name))
            .collect();
        tracing::info!(
            host = %registration.host,
            slots = registration.slots,
            devices = ?summary,
            version = %registration.version,
            "worker registered"
        );
        let session = self.state.registry.register(registration);
        Ok(Response::new(v1::RegisterResponse {
            session_id: session.session_id,
            heartbeat_interval: Some(convert::duration(self.state.config.heartbeat_interval)),
            lease_timeout: Some(convert::duration(self.state.config.lease_timeout)),
            coordinator_version: trainfleet_core::VERSION.to_owned(),
        }))
    }

    async fn poll_task(
        &self,
        request: Request<v1::PollTaskRequest>,
    ) -> Result<Response<v1::PollTaskResponse>, Status> {
        let req = request.into_inner();
        let wait = convert::poll_wait(req.max_wait, self.state.config.max_poll_wait)
            .map_err(Error::from)?;
        self.state
            .registry
            .check_session(&req.worker_id, &req.session_id)?;
        // No task kinds are scheduled yet (the queue arrives with job scheduling), so a poll
        // always waits out its time. It still ends at once on shutdown, so that a stopping
        // coordinator is not held up by open long-polls.
        tokio::select! {
            _ = tokio::time::sleep(wait) => Ok(Response::new(v1::PollTaskResponse { task: None })),
            _ = self.state.shutdown.cancelled() => Err(Error::ShuttingDown.into()),
        }
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let req = request.into_inner();
        let running = req.tasks.into_iter().map(|t| t.task_id).collect();
        let deadline = self.state.registry.heartbeat(
            &req.worker_id,
            &req.session_id,
            req.free_slots,
            running,
        )?;
        Ok(Response::new(v1::HeartbeatResponse {
            directives: Vec::new(),
            deadline: Some(convert::timestamp(deadline)),
        }))
    }

    async fn complete_task(
        &self,
        request: Request<v1::CompleteTaskRequest>,
    ) -> Result<Response<v1::CompleteTaskResponse>, Status> {
        let req = request.into_inner();
        self.state
            .registry
            .check_session(&req.worker_id, &req.session_id)?;
        Err(Error::NotYetImplemented {
            method: "trainfleet.v1.WorkerService/CompleteTask",
            version: trainfleet_core::VERSION,
            why: "no task is ever assigned until job scheduling lands",
        }
        .into())
    }
}
