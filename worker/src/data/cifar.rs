//! CIFAR-10 and CIFAR-100 in their binary form, read straight out of the `.tar.gz`.
//!
//! A record is the label byte(s) then 3072 pixel bytes: 1024 red, 1024 green, 1024 blue, each
//! 32×32 row-major, which is already the channel-first layout the tensors use.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;
use trainfleet_core::job::DatasetSpec;

use super::{Dataset, assemble, file_sha256, identity, official_items, sample_root};
use crate::error::{Error, Result};

const PIXELS: usize = 3 * 32 * 32;
/// Largest archive member we read into memory (the real ones are 30–150 MB).
const MAX_ENTRY: u64 = 512 << 20;

/// Which CIFAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// 10 classes; records are [label, pixels].
    Cifar10,
    /// 100 fine classes; records are [coarse label, fine label, pixels].
    Cifar100,
}

impl Variant {
    fn label_bytes(self) -> usize {
        match self {
            Variant::Cifar10 => 1,
            Variant::Cifar100 => 2,
        }
    }
    fn classes(self) -> usize {
        match self {
            Variant::Cifar10 => 10,
            Variant::Cifar100 => 100,
        }
    }
    fn is_train(self, name: &str) -> Option<bool> {
        match self {
            Variant::Cifar10 if name.starts_with("data_batch_") && name.ends_with(".bin") => {
                Some(true)
            }
            Variant::Cifar10 if name == "test_batch.bin" => Some(false),
            Variant::Cifar100 if name == "train.bin" => Some(true),
            Variant::Cifar100 if name == "test.bin" => Some(false),
            _ => None,
        }
    }
    fn names_file(self) -> &'static str {
        match self {
            Variant::Cifar10 => "batches.meta.txt",
            Variant::Cifar100 => "fine_label_names.txt",
        }
    }
}

/// Loads a CIFAR archive.
pub fn load(spec: &DatasetSpec, archive: &Path, variant: Variant) -> Result<Dataset> {
    let (mut train, mut test, names) = read_archive(archive, variant)?;
    if train.is_empty() || test.is_empty() {
        return Err(Error::corrupt(
            archive,
            None,
            format!(
                "found {} training and {} test records; the archive is incomplete",
                train.len(),
                test.len()
            ),
        ));
    }
    // Members are read in archive order; sort so the result does not depend on it.
    train.sort_by(|a, b| a.0.cmp(&b.0));
    test.sort_by(|a, b| a.0.cmp(&b.0));
    let classes = match names {
        Some(n) if n.len() == variant.classes() => n,
        _ => (0..variant.classes()).map(|c| c.to_string()).collect(),
    };
    let source = format!(
        "{} ({})",
        archive
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        if variant == Variant::Cifar10 {
            "cifar10"
        } else {
            "cifar100"
        }
    );
    let mut ident = identity(source, vec![file_sha256(archive)?]);
    let items = official_items(spec, train, test);
    ident.root_sha256 = sample_root(&items, &classes);
    assemble(spec, items, [3, 32, 32], classes, ident)
}

/// (key, label, pixels) records.
pub type Keyed = Vec<(String, i64, Vec<u8>)>;

fn read_archive(path: &Path, variant: Variant) -> Result<(Keyed, Keyed, Option<Vec<String>>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    read_archive_from(path, file, variant)
}

/// Reads a CIFAR `.tar.gz` from `gzipped` (named `path` in errors): the training records, the
/// test records and the class names. What the fuzz target `cifar` feeds.
pub fn read_archive_from(
    path: &Path,
    gzipped: impl Read,
    variant: Variant,
) -> Result<(Keyed, Keyed, Option<Vec<String>>)> {
    let mut archive = tar::Archive::new(GzDecoder::new(gzipped));
    let broken = |what: String, e: std::io::Error| {
        Error::corrupt(
            path,
            None,
            format!("{what}: {e} (truncated or corrupt archive; delete it to download again)"),
        )
    };
    let (mut train, mut test, mut names) = (Vec::new(), Vec::new(), None);
    let entries = archive
        .entries()
        .map_err(|e| broken("cannot read the archive".into(), e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| broken("cannot read the next member".into(), e))?;
        let member = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = member.rsplit('/').next().unwrap_or_default().to_owned();
        let wanted_data = variant.is_train(&name);
        if wanted_data.is_none() && name != variant.names_file() {
            continue;
        }
        let size = entry.header().size().unwrap_or(0);
        if size > MAX_ENTRY {
            return Err(Error::corrupt(
                path,
                None,
                format!("member {member} claims {size} bytes, more than any CIFAR file"),
            ));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| broken(format!("reading member {member}"), e))?;
        match wanted_data {
            Some(is_train) => {
                let records = records(path, &member, &bytes, variant)?;
                if is_train {
                    train.extend(records)
                } else {
                    test.extend(records)
                }
            }
            None => {
                names = Some(
                    String::from_utf8_lossy(&bytes)
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned)
                        .collect(),
                );
            }
        }
    }
    Ok((train, test, names))
}

/// The records of one batch member (`bytes`), checked: whole records, labels in range.
pub fn records(archive: &Path, member: &str, bytes: &[u8], variant: Variant) -> Result<Keyed> {
    let record = variant.label_bytes() + PIXELS;
    if !bytes.len().is_multiple_of(record) {
        let whole = bytes.len() / record * record;
        return Err(Error::corrupt(
            archive,
            Some(whole as u64),
            format!(
                "member {member} has {} bytes, not a whole number of {record}-byte records: \
                 the record at byte {whole} of the member is incomplete",
                bytes.len()
            ),
        ));
    }
    bytes
        .chunks_exact(record)
        .enumerate()
        .map(|(i, r)| {
            let label = r[variant.label_bytes() - 1] as usize;
            if label >= variant.classes() {
                return Err(Error::corrupt(
                    archive,
                    Some((i * record) as u64),
                    format!(
                        "member {member}, record {i}: label {label} is out of range for {} classes",
                        variant.classes()
                    ),
                ));
            }
            Ok((
                format!("{member}:{i:06}"),
                label as i64,
                r[variant.label_bytes()..].to_vec(),
            ))
        })
        .collect()
}
