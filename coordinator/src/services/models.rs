//! `trainfleet.v1.ModelService`: the model registry and each dataset's champion pointer.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use trainfleet_proto::v1;
use trainfleet_proto::v1::model_service_server::ModelService;

use crate::auth::Caller;
use crate::auth::audit::AuditTarget;
use crate::error::Error;
use crate::state::State;

/// Serves models.
#[derive(Debug, Clone)]
pub struct ModelApi {
    state: Arc<State>,
}

impl ModelApi {
    /// The service over a replica's state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    /// " (by NAME)" with access control on: the champion record's reason says who moved it.
    fn by<T>(&self, request: &Request<T>) -> String {
        if self.state.config.auth.enabled {
            format!(" (by {})", Caller::of(request).name)
        } else {
            String::new()
        }
    }
}

fn required(field: &str, value: &str) -> Result<(), Status> {
    if value.trim().is_empty() {
        return Err(
            Error::from(trainfleet_core::Error::invalid_field(field, "is required")).into(),
        );
    }
    Ok(())
}

#[tonic::async_trait]
impl ModelService for ModelApi {
    async fn list(
        &self,
        request: Request<v1::ListModelsRequest>,
    ) -> Result<Response<v1::ListModelsResponse>, Status> {
        let req = request.into_inner();
        let size = match req.page_size as usize {
            0 => 50,
            n => n.min(500),
        };
        let term = self.state.term()?;
        let (models, next_page_token) = term
            .control
            .models(&req.dataset, size, &req.page_token)
            .await?;
        Ok(Response::new(v1::ListModelsResponse {
            models: models.iter().map(|m| m.to_wire()).collect(),
            next_page_token,
        }))
    }

    async fn get(
        &self,
        request: Request<v1::GetModelRequest>,
    ) -> Result<Response<v1::Model>, Status> {
        let term = self.state.term()?;
        Ok(Response::new(
            term.control.model(&request.get_ref().id).await?.to_wire(),
        ))
    }

    async fn get_champion(
        &self,
        request: Request<v1::GetChampionRequest>,
    ) -> Result<Response<v1::Model>, Status> {
        let dataset = &request.get_ref().dataset;
        required("dataset", dataset)?;
        Ok(Response::new(
            self.state.term()?.control.champion(dataset)?.to_wire(),
        ))
    }

    async fn promote(
        &self,
        request: Request<v1::PromoteModelRequest>,
    ) -> Result<Response<v1::Model>, Status> {
        let by = self.by(&request);
        let req = request.into_inner();
        required("reason", &req.reason)?;
        let reason = format!("{}{by}", req.reason);
        let model = self
            .state
            .term()?
            .control
            .promote(&req.id, &reason, expected(&req.expected_champion))
            .await?;
        Ok(AuditTarget::on(
            Response::new(model.to_wire()),
            format!("model {}", req.id),
        ))
    }

    async fn rollback(
        &self,
        request: Request<v1::RollbackRequest>,
    ) -> Result<Response<v1::Model>, Status> {
        let by = self.by(&request);
        let req = request.into_inner();
        required("dataset", &req.dataset)?;
        required("reason", &req.reason)?;
        let reason = format!("{}{by}", req.reason);
        let model = self
            .state
            .term()?
            .control
            .rollback(&req.dataset, &reason, expected(&req.expected_champion))
            .await?;
        Ok(AuditTarget::on(
            Response::new(model.to_wire()),
            format!("dataset {}", req.dataset),
        ))
    }
}

/// The compare-and-swap condition of a request: `None` (unconditional), `Some(None)` ("none":
/// only while there is no champion), or `Some(Some(id))`.
fn expected(text: &str) -> Option<Option<&str>> {
    match text {
        "" => None,
        "none" => Some(None),
        id => Some(Some(id)),
    }
}
