//! `trainfleet.v1.WorkerService`: the protocol workers speak.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use trainfleet_proto::v1;
use trainfleet_proto::v1::worker_service_server::WorkerService;

use crate::auth::Caller;
use crate::auth::audit::AuditTarget;
use crate::convert;
use crate::dispatch::{Assignment, Directive};
use crate::error::Error;
use crate::state::{State, Term};

/// Serves registration, long-polls and heartbeats.
#[derive(Debug, Clone)]
pub struct WorkerApi {
    state: Arc<State>,
}

impl WorkerApi {
    /// The service over a replica's state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    #[tracing::instrument(skip_all, fields(worker_id = %request.get_ref().worker_id))]
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        Caller::of(&request).act_as(&request.get_ref().worker_id)?;
        let peer = crate::tls::remote_addr(&request)
            .map(|a| a.to_string())
            .unwrap_or_default();
        let registration =
            convert::registration(request.into_inner(), peer).map_err(Error::from)?;
        let summary: Vec<String> = registration
            .devices
            .iter()
            .map(|d| format!("{} ({})", d.torch_name(), d.name))
            .collect();
        tracing::info!(
            host = %registration.host,
            slots = registration.slots,
            devices = ?summary,
            version = %registration.version,
            "worker registered"
        );
        let worker_id = registration.worker_id.clone();
        let session = self.state.term()?.registry.register(registration);
        self.state.term()?.control.worker_registered(&worker_id);
        Ok(AuditTarget::on(
            Response::new(v1::RegisterResponse {
                session_id: session.session_id,
                heartbeat_interval: Some(convert::duration(self.state.config.heartbeat_interval)),
                lease_timeout: Some(convert::duration(self.state.config.lease_timeout)),
                coordinator_version: trainfleet_core::VERSION.to_owned(),
                artifact_store: self.state.term()?.control.artifacts().base().to_owned(),
            }),
            format!("worker {worker_id}"),
        ))
    }

    async fn poll_task(
        &self,
        request: Request<v1::PollTaskRequest>,
    ) -> Result<Response<v1::PollTaskResponse>, Status> {
        Caller::of(&request).act_as(&request.get_ref().worker_id)?;
        let req = request.into_inner();
        let wait = convert::poll_wait(req.max_wait, self.state.config.max_poll_wait)
            .map_err(Error::from)?;
        let term = self.state.term()?;
        let task = next_task(&term, &req.worker_id, &req.session_id, req.free_slots, wait).await?;
        Ok(Response::new(v1::PollTaskResponse { task }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        Caller::of(&request).act_as(&request.get_ref().worker_id)?;
        let req = request.into_inner();
        let running = req.tasks.iter().map(|t| t.task_id.clone()).collect();
        let term = self.state.term()?;
        let deadline =
            term.registry
                .heartbeat(&req.worker_id, &req.session_id, req.free_slots, running)?;
        let reports = req
            .tasks
            .into_iter()
            .map(convert::progress_from_wire)
            .collect();
        let directives = term
            .control
            .heartbeat(&req.worker_id, &req.session_id, reports);
        Ok(Response::new(v1::HeartbeatResponse {
            directives: directives.iter().map(Directive::to_wire).collect(),
            deadline: Some(convert::timestamp(deadline)),
        }))
    }

    async fn complete_task(
        &self,
        request: Request<v1::CompleteTaskRequest>,
    ) -> Result<Response<v1::CompleteTaskResponse>, Status> {
        Caller::of(&request).act_as(&request.get_ref().worker_id)?;
        let req = request.into_inner();
        // The session is a bearer token: only the worker that registered may report. A worker
        // whose session ended (declared lost, coordinator restarted) registers again and reports
        // under the new one; the attempt number then decides whether the report still counts.
        let term = self.state.term()?;
        term.registry
            .check_session(&req.worker_id, &req.session_id)?;
        let report = convert::report(req.outcome, req.permanent).map_err(Error::from)?;
        // The poll's arguments are checked before the report is recorded, so that a bad one
        // refuses the whole call and changes nothing.
        let poll = req
            .poll_next
            .map(|next| convert::poll_next(next, self.state.config.max_poll_wait))
            .transpose()
            .map_err(Error::from)?;
        term.control
            .complete(&req.worker_id, &req.task_id, req.attempt, report)
            .await?;
        let next_task = match poll {
            // The report is recorded: a poll ended by shutdown answers with no task rather
            // than an error, which would have the worker send the report again.
            Some((free_slots, wait)) => {
                match next_task(&term, &req.worker_id, &req.session_id, free_slots, wait).await {
                    Err(Error::ShuttingDown) => None,
                    other => other?,
                }
            }
            None => None,
        };
        Ok(AuditTarget::on(
            Response::new(v1::CompleteTaskResponse {
                accepted: true,
                next_task,
            }),
            format!("task {}", req.task_id),
        ))
    }
}

/// The long-poll of PollTask and of a CompleteTask's `poll_next`: the next task leased to the
/// worker, or none after `wait`. Ends at once on shutdown, so that a stopping coordinator is not
/// held up by open long-polls.
async fn next_task(
    term: &Term,
    worker_id: &str,
    session: &str,
    free_slots: u32,
    wait: std::time::Duration,
) -> Result<Option<v1::Task>, Error> {
    let polls = &crate::metrics::get().long_polls;
    polls.inc();
    let _waiting = scopeguard(|| {
        polls.dec();
    });
    let task = term
        .control
        .poll(worker_id, session, free_slots, wait, &term.stop)
        .await?;
    if let Some(task) = &task {
        tracing::info!(
            worker_id = %worker_id, task_id = %task.id, attempt = task.attempt,
            "task leased"
        );
    }
    Ok(task.as_ref().map(Assignment::to_wire))
}

/// Runs `f` when dropped (the poll ends, or its caller goes away mid-wait).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use trainfleet_core::config::CoordinatorConfig;

    use super::*;
    use crate::records::JobState;

    async fn api() -> (WorkerApi, Arc<State>, tempfile::TempDir) {
        let config = CoordinatorConfig {
            heartbeat_interval: Duration::from_secs(1),
            lease_timeout: Duration::from_secs(3),
            max_poll_wait: Duration::from_secs(30),
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let state = State::for_tests(config, dir.path()).await;
        (WorkerApi::new(state.clone()), state, dir)
    }

    async fn register(api: &WorkerApi, id: &str) -> v1::RegisterResponse {
        let request = v1::RegisterRequest {
            worker_id: id.into(),
            devices: vec![v1::Device {
                kind: v1::DeviceKind::Cpu as i32,
                ..Default::default()
            }],
            slots: 1,
            ..Default::default()
        };
        api.register(Request::new(request))
            .await
            .unwrap()
            .into_inner()
    }

    fn poll(id: &str, session: &str, wait: Option<u64>) -> Request<v1::PollTaskRequest> {
        Request::new(v1::PollTaskRequest {
            worker_id: id.into(),
            session_id: session.into(),
            free_slots: 1,
            max_wait: wait.map(|s| prost_types::Duration {
                seconds: s as i64,
                nanos: 0,
            }),
        })
    }

    fn report(
        id: &str,
        session: &str,
        task: &v1::Task,
        poll_next: Option<v1::PollNext>,
    ) -> Request<v1::CompleteTaskRequest> {
        Request::new(v1::CompleteTaskRequest {
            worker_id: id.into(),
            session_id: session.into(),
            task_id: task.id.clone(),
            attempt: task.attempt,
            outcome: Some(v1::complete_task_request::Outcome::Success(
                v1::TaskResult::default(),
            )),
            permanent: false,
            poll_next,
        })
    }

    fn poll_next(wait_s: i64) -> Option<v1::PollNext> {
        Some(v1::PollNext {
            free_slots: 1,
            max_wait: Some(prost_types::Duration {
                seconds: wait_s,
                nanos: 0,
            }),
        })
    }

    async fn submit(state: &State) -> String {
        let sleep = crate::requests::Submission::Sleep {
            name: "nap".into(),
            duration: Duration::ZERO,
        };
        let control = state.term().unwrap().control.clone();
        control
            .submit(sleep, String::new())
            .await
            .unwrap()
            .record
            .id
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_carries_the_poll_for_the_next_task() {
        let (api, state, _dir) = api().await;
        let session = register(&api, "w1").await.session_id;
        let (first, second) = (submit(&state).await, submit(&state).await);
        let task = api.poll_task(poll("w1", &session, Some(1))).await.unwrap();
        let task = task.into_inner().task.unwrap();
        assert_eq!(task.job_id, first);

        // The second job is queued: the report's poll takes it at once.
        let answer = api
            .complete_task(report("w1", &session, &task, poll_next(5)))
            .await
            .unwrap()
            .into_inner();
        assert!(answer.accepted);
        let next = answer.next_task.expect("the queued job's task");
        assert_eq!(next.job_id, second);
        let control = state.term().unwrap().control.clone();
        let job = control.get(&first).await.unwrap();
        assert_eq!(job.record.state, JobState::Succeeded);

        // Nothing queued: the report is recorded, then the call waits like a PollTask, and a
        // job submitted meanwhile is handed to it.
        let waiting = tokio::spawn({
            let (api, session, next) = (api.clone(), session.clone(), next.clone());
            async move {
                api.complete_task(report("w1", &session, &next, poll_next(5)))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            control.get(&second).await.unwrap().record.state,
            JobState::Succeeded,
            "recorded before the poll's wait"
        );
        let third = submit(&state).await;
        let answer = waiting.await.unwrap().unwrap().into_inner();
        assert_eq!(answer.next_task.unwrap().job_id, third);

        // A poll that runs out of time answers with no task, after its wait.
        let fourth = submit(&state).await;
        let task = api.poll_task(poll("w1", &session, Some(1))).await.unwrap();
        let task = task.into_inner().task.unwrap();
        assert_eq!(task.job_id, fourth);
        let started = tokio::time::Instant::now();
        let answer = api
            .complete_task(report("w1", &session, &task, poll_next(3)))
            .await
            .unwrap()
            .into_inner();
        assert!(answer.next_task.is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bad_poll_next_or_a_refused_report_records_and_leases_nothing() {
        let (api, state, _dir) = api().await;
        let session = register(&api, "w1").await.session_id;
        let first = submit(&state).await;
        let task = api.poll_task(poll("w1", &session, Some(1))).await.unwrap();
        let task = task.into_inner().task.unwrap();
        let queued = submit(&state).await;
        let control = state.term().unwrap().control.clone();

        let no_slots = Some(v1::PollNext {
            free_slots: 0,
            max_wait: None,
        });
        let status = api
            .complete_task(report("w1", &session, &task, no_slots))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("poll_next.free_slots"),
            "{}",
            status.message()
        );
        assert_eq!(
            control.get(&first).await.unwrap().record.state,
            JobState::Training,
            "a refused call records nothing"
        );

        // A report for an attempt that is not current is refused, and its poll takes nothing.
        let mut stale = task.clone();
        stale.attempt += 1;
        let status = api
            .complete_task(report("w1", &session, &stale, poll_next(1)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            control.get(&queued).await.unwrap().record.state,
            JobState::Queued,
            "the queued job was not leased"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn registration_returns_the_configured_timings() {
        let (api, _, _dir) = api().await;
        let r = register(&api, "w1").await;
        assert_eq!(r.heartbeat_interval.unwrap().seconds, 1);
        assert_eq!(r.lease_timeout.unwrap().seconds, 3);
        assert_eq!(r.session_id.len(), 32);
    }

    #[tokio::test(start_paused = true)]
    async fn poll_waits_the_requested_time_capped_by_the_coordinator() {
        let (api, _, _dir) = api().await;
        let session = register(&api, "w1").await.session_id;
        let started = tokio::time::Instant::now();
        let answer = api.poll_task(poll("w1", &session, Some(5))).await.unwrap();
        assert!(answer.into_inner().task.is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(5));

        let started = tokio::time::Instant::now();
        api.poll_task(poll("w1", &session, Some(3600)))
            .await
            .unwrap();
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(30),
            "capped at max_poll_wait"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_open_polls_at_once() {
        let (api, state, _dir) = api().await;
        let session = register(&api, "w1").await.session_id;
        let poller = tokio::spawn({
            let api = api.clone();
            async move { api.poll_task(poll("w1", &session, None)).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = tokio::time::Instant::now();
        state.shutdown.cancel();
        let status = poller.await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(started.elapsed() < Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_worker_is_told_to_register_again() {
        let (api, state, _dir) = api().await;
        let session = register(&api, "w1").await.session_id;
        tokio::time::advance(Duration::from_secs(4)).await;
        state.term().unwrap().registry.expire();
        let beat = v1::HeartbeatRequest {
            worker_id: "w1".into(),
            session_id: session.clone(),
            ..Default::default()
        };
        let status = api.heartbeat(Request::new(beat)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(
            status.message().contains("declared lost"),
            "{}",
            status.message()
        );
        let status = api
            .poll_task(poll("w1", &session, Some(1)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
    }
}
