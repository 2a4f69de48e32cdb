//! Who may call what. With `auth.enabled`, every call but health carries a bearer token; the
//! [`layer`] finds the token's role and checks it against the one table of [`rules`] before
//! the call reaches a service (or is forwarded to the leader, which checks again).
//!
//! - [`rules`]: method → the roles allowed; anything not in the table is refused.
//! - [`tokens`]: token secrets, their hashes and records.
//! - [`layer`]: the tower layer that authenticates and authorizes each HTTP/2 request.
//! - [`audit`]: the trail of state-changing and refused calls, kept in the store.
//!
//! Every replica keeps the token records in memory ([`Access`]), refreshed from the state store
//! every [`REFRESH`] (so a revocation reaches every replica within a second); the leader also
//! applies its own writes at once. The bootstrap secret is read from a file at start and is
//! never stored.

pub mod audit;
pub mod layer;
pub mod rules;
pub mod tokens;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use trainfleet_core::config::AuthConfig;
use trainfleet_core::kv::KvStore;

use crate::error::{Error, Result};
use tokens::TokenRecord;

/// How often each replica reloads the token records.
pub const REFRESH: Duration = Duration::from_millis(250);
/// Name of the caller who presents the bootstrap secret.
pub const BOOTSTRAP: &str = "bootstrap";
/// Shortest bootstrap secret accepted.
const MIN_BOOTSTRAP_CHARS: usize = 32;

/// What a token's holder may do. Ordered: viewer < submitter < admin (worker stands apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads only.
    Viewer,
    /// Reads, jobs (its own), scans and retrains.
    Submitter,
    /// Everything public.
    Admin,
    /// The worker protocol only.
    Worker,
}

impl Role {
    /// The role's name as users write it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Submitter => "submitter",
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }
}

/// Who is calling, as the layer established it (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (`bootstrap`, or `anonymous` with access control off).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The worker its client certificate names: it may act only as that worker.
    pub worker: Option<String>,
}

impl Caller {
    /// The caller of a request; with access control off (or in unit tests) anyone is an admin.
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::anonymous)
    }

    /// Anyone, with access control off.
    pub fn anonymous() -> Caller {
        Self::named("anonymous", Role::Admin)
    }

    /// A caller known by a token (no certificate binding).
    pub fn named(name: &str, role: Role) -> Caller {
        Caller {
            name: name.to_owned(),
            role,
            worker: None,
        }
    }

    /// The worker a verified client certificate names (`worker/<id>` in the audit trail).
    pub fn worker(id: &str) -> Caller {
        Caller {
            name: format!("worker/{id}"),
            role: Role::Worker,
            worker: Some(id.to_owned()),
        }
    }

    /// Refuses a worker-protocol call naming `worker_id` when the connection's certificate
    /// names another worker. Without a certificate (a worker token), nothing binds the id.
    pub fn act_as(&self, worker_id: &str) -> std::result::Result<(), tonic::Status> {
        match &self.worker {
            Some(own) if own != worker_id => Err(tonic::Status::permission_denied(format!(
                "this connection's certificate names worker `{own}`; it may not act as worker \
                 `{worker_id}`"
            ))),
            _ => Ok(()),
        }
    }
}

/// One replica's view of who may call: on or off, the bootstrap secret's hash and the tokens.
#[derive(Debug)]
pub struct Access {
    enabled: bool,
    /// The bootstrap secret and the static tokens: (hash, who), read from files at start.
    fixed: Vec<(String, Caller)>,
    tokens: RwLock<HashMap<String, TokenRecord>>,
}

impl Access {
    /// From the settings; reads the bootstrap secret's and the static tokens' files.
    pub fn new(config: &AuthConfig) -> Result<Self> {
        let mut fixed = Vec::new();
        if let Some(path) = &config.bootstrap_token_file {
            let hash = read_secret(path, "auth.bootstrap_token_file")?;
            fixed.push((hash, Caller::named(BOOTSTRAP, Role::Admin)));
        }
        for (i, token) in config.static_tokens.iter().enumerate() {
            let role = match token.role.as_str() {
                "viewer" => Role::Viewer,
                "submitter" => Role::Submitter,
                "admin" => Role::Admin,
                _ => Role::Worker,
            };
            let hash = read_secret(&token.file, &format!("auth.static_tokens[{i}].file"))?;
            fixed.push((hash, Caller::named(&token.name, role)));
        }
        if config.enabled && fixed.is_empty() {
            tracing::warn!(
                "access control is on without auth.bootstrap_token_file: only tokens already \
                 in the store can call"
            );
        }
        Ok(Self {
            enabled: config.enabled,
            fixed,
            tokens: RwLock::new(HashMap::new()),
        })
    }

    /// Whether `name` is taken by the bootstrap secret or a static token.
    pub fn is_fixed_name(&self, name: &str) -> bool {
        self.fixed.iter().any(|(_, c)| c.name == name)
    }

    /// Whether tokens are required.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The caller presenting `secret`, or why not.
    pub fn authenticate(&self, secret: &str) -> std::result::Result<Caller, &'static str> {
        let found = tokens::id_of(secret).and_then(|id| {
            let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
            tokens.get(id).cloned()
        });
        if let Some(record) = found {
            if !tokens::matches(secret, &record.hash) {
                return Err("unknown or revoked token");
            }
            if record.expired(SystemTime::now()) {
                return Err("expired token");
            }
            return Ok(Caller::named(&record.name, record.role));
        }
        // Every fixed secret is compared, so the time taken does not say which one matched.
        let presented = tokens::hash(secret);
        let mut found = None;
        for (hash, caller) in &self.fixed {
            if bool::from(presented.as_bytes().ct_eq(hash.as_bytes())) {
                found = Some(caller.clone());
            }
        }
        found.ok_or("unknown or revoked token")
    }

    /// Replaces every record (a reload from the store).
    pub fn replace(&self, records: Vec<TokenRecord>) {
        let map = records.into_iter().map(|r| (r.id.clone(), r)).collect();
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    /// Adds or replaces one record (the leader's own write).
    pub fn upsert(&self, record: TokenRecord) {
        self.tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.id.clone(), record);
    }

    /// Forgets one record (the leader's own revocation).
    pub fn remove(&self, id: &str) {
        self.tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// The hash of the secret in `path` (at least 32 characters); `what` names the setting.
fn read_secret(path: &std::path::Path, what: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::FailedPrecondition(format!("{what} {}: {e}", path.display())))?;
    let secret = text.trim();
    if secret.chars().count() < MIN_BOOTSTRAP_CHARS {
        return Err(Error::FailedPrecondition(format!(
            "{what} {}: the secret has {} characters; use at least {MIN_BOOTSTRAP_CHARS} (e.g. \
             `openssl rand -hex 32`)",
            path.display(),
            secret.chars().count()
        )));
    }
    Ok(tokens::hash(secret))
}

/// Reads every token record from `store`.
pub async fn load_tokens(store: &dyn KvStore) -> Result<Vec<TokenRecord>> {
    let kvs = store
        .prefix(tokens::tokens_prefix().as_bytes())
        .await
        .map_err(|e| Error::Store(format!("state store: reading tokens: {e}")))?;
    let mut records = Vec::with_capacity(kvs.len());
    for kv in kvs {
        match serde_json::from_slice::<TokenRecord>(&kv.value) {
            Ok(r) => records.push(r),
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(&kv.key), error = %e, "ignoring an unreadable token record")
            }
        }
    }
    Ok(records)
}

/// Keeps `access` in step with the token records in `store` until `shutdown`.
pub async fn run_refresher(
    access: Arc<Access>,
    store: Arc<dyn KvStore>,
    shutdown: CancellationToken,
) {
    if !access.enabled() {
        return;
    }
    let mut failing = false;
    loop {
        match load_tokens(store.as_ref()).await {
            Ok(records) => {
                access.replace(records);
                failing = false;
            }
            // Keep the last known tokens: a store hiccup must not lock everyone out, and a
            // revocation still lands once the store answers.
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot reload tokens; keeping the last known");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(REFRESH) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
