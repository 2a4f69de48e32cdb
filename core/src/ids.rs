//! Identifier rules shared by both sides of the wire.

use crate::{Error, Result};

/// Longest accepted worker id.
pub const MAX_WORKER_ID_LEN: usize = 128;

/// Checks a worker id: 1..=128 characters of `[A-Za-z0-9._-]`. Ids show up in logs, metrics
/// labels and (later) etcd keys, so anything that needs quoting there is refused up front.
pub fn validate_worker_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid_field(field, "must not be empty"));
    }
    if id.len() > MAX_WORKER_ID_LEN {
        return Err(Error::invalid_field(
            field,
            format!(
                "is {} characters long; the limit is {MAX_WORKER_ID_LEN}",
                id.len()
            ),
        ));
    }
    if let Some((at, bad)) = id
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::invalid_field(
            field,
            format!("has {bad:?} at offset {at}; use only letters, digits, '.', '_' and '-'"),
        ));
    }
    Ok(())
}

/// Turns an arbitrary host name into a string that passes [`validate_worker_id`].
pub fn sanitize_for_id(raw: &str) -> String {
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_WORKER_ID_LEN - 9)
        .collect();
    if cleaned.is_empty() {
        "worker".to_owned()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_ids_and_rejects_the_rest() {
        validate_worker_id("worker_id", "gpu-box.eu_1").unwrap();
        let err = validate_worker_id("worker_id", "").unwrap_err().to_string();
        assert_eq!(err, "`worker_id` must not be empty");
        let err = validate_worker_id("worker_id", "a b")
            .unwrap_err()
            .to_string();
        assert!(err.contains("' ' at offset 1"), "{err}");
        let long = "x".repeat(MAX_WORKER_ID_LEN + 1);
        assert!(validate_worker_id("worker_id", &long).is_err());
    }

    #[test]
    fn sanitized_host_names_are_valid_ids() {
        for raw in ["", "my host", "höst/1", &"h".repeat(300)] {
            let id = format!("{}-abcdefgh", sanitize_for_id(raw));
            validate_worker_id("worker_id", &id).unwrap();
        }
    }
}
