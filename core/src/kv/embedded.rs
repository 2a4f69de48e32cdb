//! The embedded store: one redb file (a well-kept, pure-Rust, ACID embedded database). Each
//! [`Txn`](super::Txn) is one redb write transaction, durable when it returns. redb is
//! synchronous, so calls run on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Compare, KeyRange, KeyValue, KvStore, Txn, TxnOp, TxnResponse};
use crate::{Error, Result};

/// Key → [create_revision, mod_revision, version (i64 LE each)] ++ value.
const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// "revision" → the store revision.
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const HEADER: usize = 24;
/// redb's page cache. The coordinator keeps its working state in memory and reads the store only
/// at start, so a small cache is enough (redb's default of 1 GiB would grow with the database).
const CACHE_BYTES: usize = 32 << 20;

/// A file-backed store for one machine.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

fn store_error(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Store(format!("{}: {what}: {e}", path.display()))
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`. Fails if another process holds it open.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| store_error(dir, "cannot create directory", e))?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| store_error(path, "cannot open the state database", e))?;
        let txn = db
            .begin_write()
            .map_err(|e| store_error(path, "begin", e))?;
        {
            txn.open_table(KV)
                .map_err(|e| store_error(path, "open table", e))?;
            txn.open_table(META)
                .map_err(|e| store_error(path, "open table", e))?;
        }
        txn.commit().map_err(|e| store_error(path, "commit", e))?;
        Ok(Self {
            db: Arc::new(db),
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database, &Path) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (db, path) = (self.db.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || f(&db, &path))
            .await
            .map_err(|e| Error::Store(format!("store task failed: {e}")))?
    }
}

fn decode(path: &Path, key: &[u8], raw: &[u8]) -> Result<KeyValue> {
    if raw.len() < HEADER {
        return Err(store_error(
            path,
            "corrupt record",
            format!(
                "key {:?} holds {} bytes, less than the {HEADER}-byte header",
                String::from_utf8_lossy(key),
                raw.len()
            ),
        ));
    }
    let field = |i: usize| {
        i64::from_le_bytes(
            raw[i * 8..i * 8 + 8]
                .try_into()
                .expect("header length checked"),
        )
    };
    Ok(KeyValue {
        key: key.to_vec(),
        create_revision: field(0),
        mod_revision: field(1),
        version: field(2),
        value: raw[HEADER..].to_vec(),
    })
}

fn encode(kv_create: i64, kv_mod: i64, version: i64, value: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(HEADER + value.len());
    raw.extend_from_slice(&kv_create.to_le_bytes());
    raw.extend_from_slice(&kv_mod.to_le_bytes());
    raw.extend_from_slice(&version.to_le_bytes());
    raw.extend_from_slice(value);
    raw
}

#[async_trait::async_trait]
impl KvStore for EmbeddedStore {
    async fn range(&self, range: KeyRange) -> Result<Vec<KeyValue>> {
        self.blocking(move |db, path| {
            let err = |what: &str, e: &dyn std::fmt::Display| store_error(path, what, e);
            let txn = db.begin_read().map_err(|e| err("begin read", &e))?;
            let table = txn.open_table(KV).map_err(|e| err("open table", &e))?;
            let mut out = Vec::new();
            match &range.end {
                None => {
                    if let Some(v) = table
                        .get(range.start.as_slice())
                        .map_err(|e| err("get", &e))?
                    {
                        out.push(decode(path, &range.start, v.value())?);
                    }
                }
                Some(_) => {
                    let iter = if range.is_unbounded() {
                        table.range(range.start.as_slice()..)
                    } else {
                        let end = range.end.as_deref().expect("bounded");
                        table.range(range.start.as_slice()..end)
                    }
                    .map_err(|e| err("range", &e))?;
                    for item in iter {
                        let (k, v) = item.map_err(|e| err("range", &e))?;
                        out.push(decode(path, k.value(), v.value())?);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let mut responses = self.txn_batch(vec![txn]).await?;
        Ok(responses.pop().expect("one response per transaction"))
    }

    async fn txn_batch(&self, txns: Vec<Txn>) -> Result<Vec<TxnResponse>> {
        self.blocking(move |db, path| {
            let err = |what: &str, e: &dyn std::fmt::Display| store_error(path, what, e);
            let write = db.begin_write().map_err(|e| err("begin write", &e))?;
            let mut responses = Vec::with_capacity(txns.len());
            {
                let mut kv = write.open_table(KV).map_err(|e| err("open table", &e))?;
                let mut meta = write.open_table(META).map_err(|e| err("open table", &e))?;
                let mut current = meta
                    .get("revision")
                    .map_err(|e| err("get revision", &e))?
                    .map_or(0, |v| v.value());
                let start = current;
                for txn in &txns {
                    let response = apply(&mut kv, path, current, txn)?;
                    current = response.revision;
                    responses.push(response);
                }
                if current != start {
                    meta.insert("revision", current)
                        .map_err(|e| err("set revision", &e))?;
                }
            }
            write.commit().map_err(|e| err("commit", &e))?;
            Ok(responses)
        })
        .await
    }
}

/// Applies one transaction inside an open write transaction whose revision is `current`.
fn apply(
    kv: &mut redb::Table<&[u8], &[u8]>,
    path: &Path,
    current: i64,
    txn: &Txn,
) -> Result<TxnResponse> {
    let err = |what: &str, e: &dyn std::fmt::Display| store_error(path, what, e);
    let lookup = |kv: &redb::Table<&[u8], &[u8]>, key: &[u8]| -> Result<Option<KeyValue>> {
        kv.get(key)
            .map_err(|e| err("get", &e))?
            .map(|v| decode(path, key, v.value()))
            .transpose()
    };
    let mut holds = true;
    for compare in &txn.compares {
        let ok = match compare {
            Compare::ModRevision(key, rev) => {
                lookup(kv, key)?.map_or(0, |k| k.mod_revision) == *rev
            }
            Compare::Value(key, value) => lookup(kv, key)?.is_some_and(|k| &k.value == value),
        };
        if !ok {
            holds = false;
            break;
        }
    }
    let ops = if holds { &txn.success } else { &txn.failure };
    let next = current + 1;
    let mut changed = false;
    for op in ops {
        match op {
            TxnOp::Put(key, value) => {
                let (create, version) =
                    lookup(kv, key)?.map_or((next, 1), |k| (k.create_revision, k.version + 1));
                kv.insert(
                    key.as_slice(),
                    encode(create, next, version, value).as_slice(),
                )
                .map_err(|e| err("put", &e))?;
                changed = true;
            }
            TxnOp::Delete(key) => {
                changed |= kv
                    .remove(key.as_slice())
                    .map_err(|e| err("delete", &e))?
                    .is_some();
            }
        }
    }
    Ok(TxnResponse {
        succeeded: holds,
        revision: if changed { next } else { current },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("state.redb")).unwrap();
        super::super::conformance::run_all(&store).await;
        super::super::conformance::run_concurrent(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn state_and_revisions_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state.redb");
        let (rev, kv) = {
            let store = EmbeddedStore::open(&path).unwrap();
            store.put(b"jobs/1", b"queued").await.unwrap();
            let rev = store.put(b"jobs/1", b"running").await.unwrap();
            (rev, store.get(b"jobs/1").await.unwrap().unwrap())
        };
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(store.get(b"jobs/1").await.unwrap().unwrap(), kv);
        assert_eq!(
            store.put(b"jobs/2", b"x").await.unwrap(),
            rev + 1,
            "the revision counter persisted"
        );
    }

    #[tokio::test]
    async fn a_second_opener_is_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let _first = EmbeddedStore::open(&path).unwrap();
        let err = EmbeddedStore::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("state.redb") && err.contains("cannot open the state database"),
            "{err}"
        );
    }
}
