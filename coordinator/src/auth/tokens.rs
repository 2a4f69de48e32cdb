//! Bearer tokens: made at random, shown once, stored only as a SHA-256 hash, compared in
//! constant time.
//!
//! A secret reads `tf_<id>_<64 hex digits>`: the id (8 hex digits) finds the record without a
//! scan, the 256 random bits are what proves it. The record under `/trainfleet/tokens/<id>`
//! holds the hash, so whoever reads the store (a backup, `etcdctl`) learns no usable token.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Role;
use crate::records::ROOT;

/// A token as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id (the `tf_<id>_` part).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the whole secret, hex.
    pub hash: String,
    /// When it was made.
    pub created_at: SystemTime,
    /// When it stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<SystemTime>,
    /// Name of the token that made it.
    #[serde(default)]
    pub created_by: String,
}

impl TokenRecord {
    /// Whether it has expired at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// Prefix of the token records.
pub fn tokens_prefix() -> String {
    format!("{ROOT}tokens/")
}

/// Key of token `id`.
pub fn token_key(id: &str) -> Vec<u8> {
    format!("{ROOT}tokens/{id}").into_bytes()
}

/// A new token: its record and its secret.
pub fn generate(
    name: &str,
    role: Role,
    ttl: Option<Duration>,
    created_by: &str,
) -> (TokenRecord, String) {
    let id = format!("{:08x}", rand::random::<u32>());
    let secret: [u8; 32] = rand::random();
    let secret = format!("tf_{id}_{}", hex::encode(secret));
    let now = SystemTime::now();
    let record = TokenRecord {
        id,
        name: name.to_owned(),
        role,
        hash: hash(&secret),
        created_at: now,
        expires_at: ttl.filter(|d| !d.is_zero()).map(|d| now + d),
        created_by: created_by.to_owned(),
    };
    (record, secret)
}

/// SHA-256 of a secret, hex.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The id of a secret shaped like ours (`tf_<8 hex>_<64 hex>`).
pub fn id_of(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix("tf_")?;
    let (id, random) = rest.split_once('_')?;
    (id.len() == 8
        && random.len() == 64
        && id
            .bytes()
            .chain(random.bytes())
            .all(|b| b.is_ascii_hexdigit()))
    .then_some(id)
}

/// Whether `secret` hashes to `expected_hash`, in time that does not depend on where they differ.
pub fn matches(secret: &str, expected_hash: &str) -> bool {
    hash(secret)
        .as_bytes()
        .ct_eq(expected_hash.as_bytes())
        .into()
}

/// Checks a token name: 1-64 of `[A-Za-z0-9._-]`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1-64 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("has {c:?}; use letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_proves_itself_and_nothing_else_does() {
        let (record, secret) = generate("ci", Role::Submitter, None, "bootstrap");
        assert_eq!(id_of(&secret), Some(record.id.as_str()));
        assert!(matches(&secret, &record.hash));
        assert!(!secret.contains(&record.hash), "the hash is not the secret");
        let mut other = secret.clone();
        other.replace_range(
            secret.len() - 1..,
            if secret.ends_with('0') { "1" } else { "0" },
        );
        assert!(!matches(&other, &record.hash));
        assert_eq!(id_of("tf_123_abc"), None);
        assert_eq!(id_of("Bearer something"), None);
        let (again, second) = generate("ci", Role::Submitter, None, "bootstrap");
        assert_ne!(second, secret);
        assert_ne!(again.hash, record.hash);
    }

    #[test]
    fn expiry_and_names() {
        let (record, _) = generate("x", Role::Viewer, Some(Duration::from_secs(60)), "a");
        assert!(!record.expired(SystemTime::now()));
        assert!(record.expired(SystemTime::now() + Duration::from_secs(61)));
        let (forever, _) = generate("y", Role::Viewer, Some(Duration::ZERO), "a");
        assert_eq!(forever.expires_at, None);
        assert!(validate_name("ci-pipeline_2.0").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a b").unwrap_err().contains("' '"));
    }
}
