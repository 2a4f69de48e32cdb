//! Connecting to a coordinator from the CLI.

use std::time::Duration;

use anyhow::Context;
use tonic::transport::Channel;

/// A channel to the coordinator at `endpoint` (`host:port` or a URL), connected eagerly so that
/// an unreachable coordinator is reported up front, with its address.
pub async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    connect_with(endpoint, Some(Duration::from_secs(30))).await
}

/// Like [`connect`], without a per-call deadline: for streams that last as long as a job.
pub async fn connect_streaming(endpoint: &str) -> anyhow::Result<Channel> {
    connect_with(endpoint, None).await
}

async fn connect_with(endpoint: &str, timeout: Option<Duration>) -> anyhow::Result<Channel> {
    let uri = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    };
    let mut e = tonic::transport::Endpoint::from_shared(uri)
        .with_context(|| format!("coordinator address {endpoint:?} is not valid; use host:port"))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(timeout) = timeout {
        e = e.timeout(timeout);
    }
    e.connect().await.with_context(|| {
        format!(
            "cannot reach the coordinator at {endpoint} (set --endpoint or TRAINFLEET_ENDPOINT)"
        )
    })
}

/// A gRPC error as one readable line: code and message.
pub fn status_error(what: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {:?}: {}", status.code(), status.message())
}
