//! How a finished task is reported: CompleteTask through whichever session is current, retried
//! until the coordinator answers. The report also carries the poll for the next task
//! (`poll_next`) with the slot the task gave back, so that a busy worker spends one round trip
//! per task rather than two.
//!
//! Polls share the slots through [`Shared::reserved`]: the poll loop's PollTask and each
//! report's poll ask only for free slots that no other open poll was promised, or the
//! coordinator could lease more tasks than there are slots.

use std::sync::atomic::Ordering;
use std::time::Duration;

use trainfleet_proto::v1;

use super::{Agent, COMPLETE_TIMEOUT, Link, REPORT_PATIENCE, Shared, with_timeout};
use crate::tasks::{Finished, Running};

impl Agent {
    /// Reports how a task ended, until the coordinator answers (or refuses: a stale attempt's
    /// report is dropped), and starts the next task when the answer carries one.
    pub(super) async fn report(&self, running: &Running, finished: Finished) {
        use v1::complete_task_request::Outcome;
        if running.abandoned.load(Ordering::Relaxed) {
            tracing::info!(task_id = %running.task_id, "abandoned task stopped; not reporting");
            return;
        }
        let (outcome, permanent) = match &finished {
            Finished::Success(result) => (Outcome::Success(result.clone()), false),
            Finished::Failure { reason, permanent } => {
                (Outcome::Failure(reason.clone()), *permanent)
            }
            Finished::Cancelled => (Outcome::Cancelled(true), false),
            Finished::Paused(paused) => (Outcome::Paused(paused.clone()), false),
        };
        tracing::info!(task_id = %running.task_id, attempt = running.attempt, outcome = ?finished_name(&finished), "task finished");
        // The slot this task gave back, unless an open PollTask was promised it; held until the
        // next task (if any) is started, so that the poll loop, woken when this report ends,
        // counts it.
        let reservation = self.reserve(1);
        let mut link = self.shared.link.subscribe();
        let started = tokio::time::Instant::now();
        loop {
            let current = match link.wait_for(Option::is_some).await {
                Ok(current) => current.clone(),
                Err(_) => return,
            };
            let Link {
                mut client,
                session_id,
            } = current.expect("waited for it");
            let poll_next = self.poll_next(reservation.as_ref());
            let timeout = COMPLETE_TIMEOUT
                + poll_next
                    .as_ref()
                    .map_or(Duration::ZERO, |_| self.config.poll_wait);
            let request = v1::CompleteTaskRequest {
                worker_id: self.worker_id.clone(),
                session_id,
                task_id: running.task_id.clone(),
                attempt: running.attempt,
                outcome: Some(outcome.clone()),
                permanent,
                poll_next,
            };
            match client.complete_task(with_timeout(request, timeout)).await {
                Ok(answer) => {
                    if let Some(task) = answer.into_inner().next_task {
                        self.take(task);
                    }
                    return;
                }
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument
                    ) || (s.code() == tonic::Code::NotFound
                        && started.elapsed() > REPORT_PATIENCE) =>
                {
                    tracing::warn!(task_id = %running.task_id, error = %s.message(), "report refused; dropping it");
                    return;
                }
                Err(s) => {
                    tracing::warn!(task_id = %running.task_id, error = %s.message(), "report failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// The poll a report carries: with a slot reserved, while the worker is not stopping.
    fn poll_next(&self, reservation: Option<&Reservation<'_>>) -> Option<v1::PollNext> {
        let reservation = reservation.filter(|_| !self.shared.stopping.load(Ordering::Relaxed))?;
        Some(v1::PollNext {
            free_slots: reservation.slots,
            max_wait: prost_types::Duration::try_from(self.config.poll_wait).ok(),
        })
    }

    /// Reserves up to `at_most` free slots that no open poll was promised; none when there are
    /// none. A task that ended has given its slot back.
    pub(super) fn reserve(&self, at_most: u32) -> Option<Reservation<'_>> {
        let mut reserved = self.shared.lock_reserved();
        let slots = self.free_slots().saturating_sub(*reserved).min(at_most);
        (slots > 0).then(|| {
            *reserved += slots;
            Reservation {
                shared: &self.shared,
                slots,
            }
        })
    }

    /// Starts a task a poll returned, unless the worker is stopping: then the lease runs out
    /// and the coordinator requeues it ("never started").
    pub(super) fn take(&self, task: v1::Task) {
        if self.shared.stopping.load(Ordering::Relaxed) {
            tracing::warn!(task_id = %task.id, "stopping: not starting a task leased just now; it will be requeued");
            return;
        }
        self.start(task);
    }
}

/// Slots promised to one open poll, given back when it is dropped.
pub(super) struct Reservation<'a> {
    shared: &'a Shared,
    /// How many; what the poll asks for.
    pub(super) slots: u32,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        *self.shared.lock_reserved() -= self.slots;
    }
}

impl Shared {
    fn lock_reserved(&self) -> std::sync::MutexGuard<'_, u32> {
        self.reserved.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) fn finished_name(f: &Finished) -> &'static str {
    match f {
        Finished::Success(_) => "succeeded",
        Finished::Failure { .. } => "failed",
        Finished::Cancelled => "cancelled",
        Finished::Paused(_) => "paused",
    }
}
