//! The retrain loop: a new dataset version (or a person, or a postponed decision coming due)
//! asks the dataset's policy ([`policy::decide`]), the answer is recorded with its reason, and
//! acted on inside the same critical section as the change that caused it:
//!
//! - **Fired**: a training job is queued from the policy's `job_yaml`, its dataset pointed at
//!   the registered folder and pinned to the version (root and manifest), so the worker trains
//!   on exactly that version or refuses. It is the dataset's pending retrain until a worker
//!   leases it; then its key joins the started keys (idempotency) and `last_retrain_at` is set.
//! - **Coalesced**: the pending retrain, still queued, is re-pinned to the newer version.
//! - **Deferred**: remembered with its time; the ticker decides again when it comes.
//! - **Skipped**: only recorded.
//!
//! A retrain that fails or is cancelled gives its key back, so the same version can be retried.
//!
//! This file keeps the policy's book (decisions and what they do); [`job`] makes the job a
//! retrain runs, pinned to its version; [`ticker`] takes postponed decisions when they come due
//! and starts scheduled scans (cron in the dataset's time zone).

use std::time::SystemTime;

use trainfleet_core::job::JobSpec;
use trainfleet_core::policy::{self, Cause, Decision, RetrainState, VersionFacts};

mod job;
#[cfg(test)]
mod tests;
mod ticker;

pub use job::retrain_spec;
pub(super) use job::{resolve_registered, scan_dataset_yaml};
pub use ticker::{next_scan, run_ticker};

use super::{Control, Inner, NewJob};
use crate::error::{Error, Result};
use crate::records::{
    self, DecisionOutcome, DecisionRecord, Deferred, JobKind, PendingRetrain, RetrainOrigin,
    VersionRecord,
};
use trainfleet_core::kv::TxnOp;

/// Decisions kept per dataset; older ones are deleted.
pub(super) const HISTORY: usize = 1000;

/// What asked the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// A requested scan recorded a new version.
    Scan,
    /// A scheduled scan recorded a new version.
    Schedule,
    /// `trainfleet retrain` / DatasetService.Retrain.
    Manual,
    /// A decision postponed by min_interval came due.
    Deferred,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Scan => "scan",
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::Deferred => "deferred",
        }
    }
}

fn facts(v: &VersionRecord) -> VersionFacts {
    let mut by_class = v.by_class.clone();
    for class in &v.empty_classes {
        by_class.entry(class.clone()).or_insert(0);
    }
    VersionFacts {
        root: v.root.clone(),
        samples: v.samples,
        by_class,
    }
}

impl Inner {
    /// What [`policy::decide`] needs to know about `dataset`. The champion's version is read
    /// through the champion pointer, so a rollback or a manual promotion counts.
    fn policy_state(&self, dataset: &str) -> RetrainState {
        let record = &self.datasets[dataset];
        let version_of = |root: &str| record.versions.iter().find(|v| v.root == root);
        let champion_version = self
            .champions
            .get(dataset)
            .and_then(|c| self.models.get(&c.model_id))
            .and_then(|m| version_of(&m.dataset_version))
            .map(facts);
        let pending = record.retrain.pending.as_ref().and_then(|p| {
            let v = record.versions.iter().find(|v| v.number == p.version)?;
            Some((facts(v), p.key.clone()))
        });
        RetrainState {
            champion_version,
            last_retrain_at: record.retrain.last_retrain_at,
            pending,
            started_keys: record.retrain.started_keys.clone(),
        }
    }

    /// Asks `dataset`'s policy about version `number`, records the decision and acts on it.
    pub(super) fn consider_retrain(
        &mut self,
        dataset: &str,
        number: u64,
        trigger: Trigger,
        note: &str,
        now: SystemTime,
        ops: &mut Vec<TxnOp>,
    ) -> DecisionRecord {
        let record = &self.datasets[dataset];
        let version = record
            .versions
            .iter()
            .find(|v| v.number == number)
            .expect("decisions are about recorded versions")
            .clone();
        let cause = match trigger {
            Trigger::Manual => Cause::Manual,
            _ => Cause::NewVersion,
        };
        let (outcome, reason, job_id, defer_until) = match retrain_spec(record, Some(&version)) {
            Err(why) => (DecisionOutcome::Skipped, why, String::new(), None),
            Ok(spec) => {
                let decision = policy::decide(
                    &record.policy,
                    &self.policy_state(dataset),
                    &facts(&version),
                    &spec.config_hash(),
                    cause,
                    now,
                );
                match decision {
                    Decision::Fire { key, reason } => {
                        let id = self.fire(dataset, number, spec, key, now, ops);
                        (DecisionOutcome::Fired, reason, id, None)
                    }
                    Decision::Coalesce { key, reason } => {
                        let id = self.coalesce(dataset, number, spec, key, ops);
                        (DecisionOutcome::Coalesced, reason, id, None)
                    }
                    Decision::Skip { reason } => {
                        (DecisionOutcome::Skipped, reason, String::new(), None)
                    }
                    Decision::Defer { until, reason } => {
                        let book = &mut self.datasets.get_mut(dataset).expect("exists").retrain;
                        book.deferred = Some(Deferred {
                            version: number,
                            until,
                        });
                        (
                            DecisionOutcome::Deferred,
                            reason,
                            String::new(),
                            Some(until),
                        )
                    }
                }
            }
        };
        let reason = if note.is_empty() {
            reason
        } else {
            format!("{reason} (asked: {note})")
        };
        let record = self.datasets.get_mut(dataset).expect("exists");
        if matches!(outcome, DecisionOutcome::Fired | DecisionOutcome::Coalesced) {
            // The retrain now waiting trains on this version or a newer one: nothing is left
            // to decide later.
            record.retrain.deferred = None;
        }
        let decision = DecisionRecord {
            dataset: dataset.to_owned(),
            seq: record.retrain.decisions,
            decided_at: now,
            trigger: trigger.name().to_owned(),
            version: number,
            root: version.root.clone(),
            outcome,
            reason,
            job_id,
            defer_until,
        };
        record.retrain.decisions += 1;
        ops.push(TxnOp::Put(
            records::dataset_key(dataset),
            records::encode(&*record),
        ));
        ops.push(TxnOp::Put(
            records::decision_key(dataset, decision.seq),
            records::encode(&decision),
        ));
        let history = self.decisions.entry(dataset.to_owned()).or_default();
        history.push_back(decision.clone());
        while history.len() > HISTORY {
            let old = history.pop_front().expect("non-empty");
            ops.push(TxnOp::Delete(records::decision_key(dataset, old.seq)));
        }
        tracing::info!(
            %dataset, version = number, trigger = trigger.name(), outcome = ?decision.outcome,
            reason = %decision.reason, job_id = %decision.job_id, "retrain decision"
        );
        decision
    }

    fn fire(
        &mut self,
        dataset: &str,
        number: u64,
        spec: JobSpec,
        key: String,
        now: SystemTime,
        ops: &mut Vec<TxnOp>,
    ) -> String {
        let mut new = NewJob::train(
            spec,
            Some(RetrainOrigin {
                dataset: dataset.to_owned(),
                key: key.clone(),
            }),
        );
        new.name = format!("{} (v{number})", new.name);
        new.idempotency_key = format!("retrain:{dataset}:{key}");
        let id = self.create_job(new, now, ops);
        let record = self.datasets.get_mut(dataset).expect("exists");
        record.retrain.pending = Some(PendingRetrain {
            job_id: id.clone(),
            version: number,
            key,
        });
        id
    }

    /// Re-pins the queued retrain to version `number` (newest wins).
    fn coalesce(
        &mut self,
        dataset: &str,
        number: u64,
        spec: JobSpec,
        key: String,
        ops: &mut Vec<TxnOp>,
    ) -> String {
        let record = self.datasets.get_mut(dataset).expect("exists");
        let pending = record
            .retrain
            .pending
            .as_mut()
            .expect("the policy coalesces only into a pending retrain");
        pending.version = number;
        pending.key = key.clone();
        let job_id = pending.job_id.clone();
        let job = self
            .jobs
            .get_mut(&job_id)
            .expect("a pending retrain has a job");
        job.name = format!("{} (v{number})", spec.name);
        job.kind = JobKind::Train {
            spec: Box::new(spec),
        };
        let old_key =
            std::mem::replace(&mut job.idempotency_key, format!("retrain:{dataset}:{key}"));
        job.retrain = Some(RetrainOrigin {
            dataset: dataset.to_owned(),
            key,
        });
        let new_key = job.idempotency_key.clone();
        self.idempotency.remove(&old_key);
        self.idempotency.insert(new_key, job_id.clone());
        self.put_job(&job_id, ops);
        job_id
    }

    /// A retrain's first lease: it is no longer pending, and its key is taken.
    pub(super) fn retrain_started(&mut self, job_id: &str, now: SystemTime, ops: &mut Vec<TxnOp>) {
        let Some(origin) = self.jobs[job_id].retrain.clone() else {
            return;
        };
        let Some(record) = self.datasets.get_mut(&origin.dataset) else {
            return;
        };
        let book = &mut record.retrain;
        if book.pending.as_ref().is_some_and(|p| p.job_id == job_id) {
            book.pending = None;
        }
        if !book.started_keys.contains(&origin.key) {
            book.started_keys.push(origin.key);
        }
        book.last_retrain_at = Some(now);
        ops.push(TxnOp::Put(
            records::dataset_key(&record.name),
            records::encode(&*record),
        ));
    }

    /// A retrain ended: a failed or cancelled one gives its key back (the version may be
    /// retried); one cancelled while queued is no longer pending.
    pub(super) fn retrain_ended(&mut self, job_id: &str, succeeded: bool, ops: &mut Vec<TxnOp>) {
        let Some(origin) = self.jobs.get(job_id).and_then(|j| j.retrain.clone()) else {
            return;
        };
        let Some(record) = self.datasets.get_mut(&origin.dataset) else {
            return;
        };
        let book = &mut record.retrain;
        if book.pending.as_ref().is_some_and(|p| p.job_id == job_id) {
            book.pending = None;
        }
        if !succeeded {
            book.started_keys.retain(|k| *k != origin.key);
        }
        ops.push(TxnOp::Put(
            records::dataset_key(&record.name),
            records::encode(&*record),
        ));
    }
}

impl Control {
    /// A manual retrain request: the policy decides (idempotency, coalescing, min_interval
    /// still apply) and the decision is recorded and returned.
    pub async fn retrain(&self, name: &str, which: &str, note: &str) -> Result<DecisionRecord> {
        let (decision, ack) = {
            let mut inner = self.lock();
            let record = inner
                .datasets
                .get(name)
                .ok_or_else(|| super::no_dataset(name))?;
            if record.versions.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "dataset `{name}` has no version yet: scan it first (trainfleet dataset scan {name})"
                )));
            }
            if let Err(why) = retrain_spec(record, None) {
                return Err(Error::FailedPrecondition(why));
            }
            let number = match which {
                "" | "latest" => record.versions.last().expect("not empty").number,
                text => record
                    .versions
                    .iter()
                    .find(|v| v.root == text || v.number.to_string() == text)
                    .map(|v| v.number)
                    .ok_or_else(|| {
                        Error::NotFound(format!("dataset `{name}` has no version {text:?}"))
                    })?,
            };
            let mut ops = Vec::new();
            let decision = inner.consider_retrain(
                name,
                number,
                Trigger::Manual,
                note,
                SystemTime::now(),
                &mut ops,
            );
            let ack = self.journal.record(ops);
            self.dispatch(&mut inner);
            (decision, ack)
        };
        ack.durable().await.map_err(Error::Store)?;
        Ok(decision)
    }

    /// A dataset's retrain decisions, newest first.
    pub fn history(&self, name: &str, limit: usize) -> Result<Vec<DecisionRecord>> {
        let inner = self.lock();
        if !inner.datasets.contains_key(name) {
            return Err(super::no_dataset(name));
        }
        Ok(inner
            .decisions
            .get(name)
            .map(|h| h.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default())
    }
}
