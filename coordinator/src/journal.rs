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

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use trainfleet_core::kv::{KvStore, TxnOp};

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
    /// backlog is written. A store failure cancels `fatal`.
    pub fn start(
        store: Arc<dyn KvStore>,
        fatal: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(commit_loop(store, rx, fatal));
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

async fn commit_loop(
    store: Arc<dyn KvStore>,
    mut rx: mpsc::UnboundedReceiver<Entry>,
    fatal: CancellationToken,
) {
    let mut batch: Vec<Entry> = Vec::new();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let ops = batch
            .iter_mut()
            .map(|e| std::mem::take(&mut e.ops))
            .collect();
        let started = std::time::Instant::now();
        let entries = batch.len();
        let result = store
            .apply_batch(ops)
            .await
            .map_err(|e| format!("state store write failed: {e}"));
        let took = started.elapsed();
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
        let (journal, handle) = Journal::start(store.clone(), CancellationToken::new());
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
}
