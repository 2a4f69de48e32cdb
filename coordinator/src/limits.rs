//! What one client may ask of a coordinator, in one place. Past a limit the client gets a
//! status that says which (a message over its service's size: OUT_OF_RANGE naming both sizes;
//! headers over the list size: the stream is refused; a unary call past its time limit:
//! DEADLINE_EXCEEDED naming it), and nothing of the call is acted on but what it had committed.

use std::time::Duration;

/// Largest request a service decodes, by service. JobService takes a job's YAML (and the
/// structured spec), and SweepService a sweep with its base job, bounded again when parsed; the worker protocol carries an eval's
/// per-sample results; everything else is a name and a few fields.
pub fn max_request_bytes(service: &str) -> usize {
    match service {
        "trainfleet.v1.JobService" | "trainfleet.v1.SweepService" => {
            crate::services::jobs::MAX_REQUEST_BYTES
        }
        "trainfleet.v1.WorkerService" => 8 << 20,
        _ => 1 << 20,
    }
}

/// Largest response any service encodes (list pages are bounded well below it).
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Largest HTTP/2 header list (metadata) a request may carry: a bearer token and tracing
/// headers fit many times over.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 << 10;

/// Streams one connection may have open at once: a worker holds two (a long-poll and a
/// heartbeat) and a CLI a few Watches; a client that opens more waits for one to end.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Longest the server works on a unary call before it answers DEADLINE_EXCEEDED (see
/// `deadline`): every unary call here is a few store reads or one commit; a minute means
/// something is stuck (etcd without a leader, an archive read that hangs).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The server's limit on a call of `/service/method`: none for a stream, the poll cap on top of
/// [`CALL_TIMEOUT`] for the worker's long-polls (PollTask, and CompleteTask, which may carry
/// the next poll), [`CALL_TIMEOUT`] for everything else.
pub fn call_timeout(path: &str, streaming: bool, max_poll_wait: Duration) -> Option<Duration> {
    const LONG_POLLS: [&str; 2] = [
        "/trainfleet.v1.WorkerService/PollTask",
        "/trainfleet.v1.WorkerService/CompleteTask",
    ];
    if streaming {
        None
    } else if LONG_POLLS.contains(&path) {
        Some(CALL_TIMEOUT + max_poll_wait)
    } else {
        Some(CALL_TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_public_service_has_a_bounded_request_size() {
        for service in trainfleet_proto::PUBLIC_SERVICES
            .iter()
            .chain([&trainfleet_proto::WORKER_SERVICE])
        {
            let max = max_request_bytes(service);
            assert!((1 << 20..=16 << 20).contains(&max), "{service}: {max}");
        }
    }
}
