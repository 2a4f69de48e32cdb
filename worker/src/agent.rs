//! The worker's conversation with the coordinator: connect, register, then heartbeat and
//! long-poll until something breaks, then reconnect with backoff and register again.
//!
//! Every failure ends the session the same way (drop it, back off, register anew). That keeps
//! the state machine to two states, "connected" and "backing off", and makes a restarted
//! coordinator, a declared-lost worker and a network blip all heal by the same path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use trainfleet_core::artifacts::ArtifactStore;
use trainfleet_core::config::WorkerConfig;
use trainfleet_core::device::{Device, DeviceKind};
use trainfleet_proto::v1;
use trainfleet_proto::v1::worker_service_client::WorkerServiceClient;
use trainfleet_proto::{AuthChannel, Bearer, ClientTls, TlsSettingNames};

use trainfleet_core::data_roots::DataRoots;

use crate::backoff::Backoff;
use crate::data::DataSettings;
use crate::error::{Error, Result};
use crate::tasks::{self, Context, Running};

mod completion;

use completion::finished_name;

/// Extra time a long-poll may take beyond the wait it asked for before the worker gives up on it.
const POLL_GRACE: Duration = Duration::from_secs(10);
/// Deadline of a Register or Heartbeat call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause before asking again while a replica says an election is in progress.
const ELECTION_RETRY: Duration = Duration::from_millis(500);

/// Deadline of a CompleteTask call.
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a finished task's report keeps being retried against a coordinator that does not
/// know this worker (it restarted and the worker has not registered again yet).
const REPORT_PATIENCE: Duration = Duration::from_secs(120);

/// A worker's identity and settings, ready to talk to a coordinator.
#[derive(Debug, Clone)]
pub struct Agent {
    config: WorkerConfig,
    worker_id: String,
    host: String,
    devices: Vec<Device>,
    /// Where jobs may read data from: `data_roots` plus the data cache.
    roots: DataRoots,
    /// The worker's token (`token_file`), sent with every call.
    bearer: Bearer,
    /// How to dial: TLS with the coordinator's CA and this worker's certificate, or plaintext.
    tls: ClientTls,
    shared: Arc<Shared>,
}

/// The current session's client, for reports that outlive a session.
#[derive(Debug, Clone)]
struct Link {
    client: WorkerServiceClient<AuthChannel>,
    session_id: String,
}

/// What the session loops and the running tasks share.
#[derive(Debug)]
struct Shared {
    running: Mutex<HashMap<String, Arc<Running>>>,
    /// Fires when a task's end has been reported (its slot is free again).
    slot_freed: Notify,
    /// Free slots promised to open polls: the poll loop's PollTask and reports carrying
    /// `poll_next` (see `completion`). A poll asks only for slots no other poll was promised,
    /// so the coordinator never leases more tasks than the worker has slots.
    reserved: Mutex<u32>,
    /// Set when the worker stops: nothing new is started.
    stopping: AtomicBool,
    link: watch::Sender<Option<Link>>,
    context: Mutex<Option<Arc<Context>>>,
}

impl Shared {
    fn running(&self) -> Vec<Arc<Running>> {
        self.lock_running().values().cloned().collect()
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Running>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Agent {
    /// An agent for `config` with the given devices (usually [`crate::devices::detect`]).
    /// Fails when a data root cannot be used (or the data cache cannot be made).
    pub fn new(config: WorkerConfig, devices: Vec<Device>) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::io(&config.data_dir, e))?;
        let roots = DataRoots::new(&config.data_roots, "data_roots")?.with_dir(&config.data_dir);
        let token = match &config.token_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?),
            None => None,
        };
        let bearer = Bearer::new(token.as_deref())
            .map_err(|why| Error::Spec(trainfleet_core::Error::invalid_field("token_file", why)))?;
        let names = TlsSettingNames {
            ca: "tls.ca_file",
            cert: "tls.cert_file",
            key: "tls.key_file",
        };
        let tls = match &config.tls {
            Some(t) => ClientTls::from_files(
                Some(&t.ca_file),
                t.cert_file.as_deref(),
                t.key_file.as_deref(),
                &names,
            )
            .map_err(|why| Error::Spec(trainfleet_core::Error::invalid_field("tls", why)))?
            .with_server_name(t.server_name.clone()),
            None => ClientTls::plaintext(),
        };
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let worker_id = config.worker_id.clone().unwrap_or_else(|| {
            format!(
                "{}-{:08x}",
                trainfleet_core::ids::sanitize_for_id(&host),
                rand::random::<u32>()
            )
        });
        tracing::info!(roots = ?roots.shown(), "jobs may read data under these roots");
        Ok(Self {
            config,
            worker_id,
            host,
            devices,
            roots,
            bearer,
            tls,
            shared: Arc::new(Shared {
                running: Mutex::new(HashMap::new()),
                slot_freed: Notify::new(),
                reserved: Mutex::new(0),
                stopping: AtomicBool::new(false),
                link: watch::Sender::new(None),
                context: Mutex::new(None),
            }),
        })
    }

    /// The id this worker registers with.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Talks to the coordinator until `shutdown` fires, reconnecting as often as needed.
    ///
    /// `coordinator` may list several replicas (`a:50051,b:50051`) or name one Service address.
    /// Sessions go to the leader: a follower answers UNAVAILABLE naming it (in metadata), and
    /// the next session goes there at once; an unreachable replica sends the next attempt to
    /// the next one in the list.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let targets: Vec<String> = self
            .config
            .coordinator
            .split(',')
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        for t in &targets {
            endpoint(&self.tls, t)?;
        }
        let mut next = 0;
        let mut leader_hint: Option<String> = None;
        let mut backoff = Backoff::new(self.config.reconnect_initial, self.config.reconnect_max);
        let gpus = self
            .devices
            .iter()
            .filter(|d| d.kind == DeviceKind::Cuda)
            .count();
        tracing::info!(
            worker_id = %self.worker_id,
            coordinator = %self.config.coordinator,
            gpus,
            slots = self.config.slots,
            "worker starting"
        );
        loop {
            let target = leader_hint
                .take()
                .unwrap_or_else(|| targets[next % targets.len()].clone());
            let endpoint = endpoint(&self.tls, &target)?;
            let outcome = tokio::select! {
                r = self.session(&endpoint, &mut backoff) => r,
                _ = shutdown.cancelled() => break,
            };
            self.shared.link.send_replace(None);
            crate::telemetry::get().connected.set(0);
            let err = match outcome {
                Ok(never) => match never {},
                Err(err) => err,
            };
            if let Some(leader) = leader_of(&err).filter(|l| *l != target) {
                tracing::info!(follower = %target, %leader, "following the coordinator leader");
                leader_hint = Some(leader);
                continue;
            }
            next += 1;
            // A replica that answers but knows no leader means an election is under way: the
            // cluster is up and has a leader within its TTL. Growing the backoff then (up to
            // `reconnect_max`) would leave this worker idle long after the new leader serves.
            let delay = if election_in_progress(&err) {
                ELECTION_RETRY.min(backoff.next_delay())
            } else {
                backoff.next_delay()
            };
            tracing::warn!(
                coordinator = %self.config.coordinator,
                attempt = backoff.attempt(),
                retry_in = %humantime::format_duration(round_ms(delay)),
                error = %err,
                "lost contact with the coordinator"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        // Stop whatever runs, within a batch, without reporting: the coordinator requeues it
        // after the lease and another worker resumes it from its last checkpoint.
        self.shared.stopping.store(true, Ordering::Relaxed);
        for task in self.shared.running() {
            if task.ended.load(Ordering::Relaxed) {
                continue;
            }
            task.abandoned.store(true, Ordering::Relaxed);
            task.cancel.store(true, Ordering::Relaxed);
            tracing::warn!(task_id = %task.task_id, "stopping with a task running; it will be requeued");
        }
        tracing::info!(worker_id = %self.worker_id, "worker stopped");
        Ok(())
    }

    /// One session: connect, register, then heartbeat and poll until either fails. Only returns
    /// with an error; shutdown is handled by the caller dropping this future.
    async fn session(
        &self,
        endpoint: &Endpoint,
        backoff: &mut Backoff,
    ) -> Result<std::convert::Infallible> {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Error::Connect(trainfleet_core::error::chain(&e)))?;
        let mut client = WorkerServiceClient::with_interceptor(channel, self.bearer.clone());
        let registered = client
            .register(with_timeout(self.register_request(), CALL_TIMEOUT))
            .await
            .map_err(|s| Error::Rpc("Register", s))?
            .into_inner();
        backoff.reset();
        let interval = registered
            .heartbeat_interval
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(2));
        tracing::info!(
            worker_id = %self.worker_id,
            coordinator = %self.config.coordinator,
            coordinator_version = %registered.coordinator_version,
            heartbeat_interval = %humantime::format_duration(interval),
            "registered"
        );
        let session_id = registered.session_id;
        self.ensure_context(&registered.artifact_store)?;
        crate::telemetry::get().connected.set(1);
        self.shared.link.send_replace(Some(Link {
            client: client.clone(),
            session_id: session_id.clone(),
        }));
        tokio::select! {
            r = self.heartbeat_loop(client.clone(), &session_id, interval) => r,
            r = self.poll_loop(client, &session_id) => r,
        }
    }

    async fn heartbeat_loop(
        &self,
        mut client: WorkerServiceClient<AuthChannel>,
        session_id: &str,
        interval: Duration,
    ) -> Result<std::convert::Infallible> {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // registration counted as the first beat
        loop {
            tick.tick().await;
            let running = self.shared.running();
            let tasks: Vec<v1::TaskProgress> = running.iter().map(|r| r.report()).collect();
            let request = v1::HeartbeatRequest {
                worker_id: self.worker_id.clone(),
                session_id: session_id.to_owned(),
                tasks: tasks.clone(),
                free_slots: self.free_slots(),
            };
            let response = match client.heartbeat(with_timeout(request, CALL_TIMEOUT)).await {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    for (task, sent) in running.iter().zip(tasks) {
                        task.unreport(sent.finished_epochs);
                    }
                    return Err(Error::Rpc("Heartbeat", status));
                }
            };
            for directive in response.directives {
                let Some(task) = running.iter().find(|r| r.task_id == directive.task_id) else {
                    continue;
                };
                // An ended task is listed until its report is answered (which, carrying the
                // next poll, may wait for work), and the coordinator that recorded the report
                // no longer counts it as this worker's: nothing is left to stop.
                if task.ended.load(Ordering::Relaxed) {
                    continue;
                }
                match v1::DirectiveKind::try_from(directive.kind) {
                    Ok(v1::DirectiveKind::Cancel) => {
                        tracing::info!(task_id = %task.task_id, reason = %directive.reason, "cancelling");
                        task.cancel.store(true, Ordering::Relaxed);
                    }
                    Ok(v1::DirectiveKind::Abandon) => {
                        tracing::warn!(task_id = %task.task_id, reason = %directive.reason, "abandoning");
                        task.abandoned.store(true, Ordering::Relaxed);
                        task.cancel.store(true, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
    }

    async fn poll_loop(
        &self,
        mut client: WorkerServiceClient<AuthChannel>,
        session_id: &str,
    ) -> Result<std::convert::Infallible> {
        loop {
            let freed = self.shared.slot_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            // Reports asking for work with their own slots; their ends wake this loop.
            let Some(reservation) = self.reserve(u32::MAX) else {
                freed.await;
                continue;
            };
            let free_slots = reservation.slots;
            let request = v1::PollTaskRequest {
                worker_id: self.worker_id.clone(),
                session_id: session_id.to_owned(),
                free_slots,
                max_wait: prost_types::Duration::try_from(self.config.poll_wait).ok(),
            };
            let response = client
                .poll_task(with_timeout(request, self.config.poll_wait + POLL_GRACE))
                .await
                .map_err(|s| Error::Rpc("PollTask", s))?
                .into_inner();
            if let Some(task) = response.task {
                self.take(task);
            }
        }
    }

    /// Slots not taken by a task still running (one that ended and is being reported has
    /// given its slot back).
    fn free_slots(&self) -> u32 {
        let busy = self
            .shared
            .lock_running()
            .values()
            .filter(|r| !r.ended.load(Ordering::Relaxed))
            .count();
        self.config.slots.saturating_sub(busy as u32)
    }

    /// Opens the artifact store the coordinator named (once per distinct URL).
    fn ensure_context(&self, artifact_store: &str) -> Result<()> {
        let mut context = self
            .shared
            .context
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if context
            .as_ref()
            .is_some_and(|c| c.artifacts.base() == artifact_store)
        {
            return Ok(());
        }
        let location = if artifact_store.is_empty() {
            self.config.artifact_dir.display().to_string()
        } else {
            artifact_store.to_owned()
        };
        let artifacts = ArtifactStore::open(&location)?;
        tracing::info!(artifacts = %artifacts.base(), "artifact store");
        *context = Some(Arc::new(Context {
            data: DataSettings::new(
                self.config.data_dir.clone(),
                self.config.dataset_mirror.clone(),
            ),
            work_dir: self.config.artifact_dir.clone(),
            artifacts,
            roots: self.roots.clone(),
        }));
        Ok(())
    }

    /// Runs a leased task in the background and reports its end.
    fn start(&self, task: v1::Task) {
        let ctx = self
            .shared
            .context
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .expect("registration opened the context");
        let running = Arc::new(Running::new(&task));
        self.shared
            .lock_running()
            .insert(task.id.clone(), running.clone());
        tracing::info!(
            task_id = %task.id, job_id = %task.job_id, attempt = task.attempt,
            kind = v1::TaskKind::try_from(task.kind).map_or("?", |k| k.as_str_name()),
            "task started"
        );
        let agent = self.clone();
        let kind = match v1::TaskKind::try_from(task.kind) {
            Ok(v1::TaskKind::Train) => "train",
            Ok(v1::TaskKind::Eval) => "eval",
            Ok(v1::TaskKind::Scan) => "scan",
            _ => "sleep",
        };
        let telemetry = crate::telemetry::get();
        telemetry.running.inc();
        tokio::spawn(async move {
            let finished = tasks::execute(task, running.clone(), ctx).await;
            running.ended.store(true, Ordering::Relaxed);
            telemetry.running.dec();
            telemetry.task_done(kind, finished_name(&finished));
            agent.report(&running, finished).await;
            agent.shared.lock_running().remove(&running.task_id);
            agent.shared.slot_freed.notify_waiters();
        });
    }

    fn register_request(&self) -> v1::RegisterRequest {
        v1::RegisterRequest {
            worker_id: self.worker_id.clone(),
            host: self.host.clone(),
            devices: self.devices.iter().map(device_to_wire).collect(),
            slots: self.config.slots,
            version: trainfleet_core::VERSION.to_owned(),
            libtorch_version: crate::LIBTORCH_VERSION.to_owned(),
            labels: self.config.labels.clone().into_iter().collect(),
        }
    }
}

/// Whether a replica answered that it knows no leader yet.
fn election_in_progress(err: &Error) -> bool {
    matches!(err, Error::Rpc(_, status)
        if status.code() == tonic::Code::Unavailable
            && status.metadata().contains_key("trainfleet-election"))
}

/// The leader a follower named when it refused a call.
fn leader_of(err: &Error) -> Option<String> {
    match err {
        Error::Rpc(_, status) if status.code() == tonic::Code::Unavailable => status
            .metadata()
            .get("trainfleet-leader")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        _ => None,
    }
}

fn device_to_wire(d: &Device) -> v1::Device {
    v1::Device {
        kind: match d.kind {
            DeviceKind::Cpu => v1::DeviceKind::Cpu,
            DeviceKind::Cuda => v1::DeviceKind::Cuda,
        } as i32,
        index: d.index,
        name: d.name.clone(),
        memory_bytes: d.memory_bytes,
        cores: d.cores,
    }
}

/// A channel endpoint for `host:port` (https with TLS configured) or `http(s)://host:port`.
pub fn endpoint(tls: &ClientTls, coordinator: &str) -> Result<Endpoint> {
    let endpoint = tls
        .endpoint(coordinator)
        .map_err(|e| Error::BadAddress(coordinator.to_owned(), e))?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10)))
}

fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
