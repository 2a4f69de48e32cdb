//! Jobs as users see them: submit (idempotent), get, list, cancel and watch, and the records
//! every job creation writes.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use tokio::sync::broadcast;
use trainfleet_core::job::JobSpec;
use trainfleet_core::kv::TxnOp;

use crate::error::{Error, Result};
use crate::events::JobEvent;
use crate::records;
use crate::records::{JobKind, JobRecord, JobState, JobView, TaskRecord, TaskRole};
use crate::scheduler::{Needs, TaskState};

use super::{Control, Inner, Submission, WATCH_BUFFER, new_job_id, no_dataset, no_job, retrain};

/// A job about to be created.
pub(super) struct NewJob {
    pub(super) name: String,
    pub(super) kind: JobKind,
    pub(super) role: TaskRole,
    pub(super) needs: Needs,
    pub(super) max_attempts: u32,
    pub(super) idempotency_key: String,
    pub(super) retrain: Option<records::RetrainOrigin>,
    pub(super) owner: String,
    pub(super) sweep: Option<records::SweepLink>,
}

impl NewJob {
    pub(super) fn train(spec: JobSpec, retrain: Option<records::RetrainOrigin>) -> Self {
        NewJob {
            name: spec.name.clone(),
            role: TaskRole::Train,
            needs: Needs {
                gpu: spec.needs_gpu(),
                min_memory_bytes: spec.resources.min_memory_mb << 20,
                slots: spec.resources.slots,
            },
            max_attempts: spec.max_attempts,
            kind: JobKind::Train {
                spec: Box::new(spec),
            },
            idempotency_key: String::new(),
            retrain,
            owner: String::new(),
            sweep: None,
        }
    }

    pub(super) fn scan(dataset: String, full: bool, scheduled: bool) -> Self {
        NewJob {
            name: format!("scan {dataset}"),
            kind: JobKind::Scan {
                dataset,
                full,
                scheduled,
            },
            role: TaskRole::Scan,
            needs: Needs {
                slots: 1,
                ..Default::default()
            },
            max_attempts: 3,
            idempotency_key: String::new(),
            retrain: None,
            owner: String::new(),
            sweep: None,
        }
    }
}

impl Control {
    /// Queues a job (or returns the earlier job with the same idempotency key).
    pub async fn submit(&self, submission: Submission, idempotency_key: String) -> Result<JobView> {
        self.submit_by(submission, idempotency_key, String::new())
            .await
    }

    /// Like [`Control::submit`], recording who submitted it (`owner`: a token's name).
    pub async fn submit_by(
        &self,
        submission: Submission,
        idempotency_key: String,
        owner: String,
    ) -> Result<JobView> {
        let now = SystemTime::now();
        let (job, ack) = {
            let mut inner = self.lock();
            if !idempotency_key.is_empty()
                && let Some(existing) = inner.idempotency.get(&idempotency_key)
            {
                return Ok(JobView::live(inner.jobs[existing].clone()));
            }
            let new = match submission {
                Submission::Train(mut spec) => {
                    if spec.names_registered_dataset() {
                        retrain::resolve_registered(&inner.datasets, &mut spec)?;
                    }
                    NewJob::train(*spec, None)
                }
                Submission::Sleep { name, duration } => NewJob {
                    name: if name.is_empty() {
                        "sleep".into()
                    } else {
                        name
                    },
                    kind: JobKind::Sleep { duration },
                    role: TaskRole::Sleep,
                    needs: Needs {
                        slots: 1,
                        ..Default::default()
                    },
                    max_attempts: 1,
                    idempotency_key: String::new(),
                    retrain: None,
                    owner: String::new(),
                    sweep: None,
                },
                Submission::Scan { dataset, full } => {
                    if !inner.datasets.contains_key(&dataset) {
                        return Err(no_dataset(&dataset));
                    }
                    NewJob::scan(dataset, full, false)
                }
            };
            let mut ops = Vec::new();
            let id = inner.create_job(
                NewJob {
                    idempotency_key,
                    owner,
                    ..new
                },
                now,
                &mut ops,
            );
            let view = JobView::live(inner.jobs[&id].clone());
            let ack = self.journal.record(ops);
            self.dispatch(&mut inner);
            (view, ack)
        };
        ack.durable().await.map_err(Error::Store)?;
        tracing::info!(job_id = %job.record.id, "job queued");
        Ok(job)
    }

    /// One job, from the store or else from the archive.
    pub async fn get(&self, id: &str) -> Result<JobView> {
        if let Some(job) = self.lock().jobs.get(id) {
            return Ok(JobView::live(job.clone()));
        }
        self.archived(id).await?.ok_or_else(|| no_job(id))
    }

    /// A job from the archive. A job archived between the caller's look at the store and this
    /// read is found here; one archived and then read from the store again is the store's.
    async fn archived(&self, id: &str) -> Result<Option<JobView>> {
        Ok(self.archive.get(id).await?.map(|a| JobView {
            record: a.job,
            archived_at: Some(a.archived_at),
        }))
    }

    /// Jobs newest first, filtered by state, one page after `page_token` (the last id of the
    /// page before): those in the store and archived ones, merged by id (submission time).
    pub async fn list(
        &self,
        states: &[JobState],
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<JobView>, String)> {
        // One more than a page tells whether another page follows.
        let (live, newest_archived) = {
            let inner = self.lock();
            let upper = if page_token.is_empty() {
                std::ops::Bound::Unbounded
            } else {
                std::ops::Bound::Excluded(page_token.to_owned())
            };
            let live: Vec<JobRecord> = inner
                .jobs
                .range::<String, _>((std::ops::Bound::Unbounded, upper))
                .rev()
                .map(|(_, job)| job)
                .filter(|job| states.is_empty() || states.contains(&job.state))
                .take(page_size + 1)
                .cloned()
                .collect();
            (live, inner.newest_archived.clone())
        };
        let newest_archived = match newest_archived {
            Some(known) => known,
            None => {
                let newest = self.archive.newest().await?;
                self.lock().newest_archived = Some(newest.clone());
                newest
            }
        };
        // The archive matters only if it holds jobs newer than the page's last live job.
        let full_page_above_archive = live.len() > page_size
            && newest_archived
                .as_deref()
                .is_none_or(|newest| newest < live[page_size - 1].id.as_str());
        let archived_ids = match newest_archived {
            Some(_) if !full_page_above_archive => {
                self.archive.ids(states, page_token, page_size + 1).await?
            }
            _ => Vec::new(),
        };
        // Merge both newest-first lists; a job in both (archived, not yet let go) is the store's.
        let mut merged: Vec<(String, Option<JobRecord>)> =
            live.into_iter().map(|j| (j.id.clone(), Some(j))).collect();
        for id in archived_ids {
            if !merged.iter().any(|(m, _)| *m == id) {
                merged.push((id, None));
            }
        }
        merged.sort_by(|a, b| b.0.cmp(&a.0));
        let more = merged.len() > page_size;
        merged.truncate(page_size);
        let wanted: Vec<String> = merged
            .iter()
            .filter(|(_, live)| live.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        let mut from_archive: HashMap<String, JobView> = self
            .archive
            .get_all(&wanted)
            .await?
            .into_iter()
            .map(|a| {
                (
                    a.job.id.clone(),
                    JobView {
                        record: a.job,
                        archived_at: Some(a.archived_at),
                    },
                )
            })
            .collect();
        let page: Vec<JobView> = merged
            .into_iter()
            .filter_map(|(id, live)| match live {
                Some(job) => Some(JobView::live(job)),
                None => from_archive.remove(&id),
            })
            .collect();
        let next = match (more, page.last()) {
            (true, Some(last)) => last.record.id.clone(),
            _ => String::new(),
        };
        Ok((page, next))
    }

    /// Cancels a job: a queued task at once; a running one through its worker's next heartbeat.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<JobView> {
        let reason = if reason.is_empty() {
            "cancelled by request".to_owned()
        } else {
            format!("cancelled: {reason}")
        };
        let found = self.lock().jobs.contains_key(id);
        if !found {
            return Err(match self.archived(id).await? {
                Some(job) => Error::FailedPrecondition(format!(
                    "job `{id}` already ended ({:?}) and is archived; there is nothing to cancel",
                    job.record.state
                )),
                None => no_job(id),
            });
        }
        let (job, ack) = {
            let mut inner = self.lock();
            // Archived since the look above: it had ended, so there is nothing to cancel.
            let job = inner.jobs.get(id).ok_or_else(|| {
                Error::FailedPrecondition(format!("job `{id}` already ended and was archived"))
            })?;
            if job.state.is_final() {
                return Err(Error::FailedPrecondition(format!(
                    "job `{id}` already ended ({:?}); there is nothing to cancel",
                    job.state
                )));
            }
            let mut ops = Vec::new();
            inner.cancel_job(id, reason, &mut ops);
            (
                JobView::live(inner.jobs[id].clone()),
                self.journal.record(ops),
            )
        };
        ack.durable().await.map_err(Error::Store)?;
        Ok(job)
    }

    /// The job now and, unless it is over, a receiver of its events from now on.
    pub async fn watch(
        &self,
        id: &str,
    ) -> Result<(JobView, Option<broadcast::Receiver<JobEvent>>)> {
        {
            let mut inner = self.lock();
            if let Some(job) = inner.jobs.get(id) {
                let view = JobView::live(job.clone());
                if job.state.is_final() {
                    return Ok((view, None));
                }
                let rx = inner
                    .watchers
                    .entry(id.to_owned())
                    .or_insert_with(|| broadcast::channel(WATCH_BUFFER).0)
                    .subscribe();
                return Ok((view, Some(rx)));
            }
        }
        // Archived jobs are over: the answer is the job as it ended.
        let job = self.archived(id).await?.ok_or_else(|| no_job(id))?;
        Ok((job, None))
    }
}

impl Inner {
    /// Creates a job and queues its first task; returns its id.
    pub(super) fn create_job(
        &mut self,
        new: NewJob,
        now: SystemTime,
        ops: &mut Vec<TxnOp>,
    ) -> String {
        let (role, needs, max_attempts) = (new.role, new.needs, new.max_attempts);
        let id = self.insert_job(new, now);
        let task_id = self.jobs[&id].active_task.clone();
        self.enqueue(&task_id, &id, role, needs, max_attempts, ops);
        self.put_job(&id, ops);
        id
    }

    /// Creates a job's record without queuing anything (its caller queues the first task).
    pub(super) fn insert_job(&mut self, new: NewJob, now: SystemTime) -> String {
        let id = new_job_id(now);
        let task_id = format!("{id}-{}", new.role.name());
        let job = JobRecord {
            id: id.clone(),
            name: new.name,
            kind: new.kind,
            state: JobState::Queued,
            attempt: 0,
            worker_id: String::new(),
            epochs: Vec::new(),
            result: None,
            error: String::new(),
            created_at: now,
            started_at: None,
            finished_at: None,
            idempotency_key: new.idempotency_key.clone(),
            attempts: Vec::new(),
            checkpoint: None,
            train_run: None,
            train_metrics: BTreeMap::new(),
            champion_id: String::new(),
            active_task: task_id.clone(),
            eval_rounds: 0,
            scanned: None,
            owner: new.owner,
            retrain: new.retrain,
            run: None,
            sweep: new.sweep,
        };
        if !new.idempotency_key.is_empty() {
            self.idempotency.insert(new.idempotency_key, id.clone());
        }
        self.jobs.insert(id.clone(), job);
        id
    }

    /// Cancels a job that has not ended: a queued task at once, a leased one through its
    /// worker's next heartbeat.
    pub(super) fn cancel_job(&mut self, id: &str, reason: String, ops: &mut Vec<TxnOp>) {
        let task_id = self.jobs[id].active_task.clone();
        let state = self.scheduler.cancel(&task_id).cloned();
        self.put_task(&task_id, ops);
        match state {
            Some(TaskState::Leased { worker_id }) => {
                tracing::info!(job_id = %id, %worker_id, "cancel requested; telling the worker");
                let job = self.jobs.get_mut(id).expect("checked");
                job.error = format!("{reason} (waiting for worker {worker_id} to stop)");
            }
            _ => self.finish(id, JobState::Cancelled, reason, ops),
        }
        self.put_job(id, ops);
    }

    pub(super) fn emit(&mut self, (job_id, ev): (String, JobEvent)) {
        if let Some(tx) = self.watchers.get(&job_id)
            && tx.send(ev).is_err()
        {
            self.watchers.remove(&job_id);
        }
    }

    pub(super) fn put_job(&self, id: &str, ops: &mut Vec<TxnOp>) {
        if let Some(job) = self.jobs.get(id) {
            ops.push(TxnOp::Put(records::job_key(id), records::encode(job)));
        }
    }

    pub(super) fn put_task(&self, id: &str, ops: &mut Vec<TxnOp>) {
        if let (Some(task), Some(meta)) = (self.scheduler.task(id), self.meta.get(id)) {
            let record = TaskRecord {
                task: task.clone(),
                meta: meta.clone(),
            };
            ops.push(TxnOp::Put(records::task_key(id), records::encode(&record)));
        }
    }
}
