//! Which workers exist, which are alive, and the sessions that prove it.
//!
//! A worker is ALIVE while heartbeats keep arriving before its deadline (`lease_timeout` after the
//! last one). The reaper marks a silent worker LOST; a lost worker's session is dead, so its next
//! heartbeat is refused and it must register again. That is what makes "the worker came back"
//! an explicit event rather than a heartbeat sneaking past a requeue.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use trainfleet_core::device::Device;

use crate::error::{Error, Result};

/// What a worker says about itself at registration (validated before it gets here).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Registration {
    /// Its chosen id.
    pub worker_id: String,
    /// Host it runs on.
    pub host: String,
    /// CPU plus any GPUs.
    pub devices: Vec<Device>,
    /// Tasks it runs at once.
    pub slots: u32,
    /// trainfleet version.
    pub version: String,
    /// libtorch version.
    pub libtorch_version: String,
    /// Placement labels.
    pub labels: BTreeMap<String, String>,
    /// Remote address the registration came from.
    pub peer: String,
}

/// Liveness as judged from heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Liveness {
    /// Heartbeats arrive in time.
    Alive,
    /// Its deadline passed.
    Lost,
}

/// A point-in-time copy of one worker's record, for listing.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WorkerSnapshot {
    /// What it registered with.
    pub registration: Registration,
    /// Alive or lost.
    pub liveness: Liveness,
    /// Free slots at the latest heartbeat.
    pub free_slots: u32,
    /// Wall-clock times for people.
    pub registered_at: SystemTime,
    /// When the latest heartbeat (or the registration) arrived.
    pub last_heartbeat_at: SystemTime,
    /// When it is (or was) declared lost without another heartbeat.
    pub deadline_at: SystemTime,
    /// Tasks it reported running.
    pub running_tasks: Vec<String>,
}

/// The session a registration opened.
#[derive(Debug, Clone)]
pub struct Session {
    /// Token every later call carries.
    pub session_id: String,
}

#[derive(Debug)]
struct Entry {
    snapshot: WorkerSnapshot,
    session_id: String,
    // Monotonic deadline; `snapshot.deadline_at` is its wall-clock twin for display only.
    deadline: Instant,
    lost_since: Option<Instant>,
}

/// The registry of workers. Cheap, synchronous critical sections behind one mutex: it is touched
/// once per heartbeat, which is nowhere near contention at the cluster sizes we target.
#[derive(Debug)]
pub struct WorkerRegistry {
    lease_timeout: Duration,
    retention: Duration,
    workers: Mutex<BTreeMap<String, Entry>>,
}

impl WorkerRegistry {
    /// A registry that declares workers lost after `lease_timeout` of silence and forgets lost
    /// workers after `retention`.
    pub fn new(lease_timeout: Duration, retention: Duration) -> Self {
        Self {
            lease_timeout,
            retention,
            workers: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records a registration, replacing any previous session of the same worker id.
    pub fn register(&self, registration: Registration) -> Session {
        let session_id = new_session_id();
        let now = SystemTime::now();
        let entry = Entry {
            snapshot: WorkerSnapshot {
                free_slots: registration.slots,
                registration,
                liveness: Liveness::Alive,
                registered_at: now,
                last_heartbeat_at: now,
                deadline_at: now + self.lease_timeout,
                running_tasks: Vec::new(),
            },
            session_id: session_id.clone(),
            deadline: Instant::now() + self.lease_timeout,
            lost_since: None,
        };
        let mut workers = self.lock();
        let replaced = workers.insert(entry.snapshot.registration.worker_id.clone(), entry);
        if let Some(old) = replaced {
            tracing::info!(
                worker_id = %old.snapshot.registration.worker_id,
                was = ?old.snapshot.liveness,
                "worker re-registered; its previous session is void"
            );
        }
        Session { session_id }
    }

    /// Checks that `session_id` is the live session of `worker_id`.
    pub fn check_session(&self, worker_id: &str, session_id: &str) -> Result<()> {
        let workers = self.lock();
        live_entry(&workers, worker_id, session_id).map(|_| ())
    }

    /// The devices of `worker_id`, if `session_id` is its live session.
    pub fn session_devices(&self, worker_id: &str, session_id: &str) -> Result<Vec<Device>> {
        let workers = self.lock();
        live_entry(&workers, worker_id, session_id).map(|e| e.snapshot.registration.devices.clone())
    }

    /// One worker's record.
    pub fn get(&self, worker_id: &str) -> Option<WorkerSnapshot> {
        self.lock().get(worker_id).map(|e| e.snapshot.clone())
    }

    /// Re-creates a worker known before a coordinator restart. It has no live session (every
    /// call it makes is told to register again); one that was alive gets a fresh deadline, so
    /// that it has a full lease to come back before its tasks are requeued.
    pub fn restore(&self, mut snapshot: WorkerSnapshot) {
        let now = Instant::now();
        let alive = snapshot.liveness == Liveness::Alive;
        if alive {
            snapshot.deadline_at = SystemTime::now() + self.lease_timeout;
        }
        let entry = Entry {
            snapshot,
            // Never handed out: nobody can present it.
            session_id: format!("restored-{}", new_session_id()),
            deadline: now + self.lease_timeout,
            lost_since: (!alive).then_some(now),
        };
        self.lock()
            .insert(entry.snapshot.registration.worker_id.clone(), entry);
    }

    /// Records a heartbeat and returns the new deadline (wall clock).
    pub fn heartbeat(
        &self,
        worker_id: &str,
        session_id: &str,
        free_slots: u32,
        running_tasks: Vec<String>,
    ) -> Result<SystemTime> {
        let mut workers = self.lock();
        live_entry(&workers, worker_id, session_id)?;
        let entry = workers.get_mut(worker_id).expect("checked by live_entry");
        let now = SystemTime::now();
        entry.deadline = Instant::now() + self.lease_timeout;
        entry.snapshot.last_heartbeat_at = now;
        entry.snapshot.deadline_at = now + self.lease_timeout;
        entry.snapshot.free_slots = free_slots.min(entry.snapshot.registration.slots);
        entry.snapshot.running_tasks = running_tasks;
        Ok(entry.snapshot.deadline_at)
    }

    /// Marks every alive worker whose deadline has passed as lost, forgets workers lost for
    /// longer than the retention, and returns the ids that were newly lost.
    pub fn expire(&self) -> Vec<String> {
        let now = Instant::now();
        let mut newly_lost = Vec::new();
        let mut workers = self.lock();
        for (id, entry) in workers.iter_mut() {
            if entry.snapshot.liveness == Liveness::Alive && entry.deadline <= now {
                entry.snapshot.liveness = Liveness::Lost;
                entry.lost_since = Some(now);
                newly_lost.push(id.clone());
            }
        }
        workers.retain(|_, e| {
            e.lost_since
                .is_none_or(|since| now - since < self.retention)
        });
        newly_lost
    }

    /// Every known worker, ordered by id, optionally only those with `liveness`.
    pub fn list(&self, liveness: Option<Liveness>) -> Vec<WorkerSnapshot> {
        self.lock()
            .values()
            .filter(|e| liveness.is_none_or(|l| e.snapshot.liveness == l))
            .map(|e| e.snapshot.clone())
            .collect()
    }

    /// How often the reaper should look: often enough that a lost worker is noticed within a
    /// tenth of the lease, rarely enough to cost nothing.
    pub fn reap_interval(&self) -> Duration {
        (self.lease_timeout / 10).clamp(Duration::from_millis(20), Duration::from_secs(1))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while holding this lock leaves plain data behind, never a broken invariant
        // worth refusing service over.
        self.workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn live_entry<'a>(
    workers: &'a BTreeMap<String, Entry>,
    worker_id: &str,
    session_id: &str,
) -> Result<&'a Entry> {
    match workers.get(worker_id) {
        Some(e) if e.session_id == session_id && e.snapshot.liveness == Liveness::Alive => Ok(e),
        Some(e) if e.session_id == session_id => Err(Error::SessionExpired {
            worker_id: worker_id.to_owned(),
        }),
        _ => Err(Error::UnknownSession {
            worker_id: worker_id.to_owned(),
        }),
    }
}

fn new_session_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainfleet_core::device::DeviceKind;

    fn registration(id: &str) -> Registration {
        Registration {
            worker_id: id.to_owned(),
            host: "host-a".to_owned(),
            devices: vec![Device {
                kind: DeviceKind::Cpu,
                index: 0,
                name: "test cpu".to_owned(),
                memory_bytes: 1 << 30,
                cores: 2,
            }],
            slots: 2,
            version: "0.1.0".to_owned(),
            libtorch_version: String::new(),
            labels: BTreeMap::new(),
            peer: "127.0.0.1:1".to_owned(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silent_worker_is_lost_after_the_lease_and_must_register_again() {
        let registry = WorkerRegistry::new(Duration::from_secs(10), Duration::from_secs(3600));
        let s = registry.register(registration("w1"));

        tokio::time::advance(Duration::from_secs(9)).await;
        registry
            .heartbeat("w1", &s.session_id, 1, vec!["t1".into()])
            .unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(
            registry.expire().is_empty(),
            "a heartbeat extends the deadline"
        );
        assert_eq!(registry.list(None)[0].free_slots, 1);

        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(registry.expire(), vec!["w1".to_owned()]);
        assert!(registry.expire().is_empty(), "lost is reported once");
        assert_eq!(registry.list(Some(Liveness::Lost)).len(), 1);
        assert!(registry.list(Some(Liveness::Alive)).is_empty());

        let err = registry
            .heartbeat("w1", &s.session_id, 1, vec![])
            .unwrap_err();
        assert!(matches!(err, Error::SessionExpired { .. }), "{err}");

        let s2 = registry.register(registration("w1"));
        assert_ne!(s.session_id, s2.session_id);
        registry.heartbeat("w1", &s2.session_id, 2, vec![]).unwrap();
        assert_eq!(registry.list(Some(Liveness::Alive)).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn old_session_is_void_after_re_registration() {
        let registry = WorkerRegistry::new(Duration::from_secs(10), Duration::from_secs(3600));
        let old = registry.register(registration("w1"));
        let new = registry.register(registration("w1"));
        let err = registry.check_session("w1", &old.session_id).unwrap_err();
        assert!(matches!(err, Error::UnknownSession { .. }));
        registry.check_session("w1", &new.session_id).unwrap();
        assert!(registry.check_session("nobody", &new.session_id).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn lost_workers_are_forgotten_after_retention() {
        let registry = WorkerRegistry::new(Duration::from_secs(1), Duration::from_secs(60));
        registry.register(registration("w1"));
        registry.register(registration("w2"));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(registry.expire().len(), 2);
        tokio::time::advance(Duration::from_secs(59)).await;
        registry.expire();
        assert_eq!(registry.list(None).len(), 2);
        tokio::time::advance(Duration::from_secs(2)).await;
        registry.expire();
        assert!(registry.list(None).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn free_slots_never_exceed_registered_slots() {
        let registry = WorkerRegistry::new(Duration::from_secs(10), Duration::from_secs(60));
        let s = registry.register(registration("w1"));
        registry.heartbeat("w1", &s.session_id, 99, vec![]).unwrap();
        assert_eq!(registry.list(None)[0].free_slots, 2);
    }
}
