//! Registered datasets: registration, versions, scans, and recording what a scan found.

use std::collections::BTreeMap;
use std::time::SystemTime;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use trainfleet_core::kv::TxnOp;

use crate::error::{Error, Result};
use crate::events::{EventKind, JobEvent};
use crate::records;
use crate::records::{DatasetRecord, JobKind, JobState, VersionRecord};

use super::{Control, Inner, Submission, no_dataset, retrain};

impl Control {
    /// Registers a dataset, or replaces the source and policy of one with the same name (its
    /// versions stay).
    pub async fn register_dataset(&self, mut record: DatasetRecord) -> Result<DatasetRecord> {
        let (registered, ack) = {
            let mut inner = self.lock();
            if let Some(existing) = inner.datasets.get(&record.name) {
                record.versions = existing.versions.clone();
                record.created_at = existing.created_at;
                record.retrain = existing.retrain.clone();
            }
            record.retrain.next_scan_at = retrain::next_scan(&record, SystemTime::now());
            let ops = vec![TxnOp::Put(
                records::dataset_key(&record.name),
                records::encode(&record),
            )];
            let registered = record.clone();
            inner.datasets.insert(record.name.clone(), record);
            (registered, self.journal.record(ops))
        };
        ack.durable().await.map_err(Error::Store)?;
        Ok(registered)
    }

    /// Every registered dataset, by name.
    pub fn datasets(&self) -> Vec<DatasetRecord> {
        self.lock().datasets.values().cloned().collect()
    }

    /// A dataset's versions, newest first, starting below version number `before` (0: newest).
    pub fn versions(
        &self,
        name: &str,
        page_size: usize,
        before: u64,
    ) -> Result<(Vec<VersionRecord>, u64)> {
        let inner = self.lock();
        let d = inner.datasets.get(name).ok_or_else(|| no_dataset(name))?;
        let mut matching = d
            .versions
            .iter()
            .rev()
            .filter(|v| before == 0 || v.number < before);
        let page: Vec<_> = matching.by_ref().take(page_size).cloned().collect();
        let next = match (matching.next(), page.last()) {
            (Some(_), Some(last)) => last.number,
            _ => 0,
        };
        Ok((page, next))
    }

    /// One version: by root hash, by number, or "latest".
    pub fn version(&self, name: &str, which: &str) -> Result<VersionRecord> {
        let inner = self.lock();
        let d = inner.datasets.get(name).ok_or_else(|| no_dataset(name))?;
        let found = match which {
            "" | "latest" => d.versions.last(),
            text => match text.parse::<u64>() {
                Ok(n) => d.versions.iter().find(|v| v.number == n),
                Err(_) => d.versions.iter().find(|v| v.root == text),
            },
        };
        found.cloned().ok_or_else(|| {
            Error::NotFound(format!(
                "dataset `{name}` has no version {which:?} ({} recorded)",
                d.versions.len()
            ))
        })
    }

    /// Scans a dataset on a worker that can see it and waits for the result: the version after
    /// the scan and whether it is new. A failed scan records nothing and says why.
    pub async fn scan(
        &self,
        name: &str,
        full: bool,
        shutdown: &CancellationToken,
    ) -> Result<(VersionRecord, bool)> {
        let job = self
            .submit(
                Submission::Scan {
                    dataset: name.to_owned(),
                    full,
                },
                String::new(),
            )
            .await?;
        let id = job.record.id;
        let (view, rx) = self.watch(&id).await?;
        let mut current = view.record;
        if let Some(mut rx) = rx {
            loop {
                let event = tokio::select! {
                    e = rx.recv() => e,
                    _ = shutdown.cancelled() => return Err(Error::ShuttingDown),
                };
                match event {
                    Ok(JobEvent {
                        kind: EventKind::Finished(_),
                        ..
                    })
                    | Err(broadcast::error::RecvError::Closed) => {
                        current = self.get(&id).await?.record;
                        break;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                }
            }
        }
        if current.state != JobState::Succeeded {
            return Err(Error::FailedPrecondition(format!(
                "scan of `{name}` (job {id}) failed, no version recorded: {}",
                current.error
            )));
        }
        let changed = current.scanned.is_some_and(|(_, changed)| changed);
        Ok((self.version(name, "latest")?, changed))
    }
}

impl Inner {
    /// A scan finished: record a version if the root changed, and end the job.
    pub(super) fn scanned(&mut self, job_id: &str, detail_json: &str, ops: &mut Vec<TxnOp>) {
        #[derive(serde::Deserialize)]
        struct ScanDetail {
            root: String,
            samples: u64,
            by_class: BTreeMap<String, u64>,
            by_split: BTreeMap<String, u64>,
            added: u64,
            removed: u64,
            changed: u64,
            manifest_uri: String,
            #[serde(default)]
            skipped: u64,
            #[serde(default)]
            skipped_examples: Vec<(String, String)>,
            #[serde(default)]
            empty_classes: Vec<String>,
        }
        let JobKind::Scan { dataset, .. } = self.jobs[job_id].kind.clone() else {
            return;
        };
        let detail: ScanDetail = match serde_json::from_str(detail_json) {
            Ok(d) => d,
            Err(e) => {
                self.finish(
                    job_id,
                    JobState::Failed,
                    format!("the scan task's result is not readable: {e}"),
                    ops,
                );
                return;
            }
        };
        let Some(record) = self.datasets.get_mut(&dataset) else {
            self.finish(
                job_id,
                JobState::Failed,
                format!("dataset `{dataset}` was removed during the scan"),
                ops,
            );
            return;
        };
        let new = record.versions.last().is_none_or(|v| v.root != detail.root);
        if new {
            let number = record.versions.last().map_or(1, |v| v.number + 1);
            record.versions.push(VersionRecord {
                number,
                root: detail.root,
                samples: detail.samples,
                by_class: detail.by_class,
                by_split: detail.by_split,
                added: detail.added,
                removed: detail.removed,
                changed: detail.changed,
                manifest_uri: detail.manifest_uri,
                created_at: SystemTime::now(),
                skipped: detail.skipped,
                skipped_examples: detail.skipped_examples,
                empty_classes: detail.empty_classes,
            });
            ops.push(TxnOp::Put(
                records::dataset_key(&dataset),
                records::encode(&*record),
            ));
            tracing::info!(%dataset, number, "new dataset version recorded");
        }
        let number = record.versions.last().map_or(0, |v| v.number);
        let job = self.jobs.get_mut(job_id).expect("exists");
        job.scanned = Some((number, new));
        let trigger = match job.kind {
            JobKind::Scan {
                scheduled: true, ..
            } => retrain::Trigger::Schedule,
            _ => retrain::Trigger::Scan,
        };
        self.finish(job_id, JobState::Succeeded, String::new(), ops);
        if new {
            self.consider_retrain(&dataset, number, trigger, "", SystemTime::now(), ops);
        }
    }
}
