//! Jobs, tasks and models: the coordinator's state machine on top of the [`Scheduler`].
//!
//! All of it lives in memory behind one mutex, with short synchronous critical sections and
//! never an `.await` inside. Every change appends its writes to the [`Journal`] under that same
//! lock (so the store sees changes in the order they happened); callers that must not answer
//! before the change is durable await the journal's acknowledgement after releasing the lock.
//! On start, [`Control::load`] rebuilds everything from the store: a restarted coordinator knows
//! every job, task, model, champion and worker it knew before.
//!
//! A job's life: Submit → train task queued → leased (TRAINING) → the worker's heartbeats carry
//! epochs and checkpoints → train result → eval task queued (challenger vs the dataset's champion
//! on the same split) → leased (EVALUATING) → gate → model recorded, champion pointer moved if it
//! won → SUCCEEDED. A lost worker's task is requeued with attempt + 1 and resumes from the last
//! checkpoint; a stale attempt's report is refused.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;
use trainfleet_core::artifacts::{self, ArtifactStore};
use trainfleet_core::device::Device;
use trainfleet_core::job::JobSpec;
use trainfleet_core::kv::{KvStore, TxnOp};
use trainfleet_proto::v1;
use trainfleet_proto::v1::job_event::Event;

mod retrain;

pub use retrain::{next_scan, retrain_spec, run_ticker};

use crate::convert;
use crate::error::{Error, Result};
use crate::journal::{Ack, Journal};
use crate::records::{
    self, AttemptRecord, ChampionRecord, Checkpoint, DatasetRecord, JobKind, JobOutcome, JobRecord,
    JobState, ModelRecord, TaskMeta, TaskRecord, TaskRole, VersionRecord,
};
use crate::registry::{WorkerRegistry, WorkerSnapshot};
use crate::scheduler::{Needs, Outcome, Refused, Scheduler, TaskState};
use trainfleet_core::gate;

/// Longest sleep a sleep job may ask for.
pub const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// Events buffered per watched job before a slow watcher skips progress events.
const WATCH_BUFFER: usize = 1024;

/// What a user submits.
#[derive(Debug, Clone)]
pub enum Submission {
    /// A validated training job.
    Train(Box<JobSpec>),
    /// A sleep job.
    Sleep {
        /// Human name.
        name: String,
        /// How long.
        duration: Duration,
    },
    /// A scan of a registered dataset.
    Scan {
        /// The dataset.
        dataset: String,
        /// Re-read every file.
        full: bool,
    },
}

/// How a worker says a task ended.
#[derive(Debug, Clone)]
pub enum Report {
    /// It finished with these metrics, artifacts and task-specific JSON.
    Success {
        /// Final metrics.
        metrics: BTreeMap<String, f64>,
        /// Artifact URIs by role.
        artifacts: BTreeMap<String, String>,
        /// Eval details.
        detail_json: String,
    },
    /// It failed.
    Failure {
        /// The worker's message.
        reason: String,
        /// No retry can help.
        permanent: bool,
    },
    /// It stopped on a cancel directive.
    Cancelled,
}

struct Waiter {
    worker_id: String,
    session: String,
    devices: Vec<Device>,
    free_slots: u32,
    tx: oneshot::Sender<Assigned>,
}

struct Assigned {
    task: v1::Task,
    ack: Ack,
}

#[derive(Default)]
struct Inner {
    scheduler: Scheduler,
    jobs: BTreeMap<String, JobRecord>,
    meta: HashMap<String, TaskMeta>,
    models: BTreeMap<String, ModelRecord>,
    champions: HashMap<String, ChampionRecord>,
    datasets: BTreeMap<String, DatasetRecord>,
    idempotency: HashMap<String, String>,
    waiters: VecDeque<Waiter>,
    watchers: HashMap<String, broadcast::Sender<v1::JobEvent>>,
    /// Retrain decisions per dataset, oldest first (at most [`retrain::HISTORY`] each).
    decisions: HashMap<String, VecDeque<records::DecisionRecord>>,
}

/// The coordinator's jobs, tasks and models.
pub struct Control {
    lease_timeout: Duration,
    registry: Arc<WorkerRegistry>,
    artifacts: ArtifactStore,
    journal: Journal,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("artifacts", &self.artifacts.base())
            .finish_non_exhaustive()
    }
}

fn store_error(e: impl std::fmt::Display) -> Error {
    Error::Store(format!("state store: {e}"))
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| {
        store_error(format!(
            "record {} is not readable ({e}); refusing to start on damaged state",
            String::from_utf8_lossy(key)
        ))
    })
}

impl Control {
    /// Loads every record from `store` and starts the journal. `fatal` is cancelled if the store
    /// later fails.
    pub async fn load(
        store: Arc<dyn KvStore>,
        registry: Arc<WorkerRegistry>,
        artifacts: ArtifactStore,
        lease_timeout: Duration,
        fatal: CancellationToken,
    ) -> Result<(Arc<Self>, tokio::task::JoinHandle<()>)> {
        let mut inner = Inner::default();
        let mut tasks = Vec::new();
        let mut champion_revisions = HashMap::new();
        for kv in store
            .prefix(records::ROOT.as_bytes())
            .await
            .map_err(store_error)?
        {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let rest = &key[records::ROOT.len()..];
            match rest.split_once('/').map(|(kind, _)| kind) {
                Some("jobs") => {
                    let job: JobRecord = decode(&kv.key, &kv.value)?;
                    if !job.idempotency_key.is_empty() {
                        inner
                            .idempotency
                            .insert(job.idempotency_key.clone(), job.id.clone());
                    }
                    inner.jobs.insert(job.id.clone(), job);
                }
                Some("tasks") => {
                    let task: TaskRecord = decode(&kv.key, &kv.value)?;
                    inner.meta.insert(task.task.id.clone(), task.meta);
                    tasks.push(task.task);
                }
                Some("models") => {
                    let model: ModelRecord = decode(&kv.key, &kv.value)?;
                    inner.models.insert(model.id.clone(), model);
                }
                Some("champions") => {
                    champion_revisions.insert(kv.key.clone(), kv.mod_revision);
                    let champion: ChampionRecord = decode(&kv.key, &kv.value)?;
                    inner.champions.insert(champion.dataset.clone(), champion);
                }
                Some("datasets") => {
                    let dataset: DatasetRecord = decode(&kv.key, &kv.value)?;
                    inner.datasets.insert(dataset.name.clone(), dataset);
                }
                Some("decisions") => {
                    let d: records::DecisionRecord = decode(&kv.key, &kv.value)?;
                    // Keys sort by sequence number, so each list is built oldest first.
                    inner
                        .decisions
                        .entry(d.dataset.clone())
                        .or_default()
                        .push_back(d);
                }
                Some("workers") => {
                    let worker: WorkerSnapshot = decode(&kv.key, &kv.value)?;
                    registry.restore(worker);
                }
                _ => tracing::warn!(%key, "ignoring an unknown state key"),
            }
        }
        inner.scheduler = Scheduler::restore(tasks);
        let (queued, leased) = inner.scheduler.snapshot();
        tracing::info!(
            jobs = inner.jobs.len(),
            queued = queued.len(),
            leased = leased.len(),
            models = inner.models.len(),
            champions = inner.champions.len(),
            "state restored"
        );
        let guarded = champion_revisions;
        let (journal, handle) = Journal::start(store, fatal, guarded);
        let control = Arc::new(Self {
            lease_timeout,
            registry,
            artifacts,
            journal,
            inner: Mutex::new(inner),
        });
        Ok((control, handle))
    }

    /// The artifact store workers write to.
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.artifacts
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ---------------------------------------------------------------- jobs

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

    // ------------------------------------------------------------ datasets

    /// Registers a dataset, or replaces the source and policy of one with the same name (its
    /// versions stay).
    pub async fn register_dataset(&self, mut record: DatasetRecord) -> Result<v1::Dataset> {
        let (wire, ack) = {
            let mut inner = self.lock();
            if let Some(existing) = inner.datasets.get(&record.name) {
                record.versions = existing.versions.clone();
                record.created_at = existing.created_at;
                record.retrain = existing.retrain.clone();
            }
            record.retrain.next_scan_at = retrain::next_scan(&record, SystemTime::now());
            let ops = vec![TxnOp::Put(
                records::dataset_key(&record.name),
                records::encode(&record),
            )];
            let wire = record.to_wire();
            inner.datasets.insert(record.name.clone(), record);
            (wire, self.journal.record(ops))
        };
        ack.durable().await.map_err(Error::Store)?;
        Ok(wire)
    }

    /// Every registered dataset, by name.
    pub fn datasets(&self) -> Vec<v1::Dataset> {
        self.lock()
            .datasets
            .values()
            .map(DatasetRecord::to_wire)
            .collect()
    }

    /// A dataset's versions, newest first, starting below version number `before` (0: newest).
    pub fn versions(
        &self,
        name: &str,
        page_size: usize,
        before: u64,
    ) -> Result<(Vec<v1::DatasetVersion>, u64)> {
        let inner = self.lock();
        let d = inner.datasets.get(name).ok_or_else(|| no_dataset(name))?;
        let mut matching = d
            .versions
            .iter()
            .rev()
            .filter(|v| before == 0 || v.number < before);
        let page: Vec<_> = matching
            .by_ref()
            .take(page_size)
            .map(|v| v.to_wire(name))
            .collect();
        let next = match (matching.next(), page.last()) {
            (Some(_), Some(last)) => last.number,
            _ => 0,
        };
        Ok((page, next))
    }

    /// One version: by root hash, by number, or "latest".
    pub fn version(&self, name: &str, which: &str) -> Result<v1::DatasetVersion> {
        let inner = self.lock();
        let d = inner.datasets.get(name).ok_or_else(|| no_dataset(name))?;
        let found = match which {
            "" | "latest" => d.versions.last(),
            text => match text.parse::<u64>() {
                Ok(n) => d.versions.iter().find(|v| v.number == n),
                Err(_) => d.versions.iter().find(|v| v.root == text),
            },
        };
        found.map(|v| v.to_wire(name)).ok_or_else(|| {
            Error::NotFound(format!(
                "dataset `{name}` has no version {which:?} ({} recorded)",
                d.versions.len()
            ))
        })
    }

    /// Scans a dataset on a worker that can see it and waits for the result: the version after
    /// the scan and whether it is new. A failed scan records nothing and says why.
    pub async fn scan(
        &self,
        name: &str,
        full: bool,
        shutdown: &CancellationToken,
    ) -> Result<(v1::DatasetVersion, bool)> {
        let job = self
            .submit(
                Submission::Scan {
                    dataset: name.to_owned(),
                    full,
                },
                String::new(),
            )
            .await?;
        let (mut current, rx) = self.watch(&job.id)?;
        if let Some(mut rx) = rx {
            loop {
                let event = tokio::select! {
                    e = rx.recv() => e,
                    _ = shutdown.cancelled() => return Err(Error::ShuttingDown),
                };
                match event {
                    Ok(v1::JobEvent {
                        event: Some(Event::Finished(job)),
                        ..
                    }) => {
                        current = job;
                        break;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        current = self.get(&job.id)?;
                        break;
                    }
                }
            }
        }
        if current.state != v1::JobState::Succeeded as i32 {
            return Err(Error::FailedPrecondition(format!(
                "scan of `{name}` (job {}) failed, no version recorded: {}",
                current.id, current.error
            )));
        }
        let changed = self
            .lock()
            .jobs
            .get(&current.id)
            .and_then(|j| j.scanned)
            .is_some_and(|(_, changed)| changed);
        Ok((self.version(name, "latest")?, changed))
    }

    /// The queue (oldest first) and the leased tasks, for operators.
    pub fn queue(&self) -> v1::GetQueueResponse {
        let inner = self.lock();
        let (queued, leased) = inner.scheduler.snapshot();
        let wire = |t: &crate::scheduler::Task| v1::QueuedTask {
            task_id: t.id.clone(),
            job_id: t.job_id.clone(),
            kind: inner
                .meta
                .get(&t.id)
                .map_or(v1::TaskKind::Unspecified, |m| m.role.kind()) as i32,
            attempt: t.attempt,
            worker_id: match &t.state {
                TaskState::Leased { worker_id } => worker_id.clone(),
                _ => String::new(),
            },
            enqueued_at: Some(convert::timestamp(t.enqueued_at)),
        };
        v1::GetQueueResponse {
            queued: queued.into_iter().map(wire).collect(),
            running: leased.into_iter().map(wire).collect(),
        }
    }

    // ------------------------------------------------------------- workers

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
    ) -> Result<Option<v1::Task>> {
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
    fn dispatch(&self, inner: &mut Inner) {
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
        reports: Vec<v1::TaskProgress>,
    ) -> Vec<v1::Directive> {
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
                directives.push(v1::Directive {
                    task_id: report.task_id.clone(),
                    kind: v1::DirectiveKind::Abandon as i32,
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
                inner.after_task_change(&task_id, &why, &mut ops);
            }
        }
        for task in inner.scheduler.cancel_directives(worker_id) {
            directives.push(v1::Directive {
                task_id: task.id.clone(),
                kind: v1::DirectiveKind::Cancel as i32,
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
                            inner.enqueue_eval(&job_id, &mut ops);
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
                    inner.after_task_change(task_id, &format!("failed: {reason}"), &mut ops);
                }
                Report::Cancelled => {
                    inner
                        .scheduler
                        .complete(worker_id, task_id, attempt, Outcome::Cancelled)
                        .map_err(refused)?;
                    inner.after_task_change(task_id, "cancelled", &mut ops);
                }
            }
            inner.put_task(task_id, &mut ops);
            inner.put_job(&job_id, &mut ops);
            let ack = self.journal.record(ops);
            self.dispatch(&mut inner);
            ack
        };
        ack.durable().await.map_err(Error::Store)
    }

    /// Reads the run's manifest; with `every_file`, also re-reads and checks every file in it.
    async fn check_run(
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

    // -------------------------------------------------------------- models

    /// Models newest first, optionally of one dataset.
    pub fn models(
        &self,
        dataset: &str,
        page_size: usize,
        page_token: &str,
    ) -> (Vec<v1::Model>, String) {
        let inner = self.lock();
        let mut all: Vec<&ModelRecord> = inner
            .models
            .values()
            .filter(|m| dataset.is_empty() || m.dataset == dataset)
            .filter(|m| page_token.is_empty() || m.id.as_str() < page_token)
            .collect();
        all.sort_by(|a, b| b.id.cmp(&a.id));
        let next = if all.len() > page_size {
            all[page_size - 1].id.clone()
        } else {
            String::new()
        };
        let page = all
            .into_iter()
            .take(page_size)
            .map(|m| m.to_wire(inner.is_champion(m)))
            .collect();
        (page, next)
    }

    /// One model.
    pub fn model(&self, id: &str) -> Result<v1::Model> {
        let inner = self.lock();
        let m = inner
            .models
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("model `{id}` does not exist")))?;
        Ok(m.to_wire(inner.is_champion(m)))
    }

    /// A dataset's champion.
    pub fn champion(&self, dataset: &str) -> Result<v1::Model> {
        let inner = self.lock();
        let id = inner
            .champions
            .get(dataset)
            .map(|c| c.model_id.clone())
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "dataset `{dataset}` has no champion yet (no model has passed its gate)"
                ))
            })?;
        Ok(inner.models[&id].to_wire(true))
    }

    /// Makes a model its dataset's champion by hand, after re-verifying its artifacts. With
    /// `expected` the pointer moves only if it still points there (`Some(None)`: no champion
    /// yet): checked and moved under one lock, so of two promotions expecting the same
    /// champion exactly one wins and the other is [`Error::Aborted`].
    pub async fn promote(
        &self,
        id: &str,
        reason: &str,
        expected: Option<Option<&str>>,
    ) -> Result<v1::Model> {
        let run = {
            let inner = self.lock();
            inner
                .models
                .get(id)
                .map(|m| m.run_uri.clone())
                .ok_or_else(|| Error::NotFound(format!("model `{id}` does not exist")))?
        };
        self.check_run(&run, true).await.map_err(|e| {
            Error::FailedPrecondition(format!(
                "model `{id}` cannot be promoted: its artifacts did not verify: {e}"
            ))
        })?;
        let (model, ack) = {
            let mut inner = self.lock();
            let dataset = inner.models[id].dataset.clone();
            inner.check_champion(&dataset, expected)?;
            let mut ops = Vec::new();
            inner.set_champion(
                &dataset,
                id,
                &format!("promoted by hand: {reason}"),
                &mut ops,
            );
            (inner.models[id].to_wire(true), self.journal.record(ops))
        };
        ack.durable().await.map_err(Error::Store)?;
        Ok(model)
    }

    /// Moves a dataset's champion pointer back to the previous champion (with `expected`, only
    /// if it still points there, as in [`Control::promote`]).
    pub async fn rollback(
        &self,
        dataset: &str,
        reason: &str,
        expected: Option<Option<&str>>,
    ) -> Result<v1::Model> {
        let (model, ack) = {
            let mut inner = self.lock();
            inner.check_champion(dataset, expected)?;
            let champion = inner.champions.get_mut(dataset).ok_or_else(|| {
                Error::NotFound(format!("dataset `{dataset}` has no champion to roll back"))
            })?;
            let Some(previous) = champion.previous.pop() else {
                return Err(Error::FailedPrecondition(format!(
                    "dataset `{dataset}` has had only one champion ({}); there is nothing to \
                     roll back to",
                    champion.model_id
                )));
            };
            champion.model_id = previous.clone();
            champion.reason = format!("rolled back: {reason}");
            champion.updated_at = SystemTime::now();
            let ops = vec![TxnOp::Put(
                records::champion_key(dataset),
                records::encode(&*champion),
            )];
            (
                inner.models[&previous].to_wire(true),
                self.journal.record(ops),
            )
        };
        ack.durable().await.map_err(Error::Store)?;
        Ok(model)
    }
}

/// Runs the liveness reaper until `shutdown`: declares silent workers lost and requeues their
/// tasks.
pub async fn run_reaper(
    control: Arc<Control>,
    registry: Arc<WorkerRegistry>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(registry.reap_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let lost = registry.expire();
                for worker_id in &lost {
                    tracing::warn!(%worker_id, "worker missed its heartbeat deadline: marked lost");
                }
                control.workers_lost(&lost);
            }
        }
    }
}

fn no_dataset(name: &str) -> Error {
    Error::NotFound(format!(
        "dataset `{name}` is not registered (DatasetService.Register)"
    ))
}

fn no_job(id: &str) -> Error {
    Error::NotFound(format!("job `{id}` does not exist"))
}

fn refused(r: Refused) -> Error {
    match r {
        Refused::Unknown(_) => Error::NotFound(r.to_string()),
        Refused::NotHeld { .. } => Error::FailedPrecondition(format!(
            "{r}: report refused, nothing changed (a stale attempt's results are never recorded)"
        )),
    }
}

/// A job id that sorts by submission time: `j-` + milliseconds since the epoch (hex) + random.
fn new_job_id(now: SystemTime) -> String {
    let millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("j-{millis:011x}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

fn event(job_id: &str, event: Event) -> (String, v1::JobEvent) {
    (
        job_id.to_owned(),
        v1::JobEvent {
            at: Some(convert::timestamp(SystemTime::now())),
            event: Some(event),
        },
    )
}

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

/// A job about to be created.
struct NewJob {
    name: String,
    kind: JobKind,
    role: TaskRole,
    needs: Needs,
    max_attempts: u32,
    idempotency_key: String,
    retrain: Option<records::RetrainOrigin>,
}

impl NewJob {
    fn train(spec: JobSpec, retrain: Option<records::RetrainOrigin>) -> Self {
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

    fn scan(dataset: String, full: bool, scheduled: bool) -> Self {
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

impl Inner {
    /// Creates a job and queues its first task; returns its id.
    fn create_job(&mut self, new: NewJob, now: SystemTime, ops: &mut Vec<TxnOp>) -> String {
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

    fn emit(&mut self, (job_id, ev): (String, v1::JobEvent)) {
        if let Some(tx) = self.watchers.get(&job_id)
            && tx.send(ev).is_err()
        {
            self.watchers.remove(&job_id);
        }
    }

    fn put_job(&self, id: &str, ops: &mut Vec<TxnOp>) {
        if let Some(job) = self.jobs.get(id) {
            ops.push(TxnOp::Put(records::job_key(id), records::encode(job)));
        }
    }

    fn put_task(&self, id: &str, ops: &mut Vec<TxnOp>) {
        if let (Some(task), Some(meta)) = (self.scheduler.task(id), self.meta.get(id)) {
            let record = TaskRecord {
                task: task.clone(),
                meta: meta.clone(),
            };
            ops.push(TxnOp::Put(records::task_key(id), records::encode(&record)));
        }
    }

    /// The compare half of a compare-and-swap on the champion pointer.
    fn check_champion(&self, dataset: &str, expected: Option<Option<&str>>) -> Result<()> {
        let Some(expected) = expected else {
            return Ok(());
        };
        let current = self.champions.get(dataset).map(|c| c.model_id.as_str());
        if current == expected {
            return Ok(());
        }
        Err(Error::Aborted(format!(
            "the champion of `{dataset}` is {} now, not {} as expected: another promotion \
             moved it first; read it again and decide again",
            current.unwrap_or("none"),
            expected.unwrap_or("none")
        )))
    }

    fn is_champion(&self, m: &ModelRecord) -> bool {
        self.champions
            .get(&m.dataset)
            .is_some_and(|c| c.model_id == m.id)
    }

    fn enqueue(
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
            },
        );
        self.put_task(task_id, ops);
    }

    /// The registered dataset version a job pinned, and the version before it (for reports).
    fn version_refs(&self, job_id: &str) -> (Option<v1::VersionRef>, Option<v1::VersionRef>) {
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
        let wire = |v: &records::VersionRecord| v1::VersionRef {
            number: v.number,
            root: v.root.clone(),
            samples: v.samples,
            skipped_count: v.skipped,
            skipped: v.skipped_wire(),
        };
        let previous = at.checked_sub(1).map(|p| wire(&dataset.versions[p]));
        (Some(wire(&dataset.versions[at])), previous)
    }

    /// Queues the eval task of a job whose training succeeded, against the current champion.
    fn enqueue_eval(&mut self, job_id: &str, ops: &mut Vec<TxnOp>) {
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
        self.emit(event(job_id, Event::State(v1::JobState::Evaluating as i32)));
    }

    /// Records a lease on the job and builds the task message for the worker.
    fn leased(
        &mut self,
        task_id: &str,
        worker_id: &str,
        session: &str,
        ops: &mut Vec<TxnOp>,
    ) -> v1::Task {
        let now = SystemTime::now();
        let task = self.scheduler.task(task_id).expect("leased").clone();
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
            JobKind::Sleep { duration } => {
                (String::new(), Some(convert::duration(*duration)), None)
            }
            JobKind::Scan { dataset, full, .. } => {
                let record = self.datasets.get(dataset);
                let scan = v1::ScanInputs {
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
        let eval = (meta.role == TaskRole::Eval).then(|| v1::EvalInputs {
            challenger: meta.challenger.clone(),
            champion: meta.champion.clone(),
            champion_id,
            dataset_version,
            previous_version,
        });
        let wire = v1::Task {
            id: task_id.to_owned(),
            job_id: task.job_id.clone(),
            kind: meta.role.kind() as i32,
            attempt: task.attempt,
            spec_yaml,
            resume_from: resume.as_ref().map(|c| c.uri.clone()).unwrap_or_default(),
            resources: Some(v1::ResourceRequest {
                gpu: task.needs.gpu,
                min_memory_bytes: task.needs.min_memory_bytes,
                slots: task.needs.slots,
            }),
            sleep,
            eval,
            resume_epoch: resume.map_or(0, |c| c.epoch),
            scan,
        };
        let state = job.state;
        let job_id = task.job_id.clone();
        if first_start {
            self.retrain_started(&job_id, now, ops);
        }
        self.put_task(task_id, ops);
        self.put_job(&job_id, ops);
        if state != previous_state {
            self.emit(event(&job_id, Event::State(state.to_wire() as i32)));
        }
        wire
    }

    /// Applies one heartbeat report of a task the worker holds.
    fn progress(
        &mut self,
        artifacts: &ArtifactStore,
        session: &str,
        report: &v1::TaskProgress,
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
            for epoch in &report.finished_epochs {
                job.epochs.retain(|(n, _)| *n < epoch.epoch);
                job.epochs.push((
                    epoch.epoch,
                    epoch.values.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                ));
                events.push(event(&job_id, Event::Epoch(epoch.clone())));
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
                Event::Progress(v1::BatchProgress {
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
    /// carry, such as a short last epoch that ended between two beats.
    fn record_epochs(&mut self, job_id: &str, detail_json: &str) {
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
        let known = job.epochs.last().map_or(0, |(n, _)| *n);
        let mut events = Vec::new();
        for e in detail.epochs.into_iter().filter(|e| e.epoch > known) {
            events.push(event(
                job_id,
                Event::Epoch(v1::EpochMetrics {
                    epoch: e.epoch,
                    values: e.values.clone().into_iter().collect(),
                }),
            ));
            job.epochs.push((e.epoch, e.values));
        }
        for e in events {
            self.emit(e);
        }
    }

    /// What a finished training run was, from its verified manifest and its result's detail.
    fn run_record(
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

    fn close_attempt(&mut self, job_id: &str, outcome: &str) {
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
    fn after_task_change(&mut self, task_id: &str, outcome: &str, ops: &mut Vec<TxnOp>) {
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
                self.emit(event(&job_id, Event::State(v1::JobState::Queued as i32)));
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

    fn finish(&mut self, job_id: &str, state: JobState, error: String, ops: &mut Vec<TxnOp>) {
        self.retrain_ended(job_id, state == JobState::Succeeded, ops);
        let job = self.jobs.get_mut(job_id).expect("exists");
        job.state = state;
        job.error = error;
        job.finished_at = Some(SystemTime::now());
        job.worker_id.clear();
        job.active_task.clear();
        tracing::info!(%job_id, ?state, error = %job.error, "job ended");
        if self.watchers.contains_key(job_id) {
            let wire = job.to_wire();
            self.emit(event(job_id, Event::State(state.to_wire() as i32)));
            self.emit(event(job_id, Event::Finished(wire)));
            self.watchers.remove(job_id);
        }
    }

    /// An eval finished: apply the gate, record the model, move the champion if it won.
    fn evaluated(
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

    /// A scan finished: record a version if the root changed, and end the job.
    fn scanned(&mut self, job_id: &str, detail_json: &str, ops: &mut Vec<TxnOp>) {
        #[derive(serde::Deserialize)]
        struct ScanDetail {
            root: String,
            samples: u64,
            by_class: BTreeMap<String, u64>,
            by_split: BTreeMap<String, u64>,
            added: u64,
            removed: u64,
            changed: u64,
            manifest_uri: String,
            #[serde(default)]
            skipped: u64,
            #[serde(default)]
            skipped_examples: Vec<(String, String)>,
            #[serde(default)]
            empty_classes: Vec<String>,
        }
        let JobKind::Scan { dataset, .. } = self.jobs[job_id].kind.clone() else {
            return;
        };
        let detail: ScanDetail = match serde_json::from_str(detail_json) {
            Ok(d) => d,
            Err(e) => {
                self.finish(
                    job_id,
                    JobState::Failed,
                    format!("the scan task's result is not readable: {e}"),
                    ops,
                );
                return;
            }
        };
        let Some(record) = self.datasets.get_mut(&dataset) else {
            self.finish(
                job_id,
                JobState::Failed,
                format!("dataset `{dataset}` was removed during the scan"),
                ops,
            );
            return;
        };
        let new = record.versions.last().is_none_or(|v| v.root != detail.root);
        if new {
            let number = record.versions.last().map_or(1, |v| v.number + 1);
            record.versions.push(VersionRecord {
                number,
                root: detail.root,
                samples: detail.samples,
                by_class: detail.by_class,
                by_split: detail.by_split,
                added: detail.added,
                removed: detail.removed,
                changed: detail.changed,
                manifest_uri: detail.manifest_uri,
                created_at: SystemTime::now(),
                skipped: detail.skipped,
                skipped_examples: detail.skipped_examples,
                empty_classes: detail.empty_classes,
            });
            ops.push(TxnOp::Put(
                records::dataset_key(&dataset),
                records::encode(&*record),
            ));
            tracing::info!(%dataset, number, "new dataset version recorded");
        }
        let number = record.versions.last().map_or(0, |v| v.number);
        let job = self.jobs.get_mut(job_id).expect("exists");
        job.scanned = Some((number, new));
        let trigger = match job.kind {
            JobKind::Scan {
                scheduled: true, ..
            } => retrain::Trigger::Schedule,
            _ => retrain::Trigger::Scan,
        };
        self.finish(job_id, JobState::Succeeded, String::new(), ops);
        if new {
            self.consider_retrain(&dataset, number, trigger, "", SystemTime::now(), ops);
        }
    }

    fn set_champion(&mut self, dataset: &str, model_id: &str, reason: &str, ops: &mut Vec<TxnOp>) {
        let now = SystemTime::now();
        let record = match self.champions.remove(dataset) {
            Some(mut c) if c.model_id != model_id => {
                c.previous.push(std::mem::take(&mut c.model_id));
                c.model_id = model_id.to_owned();
                c.reason = reason.to_owned();
                c.updated_at = now;
                c
            }
            Some(c) => c,
            None => ChampionRecord {
                dataset: dataset.to_owned(),
                model_id: model_id.to_owned(),
                previous: Vec::new(),
                reason: reason.to_owned(),
                updated_at: now,
            },
        };
        ops.push(TxnOp::Put(
            records::champion_key(dataset),
            records::encode(&record),
        ));
        tracing::info!(%dataset, %model_id, %reason, "champion moved");
        self.champions.insert(dataset.to_owned(), record);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use trainfleet_core::device::DeviceKind;
    use trainfleet_core::kv::embedded::EmbeddedStore;

    use super::*;
    use crate::registry::Registration;

    pub(super) struct Fixture {
        pub(super) control: Arc<Control>,
        pub(super) registry: Arc<WorkerRegistry>,
        journal: tokio::task::JoinHandle<()>,
    }

    pub(super) async fn open(dir: &std::path::Path) -> Fixture {
        let store = Arc::new(EmbeddedStore::open(&dir.join("state.redb")).unwrap());
        let artifacts = ArtifactStore::open(dir.join("artifacts").to_str().unwrap()).unwrap();
        let registry = Arc::new(WorkerRegistry::new(
            Duration::from_secs(10),
            Duration::from_secs(3600),
        ));
        let (control, journal) = Control::load(
            store,
            registry.clone(),
            artifacts,
            Duration::from_secs(10),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        Fixture {
            control,
            registry,
            journal,
        }
    }

    pub(super) async fn close(f: Fixture) {
        drop(f.control);
        f.journal.await.unwrap();
    }

    pub(super) fn register(f: &Fixture, id: &str) -> String {
        register_with(f, id, DeviceKind::Cpu)
    }

    pub(super) fn register_with(f: &Fixture, id: &str, kind: DeviceKind) -> String {
        let session = f
            .registry
            .register(Registration {
                worker_id: id.into(),
                host: "h".into(),
                devices: vec![Device {
                    kind,
                    index: 0,
                    name: "device".into(),
                    memory_bytes: 1 << 30,
                    cores: 2,
                }],
                slots: 1,
                version: "0".into(),
                libtorch_version: String::new(),
                labels: BTreeMap::new(),
                peer: String::new(),
            })
            .session_id;
        f.control.worker_registered(id);
        session
    }

    fn sleep_job() -> Submission {
        Submission::Sleep {
            name: "nap".into(),
            duration: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn a_lost_workers_task_moves_on_stale_reports_are_refused_and_state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let f = open(dir.path()).await;
        let never = CancellationToken::new();
        let job = f.control.submit(sleep_job(), "key-1".into()).await.unwrap();
        let again = f.control.submit(sleep_job(), "key-1".into()).await.unwrap();
        assert_eq!(
            again.id, job.id,
            "the idempotency key returns the first job"
        );

        let s1 = register(&f, "w1");
        let first = f
            .control
            .poll("w1", &s1, 1, Duration::from_millis(10), &never)
            .await
            .unwrap()
            .expect("a queued task is handed out at once");
        assert_eq!((first.attempt, first.job_id.as_str()), (1, job.id.as_str()));
        assert_eq!(
            f.control.get(&job.id).unwrap().state,
            v1::JobState::Training as i32
        );

        // w1 goes silent; the sleep job allows one attempt, so it fails with the history.
        f.control.workers_lost(&["w1".to_owned()]);
        let failed = f.control.get(&job.id).unwrap();
        assert_eq!(failed.state, v1::JobState::Failed as i32);
        assert!(
            failed.error.contains("lost with worker w1"),
            "{}",
            failed.error
        );

        // Its late report is refused and changes nothing.
        let err = f
            .control
            .complete("w1", &first.id, 1, Report::Cancelled)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
        assert_eq!(f.control.get(&job.id).unwrap(), failed);

        // A second job completes normally on w2, whose poll was parked before it was queued.
        let s2 = register(&f, "w2");
        let parked = tokio::spawn({
            let control = f.control.clone();
            async move {
                control
                    .poll(
                        "w2",
                        &s2,
                        1,
                        Duration::from_secs(30),
                        &CancellationToken::new(),
                    )
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = f.control.submit(sleep_job(), String::new()).await.unwrap();
        let task = parked
            .await
            .unwrap()
            .unwrap()
            .expect("the parked poll got it");
        assert_eq!(task.job_id, second.id);
        f.control
            .complete(
                "w2",
                &task.id,
                task.attempt,
                Report::Success {
                    metrics: BTreeMap::new(),
                    artifacts: BTreeMap::new(),
                    detail_json: String::new(),
                },
            )
            .await
            .unwrap();
        let done = f.control.get(&second.id).unwrap();
        assert_eq!(done.state, v1::JobState::Succeeded as i32);
        let (listed, next) = f.control.list(&[], 1, "");
        assert_eq!(listed[0].id, second.id, "newest first");
        assert_eq!(next, second.id);
        let (rest, _) = f.control.list(&[], 10, &next);
        assert_eq!(rest.iter().map(|j| &j.id).collect::<Vec<_>>(), [&job.id]);
        close(f).await;

        // A coordinator restarted on the same store knows both jobs, their attempts and workers.
        let f = open(dir.path()).await;
        assert_eq!(f.control.get(&job.id).unwrap(), failed);
        assert_eq!(f.control.get(&second.id).unwrap(), done);
        assert_eq!(f.registry.list(None).len(), 2);
        let again = f.control.submit(sleep_job(), "key-1".into()).await.unwrap();
        assert_eq!(again.id, job.id, "idempotency keys survive too");
        close(f).await;
    }

    #[tokio::test]
    async fn cancel_takes_a_queued_job_at_once_and_refuses_a_finished_one() {
        let dir = tempfile::tempdir().unwrap();
        let f = open(dir.path()).await;
        let job = f.control.submit(sleep_job(), String::new()).await.unwrap();
        let cancelled = f.control.cancel(&job.id, "changed my mind").await.unwrap();
        assert_eq!(cancelled.state, v1::JobState::Cancelled as i32);
        assert_eq!(cancelled.error, "cancelled: changed my mind");
        let err = f.control.cancel(&job.id, "").await.unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
        assert!(matches!(
            f.control.cancel("j-nope", "").await.unwrap_err(),
            Error::NotFound(_)
        ));
        let s = register(&f, "w");
        let nothing = f
            .control
            .poll(
                "w",
                &s,
                1,
                Duration::from_millis(20),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert!(
            nothing.is_none(),
            "a cancelled job's task is never handed out"
        );
        close(f).await;
    }
}
