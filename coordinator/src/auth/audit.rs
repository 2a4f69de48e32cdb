//! The audit trail: every mutating call and every refused call, recorded in the state store
//! (who, role, method, target, outcome, time), newest [`KEEP`] kept.
//!
//! The access layer hands each record to [`AuditLog::record`] (never blocking a call: a full
//! queue drops the record and says so in the log); one writer task per replica writes them in
//! batches through the current term's fenced store. A follower has no term: what it refuses
//! itself is logged with `tracing` only, and what it forwards is recorded by the leader.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trainfleet_core::kv::{KeyRange, TxnOp};

use super::Role;
use crate::records::ROOT;
use crate::state::State;

/// Audit records kept in the store; older ones are deleted as new ones arrive.
pub const KEEP: usize = 10_000;
/// Records waiting for the writer; past this, new ones are dropped (and counted in the log).
const QUEUE: usize = 4096;
/// Records deleted at once when the trail is over [`KEEP`].
const TRIM_BATCH: usize = 500;

/// One audited call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the call ended.
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

/// Key of a record made at `at`: keys sort by time.
fn audit_key(at: SystemTime) -> Vec<u8> {
    let nanos = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{ROOT}audit/{nanos:024}-{:08x}", rand::random::<u32>()).into_bytes()
}

/// The queue into the writer.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<AuditRecord>,
}

impl AuditLog {
    /// A log and the receiving end its writer drains ([`run_writer`]).
    pub fn new() -> (Self, mpsc::Receiver<AuditRecord>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self { tx }, rx)
    }

    /// Queues a record; never waits.
    pub fn record(&self, record: AuditRecord) {
        tracing::info!(
            caller = %record.caller, method = %record.method, target = %record.target,
            outcome = %record.outcome, "audit"
        );
        if self.tx.try_send(record).is_err() {
            tracing::warn!("the audit queue is full; a record was not stored");
        }
    }
}

/// Writes queued records through the current term's store until `shutdown`. A replica that
/// does not lead drops them (they were logged).
pub async fn run_writer(
    state: Arc<State>,
    mut rx: mpsc::Receiver<AuditRecord>,
    shutdown: CancellationToken,
) {
    let mut stored: Option<usize> = None;
    loop {
        let first = tokio::select! {
            r = rx.recv() => match r { Some(r) => r, None => return },
            _ = shutdown.cancelled() => return,
        };
        let mut batch = vec![first];
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let Ok(term) = state.term() else {
            stored = None;
            continue;
        };
        let ops: Vec<TxnOp> = batch
            .iter()
            .filter_map(|r| {
                let value = serde_json::to_vec(r).ok()?;
                Some(TxnOp::Put(audit_key(r.at), value))
            })
            .collect();
        let added = ops.len();
        if let Err(e) = term.store.apply_batch(chunks(ops)).await {
            tracing::warn!(error = %e, records = added, "cannot store audit records");
            continue;
        }
        // Count once per term, then keep the count; trim the oldest past KEEP.
        let count = match stored {
            Some(n) => n + added,
            None => match term.store.range(KeyRange::prefix(audit_prefix())).await {
                Ok(all) => all.len(),
                Err(_) => continue,
            },
        };
        stored = Some(count);
        if count > KEEP + TRIM_BATCH {
            match trim(term.store.as_ref(), count - KEEP).await {
                Ok(removed) => stored = Some(count - removed),
                Err(e) => tracing::warn!(error = %e, "cannot trim the audit trail"),
            }
        }
    }
}

/// Deletes the `n` oldest records; returns how many went.
async fn trim(
    store: &dyn trainfleet_core::kv::KvStore,
    n: usize,
) -> trainfleet_core::Result<usize> {
    let all = store.range(KeyRange::prefix(audit_prefix())).await?;
    let ops: Vec<TxnOp> = all
        .into_iter()
        .take(n)
        .map(|kv| TxnOp::Delete(kv.key))
        .collect();
    let removed = ops.len();
    store.apply_batch(chunks(ops)).await?;
    Ok(removed)
}

/// Ops in transactions small enough for etcd (128 operations at most by default).
fn chunks(ops: Vec<TxnOp>) -> Vec<Vec<TxnOp>> {
    ops.chunks(64).map(<[TxnOp]>::to_vec).collect()
}

/// The newest `limit` records, newest first.
pub async fn newest(
    store: &dyn trainfleet_core::kv::KvStore,
    limit: usize,
) -> trainfleet_core::Result<Vec<AuditRecord>> {
    let all = store.range(KeyRange::prefix(audit_prefix())).await?;
    Ok(all
        .iter()
        .rev()
        .take(limit)
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}
