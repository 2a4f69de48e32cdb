//! Finished sweeps past retention leave the store with their trials for the archive, the same
//! three steps as jobs: copy under the lock, write without it, then drop each one unchanged since
//! its copy and journal the deletes. A sweep is archived once it is not among the newest
//! `retention.finished_sweeps` finished sweeps, or finished more than `finished_age` ago. Its
//! trials' jobs are ordinary jobs with their own retention; a dataset's warm start for its next
//! retrain sweep is kept in the dataset's book, so it outlives the sweep here.

use std::time::SystemTime;

use trainfleet_core::config::RetentionConfig;
use trainfleet_core::kv::TxnOp;

use super::BATCH;
use crate::archive::ArchivedSweep;
use crate::control::{Control, Inner};
use crate::error::{Error, Result};
use crate::records;

impl Inner {
    /// Copies of at most `limit` finished sweeps due for the archive, oldest finish first.
    fn sweeps_due(
        &self,
        policy: &RetentionConfig,
        now: SystemTime,
        limit: usize,
    ) -> Vec<ArchivedSweep> {
        let mut finished: Vec<(SystemTime, &str)> = self
            .sweeps
            .values()
            .filter(|s| s.state.is_final())
            .map(|s| (s.finished_at.unwrap_or(s.created_at), s.id.as_str()))
            .collect();
        finished.sort_unstable_by(|a, b| b.cmp(a));
        let mut due: Vec<ArchivedSweep> = finished
            .iter()
            .enumerate()
            .filter(|(rank, (at, _))| {
                *rank >= policy.finished_sweeps
                    || now.duration_since(*at).unwrap_or_default() > policy.finished_age
            })
            .map(|(_, (_, id))| ArchivedSweep {
                sweep: self.sweeps[*id].clone(),
                trials: self.trials.get(*id).cloned().unwrap_or_default(),
                archived_at: now,
            })
            .collect();
        due.reverse();
        due.truncate(limit);
        due
    }

    /// Forgets `archived` if it is as copied; journals the deletes of its keys.
    fn release_archived_sweep(&mut self, archived: &ArchivedSweep, ops: &mut Vec<TxnOp>) -> bool {
        let id = &archived.sweep.id;
        let unchanged = self.sweeps.get(id) == Some(&archived.sweep)
            && self.trials.get(id).map_or(&[][..], Vec::as_slice) == archived.trials.as_slice();
        if !unchanged {
            return false;
        }
        let sweep = self.sweeps.remove(id).expect("compared above");
        if self.sweep_idempotency.get(&sweep.idempotency_key) == Some(id) {
            self.sweep_idempotency.remove(&sweep.idempotency_key);
        }
        for trial in self.trials.remove(id).unwrap_or_default() {
            ops.push(TxnOp::Delete(records::trial_key(id, trial.number)));
        }
        ops.push(TxnOp::Delete(records::sweep_key(id)));
        true
    }
}

impl Control {
    /// Moves every finished sweep due for the archive there; returns how many moved.
    pub async fn archive_finished_sweeps(&self, policy: &RetentionConfig) -> Result<usize> {
        let mut moved = 0;
        loop {
            let due = self.lock().sweeps_due(policy, SystemTime::now(), BATCH);
            if due.is_empty() {
                return Ok(moved);
            }
            let written = self.archive.put_sweeps(&due).await;
            let (released, ack) = {
                let mut inner = self.lock();
                let mut ops = Vec::new();
                let mut released = 0;
                for (sweep, result) in due.iter().zip(&written) {
                    match result {
                        Ok(()) if inner.release_archived_sweep(sweep, &mut ops) => released += 1,
                        Ok(()) => {}
                        Err(e) => tracing::warn!(
                            sweep_id = %sweep.sweep.id, error = %e,
                            "cannot archive a sweep; it stays in the store"
                        ),
                    }
                }
                (released, self.journal.record(ops))
            };
            ack.durable().await.map_err(Error::Store)?;
            moved += released;
            if released == 0 {
                return Ok(moved);
            }
            tracing::info!(archived = released, "finished sweeps moved to the archive");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use trainfleet_core::sweep::SweepSpec;

    use crate::control::tests::{close, open};
    use crate::error::Error;
    use crate::records::SweepState;

    use super::*;

    const SPEC: &str = "job:\n  dataset: {builtin: synth-digits, validation_pct: 10}\n  \
                        model: {arch: simple_cnn}\nspace:\n  \
                        training.learning_rate: {log: [0.001, 0.1]}\nmax_trials: 2\n";

    #[tokio::test]
    async fn finished_sweeps_past_retention_move_to_the_archive_and_are_still_found() {
        let dir = tempfile::tempdir().unwrap();
        let f = open(dir.path()).await;
        let spec = SweepSpec::from_yaml(SPEC, "sweep.yaml", None).unwrap();
        let mut ids = Vec::new();
        for i in 0..3 {
            let view = f
                .control
                .start_sweep(spec.clone(), format!("key-{i}"), String::new())
                .await
                .unwrap();
            ids.push(view.record.id);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        // The newest keeps running; the two older end.
        for id in &ids[..2] {
            f.control.cancel_sweep(id, "done").await.unwrap();
        }
        let before = f.control.sweep(&ids[0]).await.unwrap();
        let policy = RetentionConfig {
            finished_sweeps: 1,
            ..RetentionConfig::default()
        };
        assert_eq!(f.control.archive_finished_sweeps(&policy).await.unwrap(), 1);
        assert_eq!(f.control.archive_finished_sweeps(&policy).await.unwrap(), 0);
        let keep_none = RetentionConfig {
            finished_sweeps: 0,
            ..RetentionConfig::default()
        };
        assert_eq!(
            f.control.archive_finished_sweeps(&keep_none).await.unwrap(),
            1
        );
        assert!(
            f.control.lock().sweeps.contains_key(&ids[2]),
            "running stays"
        );

        // Get reads the archive, trials included; List pages across store and archive.
        assert_eq!(f.control.sweep(&ids[0]).await.unwrap(), before);
        assert_eq!(before.trials.len(), 2);
        let (all, next) = f.control.sweeps("", 10).await.unwrap();
        let listed: Vec<&str> = all.iter().map(|s| s.record.id.as_str()).collect();
        assert_eq!(listed, [&*ids[2], &ids[1], &ids[0]]);
        assert_eq!(next, "");
        let (first, token) = f.control.sweeps("", 2).await.unwrap();
        assert_eq!(first.len(), 2);
        let (rest, _) = f.control.sweeps(&token, 2).await.unwrap();
        assert_eq!(
            rest.iter().map(|s| &s.record.id).collect::<Vec<_>>(),
            [&ids[0]]
        );
        let refused = f.control.cancel_sweep(&ids[1], "again").await.unwrap_err();
        assert!(
            matches!(&refused, Error::FailedPrecondition(m) if m.contains("archived")),
            "{refused:?}"
        );

        // The store let go of them: a restarted coordinator loads only the running one, and
        // still finds the others in the archive.
        close(f).await;
        let f = open(dir.path()).await;
        let loaded: Vec<String> = f.control.lock().sweeps.keys().cloned().collect();
        assert_eq!(loaded, [ids[2].clone()]);
        assert!(!f.control.lock().trials.contains_key(&ids[0]));
        let again = f.control.sweep(&ids[1]).await.unwrap();
        assert_eq!(again.record.state, SweepState::Cancelled);
        assert!(matches!(
            f.control.sweep("s-0000000000-000000").await,
            Err(Error::NotFound(_))
        ));
        close(f).await;
    }
}
