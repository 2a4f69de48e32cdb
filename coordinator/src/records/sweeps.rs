//! What a sweep keeps in the store: the sweep (spec, state, budget spent, best, gate) under one
//! key and each trial under its own, so a trial's change writes one small record and a sweep of
//! thousands of trials never becomes one oversized value.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use trainfleet_core::sweep::SweepSpec;

use super::ROOT;

/// Key of a sweep.
pub fn sweep_key(id: &str) -> Vec<u8> {
    format!("{ROOT}sweeps/{id}").into_bytes()
}

/// Key of a sweep's trial (numbers zero-padded, so a prefix read lists them in order).
pub fn trial_key(sweep_id: &str, number: u32) -> Vec<u8> {
    format!("{ROOT}trials/{sweep_id}/{number:06}").into_bytes()
}

/// Where a sweep is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepState {
    /// Trials are proposed, run, paused or resumed.
    Running,
    /// Every trial ended; the best is being evaluated against the champion.
    Gating,
    /// Done.
    Succeeded,
    /// No trial succeeded.
    Failed,
    /// Cancelled by a person.
    Cancelled,
}

impl SweepState {
    /// Whether the sweep is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SweepState::Succeeded | SweepState::Failed | SweepState::Cancelled
        )
    }
}

/// The best trial's meeting with the champion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepGateRecord {
    /// The job that evaluated it.
    pub job_id: String,
    /// The trial sent.
    pub trial: u32,
    /// The model recorded (empty until the eval ended).
    pub model_id: String,
    /// Whether it became the champion.
    pub promoted: bool,
    /// The gate's reasons (or why the eval failed).
    pub reasons: Vec<String>,
}

/// A sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRecord {
    /// Its id (`s-` + start time + random: ids sort by start).
    pub id: String,
    /// The validated spec, base job inline (a registered dataset pinned to one version).
    pub spec: Box<SweepSpec>,
    /// Where it is.
    pub state: SweepState,
    /// Trials proposed so far (their numbers are `0..started`).
    pub started: u32,
    /// Trials that failed.
    pub failed: u32,
    /// The best trial so far.
    pub best: Option<u32>,
    /// The best trial's gate, once sent.
    pub gate: Option<SweepGateRecord>,
    /// Why it failed or was cancelled.
    pub error: String,
    /// When it started.
    pub created_at: SystemTime,
    /// When it ended.
    pub finished_at: Option<SystemTime>,
    /// The token name that started it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// The client's idempotency key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub idempotency_key: String,
    /// The dataset retrain that started it (policy `sweep_yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrain: Option<super::RetrainOrigin>,
    /// The retrain sweep whose best configurations this one proposes first.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub warm_start_from: String,
}

/// Where a trial is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialState {
    /// Its job is queued or training.
    Running,
    /// ASHA: stopped at a rung with its checkpoint, waiting for a promotion.
    Paused,
    /// Trained to the end.
    Succeeded,
    /// Its job failed.
    Failed,
    /// Cancelled with its sweep.
    Cancelled,
    /// ASHA: paused when the sweep ended without promoting it.
    Stopped,
}

/// One trial's report at one rung.
pub use trainfleet_core::sweep::asha::RungEntry as RungReport;

/// A trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// Its sweep.
    pub sweep_id: String,
    /// Its number (proposal order).
    pub number: u32,
    /// Its job.
    pub job_id: String,
    /// Path → value (JSON of the YAML value).
    pub params: BTreeMap<String, serde_json::Value>,
    /// Where it is.
    pub state: TrialState,
    /// The objective at its last finished epoch.
    pub objective: Option<f64>,
    /// Epochs trained.
    pub epochs: u32,
    /// ASHA: reports at each rung reached (`trial` is this trial's number).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rungs: Vec<RungReport>,
    /// Times resumed after a pause.
    #[serde(default)]
    pub resumes: u32,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Its training run, once trained.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub run_uri: String,
}

impl TrialRecord {
    /// Whether it holds (or waits for) a worker.
    pub fn is_running(&self) -> bool {
        self.state == TrialState::Running
    }
}

/// Which sweep a job belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepLink {
    /// The sweep.
    pub sweep_id: String,
    /// The trial (for a gate job: the trial it evaluates).
    pub trial: u32,
    /// Whether this job sends the trial to the gate rather than training it.
    #[serde(default)]
    pub gate: bool,
}

/// A sweep as answered: the record and its trials.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepView {
    /// The sweep.
    pub record: SweepRecord,
    /// Its trials by number (empty in lists).
    pub trials: Vec<TrialRecord>,
}
