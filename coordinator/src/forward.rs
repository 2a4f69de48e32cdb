//! Any replica answers: a follower forwards public calls to the leader and relays the answer, as
//! etcd, Consul and Vault standbys do. A Kubernetes Service, a load balancer or a user's grpcurl
//! reaches *some* replica; with this layer every replica is usable.
//!
//! The layer works on HTTP/2 requests, below gRPC: the request's headers (metadata, deadline)
//! and body go to the leader unchanged, and the leader's response streams back frame by frame,
//! so unary calls and server streams (`JobService.Watch`) are relayed alike, with no per-method
//! code. What is forwarded: every method of the public services except
//! `ClusterService.GetLeader`, which each replica answers for itself. What is not: the worker
//! protocol (workers talk to the leader directly and follow the leader named in a refusal),
//! health and reflection.
//!
//! While no leader is known (an election in progress) a call waits up to `etcd.forward_wait`,
//! then fails with UNAVAILABLE saying why. A call is sent to the leader at most once: only a
//! failure to *connect* is retried, so a Submit can never reach two leaders.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::Frame;
use http_body_util::{BodyExt, Full, Limited};
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::{Layer, Service, ServiceExt};
use trainfleet_proto::{ClientTls, PUBLIC_SERVICES};

use crate::error::chain;
use crate::state::State;

/// Request header a forwarding replica adds (its advertise address). A request that carries it
/// is never forwarded again: a replica that is not the leader either answers it itself
/// (UNAVAILABLE naming the leader) and the first replica relays that.
pub const FORWARDED_BY: &str = "trainfleet-forwarded-by";
/// Response header naming the leader that served a forwarded call (visible with `grpcurl -v`).
pub const FORWARDED_TO: &str = "trainfleet-forwarded-to";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long one connection attempt to the leader may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest request forwarded; above what `JobService` decodes, so its own limit answers first.
const MAX_FORWARDED_BYTES: usize = crate::services::jobs::MAX_REQUEST_BYTES + (1 << 20);
/// Pause between looks for a leader while none is known or reachable.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Wraps the server's routes (`tonic::transport::Server::layer`).
#[derive(Clone)]
pub struct ForwardLayer {
    forwarder: Arc<Forwarder>,
}

impl ForwardLayer {
    /// Forwards on behalf of the replica whose state is `state`; `wait` bounds how long a call
    /// waits for a leader to be known and reachable.
    /// `tls`: how to dial the leader when the replicas serve TLS.
    pub fn new(state: Arc<State>, wait: Duration, tls: Option<ClientTls>) -> Self {
        Self {
            forwarder: Arc::new(Forwarder {
                state,
                wait,
                tls,
                channel: Mutex::new(None),
            }),
        }
    }
}

impl<S> Layer<S> for ForwardLayer {
    type Service = Forward<S>;

    fn layer(&self, inner: S) -> Forward<S> {
        Forward {
            inner,
            forwarder: self.forwarder.clone(),
        }
    }
}

/// The routes of one replica, forwarding what the leader must answer.
#[derive(Clone)]
pub struct Forward<S> {
    inner: S,
    forwarder: Arc<Forwarder>,
}

impl<S> Service<http::Request<Body>> for Forward<S>
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
        // The service that was polled ready is the one to call; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let forwarder = self.forwarder.clone();
        Box::pin(async move {
            let request = if forwarder.applies_to(&request) {
                match forwarder.route(request).await {
                    Ok(response) => return Ok(response),
                    Err(local) => local,
                }
            } else {
                request
            };
            inner.call(request).await.map_err(Into::into)
        })
    }
}

/// Where a call goes.
enum Target {
    /// This replica leads (or became leader while the call waited): serve it here.
    Local,
    /// Relay it to the leader at this address.
    Leader(String, Channel),
    /// No leader could be reached in time.
    Refused(Status),
}

/// What the layer's services share: the replica's state and one connection to the leader.
struct Forwarder {
    state: Arc<State>,
    wait: Duration,
    /// TLS to the leader, when the replicas serve it.
    tls: Option<ClientTls>,
    /// The leader's address and a connection to it, replaced when the leader changes and
    /// dropped when a call over it fails.
    channel: Mutex<Option<(String, Channel)>>,
}

impl Forwarder {
    /// Whether this call must reach the leader from here: a public method (not `GetLeader`) on
    /// a replica of an etcd cluster that does not lead now, and not already forwarded once.
    fn applies_to(&self, request: &http::Request<Body>) -> bool {
        if self.state.config.store != trainfleet_core::config::StoreKind::Etcd
            || self.state.is_leader()
            || request.headers().contains_key(FORWARDED_BY)
        {
            return false;
        }
        let path = request.uri().path();
        let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
            return false;
        };
        PUBLIC_SERVICES.contains(&service)
            && !(service == "trainfleet.v1.ClusterService" && method == "GetLeader")
    }

    /// Sends the call to the leader and relays its answer, waiting (up to `wait`) for a leader
    /// that is known and accepts a connection. `Err` gives the call back to be served here:
    /// this replica became the leader meanwhile.
    async fn route(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, http::Request<Body>> {
        let deadline = Instant::now() + self.wait;
        // The request is one message (no public method streams from the client): kept whole,
        // it can be sent again when a connection to the leader could not be made.
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_FORWARDED_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return Ok(Status::invalid_argument(format!(
                    "the request could not be read to forward it to the leader: {e}"
                ))
                .into_http());
            }
        };
        let rebuild =
            || http::Request::from_parts(parts.clone(), Body::new(Full::new(body.clone())));
        let mut last_error = None;
        loop {
            match self.leader(deadline, last_error.take()).await {
                Target::Local => return Err(rebuild()),
                Target::Refused(status) => return Ok(status.into_http()),
                Target::Leader(leader, channel) => {
                    match self.forward(&leader, channel, rebuild()).await {
                        Ok(response) => return Ok(response),
                        Err(e) if never_sent(&e) && Instant::now() < deadline => {
                            last_error = Some(format!("the leader at {leader}: {}", chain(&e)));
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                        Err(e) => {
                            return Ok(Status::unavailable(format!(
                                "this coordinator is a follower and forwarding to the leader at \
                                 {leader} failed ({}); retry shortly",
                                chain(&e)
                            ))
                            .into_http());
                        }
                    }
                }
            }
        }
    }

    /// Waits until `deadline` for a leader that is known and accepts a connection.
    async fn leader(&self, deadline: Instant, mut last_error: Option<String>) -> Target {
        loop {
            if self.state.is_leader() {
                return Target::Local;
            }
            if self.state.shutdown.is_cancelled() {
                return Target::Refused(Status::unavailable(
                    "this coordinator is shutting down; retry on another replica",
                ));
            }
            let leader = self.state.leader();
            if !leader.is_empty() && leader != self.state.advertise_address {
                let remaining = deadline.saturating_duration_since(Instant::now());
                match self.channel(&leader, remaining.max(RETRY_PAUSE)).await {
                    Ok(channel) => return Target::Leader(leader, channel),
                    Err(e) => last_error = Some(format!("the leader at {leader}: {e}")),
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let waited = humantime::format_duration(self.wait);
                let why = match last_error {
                    Some(e) => format!(
                        "this coordinator is a follower and could not reach the leader within \
                         {waited} ({e}); retry shortly"
                    ),
                    None => format!(
                        "this coordinator is a follower and no leader was elected within \
                         {waited} (an election may be in progress, or the replicas cannot reach \
                         etcd); retry shortly"
                    ),
                };
                return Target::Refused(Status::unavailable(why));
            }
            tokio::time::sleep(RETRY_PAUSE.min(deadline - now)).await;
        }
    }

    /// The cached connection to `leader`, or a new one.
    async fn channel(&self, leader: &str, budget: Duration) -> Result<Channel, String> {
        if let Some((address, channel)) = &*self.channel.lock().unwrap_or_else(|p| p.into_inner())
            && address == leader
        {
            return Ok(channel.clone());
        }
        let endpoint = match &self.tls {
            Some(tls) => tls.endpoint(&format!("https://{leader}"))?,
            None => Endpoint::from_shared(format!("http://{leader}"))
                .map_err(|e| format!("not a valid address: {e}"))?,
        }
        .connect_timeout(CONNECT_TIMEOUT.min(budget))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20));
        let channel = endpoint.connect().await.map_err(|e| chain(&e))?;
        *self.channel.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((leader.to_owned(), channel.clone()));
        Ok(channel)
    }

    /// Forgets the connection to `leader` after a call over it failed.
    fn forget(&self, leader: &str) {
        let mut cached = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        if cached
            .as_ref()
            .is_some_and(|(address, _)| address == leader)
        {
            *cached = None;
        }
    }

    /// Sends the call to the leader once; its answer is relayed as it streams.
    async fn forward(
        &self,
        leader: &str,
        mut channel: Channel,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<Body>, tonic::transport::Error> {
        if let Ok(me) = self.state.advertise_address.parse() {
            request.headers_mut().insert(FORWARDED_BY, me);
        }
        tracing::debug!(path = request.uri().path(), %leader, "forwarding to the leader");
        let answer = match channel.ready().await {
            Ok(ready) => ready.call(request).await,
            Err(e) => Err(e),
        };
        let response = answer.inspect_err(|_| self.forget(leader))?;
        let (mut parts, body) = response.into_parts();
        if let Ok(value) = leader.parse() {
            parts.headers.insert(FORWARDED_TO, value);
        }
        Ok(http::Response::from_parts(
            parts,
            Body::new(Relay::new(body, leader.to_owned())),
        ))
    }
}

/// Whether a failed call never left this replica: the connection to the leader could not be
/// made, so sending it again cannot make it happen twice.
fn never_sent(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(cause) = source {
        if cause.is::<tonic::ConnectError>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The leader's response body, passed through; if the leader's stream breaks mid-way (the
/// leader died during a Watch), the client gets trailers with UNAVAILABLE instead of a reset.
struct Relay {
    inner: Body,
    leader: String,
    done: bool,
}

impl Relay {
    fn new(inner: Body, leader: String) -> Self {
        Self {
            inner,
            leader,
            done: false,
        }
    }
}

impl http_body::Body for Relay {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                let status = Status::unavailable(format!(
                    "the connection to the leader at {} broke mid-call ({e}); retry",
                    self.leader
                ));
                let mut trailers = http::HeaderMap::new();
                Poll::Ready(Some(match status.add_header(&mut trailers) {
                    Ok(()) => Ok(Frame::trailers(trailers)),
                    Err(status) => Err(status),
                }))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
