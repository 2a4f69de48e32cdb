//! Dataset manifests: every file of a dataset version with its size, sha256, label and split,
//! a Merkle root over them, counts per class and split, and the difference from the previous
//! version.
//!
//! [`scan_imagefolder`] walks a class-per-directory tree. Hashing runs on every core (rayon) and
//! is incremental: a file whose size and modification time match the previous manifest keeps
//! its recorded hash without being read (`full` forces a re-read). Anything that cannot be part
//! of a sound version is either skipped with a reason (an unknown extension, a symlink, an empty
//! class, a name that is not UTF-8 or is `.`/`..`) or fails the whole scan with the path (the
//! directory vanished or cannot be read, a file cannot be read): a scan never produces a
//! half-built manifest.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

mod listing;
mod read;
pub use listing::{Listed, Listing, list_imagefolder};
use read::{hash_file, image_header_problem};

/// Why a whole file's `bytes` are not an image the loader can decode (the check a scan makes
/// on every file it reads), or `None`.
pub fn image_problem(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return Some("empty file: not an image".to_owned());
    }
    image_header_problem(bytes, true)
}

/// The reason an image folder's class directory with no image files is left out.
const EMPTY_CLASS: &str = "class has no images; left out";

/// File extensions an image folder may hold (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Which split a file belongs to: a pure function of its content hash, so files never move
/// between splits as the dataset grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Training.
    Train,
    /// Validation, carved from what is not test.
    Validation,
    /// Held out.
    Test,
}

impl Split {
    /// The split of a file with content hash `sha256` (hex) under the given percentages: the
    /// hash's first 8 bytes decide test, the next 8 validation, each to 1/10,000.
    pub fn of(sha256_hex: &str, test_pct: u32, validation_pct: u32) -> Split {
        let slice = |i: usize| {
            u64::from_str_radix(&sha256_hex[i * 16..i * 16 + 16], 16).unwrap_or(0) % 10_000
        };
        if slice(0) < u64::from(test_pct) * 100 {
            Split::Test
        } else if slice(1) < u64::from(validation_pct) * 100 {
            Split::Validation
        } else {
            Split::Train
        }
    }
}

/// One file of a dataset version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path relative to the dataset root, `/`-separated.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch (the incremental-rescan key with `size`).
    pub mtime_ns: i128,
    /// Lower-case hex sha256 of the contents.
    pub sha256: String,
    /// Class label (the directory name).
    pub label: String,
    /// Split.
    pub split: Split,
}

/// A dataset version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Merkle root over the files (see [`merkle_root`]): the version's identity.
    pub root: String,
    /// Files sorted by path.
    pub files: Vec<ManifestFile>,
    /// Files per class.
    pub classes: BTreeMap<String, u64>,
    /// Files per split.
    pub splits: BTreeMap<Split, u64>,
    /// Split percentages used.
    pub test_pct: u32,
    /// See `test_pct`.
    pub validation_pct: u32,
}

/// Options of a scan.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions {
    /// Percent of files held out for testing.
    pub test_pct: u32,
    /// Percent of the rest carved out for validation.
    pub validation_pct: u32,
    /// Re-read every file even when its size and mtime are unchanged.
    pub full: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            test_pct: 20,
            validation_pct: 10,
            full: false,
        }
    }
}

/// What a scan found.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    /// The manifest.
    pub manifest: Manifest,
    /// Paths new since the previous manifest.
    pub added: Vec<String>,
    /// Paths gone since the previous manifest.
    pub removed: Vec<String>,
    /// Paths whose contents (or label) changed.
    pub changed: Vec<String>,
    /// What was left out, and why.
    pub skipped: Vec<(String, String)>,
    /// Classes (directories) the scan saw but left wholly out: every file of theirs was
    /// skipped. They are not in the manifest's `classes`; a retrain policy counts them as empty.
    pub empty_classes: Vec<String>,
    /// Files read and hashed.
    pub hashed: usize,
    /// Files whose hash was reused (size and mtime unchanged).
    pub reused: usize,
}

impl Scan {
    /// Whether this is a new version: the root differs from `previous`'s (or there was none).
    pub fn is_new_version(&self, previous: Option<&Manifest>) -> bool {
        previous.is_none_or(|p| p.root != self.manifest.root)
    }
}

fn io_error(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Dataset {
        path: path.display().to_string(),
        message: format!("{what}: {e}"),
    }
}

/// Scans an image folder (`root/<class>/<file>.png|jpg|jpeg`) into a manifest, reusing hashes
/// from `previous` where size and mtime match.
pub fn scan_imagefolder(
    root: &Path,
    previous: Option<&Manifest>,
    options: ScanOptions,
) -> Result<Scan> {
    let Listing {
        files: candidates,
        skipped,
    } = list_imagefolder(root)?;
    let known: HashMap<&str, &ManifestFile> = previous
        .map(|p| p.files.iter().map(|f| (f.path.as_str(), f)).collect())
        .unwrap_or_default();
    type Hashed = std::result::Result<(ManifestFile, bool), (String, String)>;
    let hashed: Vec<Result<Hashed>> = candidates
        .par_iter()
        .map(|c| {
            let reuse = (!options.full)
                .then(|| known.get(c.path.as_str()))
                .flatten()
                .filter(|f| f.size == c.size && f.mtime_ns == c.mtime_ns);
            // A file read anew is also checked to be an image; one reused from the previous
            // manifest passed that check when it was read.
            let (sha256, read) = match reuse {
                Some(f) => (f.sha256.clone(), false),
                None => match hash_file(&c.full, c.size)? {
                    (sha256, None) => (sha256, true),
                    (_, Some(why)) => return Ok(Err((c.path.clone(), why))),
                },
            };
            Ok(Ok((
                ManifestFile {
                    path: c.path.clone(),
                    size: c.size,
                    mtime_ns: c.mtime_ns,
                    split: Split::of(&sha256, options.test_pct, options.validation_pct),
                    sha256,
                    label: c.label.clone(),
                },
                read,
            )))
        })
        .collect();
    let mut files = Vec::with_capacity(hashed.len());
    let mut hashed_count = 0;
    let mut skipped = skipped;
    for result in hashed {
        match result? {
            Ok((file, read)) => {
                hashed_count += usize::from(read);
                files.push(file);
            }
            Err(undecodable) => skipped.push(undecodable),
        }
    }
    Ok(finish_scan(files, hashed_count, skipped, previous, options))
}

/// A scan result from files already hashed: sorted, counted and diffed against `previous`
/// (for datasets whose entries are samples rather than files: builtins and IDX sets).
pub fn finish_scan(
    mut files: Vec<ManifestFile>,
    hashed_count: usize,
    skipped: Vec<(String, String)>,
    previous: Option<&Manifest>,
    options: ScanOptions,
) -> Scan {
    let known: HashMap<&str, &ManifestFile> = previous
        .map(|p| p.files.iter().map(|f| (f.path.as_str(), f)).collect())
        .unwrap_or_default();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut class_counts = BTreeMap::new();
    let mut split_counts = BTreeMap::new();
    for f in &files {
        *class_counts.entry(f.label.clone()).or_insert(0) += 1;
        *split_counts.entry(f.split).or_insert(0) += 1;
    }
    let (mut added, mut changed) = (Vec::new(), Vec::new());
    for f in &files {
        match known.get(f.path.as_str()) {
            None => added.push(f.path.clone()),
            Some(old) if old.sha256 != f.sha256 || old.label != f.label => {
                changed.push(f.path.clone());
            }
            Some(_) => {}
        }
    }
    let present: std::collections::HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    let removed = previous
        .map(|p| {
            p.files
                .iter()
                .filter(|f| !present.contains(f.path.as_str()))
                .map(|f| f.path.clone())
                .collect()
        })
        .unwrap_or_default();
    let reused = files.len() - hashed_count;
    let empty_classes = empty_classes(&skipped, &class_counts);
    Scan {
        manifest: Manifest {
            root: merkle_root(&files),
            files,
            classes: class_counts,
            splits: split_counts,
            test_pct: options.test_pct,
            validation_pct: options.validation_pct,
        },
        added,
        removed,
        changed,
        skipped,
        empty_classes,
        hashed: hashed_count,
        reused,
    }
}

/// The classes `skipped` names (the directory of a skipped `class/file`, or a class left out
/// for having no images) that kept no file.
fn empty_classes(skipped: &[(String, String)], kept: &BTreeMap<String, u64>) -> Vec<String> {
    let named = skipped
        .iter()
        .filter_map(|(path, reason)| match path.split_once('/') {
            Some((class, _)) => Some(class),
            None => (reason == EMPTY_CLASS).then_some(path.as_str()),
        });
    let mut empty: Vec<String> = named
        .filter(|c| !kept.contains_key(*c))
        .map(str::to_owned)
        .collect();
    empty.sort();
    empty.dedup();
    empty
}

/// Scans an image folder kept in an object store (`<prefix>/<class>/<file>`): the same rules as
/// [`scan_imagefolder`], with the object's size and last-modified time as the incremental key.
/// Objects are downloaded and hashed 16 at a time.
pub async fn scan_object_store(
    store: &crate::artifacts::ArtifactStore,
    previous: Option<&Manifest>,
    options: ScanOptions,
) -> Result<Scan> {
    use futures::{StreamExt, TryStreamExt};
    let objects = store.list("").await?;
    let mut skipped = Vec::new();
    let mut candidates = Vec::new();
    for object in objects {
        let parts: Vec<&str> = object.key.split('/').collect();
        let reason = match parts.as_slice() {
            [_] => Some("objects at the top level belong to no class"),
            [class, name] if class.starts_with('.') || name.starts_with('.') => Some("hidden file"),
            [_, name] => {
                let ext = Path::new(name)
                    .extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase);
                (!ext
                    .as_deref()
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e)))
                .then_some("not an image (expected png, jpg, jpeg)")
            }
            _ => Some("nested directories are not part of a class"),
        };
        match reason {
            Some(why) => skipped.push((object.key.clone(), why.to_owned())),
            None => candidates.push(object),
        }
    }
    if candidates.is_empty() {
        return Err(Error::Dataset {
            path: store.base().to_owned(),
            message: format!(
                "no usable images: expected <class>/<image>.{{{}}}; {} objects skipped",
                IMAGE_EXTENSIONS.join(","),
                skipped.len()
            ),
        });
    }
    let known: HashMap<&str, &ManifestFile> = previous
        .map(|p| p.files.iter().map(|f| (f.path.as_str(), f)).collect())
        .unwrap_or_default();
    let hashed: Vec<(ManifestFile, bool, Option<String>)> = futures::stream::iter(candidates)
        .map(|c| {
            let reuse = (!options.full)
                .then(|| known.get(c.key.as_str()))
                .flatten()
                .filter(|f| f.size == c.size && f.mtime_ns == c.modified_ns)
                .map(|f| f.sha256.clone());
            async move {
                let (sha256, read, problem) = match reuse {
                    Some(sha) => (sha, false, None),
                    None => {
                        let bytes = store.get_bytes(&c.key).await?;
                        if bytes.len() as u64 != c.size {
                            return Err(Error::Dataset {
                                path: store.uri(&c.key),
                                message: format!(
                                    "changed while being scanned: {} bytes when listed, {} when \
                                     read; scan again",
                                    c.size,
                                    bytes.len()
                                ),
                            });
                        }
                        let problem = if bytes.is_empty() {
                            Some("empty file: not an image".to_owned())
                        } else {
                            image_header_problem(&bytes, true)
                        };
                        (sha256_hex(&bytes), true, problem)
                    }
                };
                let label = c.key.split('/').next().unwrap_or_default().to_owned();
                Ok((
                    ManifestFile {
                        split: Split::of(&sha256, options.test_pct, options.validation_pct),
                        path: c.key,
                        size: c.size,
                        mtime_ns: c.modified_ns,
                        sha256,
                        label,
                    },
                    read,
                    problem,
                ))
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    // The same rule as a folder's: an object that is not an image is skipped with the reason.
    let mut files = Vec::with_capacity(hashed.len());
    let mut hashed_count = 0;
    for (file, read, problem) in hashed {
        match problem {
            Some(why) => skipped.push((file.path, why)),
            None => {
                hashed_count += usize::from(read);
                files.push(file);
            }
        }
    }
    Ok(finish_scan(files, hashed_count, skipped, previous, options))
}

impl Manifest {
    /// Checks that the manifest is the version `root` names: its recorded root and the Merkle
    /// root recomputed over its files both equal `root`.
    pub fn check_root(&self, root: &str) -> Result<()> {
        let computed = merkle_root(&self.files);
        if self.root != root || computed != root {
            return Err(Error::Dataset {
                path: format!("manifest of version {}", short(root)),
                message: format!(
                    "it records root {} and its files hash to {}; it is not that version",
                    short(&self.root),
                    short(&computed)
                ),
            });
        }
        Ok(())
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// sha256 of `bytes`, lower-case hex: the content hash manifests record.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Merkle root over files sorted by path: each leaf is sha256(path, size, sha256, label) with
/// NUL separators; each level hashes adjacent pairs (an odd node out moves up unchanged).
pub fn merkle_root(files: &[ManifestFile]) -> String {
    let mut level: Vec<[u8; 32]> = files
        .iter()
        .map(|f| {
            let mut h = Sha256::new();
            for part in [
                f.path.as_bytes(),
                f.size.to_string().as_bytes(),
                f.sha256.as_bytes(),
                f.label.as_bytes(),
            ] {
                h.update(part);
                h.update([0u8]);
            }
            h.finalize().into()
        })
        .collect();
    if level.is_empty() {
        return hex(&Sha256::digest(b""));
    }
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [a, b] => {
                    let mut h = Sha256::new();
                    h.update(a);
                    h.update(b);
                    h.finalize().into()
                }
                [a] => *a,
                _ => unreachable!("chunks of 2"),
            })
            .collect();
    }
    hex(&level[0])
}
