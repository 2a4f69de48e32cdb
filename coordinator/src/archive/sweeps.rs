//! Finished sweeps past retention, with their trials: `archive/sweeps/<id>.json` and an index
//! marker per sweep, ordered newest first like the jobs' (sweep ids are `s-<millis>-<random>`
//! in fixed-width hex). The object is written before its marker, and both before the sweep
//! leaves the state store (`control/retention/sweeps.rs`).

use std::time::SystemTime;

use super::{CONCURRENCY, JobArchive, archive_error, bucket, mirrored, plausible};
use crate::error::Result;
use crate::records::{SweepRecord, SweepState, TrialRecord};
use futures::StreamExt;

const SWEEPS: &str = "archive/sweeps/";
const SWEEP_INDEX: &str = "archive/sweep-index/";

/// One archived sweep.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ArchivedSweep {
    /// The sweep as it was when it left the store.
    pub sweep: SweepRecord,
    /// Its trials, by number.
    pub trials: Vec<TrialRecord>,
    /// When it was archived.
    pub archived_at: SystemTime,
}

fn state_name(state: SweepState) -> &'static str {
    match state {
        SweepState::Running => "running",
        SweepState::Gating => "gating",
        SweepState::Succeeded => "succeeded",
        SweepState::Failed => "failed",
        SweepState::Cancelled => "cancelled",
    }
}

impl JobArchive {
    /// Writes `archived` (object, then its index marker). Idempotent.
    pub async fn put_sweep(&self, archived: &ArchivedSweep) -> Result<()> {
        let id = &archived.sweep.id;
        if !plausible(id) {
            return Err(archive_error(format!("sweep id {id:?} cannot be archived")));
        }
        let body = serde_json::to_vec(archived).map_err(archive_error)?;
        self.store
            .put_bytes(&format!("{SWEEPS}{id}.json"), body)
            .await
            .map_err(archive_error)?;
        let order = mirrored(id);
        let marker = format!(
            "{SWEEP_INDEX}{}/{order}.{}",
            bucket(&order),
            state_name(archived.sweep.state)
        );
        self.store
            .put_bytes(&marker, Vec::new())
            .await
            .map_err(archive_error)?;
        Ok(())
    }

    /// Writes many, [`CONCURRENCY`] at a time; each sweep's own result, in order.
    pub async fn put_sweeps(&self, sweeps: &[ArchivedSweep]) -> Vec<Result<()>> {
        let writes: Vec<_> = sweeps.iter().map(|s| self.put_sweep(s)).collect();
        futures::stream::iter(writes)
            .buffered(CONCURRENCY)
            .collect()
            .await
    }

    /// The archived sweep `id`, if there is one.
    pub async fn get_sweep(&self, id: &str) -> Result<Option<ArchivedSweep>> {
        self.read(SWEEPS, id).await
    }

    /// Ids of archived sweeps older than `before` (all when empty), newest first, at most
    /// `limit`.
    pub async fn sweep_ids(&self, before: &str, limit: usize) -> Result<Vec<String>> {
        self.scan(SWEEP_INDEX, before, limit, |_| true).await
    }
}
