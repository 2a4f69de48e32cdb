//! A train task that stopped at its `pause_at_epoch` (an ASHA rung of a sweep trial): what it
//! reports. The trainer stops after that epoch (`RunOptions::stop_after_epoch`), once the
//! epoch's checkpoint is uploaded; the coordinator resumes the trial from it if its rung
//! promotes it.

use trainfleet_proto::v1;

use crate::error::Error;
use crate::tasks::{Finished, Running};

/// The `paused` report of a task that stopped at its rung: the checkpoint of that epoch and
/// the epochs it trained. An error (transient: another attempt resumes from the last checkpoint
/// that did upload) when that epoch's checkpoint is not the one uploaded.
pub fn paused(
    task: &v1::Task,
    running: &Running,
    prefix: String,
    epochs: Vec<v1::EpochMetrics>,
) -> crate::Result<Finished> {
    let (checkpoint, epoch) = {
        let p = running.progress();
        (p.checkpoint.clone(), p.checkpoint_epoch)
    };
    if epoch != task.pause_at_epoch {
        return Err(Error::Spec(trainfleet_core::Error::Artifact {
            uri: prefix,
            message: format!(
                "paused after epoch {} but its checkpoint did not upload",
                task.pause_at_epoch
            ),
        }));
    }
    tracing::info!(task_id = %task.id, epoch, "paused at its rung");
    Ok(Finished::Paused(v1::TaskPaused {
        epoch,
        checkpoint,
        epochs,
    }))
}
