//! Job events' wire form (`JobService.Watch`).

use trainfleet_proto::v1;
use trainfleet_proto::v1::job_event::Event;

use super::timestamp;
use crate::events::{EventKind, JobEvent};

impl JobEvent {
    /// The wire form.
    pub fn to_wire(&self) -> v1::JobEvent {
        let event = match &self.kind {
            EventKind::State(state) => Event::State(state.to_wire() as i32),
            EventKind::Epoch { epoch, values } => Event::Epoch(v1::EpochMetrics {
                epoch: *epoch,
                values: values.clone().into_iter().collect(),
            }),
            EventKind::Progress(p) => Event::Progress(v1::BatchProgress {
                epoch: p.epoch,
                total_epochs: p.total_epochs,
                batch: p.batch,
                total_batches: p.total_batches,
                images_per_sec: p.images_per_sec,
            }),
            EventKind::Finished(job) => Event::Finished(job.to_wire()),
        };
        v1::JobEvent {
            at: Some(timestamp(self.at)),
            event: Some(event),
        }
    }
}
