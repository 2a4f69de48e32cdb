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
//!
//! Each part of the state machine has its room; all share the one lock and the journal here:
//!
//! - [`jobs`]: submit (idempotent), get, list, cancel, watch; creating a job and its records.
//! - [`leasing`]: the queue, workers' long-polls, dispatch, heartbeats, lost workers, leases.
//! - [`completion`]: task reports, progress (epochs, checkpoints), attempts, finishing a job.
//! - [`evals`]: a challenger's eval against the champion, the gate, the model record.
//! - [`models`]: the registry and champions: list, promote, roll back (compare-and-swap).
//! - [`datasets`]: registration, versions, scans and what they recorded.
//! - [`retrain`]: the retrain loop: the policy's decisions and the ticker.
//! - [`retention`]: finished jobs past retention move to the archive ([`crate::archive`]).
//! - [`sweeps`]: hyperparameter sweeps: trials as jobs, the next proposal when one ends, the
//!   best trial sent through the gate.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;
use trainfleet_core::artifacts::ArtifactStore;
use trainfleet_core::device::Device;
use trainfleet_core::kv::KvStore;

mod completion;
mod datasets;
mod evals;
mod jobs;
mod leasing;
mod models;
mod retention;
mod retrain;
mod sweeps;
#[cfg(test)]
mod tests;

pub use retention::run_archiver;
pub use retrain::{next_scan, retrain_spec, retrain_sweep, run_ticker};

use jobs::NewJob;

use crate::archive::JobArchive;
use crate::dispatch::Assignment;
use crate::error::{Error, Result};
use crate::events::{EventKind, JobEvent};
use crate::journal::{Ack, Journal};
use crate::records::{
    self, ChampionRecord, DatasetRecord, JobRecord, ModelRecord, TaskMeta, TaskRecord,
};
use crate::registry::{WorkerRegistry, WorkerSnapshot};
use crate::scheduler::{Refused, Scheduler};

pub use crate::requests::{Report, Submission};

/// Longest sleep a sleep job may ask for.
pub const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// Events buffered per watched job before a slow watcher skips progress events.
const WATCH_BUFFER: usize = 1024;

struct Waiter {
    worker_id: String,
    session: String,
    devices: Vec<Device>,
    free_slots: u32,
    tx: oneshot::Sender<Assigned>,
}

struct Assigned {
    task: Assignment,
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
    watchers: HashMap<String, broadcast::Sender<JobEvent>>,
    /// Retrain decisions per dataset, oldest first (at most [`retrain::HISTORY`] each).
    decisions: HashMap<String, VecDeque<records::DecisionRecord>>,
    /// The newest archived job's id: `None` until looked up, `Some(None)` for an empty archive.
    /// A page of `List` that ends above it needs no archive read.
    newest_archived: Option<Option<String>>,
    /// Sweeps by id, and each sweep's trials by number.
    sweeps: BTreeMap<String, records::SweepRecord>,
    trials: HashMap<String, Vec<records::TrialRecord>>,
    sweep_idempotency: HashMap<String, String>,
}

/// The coordinator's jobs, tasks and models.
pub struct Control {
    lease_timeout: Duration,
    registry: Arc<WorkerRegistry>,
    artifacts: ArtifactStore,
    archive: JobArchive,
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
        let kvs = store
            .prefix(records::ROOT.as_bytes())
            .await
            .map_err(store_error)?;
        // Decoding a large state takes seconds of CPU: off the runtime, so that the leader's
        // lease keeps being renewed meanwhile.
        let restoring = registry.clone();
        let (inner, champion_revisions) =
            tokio::task::spawn_blocking(move || Self::restore(kvs, &restoring))
                .await
                .map_err(|e| store_error(format!("restoring state panicked: {e}")))??;
        let guarded = champion_revisions;
        let (journal, handle) = Journal::start(store, fatal, guarded);
        let control = Arc::new(Self {
            lease_timeout,
            registry,
            archive: JobArchive::new(artifacts.clone()),
            artifacts,
            journal,
            inner: Mutex::new(inner),
        });
        Ok((control, handle))
    }

    /// Builds the in-memory state from every stored record; returns it with the champion
    /// pointers' revisions (the journal's compare-and-swap baseline).
    fn restore(
        kvs: Vec<trainfleet_core::kv::KeyValue>,
        registry: &WorkerRegistry,
    ) -> Result<(Inner, HashMap<Vec<u8>, i64>)> {
        let mut inner = Inner::default();
        let mut tasks = Vec::new();
        let mut champion_revisions = HashMap::new();
        for kv in kvs {
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
                Some("sweeps") => {
                    let sweep: records::SweepRecord = decode(&kv.key, &kv.value)?;
                    if !sweep.idempotency_key.is_empty() {
                        inner
                            .sweep_idempotency
                            .insert(sweep.idempotency_key.clone(), sweep.id.clone());
                    }
                    inner.trials.entry(sweep.id.clone()).or_default();
                    inner.sweeps.insert(sweep.id.clone(), sweep);
                }
                Some("trials") => {
                    // Keys sort by trial number, so each list is built in order.
                    let trial: records::TrialRecord = decode(&kv.key, &kv.value)?;
                    inner
                        .trials
                        .entry(trial.sweep_id.clone())
                        .or_default()
                        .push(trial);
                }
                Some("workers") => {
                    let worker: WorkerSnapshot = decode(&kv.key, &kv.value)?;
                    registry.restore(worker);
                }
                // Read by every replica's access check and the audit trail, not by the control
                // plane.
                Some("tokens" | "audit") => {}
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
        Ok((inner, champion_revisions))
    }

    /// Writes `ops` in the journal's next group commit, fenced like every write of the term:
    /// for records kept beside the state (the audit trail), which then cost no commit of their
    /// own. The ack says when they are durable.
    pub fn record(&self, ops: Vec<trainfleet_core::kv::TxnOp>) -> crate::journal::Ack {
        self.journal.record(ops)
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

fn event(job_id: &str, kind: EventKind) -> (String, JobEvent) {
    (job_id.to_owned(), JobEvent::now(kind))
}
