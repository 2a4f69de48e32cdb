//! Domain types shared by the trainfleet coordinator and workers. No libtorch, no tonic: this
//! crate builds in seconds and both sides agree on it.
//!
//! - [`artifacts`]: the object store runs are written to, its layout and the run manifest.
//! - [`config`]: coordinator and worker settings from YAML (unknown keys rejected with
//!   file:line:column), validated before anything starts.
//! - [`data_roots`]: where a worker may read a job's data from (its allow-list), checked
//!   before anything a job names is opened.
//! - [`device`]: the compute devices a worker reports.
//! - [`gate`]: the promotion rule (pure: the coordinator decides with it, reports show it).
//! - [`job`]: the training job spec (dataset, model, training) and its validation.
//! - [`kv`]: the key-value store trait behind coordinator state, its embedded (redb)
//!   implementation and the conformance suite every implementation passes.
//! - [`manifest`]: dataset manifests: parallel, incremental hashing, a Merkle root, the diff.
//! - [`metrics_http`]: the plain-HTTP `/metrics` endpoint both binaries serve.
//! - [`policy`]: when a new dataset version is worth a retrain (growth, content change,
//!   min_interval, coalescing, idempotency), as a pure function of the facts and the time.
//! - [`sweep`]: the sweep spec (base job, search space, strategy, budget), its validation,
//!   seeded trial proposals and ASHA's rung arithmetic.
//! - [`ids`]: rules for identifiers that cross the wire (worker ids).
//! - [`process`]: logging setup and signal handling shared by the binaries.
//! - [`error`]: the crate's error type.
#![warn(missing_docs)]

pub mod artifacts;
pub mod config;
pub mod data_roots;
pub mod device;
pub mod error;
pub mod etcd_process;
pub mod gate;
pub mod ids;
pub mod job;
pub mod kv;
pub mod manifest;
pub mod metrics_http;
pub mod policy;
pub mod process;
pub mod schedule;
pub mod sweep;

pub use error::{Error, Result};

/// Version of this trainfleet build, reported by workers and coordinators.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
