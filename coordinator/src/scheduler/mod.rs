//! The task queue: which task runs where, under which attempt.
//!
//! A task is queued, then leased to one worker under an attempt number, then finished. The
//! attempt is the task-level fencing token: every report names it, and a report for any attempt
//! but the current one is refused without changing anything. When a worker is lost, each task
//! it held is requeued with attempt + 1 (and resumes from its checkpoint), until `max_attempts`
//! is used up and the task fails with the reason.
//!
//! Matching is first-fit in queue order: the oldest queued task whose needs (a GPU, device
//! memory, slots) the polling worker meets. Pure and synchronous, so it is tested without a
//! network or a clock; the services call it under one lock.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::SystemTime;

use trainfleet_core::device::{Device, DeviceKind};

/// What a task needs from a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Needs {
    /// At least one CUDA device.
    pub gpu: bool,
    /// Minimum memory of the device it would use (a GPU's when `gpu`, else the host's).
    pub min_memory_bytes: u64,
    /// Slots it occupies (at least 1).
    pub slots: u32,
}

impl Needs {
    /// Whether a worker with `devices` and `free_slots` can take it.
    pub fn met_by(&self, devices: &[Device], free_slots: u32) -> bool {
        if free_slots < self.slots.max(1) {
            return false;
        }
        let kind = if self.gpu {
            DeviceKind::Cuda
        } else {
            DeviceKind::Cpu
        };
        devices.iter().any(|d| {
            d.kind == kind
                && (self.min_memory_bytes == 0 || d.memory_bytes >= self.min_memory_bytes)
        })
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TaskState {
    /// Waiting for a worker.
    Queued,
    /// Held by `worker_id` under the task's current attempt.
    Leased {
        /// The holder.
        worker_id: String,
    },
    /// Finished successfully.
    Succeeded,
    /// Failed for good.
    Failed {
        /// Why.
        reason: String,
    },
    /// Cancelled by a person.
    Cancelled,
}

/// One task.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Task {
    /// Its id.
    pub id: String,
    /// The job it belongs to.
    pub job_id: String,
    /// What it needs.
    pub needs: Needs,
    /// Current attempt: 0 before the first lease, then 1, 2, ...
    pub attempt: u32,
    /// Attempts allowed before it fails.
    pub max_attempts: u32,
    /// Where it is.
    pub state: TaskState,
    /// When it entered the queue (last time).
    pub enqueued_at: SystemTime,
    /// A cancel was requested while it was leased: the holder is told in its next heartbeat.
    pub cancel_requested: bool,
    /// Why earlier attempts ended (lost workers, failures), oldest first.
    pub history: Vec<String>,
}

/// Why a report about a task was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No such task.
    #[error("task `{0}` does not exist")]
    Unknown(String),
    /// The reporter does not hold the task now (it was requeued after the worker was presumed
    /// lost, or another worker holds it, or it already finished).
    #[error(
        "task `{task_id}` attempt {attempt} is not held by worker `{worker_id}` (current attempt {current}, {state})"
    )]
    NotHeld {
        /// The task.
        task_id: String,
        /// The attempt reported.
        attempt: u32,
        /// The reporter.
        worker_id: String,
        /// The task's current attempt.
        current: u32,
        /// Its state, in words.
        state: String,
    },
}

/// How a leased task ended, as its holder reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It finished.
    Succeeded,
    /// It failed; `retry` says whether another attempt could help.
    Failed {
        /// The worker's message.
        reason: String,
        /// A transient failure (out of memory on a busy GPU, a lost dataset mount) may succeed
        /// elsewhere; a bad spec never will.
        retry: bool,
    },
    /// It stopped because of a cancel directive.
    Cancelled,
}

/// A task handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The task.
    pub task_id: String,
    /// The attempt the worker must report under.
    pub attempt: u32,
}

/// The queue and every task's state.
#[derive(Debug, Default)]
pub struct Scheduler {
    tasks: BTreeMap<String, Task>,
    queue: VecDeque<String>,
    /// Worker → the tasks it holds: heartbeats and loss handling touch only these, never the
    /// whole history.
    held: HashMap<String, BTreeSet<String>>,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a new task.
    pub fn enqueue(&mut self, id: String, job_id: String, needs: Needs, max_attempts: u32) {
        self.queue.push_back(id.clone());
        self.tasks.insert(
            id.clone(),
            Task {
                id,
                job_id,
                needs,
                attempt: 0,
                max_attempts: max_attempts.max(1),
                state: TaskState::Queued,
                enqueued_at: SystemTime::now(),
                cancel_requested: false,
                history: Vec::new(),
            },
        );
    }

    /// Leases the oldest queued task that `worker_id` (with `devices` and `free_slots`) can run.
    pub fn assign(
        &mut self,
        worker_id: &str,
        devices: &[Device],
        free_slots: u32,
    ) -> Option<Lease> {
        let position = self.queue.iter().position(|id| {
            self.tasks
                .get(id)
                .is_some_and(|t| t.needs.met_by(devices, free_slots))
        })?;
        let id = self.queue.remove(position).expect("position is in range");
        let task = self.tasks.get_mut(&id).expect("queued tasks exist");
        task.attempt += 1;
        task.state = TaskState::Leased {
            worker_id: worker_id.to_owned(),
        };
        let attempt = task.attempt;
        self.hold(worker_id, &id);
        Some(Lease {
            task_id: id,
            attempt,
        })
    }

    /// Checks that `worker_id` holds `task_id` under `attempt`.
    pub fn check_holder(
        &self,
        worker_id: &str,
        task_id: &str,
        attempt: u32,
    ) -> Result<&Task, Refused> {
        let task = self
            .tasks
            .get(task_id)
            .ok_or_else(|| Refused::Unknown(task_id.to_owned()))?;
        match &task.state {
            TaskState::Leased { worker_id: holder }
                if holder == worker_id && task.attempt == attempt =>
            {
                Ok(task)
            }
            state => Err(Refused::NotHeld {
                task_id: task_id.to_owned(),
                attempt,
                worker_id: worker_id.to_owned(),
                current: task.attempt,
                state: describe(state),
            }),
        }
    }

    /// Records the outcome its holder reports. A stale or foreign report is refused and changes
    /// nothing.
    pub fn complete(
        &mut self,
        worker_id: &str,
        task_id: &str,
        attempt: u32,
        outcome: Outcome,
    ) -> Result<&Task, Refused> {
        self.check_holder(worker_id, task_id, attempt)?;
        self.release(worker_id, task_id);
        let task = self.tasks.get_mut(task_id).expect("checked");
        match outcome {
            Outcome::Succeeded => task.state = TaskState::Succeeded,
            Outcome::Cancelled => task.state = TaskState::Cancelled,
            Outcome::Failed { reason, retry } => {
                task.history
                    .push(format!("attempt {attempt} on {worker_id} failed: {reason}"));
                if retry && task.attempt < task.max_attempts {
                    task.state = TaskState::Queued;
                    task.enqueued_at = SystemTime::now();
                    self.queue.push_back(task_id.to_owned());
                } else {
                    task.state = TaskState::Failed {
                        reason: Self::final_reason(task),
                    };
                }
            }
        }
        Ok(self.tasks.get(task_id).expect("exists"))
    }

    /// A worker was declared lost: requeues (at the front, they waited longest) each task it
    /// held, or fails it when its attempts are used up. Returns the affected task ids.
    pub fn worker_lost(&mut self, worker_id: &str) -> Vec<String> {
        let held = self.held_by(worker_id);
        for id in held.iter().rev() {
            self.lease_lost(id, &format!("lost with worker {worker_id}"));
        }
        held
    }

    /// Ids of the tasks `worker_id` holds.
    pub fn held_by(&self, worker_id: &str) -> Vec<String> {
        self.held
            .get(worker_id)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn hold(&mut self, worker_id: &str, task_id: &str) {
        self.held
            .entry(worker_id.to_owned())
            .or_default()
            .insert(task_id.to_owned());
    }

    fn release(&mut self, worker_id: &str, task_id: &str) {
        if let Some(ids) = self.held.get_mut(worker_id) {
            ids.remove(task_id);
            if ids.is_empty() {
                self.held.remove(worker_id);
            }
        }
    }

    /// The holder of one leased task no longer runs it (`why`, e.g. "lost with worker w1"):
    /// requeue it at the front with the next attempt, cancel it if a cancel was pending, or fail
    /// it when its attempts are used up. Does nothing to a task that is not leased.
    pub fn lease_lost(&mut self, task_id: &str, why: &str) {
        let Some(TaskState::Leased { worker_id }) =
            self.tasks.get(task_id).map(|t| t.state.clone())
        else {
            return;
        };
        self.release(&worker_id, task_id);
        let task = self.tasks.get_mut(task_id).expect("looked up");
        task.history.push(format!("attempt {} {why}", task.attempt));
        if task.cancel_requested {
            task.state = TaskState::Cancelled;
        } else if task.attempt < task.max_attempts {
            task.state = TaskState::Queued;
            self.queue.push_front(task_id.to_owned());
        } else {
            task.state = TaskState::Failed {
                reason: Self::final_reason(task),
            };
        }
    }

    /// Takes back a lease that never reached its worker (the poll it was meant for went away
    /// before the answer was sent): the task goes back to the front under its previous attempt,
    /// as if it had never been assigned.
    pub fn unassign(&mut self, lease: &Lease) {
        if let Some(task) = self.tasks.get_mut(&lease.task_id)
            && task.attempt == lease.attempt
            && let TaskState::Leased { worker_id } = task.state.clone()
        {
            task.attempt -= 1;
            self.release(&worker_id, &lease.task_id);
            let task = self.tasks.get_mut(&lease.task_id).expect("looked up");
            task.state = TaskState::Queued;
            self.queue.push_front(lease.task_id.clone());
        }
    }

    /// Rebuilds a scheduler from persisted tasks: queued ones in the order they were queued,
    /// leased ones still leased to their holders.
    pub fn restore(tasks: impl IntoIterator<Item = Task>) -> Self {
        let mut s = Self::new();
        let mut queued: Vec<(SystemTime, String)> = Vec::new();
        for task in tasks {
            match &task.state {
                TaskState::Queued => queued.push((task.enqueued_at, task.id.clone())),
                TaskState::Leased { worker_id } => s.hold(&worker_id.clone(), &task.id),
                _ => {}
            }
            s.tasks.insert(task.id.clone(), task);
        }
        queued.sort();
        s.queue = queued.into_iter().map(|(_, id)| id).collect();
        s
    }

    /// Whether any task waits in the queue.
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Cancels a task: a queued one at once; a leased one is flagged, and its holder is told by
    /// [`Scheduler::cancel_directives`]. Returns the state after, or `None` for an unknown task.
    pub fn cancel(&mut self, task_id: &str) -> Option<&TaskState> {
        let task = self.tasks.get_mut(task_id)?;
        match task.state {
            TaskState::Queued => {
                task.state = TaskState::Cancelled;
                self.queue.retain(|id| id != task_id);
            }
            TaskState::Leased { .. } => task.cancel_requested = true,
            _ => {}
        }
        Some(&self.tasks.get(task_id).expect("exists").state)
    }

    /// Tasks held by `worker_id` whose cancellation it has not acted on yet.
    pub fn cancel_directives(&self, worker_id: &str) -> Vec<&Task> {
        self.held
            .get(worker_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
            .filter(|t| t.cancel_requested)
            .collect()
    }

    /// A task by id.
    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id)
    }

    /// The tasks of `job_id` (task ids start with the job id and a dash).
    pub fn tasks_of(&self, job_id: &str) -> Vec<&Task> {
        let prefix = format!("{job_id}-");
        self.tasks
            .range(prefix.clone()..)
            .take_while(|(id, _)| id.starts_with(&prefix))
            .map(|(_, task)| task)
            .filter(|task| task.job_id == job_id)
            .collect()
    }

    /// Forgets a finished task (its job was archived). A task still queued or leased is kept:
    /// returns whether it was forgotten.
    pub fn forget(&mut self, task_id: &str) -> bool {
        match self.tasks.get(task_id).map(|t| &t.state) {
            Some(TaskState::Queued | TaskState::Leased { .. }) => false,
            Some(_) => {
                self.tasks.remove(task_id);
                true
            }
            None => true,
        }
    }

    /// Queued tasks, in queue order, and leased ones.
    pub fn snapshot(&self) -> (Vec<&Task>, Vec<&Task>) {
        let queued = self
            .queue
            .iter()
            .filter_map(|id| self.tasks.get(id))
            .collect();
        let leased = self
            .held
            .values()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
            .collect();
        (queued, leased)
    }

    fn final_reason(task: &Task) -> String {
        format!(
            "gave up after {} of {} attempts: {}",
            task.attempt,
            task.max_attempts,
            task.history.join("; ")
        )
    }
}

fn describe(state: &TaskState) -> String {
    match state {
        TaskState::Queued => "queued".to_owned(),
        TaskState::Leased { worker_id } => format!("held by `{worker_id}`"),
        TaskState::Succeeded => "succeeded".to_owned(),
        TaskState::Failed { .. } => "failed".to_owned(),
        TaskState::Cancelled => "cancelled".to_owned(),
    }
}

#[cfg(test)]
mod tests;
