//! The wire form of every record, and back: what the services send and what they read.
//! Records themselves know nothing of the wire.

use trainfleet_proto::v1;

use super::{job_spec_to_wire, timestamp};
use crate::records::{
    DatasetRecord, DecisionOutcome, DecisionRecord, JobKind, JobRecord, JobState, JobView,
    ModelRecord, ModelView, TaskRole, VersionRecord,
};

impl JobState {
    /// The wire value.
    pub fn to_wire(self) -> v1::JobState {
        match self {
            JobState::Queued => v1::JobState::Queued,
            JobState::Training => v1::JobState::Training,
            JobState::Evaluating => v1::JobState::Evaluating,
            JobState::Succeeded => v1::JobState::Succeeded,
            JobState::Failed => v1::JobState::Failed,
            JobState::Cancelled => v1::JobState::Cancelled,
            JobState::Paused => v1::JobState::Paused,
        }
    }

    /// From the wire value; `None` for UNSPECIFIED or unknown numbers.
    pub fn from_wire(value: i32) -> Option<Self> {
        Some(match v1::JobState::try_from(value).ok()? {
            v1::JobState::Queued => JobState::Queued,
            v1::JobState::Training => JobState::Training,
            v1::JobState::Evaluating => JobState::Evaluating,
            v1::JobState::Succeeded => JobState::Succeeded,
            v1::JobState::Failed => JobState::Failed,
            v1::JobState::Cancelled => JobState::Cancelled,
            v1::JobState::Paused => JobState::Paused,
            v1::JobState::Unspecified => return None,
        })
    }
}

impl TaskRole {
    /// The wire kind.
    pub fn kind(self) -> v1::TaskKind {
        match self {
            TaskRole::Train => v1::TaskKind::Train,
            TaskRole::Eval => v1::TaskKind::Eval,
            TaskRole::Sleep => v1::TaskKind::Sleep,
            TaskRole::Scan => v1::TaskKind::Scan,
        }
    }
}

impl JobView {
    /// The wire form, saying where it was read from.
    pub fn to_wire(&self) -> v1::Job {
        let mut job = self.record.to_wire();
        if let Some(at) = self.archived_at {
            job.source = v1::JobSource::Archive as i32;
            job.archived_at = Some(timestamp(at));
        }
        job
    }
}

impl JobRecord {
    /// The wire form (as read from the state store).
    pub fn to_wire(&self) -> v1::Job {
        let (spec, spec_yaml, sleep) = match &self.kind {
            JobKind::Train { spec } => (Some(job_spec_to_wire(spec)), spec.to_yaml(), None),
            JobKind::Sleep { duration } => (None, String::new(), Some(super::duration(*duration))),
            JobKind::Scan { .. } => (None, String::new(), None),
        };
        v1::Job {
            id: self.id.clone(),
            spec,
            state: self.state.to_wire() as i32,
            attempt: self.attempt,
            worker_id: self.worker_id.clone(),
            epochs: self
                .epochs
                .iter()
                .map(|(epoch, values)| v1::EpochMetrics {
                    epoch: *epoch,
                    values: values.clone().into_iter().collect(),
                })
                .collect(),
            result: self.result.as_ref().map(|r| v1::JobResult {
                model_id: r.model_id.clone(),
                metrics: r.metrics.clone().into_iter().collect(),
                promoted: r.promoted,
                reasons: r.reasons.clone(),
                report_uri: r.report_uri.clone(),
                run_uri: r.run_uri.clone(),
                report_error: r.report_error.clone(),
                mlflow_run_id: r.mlflow_run_id.clone(),
                tracking_error: r.tracking_error.clone(),
            }),
            error: self.error.clone(),
            created_at: Some(timestamp(self.created_at)),
            started_at: self.started_at.map(timestamp),
            finished_at: self.finished_at.map(timestamp),
            attempts: self
                .attempts
                .iter()
                .map(|a| v1::Attempt {
                    task: a.role.name().to_owned(),
                    attempt: a.attempt,
                    worker_id: a.worker_id.clone(),
                    resumed_from_epoch: a.resumed_from_epoch,
                    outcome: a.outcome.clone(),
                    started_at: Some(timestamp(a.started_at)),
                    finished_at: a.finished_at.map(timestamp),
                })
                .collect(),
            sleep,
            spec_yaml,
            name: self.name.clone(),
            retrain_dataset: self
                .retrain
                .as_ref()
                .map(|r| r.dataset.clone())
                .unwrap_or_default(),
            run: self.run.as_ref().map(|r| v1::RunInfo {
                device: r.device.clone(),
                threads: r.threads,
                trainfleet_version: r.trainfleet_version.clone(),
                libtorch_version: r.libtorch_version.clone(),
                dataset_root: r.dataset_root.clone(),
                dataset_version: r.dataset_version,
                artifact_sha256: r.artifact_sha256.clone().into_iter().collect(),
                run_uri: r.run_uri.clone(),
                load_seconds: r.load_seconds,
                train_seconds: r.train_seconds,
                worker_id: r.worker_id.clone(),
            }),
            source: v1::JobSource::Store as i32,
            archived_at: None,
            submitted_by: self.owner.clone(),
        }
    }
}

impl ModelRecord {
    /// The wire form; `champion` says whether it is the champion now.
    pub fn to_wire(&self, champion: bool) -> v1::Model {
        v1::Model {
            id: self.id.clone(),
            dataset: self.dataset.clone(),
            dataset_version: self.dataset_version.clone(),
            job_id: self.job_id.clone(),
            parent_id: self.parent_id.clone(),
            config_hash: self.config_hash.clone(),
            metrics: self.metrics.clone().into_iter().collect(),
            artifact_uri: self.artifact_uri.clone(),
            artifact_sha256: self.artifact_sha256.clone(),
            gate: Some(v1::GateDecision {
                promoted: self.gate.promoted,
                reasons: self.gate.reasons.clone(),
                metric: self.gate.metric.clone(),
                challenger_value: self.gate.challenger_value,
                champion_value: self.gate.champion_value,
                champion_id: self.gate.champion_id.clone(),
                mcnemar_challenger_only: self.gate.mcnemar.map_or(0, |m| m.challenger_only),
                mcnemar_champion_only: self.gate.mcnemar.map_or(0, |m| m.champion_only),
                mcnemar_p_value: self.gate.mcnemar.map_or(0.0, |m| m.p_value),
            }),
            champion,
            created_at: Some(timestamp(self.created_at)),
            dataset_version_number: self.dataset_version_number,
            eval_samples_uri: self.eval_samples_uri.clone(),
            report_uri: self.report_uri.clone(),
        }
    }
}

impl DecisionRecord {
    /// The wire form.
    pub fn to_wire(&self) -> v1::RetrainDecision {
        use v1::retrain_decision::Outcome;
        v1::RetrainDecision {
            dataset: self.dataset.clone(),
            decided_at: Some(timestamp(self.decided_at)),
            trigger: self.trigger.clone(),
            version_number: self.version,
            version_root: self.root.clone(),
            outcome: match self.outcome {
                DecisionOutcome::Fired => Outcome::Fired,
                DecisionOutcome::Coalesced => Outcome::Coalesced,
                DecisionOutcome::Skipped => Outcome::Skipped,
                DecisionOutcome::Deferred => Outcome::Deferred,
            } as i32,
            reason: self.reason.clone(),
            job_id: self.job_id.clone(),
            defer_until: self.defer_until.map(timestamp),
            sweep_id: self
                .sweep
                .as_ref()
                .map(|s| s.sweep_id.clone())
                .unwrap_or_default(),
            warm_start_from: self
                .sweep
                .as_ref()
                .map(|s| s.warm_start_from.clone())
                .unwrap_or_default(),
            warm_start_configs: self.sweep.as_ref().map_or(0, |s| s.warm_start_configs),
            sweep_trials: self.sweep.as_ref().map_or(0, |s| s.trials),
        }
    }
}

impl VersionRecord {
    /// The wire form.
    pub fn to_wire(&self, dataset: &str) -> v1::DatasetVersion {
        v1::DatasetVersion {
            dataset: dataset.to_owned(),
            number: self.number,
            root_hash: self.root.clone(),
            sample_count: self.samples,
            counts: Some(v1::Counts {
                by_class: self.by_class.clone().into_iter().collect(),
                by_split: self.by_split.clone().into_iter().collect(),
            }),
            added: self.added,
            removed: self.removed,
            changed: self.changed,
            manifest_uri: self.manifest_uri.clone(),
            created_at: Some(timestamp(self.created_at)),
            skipped_count: self.skipped,
            skipped: self.skipped_wire(),
        }
    }

    /// The entries its scan left out, as the wire carries them.
    pub fn skipped_wire(&self) -> Vec<v1::SkippedEntry> {
        self.skipped_examples
            .iter()
            .map(|(path, reason)| v1::SkippedEntry {
                path: path.clone(),
                reason: reason.clone(),
            })
            .collect()
    }
}

impl DatasetRecord {
    /// The wire form.
    pub fn to_wire(&self) -> v1::Dataset {
        v1::Dataset {
            name: self.name.clone(),
            source: Some(v1::DatasetSource {
                location: Some(if !self.builtin.is_empty() {
                    v1::dataset_source::Location::Builtin(self.builtin.clone())
                } else if !self.url.is_empty() {
                    v1::dataset_source::Location::ObjectStoreUrl(self.url.clone())
                } else {
                    v1::dataset_source::Location::Directory(self.directory.clone())
                }),
                format: self.format.clone(),
            }),
            policy: Some(v1::RetrainPolicy {
                on_growth_pct: self.policy.on_growth_pct.unwrap_or(0.0),
                on_content_change: self.policy.on_content_change,
                schedule: self.policy.schedule.clone().unwrap_or_default(),
                time_zone: self.policy.time_zone.clone().unwrap_or_default(),
                min_interval: Some(super::duration(self.policy.min_interval)),
                job_yaml: self.job_yaml.clone(),
                min_samples_per_class: Some(self.policy.min_samples_per_class),
                sweep_yaml: self
                    .sweep
                    .as_ref()
                    .map(|s| s.yaml.clone())
                    .unwrap_or_default(),
                warm_start_top_k: self.sweep.as_ref().map(|s| s.warm_start_top_k),
                warm_max_trials: self.sweep.as_ref().map_or(0, |s| s.warm_max_trials),
            }),
            latest_version: self
                .versions
                .last()
                .map(|v| v.root.clone())
                .unwrap_or_default(),
            created_at: Some(timestamp(self.created_at)),
            pending_retrain_job: self
                .retrain
                .pending
                .as_ref()
                .map(|p| p.job_id.clone())
                .unwrap_or_default(),
            pending_retrain_sweep: self
                .retrain
                .pending
                .as_ref()
                .map(|p| p.sweep_id.clone())
                .unwrap_or_default(),
            last_retrain_at: self.retrain.last_retrain_at.map(timestamp),
            next_scan_at: self.retrain.next_scan_at.map(timestamp),
        }
    }
}

impl ModelView {
    /// The wire form.
    pub fn to_wire(&self) -> v1::Model {
        self.record.to_wire(self.champion)
    }
}
