//! The audit trail: every mutating call and every refused call, recorded in the state store
//! (who, role, method, target, outcome, time), newest [`KEEP`] kept (and at most one batch
//! more).
//!
//! The access layer hands each record to [`AuditLog::record`] before the call's answer leaves:
//! a full queue (the store slower than the calls) makes the call wait for room rather than
//! lose its record, so an audited call is never answered unrecorded while the writer runs. One
//! writer task per replica hands them in
//! batches to the current term's journal, so they ride in the group commits of the state (no
//! commit of their own), fenced like every write of the term. A batch is one key (a chunk of
//! records, oldest first), so a busy coordinator writes one key per commit, not one per call,
//! and trims whole chunks. The writer knows the keys it
//! keeps (read once per term, and again every [`RESCAN`] to count the chunks followers add), so
//! trimming does not read the trail on every batch. A follower has no term: what it refuses
//! itself it writes straight to the store as its own chunks (unfenced: the trail is append-only
//! and no state depends on it), and what it forwards is recorded by the leader. Each record
//! names the replica that decided.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trainfleet_core::kv::{KeyRange, KvStore, Txn, TxnOp};

use super::Role;
use crate::records::ROOT;
use crate::state::State;

/// Audit records kept in the store; older ones are deleted as new ones arrive.
pub const KEEP: usize = 10_000;
/// Records waiting for the writer; past this, calls wait for room.
const QUEUE: usize = 4096;
/// How often the leader's writer reads the trail's keys again (followers add chunks).
const RESCAN: std::time::Duration = std::time::Duration::from_secs(30);

/// One audited call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the call arrived.
    pub at: SystemTime,
    /// The caller's token name (`anonymous` when it had none or an invalid one).
    pub caller: String,
    /// Its role; none when it was not authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// `service/method`.
    pub method: String,
    /// What it acted on (`job j-...`, `model m-...`, `token ci`), when the service said.
    #[serde(default)]
    pub target: String,
    /// The gRPC code it ended with (`OK`, `PERMISSION_DENIED`, ...).
    pub outcome: String,
    /// The status message of a failed call.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The replica that decided (its id: host and port); empty in records from before.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub replica: String,
}

/// What a service names as the target of a call, put in the response's extensions.
#[derive(Debug, Clone)]
pub struct AuditTarget(pub String);

impl AuditTarget {
    /// A response carrying `target` for the audit trail.
    pub fn on<T>(
        mut response: tonic::Response<T>,
        target: impl Into<String>,
    ) -> tonic::Response<T> {
        response.extensions_mut().insert(AuditTarget(target.into()));
        response
    }
}

/// Prefix of the audit records.
pub fn audit_prefix() -> String {
    format!("{ROOT}audit/")
}

/// Key of a chunk whose first record was made at `at`: keys sort by time.
fn audit_key(at: SystemTime) -> Vec<u8> {
    let nanos = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{ROOT}audit/{nanos:024}-{:08x}", rand::random::<u32>()).into_bytes()
}

/// The queue into the writer.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<AuditRecord>,
    replica: Arc<str>,
}

impl AuditLog {
    /// A log and the receiving end its writer drains ([`run_writer`]).
    pub fn new(replica: &str) -> (Self, mpsc::Receiver<AuditRecord>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let replica = Arc::from(replica);
        (Self { tx, replica }, rx)
    }

    /// Queues a record, waiting for room when the queue is full. A refusal is also logged; a
    /// call that went through is logged at debug level only: the trail has it.
    pub async fn record(&self, mut record: AuditRecord) {
        if record.replica.is_empty() {
            record.replica = self.replica.to_string();
        }
        if record.outcome == "OK" {
            tracing::debug!(
                caller = %record.caller, method = %record.method, target = %record.target,
                outcome = %record.outcome, "audit"
            );
        } else {
            tracing::info!(
                caller = %record.caller, method = %record.method, target = %record.target,
                outcome = %record.outcome, message = %record.message, "audit"
            );
        }
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(record)) => {
                warn_full();
                // Closed only when the writer stopped, on shutdown.
                let _ = self.tx.send(record).await;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Says, at most once a second, that calls wait for the audit writer.
fn warn_full() {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if LAST.swap(now, std::sync::atomic::Ordering::Relaxed) != now {
        tracing::warn!(
            queued = QUEUE,
            "the audit queue is full: audited calls wait for the trail's writer (a slow store)"
        );
    }
}

/// Hands queued records to the current term's journal until `shutdown`, deleting the oldest
/// past [`KEEP`] in the same commit. A replica that does not lead writes its batches to
/// `shared` (the replicas' etcd) directly, or drops them when there is none (they were logged).
pub async fn run_writer(
    state: Arc<State>,
    shared: Option<Arc<dyn KvStore>>,
    mut rx: mpsc::Receiver<AuditRecord>,
    shutdown: CancellationToken,
) {
    // The stored chunks' keys and record counts, oldest first, the term they were read in and
    // when.
    let mut kept: Option<(usize, Instant, Chunks)> = None;
    loop {
        let first = tokio::select! {
            r = rx.recv() => match r { Some(r) => r, None => return },
            _ = shutdown.cancelled() => return,
        };
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let Ok(term) = state.term() else {
            kept = None;
            if let Some(store) = &shared {
                write_unfenced(store.as_ref(), &batch).await;
            }
            continue;
        };
        let term_id = Arc::as_ptr(&term) as usize;
        let stale = kept
            .as_ref()
            .is_none_or(|(id, read, _)| *id != term_id || read.elapsed() > RESCAN);
        if stale {
            match term.store.range(KeyRange::prefix(audit_prefix())).await {
                Ok(all) => {
                    let mut chunks = Chunks::default();
                    for kv in all {
                        chunks.push(kv.key, records_of(&kv.value).len());
                    }
                    kept = Some((term_id, Instant::now(), chunks));
                }
                Err(e) => {
                    tracing::warn!(error = %e, records = batch.len(), "cannot read the audit trail; records dropped");
                    continue;
                }
            }
        }
        let Some((_, _, chunks)) = kept.as_mut() else {
            continue;
        };
        let Ok(value) = serde_json::to_vec(&batch) else {
            continue;
        };
        let key = audit_key(batch[0].at);
        chunks.push(key.clone(), batch.len());
        let mut ops = vec![TxnOp::Put(key, value)];
        ops.extend(chunks.trim(KEEP).into_iter().map(TxnOp::Delete));
        let added = batch.len();
        if let Err(e) = term.control.record(ops).durable().await {
            tracing::warn!(error = %e, records = added, "cannot store audit records");
            kept = None;
        }
    }
}

/// A follower's batch, as one chunk written straight to the store.
async fn write_unfenced(store: &dyn KvStore, batch: &[AuditRecord]) {
    let Ok(value) = serde_json::to_vec(batch) else {
        return;
    };
    let put = TxnOp::Put(audit_key(batch[0].at), value);
    if let Err(e) = store.txn(Txn::unconditional(vec![put])).await {
        tracing::warn!(error = %e, records = batch.len(), "cannot store this follower's audit records");
    }
}

/// The stored chunks, oldest first: (key, records).
#[derive(Debug, Default)]
struct Chunks {
    chunks: VecDeque<(Vec<u8>, usize)>,
    records: usize,
}

impl Chunks {
    fn push(&mut self, key: Vec<u8>, records: usize) {
        self.chunks.push_back((key, records));
        self.records += records;
    }

    /// Drops the oldest chunks while the rest still hold `keep` records; their keys.
    fn trim(&mut self, keep: usize) -> Vec<Vec<u8>> {
        let mut gone = Vec::new();
        while let Some((_, n)) = self.chunks.front()
            && self.records - n >= keep
        {
            let (key, n) = self.chunks.pop_front().expect("checked");
            self.records -= n;
            gone.push(key);
        }
        gone
    }
}

/// A stored value: a chunk, or one record (as trails were stored before chunks).
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Chunk(Vec<AuditRecord>),
    One(AuditRecord),
}

/// The records of a stored value, oldest first (none when it does not parse).
fn records_of(value: &[u8]) -> Vec<AuditRecord> {
    match serde_json::from_slice(value) {
        Ok(Stored::Chunk(records)) => records,
        Ok(Stored::One(record)) => vec![record],
        Err(_) => Vec::new(),
    }
}

/// The newest `limit` records, newest first.
pub async fn newest(
    store: &dyn trainfleet_core::kv::KvStore,
    limit: usize,
) -> trainfleet_core::Result<Vec<AuditRecord>> {
    let all = store.range(KeyRange::prefix(audit_prefix())).await?;
    let mut found = Vec::new();
    for kv in all.iter().rev() {
        found.extend(records_of(&kv.value).into_iter().rev());
        if found.len() >= limit {
            break;
        }
    }
    // Chunks of different replicas overlap in time: order by the records' own times.
    found.sort_by_key(|r| std::cmp::Reverse(r.at));
    found.truncate(limit);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use trainfleet_core::config::CoordinatorConfig;

    use super::*;

    fn record(i: usize) -> AuditRecord {
        AuditRecord {
            at: SystemTime::now(),
            caller: format!("caller-{i}"),
            role: Some(Role::Admin),
            method: "trainfleet.v1.JobService/Submit".to_owned(),
            target: format!("job j-{i}"),
            outcome: "OK".to_owned(),
            message: String::new(),
            replica: String::new(),
        }
    }

    #[tokio::test]
    async fn the_trail_keeps_the_newest_records_and_drops_the_oldest_past_keep() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::for_tests(CoordinatorConfig::default(), dir.path()).await;
        let store = state.term().unwrap().store.clone();
        let (log, rx) = AuditLog::new("test");
        let stop = CancellationToken::new();
        let writer = tokio::spawn(run_writer(state.clone(), None, rx, stop.clone()));
        let total = KEEP + 3000;
        // A burst three times the queue: the calls wait for room, and no record is lost.
        for i in 0..total {
            log.record(record(i)).await;
        }
        let mut kept = Vec::new();
        for _ in 0..500 {
            kept = newest(store.as_ref(), usize::MAX).await.unwrap();
            if kept
                .first()
                .is_some_and(|r| r.caller == format!("caller-{}", total - 1))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The newest KEEP and at most one batch more, newest first, in order.
        assert!((KEEP..KEEP + 1024).contains(&kept.len()), "{}", kept.len());
        for (i, r) in kept.iter().enumerate() {
            assert_eq!(r.caller, format!("caller-{}", total - 1 - i));
        }
        let store_keys = store.range(KeyRange::prefix(audit_prefix())).await.unwrap();
        assert!(
            store_keys.len() < kept.len(),
            "records are stored in chunks"
        );
        stop.cancel();
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_trail_of_single_records_from_before_chunks_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::for_tests(CoordinatorConfig::default(), dir.path()).await;
        let store = state.term().unwrap().store.clone();
        let (old, chunk) = (record(0), vec![record(1), record(2)]);
        store
            .txn(trainfleet_core::kv::Txn::unconditional(vec![
                TxnOp::Put(audit_key(old.at), serde_json::to_vec(&old).unwrap()),
                TxnOp::Put(audit_key(chunk[0].at), serde_json::to_vec(&chunk).unwrap()),
            ]))
            .await
            .unwrap();
        let callers: Vec<String> = newest(store.as_ref(), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.caller)
            .collect();
        assert_eq!(callers, ["caller-2", "caller-1", "caller-0"]);
        let two = newest(store.as_ref(), 2).await.unwrap();
        assert_eq!(two.len(), 2);
    }
}
