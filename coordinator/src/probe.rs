//! `trainfleet-coordinator health`: one `grpc.health.v1.Health/Check`, for container
//! `HEALTHCHECK`s, Compose healthchecks and scripts; no `grpc_health_probe` binary needed.

use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Asks the replica at `address` (`host:port` or a URL) whether `service` is SERVING (`""`: the
/// server as a whole). `Err` says why not: unreachable (and how), timed out, NOT_SERVING, or a
/// name the server does not know.
pub async fn check(address: &str, service: &str, timeout: Duration) -> Result<(), String> {
    let url = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let shown = if service.is_empty() {
        "the server (\"\")".to_owned()
    } else {
        format!("service {service:?}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| format!("{address:?} is not an address: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint.connect().await.map_err(|e| {
        format!(
            "cannot reach {address} within {}: {}",
            humantime::format_duration(timeout),
            crate::error::chain(&e)
        )
    })?;
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
