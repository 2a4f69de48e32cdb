//! Stable splits from content hashes.
//!
//! An item's split is a pure function of its bytes, so items never move between splits as a
//! dataset grows: the test set only gains items, and a model's held-out data stays held out.
//! Three independent 64-bit slices of one sha256 decide the three questions (test? validation?
//! in the `fraction` subset?), so the choices do not correlate. Each decision is per item, so the
//! splits are stratified in expectation for every class, and stay stable as a class grows.

use sha2::{Digest, Sha256};

/// Where an item goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// Training (and in the `fraction` subset).
    Train,
    /// Carved out of training for validation.
    Validation,
    /// Held out for testing.
    Test,
    /// Training, but outside the `fraction` subset: unused this run.
    Unused,
}

/// The hash of an item: its label and its bytes.
pub fn item_hash(label: i64, bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(label.to_le_bytes());
    h.update(bytes);
    h.finalize().into()
}

fn slice(hash: &[u8; 32], i: usize) -> u64 {
    u64::from_le_bytes(hash[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

/// Below `pct` percent, with 1/10000 resolution.
fn below(value: u64, pct: f64) -> bool {
    ((value % 10_000) as f64) < pct * 100.0
}

/// Assigns an item. `test_pct` applies only when the dataset has no official test split (pass 0
/// otherwise); `validation_pct` carves validation out of what remains; `fraction` keeps a stable
/// subset of training.
pub fn assign(hash: &[u8; 32], test_pct: u32, validation_pct: u32, fraction: f64) -> Assignment {
    if below(slice(hash, 0), test_pct as f64) {
        Assignment::Test
    } else if below(slice(hash, 1), validation_pct as f64) {
        Assignment::Validation
    } else if below(slice(hash, 2), fraction * 100.0) {
        Assignment::Train
    } else {
        Assignment::Unused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportions_hold_and_assignment_is_stable() {
        let hashes: Vec<[u8; 32]> = (0..20_000i64)
            .map(|i| item_hash(i % 10, &i.to_le_bytes()))
            .collect();
        let count = |a: Assignment| {
            hashes
                .iter()
                .filter(|h| assign(h, 20, 10, 0.5) == a)
                .count()
        };
        let (test, val, train) = (
            count(Assignment::Test),
            count(Assignment::Validation),
            count(Assignment::Train),
        );
        assert!((3700..4300).contains(&test), "test {test}");
        assert!(
            (1400..1800).contains(&val),
            "val {val} (10% of the remaining 80%)"
        );
        assert!(
            (6900..7500).contains(&train),
            "train {train} (half of the rest)"
        );
        // Growing the fraction only adds training items; nothing leaves test or validation.
        for h in &hashes {
            let (half, full) = (assign(h, 20, 10, 0.5), assign(h, 20, 10, 1.0));
            match half {
                Assignment::Unused => assert_eq!(full, Assignment::Train),
                other => assert_eq!(full, other),
            }
        }
    }
}
