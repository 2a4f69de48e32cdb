//! Connecting to a coordinator from the CLI.

use std::time::Duration;

use std::sync::OnceLock;

use anyhow::Context;
use tonic::transport::Channel;
use trainfleet_proto::{AuthChannel, Bearer, ClientTls, TlsSettingNames};

/// The token every call carries (`--token-file` or `TRAINFLEET_TOKEN`), set once at start.
static BEARER: OnceLock<Bearer> = OnceLock::new();

/// Sets the token calls carry: the file's content, else `TRAINFLEET_TOKEN`, else none.
pub fn set_token(token_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let token = match token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?,
        ),
        None => std::env::var("TRAINFLEET_TOKEN").ok(),
    };
    let bearer = Bearer::new(token.as_deref()).map_err(anyhow::Error::msg)?;
    let _ = BEARER.set(bearer);
    Ok(())
}

/// How calls dial: TLS with `--ca-cert`, set once at start.
static TLS: OnceLock<ClientTls> = OnceLock::new();

/// Dials with TLS, trusting the CA in `ca_cert`; without it plaintext (unless an address says
/// https://).
pub fn set_tls(
    ca_cert: Option<&std::path::Path>,
    server_name: Option<String>,
) -> anyhow::Result<()> {
    let names = TlsSettingNames {
        ca: "--ca-cert",
        cert: "--cert",
        key: "--key",
    };
    let tls = ClientTls::from_files(ca_cert, None, None, &names)
        .map_err(anyhow::Error::msg)?
        .with_server_name(server_name);
    let _ = TLS.set(tls);
    Ok(())
}

fn bearer() -> Bearer {
    BEARER.get().cloned().unwrap_or_default()
}

/// A channel to the leading coordinator. `endpoint` is `host:port` or a URL, or several
/// replicas separated by commas: each is asked who leads (`ClusterService.GetLeader`, which
/// every replica answers) until one names a leader that answers. Connected eagerly, so that an
/// unreachable cluster is reported up front, with its addresses.
pub async fn connect(endpoint: &str) -> anyhow::Result<AuthChannel> {
    connect_leader(endpoint, Some(Duration::from_secs(30))).await
}

/// Like [`connect`], without a per-call deadline: for streams that last as long as a job.
pub async fn connect_streaming(endpoint: &str) -> anyhow::Result<AuthChannel> {
    connect_leader(endpoint, None).await
}

async fn connect_leader(endpoints: &str, timeout: Option<Duration>) -> anyhow::Result<AuthChannel> {
    use trainfleet_proto::v1;
    use trainfleet_proto::v1::cluster_service_client::ClusterServiceClient;
    let mut failures = Vec::new();
    // During an election no replica names a leader for a moment: ask again for a few seconds.
    for round in 0..20 {
        for endpoint in endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let channel = match connect_with(endpoint, timeout).await {
                Ok(c) => c,
                Err(e) => {
                    failures.push(format!("{e:#}"));
                    continue;
                }
            };
            // A replica that accepts connections but does not answer (frozen, overloaded) must not
            // hold the search up for a whole call deadline.
            let mut probe = tonic::Request::new(v1::GetLeaderRequest {});
            probe.set_timeout(Duration::from_secs(2));
            let answer = ClusterServiceClient::with_interceptor(channel.clone(), bearer())
                .get_leader(probe)
                .await;
            match answer.map(tonic::Response::into_inner) {
                Ok(leader) if leader.is_self => return Ok(with_token(channel)),
                Ok(leader) if !leader.address.is_empty() => {
                    match connect_with(&leader.address, timeout).await {
                        Ok(c) => return Ok(with_token(c)),
                        Err(e) => failures.push(format!("{e:#}")),
                    }
                }
                Ok(_) => failures.push(format!("{endpoint}: no leader known yet")),
                // Asking again cannot help a refused credential (or a plaintext dial of a
                // TLS port): say so at once.
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                    ) =>
                {
                    anyhow::bail!("{endpoint}: {}", status.message())
                }
                Err(status) => failures.push(format!("{endpoint}: {}", status.message())),
            }
        }
        if round == 0 && failures.iter().all(|f| f.contains("cannot reach")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let [only] = failures.as_slice() {
        anyhow::bail!("{only}");
    }
    anyhow::bail!("no coordinator leader found: {}", failures.join("; "))
}

async fn connect_with(endpoint: &str, timeout: Option<Duration>) -> anyhow::Result<Channel> {
    let tls = TLS.get().cloned().unwrap_or_default();
    let mut e = tls
        .endpoint(endpoint)
        .map_err(anyhow::Error::msg)?
        .connect_timeout(Duration::from_secs(5));
    if let Some(timeout) = timeout {
        e = e.timeout(timeout);
    }
    let tls_hint = if tls.enabled() {
        " over TLS; if it serves plaintext, drop --ca-cert"
    } else {
        ""
    };
    e.connect().await.with_context(|| {
        format!(
            "cannot reach the coordinator at {endpoint}{tls_hint} (set --endpoint or \
             TRAINFLEET_ENDPOINT)"
        )
    })
}

fn with_token(channel: Channel) -> AuthChannel {
    tonic::service::interceptor::InterceptedService::new(channel, bearer())
}

/// A gRPC error as one readable line: code and message.
pub fn status_error(what: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {:?}: {}", status.code(), status.message())
}
