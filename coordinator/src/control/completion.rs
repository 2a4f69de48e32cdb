//! How tasks end: completion reports, progress (epochs, checkpoints), attempts closed, and
//! jobs finished.

use std::collections::BTreeMap;
use std::time::SystemTime;

use trainfleet_core::artifacts;
use trainfleet_core::artifacts::ArtifactStore;
use trainfleet_core::kv::TxnOp;

use crate::error::{Error, Result};
use crate::events::{BatchProgress, EventKind};
use crate::records::{Checkpoint, JobState, JobView, TaskRole};
use crate::requests::Progress;
use crate::scheduler::{Outcome, TaskState};

use super::{Control, Inner, Report, event, refused};

impl Control {
    /// A worker's report of how a task ended. Refused (changing nothing) unless the worker holds
    /// the task under that attempt.
    pub async fn complete(
        &self,
        worker_id: &str,
        task_id: &str,
        attempt: u32,
        report: Report,
    ) -> Result<()> {
        let role = {
            let inner = self.lock();
            inner
                .scheduler
                .check_holder(worker_id, task_id, attempt)
                .map_err(refused)?;
            inner.meta[task_id].role
        };
        // Checks that need I/O happen before the state changes, outside the lock: a train
        // result must name a run with a manifest; before an eval result can move the champion
        // pointer, every file of the challenger's run is re-read against that manifest.
        let verified = match (&report, role) {
            (Report::Success { artifacts, .. }, TaskRole::Train) => {
                let run = artifacts.get("run").cloned().unwrap_or_default();
                Some(self.check_run(&run, false).await.map(|m| (run, m)))
            }
            (Report::Success { .. }, TaskRole::Eval) => {
                let run = self.lock().meta[task_id].challenger.clone();
                Some(self.check_run(&run, true).await.map(|m| (run, m)))
            }
            _ => None,
        };
        let ack = {
            let mut inner = self.lock();
            inner
                .scheduler
                .check_holder(worker_id, task_id, attempt)
                .map_err(refused)?;
            let job_id = inner.scheduler.task(task_id).expect("held").job_id.clone();
            let mut ops = Vec::new();
            let report = match (report, &verified) {
                (_, Some(Err(e))) => Report::Failure {
                    reason: format!("its artifacts did not verify: {e}"),
                    permanent: true,
                },
                (report, _) => report,
            };
            let outcome = match &report {
                Report::Success { .. } => "succeeded",
                Report::Failure { .. } => "failed",
                Report::Cancelled => "cancelled",
                Report::Paused { .. } => "paused",
            };
            let ran = inner
                .meta
                .get(task_id)
                .and_then(|m| m.leased_at)
                .map(crate::metrics::since);
            match report {
                Report::Success {
                    metrics,
                    detail_json,
                    ..
                } => {
                    inner
                        .scheduler
                        .complete(worker_id, task_id, attempt, Outcome::Succeeded)
                        .map_err(refused)?;
                    inner.close_attempt(&job_id, "succeeded");
                    let (run, manifest) = match verified {
                        Some(Ok(v)) => (v.0, Some(v.1)),
                        _ => (String::new(), None),
                    };
                    match role {
                        TaskRole::Sleep => {
                            inner.finish(&job_id, JobState::Succeeded, String::new(), &mut ops);
                        }
                        TaskRole::Train => {
                            inner.record_epochs(&job_id, &detail_json);
                            let record = inner.run_record(
                                &job_id,
                                &run,
                                manifest.as_ref(),
                                &detail_json,
                                worker_id,
                            );
                            let job = inner.jobs.get_mut(&job_id).expect("exists");
                            job.train_run = Some(run);
                            job.train_metrics = metrics;
                            job.run = Some(record);
                            if job.sweep.is_some() {
                                inner.trial_trained(&job_id, &mut ops);
                            } else {
                                inner.enqueue_eval(&job_id, &mut ops);
                            }
                        }
                        TaskRole::Eval => {
                            let manifest = manifest.expect("eval results are verified");
                            inner.evaluated(&job_id, &run, &manifest, &detail_json, &mut ops);
                        }
                        TaskRole::Scan => inner.scanned(&job_id, &detail_json, &mut ops),
                    }
                }
                Report::Failure { reason, permanent } => {
                    inner
                        .scheduler
                        .complete(
                            worker_id,
                            task_id,
                            attempt,
                            Outcome::Failed {
                                reason: reason.clone(),
                                retry: !permanent,
                            },
                        )
                        .map_err(refused)?;
                    super::leasing::requeued(&inner, task_id, "failed");
                    inner.after_task_change(task_id, &format!("failed: {reason}"), &mut ops);
                }
                Report::Cancelled => {
                    inner
                        .scheduler
                        .complete(worker_id, task_id, attempt, Outcome::Cancelled)
                        .map_err(refused)?;
                    inner.after_task_change(task_id, "cancelled", &mut ops);
                }
                Report::Paused {
                    epoch,
                    checkpoint,
                    epochs,
                } => {
                    let asked = inner.meta[task_id].pause_at;
                    if role != TaskRole::Train || asked == 0 || epoch != asked {
                        return Err(Error::FailedPrecondition(format!(
                            "task {task_id} reported a pause after epoch {epoch}, but it was asked to pause {}; report refused, nothing changed",
                            if asked == 0 {
                                "never".to_owned()
                            } else {
                                format!("after epoch {asked}")
                            }
                        )));
                    }
                    self.artifacts.key_of(&checkpoint).map_err(|e| {
                        Error::FailedPrecondition(format!(
                            "the paused task's checkpoint {checkpoint:?} is not in the artifact store: {e}"
                        ))
                    })?;
                    inner
                        .scheduler
                        .complete(worker_id, task_id, attempt, Outcome::Succeeded)
                        .map_err(refused)?;
                    inner.close_attempt(&job_id, &format!("paused after epoch {epoch}"));
                    inner.trial_paused(&job_id, epoch, checkpoint, epochs, &mut ops);
                }
            }
            crate::metrics::get().task_ended(outcome, ran);
            inner.put_task(task_id, &mut ops);
            inner.put_job(&job_id, &mut ops);
            let ack = self.journal.record(ops);
            self.dispatch(&mut inner);
            ack
        };
        ack.durable().await.map_err(Error::Store)
    }

    /// Reads the run's manifest; with `every_file`, also re-reads and checks every file in it.
    pub(super) async fn check_run(
        &self,
        run_uri: &str,
        every_file: bool,
    ) -> Result<artifacts::Manifest, String> {
        let key = self.artifacts.key_of(run_uri).map_err(|e| e.to_string())?;
        let checked = if every_file {
            self.artifacts.verify_run(&key).await
        } else {
            self.artifacts.read_manifest(&key).await
        };
        checked.map_err(|e| e.to_string())
    }
}

impl Inner {
    /// Applies one heartbeat report of a task the worker holds.
    pub(super) fn progress(
        &mut self,
        artifacts: &ArtifactStore,
        session: &str,
        report: &Progress,
        ops: &mut Vec<TxnOp>,
    ) {
        let mut changed = false;
        if let Some(meta) = self.meta.get_mut(&report.task_id)
            && meta.session != session
        {
            meta.session = session.to_owned();
            self.put_task(&report.task_id, ops);
        }
        let job_id = self
            .scheduler
            .task(&report.task_id)
            .expect("held")
            .job_id
            .clone();
        let mut events = Vec::new();
        {
            let job = self.jobs.get_mut(&job_id).expect("exists");
            for (epoch, values) in &report.finished_epochs {
                job.epochs.retain(|(n, _)| n < epoch);
                job.epochs.push((*epoch, values.clone()));
                events.push(event(
                    &job_id,
                    EventKind::Epoch {
                        epoch: *epoch,
                        values: values.clone(),
                    },
                ));
                changed = true;
            }
            if !report.checkpoint.is_empty()
                && report.checkpoint_epoch > job.checkpoint.as_ref().map_or(0, |c| c.epoch)
            {
                if artifacts.key_of(&report.checkpoint).is_ok() {
                    job.checkpoint = Some(Checkpoint {
                        uri: report.checkpoint.clone(),
                        epoch: report.checkpoint_epoch,
                    });
                    changed = true;
                } else {
                    tracing::warn!(
                        checkpoint = %report.checkpoint,
                        "ignoring a checkpoint outside the artifact store"
                    );
                }
            }
        }
        if report.total_batches > 0 {
            events.push(event(
                &job_id,
                EventKind::Progress(BatchProgress {
                    epoch: report.epoch,
                    total_epochs: report.total_epochs,
                    batch: report.batch,
                    total_batches: report.total_batches,
                    images_per_sec: report.images_per_sec,
                }),
            ));
        }
        for e in events {
            self.emit(e);
        }
        if changed {
            self.put_job(&job_id, ops);
        }
    }

    /// A train result lists every epoch; record (and announce) those the heartbeats did not
    /// carry: a short last epoch that ended between two beats, or one whose heartbeat a leader
    /// acknowledged and died before its commit was durable (the worker does not send it again),
    /// which leaves a gap, not only a missing tail.
    pub(super) fn record_epochs(&mut self, job_id: &str, detail_json: &str) {
        #[derive(serde::Deserialize)]
        struct Epoch {
            epoch: u32,
            values: BTreeMap<String, f64>,
        }
        #[derive(serde::Deserialize)]
        struct Detail {
            #[serde(default)]
            epochs: Vec<Epoch>,
        }
        let Ok(detail) = serde_json::from_str::<Detail>(detail_json) else {
            return;
        };
        let job = self.jobs.get_mut(job_id).expect("exists");
        let mut events = Vec::new();
        for e in detail.epochs {
            if job.epochs.iter().any(|(n, _)| *n == e.epoch) {
                continue;
            }
            events.push(event(
                job_id,
                EventKind::Epoch {
                    epoch: e.epoch,
                    values: e.values.clone(),
                },
            ));
            job.epochs.push((e.epoch, e.values));
        }
        job.epochs.sort_by_key(|(n, _)| *n);
        for e in events {
            self.emit(e);
        }
    }

    pub(super) fn close_attempt(&mut self, job_id: &str, outcome: &str) {
        if let Some(last) = self
            .jobs
            .get_mut(job_id)
            .and_then(|j| j.attempts.last_mut())
            .filter(|a| a.finished_at.is_none())
        {
            last.outcome = outcome.to_owned();
            last.finished_at = Some(SystemTime::now());
        }
    }

    /// Brings a job in line with its task after the task was requeued, failed or cancelled.
    pub(super) fn after_task_change(&mut self, task_id: &str, outcome: &str, ops: &mut Vec<TxnOp>) {
        let Some(task) = self.scheduler.task(task_id).cloned() else {
            return;
        };
        let job_id = task.job_id.clone();
        self.close_attempt(&job_id, outcome);
        match task.state {
            TaskState::Queued => {
                let job = self.jobs.get_mut(&job_id).expect("exists");
                job.state = JobState::Queued;
                job.worker_id.clear();
                self.emit(event(&job_id, EventKind::State(JobState::Queued)));
            }
            TaskState::Failed { reason } => self.finish(&job_id, JobState::Failed, reason, ops),
            TaskState::Cancelled => {
                let reason = self.jobs[&job_id]
                    .error
                    .split(" (waiting for worker")
                    .next()
                    .filter(|r| !r.is_empty())
                    .unwrap_or("cancelled")
                    .to_owned();
                self.finish(&job_id, JobState::Cancelled, reason, ops);
            }
            TaskState::Leased { .. } | TaskState::Succeeded => {}
        }
        self.put_task(task_id, ops);
        self.put_job(&job_id, ops);
    }

    pub(super) fn finish(
        &mut self,
        job_id: &str,
        state: JobState,
        error: String,
        ops: &mut Vec<TxnOp>,
    ) {
        self.retrain_ended(job_id, state == JobState::Succeeded, ops);
        let job = self.jobs.get_mut(job_id).expect("exists");
        job.state = state;
        job.error = error;
        job.finished_at = Some(SystemTime::now());
        job.worker_id.clear();
        job.active_task.clear();
        tracing::info!(%job_id, ?state, error = %job.error, "job ended");
        let in_sweep = job.sweep.is_some();
        if self.watchers.contains_key(job_id) {
            let ended = Box::new(JobView::live(job.clone()));
            self.emit(event(job_id, EventKind::State(state)));
            self.emit(event(job_id, EventKind::Finished(ended)));
            self.watchers.remove(job_id);
        }
        if in_sweep {
            self.sweep_job_ended(job_id, state, ops);
        }
    }
}
