//! Handing tasks to workers: the queue, long-polls, dispatch, heartbeats, lost workers, and
//! what a lease changes in a job.

use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use trainfleet_core::kv::TxnOp;

use crate::dispatch::{
    Assignment, Directive, DirectiveKind, EvalInputs, QueueView, QueuedTask, ScanInputs,
};
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::records;
use crate::records::{AttemptRecord, JobKind, JobState, TaskMeta, TaskRole};
use crate::requests::Progress;
use crate::scheduler::{Needs, TaskState};

use super::{Assigned, Control, Inner, Waiter, event, retrain};

impl Control {
    /// The queue (oldest first) and the leased tasks, for operators.
    pub fn queue(&self) -> QueueView {
        let inner = self.lock();
        let (queued, leased) = inner.scheduler.snapshot();
        let view = |t: &crate::scheduler::Task| QueuedTask {
            task_id: t.id.clone(),
            job_id: t.job_id.clone(),
            role: inner.meta.get(&t.id).map(|m| m.role),
            attempt: t.attempt,
            worker_id: match &t.state {
                TaskState::Leased { worker_id } => worker_id.clone(),
                _ => String::new(),
            },
            enqueued_at: t.enqueued_at,
        };
        QueueView {
            queued: queued.into_iter().map(view).collect(),
            running: leased.into_iter().map(view).collect(),
        }
    }

    /// Records a worker's registration (its last known state survives a restart).
    pub fn worker_registered(&self, worker_id: &str) {
        if let Some(snapshot) = self.registry.get(worker_id) {
            let _ = self.journal.record(vec![TxnOp::Put(
                records::worker_key(worker_id),
                records::encode(&snapshot),
            )]);
        }
    }

    /// Long-poll: a task for this worker now, or when one is queued, or `None` after `wait`.
    pub async fn poll(
        &self,
        worker_id: &str,
        session: &str,
        free_slots: u32,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Option<Assignment>> {
        let devices = self.registry.session_devices(worker_id, session)?;
        let deadline = tokio::time::Instant::now() + wait;
        let parked = {
            let mut inner = self.lock();
            match inner.scheduler.assign(worker_id, &devices, free_slots) {
                Some(lease) => {
                    let mut ops = Vec::new();
                    let task = inner.leased(&lease.task_id, worker_id, session, &mut ops);
                    Err(Assigned {
                        task,
                        ack: self.journal.record(ops),
                    })
                }
                None => {
                    let (tx, rx) = oneshot::channel();
                    inner.waiters.push_back(Waiter {
                        worker_id: worker_id.to_owned(),
                        session: session.to_owned(),
                        devices,
                        free_slots,
                        tx,
                    });
                    Ok(rx)
                }
            }
        };
        let mut rx = match parked {
            Ok(rx) => rx,
            Err(Assigned { task, ack }) => {
                ack.durable().await.map_err(Error::Store)?;
                return Ok(Some(task));
            }
        };
        let assigned = tokio::select! {
            r = &mut rx => r.ok(),
            _ = tokio::time::sleep_until(deadline) => None,
            _ = shutdown.cancelled() => None,
        };
        // A task sent as the wait ended is still ours: take it rather than strand its lease.
        let assigned = assigned.or_else(|| {
            rx.close();
            rx.try_recv().ok()
        });
        match assigned {
            Some(Assigned { task, ack }) => {
                ack.durable().await.map_err(Error::Store)?;
                Ok(Some(task))
            }
            None if shutdown.is_cancelled() => Err(Error::ShuttingDown),
            None => Ok(None),
        }
    }

    /// Hands queued tasks to parked polls, oldest poll first.
    pub(super) fn dispatch(&self, inner: &mut Inner) {
        let mut i = 0;
        while i < inner.waiters.len() && inner.scheduler.has_queued() {
            if inner.waiters[i].tx.is_closed() {
                inner.waiters.remove(i);
                continue;
            }
            let w = &inner.waiters[i];
            let Some(lease) = inner
                .scheduler
                .assign(&w.worker_id, &w.devices, w.free_slots)
            else {
                i += 1;
                continue;
            };
            let w = inner.waiters.remove(i).expect("index checked");
            let job_id = inner
                .scheduler
                .task(&lease.task_id)
                .expect("leased")
                .job_id
                .clone();
            let saved_job = inner.jobs[&job_id].clone();
            let saved_meta = inner.meta[&lease.task_id].clone();
            let mut ops = Vec::new();
            let task = inner.leased(&lease.task_id, &w.worker_id, &w.session, &mut ops);
            let ack = self.journal.record(ops);
            if w.tx.send(Assigned { task, ack }).is_err() {
                // The poll ended between the check and the send: take the lease back as if it
                // had never been made, and record that too.
                inner.scheduler.unassign(&lease);
                inner.jobs.insert(job_id.clone(), saved_job);
                inner.meta.insert(lease.task_id.clone(), saved_meta);
                let mut ops = Vec::new();
                inner.put_task(&lease.task_id, &mut ops);
                inner.put_job(&job_id, &mut ops);
                let _ = self.journal.record(ops);
            }
        }
    }

    /// A heartbeat's task reports: progress is recorded; tasks the worker no longer holds get
    /// ABANDON; tasks it holds but did not mention after re-registering are requeued; pending
    /// cancels go out as CANCEL.
    pub fn heartbeat(
        &self,
        worker_id: &str,
        session: &str,
        reports: Vec<Progress>,
    ) -> Vec<Directive> {
        let mut inner = self.lock();
        let mut ops = Vec::new();
        let mut directives = Vec::new();
        let now = SystemTime::now();
        for report in &reports {
            if let Err(refused) =
                inner
                    .scheduler
                    .check_holder(worker_id, &report.task_id, report.attempt)
            {
                directives.push(Directive {
                    task_id: report.task_id.clone(),
                    kind: DirectiveKind::Abandon,
                    reason: refused.to_string(),
                });
                continue;
            }
            inner.progress(&self.artifacts, session, report, &mut ops);
        }
        for task_id in inner.scheduler.held_by(worker_id) {
            if reports.iter().any(|r| r.task_id == task_id) {
                continue;
            }
            let meta = &inner.meta[&task_id];
            let why = if meta.session != session {
                Some(format!(
                    "was not running on worker {worker_id} after it registered again"
                ))
            } else if meta
                .leased_at
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > self.lease_timeout)
            {
                Some(format!("never started on worker {worker_id}"))
            } else {
                None
            };
            if let Some(why) = why {
                tracing::warn!(%task_id, %worker_id, %why, "requeueing");
                inner.scheduler.lease_lost(&task_id, &why);
                requeued(&inner, &task_id, "not_running");
                inner.after_task_change(&task_id, &why, &mut ops);
            }
        }
        for task in inner.scheduler.cancel_directives(worker_id) {
            directives.push(Directive {
                task_id: task.id.clone(),
                kind: DirectiveKind::Cancel,
                reason: "the job was cancelled".to_owned(),
            });
        }
        let _ = self.journal.record(ops);
        self.dispatch(&mut inner);
        directives
    }

    /// Requeues (or fails) the tasks of workers declared lost, and records them as lost.
    pub fn workers_lost(&self, worker_ids: &[String]) {
        if worker_ids.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let mut ops = Vec::new();
        for worker_id in worker_ids {
            let why = format!("lost with worker {worker_id}");
            for task_id in inner.scheduler.held_by(worker_id) {
                inner.scheduler.lease_lost(&task_id, &why);
                requeued(&inner, &task_id, "worker_lost");
                inner.after_task_change(&task_id, "worker lost", &mut ops);
                tracing::warn!(%task_id, %worker_id, "task's worker lost; requeued or failed");
            }
            if let Some(snapshot) = self.registry.get(worker_id) {
                ops.push(TxnOp::Put(
                    records::worker_key(worker_id),
                    records::encode(&snapshot),
                ));
            }
        }
        let _ = self.journal.record(ops);
        self.dispatch(&mut inner);
    }
}

impl Inner {
    pub(super) fn enqueue(
        &mut self,
        task_id: &str,
        job_id: &str,
        role: TaskRole,
        needs: Needs,
        max_attempts: u32,
        ops: &mut Vec<TxnOp>,
    ) {
        self.scheduler
            .enqueue(task_id.to_owned(), job_id.to_owned(), needs, max_attempts);
        self.meta.insert(
            task_id.to_owned(),
            TaskMeta {
                role,
                challenger: String::new(),
                champion: String::new(),
                session: String::new(),
                leased_at: None,
                pause_at: 0,
            },
        );
        self.put_task(task_id, ops);
    }

    /// Records a lease on the job and builds what the worker is handed.
    pub(super) fn leased(
        &mut self,
        task_id: &str,
        worker_id: &str,
        session: &str,
        ops: &mut Vec<TxnOp>,
    ) -> Assignment {
        let now = SystemTime::now();
        let task = self.scheduler.task(task_id).expect("leased").clone();
        crate::metrics::get().schedule_to_start.observe(
            now.duration_since(task.enqueued_at)
                .unwrap_or_default()
                .as_secs_f64(),
        );
        let meta = self.meta.get_mut(task_id).expect("every task has meta");
        meta.session = session.to_owned();
        meta.leased_at = Some(now);
        let meta = meta.clone();
        let (dataset_version, previous_version) = match meta.role {
            TaskRole::Eval => self.version_refs(&task.job_id),
            _ => (None, None),
        };
        let job = self
            .jobs
            .get_mut(&task.job_id)
            .expect("every task has a job");
        let previous_state = job.state;
        let resume = match (meta.role, &job.checkpoint) {
            (TaskRole::Train, Some(c)) => Some(c.clone()),
            _ => None,
        };
        job.state = match meta.role {
            TaskRole::Eval => JobState::Evaluating,
            // A sleep or scan job shows TRAINING while its task runs: the job states describe a
            // training job's life, and these have only that one running phase.
            TaskRole::Train | TaskRole::Sleep | TaskRole::Scan => JobState::Training,
        };
        job.attempt = task.attempt;
        job.worker_id = worker_id.to_owned();
        let first_start = job.started_at.is_none();
        job.started_at.get_or_insert(now);
        job.attempts.push(AttemptRecord {
            role: meta.role,
            attempt: task.attempt,
            worker_id: worker_id.to_owned(),
            resumed_from_epoch: resume.as_ref().map_or(0, |c| c.epoch),
            outcome: String::new(),
            started_at: now,
            finished_at: None,
        });
        let champion_id = job.champion_id.clone();
        let (spec_yaml, sleep, scan) = match &job.kind {
            JobKind::Train { spec } => (spec.to_yaml(), None, None),
            JobKind::Sleep { duration } => (String::new(), Some(*duration), None),
            JobKind::Scan { dataset, full, .. } => {
                let record = self.datasets.get(dataset);
                let scan = ScanInputs {
                    dataset: dataset.clone(),
                    directory: record.map(|d| d.directory.clone()).unwrap_or_default(),
                    full: *full,
                    previous_manifest: record
                        .and_then(|d| d.versions.last())
                        .map(|v| v.manifest_uri.clone())
                        .unwrap_or_default(),
                    format: record.map(|d| d.format.clone()).unwrap_or_default(),
                    builtin: record.map(|d| d.builtin.clone()).unwrap_or_default(),
                    object_store_url: record.map(|d| d.url.clone()).unwrap_or_default(),
                    dataset_yaml: record.map(retrain::scan_dataset_yaml).unwrap_or_default(),
                };
                (String::new(), None, Some(scan))
            }
        };
        let eval = (meta.role == TaskRole::Eval).then(|| EvalInputs {
            challenger: meta.challenger.clone(),
            champion: meta.champion.clone(),
            champion_id,
            dataset_version,
            previous_version,
        });
        let assignment = Assignment {
            id: task_id.to_owned(),
            job_id: task.job_id.clone(),
            role: meta.role,
            attempt: task.attempt,
            spec_yaml,
            resume,
            needs: task.needs,
            sleep,
            eval,
            scan,
            pause_at: meta.pause_at,
        };
        let state = job.state;
        let job_id = task.job_id.clone();
        if first_start {
            self.retrain_started(&job_id, now, ops);
        }
        self.put_task(task_id, ops);
        self.put_job(&job_id, ops);
        if state != previous_state {
            self.emit(event(&job_id, EventKind::State(state)));
        }
        assignment
    }
}

/// Counts a retry when `task_id` went back to the queue (rather than failing or being cancelled).
pub(super) fn requeued(inner: &Inner, task_id: &str, reason: &'static str) {
    if inner
        .scheduler
        .task(task_id)
        .is_some_and(|t| t.state == TaskState::Queued)
    {
        crate::metrics::get().retried(reason);
    }
}
