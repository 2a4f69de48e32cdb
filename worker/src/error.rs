//! The worker's error type.

/// What can go wrong talking to the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The coordinator address cannot be parsed.
    #[error("coordinator address {0:?} is not valid ({1}); use host:port or http://host:port")]
    BadAddress(String, String),
    /// No connection could be made.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// A call failed.
    #[error("{0} failed: {code:?}: {message}", code = .1.code(), message = .1.message())]
    Rpc(&'static str, tonic::Status),
}

/// Shorthand for worker results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
