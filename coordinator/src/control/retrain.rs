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
//! The ticker also starts scheduled scans (cron in the dataset's time zone).

use std::time::SystemTime;

use trainfleet_core::job::{JobSpec, LocalFormat};
use trainfleet_core::policy::{self, Cause, Decision, RetrainState, VersionFacts};
use trainfleet_core::schedule::Schedule;

use super::{Control, Inner, NewJob};
use crate::error::{Error, Result};
use crate::records::{
    self, DatasetRecord, DecisionOutcome, DecisionRecord, Deferred, JobKind, PendingRetrain,
    RetrainOrigin, VersionRecord,
};
use trainfleet_core::kv::TxnOp;
use trainfleet_proto::v1;

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

/// The job a retrain of `record` on `version` runs: the policy's job, its dataset pointed at
/// the registered folder and pinned to the version. `Err` says why there is none.
pub fn retrain_spec(
    record: &DatasetRecord,
    version: Option<&VersionRecord>,
) -> std::result::Result<JobSpec, String> {
    if record.job_yaml.is_empty() {
        return Err(format!(
            "the policy of `{}` has no job_yaml: there is nothing to train",
            record.name
        ));
    }
    // The job may leave `dataset` out: it is this dataset. Appending it keeps the line numbers
    // of errors in what the user wrote.
    let value: serde_yaml::Value =
        trainfleet_core::config::parse_yaml(&record.job_yaml, "policy.job_yaml")
            .map_err(|e| format!("the policy's job_yaml is not valid: {e}"))?;
    let text = if value.get("dataset").is_some() {
        record.job_yaml.clone()
    } else {
        format!("{}\ndataset: {{}}\n", record.job_yaml.trim_end())
    };
    // Parsed, not validated yet: its dataset is completed first.
    let mut spec: JobSpec = trainfleet_core::config::parse_yaml(&text, "policy.job_yaml")
        .map_err(|e| format!("the policy's job_yaml is not valid: {e}"))?;
    point_at(&mut spec.dataset, record);
    // A placeholder pin validates the shape when there is no version yet (registration).
    const PLACEHOLDER: &str = "0000000000000000000000000000000000000000000000000000000000000000";
    let d = &mut spec.dataset;
    d.version = Some(version.map_or(PLACEHOLDER.to_owned(), |v| v.root.clone()));
    // Image folders are loaded file by file from the manifest; sample datasets (builtins, IDX)
    // are checked against the root after loading.
    d.manifest = (d.format == Some(LocalFormat::Imagefolder))
        .then(|| match version {
            Some(v) => v.manifest_uri.clone(),
            None => "placeholder".to_owned(),
        })
        .filter(|m| !m.is_empty());
    if spec.name.is_empty() || spec.name == JobSpec::default().name {
        spec.name = format!("retrain {}", record.name);
    }
    spec.validate()
        .map_err(|e| format!("the policy's job_yaml does not make a valid retrain: {e}"))?;
    Ok(spec)
}

/// Points a job's dataset section at the registered source (the job's other dataset settings,
/// such as image size or synth-digits' generator settings, stay).
fn point_at(d: &mut trainfleet_core::job::DatasetSpec, record: &DatasetRecord) {
    d.name = Some(record.name.clone());
    d.builtin = None;
    d.format = None;
    d.path = None;
    d.url = None;
    if !record.builtin.is_empty() {
        d.builtin = trainfleet_core::job::Builtin::from_name(&record.builtin);
    } else if !record.url.is_empty() {
        d.format = Some(LocalFormat::Imagefolder);
        d.url = Some(record.url.clone());
    } else {
        d.format = Some(if record.format == "idx" {
            LocalFormat::Idx
        } else {
            LocalFormat::Imagefolder
        });
        d.path = Some(record.directory.clone().into());
    }
}

/// Fills in the source of a job that names a registered dataset, pinned to the version it asks
/// for (a number, a root hash, or the latest), and validates the result.
pub(super) fn resolve_registered(
    datasets: &std::collections::BTreeMap<String, DatasetRecord>,
    spec: &mut JobSpec,
) -> Result<()> {
    let name = spec.dataset.name.clone().unwrap_or_default();
    let record = datasets.get(&name).ok_or_else(|| {
        Error::NotFound(format!(
            "`dataset.name` is {name:?}, which is not registered (DatasetService.Register)"
        ))
    })?;
    let wanted = spec.dataset.version.clone().unwrap_or_default();
    let version = match wanted.as_str() {
        "" | "latest" => record.versions.last(),
        text => record
            .versions
            .iter()
            .find(|v| v.root == text || v.number.to_string() == text),
    }
    .ok_or_else(|| {
        if record.versions.is_empty() {
            Error::FailedPrecondition(format!(
                "dataset `{name}` has no version yet: scan it first (trainfleet dataset scan {name})"
            ))
        } else {
            Error::NotFound(format!("dataset `{name}` has no version {wanted:?}"))
        }
    })?;
    point_at(&mut spec.dataset, record);
    spec.dataset.version = Some(version.root.clone());
    spec.dataset.manifest = (spec.dataset.format == Some(LocalFormat::Imagefolder))
        .then(|| version.manifest_uri.clone())
        .filter(|m| !m.is_empty());
    spec.validate()?;
    Ok(())
}

/// The dataset section a scan of a builtin or IDX dataset loads: the retrain job's, so both see
/// the same samples (or the defaults when there is no job).
pub(super) fn scan_dataset_yaml(record: &DatasetRecord) -> String {
    if record.builtin.is_empty() && record.format != "idx" {
        return String::new();
    }
    let mut d = retrain_spec(record, None)
        .map(|s| s.dataset)
        .unwrap_or_default();
    point_at(&mut d, record);
    d.version = None;
    d.manifest = None;
    d.fraction = 1.0;
    serde_yaml::to_string(&d).expect("a dataset spec serialises")
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

    /// Takes due postponed decisions and starts due scheduled scans. Returns whether anything
    /// was queued.
    pub(super) fn tick(&mut self, now: SystemTime, ops: &mut Vec<TxnOp>) -> bool {
        let mut queued = false;
        let names: Vec<String> = self.datasets.keys().cloned().collect();
        for name in names {
            let book = &self.datasets[&name].retrain;
            if let Some(deferred) = book.deferred.clone()
                && deferred.until <= now
            {
                self.datasets
                    .get_mut(&name)
                    .expect("exists")
                    .retrain
                    .deferred = None;
                let d =
                    self.consider_retrain(&name, deferred.version, Trigger::Deferred, "", now, ops);
                queued |= d.outcome == DecisionOutcome::Fired;
            }
            let record = &self.datasets[&name];
            let Some(due) = record.retrain.next_scan_at.filter(|t| *t <= now) else {
                continue;
            };
            let schedule = next_scan(record, now);
            // One scheduled scan at a time: a slow scan is not stacked up behind.
            let busy = self
                .jobs
                .get(&record.retrain.scheduled_scan)
                .is_some_and(|j| !j.state.is_final());
            if busy {
                tracing::debug!(dataset = %name, ?due, "scheduled scan skipped: the last one still runs");
            } else {
                let id = self.create_job(NewJob::scan(name.clone(), false, true), now, ops);
                self.datasets
                    .get_mut(&name)
                    .expect("exists")
                    .retrain
                    .scheduled_scan = id;
                queued = true;
            }
            let record = self.datasets.get_mut(&name).expect("exists");
            record.retrain.next_scan_at = schedule;
            ops.push(TxnOp::Put(
                records::dataset_key(&name),
                records::encode(&*record),
            ));
        }
        queued
    }
}

/// The first scheduled scan of `record` after `now` (`None` without a schedule).
pub fn next_scan(record: &DatasetRecord, now: SystemTime) -> Option<SystemTime> {
    let expr = record.policy.schedule.as_deref()?;
    let zone = record.policy.time_zone.as_deref().unwrap_or("");
    match Schedule::parse(expr, zone, "policy") {
        Ok(s) => s.next_after(now),
        Err(e) => {
            tracing::warn!(dataset = %record.name, error = %e, "ignoring a schedule that does not parse");
            None
        }
    }
}

impl Control {
    /// A manual retrain request: the policy decides (idempotency, coalescing, min_interval
    /// still apply) and the decision is recorded and returned.
    pub async fn retrain(
        &self,
        name: &str,
        which: &str,
        note: &str,
    ) -> Result<v1::RetrainDecision> {
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
            (decision.to_wire(), ack)
        };
        ack.durable().await.map_err(Error::Store)?;
        Ok(decision)
    }

    /// A dataset's retrain decisions, newest first.
    pub fn history(&self, name: &str, limit: usize) -> Result<Vec<v1::RetrainDecision>> {
        let inner = self.lock();
        if !inner.datasets.contains_key(name) {
            return Err(super::no_dataset(name));
        }
        Ok(inner
            .decisions
            .get(name)
            .map(|h| {
                h.iter()
                    .rev()
                    .take(limit)
                    .map(DecisionRecord::to_wire)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Runs due postponed decisions and scheduled scans as of `now`. The ticker calls this
    /// every second with the wall clock; tests call it with the clock they control.
    pub async fn tick(&self, now: SystemTime) -> Result<()> {
        let ack = {
            let mut inner = self.lock();
            let mut ops = Vec::new();
            if inner.tick(now, &mut ops) {
                self.dispatch(&mut inner);
            }
            if ops.is_empty() {
                return Ok(());
            }
            self.journal.record(ops)
        };
        ack.durable().await.map_err(Error::Store)
    }
}

/// Calls [`Control::tick`] every second until `shutdown`.
pub async fn run_ticker(
    control: std::sync::Arc<Control>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = control.tick(SystemTime::now()).await {
                    tracing::warn!(error = %e, "retrain ticker");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The loop inside one coordinator, with the clock in the test's hand. Scan results are
    //! written by the test as a worker would report them (the real scan has its own tests and
    //! end-to-end tests); the retrain asks for a GPU so the CPU "worker" that runs the scans
    //! leaves it queued until the test leases it with a GPU worker.

    use std::collections::BTreeMap;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;
    use trainfleet_core::device::DeviceKind;
    use trainfleet_core::policy::RetrainPolicy;

    use super::super::tests::{Fixture, close, open, register, register_with};
    use super::super::{Report, Submission};
    use super::*;

    const JOB: &str = "name: digits\nmodel: {arch: simple_cnn}\nresources: {gpu: true}\n";

    fn root(n: u64) -> String {
        trainfleet_core::artifacts::sha256_hex(format!("version {n}").as_bytes())
    }

    async fn register_dataset(f: &Fixture, dir: &std::path::Path, policy: RetrainPolicy) {
        f.control
            .register_dataset(DatasetRecord {
                name: "digits".into(),
                directory: dir.display().to_string(),
                format: "imagefolder".into(),
                builtin: String::new(),
                url: String::new(),
                policy,
                job_yaml: JOB.into(),
                created_at: SystemTime::now(),
                versions: Vec::new(),
                retrain: Default::default(),
            })
            .await
            .unwrap();
    }

    /// Runs one scan job on the CPU worker `w`, reporting version `n` with `samples` files.
    async fn scan(f: &Fixture, session: &str, n: u64, samples: u64) {
        f.control
            .submit(
                Submission::Scan {
                    dataset: "digits".into(),
                    full: false,
                },
                String::new(),
            )
            .await
            .unwrap();
        let task = lease(f, "w", session).await;
        assert_eq!(
            task.kind,
            v1::TaskKind::Scan as i32,
            "the CPU worker never gets the retrain"
        );
        report_scan(f, &task, n, samples, &format!("file:///m/{n}.json")).await;
    }

    /// Leases the next task to worker `id` (session `session`) at once.
    async fn lease(f: &Fixture, id: &str, session: &str) -> v1::Task {
        f.control
            .poll(
                id,
                session,
                1,
                Duration::from_millis(10),
                &CancellationToken::new(),
            )
            .await
            .unwrap()
            .expect("a task to lease")
    }

    /// Completes scan `task` (held by worker "w") as a worker would: version `n` of `samples`
    /// files, its manifest at `manifest_uri`.
    async fn report_scan(f: &Fixture, task: &v1::Task, n: u64, samples: u64, manifest_uri: &str) {
        let detail = serde_json::json!({
            "root": root(n), "samples": samples, "by_class": {}, "by_split": {},
            "added": samples, "removed": 0, "changed": 0, "manifest_uri": manifest_uri,
        });
        f.control
            .complete(
                "w",
                &task.id,
                task.attempt,
                Report::Success {
                    metrics: BTreeMap::new(),
                    artifacts: BTreeMap::new(),
                    detail_json: detail.to_string(),
                },
            )
            .await
            .unwrap();
    }

    /// Pretends `job_id`'s retrain on version `n` produced the champion (the real path, with
    /// training and the gate, is tested end to end).
    fn crown(f: &Fixture, job_id: &str, n: u64) {
        let mut inner = f.control.lock();
        let model = records::ModelRecord {
            id: format!("m-{n}"),
            dataset: "digits".into(),
            dataset_version: root(n),
            job_id: job_id.into(),
            parent_id: String::new(),
            config_hash: String::new(),
            metrics: BTreeMap::new(),
            artifact_uri: String::new(),
            artifact_sha256: String::new(),
            run_uri: String::new(),
            gate: Default::default(),
            created_at: SystemTime::now(),
            labels: BTreeMap::new(),
            dataset_version_number: n,
            eval_samples_uri: String::new(),
            report_uri: String::new(),
        };
        inner.models.insert(model.id.clone(), model);
        inner.set_champion("digits", &format!("m-{n}"), "test", &mut Vec::new());
    }

    fn outcomes(f: &Fixture) -> Vec<(String, i32)> {
        let mut h = f.control.history("digits", 100).unwrap();
        h.reverse();
        h.into_iter().map(|d| (d.trigger, d.outcome)).collect()
    }

    use v1::retrain_decision::Outcome;

    fn retrain_jobs(f: &Fixture) -> Vec<v1::Job> {
        f.control
            .list(&[], 100, "")
            .0
            .into_iter()
            .filter(|j| j.spec.is_some())
            .collect()
    }

    #[tokio::test]
    async fn a_burst_of_five_versions_makes_one_retrain_on_the_newest_and_a_repeat_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let f = open(dir.path()).await;
        register_dataset(&f, dir.path(), RetrainPolicy::default()).await;
        let w = register(&f, "w");
        for n in 1..=5 {
            scan(&f, &w, n, 1000 + 100 * n).await;
        }
        assert_eq!(
            outcomes(&f),
            [
                ("scan".into(), Outcome::Fired as i32),
                ("scan".into(), Outcome::Coalesced as i32),
                ("scan".into(), Outcome::Coalesced as i32),
                ("scan".into(), Outcome::Coalesced as i32),
                ("scan".into(), Outcome::Coalesced as i32),
            ]
        );
        let jobs = retrain_jobs(&f);
        assert_eq!(jobs.len(), 1, "five versions, one retrain");
        let pinned = JobSpec::from_yaml(&jobs[0].spec_yaml, "job").unwrap();
        assert_eq!(
            pinned.dataset.version.as_deref(),
            Some(root(5).as_str()),
            "newest wins"
        );
        assert_eq!(pinned.dataset.manifest.as_deref(), Some("file:///m/5.json"));
        assert_eq!(pinned.dataset.name.as_deref(), Some("digits"));

        // A GPU worker starts it; asking again for the same version trains nothing more.
        let g = register_with(&f, "g", DeviceKind::Cuda);
        let task = lease(&f, "g", &g).await;
        assert_eq!(task.job_id, jobs[0].id);
        let again = f.control.retrain("digits", "5", "test").await.unwrap();
        assert_eq!(again.outcome, Outcome::Skipped as i32);
        assert!(again.reason.contains("idempotent"), "{}", again.reason);
        assert_eq!(retrain_jobs(&f).len(), 1);

        // An older version by hand is another retrain (different data).
        let older = f.control.retrain("digits", "4", "compare").await.unwrap();
        assert_eq!(older.outcome, Outcome::Fired as i32, "{}", older.reason);
        assert!(older.reason.contains("by hand") && older.reason.contains("asked: compare"));
        assert_eq!(retrain_jobs(&f).len(), 2);

        // Everything survives a restart: the history and the book.
        close(f).await;
        let f = open(dir.path()).await;
        assert_eq!(outcomes(&f).len(), 7);
        let book = f.control.lock().datasets["digits"].retrain.clone();
        assert_eq!(book.started_keys.len(), 1);
        assert!(book.pending.is_some(), "the manual retrain waits");
        close(f).await;
    }

    #[tokio::test]
    async fn min_interval_defers_and_the_ticker_fires_when_it_has_passed() {
        let dir = tempfile::tempdir().unwrap();
        let f = open(dir.path()).await;
        register_dataset(
            &f,
            dir.path(),
            RetrainPolicy {
                min_interval: Duration::from_secs(3600),
                ..Default::default()
            },
        )
        .await;
        let w = register(&f, "w");
        scan(&f, &w, 1, 1000).await;
        // Start the first retrain now, so the next one must wait an hour.
        let g = register_with(&f, "g", DeviceKind::Cuda);
        lease(&f, "g", &g).await;
        let started = f.control.lock().datasets["digits"]
            .retrain
            .last_retrain_at
            .unwrap();
        scan(&f, &w, 2, 2000).await;
        let last = f.control.history("digits", 1).unwrap().remove(0);
        assert_eq!(last.outcome, Outcome::Deferred as i32, "{}", last.reason);
        let until = started + Duration::from_secs(3600);
        assert_eq!(last.defer_until, Some(crate::convert::timestamp(until)));

        f.control
            .tick(until - Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(retrain_jobs(&f).len(), 1, "not a second early");
        f.control.tick(until).await.unwrap();
        let last = f.control.history("digits", 1).unwrap().remove(0);
        assert_eq!(
            (last.trigger.as_str(), last.outcome),
            ("deferred", Outcome::Fired as i32)
        );
        assert_eq!(retrain_jobs(&f).len(), 2);
        f.control
            .tick(until + Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            retrain_jobs(&f).len(),
            2,
            "a deferred decision is taken once"
        );
        close(f).await;
    }

    #[tokio::test]
    async fn a_schedule_scans_at_its_time_in_its_time_zone() {
        let dir = tempfile::tempdir().unwrap();
        let f = open(dir.path()).await;
        register_dataset(
            &f,
            dir.path(),
            RetrainPolicy {
                schedule: Some("0 0 * * *".into()),
                time_zone: Some("Europe/Paris".into()),
                ..Default::default()
            },
        )
        .await;
        // Paris midnight on 2026-01-15 is 23:00 UTC; pretend the last one was the night before.
        let midnight = SystemTime::UNIX_EPOCH + Duration::from_secs(1_768_518_000);
        f.control
            .lock()
            .datasets
            .get_mut("digits")
            .unwrap()
            .retrain
            .next_scan_at = Some(midnight);
        let scans = |f: &Fixture| {
            f.control
                .list(&[], 100, "")
                .0
                .into_iter()
                .filter(|j| j.name == "scan digits")
                .count()
        };
        f.control
            .tick(midnight - Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(scans(&f), 0, "a second before midnight");
        f.control.tick(midnight).await.unwrap();
        assert_eq!(scans(&f), 1, "at midnight, Paris time");
        let next = f.control.lock().datasets["digits"].retrain.next_scan_at;
        assert_eq!(next, Some(midnight + Duration::from_secs(24 * 3600)));
        f.control
            .tick(midnight + Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(scans(&f), 1, "once");

        // The scheduled scan finds a new version: the decision says it came from the schedule.
        let w = register(&f, "w");
        let task = lease(&f, "w", &w).await;
        report_scan(&f, &task, 1, 10, "").await;
        assert_eq!(outcomes(&f), [("schedule".into(), Outcome::Fired as i32)]);
        close(f).await;
    }

    #[tokio::test]
    async fn growth_is_measured_from_the_champions_version_and_a_failed_retrain_frees_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = open(dir.path()).await;
        register_dataset(
            &f,
            dir.path(),
            RetrainPolicy {
                on_growth_pct: Some(10.0),
                on_content_change: false,
                ..Default::default()
            },
        )
        .await;
        let w = register(&f, "w");
        scan(&f, &w, 1, 1000).await;
        let g = register_with(&f, "g", DeviceKind::Cuda);
        let first = lease(&f, "g", &g).await;
        crown(&f, &first.job_id, 1);
        scan(&f, &w, 2, 1099).await;
        let d = f.control.history("digits", 1).unwrap().remove(0);
        assert_eq!(d.outcome, Outcome::Skipped as i32);
        assert!(
            d.reason.contains("9.9%") && d.reason.contains("1000 → 1099"),
            "{}",
            d.reason
        );
        scan(&f, &w, 3, 1100).await;
        let d = f.control.history("digits", 1).unwrap().remove(0);
        assert_eq!(d.outcome, Outcome::Fired as i32, "{}", d.reason);
        assert!(d.reason.contains("10.0%"), "{}", d.reason);

        // The retrain fails on its worker: the key is given back and the version can be retried.
        let task = lease(&f, "g", &g).await;
        assert_eq!(task.job_id, d.job_id);
        f.control
            .complete(
                "g",
                &task.id,
                1,
                Report::Failure {
                    reason: "refusing to train on drifted data".into(),
                    permanent: true,
                },
            )
            .await
            .unwrap();
        let retry = f
            .control
            .retrain("digits", "", "after fixing the data")
            .await
            .unwrap();
        assert_eq!(retry.outcome, Outcome::Fired as i32, "{}", retry.reason);
        close(f).await;
    }

    #[tokio::test]
    async fn a_job_naming_a_registered_dataset_is_pinned_to_the_version_it_asks_for() {
        let dir = tempfile::tempdir().unwrap();
        let f = open(dir.path()).await;
        register_dataset(&f, dir.path(), RetrainPolicy::default()).await;
        let by_name = |version: &str| {
            let v = if version.is_empty() {
                String::new()
            } else {
                format!(", version: \"{version}\"")
            };
            Submission::Train(Box::new(
                JobSpec::from_yaml(
                    &format!("model: {{arch: simple_cnn}}\ndataset: {{name: digits{v}}}\n"),
                    "job",
                )
                .unwrap(),
            ))
        };
        let err = f
            .control
            .submit(by_name(""), String::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::FailedPrecondition(ref m) if m.contains("scan it first")),
            "{err}"
        );
        let w = register(&f, "w");
        scan(&f, &w, 1, 10).await;
        scan(&f, &w, 2, 20).await;
        let spec = |job: &v1::Job| JobSpec::from_yaml(&job.spec_yaml, "job").unwrap();
        let latest = f.control.submit(by_name(""), String::new()).await.unwrap();
        let latest = spec(&latest);
        assert_eq!(latest.dataset.version.as_deref(), Some(root(2).as_str()));
        assert_eq!(latest.dataset.path.as_deref(), Some(dir.path()));
        assert_eq!(latest.dataset.manifest.as_deref(), Some("file:///m/2.json"));
        let first = f.control.submit(by_name("1"), String::new()).await.unwrap();
        assert_eq!(
            spec(&first).dataset.version.as_deref(),
            Some(root(1).as_str())
        );
        let err = f
            .control
            .submit(by_name("9"), String::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::NotFound(ref m) if m.contains("no version \"9\"")),
            "{err}"
        );
        let other = Submission::Train(Box::new(
            JobSpec::from_yaml("model: {arch: simple_cnn}\ndataset: {name: cats}\n", "job")
                .unwrap(),
        ));
        let err = f.control.submit(other, String::new()).await.unwrap_err();
        assert!(
            matches!(err, Error::NotFound(ref m) if m.contains("not registered")),
            "{err}"
        );
        close(f).await;
    }

    #[tokio::test]
    async fn a_relabel_with_the_same_count_fires_the_content_rule() {
        let dir = tempfile::tempdir().unwrap();
        let f = open(dir.path()).await;
        register_dataset(&f, dir.path(), RetrainPolicy::default()).await;
        let w = register(&f, "w");
        scan(&f, &w, 1, 500).await;
        let g = register_with(&f, "g", DeviceKind::Cuda);
        let first = lease(&f, "g", &g).await;
        crown(&f, &first.job_id, 1);
        // Same 500 files, one relabelled: another root, the same count.
        scan(&f, &w, 2, 500).await;
        let d = f.control.history("digits", 1).unwrap().remove(0);
        assert_eq!(d.outcome, Outcome::Fired as i32, "{}", d.reason);
        assert!(
            d.reason
                .contains("content changed with the same 500 samples"),
            "{}",
            d.reason
        );
        close(f).await;
    }

    #[tokio::test]
    async fn manual_retrains_need_a_version_and_a_job() {
        let dir = tempfile::tempdir().unwrap();
        let f = open(dir.path()).await;
        register_dataset(&f, dir.path(), RetrainPolicy::default()).await;
        let err = f.control.retrain("digits", "", "").await.unwrap_err();
        assert!(
            matches!(err, Error::FailedPrecondition(ref m) if m.contains("scan it first")),
            "{err}"
        );
        let err = f.control.retrain("nope", "", "").await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        let w = register(&f, "w");
        scan(&f, &w, 1, 10).await;
        let err = f.control.retrain("digits", "7", "").await.unwrap_err();
        assert!(
            matches!(err, Error::NotFound(ref m) if m.contains("\"7\"")),
            "{err}"
        );
        close(f).await;
    }
}

#[cfg(test)]
mod promotion_tests {
    //! The champion pointer's compare-and-swap, with runs written to a real artifact store.

    use std::collections::BTreeMap;

    use trainfleet_core::artifacts::{FileEntry, MANIFEST, Manifest, sha256_hex};

    use super::super::tests::{close, open};
    use super::*;

    /// Writes a run whose weights verify and records its model.
    async fn model(f: &super::super::tests::Fixture, id: &str) {
        let store = f.control.artifacts().clone();
        let prefix = format!("runs/j-{id}/attempt-1");
        let weights = format!("weights of {id}").into_bytes();
        let entry = FileEntry {
            size: weights.len() as u64,
            sha256: sha256_hex(&weights),
        };
        store
            .put_bytes(&format!("{prefix}/model.safetensors"), weights)
            .await
            .unwrap();
        let manifest = Manifest {
            job_id: format!("j-{id}"),
            attempt: 1,
            files: BTreeMap::from([("model.safetensors".to_owned(), entry)]),
            dataset_root: String::new(),
            code_version: String::new(),
            libtorch_version: String::new(),
        };
        store
            .put_bytes(
                &format!("{prefix}/{MANIFEST}"),
                serde_json::to_vec(&manifest).unwrap(),
            )
            .await
            .unwrap();
        let record = records::ModelRecord {
            id: id.into(),
            dataset: "digits".into(),
            dataset_version: String::new(),
            job_id: format!("j-{id}"),
            parent_id: String::new(),
            config_hash: String::new(),
            metrics: BTreeMap::new(),
            artifact_uri: String::new(),
            artifact_sha256: String::new(),
            run_uri: store.uri(&prefix),
            gate: Default::default(),
            created_at: SystemTime::now(),
            labels: BTreeMap::new(),
            dataset_version_number: 0,
            eval_samples_uri: String::new(),
            report_uri: String::new(),
        };
        let ack = f.control.journal.record(vec![TxnOp::Put(
            records::model_key(id),
            records::encode(&record),
        )]);
        f.control.lock().models.insert(id.into(), record);
        ack.durable().await.unwrap();
    }

    #[tokio::test]
    async fn two_concurrent_promotions_one_wins_and_rollback_restores_the_previous_champion() {
        let dir = tempfile::tempdir().unwrap();
        let f = open(dir.path()).await;
        for id in ["m-a", "m-b", "m-c"] {
            model(&f, id).await;
        }
        f.control
            .promote("m-a", "first", Some(None))
            .await
            .expect("no champion yet, as expected");
        let err = f
            .control
            .promote("m-b", "late", Some(None))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Aborted(_)), "{err}");

        // Two promotions race, both expecting m-a: exactly one moves the pointer.
        for round in 0..20 {
            let (b, c) = tokio::join!(
                f.control.promote("m-b", "race", Some(Some("m-a"))),
                f.control.promote("m-c", "race", Some(Some("m-a"))),
            );
            let winner = match (&b, &c) {
                (Ok(_), Err(Error::Aborted(m))) => {
                    assert!(m.contains("is m-b now, not m-a"), "{m}");
                    "m-b"
                }
                (Err(Error::Aborted(m)), Ok(_)) => {
                    assert!(m.contains("is m-c now, not m-a"), "{m}");
                    "m-c"
                }
                other => panic!("round {round}: exactly one must win: {other:?}"),
            };
            assert_eq!(f.control.champion("digits").unwrap().id, winner);
            // Rollback (expecting the winner) restores m-a for the next round.
            let back = f
                .control
                .rollback("digits", "next round", Some(Some(winner)))
                .await
                .unwrap();
            assert_eq!(back.id, "m-a");
            assert_eq!(f.control.champion("digits").unwrap().id, "m-a");
        }
        // A rollback expecting a champion that is no longer there changes nothing.
        let err = f
            .control
            .rollback("digits", "stale", Some(Some("m-b")))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Aborted(_)), "{err}");
        assert_eq!(f.control.champion("digits").unwrap().id, "m-a");
        let err = f
            .control
            .rollback("digits", "nothing left", None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");

        // Weights changed after training: promotion refused, the pointer stays.
        let store = f.control.artifacts().clone();
        store
            .put_bytes(
                "runs/j-m-c/attempt-1/model.safetensors",
                b"tampered".to_vec(),
            )
            .await
            .unwrap();
        let err = f
            .control
            .promote("m-c", "tampered", None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::FailedPrecondition(ref m) if m.contains("did not verify")),
            "{err}"
        );
        assert_eq!(f.control.champion("digits").unwrap().id, "m-a");

        // The pointer and its history survive a restart.
        close(f).await;
        let f = open(dir.path()).await;
        assert_eq!(f.control.champion("digits").unwrap().id, "m-a");
        close(f).await;
    }
}
