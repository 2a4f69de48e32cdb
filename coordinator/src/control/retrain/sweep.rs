//! Retraining with a sweep (policy `sweep_yaml`): the decision starts a sweep whose base job is
//! the policy's job pinned to the version, instead of that job alone.
//!
//! - **Pending**: the sweep is the dataset's pending retrain until its first trial is leased;
//!   a newer version meanwhile re-pins it (every trial still queued trains on the newer one).
//! - **Started**: the first trial's lease takes the idempotency key and sets
//!   `last_retrain_at`, like a single job's first lease.
//! - **Ended**: when the sweep ends, its best configurations (up to `warm_start_top_k`) are
//!   kept in the book, and a sweep that did not succeed gives its key back.
//! - **Warm start**: the next retrain sweep proposes those configurations first (restricted to
//!   the paths of its space; one the job spec now refuses is left out), and runs
//!   `warm_max_trials` trials in all when that is set: it starts near the previous optimum and
//!   searches less around it.
//!
//! Which configurations are the best: trials that trained more epochs rank first (with ASHA, the
//! survivors of the top rung before those stopped at a lower one), then by the objective; trials
//! without an objective are left out.

use std::collections::BTreeMap;
use std::time::SystemTime;

use trainfleet_core::kv::TxnOp;
use trainfleet_core::sweep::SweepSpec;

use super::retrain_spec;
use crate::control::Inner;
use crate::records::{
    self, DatasetRecord, DecidedSweep, RetrainOrigin, RetrainSweep, SweepState, TrialRecord,
    VersionRecord, WarmStart,
};

/// The sweep a retrain of `record` on `version` runs, before its warm start. `Err` says why
/// there is none.
pub fn retrain_sweep(
    record: &DatasetRecord,
    version: Option<&VersionRecord>,
) -> std::result::Result<SweepSpec, String> {
    let policy = record
        .sweep
        .as_ref()
        .ok_or_else(|| format!("the policy of `{}` has no sweep_yaml", record.name))?;
    let base = retrain_spec(record, version)?;
    let mut spec = SweepSpec::with_base(&policy.yaml, "policy.sweep_yaml", base)
        .map_err(|e| format!("the policy's sweep_yaml is not valid: {e}"))?;
    spec.promote_best = true;
    if spec.name == "sweep" {
        spec.name = format!("retrain-{}", record.name);
    }
    Ok(spec)
}

/// `spec` with the previous sweep's best configurations proposed first; returns how many were
/// taken.
fn warm_started(spec: &mut SweepSpec, policy: &RetrainSweep, warm: &WarmStart) -> u32 {
    let mut taken = 0;
    for config in warm.configs.iter().take(policy.warm_start_top_k as usize) {
        let values: BTreeMap<String, serde_yaml::Value> = config
            .iter()
            .filter(|(path, _)| spec.space.contains_key(*path))
            .filter_map(|(path, v)| Some((path.clone(), serde_yaml::to_value(v).ok()?)))
            .collect();
        if values.is_empty() || spec.warm_start.contains(&values) {
            continue;
        }
        spec.warm_start.push(values);
        if spec.validate().is_ok() {
            taken += 1;
        } else {
            spec.warm_start.pop();
        }
    }
    if taken > 0 && policy.warm_max_trials > 0 {
        let trials = spec.trials().min(policy.warm_max_trials.max(taken));
        spec.max_trials = Some(trials);
        if spec.validate().is_err() {
            spec.max_trials = None;
        }
    }
    taken
}

/// The best `k` configurations of a sweep's trials (see the module's doc for the order).
fn best_configs(
    trials: &[TrialRecord],
    maximize: bool,
    k: usize,
) -> Vec<BTreeMap<String, serde_json::Value>> {
    let mut ranked: Vec<&TrialRecord> = trials.iter().filter(|t| t.objective.is_some()).collect();
    ranked.sort_by(|a, b| {
        let (va, vb) = (a.objective.unwrap_or(0.0), b.objective.unwrap_or(0.0));
        let by_value = if maximize {
            vb.total_cmp(&va)
        } else {
            va.total_cmp(&vb)
        };
        b.epochs
            .cmp(&a.epochs)
            .then(by_value)
            .then(a.number.cmp(&b.number))
    });
    ranked.iter().take(k).map(|t| t.params.clone()).collect()
}

impl Inner {
    /// Starts a retrain sweep for `dataset` on version `number`.
    pub(super) fn fire_sweep(
        &mut self,
        dataset: &str,
        number: u64,
        mut spec: SweepSpec,
        key: String,
        now: SystemTime,
        ops: &mut Vec<TxnOp>,
    ) -> DecidedSweep {
        let record = &self.datasets[dataset];
        let policy = record
            .sweep
            .clone()
            .expect("a sweep retrain has a sweep policy");
        let warm = record.retrain.warm_start.clone().unwrap_or_default();
        let taken = warm_started(&mut spec, &policy, &warm);
        let trials = spec.trials();
        let origin = RetrainOrigin {
            dataset: dataset.to_owned(),
            key: key.clone(),
        };
        let idempotency_key = format!("retrain:{dataset}:{key}");
        let id = self.create_sweep(spec, String::new(), idempotency_key, Some(origin), now, ops);
        let warm_start_from = if taken > 0 {
            warm.sweep_id
        } else {
            String::new()
        };
        if taken > 0 {
            let sweep = self.sweeps.get_mut(&id).expect("just created");
            sweep.warm_start_from = warm_start_from.clone();
            self.put_sweep(&id, ops);
        }
        let record = self.datasets.get_mut(dataset).expect("exists");
        record.retrain.pending = Some(records::PendingRetrain {
            job_id: String::new(),
            sweep_id: id.clone(),
            version: number,
            key,
        });
        DecidedSweep {
            sweep_id: id,
            trials,
            warm_start_from,
            warm_start_configs: taken,
        }
    }

    /// Re-pins the pending retrain sweep `id` (no trial leased yet) to version `number`: the
    /// sweep's base job and every queued trial's job train on it instead.
    pub(super) fn coalesce_sweep(
        &mut self,
        id: &str,
        number: u64,
        spec: SweepSpec,
        key: String,
        ops: &mut Vec<TxnOp>,
    ) -> DecidedSweep {
        let sweep = self
            .sweeps
            .get_mut(id)
            .expect("a pending retrain sweep exists");
        sweep.spec.job = spec.job;
        if let Some(origin) = sweep.retrain.as_mut() {
            origin.key = key.clone();
        }
        let spec = sweep.spec.clone();
        let dataset = sweep.retrain.as_ref().map(|o| o.dataset.clone());
        let queued: Vec<(u32, String, BTreeMap<String, serde_yaml::Value>)> = self.trials[id]
            .iter()
            .filter(|t| !t.job_id.is_empty())
            .map(|t| {
                let values = t
                    .params
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), serde_yaml::to_value(v).ok()?)))
                    .collect();
                (t.number, t.job_id.clone(), values)
            })
            .collect();
        for (number, job_id, values) in queued {
            let Ok(job_spec) = spec.trial_job(number, &values) else {
                continue;
            };
            if let Some(job) = self.jobs.get_mut(&job_id)
                && job.started_at.is_none()
            {
                job.kind = records::JobKind::Train {
                    spec: Box::new(job_spec),
                };
                self.put_job(&job_id, ops);
            }
        }
        if let Some(pending) = dataset
            .and_then(|d| self.datasets.get_mut(&d))
            .and_then(|r| r.retrain.pending.as_mut())
            .filter(|p| p.sweep_id == id)
        {
            pending.version = number;
            pending.key = key;
        }
        self.put_sweep(id, ops);
        DecidedSweep {
            sweep_id: id.to_owned(),
            trials: spec.trials(),
            warm_start_from: self.sweeps[id].warm_start_from.clone(),
            warm_start_configs: spec.warm_start.len() as u32,
        }
    }

    /// A retrain sweep ended (or was cancelled): its best configurations are kept for the next
    /// one, it is no longer pending, and unless it succeeded its key is given back.
    pub(in crate::control) fn retrain_sweep_ended(&mut self, id: &str, ops: &mut Vec<TxnOp>) {
        let Some(sweep) = self.sweeps.get(id) else {
            return;
        };
        let Some(origin) = sweep.retrain.clone() else {
            return;
        };
        let succeeded = sweep.state == SweepState::Succeeded;
        let maximize = sweep.spec.objective.maximize();
        let Some(record) = self.datasets.get_mut(&origin.dataset) else {
            return;
        };
        let k = record.sweep.as_ref().map_or(0, |p| p.warm_start_top_k) as usize;
        let configs = best_configs(&self.trials[id], maximize, k);
        let book = &mut record.retrain;
        if !configs.is_empty() {
            book.warm_start = Some(WarmStart {
                sweep_id: id.to_owned(),
                configs,
            });
        }
        book.retrain_ended(|p| p.sweep_id == id, &origin.key, succeeded);
        ops.push(TxnOp::Put(
            records::dataset_key(&record.name),
            records::encode(&*record),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::TrialState;

    fn trial(number: u32, epochs: u32, objective: Option<f64>) -> TrialRecord {
        TrialRecord {
            sweep_id: "s".into(),
            number,
            job_id: String::new(),
            params: [("training.learning_rate".to_owned(), number.into())].into(),
            state: TrialState::Succeeded,
            objective,
            epochs,
            rungs: Vec::new(),
            resumes: 0,
            error: String::new(),
            run_uri: String::new(),
        }
    }

    #[test]
    fn the_best_configs_are_the_longest_trained_then_the_best_valued() {
        let trials = [
            trial(0, 3, Some(0.5)),
            trial(1, 9, Some(0.4)),
            trial(2, 9, Some(0.7)),
            trial(3, 1, Some(0.99)),
            trial(4, 9, None),
            trial(5, 9, Some(0.7)),
        ];
        let lr = |c: &BTreeMap<String, serde_json::Value>| c["training.learning_rate"].clone();
        let best: Vec<_> = best_configs(&trials, true, 4).iter().map(lr).collect();
        assert_eq!(best, [2, 5, 1, 0].map(serde_json::Value::from));
        let least_loss: Vec<_> = best_configs(&trials, false, 2).iter().map(lr).collect();
        assert_eq!(least_loss, [1, 2].map(serde_json::Value::from));
        assert!(best_configs(&trials, true, 0).is_empty());
    }
}
