//! Retention: finished jobs past `retention` leave memory and the state store for the archive
//! ([`crate::archive`]), with the tasks they ran and the model they trained (unless it is a
//! champion or one before it), so a busy cluster's etcd use and a new leader's load time stay
//! bounded.
//!
//! One pass ([`Control::archive_finished`]) moves a batch in three steps:
//!
//! 1. under the lock, pick finished jobs that are neither among the newest
//!    `retention.finished_jobs` nor younger than `retention.finished_age`, and not protected
//!    (a champion's job and its lineage, a pending retrain, a dataset's scheduled scan), and copy
//!    them with their tasks;
//! 2. without the lock, write each copy to the archive;
//! 3. under the lock, drop each archived job that has not changed since its copy, and journal
//!    the deletes of its keys (fenced like every other write of this leader).
//!
//! A crash before step 3 is durable leaves the job in both places: the store's copy wins, and a
//! later pass archives it again. A job is never in neither. Finished sweeps go the same way
//! ([`sweeps`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use trainfleet_core::config::RetentionConfig;
use trainfleet_core::kv::TxnOp;

use crate::archive::ArchivedJob;
use crate::error::{Error, Result};
use crate::records::{self, ModelRecord, TaskRecord};

use super::{Control, Inner};

/// Most jobs moved by one batch of a pass.
const BATCH: usize = 512;
/// `TRAINFLEET_CRASH_AT=archive-written` aborts the process after a batch is in the archive and
/// before the store lets go of it: the crash the tests make to show that nothing is lost.
const CRASH_AT: &str = "TRAINFLEET_CRASH_AT";

impl Inner {
    /// Jobs that stay in the store whatever their age: each champion's job and those of the
    /// champions before it, pending retrains, and scheduled scans in flight.
    fn protected_jobs(&self) -> HashSet<String> {
        let mut keep = HashSet::new();
        for champion in self.champions.values() {
            for model_id in std::iter::once(&champion.model_id).chain(&champion.previous) {
                if let Some(model) = self.models.get(model_id) {
                    keep.insert(model.job_id.clone());
                }
            }
        }
        for dataset in self.datasets.values() {
            if let Some(pending) = &dataset.retrain.pending {
                keep.insert(pending.job_id.clone());
            }
            if !dataset.retrain.scheduled_scan.is_empty() {
                keep.insert(dataset.retrain.scheduled_scan.clone());
            }
        }
        keep
    }

    /// Step 1: copies of at most `limit` jobs due for the archive, oldest finish first.
    fn due_for_archive(
        &self,
        policy: &RetentionConfig,
        now: SystemTime,
        limit: usize,
    ) -> Vec<ArchivedJob> {
        let protected = self.protected_jobs();
        let mut finished: Vec<(SystemTime, &str)> = self
            .jobs
            .values()
            .filter(|j| j.state.is_final())
            .map(|j| (j.finished_at.unwrap_or(j.created_at), j.id.as_str()))
            .collect();
        // Newest finish first: the first `finished_jobs` are kept.
        finished.sort_unstable_by(|a, b| b.cmp(a));
        finished
            .iter()
            .enumerate()
            .filter(|(rank, (at, _))| {
                *rank >= policy.finished_jobs
                    || now.duration_since(*at).unwrap_or_default() > policy.finished_age
            })
            .map(|(_, (_, id))| *id)
            .filter(|id| !protected.contains(*id))
            .rev()
            .filter_map(|id| self.archive_copy(id, now))
            .take(limit)
            .collect()
    }

    /// A job with its tasks, or `None` while any of its tasks is still queued or leased.
    fn archive_copy(&self, id: &str, now: SystemTime) -> Option<ArchivedJob> {
        let job = self.jobs.get(id)?;
        let mut tasks = Vec::new();
        for task in self.scheduler.tasks_of(id) {
            if !task_is_final(task) {
                return None;
            }
            if let Some(meta) = self.meta.get(&task.id) {
                tasks.push(TaskRecord {
                    task: task.clone(),
                    meta: meta.clone(),
                });
            }
        }
        Some(ArchivedJob {
            job: job.clone(),
            tasks,
            model: self.model_of(id).cloned(),
            archived_at: now,
        })
    }

    /// The model job `id` trained, if it is in the registry. The job of a champion (or of one
    /// before it) is never archived, so neither is its model.
    fn model_of(&self, id: &str) -> Option<&ModelRecord> {
        let model_id = format!("m-{}", id.strip_prefix("j-")?);
        self.models.get(&model_id).filter(|m| m.job_id == id)
    }

    /// Step 3 for one job: forgets it if it is as copied; journals the deletes into `ops`.
    fn release_archived(&mut self, archived: &ArchivedJob, ops: &mut Vec<TxnOp>) -> bool {
        let id = &archived.job.id;
        if self.jobs.get(id) != Some(&archived.job) || self.model_of(id) != archived.model.as_ref()
        {
            return false;
        }
        let task_ids: Vec<String> = self
            .scheduler
            .tasks_of(id)
            .into_iter()
            .map(|t| t.id.clone())
            .collect();
        if task_ids.iter().any(|t| {
            self.scheduler
                .task(t)
                .is_some_and(|task| !task_is_final(task))
        }) {
            return false;
        }
        for task_id in task_ids {
            self.scheduler.forget(&task_id);
            self.meta.remove(&task_id);
            ops.push(TxnOp::Delete(records::task_key(&task_id)));
        }
        if let Some(model) = &archived.model {
            self.models.remove(&model.id);
            ops.push(TxnOp::Delete(records::model_key(&model.id)));
        }
        let job = self.jobs.remove(id).expect("compared above");
        if self.idempotency.get(&job.idempotency_key) == Some(id) {
            self.idempotency.remove(&job.idempotency_key);
        }
        self.watchers.remove(id);
        ops.push(TxnOp::Delete(records::job_key(id)));
        true
    }
}

fn task_is_final(task: &crate::scheduler::Task) -> bool {
    use crate::scheduler::TaskState;
    !matches!(task.state, TaskState::Queued | TaskState::Leased { .. })
}

impl Control {
    /// Moves every job due for the archive there, a batch at a time; returns how many moved. A
    /// job whose archive write fails stays in the store (and is tried again next pass).
    pub async fn archive_finished(&self, policy: &RetentionConfig) -> Result<usize> {
        let mut moved = 0;
        loop {
            let due = self
                .lock()
                .due_for_archive(policy, SystemTime::now(), BATCH);
            if due.is_empty() {
                return Ok(moved);
            }
            let written = self.archive.put_all(&due).await;
            let mut failed = 0;
            for (job, result) in due.iter().zip(&written) {
                if let Err(e) = result {
                    failed += 1;
                    tracing::warn!(job_id = %job.job.id, error = %e, "cannot archive a job; it stays in the store");
                }
            }
            if std::env::var(CRASH_AT).is_ok_and(|v| v == "archive-written") {
                tracing::error!("{CRASH_AT}=archive-written: aborting between archive and store");
                std::process::abort();
            }
            let (released, ack) = {
                let mut inner = self.lock();
                let mut ops = Vec::new();
                let mut released = 0;
                for (job, result) in due.iter().zip(&written) {
                    if result.is_ok() && inner.release_archived(job, &mut ops) {
                        released += 1;
                        let newer = inner
                            .newest_archived
                            .as_ref()
                            .is_none_or(|n| n.as_deref() < Some(job.job.id.as_str()));
                        if newer {
                            inner.newest_archived = Some(Some(job.job.id.clone()));
                        }
                    }
                }
                (released, self.journal.record(ops))
            };
            ack.durable().await.map_err(Error::Store)?;
            moved += released;
            tracing::info!(
                archived = released,
                failed,
                "finished jobs moved to the archive"
            );
            if failed == due.len() || released == 0 {
                // Nothing moved this batch (the archive is failing, or every job changed):
                // leave the rest to the next pass rather than spin.
                return Ok(moved);
            }
        }
    }
}

/// Runs the archiver until `shutdown`: a pass at once (a new leader may inherit a backlog),
/// then one every `policy.interval`.
pub async fn run_archiver(
    control: Arc<Control>,
    policy: RetentionConfig,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(policy.interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = control.archive_finished(&policy).await {
                    tracing::warn!(error = %e, "archiving finished jobs failed; retrying next pass");
                }
                if let Err(e) = control.archive_finished_sweeps(&policy).await {
                    tracing::warn!(error = %e, "archiving finished sweeps failed; retrying next pass");
                }
            }
        }
    }
}

mod sweeps;
#[cfg(test)]
mod tests;
