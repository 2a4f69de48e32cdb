//! The job archive: finished jobs past retention, moved out of the state store into the artifact
//! store, where `Get`, `List`, `Watch` and `trainfleet runs show` still find them.
//!
//! Layout under the artifact store's base:
//!
//! ```text
//! archive/jobs/<job_id>.json                     one ArchivedJob: the job record, its tasks and
//!                                                 the model it trained (if any)
//! archive/index/<bucket>/<order key>.<state>     an empty marker per archived job
//! archive/models/<bucket>/<order key>.<digest>   an empty marker per archived model; the digest
//!                                                 names its dataset (sha256, 16 hex digits)
//! archive/sweeps/<sweep_id>.json                 one ArchivedSweep: the sweep and its trials
//! archive/sweep-index/<bucket>/<order key>.<state> an empty marker per archived sweep
//! ```
//!
//! A model's id is its job's (`m-` for `j-`), so an archived model is read from its job's object.
//!
//! The index is the marker keys themselves: the order key is the job id with every hex digit
//! `d` written as `f - d`, so key order is newest first (job ids are `j-<millis>-<random>` in
//! fixed-width hex), and the state after the dot lets `List` filter without reading a job. The
//! bucket is the order key's first [`BUCKET_DIGITS`] digits of time (about 4.7 hours of
//! submissions each), so a page deep in the history lists the buckets, then only the few it
//! needs, newest first, rather than the whole index. The
//! job object is written before its marker, and both before the job leaves the state store (see
//! `control/retention.rs`), so a crash at any point leaves the job in the store, in the
//! archive, or in both, never in neither; writing either object again is harmless.

use std::time::SystemTime;

use futures::StreamExt;
use trainfleet_core::artifacts::ArtifactStore;

use crate::error::{Error, Result};
use crate::records::{JobRecord, JobState, ModelRecord, TaskRecord};

mod sweeps;

pub use sweeps::ArchivedSweep;

const JOBS: &str = "archive/jobs/";
const INDEX: &str = "archive/index/";
const MODELS: &str = "archive/models/";
/// Hex digits of the mirrored time that name a bucket: 16^6 ms (about 4.7 hours) each.
const BUCKET_DIGITS: usize = 5;
/// Objects read or written at once.
const CONCURRENCY: usize = 16;

/// One archived job.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ArchivedJob {
    /// The job as it was when it left the store.
    pub job: JobRecord,
    /// Its tasks.
    pub tasks: Vec<TaskRecord>,
    /// The model it trained, unless that model is a champion or one of the champions before.
    #[serde(default)]
    pub model: Option<ModelRecord>,
    /// When it was archived.
    pub archived_at: SystemTime,
}

/// The archive over an artifact store.
#[derive(Debug, Clone)]
pub struct JobArchive {
    store: ArtifactStore,
}

fn archive_error(e: impl std::fmt::Display) -> Error {
    Error::Store(format!("job archive: {e}"))
}

/// Whether `id` can name an archived job (no path tricks reach the object store).
fn plausible(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The id with its hex digits mirrored (`0`↔`f`, `1`↔`e`, ...): ascending order of the result is
/// descending order of ids of one width. Its own inverse.
fn mirrored(id: &str) -> String {
    id.chars()
        .map(|c| match c.to_digit(16) {
            Some(d) if !c.is_ascii_uppercase() => char::from_digit(15 - d, 16).expect("hex digit"),
            _ => c,
        })
        .collect()
}

fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        JobState::Queued => "queued",
        JobState::Training => "training",
        JobState::Evaluating => "evaluating",
        JobState::Paused => "paused",
    }
}

/// The bucket of an order key: `j-` and the first [`BUCKET_DIGITS`] digits of time (or the whole
/// key, for an id of another shape).
fn bucket(order: &str) -> &str {
    order.get(..2 + BUCKET_DIGITS).unwrap_or(order)
}

/// The job id of model `model_id` (`m-…` ↔ `j-…`).
pub fn job_of_model(model_id: &str) -> Option<String> {
    model_id.strip_prefix("m-").map(|rest| format!("j-{rest}"))
}

/// The tag of a model marker: its dataset's sha256, 16 hex digits.
fn dataset_digest(dataset: &str) -> String {
    trainfleet_core::artifacts::sha256_hex(dataset.as_bytes())[..16].to_owned()
}

/// An index marker's job id and state.
fn parse_marker(key: &str) -> Option<(String, String)> {
    let (order, state) = key.rsplit_once('.')?;
    Some((mirrored(order), state.to_owned()))
}

impl JobArchive {
    /// The archive under `store`'s `archive/`.
    pub fn new(store: ArtifactStore) -> Self {
        Self { store }
    }

    /// Writes `archived` (job object, then its index marker). Idempotent.
    pub async fn put(&self, archived: &ArchivedJob) -> Result<()> {
        let id = &archived.job.id;
        if !plausible(id) {
            return Err(archive_error(format!("job id {id:?} cannot be archived")));
        }
        let body = serde_json::to_vec(archived).map_err(archive_error)?;
        self.store
            .put_bytes(&format!("{JOBS}{id}.json"), body)
            .await
            .map_err(archive_error)?;
        let order = mirrored(id);
        let marker = format!(
            "{INDEX}{}/{order}.{}",
            bucket(&order),
            state_name(archived.job.state)
        );
        self.store
            .put_bytes(&marker, Vec::new())
            .await
            .map_err(archive_error)?;
        if let Some(model) = &archived.model {
            let order = mirrored(&model.id);
            let marker = format!(
                "{MODELS}{}/{order}.{}",
                bucket(&order),
                dataset_digest(&model.dataset)
            );
            self.store
                .put_bytes(&marker, Vec::new())
                .await
                .map_err(archive_error)?;
        }
        Ok(())
    }

    /// The archived model `model_id`, if there is one.
    pub async fn get_model(&self, model_id: &str) -> Result<Option<ModelRecord>> {
        let Some(job_id) = job_of_model(model_id) else {
            return Ok(None);
        };
        Ok(self
            .get(&job_id)
            .await?
            .and_then(|a| a.model)
            .filter(|m| m.id == model_id))
    }

    /// Reads several archived models, in the order asked; a missing one is left out.
    pub async fn get_models(&self, ids: &[String]) -> Result<Vec<ModelRecord>> {
        let reads: Vec<_> = ids.iter().map(|id| self.get_model(id)).collect();
        let found: Vec<Result<Option<ModelRecord>>> = futures::stream::iter(reads)
            .buffered(CONCURRENCY)
            .collect()
            .await;
        found.into_iter().filter_map(Result::transpose).collect()
    }

    /// Ids of archived models older than `before` (all when empty), of `dataset` (any when
    /// empty), newest first, at most `limit`.
    pub async fn model_ids(
        &self,
        dataset: &str,
        before: &str,
        limit: usize,
    ) -> Result<Vec<String>> {
        let digest = dataset_digest(dataset);
        self.scan(MODELS, before, limit, |tag| {
            dataset.is_empty() || tag == digest
        })
        .await
    }

    /// Writes many, [`CONCURRENCY`] at a time; each job's own result, in order.
    pub async fn put_all(&self, jobs: &[ArchivedJob]) -> Vec<Result<()>> {
        // Futures collected first: a stream over a borrowing closure trips the compiler's
        // higher-ranked Send check when a spawned task awaits it.
        let writes: Vec<_> = jobs.iter().map(|j| self.put(j)).collect();
        futures::stream::iter(writes)
            .buffered(CONCURRENCY)
            .collect()
            .await
    }

    /// The archived job `id`, if there is one.
    pub async fn get(&self, id: &str) -> Result<Option<ArchivedJob>> {
        self.read(JOBS, id).await
    }

    /// The object `<root><id>.json`, if there is one (an implausible id never reaches the
    /// store).
    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        root: &str,
        id: &str,
    ) -> Result<Option<T>> {
        if !plausible(id) {
            return Ok(None);
        }
        let key = format!("{root}{id}.json");
        if !self.store.exists(&key).await.map_err(archive_error)? {
            return Ok(None);
        }
        let bytes = self.store.get_bytes(&key).await.map_err(archive_error)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| archive_error(format!("{} is not readable: {e}", self.store.uri(&key))))
    }

    /// Reads several archived jobs, in the order asked; a missing one is left out.
    pub async fn get_all(&self, ids: &[String]) -> Result<Vec<ArchivedJob>> {
        let reads: Vec<_> = ids.iter().map(|id| self.get(id)).collect();
        let found: Vec<Result<Option<ArchivedJob>>> = futures::stream::iter(reads)
            .buffered(CONCURRENCY)
            .collect()
            .await;
        found.into_iter().filter_map(Result::transpose).collect()
    }

    /// Ids of archived jobs older than `before` (every job when empty) in one of `states`
    /// (any when empty), newest first, at most `limit`.
    pub async fn ids(
        &self,
        states: &[JobState],
        before: &str,
        limit: usize,
    ) -> Result<Vec<String>> {
        let wanted: Vec<&str> = states.iter().map(|s| state_name(*s)).collect();
        self.scan(INDEX, before, limit, |state| {
            wanted.is_empty() || wanted.contains(&state)
        })
        .await
    }

    /// Ids from the markers under `root` older than `before` whose tag `keep` accepts, newest
    /// first, at most `limit`.
    async fn scan(
        &self,
        root: &str,
        before: &str,
        limit: usize,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>> {
        let before_order = mirrored(before);
        let first_bucket = bucket(&before_order);
        let mut found: Vec<String> = Vec::new();
        // Buckets in key order are newest first; those newer than `before`'s are skipped.
        for b in self.store.list_dirs(root).await.map_err(archive_error)? {
            if !before.is_empty() && b.as_str() < first_bucket {
                continue;
            }
            let mut markers: Vec<(String, String)> = self
                .store
                .list(&format!("{root}{b}/"))
                .await
                .map_err(archive_error)?
                .into_iter()
                .filter_map(|o| parse_marker(&o.key))
                .filter(|(id, tag)| (before.is_empty() || id.as_str() < before) && keep(tag))
                .collect();
            // Newest first; an object store need not list in key order.
            markers.sort_unstable_by(|a, b| b.0.cmp(&a.0));
            markers.dedup_by(|a, b| a.0 == b.0);
            found.extend(markers.into_iter().map(|(id, _)| id));
            if found.len() >= limit {
                break;
            }
        }
        found.truncate(limit);
        Ok(found)
    }

    /// The newest archived job's id, if any.
    pub async fn newest(&self) -> Result<Option<String>> {
        Ok(self.ids(&[], "", 1).await?.pop())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrored_ids_sort_newest_first_and_mirror_back() {
        let older = "j-0019a8c3f00-00ab12";
        let newer = "j-0019a8c3f01-000000";
        assert!(mirrored(newer) < mirrored(older));
        assert_eq!(mirrored(&mirrored(older)), older);
        assert_eq!(
            parse_marker(&format!("{}.failed", mirrored(older))),
            Some((older.to_owned(), "failed".to_owned()))
        );
        // Buckets order as their keys do, and hold about 4.7 hours each.
        assert_eq!(bucket(&mirrored(older)), "j-ffe65");
        assert_eq!(bucket(&mirrored(older)), bucket(&mirrored(newer)));
        let hours_later = format!("j-{:011x}-000000", 0x0019a8c3f00u64 + (1 << 24));
        assert!(bucket(&mirrored(&hours_later)) < bucket(&mirrored(older)));
    }

    #[tokio::test]
    async fn pages_run_newest_first_across_buckets_with_the_state_filter() {
        let dir = tempfile::tempdir().unwrap();
        let archive = JobArchive::new(ArtifactStore::open(dir.path().to_str().unwrap()).unwrap());
        // Twelve jobs an hour apart: three or four buckets of about 4.7 hours.
        let ids: Vec<String> = (0..12u64)
            .map(|h| {
                format!(
                    "j-{:011x}-00000{}",
                    0x0019a8c3f00u64 + h * 3_600_000,
                    h % 10
                )
            })
            .collect();
        for (i, id) in ids.iter().enumerate() {
            let order = mirrored(id);
            let state = if i % 3 == 0 { "failed" } else { "succeeded" };
            let key = format!("{INDEX}{}/{order}.{state}", bucket(&order));
            archive.store.put_bytes(&key, Vec::new()).await.unwrap();
        }
        assert!(archive.store.list_dirs(INDEX).await.unwrap().len() >= 3);
        let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
        assert_eq!(archive.newest().await.unwrap().as_ref(), Some(&ids[11]));
        let mut paged = Vec::new();
        let mut before = String::new();
        loop {
            let page = archive.ids(&[], &before, 5).await.unwrap();
            let Some(last) = page.last() else { break };
            before = last.clone();
            paged.extend(page);
        }
        assert_eq!(paged, newest_first);
        let failed = archive.ids(&[JobState::Failed], "", 10).await.unwrap();
        assert_eq!(failed, [&*ids[9], &ids[6], &ids[3], &ids[0]]);
        let older = archive.ids(&[JobState::Failed], &ids[6], 10).await.unwrap();
        assert_eq!(older, [&*ids[3], &ids[0]]);
    }

    #[test]
    fn only_plain_ids_reach_the_object_store() {
        assert!(plausible("j-0019a8c3f00-00ab12"));
        for bad in ["", "../x", "a/b", "j.json", &"x".repeat(65)] {
            assert!(!plausible(bad), "{bad}");
        }
    }
}
