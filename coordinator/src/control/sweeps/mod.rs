//! Sweeps: trials are ordinary jobs tagged with their sweep; the sweep proposes the next trial
//! when one ends, keeps the best, and when every trial has ended sends the best through the
//! ordinary eval and gate against the dataset's champion.
//!
//! Every change rides in the same journal commit as the job change that caused it (a trial's
//! job ending, its successor's creation, the sweep's bookkeeping), so a coordinator that takes
//! over finds the sweep exactly where the old one left it: proposals are a pure function of the
//! spec, the seed and the trial number, and `started` says which number comes next.
//!
//! `parallelism` counts trials whose jobs are queued or training; trials are proposed in number
//! order, and a trial whose job cannot be built from its values (a combination the job spec
//! refuses) counts as failed without running. Once `failure_budget` trials failed, no new trial
//! starts; the sweep ends when its last running trial does. ASHA's pauses and promotions are
//! in `asha.rs`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use trainfleet_core::kv::TxnOp;
use trainfleet_core::sweep::asha::{Next, next};
use trainfleet_core::sweep::{Strategy, SweepSpec};

use crate::error::{Error, Result};
use crate::records::{
    self, JobOutcome, JobState, SweepGateRecord, SweepLink, SweepRecord, SweepState, SweepView,
    TrialRecord, TrialState,
};

use super::jobs::NewJob;
use super::{Control, Inner, retrain};

mod asha;

/// A sweep id that sorts by start time: `s-` + milliseconds since the epoch (hex) + random.
fn new_sweep_id(now: SystemTime) -> String {
    let millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("s-{millis:011x}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

fn no_sweep(id: &str) -> Error {
    Error::NotFound(format!("sweep `{id}` does not exist"))
}

impl Control {
    /// Starts a sweep (or returns the one started before with the same idempotency key) and
    /// queues its first trials.
    pub async fn start_sweep(
        &self,
        mut spec: SweepSpec,
        idempotency_key: String,
        owner: String,
    ) -> Result<SweepView> {
        let now = SystemTime::now();
        let (view, ack) = {
            let mut inner = self.lock();
            if !idempotency_key.is_empty()
                && let Some(existing) = inner.sweep_idempotency.get(&idempotency_key)
            {
                return Ok(inner.sweep_view(existing, true));
            }
            // Every trial trains on the same data: a registered dataset is pinned once.
            if let Some(job) = spec.job.as_mut()
                && job.names_registered_dataset()
            {
                retrain::resolve_registered(&inner.datasets, job)?;
            }
            let mut ops = Vec::new();
            let id = inner.create_sweep(spec, owner, idempotency_key, None, now, &mut ops);
            let view = inner.sweep_view(&id, true);
            let ack = self.journal.record(ops);
            self.dispatch(&mut inner);
            (view, ack)
        };
        ack.durable().await.map_err(Error::Store)?;
        tracing::info!(sweep_id = %view.record.id, trials = view.record.spec.trials(), "sweep started");
        Ok(view)
    }

    /// A sweep with its trials, from the store or else the archive.
    pub async fn sweep(&self, id: &str) -> Result<SweepView> {
        if let Some(view) = self.live_sweep(id) {
            return Ok(view);
        }
        match self.archive.get_sweep(id).await? {
            Some(a) => Ok(SweepView {
                record: a.sweep,
                trials: a.trials,
            }),
            None => Err(no_sweep(id)),
        }
    }

    fn live_sweep(&self, id: &str) -> Option<SweepView> {
        let inner = self.lock();
        inner
            .sweeps
            .contains_key(id)
            .then(|| inner.sweep_view(id, true))
    }

    /// Sweeps older than `before` (all when empty), newest first, without their trials, the
    /// store's and the archive's together; and the token of the next page (empty at the end).
    pub async fn sweeps(&self, before: &str, limit: usize) -> Result<(Vec<SweepView>, String)> {
        let live: Vec<SweepView> = {
            let inner = self.lock();
            inner
                .sweeps
                .keys()
                .rev()
                .filter(|id| before.is_empty() || id.as_str() < before)
                .take(limit)
                .map(|id| inner.sweep_view(id, false))
                .collect()
        };
        let archived = self.archive.sweep_ids(before, limit).await?;
        let mut ids: Vec<&str> = live
            .iter()
            .map(|s| s.record.id.as_str())
            .chain(archived.iter().map(String::as_str))
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        ids.truncate(limit);
        let mut page = Vec::with_capacity(ids.len());
        for id in &ids {
            match live.iter().find(|s| s.record.id == *id) {
                Some(view) => page.push(view.clone()),
                None => {
                    if let Some(a) = self.archive.get_sweep(id).await? {
                        page.push(SweepView {
                            record: a.sweep,
                            trials: Vec::new(),
                        });
                    }
                }
            }
        }
        let next = if ids.len() == limit {
            ids.last().map(|s| s.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((page, next))
    }

    /// Cancels a sweep: its running trials' jobs are cancelled, paused trials marked
    /// cancelled, no trial starts and the best is not gated.
    pub async fn cancel_sweep(&self, id: &str, reason: &str) -> Result<SweepView> {
        let reason = if reason.is_empty() {
            "cancelled by request".to_owned()
        } else {
            format!("cancelled: {reason}")
        };
        if self.live_sweep(id).is_none() {
            return Err(match self.archive.get_sweep(id).await? {
                Some(_) => Error::FailedPrecondition(format!(
                    "sweep `{id}` already ended (archived); there is nothing to cancel"
                )),
                None => no_sweep(id),
            });
        }
        let (view, ack) = {
            let mut inner = self.lock();
            let sweep = inner.sweeps.get(id).ok_or_else(|| no_sweep(id))?;
            if sweep.state.is_final() {
                return Err(Error::FailedPrecondition(format!(
                    "sweep `{id}` already ended ({:?}); there is nothing to cancel",
                    sweep.state
                )));
            }
            let mut ops = Vec::new();
            inner.cancel_sweep_in(id, reason, &mut ops);
            (inner.sweep_view(id, true), self.journal.record(ops))
        };
        ack.durable().await.map_err(Error::Store)?;
        tracing::info!(sweep_id = %id, "sweep cancelled");
        Ok(view)
    }
}

impl Inner {
    /// Records a new sweep and starts its first trials; returns its id.
    pub(super) fn create_sweep(
        &mut self,
        spec: SweepSpec,
        owner: String,
        idempotency_key: String,
        retrain: Option<records::RetrainOrigin>,
        now: SystemTime,
        ops: &mut Vec<TxnOp>,
    ) -> String {
        let id = new_sweep_id(now);
        let record = SweepRecord {
            id: id.clone(),
            spec: Box::new(spec),
            state: SweepState::Running,
            started: 0,
            failed: 0,
            best: None,
            gate: None,
            error: String::new(),
            created_at: now,
            finished_at: None,
            owner,
            idempotency_key: idempotency_key.clone(),
            retrain,
            warm_start_from: String::new(),
        };
        if !idempotency_key.is_empty() {
            self.sweep_idempotency.insert(idempotency_key, id.clone());
        }
        self.sweeps.insert(id.clone(), record);
        self.trials.insert(id.clone(), Vec::new());
        self.advance_sweep(&id, now, ops);
        self.put_sweep(&id, ops);
        id
    }

    /// Cancels a sweep that has not ended: its running trials' jobs are cancelled, paused
    /// trials marked cancelled, no trial starts and the best is not gated.
    pub(super) fn cancel_sweep_in(&mut self, id: &str, reason: String, ops: &mut Vec<TxnOp>) {
        let inner = self;
        let sweep = inner.sweeps.get_mut(id).expect("exists");
        sweep.state = SweepState::Cancelled;
        sweep.error = reason.clone();
        sweep.finished_at = Some(SystemTime::now());
        let live: Vec<(u32, String)> = inner.trials[id]
            .iter()
            .filter(|t| matches!(t.state, TrialState::Running | TrialState::Paused))
            .map(|t| (t.number, t.job_id.clone()))
            .collect();
        for (number, job_id) in live {
            let trial = &mut inner.trials.get_mut(id).expect("exists")[number as usize];
            trial.state = TrialState::Cancelled;
            inner.put_trial(id, number, ops);
            // A paused trial's job ends too (its checkpoint stays in the artifact store).
            let live = inner.jobs.get(&job_id).is_some_and(|j| !j.state.is_final());
            if live {
                inner.cancel_job(&job_id, format!("{reason} (sweep {id})"), ops);
            }
        }
        if let Some(gate) = inner.sweeps[id].gate.clone()
            && inner
                .jobs
                .get(&gate.job_id)
                .is_some_and(|j| !j.state.is_final())
        {
            inner.cancel_job(&gate.job_id, format!("{reason} (sweep {id})"), ops);
        }
        inner.retrain_sweep_ended(id, ops);
        inner.put_sweep(id, ops);
    }

    pub(super) fn sweep_view(&self, id: &str, with_trials: bool) -> SweepView {
        SweepView {
            record: self.sweeps[id].clone(),
            trials: if with_trials {
                self.trials.get(id).cloned().unwrap_or_default()
            } else {
                Vec::new()
            },
        }
    }

    pub(super) fn put_sweep(&self, id: &str, ops: &mut Vec<TxnOp>) {
        if let Some(s) = self.sweeps.get(id) {
            ops.push(TxnOp::Put(records::sweep_key(id), records::encode(s)));
        }
    }

    fn put_trial(&self, id: &str, number: u32, ops: &mut Vec<TxnOp>) {
        if let Some(t) = self.trials.get(id).and_then(|t| t.get(number as usize)) {
            ops.push(TxnOp::Put(
                records::trial_key(id, number),
                records::encode(t),
            ));
        }
    }

    /// Starts trials while there is room and budget; ends the sweep when nothing runs and
    /// nothing more can start.
    pub(super) fn advance_sweep(&mut self, id: &str, now: SystemTime, ops: &mut Vec<TxnOp>) {
        loop {
            let sweep = &self.sweeps[id];
            if sweep.state != SweepState::Running {
                return;
            }
            let spec = &sweep.spec;
            let trials = &self.trials[id];
            let running = trials.iter().filter(|t| t.is_running()).count();
            if running >= spec.parallelism as usize {
                return;
            }
            // ASHA: a promotion before any new trial.
            if spec.strategy == Strategy::Asha {
                let rungs = asha::rung_table(trials, &spec.rungs());
                let eta = spec.asha.as_ref().map_or(3, |a| a.eta);
                if let Next::Promote { trial, to } = next(&rungs, eta, spec.objective.maximize()) {
                    self.promote_trial(id, trial, to, ops);
                    continue;
                }
            }
            let can_start = sweep.started < spec.trials() && sweep.failed < spec.failure_budget();
            if can_start {
                self.start_trial(id, now, ops);
                continue;
            }
            if running == 0 {
                self.sweep_trials_done(id, now, ops);
            }
            return;
        }
    }

    fn start_trial(&mut self, id: &str, now: SystemTime, ops: &mut Vec<TxnOp>) {
        let sweep = self.sweeps.get_mut(id).expect("exists");
        let number = sweep.started;
        sweep.started += 1;
        let values = sweep.spec.propose(number);
        let params = values
            .iter()
            .map(|(path, v)| (path.clone(), serde_json::to_value(v).unwrap_or_default()))
            .collect();
        let mut trial = TrialRecord {
            sweep_id: id.to_owned(),
            number,
            job_id: String::new(),
            params,
            state: TrialState::Running,
            objective: None,
            epochs: 0,
            rungs: Vec::new(),
            resumes: 0,
            error: String::new(),
            run_uri: String::new(),
        };
        match sweep.spec.trial_job(number, &values) {
            Ok(job) => {
                let owner = sweep.owner.clone();
                let pause_at = asha::pause_target(&sweep.spec.rungs(), 0);
                let mut new = NewJob::train(job, None);
                new.owner = owner;
                new.sweep = Some(SweepLink {
                    sweep_id: id.to_owned(),
                    trial: number,
                    gate: false,
                });
                trial.job_id = self.create_job(new, now, ops);
                let task_id = self.jobs[&trial.job_id].active_task.clone();
                if pause_at > 0 {
                    self.meta.get_mut(&task_id).expect("queued").pause_at = pause_at;
                    self.put_task(&task_id, ops);
                }
            }
            Err(e) => {
                tracing::warn!(sweep_id = %id, trial = number, error = %e, "trial cannot run");
                trial.state = TrialState::Failed;
                trial.error = e.to_string();
                sweep.failed += 1;
            }
        }
        self.trials.get_mut(id).expect("exists").push(trial);
        self.put_trial(id, number, ops);
        self.put_sweep(id, ops);
    }

    /// A trial's training succeeded: the job ends here, without an eval (only the sweep's best
    /// meets the champion).
    pub(super) fn trial_trained(&mut self, job_id: &str, ops: &mut Vec<TxnOp>) {
        let job = self.jobs.get_mut(job_id).expect("exists");
        let sweep = job
            .sweep
            .as_ref()
            .map(|l| l.sweep_id.clone())
            .unwrap_or_default();
        job.result = Some(JobOutcome {
            model_id: String::new(),
            metrics: job.train_metrics.clone(),
            promoted: false,
            reasons: vec![format!(
                "a trial of sweep {sweep}: only the sweep's best trial meets the champion"
            )],
            run_uri: job.train_run.clone().unwrap_or_default(),
            report_uri: String::new(),
            report_error: String::new(),
            mlflow_run_id: String::new(),
            tracking_error: String::new(),
        });
        self.finish(job_id, JobState::Succeeded, String::new(), ops);
    }

    /// A job of a sweep ended (called by `finish`): record the trial or the gate, go on.
    pub(super) fn sweep_job_ended(&mut self, job_id: &str, state: JobState, ops: &mut Vec<TxnOp>) {
        let job = &self.jobs[job_id];
        let Some(link) = job.sweep.clone() else {
            return;
        };
        let Some(sweep) = self.sweeps.get(&link.sweep_id) else {
            return;
        };
        let id = link.sweep_id.clone();
        if link.gate {
            self.gate_ended(&id, job_id, state, ops);
            return;
        }
        let metric = sweep.spec.objective.metric.clone();
        let maximize = sweep.spec.objective.maximize();
        let asha = sweep.spec.strategy == Strategy::Asha;
        let objective = job.epochs.last().and_then(|(_, v)| v.get(&metric).copied());
        let epochs = job.epochs.last().map_or(0, |(n, _)| *n);
        let run_uri = job.train_run.clone().unwrap_or_default();
        let error = job.error.clone();
        let Some(trial) = self
            .trials
            .get_mut(&id)
            .and_then(|t| t.get_mut(link.trial as usize))
            .filter(|t| matches!(t.state, TrialState::Running | TrialState::Paused))
            .filter(|t| t.job_id == job_id)
        else {
            return;
        };
        trial.epochs = epochs;
        trial.objective = objective;
        trial.run_uri = run_uri;
        let sweep = self.sweeps.get_mut(&id).expect("exists");
        match state {
            JobState::Succeeded => {
                trial.state = TrialState::Succeeded;
                if asha {
                    trial.rungs.push(records::RungReport {
                        trial: link.trial,
                        value: objective,
                        promoted: false,
                    });
                }
                let better = |best: f64, v: f64| if maximize { v > best } else { v < best };
                let current = sweep
                    .best
                    .and_then(|b| self.trials[&id].get(b as usize))
                    .and_then(|t| t.objective);
                if let Some(v) = objective
                    && current.is_none_or(|best| better(best, v))
                {
                    sweep.best = Some(link.trial);
                }
            }
            JobState::Cancelled => trial.state = TrialState::Cancelled,
            _ => {
                trial.state = TrialState::Failed;
                trial.error = error;
                sweep.failed += 1;
                // It counts at the rung it was training for, ranked below every value.
                if asha {
                    trial.rungs.push(records::RungReport {
                        trial: link.trial,
                        value: None,
                        promoted: false,
                    });
                }
            }
        }
        self.put_trial(&id, link.trial, ops);
        self.put_sweep(&id, ops);
        self.advance_sweep(&id, SystemTime::now(), ops);
    }

    /// Every trial ended: send the best to the gate, or end the sweep.
    fn sweep_trials_done(&mut self, id: &str, now: SystemTime, ops: &mut Vec<TxnOp>) {
        self.stop_paused(id, ops);
        let sweep = &self.sweeps[id];
        let best = sweep.best;
        let gate = sweep.spec.promote_best;
        match best {
            Some(number) if gate => {
                let trial = self.trials[id][number as usize].clone();
                let values: BTreeMap<String, serde_yaml::Value> = trial
                    .params
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_yaml::to_value(v).unwrap_or_default()))
                    .collect();
                let spec = match sweep.spec.trial_job(number, &values) {
                    Ok(spec) => spec,
                    Err(e) => {
                        self.end_sweep(
                            id,
                            SweepState::Failed,
                            format!("the best trial's job cannot be rebuilt: {e}"),
                            ops,
                        );
                        return;
                    }
                };
                let mut new = NewJob::train(spec, None);
                new.owner = sweep.owner.clone();
                new.sweep = Some(SweepLink {
                    sweep_id: id.to_owned(),
                    trial: number,
                    gate: true,
                });
                let job_id = self.insert_job(new, now);
                let job = self.jobs.get_mut(&job_id).expect("just inserted");
                job.train_run = Some(trial.run_uri.clone());
                job.started_at = Some(now);
                self.enqueue_eval(&job_id, ops);
                self.put_job(&job_id, ops);
                let sweep = self.sweeps.get_mut(id).expect("exists");
                sweep.state = SweepState::Gating;
                sweep.gate = Some(SweepGateRecord {
                    job_id,
                    trial: number,
                    model_id: String::new(),
                    promoted: false,
                    reasons: Vec::new(),
                });
                self.put_sweep(id, ops);
                tracing::info!(sweep_id = %id, trial = number, "sweep's trials ended; gating the best");
            }
            Some(_) => self.end_sweep(id, SweepState::Succeeded, String::new(), ops),
            None => {
                let failed = sweep.failed;
                self.end_sweep(
                    id,
                    SweepState::Failed,
                    format!("no trial reported the objective ({failed} failed)"),
                    ops,
                );
            }
        }
    }

    fn gate_ended(&mut self, id: &str, job_id: &str, state: JobState, ops: &mut Vec<TxnOp>) {
        let job = &self.jobs[job_id];
        let outcome = job.result.clone();
        let error = job.error.clone();
        let sweep = self.sweeps.get_mut(id).expect("exists");
        if sweep.state != SweepState::Gating {
            return;
        }
        let gate = sweep.gate.get_or_insert_with(|| SweepGateRecord {
            job_id: job_id.to_owned(),
            trial: 0,
            model_id: String::new(),
            promoted: false,
            reasons: Vec::new(),
        });
        match (state, outcome) {
            (JobState::Succeeded, Some(result)) => {
                gate.model_id = result.model_id;
                gate.promoted = result.promoted;
                gate.reasons = result.reasons;
                self.end_sweep(id, SweepState::Succeeded, String::new(), ops);
            }
            _ => {
                gate.reasons = vec![format!("the eval did not finish: {error}")];
                self.end_sweep(
                    id,
                    SweepState::Failed,
                    format!("the best trial's eval ended {state:?}: {error}"),
                    ops,
                );
            }
        }
    }

    fn end_sweep(&mut self, id: &str, state: SweepState, error: String, ops: &mut Vec<TxnOp>) {
        let sweep = self.sweeps.get_mut(id).expect("exists");
        sweep.state = state;
        sweep.error = error;
        sweep.finished_at = Some(SystemTime::now());
        tracing::info!(sweep_id = %id, ?state, best = ?sweep.best, "sweep ended");
        self.stop_paused(id, ops);
        self.retrain_sweep_ended(id, ops);
        self.put_sweep(id, ops);
    }

    /// ASHA left these trials paused at a rung without promoting them: they are stopped, and
    /// their jobs end (cancelled, saying so; their checkpoints stay in the artifact store).
    fn stop_paused(&mut self, id: &str, ops: &mut Vec<TxnOp>) {
        let paused: Vec<(u32, String, u32)> = self.trials[id]
            .iter()
            .filter(|t| t.state == TrialState::Paused)
            .map(|t| (t.number, t.job_id.clone(), t.epochs))
            .collect();
        for (number, job_id, epochs) in paused {
            self.trials.get_mut(id).expect("exists")[number as usize].state = TrialState::Stopped;
            self.put_trial(id, number, ops);
            if self.jobs.get(&job_id).is_some_and(|j| !j.state.is_final()) {
                let why = format!(
                    "stopped by ASHA after epoch {epochs}: not in the top of its rung when sweep {id} ended"
                );
                self.finish(&job_id, JobState::Cancelled, why, ops);
                self.put_job(&job_id, ops);
            }
        }
    }
}
