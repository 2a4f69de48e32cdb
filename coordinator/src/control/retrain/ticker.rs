//! The retrain loop's clock: postponed decisions taken when they come due, and scheduled scans
//! started at their time (one at a time per dataset).

use std::time::SystemTime;

use trainfleet_core::kv::TxnOp;
use trainfleet_core::schedule::Schedule;

use super::Trigger;
use crate::control::{Control, Inner, NewJob};
use crate::error::{Error, Result};
use crate::records::{self, DatasetRecord, DecisionOutcome};

impl Inner {
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
