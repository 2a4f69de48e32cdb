//! What a job's watchers are told: its state changes, finished epochs, batch progress, and the
//! job as it ended. Domain types; `convert/events.rs` gives their wire form.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::records::{JobState, JobView};

/// One thing that happened to a job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    /// When.
    pub at: SystemTime,
    /// What.
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// The job's state changed.
    State(JobState),
    /// An epoch finished.
    Epoch {
        /// 1-based.
        epoch: u32,
        /// Its metrics.
        values: BTreeMap<String, f64>,
    },
    /// Batches went by.
    Progress(BatchProgress),
    /// The job ended: the last event.
    Finished(Box<JobView>),
}

/// Where a running task is within its epochs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BatchProgress {
    /// Epoch (1-based).
    pub epoch: u32,
    /// Epochs planned.
    pub total_epochs: u32,
    /// Batch within the epoch.
    pub batch: u32,
    /// Batches per epoch.
    pub total_batches: u32,
    /// Recent throughput.
    pub images_per_sec: f64,
}

impl JobEvent {
    /// `kind`, now.
    pub fn now(kind: EventKind) -> Self {
        Self {
            at: SystemTime::now(),
            kind,
        }
    }
}
