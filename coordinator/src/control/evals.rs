//! Evaluation: queuing a challenger's eval against the champion, the gate's decision, and the
//! model record it leaves.

use std::collections::BTreeMap;
use std::time::SystemTime;

use trainfleet_core::kv::TxnOp;
use trainfleet_core::{artifacts, gate};

use crate::events::EventKind;
use crate::records;
use crate::records::{JobOutcome, JobState, ModelRecord, TaskRole, VersionRecord};
use crate::scheduler::Needs;

use super::{Inner, event};

/// What an eval task reports in `detail_json`.
#[derive(Debug, serde::Deserialize)]
struct EvalDetail {
    samples: u64,
    #[serde(default)]
    sample_digest: String,
    challenger: BTreeMap<String, f64>,
    champion: Option<BTreeMap<String, f64>>,
    #[serde(default)]
    champion_error: Option<String>,
    #[serde(default)]
    classes: Vec<String>,
    #[serde(default)]
    challenger_recall: Vec<f64>,
    #[serde(default)]
    champion_recall: Vec<f64>,
    #[serde(default)]
    challenger_only: u64,
    #[serde(default)]
    champion_only: u64,
    #[serde(default)]
    samples_uri: String,
    #[serde(default)]
    report_uri: String,
    #[serde(default)]
    report_error: String,
    #[serde(default)]
    mlflow_run_id: String,
    #[serde(default)]
    tracking_error: String,
}

impl Inner {
    /// The registered dataset version a job pinned, and the version before it (for reports).
    pub(super) fn version_refs(
        &self,
        job_id: &str,
    ) -> (Option<VersionRecord>, Option<VersionRecord>) {
        let Some(spec) = self.jobs.get(job_id).and_then(|j| j.spec()) else {
            return (None, None);
        };
        let (Some(root), Some(dataset)) = (
            spec.dataset.version.as_deref(),
            self.datasets.get(&spec.dataset_key()),
        ) else {
            return (None, None);
        };
        let Some(at) = dataset.versions.iter().position(|v| v.root == root) else {
            return (None, None);
        };
        let previous = at.checked_sub(1).map(|p| dataset.versions[p].clone());
        (Some(dataset.versions[at].clone()), previous)
    }

    /// Queues the eval task of a job whose training succeeded, against the current champion.
    pub(super) fn enqueue_eval(&mut self, job_id: &str, ops: &mut Vec<TxnOp>) {
        let job = self.jobs.get_mut(job_id).expect("exists");
        job.eval_rounds += 1;
        let task_id = if job.eval_rounds == 1 {
            format!("{job_id}-eval")
        } else {
            format!("{job_id}-eval{}", job.eval_rounds)
        };
        let spec = job.spec().expect("only training jobs evaluate").clone();
        let challenger = job.train_run.clone().unwrap_or_default();
        let dataset = spec.dataset_key();
        let champion = self
            .champions
            .get(&dataset)
            .and_then(|c| self.models.get(&c.model_id))
            .map(|m| (m.id.clone(), m.run_uri.clone()));
        job.champion_id = champion.as_ref().map(|c| c.0.clone()).unwrap_or_default();
        job.active_task = task_id.clone();
        job.state = JobState::Evaluating;
        job.worker_id.clear();
        let needs = Needs {
            gpu: spec.needs_gpu(),
            min_memory_bytes: spec.resources.min_memory_mb << 20,
            slots: 1,
        };
        self.enqueue(
            &task_id,
            job_id,
            TaskRole::Eval,
            needs,
            spec.max_attempts,
            ops,
        );
        let meta = self.meta.get_mut(&task_id).expect("just inserted");
        meta.challenger = challenger;
        meta.champion = champion.map(|c| c.1).unwrap_or_default();
        self.put_task(&task_id, ops);
        self.emit(event(job_id, EventKind::State(JobState::Evaluating)));
    }

    /// What a finished training run was, from its verified manifest and its result's detail.
    pub(super) fn run_record(
        &self,
        job_id: &str,
        run_uri: &str,
        manifest: Option<&artifacts::Manifest>,
        detail_json: &str,
        worker_id: &str,
    ) -> records::RunRecord {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct System {
            device: String,
            threads: i32,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Detail {
            system: System,
            load_seconds: f64,
            train_seconds: f64,
        }
        let detail: Detail = serde_json::from_str(detail_json).unwrap_or_default();
        let root = manifest.map(|m| m.dataset_root.clone()).unwrap_or_default();
        let dataset_version = self
            .jobs
            .get(job_id)
            .and_then(|j| j.spec())
            .and_then(|spec| self.datasets.get(&spec.dataset_key()))
            .and_then(|d| d.versions.iter().find(|v| v.root == root))
            .map_or(0, |v| v.number);
        records::RunRecord {
            device: detail.system.device,
            threads: detail.system.threads,
            trainfleet_version: manifest.map(|m| m.code_version.clone()).unwrap_or_default(),
            libtorch_version: manifest
                .map(|m| m.libtorch_version.clone())
                .unwrap_or_default(),
            dataset_root: root,
            dataset_version,
            artifact_sha256: manifest
                .map(|m| {
                    m.files
                        .iter()
                        .map(|(name, f)| (name.clone(), f.sha256.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            run_uri: run_uri.to_owned(),
            load_seconds: detail.load_seconds,
            train_seconds: detail.train_seconds,
            worker_id: worker_id.to_owned(),
        }
    }

    /// An eval finished: apply the gate, record the model, move the champion if it won.
    pub(super) fn evaluated(
        &mut self,
        job_id: &str,
        run: &str,
        manifest: &artifacts::Manifest,
        detail_json: &str,
        ops: &mut Vec<TxnOp>,
    ) {
        let detail: EvalDetail = match serde_json::from_str(detail_json) {
            Ok(d) => d,
            Err(e) => {
                self.finish(
                    job_id,
                    JobState::Failed,
                    format!("the eval task's result is not readable: {e}"),
                    ops,
                );
                return;
            }
        };
        let job = self.jobs[job_id].clone();
        let spec = job.spec().expect("training job").clone();
        let dataset = spec.dataset_key();
        let current = self.champions.get(&dataset).map(|c| c.model_id.clone());
        if current.as_deref().unwrap_or("") != job.champion_id {
            tracing::info!(%job_id, "the champion changed during the eval; evaluating again");
            self.enqueue_eval(job_id, ops);
            return;
        }
        let champion = current.as_ref().map(|id| gate::Champion {
            id,
            scores: match (&detail.champion, &detail.champion_error) {
                (Some(metrics), _) => Ok(gate::ChampionScores {
                    metrics,
                    recall: &detail.champion_recall,
                    challenger_only: detail.challenger_only,
                    champion_only: detail.champion_only,
                }),
                (None, Some(why)) => Err(why.as_str()),
                (None, None) => Err("the eval task did not score it"),
            },
        });
        let challenger = gate::Challenger {
            metrics: &detail.challenger,
            recall: &detail.challenger_recall,
            classes: &detail.classes,
        };
        let decision = gate::decide(&spec.gate, challenger, champion);
        let model_id = format!("m-{}", job_id.trim_start_matches("j-"));
        let version_number = self
            .datasets
            .get(&dataset)
            .and_then(|d| d.versions.iter().find(|v| v.root == manifest.dataset_root))
            .map_or(0, |v| v.number);
        let weights = manifest.files.get("model.safetensors");
        let mut metrics = detail.challenger.clone();
        metrics.insert("eval_samples".into(), detail.samples as f64);
        let model = ModelRecord {
            id: model_id.clone(),
            dataset: dataset.clone(),
            dataset_version: manifest.dataset_root.clone(),
            job_id: job_id.to_owned(),
            parent_id: current.clone().unwrap_or_default(),
            config_hash: spec.config_hash(),
            metrics: metrics.clone(),
            artifact_uri: format!("{run}/model.safetensors"),
            artifact_sha256: weights.map(|f| f.sha256.clone()).unwrap_or_default(),
            run_uri: run.to_owned(),
            gate: decision.clone(),
            created_at: SystemTime::now(),
            labels: spec.labels.clone(),
            dataset_version_number: version_number,
            eval_samples_uri: detail.samples_uri.clone(),
            report_uri: detail.report_uri.clone(),
        };
        tracing::info!(
            %job_id, %model_id, promoted = decision.promoted, reasons = ?decision.reasons,
            samples = detail.samples, sample_digest = %detail.sample_digest, "gate decided"
        );
        ops.push(TxnOp::Put(
            records::model_key(&model_id),
            records::encode(&model),
        ));
        self.models.insert(model_id.clone(), model);
        let result = if decision.promoted {
            "promoted"
        } else {
            "rejected"
        };
        crate::metrics::get()
            .promotions
            .get_or_create(&crate::metrics::ResultLabel { result })
            .inc();
        if decision.promoted {
            self.set_champion(&dataset, &model_id, &decision.reasons.join("; "), ops);
        }
        let j = self.jobs.get_mut(job_id).expect("exists");
        j.result = Some(JobOutcome {
            model_id,
            metrics,
            promoted: decision.promoted,
            reasons: decision.reasons,
            run_uri: run.to_owned(),
            report_uri: detail.report_uri,
            report_error: detail.report_error,
            mlflow_run_id: detail.mlflow_run_id,
            tracking_error: detail.tracking_error,
        });
        self.finish(job_id, JobState::Succeeded, String::new(), ops);
    }
}
