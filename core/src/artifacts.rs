//! Where run artifacts live: one `object_store` behind a base URL (a local directory by default,
//! `s3://bucket/prefix` and friends by URL), and the run layout and manifest both sides agree on.
//!
//! Layout under the base, per job and attempt (attempts never share a key, so a worker that was
//! presumed lost and keeps writing cannot clobber the attempt that replaced it):
//!
//! ```text
//! runs/<job_id>/attempt-<n>/checkpoint.safetensors   latest epoch checkpoint (resume point)
//! runs/<job_id>/attempt-<n>/model.safetensors         final weights
//! runs/<job_id>/attempt-<n>/model.json                model card
//! runs/<job_id>/attempt-<n>/metrics.json              per-epoch and test metrics
//! runs/<job_id>/attempt-<n>/config.yaml               the job spec as trained
//! runs/<job_id>/attempt-<n>/manifest.json             sha256 of every file above, dataset root,
//!                                                      code and libtorch versions
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use url::Url;

use crate::{Error, Result};

/// Name of the manifest in a run directory.
pub const MANIFEST: &str = "manifest.json";
/// Name of the checkpoint in a run directory.
pub const CHECKPOINT: &str = "checkpoint.safetensors";

/// The key prefix of one attempt of a job's run.
pub fn run_prefix(job_id: &str, attempt: u32) -> String {
    format!("runs/{job_id}/attempt-{attempt}")
}

/// What a run wrote, with enough to check every byte later.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// The job.
    pub job_id: String,
    /// The attempt that wrote it.
    pub attempt: u32,
    /// File name → size and sha256.
    pub files: BTreeMap<String, FileEntry>,
    /// Root hash of the dataset the model was trained and tested on.
    pub dataset_root: String,
    /// trainfleet version of the worker.
    pub code_version: String,
    /// libtorch version it linked.
    pub libtorch_version: String,
}

/// An object found by [`ArtifactStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    /// Key relative to the listed prefix, `/`-separated.
    pub key: String,
    /// Bytes.
    pub size: u64,
    /// Last modification, nanoseconds since the epoch (the incremental-rescan key with `size`).
    pub modified_ns: i128,
}

/// One file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileEntry {
    /// Bytes.
    pub size: u64,
    /// Lower-case hex sha256.
    pub sha256: String,
}

/// An object store with a base URL; keys are `/`-separated paths under it.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    base: Url,
    prefix: ObjectPath,
}

impl ArtifactStore {
    /// Opens `location`: a URL (`file:///srv/artifacts`, `s3://bucket/prefix`, `memory://`) or a
    /// local directory path (created if missing). Cloud credentials come from the usual
    /// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_REGION`, `AWS_ENDPOINT`, ...).
    pub fn open(location: &str) -> Result<Self> {
        let bad = |message: String| Error::Artifact {
            uri: location.to_owned(),
            message,
        };
        let base = if location.contains("://") {
            Url::parse(location).map_err(|e| bad(format!("not a valid URL: {e}")))?
        } else {
            let path = Path::new(location);
            std::fs::create_dir_all(path)
                .map_err(|e| bad(format!("cannot create the artifact directory: {e}")))?;
            let absolute = std::fs::canonicalize(path)
                .map_err(|e| bad(format!("cannot resolve the artifact directory: {e}")))?;
            Url::from_directory_path(&absolute)
                .map_err(|()| bad("cannot express the directory as a file:// URL".into()))?
        };
        if base.scheme() == "file" {
            let dir = base
                .to_file_path()
                .map_err(|()| bad("not a local path".into()))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| bad(format!("cannot create the artifact directory: {e}")))?;
        }
        // An empty variable means "not set" (what a Compose file's `${AWS_ENDPOINT:-}` passes).
        let env = std::env::vars().filter(|(k, v)| {
            !v.is_empty()
                && (k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_"))
        });
        let (store, prefix) = object_store::parse_url_opts(&base, env)
            .map_err(|e| bad(format!("unsupported artifact store: {e}")))?;
        let mut base = base;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Self {
            store: Arc::from(store),
            base,
            prefix,
        })
    }

    /// The base URL, ending in `/`.
    pub fn base(&self) -> &str {
        self.base.as_str()
    }

    /// The URI of `key`.
    pub fn uri(&self, key: &str) -> String {
        format!("{}{}", self.base, key.trim_start_matches('/'))
    }

    /// The key of `uri`, which must lie under this store's base.
    pub fn key_of(&self, uri: &str) -> Result<String> {
        uri.strip_prefix(self.base.as_str())
            .filter(|k| !k.is_empty() && !k.split('/').any(|part| part == ".."))
            .map(str::to_owned)
            .ok_or_else(|| Error::Artifact {
                uri: uri.to_owned(),
                message: format!("is not an object under this artifact store ({})", self.base),
            })
    }

    fn path(&self, key: &str) -> Result<ObjectPath> {
        let mut parts: Vec<String> = self.prefix.parts().map(|p| p.as_ref().to_owned()).collect();
        for part in key.split('/').filter(|p| !p.is_empty()) {
            if part == ".." || part == "." {
                return Err(Error::Artifact {
                    uri: self.uri(key),
                    message: "keys may not contain `.` or `..` segments".into(),
                });
            }
            parts.push(part.to_owned());
        }
        Ok(ObjectPath::from_iter(parts))
    }

    /// Stores `bytes` at `key` atomically (readers see all of it or none); returns the URI.
    pub async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<String> {
        let path = self.path(key)?;
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| self.error(key, "upload failed", e))?;
        Ok(self.uri(key))
    }

    /// Uploads the local file `from` to `key`; returns its URI and manifest entry.
    pub async fn put_file(&self, key: &str, from: &Path) -> Result<(String, FileEntry)> {
        let bytes = tokio::fs::read(from).await.map_err(|e| Error::Artifact {
            uri: from.display().to_string(),
            message: format!("cannot read it for upload: {e}"),
        })?;
        let entry = FileEntry {
            size: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        };
        let uri = self.put_bytes(key, bytes).await?;
        Ok((uri, entry))
    }

    /// The object at `key`; NotFound is reported as such in the message.
    pub async fn get_bytes(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        let got = self
            .store
            .get(&path)
            .await
            .map_err(|e| self.error(key, "download failed", e))?;
        let bytes = got
            .bytes()
            .await
            .map_err(|e| self.error(key, "download failed", e))?;
        Ok(bytes.to_vec())
    }

    /// Downloads `key` into the local file `to` (via a temporary file renamed into place), and
    /// returns its size and sha256.
    pub async fn get_file(&self, key: &str, to: &Path) -> Result<FileEntry> {
        let bytes = self.get_bytes(key).await?;
        let entry = FileEntry {
            size: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        };
        write_atomically(to, &bytes).await?;
        Ok(entry)
    }

    /// Every object under `prefix` (`""`: the whole store), with keys relative to `prefix`,
    /// sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ListedObject>> {
        use futures::TryStreamExt;
        let path = self.path(prefix)?;
        let base_parts = path.parts().count();
        let mut listed: Vec<ListedObject> = self
            .store
            .list(Some(&path))
            .map_ok(|meta| ListedObject {
                key: meta
                    .location
                    .parts()
                    .skip(base_parts)
                    .map(|p| p.as_ref().to_owned())
                    .collect::<Vec<_>>()
                    .join("/"),
                size: meta.size,
                modified_ns: meta.last_modified.timestamp_nanos_opt().unwrap_or(0) as i128,
            })
            .try_collect()
            .await
            .map_err(|e| self.error(prefix, "cannot list", e))?;
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listed)
    }

    /// The "directories" right under `prefix` (keys sharing a next `/`-separated part), as
    /// names, sorted.
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let path = self.path(prefix)?;
        let listed = self
            .store
            .list_with_delimiter(Some(&path))
            .await
            .map_err(|e| self.error(prefix, "cannot list", e))?;
        let mut dirs: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    /// Whether `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        let path = self.path(key)?;
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(key, "cannot stat", e)),
        }
    }

    /// Reads the manifest of the run at `prefix` and checks every file it lists against its
    /// sha256: the check made before a model is recorded or promoted.
    pub async fn verify_run(&self, prefix: &str) -> Result<Manifest> {
        let manifest = self.read_manifest(prefix).await?;
        for (name, expected) in &manifest.files {
            let file_key = format!("{prefix}/{name}");
            let bytes = self.get_bytes(&file_key).await?;
            let got = sha256_hex(&bytes);
            if got != expected.sha256 || bytes.len() as u64 != expected.size {
                return Err(Error::Artifact {
                    uri: self.uri(&file_key),
                    message: format!(
                        "does not match its manifest: expected {} bytes with sha256 {}, found {} \
                         bytes with sha256 {got}",
                        expected.size,
                        expected.sha256,
                        bytes.len()
                    ),
                });
            }
        }
        Ok(manifest)
    }

    /// Reads the manifest of the run at `prefix`, without checking the files it lists.
    pub async fn read_manifest(&self, prefix: &str) -> Result<Manifest> {
        let key = format!("{prefix}/{MANIFEST}");
        let raw = self.get_bytes(&key).await?;
        serde_json::from_slice(&raw).map_err(|e| self.error(&key, "is not a valid run manifest", e))
    }

    fn error(&self, key: &str, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Artifact {
            uri: self.uri(key),
            message: format!("{what}: {e}"),
        }
    }
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

async fn write_atomically(to: &Path, bytes: &[u8]) -> Result<()> {
    let fail = |e: std::io::Error| Error::Artifact {
        uri: to.display().to_string(),
        message: format!("cannot write the download: {e}"),
    };
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await.map_err(fail)?;
    }
    let mut tmp = PathBuf::from(to);
    let name = to
        .file_name()
        .map_or_else(Default::default, |n| n.to_owned());
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(&name);
    tmp_name.push(format!(".{}.part", std::process::id()));
    tmp.set_file_name(tmp_name);
    tokio::fs::write(&tmp, bytes).await.map_err(fail)?;
    tokio::fs::rename(&tmp, to).await.map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_round_trip_through_a_local_directory_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path().join("artifacts").to_str().unwrap()).unwrap();
        assert!(store.base().starts_with("file:///") && store.base().ends_with("artifacts/"));
        let src = dir.path().join("w.bin");
        std::fs::write(&src, b"weights").unwrap();
        let (uri, entry) = store
            .put_file("runs/j1/attempt-1/w.bin", &src)
            .await
            .unwrap();
        assert_eq!(uri, format!("{}runs/j1/attempt-1/w.bin", store.base()));
        assert_eq!(entry.size, 7);
        assert!(
            dir.path()
                .join("artifacts/runs/j1/attempt-1/w.bin")
                .is_file(),
            "a local store is a plain directory tree"
        );
        let key = store.key_of(&uri).unwrap();
        let back = dir.path().join("back/w.bin");
        assert_eq!(store.get_file(&key, &back).await.unwrap(), entry);
        assert_eq!(std::fs::read(&back).unwrap(), b"weights");
        assert!(store.exists(&key).await.unwrap());
        assert!(!store.exists("runs/none").await.unwrap());
    }

    #[tokio::test]
    async fn foreign_uris_and_dot_dot_keys_are_refused() {
        let store = ArtifactStore::open("memory://").unwrap();
        assert!(store.key_of("s3://elsewhere/x").is_err());
        assert!(store.key_of(&store.uri("runs/../../etc/passwd")).is_err());
        let err = store
            .put_bytes("runs/../x", b"x".to_vec())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("`..`"), "{err}");
        let err = store
            .get_bytes("runs/missing")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("runs/missing") && err.contains("download failed"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn verify_run_catches_a_changed_byte() {
        let store = ArtifactStore::open("memory://").unwrap();
        let prefix = run_prefix("j", 1);
        store
            .put_bytes(&format!("{prefix}/model.safetensors"), b"abc".to_vec())
            .await
            .unwrap();
        let manifest = Manifest {
            job_id: "j".into(),
            attempt: 1,
            files: BTreeMap::from([(
                "model.safetensors".into(),
                FileEntry {
                    size: 3,
                    sha256: sha256_hex(b"abc"),
                },
            )]),
            dataset_root: "root".into(),
            code_version: crate::VERSION.into(),
            libtorch_version: "2.13.0".into(),
        };
        store
            .put_bytes(
                &format!("{prefix}/{MANIFEST}"),
                serde_json::to_vec(&manifest).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(store.verify_run(&prefix).await.unwrap(), manifest);
        store
            .put_bytes(&format!("{prefix}/model.safetensors"), b"abd".to_vec())
            .await
            .unwrap();
        let err = store.verify_run(&prefix).await.unwrap_err().to_string();
        assert!(err.contains("does not match its manifest"), "{err}");
    }
}
