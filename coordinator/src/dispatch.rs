//! What the control plane hands workers and operators: a leased task with everything it needs
//! to run, directives about running tasks, and the queue as operators see it. Domain types;
//! `convert/dispatch.rs` gives their wire form.

use std::time::{Duration, SystemTime};

use crate::records::{Checkpoint, TaskRole, VersionRecord};
use crate::scheduler::Needs;

/// A task leased to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The task.
    pub id: String,
    /// Its job.
    pub job_id: String,
    /// Which of the job's tasks.
    pub role: TaskRole,
    /// The attempt the worker must report under (the fencing token).
    pub attempt: u32,
    /// The job YAML, for train and eval tasks.
    pub spec_yaml: String,
    /// The checkpoint to resume from, for a train task that ran before.
    pub resume: Option<Checkpoint>,
    /// What it needs.
    pub needs: Needs,
    /// For a sleep task: how long.
    pub sleep: Option<Duration>,
    /// For an eval task: what to compare.
    pub eval: Option<EvalInputs>,
    /// For a scan task: what to scan.
    pub scan: Option<ScanInputs>,
    /// For an ASHA trial's train task: the epoch to pause after (0: none).
    pub pause_at: u32,
}

/// An eval's inputs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EvalInputs {
    /// The challenger's run URI.
    pub challenger: String,
    /// The champion's run URI; empty for a first model.
    pub champion: String,
    /// The champion's model id.
    pub champion_id: String,
    /// The registered dataset version the job pinned, and the one before it (for reports).
    pub dataset_version: Option<VersionRecord>,
    /// See `dataset_version`.
    pub previous_version: Option<VersionRecord>,
}

/// A scan's inputs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScanInputs {
    /// Dataset name.
    pub dataset: String,
    /// Its directory, for a folder dataset.
    pub directory: String,
    /// Re-read every file.
    pub full: bool,
    /// The last version's manifest (unchanged files are not read again).
    pub previous_manifest: String,
    /// The folder's format.
    pub format: String,
    /// Builtin name, for a builtin dataset.
    pub builtin: String,
    /// Object-store URL, for a remote dataset.
    pub object_store_url: String,
    /// The dataset section of a job YAML that reads it.
    pub dataset_yaml: String,
}

/// An instruction about a running task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// The task.
    pub task_id: String,
    /// What to do.
    pub kind: DirectiveKind,
    /// Why, for the worker's log.
    pub reason: String,
}

/// What a directive asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectiveKind {
    /// Stop within one batch and report it cancelled.
    Cancel,
    /// Stop: this worker no longer holds the task; its reports will be refused.
    Abandon,
}

/// A task as the queue shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedTask {
    /// The task.
    pub task_id: String,
    /// Its job.
    pub job_id: String,
    /// Which of the job's tasks, when known.
    pub role: Option<TaskRole>,
    /// Current attempt.
    pub attempt: u32,
    /// Holder, for a leased task; empty otherwise.
    pub worker_id: String,
    /// When it last entered the queue.
    pub enqueued_at: SystemTime,
}

/// The queue, oldest first, and the leased tasks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueueView {
    /// Waiting for a worker.
    pub queued: Vec<QueuedTask>,
    /// Leased.
    pub running: Vec<QueuedTask>,
}
