//! The trainfleet worker: the data plane, and the only crate that links libtorch.
//!
//! - [`agent`]: the conversation with the coordinator (register, heartbeat, long-poll,
//!   reconnect with backoff).
//! - [`data`]: datasets decoded once into tensors (IDX, synth-digits), stable splits.
//! - [`model`]: models built from the spec (simple CNN, configurable CNN).
//! - [`train`]: the training loop, optimisers, schedules, checkpoints and resume.
//! - [`metrics`]: evaluation (accuracy, top-5, per-class P/R/F1, confusion, correctness).
//! - [`telemetry`]: Prometheus metrics (throughput, epoch times, tasks, memory) on their own
//!   HTTP port.
//! - [`tasks`]: running leased tasks (train, eval, sleep) with progress, checkpoints, cancel;
//!   [`rung`]: what a sweep trial reports when it stops at its ASHA rung.
//! - [`job`]: a job from spec to artifacts; verification of a saved model.
//! - [`local_paths`]: a job's local paths checked on the worker that runs it.
//! - [`artifacts`]: what a run leaves behind (weights, model card, metrics, config).
//! - [`devices`]: the CPU and CUDA devices this worker reports.
//! - [`backoff`]: exponential backoff with jitter.
//! - [`console`]: what the `train`, `devices` and `verify` commands print.
//! - [`error`]: the crate's error type.
#![warn(missing_docs)]

pub mod agent;
pub mod artifacts;
pub mod backoff;
pub mod console;
pub mod data;
pub mod devices;
pub mod error;
pub mod job;
pub mod local_paths;
pub mod metrics;
pub mod model;
pub mod report;
pub mod rung;
pub mod tasks;
pub mod telemetry;
pub mod tracking;
pub mod train;

pub use agent::Agent;
pub use error::{Error, Result};

/// The libtorch version this binary was built against (from the PyTorch wheel), or empty.
pub const LIBTORCH_VERSION: &str = env!("TRAINFLEET_LIBTORCH_VERSION");
