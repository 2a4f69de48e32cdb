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
}
