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
//! A policy with `sweep_yaml` retrains with a sweep instead of one job, the same way ([`sweep`]).
//!
//! This file keeps the policy's book (decisions and what they do); [`job`] makes the job a
//! retrain runs, pinned to its version; [`sweep`] the sweep, warm-started from the previous
//! one; [`ticker`] takes postponed decisions when they come due and starts scheduled scans
//! (cron in the dataset's time zone).

use std::time::SystemTime;

use trainfleet_core::job::JobSpec;
use trainfleet_core::policy::{self, Cause, Decision, RetrainState, VersionFacts};
use trainfleet_core::sweep::SweepSpec;

mod job;
mod sweep;
#[cfg(test)]
mod sweep_tests;
#[cfg(test)]
mod tests;
mod ticker;

pub use job::retrain_spec;
pub(super) use job::{resolve_registered, scan_dataset_yaml};
pub use sweep::retrain_sweep;
pub use ticker::{next_scan, run_ticker};

use super::{Control, Inner, NewJob};
use crate::error::{Error, Result};
use crate::records::{
    self, DatasetRecord, DecidedSweep, DecisionOutcome, DecisionRecord, Deferred, JobKind,
    PendingRetrain, RetrainOrigin, VersionRecord,
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

/// What a retrain runs: the policy's job, or a sweep over it.
pub(crate) enum Plan {
    Job(JobSpec),
    Sweep(SweepSpec),
}

impl Plan {
    /// The retrain `record`'s policy runs on `version` (`None`: only checks that it can).
    pub(crate) fn of(
        record: &DatasetRecord,
        version: Option<&VersionRecord>,
    ) -> std::result::Result<Self, String> {
        if record.sweep.is_some() {
            retrain_sweep(record, version).map(Plan::Sweep)
        } else {
            retrain_spec(record, version).map(Plan::Job)
        }
    }

    fn config_hash(&self) -> String {
        match self {
            Plan::Job(spec) => spec.config_hash(),
            Plan::Sweep(spec) => spec.config_hash(),
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
        let mut sweep = None;
        let (outcome, reason, job_id, defer_until) = match Plan::of(record, Some(&version)) {
            Err(why) => (DecisionOutcome::Skipped, why, String::new(), None),
            Ok(plan) => {
                let decision = policy::decide(
                    &record.policy,
                    &self.policy_state(dataset),
                    &facts(&version),
                    &plan.config_hash(),
                    cause,
                    now,
                );
                match decision {
                    Decision::Fire { key, reason } => {
                        let (id, decided) = self.fire(dataset, number, plan, key, now, ops);
                        sweep = decided;
                        (DecisionOutcome::Fired, reason, id, None)
                    }
                    Decision::Coalesce { key, reason } => {
                        let (id, decided) = self.coalesce(dataset, number, plan, key, now, ops);
                        sweep = decided;
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
            sweep,
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
            reason = %decision.reason, job_id = %decision.job_id,
            sweep_id = decision.sweep.as_ref().map_or("", |s| s.sweep_id.as_str()),
            "retrain decision"
        );
        decision
    }

    /// Queues the retrain: a job, or a sweep (then the job id is empty).
    fn fire(
        &mut self,
        dataset: &str,
        number: u64,
        plan: Plan,
        key: String,
        now: SystemTime,
        ops: &mut Vec<TxnOp>,
    ) -> (String, Option<DecidedSweep>) {
        let spec = match plan {
            Plan::Job(spec) => spec,
            Plan::Sweep(spec) => {
                let decided = self.fire_sweep(dataset, number, spec, key, now, ops);
                return (String::new(), Some(decided));
            }
        };
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
            sweep_id: String::new(),
            version: number,
            key,
        });
        (id, None)
    }

    /// Re-pins the queued retrain to version `number` (newest wins). When the policy changed
    /// between a job and a sweep since it was queued, the queued one is cancelled and the new
    /// kind fires instead.
    fn coalesce(
        &mut self,
        dataset: &str,
        number: u64,
        plan: Plan,
        key: String,
        now: SystemTime,
        ops: &mut Vec<TxnOp>,
    ) -> (String, Option<DecidedSweep>) {
        let record = self.datasets.get_mut(dataset).expect("exists");
        let pending = record
            .retrain
            .pending
            .clone()
            .expect("the policy coalesces only into a pending retrain");
        let spec = match (plan, pending.sweep_id.is_empty()) {
            (Plan::Job(spec), true) => spec,
            (Plan::Sweep(spec), false) => {
                let decided = self.coalesce_sweep(&pending.sweep_id, number, spec, key, ops);
                return (String::new(), Some(decided));
            }
            (plan, _) => {
                let why = "replaced: the dataset's policy changed between a job and a sweep";
                if pending.sweep_id.is_empty() {
                    self.cancel_job(&pending.job_id, why.to_owned(), ops);
                } else {
                    self.cancel_sweep_in(&pending.sweep_id, why.to_owned(), ops);
                }
                let record = self.datasets.get_mut(dataset).expect("exists");
                record.retrain.pending = None;
                record.retrain.started_keys.retain(|k| *k != pending.key);
                return self.fire(dataset, number, plan, key, now, ops);
            }
        };
        let record = self.datasets.get_mut(dataset).expect("exists");
        let pending = record.retrain.pending.as_mut().expect("checked above");
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
        (job_id, None)
    }

    /// A retrain's first lease (a retrain sweep's: its first trial's): it is no longer pending,
    /// and its key is taken.
    pub(super) fn retrain_started(&mut self, job_id: &str, now: SystemTime, ops: &mut Vec<TxnOp>) {
        let job = &self.jobs[job_id];
        let (origin, sweep_id) = match (&job.retrain, &job.sweep) {
            (Some(origin), _) => (origin.clone(), String::new()),
            (None, Some(link)) => match self.sweeps.get(&link.sweep_id) {
                Some(s) if s.retrain.is_some() => {
                    (s.retrain.clone().expect("checked"), s.id.clone())
                }
                _ => return,
            },
            _ => return,
        };
        let Some(record) = self.datasets.get_mut(&origin.dataset) else {
            return;
        };
        let book = &mut record.retrain;
        let was_pending = book.pending.as_ref().is_some_and(|p| {
            if sweep_id.is_empty() {
                p.job_id == job_id
            } else {
                p.sweep_id == sweep_id
            }
        });
        if !sweep_id.is_empty() && !was_pending && book.started_keys.contains(&origin.key) {
            // A later trial of a sweep already started.
            return;
        }
        if was_pending {
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
        record
            .retrain
            .retrain_ended(|p| p.job_id == job_id, &origin.key, succeeded);
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
            if let Err(why) = Plan::of(record, None) {
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
