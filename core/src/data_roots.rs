//! Where a worker may read a job's data from: its allow-list of data roots.
//!
//! A job names files: `dataset.path`, `model.init_weights`, a scan's directory, an object-store
//! URL. The worker reads them with its own permissions, so whoever may submit a job could
//! otherwise make it read `/etc/shadow` into a "dataset" or hash a secret's bytes into a
//! manifest. Every such name is checked here, on the worker, before anything is opened:
//!
//! - a **local path** is resolved (`..` and every symlink, the last one included) and must lie
//!   under one of the roots, themselves resolved; a path that does not exist is refused too;
//! - a **`file://` URL** is a local path;
//! - any other **URL** (`s3://bucket/prefix`) must start with one of the URL roots, at a `/`
//!   boundary, and may not contain a `..` or `.` segment (an object store does not resolve them,
//!   but a copy to a local cache would).
//!
//! Files inside an allowed directory are checked too when they are read (a symlink inside a
//! dataset that leads out of the roots is left out like an unreadable file), see
//! [`DataRoots::allows_file`].

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A worker's data roots: local directories and object-store URL prefixes.
#[derive(Debug, Clone, Default)]
pub struct DataRoots {
    /// Resolved local directories.
    dirs: Vec<PathBuf>,
    /// URL prefixes, each ending in `/`.
    urls: Vec<String>,
    /// The roots as configured, for messages.
    shown: Vec<String>,
}

impl DataRoots {
    /// Checks the form of configuration entries without touching the filesystem (config
    /// validation): each is an absolute directory, a `file://` URL, or another URL prefix with
    /// no `.` or `..` segment.
    pub fn check_entries<S: AsRef<str>>(entries: &[S], field: &str) -> Result<()> {
        for (i, entry) in entries.iter().enumerate() {
            classify(entry.as_ref(), &format!("{field}[{i}]"))?;
        }
        Ok(())
    }

    /// Roots from configuration entries (see [`DataRoots::check_entries`]); local ones are
    /// resolved and must be existing directories: a typo would otherwise refuse every job
    /// later. `field` names the setting in errors.
    pub fn new<S: AsRef<str>>(entries: &[S], field: &str) -> Result<Self> {
        let mut roots = Self::default();
        for (i, entry) in entries.iter().enumerate() {
            let entry = entry.as_ref().trim();
            let at = format!("{field}[{i}]");
            match classify(entry, &at)? {
                Root::Local(path) => {
                    let resolved = path.canonicalize().map_err(|e| {
                        Error::invalid_field(&at, format!("is {entry}, which cannot be used: {e}"))
                    })?;
                    if !resolved.is_dir() {
                        return Err(Error::invalid_field(
                            at,
                            format!("is {entry}, which is not a directory"),
                        ));
                    }
                    roots.dirs.push(resolved);
                }
                Root::Url(prefix) => roots.urls.push(prefix),
            }
            roots.shown.push(entry.to_owned());
        }
        Ok(roots)
    }

    /// Adds a local directory that is always allowed (the worker's own data cache), resolving
    /// it when it exists; one that does not exist yet is kept as given.
    pub fn with_dir(mut self, dir: &Path) -> Self {
        let resolved = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
        if !self.dirs.contains(&resolved) {
            self.shown.push(dir.display().to_string());
            self.dirs.push(resolved);
        }
        self
    }

    /// The roots as configured, for messages and the worker's start-up log.
    pub fn shown(&self) -> &[String] {
        &self.shown
    }

    /// Checks a local path named by the job's `field`; returns it resolved.
    pub fn check_path(&self, field: &str, path: &Path) -> Result<PathBuf> {
        let resolved = path.canonicalize().map_err(|e| {
            Error::invalid_field(
                field,
                format!(
                    "is {}, which cannot be used on this worker: {e}",
                    path.display()
                ),
            )
        })?;
        if self.dirs.iter().any(|root| resolved.starts_with(root)) {
            return Ok(resolved);
        }
        let via = if resolved != path {
            format!(" (resolved to {})", resolved.display())
        } else {
            String::new()
        };
        Err(Error::PermissionDenied {
            field: field.to_owned(),
            message: format!(
                "is {}{via}, outside this worker's data roots ({})",
                path.display(),
                self.describe()
            ),
        })
    }

    /// Checks a URL named by the job's `field` (`file://` URLs as local paths).
    pub fn check_url(&self, field: &str, url: &str) -> Result<()> {
        if let Some(path) = local_path(url) {
            return self.check_path(field, &path).map(drop);
        }
        let allowed = !has_dot_segment(url)
            && self
                .urls
                .iter()
                .any(|prefix| url.starts_with(prefix) || format!("{url}/") == *prefix);
        if allowed {
            return Ok(());
        }
        Err(Error::PermissionDenied {
            field: field.to_owned(),
            message: format!(
                "is {url}, outside this worker's data roots ({})",
                self.describe()
            ),
        })
    }

    /// Whether a file found inside an allowed directory (a dataset's image, say) still lies
    /// under the roots once its symlinks are resolved.
    pub fn allows_file(&self, path: &Path) -> bool {
        path.canonicalize()
            .is_ok_and(|p| self.dirs.iter().any(|root| p.starts_with(root)))
    }

    fn describe(&self) -> String {
        if self.shown.is_empty() {
            "none configured: set data_roots in the worker's config".to_owned()
        } else {
            self.shown.join(", ")
        }
    }
}

/// One configured root, by kind.
enum Root {
    /// An absolute directory (not yet resolved).
    Local(PathBuf),
    /// A URL prefix ending in `/`.
    Url(String),
}

/// What a configuration entry is; `at` names it in errors.
fn classify(entry: &str, at: &str) -> Result<Root> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err(Error::invalid_field(at, "is empty"));
    }
    match local_path(entry) {
        Some(path) if path.is_absolute() => Ok(Root::Local(path)),
        Some(_) => Err(Error::invalid_field(
            at,
            format!("is {entry}; a data root must be an absolute directory"),
        )),
        None if has_dot_segment(entry) => Err(Error::invalid_field(
            at,
            format!("is {entry}; a URL root may not contain '.' or '..'"),
        )),
        None => {
            let mut prefix = entry.to_owned();
            if !prefix.ends_with('/') {
                prefix.push('/');
            }
            Ok(Root::Url(prefix))
        }
    }
}

/// The local path of an absolute path or `file://` URL; `None` for other URLs.
fn local_path(entry: &str) -> Option<PathBuf> {
    if let Some(rest) = entry.strip_prefix("file://") {
        return Some(PathBuf::from(rest));
    }
    if entry.contains("://") {
        return None;
    }
    Some(PathBuf::from(entry))
}

/// Whether any `/`-separated segment after the scheme is `.` or `..` (also percent-encoded).
fn has_dot_segment(url: &str) -> bool {
    let path = url.split_once("://").map_or(url, |(_, rest)| rest);
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(dir: &Path) -> DataRoots {
        DataRoots::new(
            &[dir.display().to_string(), "s3://bucket/datasets".to_owned()],
            "data_roots",
        )
        .unwrap()
    }

    #[test]
    fn paths_under_a_root_pass_and_everything_else_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("cats");
        std::fs::create_dir(&inside).unwrap();
        let roots = roots(dir.path());
        assert!(roots.check_path("dataset.path", &inside).is_ok());

        let err = roots
            .check_path("dataset.path", Path::new("/etc/shadow"))
            .unwrap_err();
        assert!(matches!(err, Error::PermissionDenied { .. }), "{err}");
        assert!(err.to_string().contains("dataset.path"), "{err}");

        // `..` out of a root.
        let dotdot = inside.join("../../..");
        let err = roots.check_path("dataset.path", &dotdot).unwrap_err();
        assert!(matches!(err, Error::PermissionDenied { .. }), "{err}");

        // A symlink inside the root that leads out of it.
        let link = dir.path().join("escape");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        let err = roots.check_path("model.init_weights", &link).unwrap_err();
        assert!(err.to_string().contains("resolved to /etc"), "{err}");
        assert!(!roots.allows_file(&link));
        assert!(roots.allows_file(&inside));

        // A path that does not exist: refused, saying so.
        let err = roots
            .check_path("dataset.path", &dir.path().join("missing"))
            .unwrap_err();
        assert!(err.to_string().contains("cannot be used"), "{err}");
    }

    #[test]
    fn urls_match_a_prefix_at_a_segment_boundary_with_no_dot_segments() {
        let dir = tempfile::tempdir().unwrap();
        let roots = roots(dir.path());
        assert!(
            roots
                .check_url("dataset.url", "s3://bucket/datasets/cats")
                .is_ok()
        );
        assert!(
            roots
                .check_url("dataset.url", "s3://bucket/datasets")
                .is_ok()
        );
        for bad in [
            "s3://bucket/datasets-private/cats",
            "s3://bucket/datasets/../secrets",
            "s3://bucket/datasets/%2E%2E/secrets",
            "s3://other/datasets/cats",
            "file:///etc",
        ] {
            let err = roots.check_url("dataset.url", bad).unwrap_err();
            assert!(err.to_string().contains("dataset.url"), "{bad}: {err}");
        }
        let local = format!("file://{}", dir.path().display());
        assert!(roots.check_url("dataset.url", &local).is_ok());
    }

    #[test]
    fn bad_roots_are_refused_at_start() {
        for (entry, says) in [
            ("relative/dir", "absolute"),
            ("/no/such/dir/anywhere", "cannot be used"),
            ("s3://bucket/../x", "'..'"),
            ("", "empty"),
        ] {
            let err = DataRoots::new(&[entry], "data_roots").unwrap_err();
            assert!(err.to_string().contains("data_roots[0]"), "{entry}: {err}");
            assert!(err.to_string().contains(says), "{entry}: {err}");
        }
    }
}
