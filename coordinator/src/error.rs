//! The coordinator's error type and its one mapping to gRPC status codes.

/// Everything a coordinator request or startup can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or malformed; the message names the field.
    #[error("invalid request: {0}")]
    InvalidArgument(#[from] trainfleet_core::Error),
    /// The worker's session is not known (the coordinator restarted, or another registration of
    /// the same worker id replaced it).
    #[error(
        "worker `{worker_id}` has no live session on this coordinator (it restarted, or the worker \
         registered again elsewhere): register again"
    )]
    UnknownSession {
        /// The worker.
        worker_id: String,
    },
    /// The worker was declared lost (missed its heartbeat deadline); its tasks were requeued.
    #[error(
        "worker `{worker_id}` missed its heartbeat deadline and was declared lost: register again"
    )]
    SessionExpired {
        /// The worker.
        worker_id: String,
    },
    /// No such job, task, model or champion.
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but the target is in the wrong state for it (cancelling a
    /// finished job, a report from an attempt that is no longer current).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A compare-and-swap lost: the state changed since the caller looked (another promotion
    /// won). Read again and decide again.
    #[error("{0}")]
    Aborted(String),
    /// The state store cannot be written; this replica is stopping.
    #[error("{0}")]
    Store(String),
    /// The coordinator is stopping.
    #[error("the coordinator is shutting down; retry against another replica or after restart")]
    ShuttingDown,
    /// Binding or serving failed.
    #[error("cannot serve gRPC on {addr}: {source}")]
    Serve {
        /// The address.
        addr: String,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Shorthand for coordinator results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err {
            Error::InvalidArgument(trainfleet_core::Error::PermissionDenied { .. }) => {
                tonic::Status::permission_denied(message)
            }
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            Error::UnknownSession { .. } | Error::SessionExpired { .. } => {
                tonic::Status::not_found(message)
            }
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            Error::Aborted(_) => tonic::Status::aborted(message),
            Error::Store(_) => tonic::Status::unavailable(message),
            Error::ShuttingDown => tonic::Status::unavailable(message),
            Error::Serve { .. } => tonic::Status::internal(message),
        }
    }
}

pub use trainfleet_core::error::chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_variant_maps_to_its_code() {
        let bad = Error::from(trainfleet_core::Error::invalid_field(
            "slots",
            "must be at least 1",
        ));
        let status = tonic::Status::from(bad);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "invalid request: `slots` must be at least 1"
        );
        let lost = Error::SessionExpired {
            worker_id: "w".into(),
        };
        assert_eq!(tonic::Status::from(lost).code(), tonic::Code::NotFound);
        assert_eq!(
            tonic::Status::from(Error::ShuttingDown).code(),
            tonic::Code::Unavailable
        );
    }
}
