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

use super::audit::{AuditLog, AuditRecord, AuditTarget};
use super::rules::{self, Rule};
use super::{Access, Caller};
use crate::tls::Peer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps the server's routes (`tonic::transport::Server::layer`).
#[derive(Clone)]
pub struct AuthLayer {
    access: Arc<Access>,
    audit: AuditLog,
}

impl AuthLayer {
    /// Checks calls against `access`; records refused and state-changing calls in `audit`.
    pub fn new(access: Arc<Access>, audit: AuditLog) -> Self {
        Self { access, audit }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            access: self.access.clone(),
            audit: self.audit.clone(),
        }
    }
}

/// The routes behind the access check.
#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    access: Arc<Access>,
    audit: AuditLog,
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
        let method = request.uri().path().trim_start_matches('/').to_owned();
        let audit = self.audit.clone();
        let started = std::time::Instant::now();
        // An audit record is dated when the call arrived: a CompleteTask that goes on to
        // long-poll for the next task did its work then, not when its answer left.
        let received = std::time::SystemTime::now();
        match check(&self.access, &request) {
            Ok(caller) => {
                let audited = self.access.enabled() && rules::audited(&method);
                request.extensions_mut().insert(caller.clone());
                Box::pin(async move {
                    let response = inner.call(request).await.map_err(Into::into)?;
                    let (code, message) = outcome(response.headers());
                    crate::metrics::get().call(label(&method), &code, started.elapsed());
                    if audited {
                        let (outcome, message) = (code, message);
                        let target = response
                            .extensions()
                            .get::<AuditTarget>()
                            .map(|t| t.0.clone())
                            .unwrap_or_default();
                        audit
                            .record(AuditRecord {
                                at: received,
                                caller: caller.name,
                                role: Some(caller.role),
                                method,
                                target,
                                outcome,
                                message,
                                replica: String::new(),
                            })
                            .await;
                    }
                    Ok(response)
                })
            }
            Err((who, status)) => {
                let metrics = crate::metrics::get();
                let reason = match status.code() {
                    tonic::Code::Unauthenticated if status.message().contains("plaintext") => {
                        "plaintext"
                    }
                    tonic::Code::Unauthenticated => "unauthenticated",
                    _ => "permission_denied",
                };
                metrics
                    .auth_failures
                    .get_or_create(&crate::metrics::ReasonLabel { reason })
                    .inc();
                metrics.call(label(&method), &code_name(status.code()), started.elapsed());
                let record = AuditRecord {
                    at: received,
                    caller: who
                        .as_ref()
                        .map_or_else(|| "anonymous".to_owned(), |c| c.name.clone()),
                    role: who.map(|c| c.role),
                    method,
                    target: String::new(),
                    outcome: code_name(status.code()),
                    message: status.message().to_owned(),
                    replica: String::new(),
                };
                Box::pin(async move {
                    audit.record(record).await;
                    Ok(status.into_http())
                })
            }
        }
    }
}

/// The metrics label of `method`: itself when served, else `other`, so that a stranger's
/// made-up paths cannot grow the label set.
fn label(method: &str) -> &str {
    if rules::is_served(method) {
        method
    } else {
        "other"
    }
}

/// The gRPC code and message of a response: a trailers-only answer (every unary error) has them
/// in its headers; otherwise the call succeeded.
fn outcome(headers: &http::HeaderMap) -> (String, String) {
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return ("OK".to_owned(), String::new());
    };
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    (code_name(tonic::Code::from_i32(code)), message)
}

/// `PERMISSION_DENIED` for `Code::PermissionDenied`: the names grpcurl and the spec use.
pub fn code_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Undoes the percent-encoding of `grpc-message`.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The caller, or the status that refuses the call.
fn check(
    access: &Access,
    request: &http::Request<Body>,
) -> Result<Caller, (Option<Caller>, Status)> {
    let path = request.uri().path();
    let method = path.trim_start_matches('/');
    let rule = rules::rule(path);
    // Only on a TLS port: who the connection is (the plaintext check holds with access
    // control off too: the port serves TLS).
    let peer = request.extensions().get::<Peer>();
    if let Some(peer) = peer
        && !peer.encrypted
        && rule != Some(Rule::Open)
    {
        return Err((
            None,
            Status::unauthenticated(format!(
                "this coordinator serves TLS on this port and {method} came in plaintext: dial \
                 https:// with the cluster's CA (trainfleet --ca-cert, grpcurl -cacert instead \
                 of -plaintext)"
            )),
        ));
    }
    let certified = peer.and_then(|p| p.worker.as_deref()).map(Caller::worker);
    if !access.enabled() {
        return Ok(certified.unwrap_or_else(Caller::anonymous));
    }
    let Some(rule) = rule else {
        return Err((
            None,
            Status::permission_denied(format!("{method} has no access rule, so it is refused")),
        ));
    };
    if rule == Rule::Open {
        return Ok(Caller::anonymous());
    }
    if let Some(caller) = certified {
        return authorize(caller, rule, method);
    }
    let header = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default());
    let Some(header) = header else {
        return Err((
            None,
            Status::unauthenticated(format!(
                "{method} needs a token: send 'authorization: Bearer <token>' metadata \
                 (grpcurl -H, trainfleet --token-file or TRAINFLEET_TOKEN)"
            )),
        ));
    };
    let secret = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            (
                None,
                Status::unauthenticated("the authorization metadata must read 'Bearer <token>'"),
            )
        })?;
    let caller = access.authenticate(secret).map_err(|why| {
        (
            None,
            Status::unauthenticated(format!("{why}: {method} refused")),
        )
    })?;
    authorize(caller, rule, method)
}

/// The caller if its role may call `method` under `rule`; PERMISSION_DENIED otherwise.
fn authorize(caller: Caller, rule: Rule, method: &str) -> Result<Caller, (Option<Caller>, Status)> {
    if rules::allows(rule, caller.role) {
        return Ok(caller);
    }
    let needs = match rule {
        Rule::Worker => "a worker token or certificate".to_owned(),
        Rule::AtLeast(role) => format!("the {} role or above", role.name()),
        Rule::Open | Rule::AnyToken => "a token".to_owned(),
    };
    let status = Status::permission_denied(format!(
        "{} (role {}) may not call {method}: it needs {needs}",
        caller.name,
        caller.role.name()
    ));
    Err((Some(caller), status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_as_the_spec_names_them_and_messages_are_decoded() {
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(
            code_name(tonic::Code::PermissionDenied),
            "PERMISSION_DENIED"
        );
        assert_eq!(code_name(tonic::Code::Unauthenticated), "UNAUTHENTICATED");
        assert_eq!(
            percent_decode("job%20%60j-1%60 not found%"),
            "job `j-1` not found%"
        );
        let mut headers = http::HeaderMap::new();
        assert_eq!(outcome(&headers).0, "OK");
        headers.insert("grpc-status", "5".parse().unwrap());
        headers.insert("grpc-message", "no%20such%20job".parse().unwrap());
        assert_eq!(
            outcome(&headers),
            ("NOT_FOUND".to_owned(), "no such job".to_owned())
        );
    }
}
