//! `trainfleet.v1.JobService`: submit, inspect, cancel and watch training jobs.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use trainfleet_core::job::JobSpec;
use trainfleet_proto::v1;
use trainfleet_proto::v1::job_event::Event;
use trainfleet_proto::v1::job_service_server::JobService;

use crate::auth::audit::AuditTarget;
use crate::auth::{Caller, Role};
use crate::control::{MAX_SLEEP, Submission};
use crate::convert;
use crate::error::Error;
use crate::events::EventKind;
use crate::records::{JobState, JobView};
use crate::state::State;

/// Largest job YAML accepted. Real job files are a few hundred bytes; anything this big is a
/// mistake (or an attack) and is refused before it is parsed.
pub const MAX_JOB_YAML: usize = 1 << 20;
/// Largest JobService request tonic decodes: above [`MAX_JOB_YAML`] so that an oversized YAML
/// gets our INVALID_ARGUMENT with sizes rather than a transport error.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
/// Default and largest page of `List`.
pub(super) const DEFAULT_PAGE: usize = 50;
pub(super) const MAX_PAGE: usize = 500;

/// Serves jobs.
#[derive(Debug, Clone)]
pub struct JobApi {
    state: Arc<State>,
}

impl JobApi {
    /// The service over a replica's state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

pub(super) fn invalid(field: &str, message: String) -> Status {
    Error::from(trainfleet_core::Error::invalid_field(field, message)).into()
}

/// Validates a Submit request into a submission; nothing is queued when this fails.
pub fn submission(req: v1::SubmitJobRequest) -> Result<Submission, Status> {
    use v1::submit_job_request::Spec;
    if req.idempotency_key.len() > 128 {
        return Err(invalid(
            "idempotency_key",
            format!("is {} bytes; the limit is 128", req.idempotency_key.len()),
        ));
    }
    let spec = match req.spec {
        None => {
            return Err(invalid(
                "spec",
                "is missing: send the job as `yaml`, `structured` or `sleep`".into(),
            ));
        }
        Some(Spec::Sleep(sleep)) => {
            let duration = sleep
                .duration
                .map(Duration::try_from)
                .transpose()
                .map_err(|_| invalid("sleep.duration", "must not be negative".into()))?
                .unwrap_or_default();
            if duration > MAX_SLEEP {
                return Err(invalid(
                    "sleep.duration",
                    format!("is {duration:?}; the limit is {MAX_SLEEP:?}"),
                ));
            }
            return Ok(Submission::Sleep {
                name: sleep.name,
                duration,
            });
        }
        Some(Spec::Yaml(text)) => {
            if text.len() > MAX_JOB_YAML {
                return Err(invalid(
                    "yaml",
                    format!(
                        "is {} bytes; the limit is {MAX_JOB_YAML} bytes (a job file is a few \
                         hundred)",
                        text.len()
                    ),
                ));
            }
            JobSpec::from_yaml(&text, "yaml").map_err(Error::from)?
        }
        Some(Spec::Structured(spec)) => convert::job_spec_from_wire(spec).map_err(Error::from)?,
    };
    // Local paths (`dataset.path`, `model.init_weights`) are checked by the worker that runs the
    // task: this replica may not see the workers' filesystems at all.
    Ok(Submission::Train(Box::new(spec)))
}

#[tonic::async_trait]
impl JobService for JobApi {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::JobEvent, Status>> + Send>>;

    async fn submit(
        &self,
        request: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::SubmitJobResponse>, Status> {
        let caller = Caller::of(&request);
        let owner = if self.state.config.auth.enabled {
            caller.name
        } else {
            String::new()
        };
        let req = request.into_inner();
        let key = req.idempotency_key.clone();
        let submission = submission(req)?;
        let job = self
            .state
            .term()?
            .control
            .submit_by(submission, key, owner)
            .await?;
        let target = format!("job {}", job.record.id);
        Ok(AuditTarget::on(
            Response::new(v1::SubmitJobResponse {
                job: Some(job.to_wire()),
            }),
            target,
        ))
    }

    async fn get(&self, request: Request<v1::GetJobRequest>) -> Result<Response<v1::Job>, Status> {
        let term = self.state.term()?;
        Ok(Response::new(
            term.control.get(&request.get_ref().id).await?.to_wire(),
        ))
    }

    async fn list(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        let req = request.into_inner();
        let states = req
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| {
                JobState::from_wire(*s).ok_or_else(|| {
                    invalid(
                        &format!("states[{i}]"),
                        format!("is {s}; use JOB_STATE_QUEUED .. JOB_STATE_CANCELLED"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let size = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let term = self.state.term()?;
        let (jobs, next_page_token) = term.control.list(&states, size, &req.page_token).await?;
        Ok(Response::new(v1::ListJobsResponse {
            jobs: jobs.iter().map(JobView::to_wire).collect(),
            next_page_token,
        }))
    }

    async fn cancel(
        &self,
        request: Request<v1::CancelJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let term = self.state.term()?;
        // Admins cancel anything; a submitter only what it submitted (the rules let both in).
        if caller.role != Role::Admin {
            let job = term.control.get(&req.id).await?;
            if job.record.owner != caller.name {
                return Err(Status::permission_denied(format!(
                    "{} (role {}) may cancel only its own jobs; job {} was submitted by {}",
                    caller.name,
                    caller.role.name(),
                    req.id,
                    if job.record.owner.is_empty() {
                        "the coordinator or before access control"
                    } else {
                        &job.record.owner
                    }
                )));
            }
        }
        Ok(AuditTarget::on(
            Response::new(term.control.cancel(&req.id, &req.reason).await?.to_wire()),
            format!("job {}", req.id),
        ))
    }

    async fn watch(
        &self,
        request: Request<v1::WatchJobRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let term = self.state.term()?;
        let (job, rx) = term.control.watch(&request.get_ref().id).await?;
        let job = job.to_wire();
        let (tx, out) = mpsc::channel(64);
        let shutdown = term.stop.clone();
        tokio::spawn(async move {
            let now = Some(convert::timestamp(std::time::SystemTime::now()));
            let first = v1::JobEvent {
                at: now,
                event: Some(Event::State(job.state)),
            };
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            let Some(mut rx) = rx else {
                let _ = tx
                    .send(Ok(v1::JobEvent {
                        at: now,
                        event: Some(Event::Finished(job)),
                    }))
                    .await;
                return;
            };
            loop {
                let event = tokio::select! {
                    e = rx.recv() => e,
                    // The watcher hung up: stop holding a subscription for nobody.
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => {
                        let _ = tx.send(Err(Error::ShuttingDown.into())).await;
                        return;
                    }
                };
                match event {
                    Ok(event) => {
                        let last = matches!(event.kind, EventKind::Finished(_));
                        if tx.send(Ok(event.to_wire())).await.is_err() || last {
                            return;
                        }
                    }
                    // A slow watcher skips what it missed; the final event is never skipped
                    // because the stream ends only after it.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}
