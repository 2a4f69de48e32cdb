//! The worker protocol's wire forms: a heartbeat's progress reports in, leased tasks,
//! directives and the queue out.

use trainfleet_proto::v1;

use super::{duration, timestamp};
use crate::dispatch::{Assignment, Directive, DirectiveKind, QueueView, QueuedTask};
use crate::records::VersionRecord;
use crate::requests::Progress;

/// A heartbeat's report of one task.
pub fn progress_from_wire(p: v1::TaskProgress) -> Progress {
    Progress {
        task_id: p.task_id,
        attempt: p.attempt,
        epoch: p.epoch,
        total_epochs: p.total_epochs,
        batch: p.batch,
        total_batches: p.total_batches,
        images_per_sec: p.images_per_sec,
        finished_epochs: p
            .finished_epochs
            .into_iter()
            .map(|e| (e.epoch, e.values.into_iter().collect()))
            .collect(),
        checkpoint: p.checkpoint,
        checkpoint_epoch: p.checkpoint_epoch,
    }
}

fn version_ref(v: &VersionRecord) -> v1::VersionRef {
    v1::VersionRef {
        number: v.number,
        root: v.root.clone(),
        samples: v.samples,
        skipped_count: v.skipped,
        skipped: v.skipped_wire(),
    }
}

impl Assignment {
    /// The task message a worker receives.
    pub fn to_wire(&self) -> v1::Task {
        v1::Task {
            id: self.id.clone(),
            job_id: self.job_id.clone(),
            kind: self.role.kind() as i32,
            attempt: self.attempt,
            spec_yaml: self.spec_yaml.clone(),
            resume_from: self
                .resume
                .as_ref()
                .map(|c| c.uri.clone())
                .unwrap_or_default(),
            resources: Some(v1::ResourceRequest {
                gpu: self.needs.gpu,
                min_memory_bytes: self.needs.min_memory_bytes,
                slots: self.needs.slots,
            }),
            sleep: self.sleep.map(duration),
            eval: self.eval.as_ref().map(|e| v1::EvalInputs {
                challenger: e.challenger.clone(),
                champion: e.champion.clone(),
                champion_id: e.champion_id.clone(),
                dataset_version: e.dataset_version.as_ref().map(version_ref),
                previous_version: e.previous_version.as_ref().map(version_ref),
            }),
            resume_epoch: self.resume.as_ref().map_or(0, |c| c.epoch),
            scan: self.scan.as_ref().map(|s| v1::ScanInputs {
                dataset: s.dataset.clone(),
                directory: s.directory.clone(),
                full: s.full,
                previous_manifest: s.previous_manifest.clone(),
                format: s.format.clone(),
                builtin: s.builtin.clone(),
                object_store_url: s.object_store_url.clone(),
                dataset_yaml: s.dataset_yaml.clone(),
            }),
            pause_at_epoch: self.pause_at,
        }
    }
}

impl Directive {
    /// The wire form.
    pub fn to_wire(&self) -> v1::Directive {
        v1::Directive {
            task_id: self.task_id.clone(),
            kind: match self.kind {
                DirectiveKind::Cancel => v1::DirectiveKind::Cancel,
                DirectiveKind::Abandon => v1::DirectiveKind::Abandon,
            } as i32,
            reason: self.reason.clone(),
        }
    }
}

impl QueuedTask {
    /// The wire form.
    pub fn to_wire(&self) -> v1::QueuedTask {
        v1::QueuedTask {
            task_id: self.task_id.clone(),
            job_id: self.job_id.clone(),
            kind: self.role.map_or(v1::TaskKind::Unspecified, |r| r.kind()) as i32,
            attempt: self.attempt,
            worker_id: self.worker_id.clone(),
            enqueued_at: Some(timestamp(self.enqueued_at)),
        }
    }
}

impl QueueView {
    /// `GetQueue`'s answer.
    pub fn to_wire(&self) -> v1::GetQueueResponse {
        v1::GetQueueResponse {
            queued: self.queued.iter().map(QueuedTask::to_wire).collect(),
            running: self.running.iter().map(QueuedTask::to_wire).collect(),
        }
    }
}
