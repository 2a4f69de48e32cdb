//! The key-value store behind all coordinator state: a small trait with the semantics of etcd's
//! KV API, so that the embedded store (one machine) and etcd (a cluster) are interchangeable.
//!
//! - Every successful write transaction advances one store-wide **revision**; each key records
//!   the revision that created it, the revision that last modified it, and how many times it was
//!   written (`version`).
//! - [`Txn`] is the only write primitive: if every [`Compare`] holds, the `success` operations
//!   apply atomically, else the `failure` ones. Compare-and-swap on a key's `mod_revision` (0
//!   means "absent") is how every state transition avoids lost updates.
//! - Required methods are `range` and `txn`; `get`, `put`, `delete`, `prefix` and
//!   `compare_and_put` are provided on top.
//!
//! Implementations: [`embedded::EmbeddedStore`] (redb, file-backed, ACID) and
//! [`etcd::EtcdStore`] (a cluster's namespace in etcd). The [`conformance`] suite runs against
//! both.

pub mod conformance;
pub mod embedded;
pub mod etcd;

use crate::Result;

/// A stored key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the transaction that created the key (since it last did not exist).
    pub create_revision: i64,
    /// Revision of the transaction that last wrote it.
    pub mod_revision: i64,
    /// Writes since creation (1 after the first put).
    pub version: i64,
}

/// Keys `[start, end)` in byte order; `end: None` means exactly `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// First key.
    pub start: Vec<u8>,
    /// One past the last key; `None` for a single key.
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// Exactly `key`.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        Self {
            start: key.into(),
            end: None,
        }
    }

    /// Every key starting with `prefix` (etcd's "prefix end": the prefix with its last byte
    /// incremented, dropping trailing 0xff bytes; an empty prefix means every key).
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let start = prefix.into();
        let mut end = start.clone();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return Self {
                    start,
                    end: Some(end),
                };
            }
        }
        // No finite end (empty prefix, or all 0xff): `[start, ∞)`, spelled as etcd does, "\0".
        Self {
            start,
            end: Some(vec![0]),
        }
    }

    /// True when the range has no upper bound.
    pub fn is_unbounded(&self) -> bool {
        self.end.as_deref() == Some(&[0])
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            None => key == self.start.as_slice(),
            Some(_) if self.is_unbounded() => key >= self.start.as_slice(),
            Some(end) => key >= self.start.as_slice() && key < end.as_slice(),
        }
    }
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals this; 0 means the key does not exist.
    ModRevision(Vec<u8>, i64),
    /// The key exists and its value equals this.
    Value(Vec<u8>, Vec<u8>),
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Set a key.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key (no-op if absent).
    Delete(Vec<u8>),
}

/// An atomic conditional write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// All must hold for `success` to apply.
    pub compares: Vec<Compare>,
    /// Applied when every compare holds.
    pub success: Vec<TxnOp>,
    /// Applied otherwise.
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// A transaction that applies `ops` unconditionally.
    pub fn unconditional(ops: Vec<TxnOp>) -> Self {
        Self {
            compares: Vec::new(),
            success: ops,
            failure: Vec::new(),
        }
    }
}

/// What a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (and `success` applied).
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: i64,
}

/// A transactional, revisioned key-value store.
#[async_trait::async_trait]
pub trait KvStore: Send + Sync + std::fmt::Debug {
    /// Keys in `range`, in byte order.
    async fn range(&self, range: KeyRange) -> Result<Vec<KeyValue>>;

    /// Applies `txn` atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse>;

    /// Applies `txns` in order, each atomically and each seeing the ones before it; one response
    /// per transaction. A store may commit them together (group commit: the embedded store makes
    /// them one durable write), so a burst of small state changes costs one sync, not one each.
    /// On an error none of them is known to have applied.
    async fn txn_batch(&self, txns: Vec<Txn>) -> Result<Vec<TxnResponse>> {
        let mut responses = Vec::with_capacity(txns.len());
        for txn in txns {
            responses.push(self.txn(txn).await?);
        }
        Ok(responses)
    }

    /// Applies batches of unconditional writes in order (a key written twice ends with its last
    /// value): the coordinator's journal commit. By default one [`KvStore::txn_batch`]; etcd
    /// merges the batches into as few transactions as its limits allow (one write per key),
    /// so a burst of state changes costs one round trip. Fencing applies as to any write.
    async fn apply_batch(&self, batches: Vec<Vec<TxnOp>>) -> Result<()> {
        self.txn_batch(batches.into_iter().map(Txn::unconditional).collect())
            .await
            .map(|_| ())
    }

    /// The key, if present.
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        Ok(self.range(KeyRange::key(key)).await?.pop())
    }

    /// Every key under `prefix`.
    async fn prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>> {
        self.range(KeyRange::prefix(prefix)).await
    }

    /// Sets `key`; returns the new store revision.
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<i64> {
        let txn = Txn::unconditional(vec![TxnOp::Put(key.to_vec(), value.to_vec())]);
        Ok(self.txn(txn).await?.revision)
    }

    /// Removes `key`; returns whether it existed.
    async fn delete(&self, key: &[u8]) -> Result<bool> {
        // Absent: the compare holds and nothing happens. Present: the failure branch deletes it.
        let txn = Txn {
            compares: vec![Compare::ModRevision(key.to_vec(), 0)],
            success: Vec::new(),
            failure: vec![TxnOp::Delete(key.to_vec())],
        };
        Ok(!self.txn(txn).await?.succeeded)
    }

    /// Sets `key` only if its `mod_revision` is `expected` (0: only if absent). Returns whether
    /// it was written.
    async fn compare_and_put(&self, key: &[u8], expected: i64, value: &[u8]) -> Result<bool> {
        let txn = Txn {
            compares: vec![Compare::ModRevision(key.to_vec(), expected)],
            success: vec![TxnOp::Put(key.to_vec(), value.to_vec())],
            failure: Vec::new(),
        };
        Ok(self.txn(txn).await?.succeeded)
    }
}
