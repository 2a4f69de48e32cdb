//! [`KvStore`] on etcd: every key under one prefix per cluster, the store's revisions etcd's own.
//!
//! A client per endpoint rather than one balanced channel: etcd-client's balanced channel keeps
//! sending a share of the calls to a member that died. Calls go to the member that answered
//! last; when one cannot be reached (`UNAVAILABLE`, a transport error) the call moves on to the
//! next member, so a dead member costs one failed attempt, not a fifth of all calls. A write
//! retried this way may have applied before the connection broke; the coordinator's writes are
//! idempotent puts guarded by compares, so applying one twice changes nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions, Txn as EtcdTxn,
    TxnOp as EtcdOp,
};
use tokio::sync::Mutex;

use super::{Compare, KeyRange, KeyValue, KvStore, Txn, TxnOp, TxnResponse};
use crate::{Error, Result};

/// Keys per page of a range read (see `range`).
const RANGE_PAGE: i64 = 256;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs of the members, e.g. `http://10.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Every key this store reads or writes starts with this (one cluster's namespace).
    pub prefix: String,
    /// Deadline of one call to one member.
    pub call_timeout: Duration,
    /// Deadline of connecting to one member.
    pub connect_timeout: Duration,
    /// User name and password, when etcd has authentication on.
    pub user: Option<(String, String)>,
    /// TLS to the members (their endpoints are `https://`).
    pub tls: Option<EtcdTls>,
}

/// TLS settings: PEM files.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    /// The CA that signed the members' certificates.
    pub ca_file: std::path::PathBuf,
    /// A client certificate, when the members require one (`--client-cert-auth`).
    pub cert_file: Option<std::path::PathBuf>,
    /// Its private key.
    pub key_file: Option<std::path::PathBuf>,
    /// The name the members' certificates carry, when it is not the endpoint's host.
    pub server_name: Option<String>,
}

impl EtcdTls {
    /// Reads the files into the client's TLS settings.
    fn load(&self) -> Result<etcd_client::TlsOptions> {
        let read = |field: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| {
                Error::invalid_field(
                    format!("etcd.tls.{field}"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })
        };
        let mut tls = etcd_client::TlsOptions::new().ca_certificate(
            etcd_client::Certificate::from_pem(read("ca_file", &self.ca_file)?),
        );
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(etcd_client::Identity::from_pem(
                    read("cert_file", cert)?,
                    read("key_file", key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(Error::invalid_field(
                    "etcd.tls.cert_file",
                    "and etcd.tls.key_file go together",
                ));
            }
        }
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(tls)
    }
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/trainfleet".into(),
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            user: None,
            tls: None,
        }
    }
}

struct Member {
    endpoint: String,
    client: Mutex<Option<Client>>,
}

struct Shared {
    options: EtcdOptions,
    tls: Option<etcd_client::TlsOptions>,
    prefix: Vec<u8>,
    members: Vec<Member>,
    preferred: AtomicUsize,
}

/// The etcd-backed store. Clones share the connections; a [`EtcdStore::fenced`] view makes
/// every write conditional on a leader key.
#[derive(Clone)]
pub struct EtcdStore {
    shared: std::sync::Arc<Shared>,
    /// (full etcd key, mod revision) that every transaction compares first.
    fence: Option<(Vec<u8>, i64)>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.shared.options.endpoints)
            .field("prefix", &self.shared.options.prefix)
            .field("fenced", &self.fence.is_some())
            .finish_non_exhaustive()
    }
}

fn store_error(what: impl std::fmt::Display) -> Error {
    Error::Store(format!("etcd: {what}"))
}

/// Whether a call failed before reaching a member's state machine (so another member may be
/// tried).
fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        // gRPC codes CANCELLED (1: the client's own deadline), UNKNOWN (2: a broken
        // connection), DEADLINE_EXCEEDED (4), UNAVAILABLE (14: also "leader changed"); compared
        // by number so that `core` stays free of tonic.
        etcd_client::Error::GRpcStatus(s) => matches!(s.code() as i32, 1 | 2 | 4 | 14),
        _ => false,
    }
}

impl EtcdStore {
    /// Connects to the members (those that are down are tried again on use). Fails only when
    /// the options are unusable or no member answers.
    pub async fn connect(options: EtcdOptions) -> Result<Self> {
        if options.endpoints.is_empty() {
            return Err(Error::invalid_field("etcd.endpoints", "is empty"));
        }
        if !options.prefix.starts_with('/') {
            return Err(Error::invalid_field(
                "etcd.prefix",
                format!("is {:?}; it must start with '/'", options.prefix),
            ));
        }
        let mut prefix = options.prefix.clone().into_bytes();
        if !prefix.ends_with(b"/") {
            prefix.push(b'/');
        }
        let tls = options.tls.as_ref().map(EtcdTls::load).transpose()?;
        let store = Self {
            shared: std::sync::Arc::new(Shared {
                tls,
                members: options
                    .endpoints
                    .iter()
                    .map(|e| Member {
                        endpoint: e.clone(),
                        client: Mutex::new(None),
                    })
                    .collect(),
                prefix,
                options,
                preferred: AtomicUsize::new(0),
            }),
            fence: None,
        };
        // One round trip proves the cluster is there (and finds a live member).
        store.range(KeyRange::key(b"/".to_vec())).await?;
        Ok(store)
    }

    /// The client URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.shared.options.endpoints
    }

    /// The full etcd key of `key`.
    pub fn full_key(&self, key: &[u8]) -> Vec<u8> {
        let mut full = self.shared.prefix.clone();
        full.extend_from_slice(key);
        full
    }

    /// A view of the store whose every write also requires that `key` (a full etcd key, such
    /// as a leader key of an election) still has mod revision `revision`: once that leadership
    /// is lost, every write fails with [`Error::Fenced`] and changes nothing.
    pub fn fenced(&self, key: Vec<u8>, revision: i64) -> EtcdStore {
        EtcdStore {
            shared: self.shared.clone(),
            fence: Some((key, revision)),
        }
    }

    /// A new client for long calls (an election campaign blocks until it wins, so it has no
    /// request deadline), connected to the first member that answers, the preferred one first.
    pub async fn session_client(&self) -> Result<Client> {
        let n = self.shared.members.len();
        let first = self.shared.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for i in 0..n {
            let index = (first + i) % n;
            let endpoint = &self.shared.members[index].endpoint;
            let mut options = ConnectOptions::new()
                .with_connect_timeout(self.shared.options.connect_timeout)
                .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1));
            if let Some((user, password)) = &self.shared.options.user {
                options = options.with_user(user.clone(), password.clone());
            }
            if let Some(tls) = &self.shared.tls {
                options = options.with_tls(tls.clone());
            }
            match Client::connect([endpoint.as_str()], Some(options)).await {
                Ok(mut client) => match client.status().await {
                    Ok(_) => {
                        self.shared.preferred.store(index, Ordering::Relaxed);
                        return Ok(client);
                    }
                    Err(e) => failures.push(format!("{endpoint}: {e}")),
                },
                Err(e) => failures.push(format!("{endpoint}: {e}")),
            }
        }
        Err(store_error(format!(
            "no member answered ({})",
            failures.join("; ")
        )))
    }

    async fn client(&self, index: usize) -> Result<Client> {
        let member = &self.shared.members[index];
        let mut slot = member.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.shared.options.connect_timeout)
            .with_timeout(self.shared.options.call_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        if let Some((user, password)) = &self.shared.options.user {
            options = options.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &self.shared.tls {
            options = options.with_tls(tls.clone());
        }
        let client = Client::connect([member.endpoint.as_str()], Some(options))
            .await
            .map_err(|e| store_error(format!("cannot connect to {}: {e}", member.endpoint)))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    async fn forget(&self, index: usize) {
        *self.shared.members[index].client.lock().await = None;
    }

    /// Runs `call` on the preferred member, moving on to the others when one is unreachable.
    async fn call<T, F, Fut>(&self, what: &str, call: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let n = self.shared.members.len();
        let first = self.shared.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for attempt in 0..2 * n {
            let index = (first + attempt) % n;
            let client = match self.client(index).await {
                Ok(c) => c,
                Err(e) => {
                    failures.push(e.to_string());
                    continue;
                }
            };
            match call(client).await {
                Ok(value) => {
                    self.shared.preferred.store(index, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(e) if unreachable(&e) => {
                    let endpoint = &self.shared.members[index].endpoint;
                    tracing::debug!(%endpoint, error = %e, "etcd member unreachable; trying the next");
                    failures.push(format!("{endpoint}: {e}"));
                    self.forget(index).await;
                    if attempt + 1 == n {
                        // Every member failed once: give a restarting one a moment.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                Err(e) => return Err(store_error(format!("{what}: {e}"))),
            }
        }
        Err(store_error(format!(
            "{what}: no member answered ({})",
            failures.join("; ")
        )))
    }

    fn to_etcd_txn(&self, txn: &Txn) -> EtcdTxn {
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|c| match c {
                Compare::ModRevision(k, rev) => {
                    EtcdCompare::mod_revision(self.full_key(k), CompareOp::Equal, *rev)
                }
                Compare::Value(k, v) => {
                    EtcdCompare::value(self.full_key(k), CompareOp::Equal, v.clone())
                }
            })
            .collect();
        let ops = |ops: &[TxnOp]| -> Vec<EtcdOp> {
            ops.iter()
                .map(|op| match op {
                    TxnOp::Put(k, v) => EtcdOp::put(self.full_key(k), v.clone(), None),
                    TxnOp::Delete(k) => EtcdOp::delete(self.full_key(k), None),
                })
                .collect()
        };
        let inner = EtcdTxn::new()
            .when(compares)
            .and_then(ops(&txn.success))
            .or_else(ops(&txn.failure));
        match &self.fence {
            None => inner,
            // etcd nests transactions: the fence decides whether the inner one runs at all.
            Some((key, revision)) => EtcdTxn::new()
                .when([EtcdCompare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    *revision,
                )])
                .and_then([EtcdOp::txn(inner)]),
        }
    }
}

/// Most keys written by one merged transaction (etcd refuses more than `--max-txn-ops`, 128 by
/// default; a fenced write nests, so stay well below).
const MAX_MERGED_KEYS: usize = 100;

#[async_trait::async_trait]
impl KvStore for EtcdStore {
    async fn apply_batch(&self, batches: Vec<Vec<TxnOp>>) -> Result<()> {
        // The last write of each key, in first-write order (etcd refuses a key twice in one txn).
        let mut order: Vec<Vec<u8>> = Vec::new();
        let mut last: std::collections::HashMap<Vec<u8>, TxnOp> = std::collections::HashMap::new();
        for op in batches.into_iter().flatten() {
            let key = match &op {
                TxnOp::Put(k, _) | TxnOp::Delete(k) => k.clone(),
            };
            if last.insert(key.clone(), op).is_none() {
                order.push(key);
            }
        }
        for chunk in order.chunks(MAX_MERGED_KEYS) {
            let ops = chunk
                .iter()
                .map(|k| last.remove(k).expect("every ordered key has an op"))
                .collect();
            self.txn(Txn::unconditional(ops)).await?;
        }
        Ok(())
    }

    async fn range(&self, range: KeyRange) -> Result<Vec<KeyValue>> {
        let start = self.full_key(&range.start);
        let end = match &range.end {
            None => None,
            Some(_) if range.is_unbounded() => KeyRange::prefix(self.shared.prefix.clone()).end,
            Some(end) => Some(self.full_key(end)),
        };
        // A range is read in pages, all at the revision of the first: one answer must fit in a
        // gRPC message (4 MiB by default), and a coordinator's whole state need not. A page too
        // large even so (records of a MiB) is asked for again at half the size.
        let skip = self.shared.prefix.len();
        let mut found = Vec::new();
        let mut from = start;
        let mut revision = 0;
        let mut limit = RANGE_PAGE;
        loop {
            let result = self
                .call("range", |mut c| {
                    let (from, end) = (from.clone(), end.clone());
                    async move {
                        let options = end.map(|e| {
                            GetOptions::new()
                                .with_range(e)
                                .with_limit(limit)
                                .with_revision(revision)
                        });
                        c.get(from, options).await
                    }
                })
                .await;
            let response = match result {
                Err(e) if limit > 1 && e.to_string().contains("message length too large") => {
                    limit /= 2;
                    continue;
                }
                other => other?,
            };
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            let kvs = response.kvs();
            found.extend(kvs.iter().map(|kv| KeyValue {
                key: kv.key()[skip..].to_vec(),
                value: kv.value().to_vec(),
                create_revision: kv.create_revision(),
                mod_revision: kv.mod_revision(),
                version: kv.version(),
            }));
            match kvs.last() {
                Some(last) if response.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(found),
            }
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let response = self
            .call("txn", |mut c| {
                let etcd_txn = self.to_etcd_txn(&txn);
                async move { c.txn(etcd_txn).await }
            })
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let succeeded = match &self.fence {
            None => response.succeeded(),
            Some((key, rev)) => {
                if !response.succeeded() {
                    return Err(Error::Fenced(format!(
                        "{} is no longer at revision {rev}",
                        String::from_utf8_lossy(key)
                    )));
                }
                match response.op_responses().into_iter().next() {
                    Some(etcd_client::TxnOpResponse::Txn(inner)) => inner.succeeded(),
                    _ => {
                        return Err(store_error(
                            "a fenced transaction answered without its inner one",
                        ));
                    }
                }
            }
        };
        Ok(TxnResponse {
            succeeded,
            revision,
        })
    }
}
