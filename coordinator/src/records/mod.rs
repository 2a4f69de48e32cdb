//! What the coordinator keeps in the KV store, and under which keys. Every record is JSON, so an
//! operator can read state with `etcdctl get --prefix /trainfleet/` (or the embedded store's
//! dump) and a newer coordinator can add fields without a migration.
//!
//! | key                              | value           |
//! |----------------------------------|-----------------|
//! | `/trainfleet/jobs/<job_id>`      | [`JobRecord`]   |
//! | `/trainfleet/tasks/<task_id>`    | [`TaskRecord`]  |
//! | `/trainfleet/models/<model_id>`  | [`ModelRecord`] |
//! | `/trainfleet/champions/<hash>`   | [`ChampionRecord`] (hash: sha256 of the dataset name) |
//! | `/trainfleet/workers/<worker_id>`| [`WorkerSnapshot`](crate::registry::WorkerSnapshot) (last known state) |
//! | `/trainfleet/datasets/<name>`    | [`DatasetRecord`] (source, policy, versions, retrain book) |
//! | `/trainfleet/decisions/<name>/<seq>` | [`DecisionRecord`] (one retrain decision; seq zero-padded) |
//! | `/trainfleet/audit/<nanos>-<rand>` | [`AuditRecord`](crate::auth::audit::AuditRecord)s (a chunk: one writer batch of audited calls, oldest first; newest 10,000 records kept) |
//! | `/trainfleet/tokens/<id>`        | [`TokenRecord`](crate::auth::tokens::TokenRecord) (a bearer token's hash and role; read by every replica) |
//! | `/trainfleet/sweeps/<sweep_id>`  | [`SweepRecord`] (spec, state, budget spent, the best trial, the gate) |
//! | `/trainfleet/trials/<sweep_id>/<n>` | [`TrialRecord`] (one trial: values, state, objective, rung reports; n zero-padded) |

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use trainfleet_core::job::JobSpec;

use crate::scheduler::Task;

mod datasets;
mod sweeps;

pub use datasets::{
    DatasetRecord, DecidedSweep, DecisionOutcome, DecisionRecord, Deferred, PendingRetrain,
    RetrainBook, RetrainOrigin, RetrainSweep, VersionRecord, WarmStart,
};
pub use sweeps::{
    RungReport, SweepGateRecord, SweepLink, SweepRecord, SweepState, SweepView, TrialRecord,
    TrialState, sweep_key, trial_key,
};

/// Prefix of every key the coordinator writes.
pub const ROOT: &str = "/trainfleet/";

/// Key of a job.
pub fn job_key(id: &str) -> Vec<u8> {
    format!("{ROOT}jobs/{id}").into_bytes()
}
/// Key of a task.
pub fn task_key(id: &str) -> Vec<u8> {
    format!("{ROOT}tasks/{id}").into_bytes()
}
/// Key of a model.
pub fn model_key(id: &str) -> Vec<u8> {
    format!("{ROOT}models/{id}").into_bytes()
}
/// Key of a dataset's champion pointer.
pub fn champion_key(dataset: &str) -> Vec<u8> {
    let hash = trainfleet_core::artifacts::sha256_hex(dataset.as_bytes());
    format!("{ROOT}champions/{}", &hash[..32]).into_bytes()
}
/// Key of a registered dataset.
pub fn dataset_key(name: &str) -> Vec<u8> {
    format!("{ROOT}datasets/{name}").into_bytes()
}
/// Key of a retrain decision.
pub fn decision_key(dataset: &str, seq: u64) -> Vec<u8> {
    format!("{ROOT}decisions/{dataset}/{seq:020}").into_bytes()
}
/// Key of a worker's last known state.
pub fn worker_key(id: &str) -> Vec<u8> {
    format!("{ROOT}workers/{id}").into_bytes()
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// Its train (or sleep) task runs.
    Training,
    /// Its eval task runs.
    Evaluating,
    /// Done.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Cancelled by a person.
    Cancelled,
    /// A sweep trial stopped at an ASHA rung with its checkpoint, holding no worker.
    Paused,
}

impl JobState {
    /// Whether the job is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// What a job does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Train a challenger, then evaluate it against the champion.
    Train {
        /// The validated spec.
        spec: Box<JobSpec>,
    },
    /// One sleep task (scheduler benchmarks, smoke checks).
    Sleep {
        /// How long.
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
    /// Scan a registered dataset into a manifest (a new version if its root changed).
    Scan {
        /// Dataset name.
        dataset: String,
        /// Re-read every file.
        full: bool,
        /// Started by the dataset's schedule rather than a request.
        #[serde(default)]
        scheduled: bool,
    },
}

/// Which of a job's tasks a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskRole {
    /// Trains the challenger.
    Train,
    /// Scores challenger and champion on the same split.
    Eval,
    /// Sleeps.
    Sleep,
    /// Scans a dataset.
    Scan,
}

impl TaskRole {
    /// Its name in ids and attempt records.
    pub fn name(self) -> &'static str {
        match self {
            TaskRole::Train => "train",
            TaskRole::Eval => "eval",
            TaskRole::Sleep => "sleep",
            TaskRole::Scan => "scan",
        }
    }
}

/// One attempt of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Which task.
    pub role: TaskRole,
    /// Its number.
    pub attempt: u32,
    /// Who ran it.
    pub worker_id: String,
    /// Epochs done when it started.
    pub resumed_from_epoch: u32,
    /// How it ended; empty while it runs.
    pub outcome: String,
    /// When it was leased.
    pub started_at: SystemTime,
    /// When it ended.
    pub finished_at: Option<SystemTime>,
}

/// The newest checkpoint of a job's training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Artifact URI.
    pub uri: String,
    /// Epochs it completed.
    pub epoch: u32,
}

/// What a finished job produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOutcome {
    /// The model recorded.
    pub model_id: String,
    /// Its metrics on the test split.
    pub metrics: BTreeMap<String, f64>,
    /// Whether it became the champion.
    pub promoted: bool,
    /// The gate's reasons.
    pub reasons: Vec<String>,
    /// The run directory.
    pub run_uri: String,
    /// The run's HTML report; empty when none could be made.
    #[serde(default)]
    pub report_uri: String,
    /// Why there is no report.
    #[serde(default)]
    pub report_error: String,
    /// The MLflow run it was recorded as.
    #[serde(default)]
    pub mlflow_run_id: String,
    /// What could not be recorded in MLflow.
    #[serde(default)]
    pub tracking_error: String,
}

/// A job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its id (time-ordered: ids sort by submission).
    pub id: String,
    /// Human name.
    pub name: String,
    /// What it does.
    pub kind: JobKind,
    /// Where it is.
    pub state: JobState,
    /// Attempt of its active task.
    pub attempt: u32,
    /// Worker of its active task.
    pub worker_id: String,
    /// Finished epochs.
    pub epochs: Vec<(u32, BTreeMap<String, f64>)>,
    /// Set once succeeded.
    pub result: Option<JobOutcome>,
    /// Why it failed or was cancelled.
    pub error: String,
    /// Lifecycle times.
    pub created_at: SystemTime,
    /// First lease.
    pub started_at: Option<SystemTime>,
    /// End.
    pub finished_at: Option<SystemTime>,
    /// Client token of the submission.
    pub idempotency_key: String,
    /// Every attempt.
    pub attempts: Vec<AttemptRecord>,
    /// Newest checkpoint of the training.
    pub checkpoint: Option<Checkpoint>,
    /// The accepted training run (its directory URI) and its test metrics.
    pub train_run: Option<String>,
    /// Test metrics of the trained model as the trainer measured them.
    pub train_metrics: BTreeMap<String, f64>,
    /// The champion the challenger is compared with (fixed when the eval task is queued).
    pub champion_id: String,
    /// The task that runs now or next; empty once the job is over.
    pub active_task: String,
    /// Eval tasks queued so far (a champion that changes during an eval means another round).
    pub eval_rounds: u32,
    /// For a scan job: the version number it ended on, and whether it recorded a new one.
    #[serde(default)]
    pub scanned: Option<(u64, bool)>,
    /// For a retrain the policy queued: the dataset and the (root, config hash) key.
    #[serde(default)]
    pub retrain: Option<RetrainOrigin>,
    /// How its training ran and what it wrote, once training finished.
    #[serde(default)]
    pub run: Option<RunRecord>,
    /// The token name that submitted it (empty: access control off, or made by the
    /// coordinator). A submitter may cancel only its own jobs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// For a sweep's trial, or the job that sends its best trial to the gate: which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepLink>,
}

/// How a training run ran, on what data, and what it wrote (from its manifest and result).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RunRecord {
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// libtorch intra-op threads.
    pub threads: i32,
    /// Worker versions.
    pub trainfleet_version: String,
    /// See `trainfleet_version`.
    pub libtorch_version: String,
    /// The dataset version's root, and its number (0: not a registered version).
    pub dataset_root: String,
    /// See `dataset_root`.
    pub dataset_version: u64,
    /// File name → sha256, from the run's manifest.
    pub artifact_sha256: BTreeMap<String, String>,
    /// The run's directory.
    pub run_uri: String,
    /// Seconds loading data, and in the training passes.
    pub load_seconds: f64,
    /// See `load_seconds`.
    pub train_seconds: f64,
    /// The worker that trained it.
    pub worker_id: String,
}

impl JobRecord {
    /// The spec, for a training job.
    pub fn spec(&self) -> Option<&JobSpec> {
        match &self.kind {
            JobKind::Train { spec } => Some(spec),
            JobKind::Sleep { .. } | JobKind::Scan { .. } => None,
        }
    }
}

/// What the scheduler does not know about a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMeta {
    /// Which of its job's tasks.
    pub role: TaskRole,
    /// For an eval: the challenger run URI and the champion's, if any.
    pub challenger: String,
    /// See `challenger`.
    pub champion: String,
    /// Session of the registration it was leased under; a heartbeat from a newer session of the
    /// same worker that does not mention the task means the worker restarted and lost it.
    pub session: String,
    /// When it was last leased.
    pub leased_at: Option<SystemTime>,
    /// For a sweep trial's train task under ASHA: the epoch to pause after (its rung); 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pause_at: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A task as stored: the scheduler's view plus the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Queue state, attempt, holder.
    pub task: Task,
    /// Role and inputs.
    pub meta: TaskMeta,
}

pub use trainfleet_core::gate::{GateRecord, Mcnemar};

/// A trained model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Its id.
    pub id: String,
    /// Dataset name (the champion is per dataset).
    pub dataset: String,
    /// Root hash of the data it was trained and tested on.
    pub dataset_version: String,
    /// The job that trained it.
    pub job_id: String,
    /// Champion at the time (lineage parent).
    pub parent_id: String,
    /// sha256 of the canonical job YAML.
    pub config_hash: String,
    /// Metrics on the test split (the eval task's).
    pub metrics: BTreeMap<String, f64>,
    /// The weights and their sha256.
    pub artifact_uri: String,
    /// See `artifact_uri`.
    pub artifact_sha256: String,
    /// The whole run directory.
    pub run_uri: String,
    /// The gate's decision.
    pub gate: GateRecord,
    /// When it was recorded.
    pub created_at: SystemTime,
    /// Labels of the job.
    pub labels: BTreeMap<String, String>,
    /// The dataset version's number (0: not a recorded version).
    #[serde(default)]
    pub dataset_version_number: u64,
    /// The eval's samples.json (ids scored and each model's correctness).
    #[serde(default)]
    pub eval_samples_uri: String,
    /// The HTML report of the run that trained it.
    #[serde(default)]
    pub report_uri: String,
}

/// A job as the jobs room answers: its record, and when it was archived if it was read from the
/// archive rather than the state store.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    /// The job.
    pub record: JobRecord,
    /// When it moved to the archive; `None` when it was read from the state store.
    pub archived_at: Option<SystemTime>,
}

impl JobView {
    /// A job read from the state store.
    pub fn live(record: JobRecord) -> Self {
        Self {
            record,
            archived_at: None,
        }
    }
}

/// A model as the registry shows it: its record, and whether it is its dataset's champion now.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelView {
    /// The stored record.
    pub record: ModelRecord,
    /// Whether the champion pointer names it.
    pub champion: bool,
}

/// A dataset's best-model pointer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChampionRecord {
    /// The dataset.
    pub dataset: String,
    /// The champion.
    pub model_id: String,
    /// Earlier champions, oldest first (rollback pops from here).
    pub previous: Vec<String>,
    /// Why it moved last.
    pub reason: String,
    /// When.
    pub updated_at: SystemTime,
}

/// JSON for a record.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records always serialise")
}
