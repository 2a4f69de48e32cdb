//! What the control plane is asked to act on: a user's submission and a worker's report of how a
//! task ended. Domain types: `convert` makes them from the wire, [`crate::control`] acts on them.

use std::collections::BTreeMap;
use std::time::Duration;

use trainfleet_core::job::JobSpec;

/// What a user submits.
#[derive(Debug, Clone)]
pub enum Submission {
    /// A validated training job.
    Train(Box<JobSpec>),
    /// A sleep job.
    Sleep {
        /// Human name.
        name: String,
        /// How long.
        duration: Duration,
    },
    /// A scan of a registered dataset.
    Scan {
        /// The dataset.
        dataset: String,
        /// Re-read every file.
        full: bool,
    },
}

/// How a worker says a task ended.
#[derive(Debug, Clone)]
pub enum Report {
    /// It finished with these metrics, artifacts and task-specific JSON.
    Success {
        /// Final metrics.
        metrics: BTreeMap<String, f64>,
        /// Artifact URIs by role.
        artifacts: BTreeMap<String, String>,
        /// Eval details.
        detail_json: String,
    },
    /// It failed.
    Failure {
        /// The worker's message.
        reason: String,
        /// No retry can help.
        permanent: bool,
    },
    /// It stopped on a cancel directive.
    Cancelled,
    /// A train task stopped at its pause epoch (ASHA), with that epoch's checkpoint.
    Paused {
        /// The epoch it stopped after.
        epoch: u32,
        /// The checkpoint's artifact URI.
        checkpoint: String,
        /// Every epoch it trained: number and metrics.
        epochs: Vec<(u32, BTreeMap<String, f64>)>,
    },
}

/// One task's progress, as a worker's heartbeat reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// The task.
    pub task_id: String,
    /// The attempt the worker runs.
    pub attempt: u32,
    /// Current epoch (1-based) and the epochs planned.
    pub epoch: u32,
    /// See `epoch`.
    pub total_epochs: u32,
    /// Batches done in the epoch, and batches per epoch.
    pub batch: u32,
    /// See `batch`.
    pub total_batches: u32,
    /// Recent throughput.
    pub images_per_sec: f64,
    /// Epochs finished since the last heartbeat, with their metrics.
    pub finished_epochs: Vec<(u32, BTreeMap<String, f64>)>,
    /// URI of the newest checkpoint; empty for none.
    pub checkpoint: String,
    /// Epochs that checkpoint completed.
    pub checkpoint_epoch: u32,
}
