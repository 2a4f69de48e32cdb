//! `trainfleet.v1.AccessService`: bearer tokens (made, listed, revoked by admins) and WhoAmI.
//! Token writes go through the term's store, so they are fenced like every leader write; the
//! leader applies them to its own [`Access`] at once and the other replicas within
//! [`crate::auth::REFRESH`].

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use trainfleet_proto::v1;
use trainfleet_proto::v1::access_service_server::AccessService;

use crate::auth::audit::{self, AuditTarget};
use crate::auth::tokens::{self, TokenRecord};
use crate::auth::{Access, Caller, Role, load_tokens};
use crate::error::Error;
use crate::state::State;

/// Serves tokens.
#[derive(Debug, Clone)]
pub struct AccessApi {
    state: Arc<State>,
    access: Arc<Access>,
}

impl AccessApi {
    /// The service over a replica's state and its view of the tokens.
    pub fn new(state: Arc<State>, access: Arc<Access>) -> Self {
        Self { state, access }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> Status {
    Error::from(trainfleet_core::Error::invalid_field(field, message)).into()
}

/// The wire role of a stored one.
pub fn role_to_wire(role: Role) -> v1::Role {
    match role {
        Role::Viewer => v1::Role::Viewer,
        Role::Submitter => v1::Role::Submitter,
        Role::Admin => v1::Role::Admin,
        Role::Worker => v1::Role::Worker,
    }
}

fn role_from_wire(role: i32) -> Result<Role, Status> {
    match v1::Role::try_from(role) {
        Ok(v1::Role::Viewer) => Ok(Role::Viewer),
        Ok(v1::Role::Submitter) => Ok(Role::Submitter),
        Ok(v1::Role::Admin) => Ok(Role::Admin),
        Ok(v1::Role::Worker) => Ok(Role::Worker),
        _ => Err(invalid(
            "role",
            "is required: ROLE_VIEWER, ROLE_SUBMITTER, ROLE_ADMIN or ROLE_WORKER",
        )),
    }
}

fn token_to_wire(r: &TokenRecord) -> v1::Token {
    v1::Token {
        id: r.id.clone(),
        name: r.name.clone(),
        role: role_to_wire(r.role) as i32,
        created_at: Some(r.created_at.into()),
        expires_at: r.expires_at.map(Into::into),
        created_by: r.created_by.clone(),
    }
}

fn store_status(e: impl std::fmt::Display) -> Status {
    Error::Store(format!("state store: {e}")).into()
}

#[tonic::async_trait]
impl AccessService for AccessApi {
    async fn create_token(
        &self,
        request: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        tokens::validate_name(&req.name).map_err(|m| invalid("name", m))?;
        let role = role_from_wire(req.role)?;
        let ttl = match req.ttl {
            None => None,
            Some(d) => Some(
                Duration::try_from(d)
                    .map_err(|_| invalid("ttl", "must be a non-negative duration"))?,
            ),
        };
        let term = self.state.term()?;
        let existing = load_tokens(term.store.as_ref()).await?;
        if existing.iter().any(|t| t.name == req.name) || self.access.is_fixed_name(&req.name) {
            return Err(Status::already_exists(format!(
                "a token named {:?} exists; revoke it first or choose another name",
                req.name
            )));
        }
        let (record, secret) = tokens::generate(&req.name, role, ttl, &caller.name);
        let value = serde_json::to_vec(&record).map_err(store_status)?;
        term.store
            .put(&tokens::token_key(&record.id), &value)
            .await
            .map_err(store_status)?;
        self.access.upsert(record.clone());
        tracing::info!(token = %record.id, name = %record.name, role = record.role.name(), by = %caller.name, "token created");
        let target = format!("token {}", record.name);
        Ok(AuditTarget::on(
            Response::new(v1::CreateTokenResponse {
                token: Some(token_to_wire(&record)),
                secret,
            }),
            target,
        ))
    }

    async fn list_tokens(
        &self,
        _request: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        let term = self.state.term()?;
        let mut records = load_tokens(term.store.as_ref()).await?;
        records.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(Response::new(v1::ListTokensResponse {
            tokens: records.iter().map(token_to_wire).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::Token>, Status> {
        let caller = Caller::of(&request);
        let wanted = request.into_inner().token;
        if wanted.trim().is_empty() {
            return Err(invalid("token", "is required: a token's id or name"));
        }
        let term = self.state.term()?;
        let records = load_tokens(term.store.as_ref()).await?;
        let Some(record) = records
            .into_iter()
            .find(|t| t.id == wanted || t.name == wanted)
        else {
            return Err(Status::not_found(format!(
                "no token with id or name {wanted:?}"
            )));
        };
        term.store
            .delete(&tokens::token_key(&record.id))
            .await
            .map_err(store_status)?;
        self.access.remove(&record.id);
        tracing::info!(token = %record.id, name = %record.name, by = %caller.name, "token revoked");
        Ok(AuditTarget::on(
            Response::new(token_to_wire(&record)),
            format!("token {}", record.name),
        ))
    }

    async fn list_audit(
        &self,
        request: Request<v1::ListAuditRequest>,
    ) -> Result<Response<v1::ListAuditResponse>, Status> {
        let limit = match request.get_ref().limit as usize {
            0 => 100,
            n => n.min(audit::KEEP),
        };
        let term = self.state.term()?;
        let records = audit::newest(term.store.as_ref(), limit)
            .await
            .map_err(store_status)?;
        Ok(Response::new(v1::ListAuditResponse {
            entries: records
                .into_iter()
                .map(|r| v1::AuditEntry {
                    at: Some(r.at.into()),
                    caller: r.caller,
                    role: r.role.map_or(v1::Role::Unspecified, role_to_wire) as i32,
                    method: r.method,
                    target: r.target,
                    outcome: r.outcome,
                    message: r.message,
                    replica: r.replica,
                })
                .collect(),
        }))
    }

    async fn who_am_i(
        &self,
        request: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::WhoAmIResponse>, Status> {
        let caller = Caller::of(&request);
        Ok(Response::new(v1::WhoAmIResponse {
            name: caller.name,
            role: role_to_wire(caller.role) as i32,
        }))
    }
}
