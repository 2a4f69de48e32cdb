//! Which files make an image folder: the walk that decides, without reading any file, shared
//! by scans and the training loader so both see the same files.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::{EMPTY_CLASS, IMAGE_EXTENSIONS, io_error};
use crate::Result;

/// A file an image-folder walk found: what a manifest entry is made of, before hashing.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Path relative to the root, `<class>/<file>`.
    pub path: String,
    /// Path on disk.
    pub full: PathBuf,
    /// Class (its directory's name).
    pub label: String,
    /// Bytes when listed.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
}

/// What an image-folder walk found.
#[derive(Debug, Clone)]
pub struct Listing {
    /// Usable files, sorted by class, then name.
    pub files: Vec<Listed>,
    /// What was left out, and why.
    pub skipped: Vec<(String, String)>,
}

/// Walks an image folder (`root/<class>/<file>.png|jpg|jpeg`) without reading any file: the
/// one place that decides which files belong to a dataset, shared by scans and the training
/// loader so both see the same files.
pub fn list_imagefolder(root: &Path) -> Result<Listing> {
    let meta = fs::symlink_metadata(root).map_err(|e| io_error(root, "cannot scan", e))?;
    if !meta.is_dir() {
        return Err(io_error(root, "cannot scan", "not a directory"));
    }
    let mut skipped = Vec::new();
    let mut files = Vec::new();
    let mut classes: Vec<(String, PathBuf)> = Vec::new();
    for entry in read_dir_sorted(root)? {
        let (name, path, kind) = entry;
        let Some(name) = usable_name(&name, &path, &mut skipped) else {
            continue;
        };
        if kind.is_symlink() {
            skipped.push((name, "symbolic links are not followed".into()));
        } else if kind.is_dir() {
            classes.push((name, path));
        } else {
            skipped.push((name, "files at the top level belong to no class".into()));
        }
    }
    for (label, dir) in classes {
        let before = files.len();
        for (name, path, kind) in read_dir_sorted(&dir)? {
            let rel = format!("{label}/{}", name.to_string_lossy());
            let Some(name) = usable_name(&name, &path, &mut skipped) else {
                continue;
            };
            let rel_ok = format!("{label}/{name}");
            if kind.is_symlink() {
                skipped.push((rel_ok, "symbolic links are not followed".into()));
                continue;
            }
            if kind.is_dir() {
                skipped.push((rel_ok, "nested directories are not part of a class".into()));
                continue;
            }
            let ext = Path::new(&name)
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            if !ext
                .as_deref()
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e))
            {
                skipped.push((
                    rel,
                    format!("not an image (expected {})", IMAGE_EXTENSIONS.join(", ")),
                ));
                continue;
            }
            let meta =
                fs::symlink_metadata(&path).map_err(|e| io_error(&path, "cannot stat", e))?;
            let mtime_ns = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i128);
            files.push(Listed {
                path: rel_ok,
                full: path,
                label: label.clone(),
                size: meta.len(),
                mtime_ns,
            });
        }
        if files.len() == before {
            skipped.push((label.clone(), EMPTY_CLASS.into()));
        }
    }
    if files.is_empty() {
        return Err(io_error(
            root,
            "no usable images",
            format!(
                "expected <class>/<image>.{{{}}}; {} entries skipped",
                IMAGE_EXTENSIONS.join(","),
                skipped.len()
            ),
        ));
    }
    Ok(Listing { files, skipped })
}

type DirEntry = (std::ffi::OsString, PathBuf, fs::FileType);

fn read_dir_sorted(dir: &Path) -> Result<Vec<DirEntry>> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_error(dir, "cannot list", e))? {
        let entry = entry.map_err(|e| io_error(dir, "cannot list", e))?;
        let kind = entry
            .file_type()
            .map_err(|e| io_error(&entry.path(), "cannot stat", e))?;
        entries.push((entry.file_name(), entry.path(), kind));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

/// The name as UTF-8, or `None` (with a skip reason) for names a manifest cannot carry safely.
fn usable_name(
    name: &std::ffi::OsStr,
    path: &Path,
    skipped: &mut Vec<(String, String)>,
) -> Option<String> {
    let Some(text) = name.to_str() else {
        skipped.push((path.display().to_string(), "name is not valid UTF-8".into()));
        return None;
    };
    if text == "." || text == ".." || text.contains('/') || text.contains('\\') {
        skipped.push((text.to_owned(), "name could escape the dataset root".into()));
        return None;
    }
    if text.starts_with('.') {
        skipped.push((text.to_owned(), "hidden file".into()));
        return None;
    }
    Some(text.to_owned())
}
