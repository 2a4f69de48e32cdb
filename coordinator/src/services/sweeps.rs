//! `trainfleet.v1.SweepService`: start, inspect, list and cancel hyperparameter sweeps.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use trainfleet_proto::v1;
use trainfleet_proto::v1::sweep_service_server::SweepService;

use crate::auth::audit::AuditTarget;
use crate::auth::{Caller, Role};
use crate::convert::sweeps::sweep_spec_from_wire;
use crate::error::Error;
use crate::state::State;

use super::jobs::{DEFAULT_PAGE, MAX_PAGE, invalid};

/// Serves sweeps.
#[derive(Debug, Clone)]
pub struct SweepApi {
    state: Arc<State>,
}

impl SweepApi {
    /// The service over a replica's state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl SweepService for SweepApi {
    async fn start(
        &self,
        request: Request<v1::StartSweepRequest>,
    ) -> Result<Response<v1::Sweep>, Status> {
        let caller = Caller::of(&request);
        let owner = if self.state.config.auth.enabled {
            caller.name
        } else {
            String::new()
        };
        let req = request.into_inner();
        if req.idempotency_key.len() > 128 {
            return Err(invalid(
                "idempotency_key",
                format!("is {} bytes; the limit is 128", req.idempotency_key.len()),
            ));
        }
        let spec = req
            .spec
            .ok_or_else(|| invalid("spec", "is missing; set spec_yaml or structured".to_owned()))?;
        let spec = sweep_spec_from_wire(spec).map_err(Error::from)?;
        let term = self.state.term()?;
        let sweep = term
            .control
            .start_sweep(spec, req.idempotency_key, owner)
            .await?;
        let target = format!("sweep {}", sweep.record.id);
        Ok(AuditTarget::on(Response::new(sweep.to_wire()), target))
    }

    async fn get(
        &self,
        request: Request<v1::GetSweepRequest>,
    ) -> Result<Response<v1::Sweep>, Status> {
        let term = self.state.term()?;
        Ok(Response::new(
            term.control.sweep(&request.get_ref().id).await?.to_wire(),
        ))
    }

    async fn list(
        &self,
        request: Request<v1::ListSweepsRequest>,
    ) -> Result<Response<v1::ListSweepsResponse>, Status> {
        let size = match request.get_ref().page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let term = self.state.term()?;
        let (sweeps, next_page_token) = term
            .control
            .sweeps(&request.get_ref().page_token, size)
            .await?;
        Ok(Response::new(v1::ListSweepsResponse {
            sweeps: sweeps.iter().map(|s| s.to_wire()).collect(),
            next_page_token,
        }))
    }

    async fn cancel(
        &self,
        request: Request<v1::CancelSweepRequest>,
    ) -> Result<Response<v1::Sweep>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let term = self.state.term()?;
        // Admins cancel any sweep; a submitter only what it started (the rules let both in).
        if caller.role != Role::Admin {
            let sweep = term.control.sweep(&req.id).await?;
            if sweep.record.owner != caller.name {
                return Err(Status::permission_denied(format!(
                    "{} (role {}) may cancel only its own sweeps; sweep {} was started by {}",
                    caller.name,
                    caller.role.name(),
                    req.id,
                    if sweep.record.owner.is_empty() {
                        "the coordinator or before access control"
                    } else {
                        &sweep.record.owner
                    }
                )));
            }
        }
        let sweep = term.control.cancel_sweep(&req.id, &req.reason).await?;
        Ok(AuditTarget::on(
            Response::new(sweep.to_wire()),
            format!("sweep {}", req.id),
        ))
    }
}
