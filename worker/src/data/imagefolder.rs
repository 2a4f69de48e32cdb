//! `imagefolder`: one sub-directory per class, PNG or JPEG files inside.
//!
//! Which files belong to the dataset is decided by the same walk the coordinator's scans use
//! ([`list_imagefolder`]), and each file's split is a function of its content hash
//! ([`ManifestSplit::of`]), so a model's test split is exactly the test split of the dataset
//! version it reports (its Merkle root), and a file never moves between splits as the folder
//! grows. Class names are the sorted labels that have files.
//!
//! A job may pin a version (`dataset.version`). Then the files loaded are exactly that
//! version's manifest (read from the cache, where the worker put it before the task started),
//! each file's bytes are hashed as they are read and must match the manifest, and files added
//! since are ignored: training sees the version it was asked for or refuses with the first file
//! that drifted. Without a cached manifest, the folder is walked and its root must equal the pin.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rayon::prelude::*;
use trainfleet_core::job::DatasetSpec;
use trainfleet_core::manifest::{
    self, Listed, Manifest, ManifestFile, Split as ManifestSplit, list_imagefolder, merkle_root,
};

use super::split::Assignment;
use super::{Dataset, Item, assemble};
use crate::error::{Error, Result};

/// Where a pinned version's manifest is cached under the data directory.
pub fn manifest_cache_path(cache_dir: &Path, root: &str) -> PathBuf {
    cache_dir.join("manifests").join(format!("{root}.json"))
}

/// The cached manifest of version `root`, checked to be that version; `None` if not cached.
pub fn cached_manifest(cache_dir: &Path, root: &str) -> Result<Option<Manifest>> {
    let path = manifest_cache_path(cache_dir, root);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::corrupt(&path, None, format!("not a dataset manifest: {e}")))?;
    manifest.check_root(root)?;
    Ok(Some(manifest))
}

/// Loads an image folder: the version pinned by `spec.version`, or whatever is there now.
pub fn load(spec: &DatasetSpec, root: &Path, cache_dir: &Path) -> Result<Dataset> {
    let pinned = match &spec.version {
        Some(version) => cached_manifest(cache_dir, version)?,
        None => None,
    };
    let (files, loaded, skipped) = match &pinned {
        Some(manifest) => {
            let loaded = read_pinned(root, manifest)?;
            (manifest.files.clone(), loaded, Vec::new())
        }
        None => read_listing(spec, root)?,
    };
    let version = merkle_root(&files);
    if let Some(pin) = &spec.version
        && *pin != version
    {
        return Err(Error::Drift {
            path: root.display().to_string(),
            message: format!(
                "the folder is version {} now, the job pins {} (and its manifest is not cached \
                 here to load the pinned files from)",
                &version[..12],
                &pin[..12.min(pin.len())]
            ),
        });
    }
    let mut classes: Vec<String> = files.iter().map(|f| f.label.clone()).collect();
    classes.sort();
    classes.dedup();
    if classes.len() < 2 {
        return Err(Error::corrupt(
            root,
            None,
            format!(
                "an image folder needs one sub-directory per class and at least 2 classes with \
                 images; found {}",
                classes.len()
            ),
        ));
    }
    let channels = if spec.grayscale { 1 } else { 3 };
    let decoded: Vec<(u32, u32, Vec<u8>)> = files
        .par_iter()
        .zip(loaded)
        .map(|(file, bytes)| decode(spec, &root.join(&file.path), &bytes))
        .collect::<Result<_>>()?;
    let (h, w) = (decoded[0].0, decoded[0].1);
    if let Some(((hh, ww, _), file)) = decoded
        .iter()
        .zip(&files)
        .find(|((hh, ww, _), _)| (*hh, *ww) != (h, w))
    {
        return Err(Error::corrupt(
            &root.join(&file.path),
            None,
            format!(
                "is {ww}×{hh} but {} is {w}×{h}; set dataset.image_size to resize every image to one size",
                files[0].path
            ),
        ));
    }
    let items = files
        .iter()
        .zip(decoded)
        .map(|(file, (_, _, pixels))| Item {
            id: file.path.clone(),
            label: classes.binary_search(&file.label).expect("a known label") as i64,
            pixels,
            place: place(file, spec.fraction),
        })
        .collect();
    let identity = super::Identity {
        source: root.display().to_string(),
        root_sha256: version,
        files: files
            .iter()
            .map(|f| (f.path.clone(), f.sha256.clone()))
            .collect(),
        skipped,
    };
    assemble(
        spec,
        items,
        [channels, h as usize, w as usize],
        classes,
        identity,
    )
}

/// A manifest split as a training assignment; `fraction` keeps a stable subset of training
/// (decided by another slice of the content hash than the splits).
fn place(file: &ManifestFile, fraction: f64) -> Assignment {
    match file.split {
        ManifestSplit::Test => Assignment::Test,
        ManifestSplit::Validation => Assignment::Validation,
        ManifestSplit::Train => {
            let slice = u64::from_str_radix(&file.sha256[32..48], 16).unwrap_or(0) % 10_000;
            if (slice as f64) < fraction * 10_000.0 {
                Assignment::Train
            } else {
                Assignment::Unused
            }
        }
    }
}

/// What [`read_listing`] read: the entries, their bytes, and what it left out with why.
type Read = (Vec<ManifestFile>, Vec<Vec<u8>>, Vec<(String, String)>);

/// One listed file: its entry and bytes, or (path, why it is not an image).
type ReadOne = std::result::Result<(ManifestFile, Vec<u8>), (String, String)>;

/// Reads every file the folder holds now; each becomes a manifest entry hashed from the bytes
/// read, split by the spec's percentages. A file that is not a decodable image is left out with
/// its reason, as a scan leaves it out, so the root is the one a scan records.
fn read_listing(spec: &DatasetSpec, root: &Path) -> Result<Read> {
    let listing = list_imagefolder(root)?;
    let read: Vec<ReadOne> = listing
        .files
        .par_iter()
        .map(|l: &Listed| {
            let bytes = std::fs::read(&l.full).map_err(|e| Error::io(&l.full, e))?;
            if let Some(why) = manifest::image_problem(&bytes) {
                return Ok(Err((l.path.clone(), why)));
            }
            let sha256 = manifest::sha256_hex(&bytes);
            let file = ManifestFile {
                path: l.path.clone(),
                size: bytes.len() as u64,
                mtime_ns: l.mtime_ns,
                split: ManifestSplit::of(&sha256, spec.test_pct, spec.validation_pct),
                sha256,
                label: l.label.clone(),
            };
            Ok(Ok((file, bytes)))
        })
        .collect::<Result<_>>()?;
    let mut skipped = listing.skipped;
    let mut usable = Vec::with_capacity(read.len());
    for entry in read {
        match entry {
            Ok(file) => usable.push(file),
            Err(undecodable) => {
                tracing::warn!(file = %undecodable.0, reason = %undecodable.1, "image left out");
                skipped.push(undecodable);
            }
        }
    }
    let (mut files, mut bytes): (Vec<_>, Vec<_>) = usable.into_iter().unzip();
    // Manifests are sorted by path; keep the same order so ids and roots agree with scans.
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by(|&a, &b| files[a].path.cmp(&files[b].path));
    files = order.iter().map(|&i| files[i].clone()).collect();
    bytes = order
        .iter()
        .map(|&i| std::mem::take(&mut bytes[i]))
        .collect();
    Ok((files, bytes, skipped))
}

/// Reads exactly the files of a pinned version, refusing the first one that is missing or
/// whose bytes no longer hash to what the manifest recorded.
fn read_pinned(root: &Path, manifest: &Manifest) -> Result<Vec<Vec<u8>>> {
    let short = &manifest.root[..12];
    manifest
        .files
        .par_iter()
        .map(|f| {
            let path = root.join(&f.path);
            let bytes = std::fs::read(&path).map_err(|e| Error::Drift {
                path: path.display().to_string(),
                message: format!("part of version {short} but cannot be read now: {e}"),
            })?;
            let sha256 = manifest::sha256_hex(&bytes);
            if sha256 != f.sha256 {
                return Err(Error::Drift {
                    path: path.display().to_string(),
                    message: format!(
                        "its content changed since version {short} (sha256 {} now, {} then)",
                        &sha256[..12],
                        &f.sha256[..12]
                    ),
                });
            }
            Ok(bytes)
        })
        .collect()
}

/// Decodes one image file as the spec wants it (resized, gray or CHW RGB): (height, width,
/// pixels).
pub fn decode(spec: &DatasetSpec, path: &Path, bytes: &[u8]) -> Result<(u32, u32, Vec<u8>)> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| Error::corrupt(path, None, format!("cannot decode image: {e}")))?;
    let img = match spec.image_size {
        Some([h, w]) if (img.height(), img.width()) != (h, w) => {
            img.resize_exact(w, h, FilterType::Triangle)
        }
        _ => img,
    };
    let (w, h) = (img.width(), img.height());
    let pixels = if spec.grayscale {
        img.into_luma8().into_raw()
    } else {
        to_chw(&img.into_rgb8().into_raw(), h, w)
    };
    Ok((h, w, pixels))
}

/// Interleaved RGB (HWC) to planar (CHW).
fn to_chw(hwc: &[u8], h: u32, w: u32) -> Vec<u8> {
    let plane = (h * w) as usize;
    let mut chw = vec![0u8; plane * 3];
    for (i, px) in hwc.chunks_exact(3).enumerate() {
        chw[i] = px[0];
        chw[plane + i] = px[1];
        chw[2 * plane + i] = px[2];
    }
    chw
}
