//! `trainfleet-coordinator health`: one `grpc.health.v1.Health/Check`, for container
//! `HEALTHCHECK`s, Compose healthchecks and scripts; no `grpc_health_probe` binary needed. With
//! `--workers N` it also asks `ClusterService/ListWorkers` (any replica forwards it to the
//! leader) and wants N alive workers: the Helm chart's `helm test` check.

use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use trainfleet_proto::ClientTls;

/// Asks the replica at `address` (`host:port` or a URL) whether `service` is SERVING (`""`: the
/// server as a whole). `Err` says why not: unreachable (and how), timed out, NOT_SERVING, or a
/// name the server does not know.
/// `tls`: how to dial (health is answered in plaintext on a TLS port too, for kubelet probes).
pub async fn check(
    address: &str,
    service: &str,
    timeout: Duration,
    tls: &ClientTls,
) -> Result<(), String> {
    let channel = connect(address, timeout, tls).await?;
    let shown = if service.is_empty() {
        "the server (\"\")".to_owned()
    } else {
        format!("service {service:?}")
    };
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::NotFound => format!(
                "{address} knows no health name {service:?} (use \"\", a trainfleet.v1 service \
                 name, or trainfleet.v1.Leader)"
            ),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => format!(
                "{address} did not answer within {}",
                humantime::format_duration(timeout)
            ),
            _ => format!("{address}: {:?}: {}", status.code(), status.message()),
        })?
        .into_inner();
    match ServingStatus::try_from(answer.status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(format!("{address}: {shown} is {}", other.as_str_name())),
        Err(_) => Err(format!(
            "{address}: {shown} has unknown status {}",
            answer.status
        )),
    }
}

async fn connect(
    address: &str,
    timeout: Duration,
    tls: &ClientTls,
) -> Result<tonic::transport::Channel, String> {
    let endpoint = tls
        .endpoint(address)?
        .connect_timeout(timeout)
        .timeout(timeout);
    endpoint.connect().await.map_err(|e| {
        format!(
            "cannot reach {address} within {}: {}",
            humantime::format_duration(timeout),
            crate::error::chain(&e)
        )
    })
}

/// Asks the cluster behind `address` for its workers: `(alive, all)`, or why it could not.
/// `token` is sent as the bearer token (a coordinator with access control on wants a viewer's).
pub async fn workers(
    address: &str,
    timeout: Duration,
    token: Option<&str>,
    tls: &ClientTls,
) -> Result<(usize, usize), String> {
    use trainfleet_proto::v1;
    let channel = connect(address, timeout, tls).await?;
    let bearer = trainfleet_proto::Bearer::new(token)?;
    let workers =
        v1::cluster_service_client::ClusterServiceClient::with_interceptor(channel, bearer)
            .list_workers(v1::ListWorkersRequest { state: 0 })
            .await
            .map_err(|s| format!("{address}: ListWorkers: {:?}: {}", s.code(), s.message()))?
            .into_inner()
            .workers;
    let alive = workers
        .iter()
        .filter(|w| w.state == v1::WorkerState::Alive as i32)
        .count();
    Ok((alive, workers.len()))
}
