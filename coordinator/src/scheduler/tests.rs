//! The scheduler's unit tests.

use super::*;

fn cpu() -> Vec<Device> {
    vec![Device {
        kind: DeviceKind::Cpu,
        index: 0,
        name: "cpu".into(),
        memory_bytes: 16 << 30,
        cores: 8,
    }]
}

fn gpu_box() -> Vec<Device> {
    let mut d = cpu();
    d.push(Device {
        kind: DeviceKind::Cuda,
        index: 0,
        name: "H100".into(),
        memory_bytes: 80 << 30,
        cores: 0,
    });
    d
}

fn needs(gpu: bool) -> Needs {
    Needs {
        gpu,
        min_memory_bytes: 0,
        slots: 1,
    }
}

#[test]
fn tasks_go_first_fit_in_queue_order_to_workers_that_meet_their_needs() {
    let mut s = Scheduler::new();
    s.enqueue("t-gpu".into(), "j1".into(), needs(true), 3);
    s.enqueue("t-cpu".into(), "j2".into(), needs(false), 3);
    s.enqueue(
        "t-big".into(),
        "j3".into(),
        Needs {
            gpu: false,
            min_memory_bytes: 64 << 30,
            slots: 1,
        },
        3,
    );
    // A CPU worker skips the GPU task and the one needing more memory than it has.
    assert_eq!(
        s.assign("cpu-1", &cpu(), 1),
        Some(Lease {
            task_id: "t-cpu".into(),
            attempt: 1
        })
    );
    assert_eq!(s.assign("cpu-1", &cpu(), 1), None);
    assert_eq!(s.assign("gpu-1", &gpu_box(), 1).unwrap().task_id, "t-gpu");
    assert_eq!(s.assign("gpu-1", &gpu_box(), 0), None, "no free slot");
    let (queued, leased) = s.snapshot();
    assert_eq!((queued.len(), leased.len()), (1, 2));
}

#[test]
fn a_lost_workers_task_is_requeued_with_the_next_attempt_and_stale_reports_are_refused() {
    let mut s = Scheduler::new();
    s.enqueue("t".into(), "j".into(), needs(false), 3);
    s.enqueue("later".into(), "j2".into(), needs(false), 3);
    let first = s.assign("w1", &cpu(), 1).unwrap();
    assert_eq!(s.worker_lost("w1"), vec!["t".to_owned()]);
    let second = s.assign("w2", &cpu(), 1).unwrap();
    assert_eq!(
        (second.task_id.as_str(), second.attempt),
        ("t", 2),
        "requeued at the front, attempt + 1"
    );

    // w1 comes back and reports its old attempt: refused, nothing changes.
    let err = s
        .complete("w1", "t", first.attempt, Outcome::Succeeded)
        .unwrap_err();
    assert!(matches!(err, Refused::NotHeld { current: 2, .. }), "{err}");
    assert!(err.to_string().contains("held by `w2`"), "{err}");
    assert_eq!(
        s.task("t").unwrap().state,
        TaskState::Leased {
            worker_id: "w2".into()
        }
    );
    // Right worker, wrong attempt: refused too.
    assert!(s.complete("w2", "t", 1, Outcome::Succeeded).is_err());

    assert_eq!(
        s.complete("w2", "t", 2, Outcome::Succeeded).unwrap().state,
        TaskState::Succeeded
    );
    assert!(
        s.complete("w2", "t", 2, Outcome::Succeeded).is_err(),
        "a finished task takes no more reports"
    );
    assert_eq!(
        s.complete("w9", "nope", 1, Outcome::Succeeded).unwrap_err(),
        Refused::Unknown("nope".into())
    );
}

#[test]
fn attempts_run_out_and_the_task_fails_with_its_history() {
    let mut s = Scheduler::new();
    s.enqueue("t".into(), "j".into(), needs(false), 2);
    s.assign("w1", &cpu(), 1).unwrap();
    s.worker_lost("w1");
    s.assign("w2", &cpu(), 1).unwrap();
    s.worker_lost("w2");
    match &s.task("t").unwrap().state {
        TaskState::Failed { reason } => {
            assert!(
                reason.starts_with("gave up after 2 of 2 attempts"),
                "{reason}"
            );
            assert!(
                reason.contains("attempt 1 lost with worker w1")
                    && reason.contains("attempt 2 lost with worker w2"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.assign("w3", &cpu(), 1), None);
}

#[test]
fn failures_retry_only_when_they_may_help() {
    let mut s = Scheduler::new();
    s.enqueue("flaky".into(), "j".into(), needs(false), 3);
    s.enqueue("broken".into(), "j".into(), needs(false), 3);
    let a = s.assign("w", &cpu(), 2).unwrap();
    let b = s.assign("w", &cpu(), 2).unwrap();
    let transient = Outcome::Failed {
        reason: "CUDA out of memory".into(),
        retry: true,
    };
    assert_eq!(
        s.complete("w", &a.task_id, a.attempt, transient)
            .unwrap()
            .state,
        TaskState::Queued
    );
    let permanent = Outcome::Failed {
        reason: "unknown model".into(),
        retry: false,
    };
    assert!(matches!(
        s.complete("w", &b.task_id, b.attempt, permanent)
            .unwrap()
            .state,
        TaskState::Failed { .. }
    ));
    assert_eq!(
        s.assign("w", &cpu(), 1).unwrap(),
        Lease {
            task_id: "flaky".into(),
            attempt: 2
        }
    );
}

#[test]
fn cancel_removes_a_queued_task_and_flags_a_leased_one_for_its_holder() {
    let mut s = Scheduler::new();
    s.enqueue("running".into(), "j1".into(), needs(false), 3);
    s.enqueue("waiting".into(), "j2".into(), needs(false), 3);
    let lease = s.assign("w", &cpu(), 1).unwrap();
    assert_eq!(s.cancel("waiting"), Some(&TaskState::Cancelled));
    assert_eq!(s.snapshot().0.len(), 0, "no longer queued");
    assert!(matches!(
        s.cancel("running"),
        Some(TaskState::Leased { .. })
    ));
    assert_eq!(
        s.cancel_directives("w")
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        ["running"]
    );
    assert!(s.cancel_directives("other").is_empty());
    assert_eq!(
        s.complete("w", "running", lease.attempt, Outcome::Cancelled)
            .unwrap()
            .state,
        TaskState::Cancelled
    );
    assert!(s.cancel_directives("w").is_empty());
    assert_eq!(s.cancel("missing"), None);

    // A cancelled task whose worker is lost is not requeued.
    s.enqueue("doomed".into(), "j3".into(), needs(false), 3);
    s.assign("w2", &cpu(), 1).unwrap();
    s.cancel("doomed");
    s.worker_lost("w2");
    assert_eq!(s.task("doomed").unwrap().state, TaskState::Cancelled);
}

#[test]
fn unassign_undoes_a_lease_and_restore_rebuilds_queue_order_and_holders() {
    let mut s = Scheduler::new();
    s.enqueue("a".into(), "j1".into(), needs(false), 3);
    s.enqueue("b".into(), "j2".into(), needs(false), 3);
    let lease = s.assign("w", &cpu(), 1).unwrap();
    s.unassign(&lease);
    assert!(s.held_by("w").is_empty());
    let again = s.assign("w", &cpu(), 1).unwrap();
    assert_eq!(
        (again.task_id.as_str(), again.attempt),
        ("a", 1),
        "as if never leased"
    );

    let copies: Vec<Task> = ["b", "a"]
        .iter()
        .map(|id| s.task(id).unwrap().clone())
        .collect();
    let restored = Scheduler::restore(copies);
    assert_eq!(restored.held_by("w"), ["a".to_owned()]);
    let (queued, leased) = restored.snapshot();
    assert_eq!(
        queued.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    assert_eq!(leased.len(), 1);
}
