//! The server's own time limit on a call, so that no unary call holds a stream (and whatever it
//! waits on) for ever, whatever its client asked. A client's shorter `grpc-timeout` still ends a
//! call sooner (tonic applies it inside).
//!
//! Which limit a method gets is [`crate::limits::call_timeout`]: a unary call
//! [`crate::limits::CALL_TIMEOUT`], the worker's long-polls that plus the poll cap, streams none
//! (they are long by design, and their clients end them). Past it the call is answered
//! DEADLINE_EXCEEDED naming the method and the limit, and its handler is dropped, as when a
//! client's own deadline passes: what it committed stays committed, what it had not is not.

use std::collections::HashSet;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps the server's routes (`tonic::transport::Server::layer`).
#[derive(Clone)]
pub struct DeadlineLayer {
    max_poll_wait: Duration,
}

impl DeadlineLayer {
    /// Limits for a coordinator whose long-polls wait at most `max_poll_wait`.
    pub fn new(max_poll_wait: Duration) -> Self {
        Self { max_poll_wait }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            max_poll_wait: self.max_poll_wait,
        }
    }
}

/// The routes, each call bounded by its method's limit.
#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    max_poll_wait: Duration,
}

impl<S> Service<http::Request<Body>> for Deadline<S>
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

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        let limit = crate::limits::call_timeout(path, is_streaming(path), self.max_poll_wait);
        // Shares the request's bytes: named only if the call runs out of time.
        let uri = request.uri().clone();
        Box::pin(async move {
            let call = inner.call(request);
            let Some(limit) = limit else {
                return call.await.map_err(Into::into);
            };
            match tokio::time::timeout(limit, call).await {
                Ok(answer) => answer.map_err(Into::into),
                Err(_) => {
                    let method = uri.path().trim_start_matches('/');
                    tracing::warn!(%method, limit = ?limit, "call stopped at the server's time limit");
                    Ok(Status::deadline_exceeded(format!(
                        "{method} took longer than this server's limit of {}",
                        humantime::format_duration(limit)
                    ))
                    .into_http())
                }
            }
        })
    }
}

/// Whether `/service/method` streams requests or responses (from the served descriptor sets;
/// an unknown path is not, and is refused by the access layer anyway).
fn is_streaming(path: &str) -> bool {
    static STREAMING: OnceLock<HashSet<String>> = OnceLock::new();
    STREAMING
        .get_or_init(|| {
            crate::auth::rules::served()
                .into_iter()
                .filter(|m| m.streaming)
                .map(|m| m.path)
                .collect()
        })
        .contains(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Route = tower::util::BoxCloneService<http::Request<Body>, http::Response<Body>, BoxError>;

    /// A route that answers OK after `took`.
    fn slow(took: Duration) -> Deadline<Route> {
        let route = tower::service_fn(move |_request: http::Request<Body>| async move {
            tokio::time::sleep(took).await;
            Ok::<_, BoxError>(http::Response::new(Body::empty()))
        });
        DeadlineLayer::new(Duration::from_secs(30)).layer(Route::new(route))
    }

    async fn call(service: &mut Deadline<Route>, path: &str) -> (Duration, Option<String>, String) {
        let request = http::Request::builder()
            .uri(format!("http://coordinator{path}"))
            .body(Body::empty())
            .unwrap();
        let started = tokio::time::Instant::now();
        let response = service.call(request).await.unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        (
            started.elapsed(),
            header("grpc-status"),
            header("grpc-message").unwrap_or_default(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_unary_call_ends_at_its_limit_a_long_poll_later_and_a_stream_never() {
        let mut stuck = slow(Duration::from_secs(3600));
        let (took, code, message) = call(&mut stuck, "/trainfleet.v1.JobService/Submit").await;
        assert_eq!(took, crate::limits::CALL_TIMEOUT);
        assert_eq!(code.as_deref(), Some("4"), "DEADLINE_EXCEEDED");
        assert!(
            message.contains("trainfleet.v1.JobService/Submit") && message.contains("1m"),
            "{message}"
        );

        // The worker's long-polls: the poll cap on top.
        for method in ["PollTask", "CompleteTask"] {
            let (took, code, _) = call(
                &mut stuck,
                &format!("/trainfleet.v1.WorkerService/{method}"),
            )
            .await;
            assert_eq!(took, crate::limits::CALL_TIMEOUT + Duration::from_secs(30));
            assert_eq!(code.as_deref(), Some("4"));
        }

        // A stream is the client's to end.
        let mut long = slow(Duration::from_secs(600));
        let (took, code, _) = call(&mut long, "/trainfleet.v1.JobService/Watch").await;
        assert_eq!((took, code), (Duration::from_secs(600), None));

        // A call within its limit is untouched.
        let mut quick = slow(Duration::from_secs(2));
        let (took, code, _) = call(&mut quick, "/trainfleet.v1.JobService/Get").await;
        assert_eq!((took, code), (Duration::from_secs(2), None));
    }
}
