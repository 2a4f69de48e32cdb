//! What the store keeps about a registered dataset: its source and policy, its versions, and
//! the retrain policy's book (what is pending, what started, the decisions taken).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// A registered dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRecord {
    /// Unique name.
    pub name: String,
    /// Directory that workers read (empty for a builtin or an object-store prefix).
    pub directory: String,
    /// Layout of the directory or prefix: "imagefolder" or "idx" (empty for a builtin).
    pub format: String,
    /// A builtin dataset's name.
    #[serde(default)]
    pub builtin: String,
    /// An object-store prefix holding an image folder.
    #[serde(default)]
    pub url: String,
    /// When to retrain.
    pub policy: trainfleet_core::policy::RetrainPolicy,
    /// The job to run on a retrain, as YAML (empty: none yet).
    pub job_yaml: String,
    /// Retrain with a sweep over `job_yaml` instead of the job alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<RetrainSweep>,
    /// When it was registered.
    pub created_at: SystemTime,
    /// Versions, oldest first.
    pub versions: Vec<VersionRecord>,
    /// What the retrain policy remembers.
    #[serde(default)]
    pub retrain: RetrainBook,
}

/// A policy that retrains with a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrainSweep {
    /// The sweep spec as YAML, without a base job (the policy's `job_yaml` is).
    pub yaml: String,
    /// Configurations of the previous retrain sweep proposed first (0: no warm start).
    pub warm_start_top_k: u32,
    /// Trials of a warm-started sweep (0: the spec's `max_trials`).
    pub warm_max_trials: u32,
}

/// The best configurations of a dataset's last retrain sweep, kept for the next one (the
/// sweep itself may be archived by then).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WarmStart {
    /// The sweep they come from.
    pub sweep_id: String,
    /// Path → value (JSON of the YAML value), best first.
    pub configs: Vec<BTreeMap<String, serde_json::Value>>,
}

/// A dataset's retrain bookkeeping: what [`trainfleet_core::policy::decide`] needs besides the
/// champion (which is read from the champion pointer, so a rollback is taken into account).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetrainBook {
    /// When the last retrain started (its train task was first leased).
    pub last_retrain_at: Option<SystemTime>,
    /// The retrain queued and not started yet.
    pub pending: Option<PendingRetrain>,
    /// Keys of retrains started and not failed: the idempotency record.
    pub started_keys: Vec<String>,
    /// A decision postponed by min_interval, taken again at `until`.
    pub deferred: Option<Deferred>,
    /// Next scheduled scan.
    pub next_scan_at: Option<SystemTime>,
    /// The job of the last scheduled scan.
    pub scheduled_scan: String,
    /// Decisions recorded so far (the next one's sequence number).
    pub decisions: u64,
    /// The last retrain sweep's best configurations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm_start: Option<WarmStart>,
}

impl RetrainBook {
    /// A retrain ended: it is no longer pending (when `is_it` recognises it there), and unless
    /// it succeeded its `key` is given back, so the version may be retried.
    pub fn retrain_ended(
        &mut self,
        is_it: impl Fn(&PendingRetrain) -> bool,
        key: &str,
        succeeded: bool,
    ) {
        if self.pending.as_ref().is_some_and(is_it) {
            self.pending = None;
        }
        if !succeeded {
            self.started_keys.retain(|k| k != key);
        }
    }
}

/// A retrain waiting for a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingRetrain {
    /// Its job (empty for a sweep).
    pub job_id: String,
    /// Its sweep, when the policy retrains with one (no trial leased yet).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sweep_id: String,
    /// The version it will train on (number).
    pub version: u64,
    /// Its idempotency key.
    pub key: String,
}

/// A postponed decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deferred {
    /// The version (number).
    pub version: u64,
    /// When to decide again.
    pub until: SystemTime,
}

/// What the retrain policy decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionOutcome {
    /// A retrain job was queued.
    Fired,
    /// The pending retrain now uses this version.
    Coalesced,
    /// No retrain.
    Skipped,
    /// Postponed by min_interval.
    Deferred,
}

/// One recorded retrain decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Dataset name.
    pub dataset: String,
    /// Sequence number within the dataset.
    pub seq: u64,
    /// When.
    pub decided_at: SystemTime,
    /// What asked: "new version", "manual", "schedule", "scan", "deferred".
    pub trigger: String,
    /// Version number and root decided about.
    pub version: u64,
    /// See `version`.
    pub root: String,
    /// The outcome.
    pub outcome: DecisionOutcome,
    /// The rule that decided, in words.
    pub reason: String,
    /// The retrain job (fired or coalesced).
    pub job_id: String,
    /// When a deferred decision is taken again.
    pub defer_until: Option<SystemTime>,
    /// The retrain sweep (fired or coalesced), when the policy retrains with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<DecidedSweep>,
}

/// The sweep a decision started or re-pinned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecidedSweep {
    /// Its id.
    pub sweep_id: String,
    /// Trials in all.
    pub trials: u32,
    /// The sweep whose best configurations it proposes first (empty: none).
    pub warm_start_from: String,
    /// How many.
    pub warm_start_configs: u32,
}

/// One recorded dataset version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// 1 for the first.
    pub number: u64,
    /// Merkle root.
    pub root: String,
    /// Files.
    pub samples: u64,
    /// Per class.
    pub by_class: BTreeMap<String, u64>,
    /// Per split.
    pub by_split: BTreeMap<String, u64>,
    /// Diff against the previous version.
    pub added: u64,
    /// See `added`.
    pub removed: u64,
    /// See `added`.
    pub changed: u64,
    /// Where the full manifest is.
    pub manifest_uri: String,
    /// When the scan finished.
    pub created_at: SystemTime,
    /// How many entries the scan left out (versions recorded before this field: 0).
    #[serde(default)]
    pub skipped: u64,
    /// The first of them, (path, reason): what `dataset versions` shows.
    #[serde(default)]
    pub skipped_examples: Vec<(String, String)>,
    /// Classes the scan saw but left wholly out (every file skipped): empty to the retrain
    /// policy.
    #[serde(default)]
    pub empty_classes: Vec<String>,
}

/// Why a job exists when the retrain policy queued it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrainOrigin {
    /// The registered dataset.
    pub dataset: String,
    /// Idempotency key: version root and job-config hash.
    pub key: String,
}
