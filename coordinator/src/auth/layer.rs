//! The tower layer in front of every service: finds the method's rule, authenticates the bearer
//! token, checks the role, and hands the call on with the [`Caller`] in its extensions (services
//! that act on ownership, like `JobService.Cancel`, read it there). Outside the forwarding
//! layer: a follower refuses a stranger itself, and the leader checks again what it is sent.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use super::rules::{self, Rule};
use super::{Access, Caller};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps the server's routes (`tonic::transport::Server::layer`).
#[derive(Clone)]
pub struct AuthLayer {
    access: Arc<Access>,
}

impl AuthLayer {
    /// Checks calls against `access`.
    pub fn new(access: Arc<Access>) -> Self {
        Self { access }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            access: self.access.clone(),
        }
    }
}

/// The routes behind the access check.
#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    access: Arc<Access>,
}

impl<S> Service<http::Request<Body>> for Authorize<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        match check(&self.access, &request) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(async move { inner.call(request).await.map_err(Into::into) })
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

/// The caller, or the status that refuses the call.
fn check(access: &Access, request: &http::Request<Body>) -> Result<Caller, Status> {
    if !access.enabled() {
        return Ok(Caller::anonymous());
    }
    let path = request.uri().path();
    let method = path.trim_start_matches('/');
    let Some(rule) = rules::rule(path) else {
        return Err(Status::permission_denied(format!(
            "{method} has no access rule, so it is refused"
        )));
    };
    if rule == Rule::Open {
        return Ok(Caller::anonymous());
    }
    let header = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default());
    let Some(header) = header else {
        return Err(Status::unauthenticated(format!(
            "{method} needs a token: send 'authorization: Bearer <token>' metadata \
             (grpcurl -H, trainfleet --token-file or TRAINFLEET_TOKEN)"
        )));
    };
    let secret = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            Status::unauthenticated("the authorization metadata must read 'Bearer <token>'")
        })?;
    let caller = access
        .authenticate(secret)
        .map_err(|why| Status::unauthenticated(format!("{why}: {method} refused")))?;
    if rules::allows(rule, caller.role) {
        return Ok(caller);
    }
    let needs = match rule {
        Rule::Worker => "a worker token".to_owned(),
        Rule::AtLeast(role) => format!("the {} role or above", role.name()),
        Rule::Open | Rule::AnyToken => "a token".to_owned(),
    };
    Err(Status::permission_denied(format!(
        "{} (role {}) may not call {method}: it needs {needs}",
        caller.name,
        caller.role.name()
    )))
}
