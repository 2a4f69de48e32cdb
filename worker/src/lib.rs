//! The trainfleet worker: the data plane, and the only crate that links libtorch.
//!
//! - [`agent`]: the conversation with the coordinator (register, heartbeat, long-poll,
//!   reconnect with backoff).
//! - [`devices`]: the CPU and CUDA devices this worker reports.
//! - [`backoff`]: exponential backoff with jitter.
//! - [`error`]: the crate's error type.
#![warn(missing_docs)]

pub mod agent;
pub mod backoff;
pub mod devices;
pub mod error;

pub use agent::Agent;
pub use error::{Error, Result};

/// The libtorch version this binary was built against (from the PyTorch wheel), or empty.
pub const LIBTORCH_VERSION: &str = env!("TRAINFLEET_LIBTORCH_VERSION");
