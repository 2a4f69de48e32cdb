//! Write-behind persistence with group commit.
//!
//! State changes happen in memory under the control lock; each change also appends its writes to
//! the journal *while still holding that lock*, so the journal's order is the order the changes
//! happened in. One task drains the journal and commits whatever has accumulated as one
//! [`KvStore::txn_batch`] (one durable write for a burst of changes), then acknowledges each
//! entry. A caller that must not answer before its change is durable (a Submit, a lease handed
//! to a worker, a completed task) awaits its [`Ack`].
//!
//! A failed store write is fatal to the replica: memory would be ahead of the store, and the only
//! honest recovery is to stop and restart from what is durable. The journal cancels the
//! replica's shutdown token with the error logged; every waiting caller gets UNAVAILABLE.
//!
//! **Guarded keys** (the champion pointers) are compare-and-swapped on their own revision: an
//! entry that writes one is committed as its own transaction comparing the key's mod revision
//! with the one this journal last wrote (or loaded). Only the leader writes through its journal,
//! and its writes are fenced too, so the compare can only fail if something else moved the
//! pointer; then memory and store disagree, and the replica stops as for any failed write.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use trainfleet_core::kv::{Compare, KvStore, Txn, TxnOp};

/// Keys under this prefix are guarded (see the module documentation).
pub const GUARDED_PREFIX: &[u8] = b"/trainfleet/champions/";

/// A commit slower than this is logged: every caller waiting on it waits that long.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(20);
/// Most entries committed together.
const MAX_BATCH: usize = 512;

struct Entry {
    ops: Vec<TxnOp>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The sending side, held by the control state.
#[derive(Debug, Clone)]
pub struct Journal {
    tx: mpsc::UnboundedSender<Entry>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("ops", &self.ops.len())
            .finish()
    }
}

/// Resolves once an entry is durable (or the store failed).
#[derive(Debug)]
pub struct Ack(oneshot::Receiver<Result<(), String>>);

impl Ack {
    /// Waits for the entry to be committed.
    pub async fn durable(self) -> Result<(), String> {
        self.0
            .await
            .unwrap_or_else(|_| Err("the state journal stopped".to_owned()))
    }
}

impl Journal {
    /// Starts the committer over `store`; it stops once every `Journal` clone is dropped and the
    /// backlog is written. A store failure cancels `fatal`. `guarded` holds the mod revisions
    /// of the guarded keys as loaded.
    pub fn start(
        store: Arc<dyn KvStore>,
        fatal: CancellationToken,
        guarded: HashMap<Vec<u8>, i64>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(commit_loop(store, rx, fatal, guarded));
        (Self { tx }, handle)
    }

    /// Appends `ops` (applied in order, atomically with the rest of their batch).
    pub fn record(&self, ops: Vec<TxnOp>) -> Ack {
        let (done, rx) = oneshot::channel();
        if ops.is_empty() {
            let _ = done.send(Ok(()));
        } else if let Err(mpsc::error::SendError(entry)) = self.tx.send(Entry { ops, done }) {
            let _ = entry.done.send(Err("the state journal stopped".to_owned()));
        }
        Ack(rx)
    }
}

fn guarded_keys(ops: &[TxnOp]) -> Vec<Vec<u8>> {
    ops.iter()
        .filter_map(|op| match op {
            TxnOp::Put(k, _) | TxnOp::Delete(k) if k.starts_with(GUARDED_PREFIX) => Some(k.clone()),
            _ => None,
        })
        .collect()
}

async fn commit_loop(
    store: Arc<dyn KvStore>,
    mut rx: mpsc::UnboundedReceiver<Entry>,
    fatal: CancellationToken,
    mut guarded: HashMap<Vec<u8>, i64>,
) {
    let mut batch: Vec<Entry> = Vec::new();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let started = std::time::Instant::now();
        let entries = batch.len();
        // Runs of plain entries are merged; an entry that writes a guarded key is its own
        // compare-and-swap transaction, in order.
        let mut result = Ok(());
        let mut plain: Vec<Vec<TxnOp>> = Vec::new();
        for entry in batch.iter_mut() {
            let ops = std::mem::take(&mut entry.ops);
            let keys = guarded_keys(&ops);
            if keys.is_empty() {
                plain.push(ops);
                continue;
            }
            if let Err(e) = store.apply_batch(std::mem::take(&mut plain)).await {
                result = Err(format!("state store write failed: {e}"));
                break;
            }
            let txn = Txn {
                compares: keys
                    .iter()
                    .map(|k| Compare::ModRevision(k.clone(), guarded.get(k).copied().unwrap_or(0)))
                    .collect(),
                success: ops,
                failure: Vec::new(),
            };
            match store.txn(txn).await {
                Ok(r) if r.succeeded => {
                    for k in keys {
                        guarded.insert(k, r.revision);
                    }
                }
                Ok(_) => {
                    result = Err(
                        "a champion pointer was changed by another writer; refusing to overwrite it"
                            .to_owned(),
                    );
                    break;
                }
                Err(e) => {
                    result = Err(format!("state store write failed: {e}"));
                    break;
                }
            }
        }
        if result.is_ok()
            && let Err(e) = store.apply_batch(plain).await
        {
            result = Err(format!("state store write failed: {e}"));
        }
        let took = started.elapsed();
        crate::metrics::get()
            .store_commit
            .observe(took.as_secs_f64());
        if took > SLOW_COMMIT {
            tracing::warn!(?took, entries, "slow state commit");
        }
        if let Err(message) = &result {
            tracing::error!(error = %message, "cannot persist state; stopping this replica");
            fatal.cancel();
        }
        for entry in batch.drain(..) {
            let _ = entry.done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainfleet_core::kv::embedded::EmbeddedStore;

    #[tokio::test]
    async fn entries_commit_in_order_and_acks_mean_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn KvStore> =
            Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
        let (journal, handle) =
            Journal::start(store.clone(), CancellationToken::new(), HashMap::new());
        let acks: Vec<Ack> = (0..100)
            .map(|i| journal.record(vec![TxnOp::Put(b"k".to_vec(), format!("{i}").into())]))
            .collect();
        for ack in acks {
            ack.durable().await.unwrap();
        }
        assert_eq!(store.get(b"k").await.unwrap().unwrap().value, b"99");
        assert_eq!(store.get(b"k").await.unwrap().unwrap().version, 100);
        drop(journal);
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn a_champion_pointer_moved_behind_the_journal_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn KvStore> =
            Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
        let key = b"/trainfleet/champions/abc".to_vec();
        let fatal = CancellationToken::new();
        let (journal, handle) = Journal::start(store.clone(), fatal.clone(), HashMap::new());
        let put = |v: &str| {
            vec![
                TxnOp::Put(key.clone(), v.into()),
                TxnOp::Put(b"other".to_vec(), v.into()),
            ]
        };
        journal.record(put("m1")).durable().await.unwrap();
        journal.record(put("m2")).durable().await.unwrap();
        assert_eq!(store.get(&key).await.unwrap().unwrap().value, b"m2");

        // Someone else moves the pointer: the journal's next pointer write is refused whole.
        store.put(&key, b"intruder").await.unwrap();
        let err = journal.record(put("m3")).durable().await.unwrap_err();
        assert!(err.contains("changed by another writer"), "{err}");
        assert!(fatal.is_cancelled());
        assert_eq!(store.get(&key).await.unwrap().unwrap().value, b"intruder");
        assert_eq!(store.get(b"other").await.unwrap().unwrap().value, b"m2");
        drop(journal);
        handle.await.unwrap();
    }
}
