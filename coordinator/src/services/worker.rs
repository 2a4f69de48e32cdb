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
use crate::state::State;

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
        // Ends at once on shutdown, so that a stopping coordinator is not held up by open
        // long-polls.
        let term = self.state.term()?;
        let polls = &crate::metrics::get().long_polls;
        polls.inc();
        let _waiting = scopeguard(|| {
            polls.dec();
        });
        let task = term
            .control
            .poll(
                &req.worker_id,
                &req.session_id,
                req.free_slots,
                wait,
                &term.stop,
            )
            .await?;
        if let Some(task) = &task {
            tracing::info!(
                worker_id = %req.worker_id, task_id = %task.id, attempt = task.attempt,
                "task leased"
            );
        }
        Ok(Response::new(v1::PollTaskResponse {
            task: task.as_ref().map(Assignment::to_wire),
        }))
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
        term.control
            .complete(&req.worker_id, &req.task_id, req.attempt, report)
            .await?;
        Ok(AuditTarget::on(
            Response::new(v1::CompleteTaskResponse { accepted: true }),
            format!("task {}", req.task_id),
        ))
    }
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
