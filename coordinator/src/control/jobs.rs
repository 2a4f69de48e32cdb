//! Jobs as users see them: submit (idempotent), get, list, cancel and watch, and the records
//! every job creation writes.

use std::collections::BTreeMap;
use std::time::SystemTime;

use tokio::sync::broadcast;
use trainfleet_core::job::JobSpec;
use trainfleet_core::kv::TxnOp;
use trainfleet_proto::v1;

use crate::error::{Error, Result};
use crate::records;
use crate::records::{JobKind, JobRecord, JobState, TaskRecord, TaskRole};
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
        }
    }
}

impl Control {
    /// Queues a job (or returns the earlier job with the same idempotency key).
    pub async fn submit(&self, submission: Submission, idempotency_key: String) -> Result<v1::Job> {
        let now = SystemTime::now();
        let (job, ack) = {
            let mut inner = self.lock();
            if !idempotency_key.is_empty()
                && let Some(existing) = inner.idempotency.get(&idempotency_key)
            {
                let job = inner.jobs[existing].to_wire();
                return Ok(job);
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
                    ..new
                },
                now,
                &mut ops,
            );
            let wire = inner.jobs[&id].to_wire();
            let ack = self.journal.record(ops);
            self.dispatch(&mut inner);
            (wire, ack)
        };
        ack.durable().await.map_err(Error::Store)?;
        tracing::info!(job_id = %job.id, "job queued");
        Ok(job)
    }

    /// One job.
    pub fn get(&self, id: &str) -> Result<v1::Job> {
        self.lock()
            .jobs
            .get(id)
            .map(JobRecord::to_wire)
            .ok_or_else(|| no_job(id))
    }

    /// Jobs newest first, filtered by state, one page after `page_token`.
    pub fn list(
        &self,
        states: &[JobState],
        page_size: usize,
        page_token: &str,
    ) -> (Vec<v1::Job>, String) {
        let inner = self.lock();
        let upper = if page_token.is_empty() {
            std::ops::Bound::Unbounded
        } else {
            std::ops::Bound::Excluded(page_token.to_owned())
        };
        let mut matching = inner
            .jobs
            .range::<String, _>((std::ops::Bound::Unbounded, upper))
            .rev()
            .map(|(_, job)| job)
            .filter(|job| states.is_empty() || states.contains(&job.state));
        let page: Vec<v1::Job> = matching
            .by_ref()
            .take(page_size)
            .map(JobRecord::to_wire)
            .collect();
        let next = match (matching.next(), page.last()) {
            (Some(_), Some(last)) => last.id.clone(),
            _ => String::new(),
        };
        (page, next)
    }

    /// Cancels a job: a queued task at once; a running one through its worker's next heartbeat.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<v1::Job> {
        let reason = if reason.is_empty() {
            "cancelled by request".to_owned()
        } else {
            format!("cancelled: {reason}")
        };
        let (job, ack) = {
            let mut inner = self.lock();
            let job = inner.jobs.get(id).ok_or_else(|| no_job(id))?;
            if job.state.is_final() {
                return Err(Error::FailedPrecondition(format!(
                    "job `{id}` already ended ({:?}); there is nothing to cancel",
                    job.state
                )));
            }
            let task_id = job.active_task.clone();
            let mut ops = Vec::new();
            let state = inner.scheduler.cancel(&task_id).cloned();
            inner.put_task(&task_id, &mut ops);
            match state {
                Some(TaskState::Leased { worker_id }) => {
                    tracing::info!(job_id = %id, %worker_id, "cancel requested; telling the worker");
                    let job = inner.jobs.get_mut(id).expect("checked");
                    job.error = format!("{reason} (waiting for worker {worker_id} to stop)");
                }
                _ => inner.finish(id, JobState::Cancelled, reason, &mut ops),
            }
            inner.put_job(id, &mut ops);
            (inner.jobs[id].to_wire(), self.journal.record(ops))
        };
        ack.durable().await.map_err(Error::Store)?;
        Ok(job)
    }

    /// The job now and, unless it is over, a receiver of its events from now on.
    pub fn watch(&self, id: &str) -> Result<(v1::Job, Option<broadcast::Receiver<v1::JobEvent>>)> {
        let mut inner = self.lock();
        let job = inner.jobs.get(id).ok_or_else(|| no_job(id))?;
        let wire = job.to_wire();
        if job.state.is_final() {
            return Ok((wire, None));
        }
        let rx = inner
            .watchers
            .entry(id.to_owned())
            .or_insert_with(|| broadcast::channel(WATCH_BUFFER).0)
            .subscribe();
        Ok((wire, Some(rx)))
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
            retrain: new.retrain,
            run: None,
        };
        if !new.idempotency_key.is_empty() {
            self.idempotency.insert(new.idempotency_key, id.clone());
        }
        self.jobs.insert(id.clone(), job);
        self.enqueue(&task_id, &id, new.role, new.needs, new.max_attempts, ops);
        self.put_job(&id, ops);
        id
    }

    pub(super) fn emit(&mut self, (job_id, ev): (String, v1::JobEvent)) {
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
