//! ASHA in the control plane: a trial's train task carries its next rung as `pause_at`; the
//! worker stops there with the checkpoint uploaded and reports `paused`; the trial's job waits
//! PAUSED, holding no worker; when a slot frees up, [`asha::next`] picks a paused trial to promote
//! (before any new trial starts), and its job gets a new train task that resumes from that
//! checkpoint, on any worker, up to the next rung. The rung records are the trials' own
//! (`TrialRecord.rungs`), written in the same commit as the pause or the promotion.
//!
//! Why a task input and not a heartbeat directive: a directive arrives a heartbeat after the
//! rung's epoch ended, so the trial would train on into the next epoch and its value at the
//! rung would be from the wrong epoch. Cancelling a trial still goes through the directive path.

use std::collections::BTreeMap;

use trainfleet_core::kv::TxnOp;
use trainfleet_core::sweep::asha;

use crate::events::EventKind;
use crate::records::{Checkpoint, JobState, RungReport, TaskRole, TrialRecord, TrialState};
use crate::scheduler::Needs;

use super::super::{Inner, event};

/// The rung table as ASHA reads it: rung k lists every trial that reported there.
pub(super) fn rung_table(trials: &[TrialRecord], rungs: &[u32]) -> Vec<asha::Rung> {
    rungs
        .iter()
        .enumerate()
        .map(|(k, epochs)| asha::Rung {
            epochs: *epochs,
            entries: trials
                .iter()
                .filter_map(|t| t.rungs.get(k).cloned())
                .collect(),
        })
        .collect()
}

/// The epoch a trial's next task pauses at: the next rung above `done` epochs, unless that is
/// the last (the last rung ends the trial).
pub(super) fn pause_target(rungs: &[u32], done: u32) -> u32 {
    match rungs.iter().position(|r| *r > done) {
        Some(k) if k + 1 < rungs.len() => rungs[k],
        _ => 0,
    }
}

impl Inner {
    /// A trial's train task paused at its rung: record the rung's value, park the job, go on.
    pub(in crate::control) fn trial_paused(
        &mut self,
        job_id: &str,
        epoch: u32,
        checkpoint: String,
        epochs: Vec<(u32, BTreeMap<String, f64>)>,
        ops: &mut Vec<TxnOp>,
    ) {
        let job = self.jobs.get_mut(job_id).expect("exists");
        let known = job.epochs.last().map_or(0, |(n, _)| *n);
        let mut events = Vec::new();
        for (n, values) in epochs.into_iter().filter(|(n, _)| *n > known) {
            events.push(event(
                job_id,
                EventKind::Epoch {
                    epoch: n,
                    values: values.clone(),
                },
            ));
            job.epochs.push((n, values));
        }
        job.checkpoint = Some(Checkpoint {
            uri: checkpoint,
            epoch,
        });
        job.worker_id.clear();
        job.active_task.clear();
        let link = job.sweep.clone();
        for e in events {
            self.emit(e);
        }
        let trial = link.as_ref().and_then(|l| {
            self.trials
                .get(&l.sweep_id)
                .and_then(|t| t.get(l.trial as usize))
                .filter(|t| t.state == TrialState::Running && t.job_id == job_id)
                .map(|_| (l.sweep_id.clone(), l.trial))
        });
        let Some((id, number)) = trial else {
            // Its sweep was cancelled while it trained: the job ends here.
            self.finish(
                job_id,
                JobState::Cancelled,
                "its sweep ended while it trained".into(),
                ops,
            );
            self.put_job(job_id, ops);
            return;
        };
        let metric = self.sweeps[&id].spec.objective.metric.clone();
        let value = self.jobs[job_id]
            .epochs
            .iter()
            .find(|(n, _)| *n == epoch)
            .and_then(|(_, v)| v.get(&metric).copied());
        let job = self.jobs.get_mut(job_id).expect("exists");
        job.state = JobState::Paused;
        self.emit(event(job_id, EventKind::State(JobState::Paused)));
        self.put_job(job_id, ops);
        let trial = &mut self.trials.get_mut(&id).expect("exists")[number as usize];
        trial.state = TrialState::Paused;
        trial.epochs = epoch;
        trial.objective = value;
        trial.rungs.push(RungReport {
            trial: number,
            value,
            promoted: false,
        });
        tracing::info!(sweep_id = %id, trial = number, epoch, ?value, "trial paused at its rung");
        self.put_trial(&id, number, ops);
        self.advance_sweep(&id, std::time::SystemTime::now(), ops);
    }

    /// Resumes a paused trial from its checkpoint up to rung `to`: its job gets a new train
    /// task, queued like any other.
    pub(super) fn promote_trial(&mut self, id: &str, number: u32, to: usize, ops: &mut Vec<TxnOp>) {
        let rungs = self.sweeps[id].spec.rungs();
        let trial = &mut self.trials.get_mut(id).expect("exists")[number as usize];
        if let Some(report) = trial.rungs.get_mut(to - 1) {
            report.promoted = true;
        }
        trial.state = TrialState::Running;
        trial.resumes += 1;
        let job_id = trial.job_id.clone();
        let task_id = format!("{job_id}-train-r{}", trial.resumes);
        self.put_trial(id, number, ops);
        let job = self
            .jobs
            .get_mut(&job_id)
            .expect("a paused job is never archived");
        let spec = job.spec().expect("trials train").clone();
        let done = job.checkpoint.as_ref().map_or(0, |c| c.epoch);
        job.state = JobState::Queued;
        job.active_task = task_id.clone();
        let needs = Needs {
            gpu: spec.needs_gpu(),
            min_memory_bytes: spec.resources.min_memory_mb << 20,
            slots: spec.resources.slots,
        };
        self.enqueue(
            &task_id,
            &job_id,
            TaskRole::Train,
            needs,
            spec.max_attempts,
            ops,
        );
        self.meta.get_mut(&task_id).expect("just queued").pause_at = pause_target(&rungs, done);
        self.put_task(&task_id, ops);
        self.put_job(&job_id, ops);
        self.emit(event(&job_id, EventKind::State(JobState::Queued)));
        tracing::info!(sweep_id = %id, trial = number, from_epoch = done, to_rung = to, "trial promoted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trial_pauses_at_each_rung_but_the_last() {
        let rungs = [1, 3, 9];
        assert_eq!(pause_target(&rungs, 0), 1);
        assert_eq!(pause_target(&rungs, 1), 3);
        assert_eq!(
            pause_target(&rungs, 2),
            3,
            "a lost worker's retry keeps its rung"
        );
        assert_eq!(pause_target(&rungs, 3), 0, "the last rung ends the trial");
        assert_eq!(pause_target(&[4], 0), 0);
    }
}
