//! What an operator sees in Prometheus: one set of metrics per process ([`get`]), served on a
//! plain-HTTP port of its own (`metrics_listen`; `trainfleet_core::metrics_http`).
//!
//! Counters and histograms are updated where things happen (the access layer, the control
//! plane, the journal); gauges that describe the state (leadership, the queue, workers) are set
//! from it at each scrape (`server.rs` reads the state, [`Metrics::state`] takes it, [`encode`]
//! writes the text), so they can never drift. This module depends on no other of the crate. Labels are bounded sets
//! (method names, codes, outcomes, reasons); no worker, job or task id is ever a label.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label set with one label, `method`, `outcome`, `reason`, `state` or `result`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// `service/Method`, e.g. `trainfleet.v1.JobService/Submit`.
    pub method: String,
}

/// A gRPC call's method and code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `service/Method`.
    pub method: String,
    /// `OK`, `NOT_FOUND`, ...
    pub code: String,
}

/// How something ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `succeeded`, `failed` or `cancelled`.
    pub outcome: &'static str,
}

/// Why something happened.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A fixed word per cause.
    pub reason: &'static str,
}

/// A gate decision.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `promoted` or `rejected`.
    pub result: &'static str,
}

/// Workers in one state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `alive` or `lost`.
    pub state: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets: 1 ms to about 33 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Task durations: 0.1 s to about 7 h.
fn durations() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 18))
}

/// Every metric of a coordinator process.
pub struct Metrics {
    registry: Registry,
    /// 1 while this replica leads.
    pub leader: Gauge,
    /// Terms this replica began or ended.
    pub leader_changes: Counter,
    /// Tasks waiting for a worker.
    pub queue_depth: Gauge,
    /// Age of the oldest queued task.
    pub queue_oldest_age: Gauge<f64, AtomicU64>,
    /// From entering the queue to being leased.
    pub schedule_to_start: Histogram,
    /// From lease to report, by outcome.
    pub task_seconds: Histograms<OutcomeLabel>,
    /// Tasks queued again, by why.
    pub retries: Family<ReasonLabel, Counter>,
    /// Workers known, by state.
    pub workers: Family<StateLabel, Gauge>,
    /// PollTask long-polls held open now.
    pub long_polls: Gauge,
    /// gRPC calls answered, by method and code.
    pub grpc_requests: Family<CallLabels, Counter>,
    /// Time to a call's response headers (a unary call's whole time), by method.
    pub grpc_seconds: Histograms<MethodLabel>,
    /// Calls refused by access control, by why.
    pub auth_failures: Family<ReasonLabel, Counter>,
    /// Gate decisions, by result.
    pub promotions: Family<ResultLabel, Counter>,
    /// One group commit of the journal to the store.
    pub store_commit: Histogram,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("trainfleet");
        let m = Metrics {
            leader: Gauge::default(),
            leader_changes: Counter::default(),
            queue_depth: Gauge::default(),
            queue_oldest_age: Gauge::default(),
            schedule_to_start: latency(),
            task_seconds: Family::new_with_constructor(durations),
            retries: Family::default(),
            workers: Family::default(),
            long_polls: Gauge::default(),
            grpc_requests: Family::default(),
            grpc_seconds: Family::new_with_constructor(latency),
            auth_failures: Family::default(),
            promotions: Family::default(),
            store_commit: latency(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("is_leader", "1 while this replica leads", m.leader.clone());
        r.register(
            "leader_changes",
            "Terms this replica began or ended",
            m.leader_changes.clone(),
        );
        r.register(
            "queue_depth",
            "Tasks waiting for a worker",
            m.queue_depth.clone(),
        );
        r.register(
            "queue_oldest_age_seconds",
            "Age of the oldest queued task (0 when none)",
            m.queue_oldest_age.clone(),
        );
        r.register(
            "schedule_to_start_seconds",
            "From a task entering the queue to its lease",
            m.schedule_to_start.clone(),
        );
        r.register(
            "task_duration_seconds",
            "From a task's lease to its worker's report, by outcome",
            m.task_seconds.clone(),
        );
        r.register(
            "task_retries",
            "Tasks queued again, by reason",
            m.retries.clone(),
        );
        r.register("workers", "Workers known, by state", m.workers.clone());
        r.register(
            "long_polls_waiting",
            "PollTask long-polls held open",
            m.long_polls.clone(),
        );
        r.register(
            "grpc_requests",
            "gRPC calls answered, by method and code",
            m.grpc_requests.clone(),
        );
        r.register(
            "grpc_request_duration_seconds",
            "Time to a call's response headers (all of a unary call), by method",
            m.grpc_seconds.clone(),
        );
        r.register(
            "auth_failures",
            "Calls refused by access control, by reason",
            m.auth_failures.clone(),
        );
        r.register(
            "promotions",
            "Gate decisions on challengers, by result",
            m.promotions.clone(),
        );
        r.register(
            "store_commit_seconds",
            "One group commit of the state journal to the store",
            m.store_commit.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Records one answered call. `method` must come from a bounded set (the access layer
    /// passes `other` for a path that names no served method).
    pub fn call(&self, method: &str, code: &str, took: Duration) {
        self.grpc_requests
            .get_or_create(&CallLabels {
                method: method.to_owned(),
                code: code.to_owned(),
            })
            .inc();
        self.grpc_seconds
            .get_or_create(&MethodLabel {
                method: method.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records a task put back in the queue.
    pub fn retried(&self, reason: &'static str) {
        self.retries.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Records a report: how long the task ran, and how it ended.
    pub fn task_ended(&self, outcome: &'static str, ran: Option<Duration>) {
        if let Some(ran) = ran {
            self.task_seconds
                .get_or_create(&OutcomeLabel { outcome })
                .observe(ran.as_secs_f64());
        }
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Seconds since `t` (0 if it is in the future).
pub fn since(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

/// What the state says at a scrape: leadership, and on the leader the queue and the workers.
#[derive(Debug, Default)]
pub struct StateNow {
    /// Whether this replica leads.
    pub leader: bool,
    /// Queued tasks and when the oldest entered the queue (the leader only).
    pub queue: Option<(usize, Option<SystemTime>)>,
    /// Alive and lost workers (the leader only).
    pub workers: Option<(usize, usize)>,
}

impl Metrics {
    /// Sets the state gauges. A follower knows no queue or workers: it reports none rather than
    /// stale numbers.
    pub fn state(&self, now: &StateNow) {
        self.leader.set(i64::from(now.leader));
        let (depth, oldest) = now.queue.unwrap_or((0, None));
        self.queue_depth.set(depth as i64);
        self.queue_oldest_age
            .set(oldest.map_or(0.0, |t| since(t).as_secs_f64()));
        match now.workers {
            Some((alive, lost)) => {
                for (state, n) in [("alive", alive), ("lost", lost)] {
                    self.workers
                        .get_or_create(&StateLabel { state })
                        .set(n as i64);
                }
            }
            None => self.workers.clear(),
        }
    }
}

/// The exposition text of every metric.
pub fn encode() -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &get().registry) {
        tracing::warn!(error = %e, "metrics: encoding failed");
    }
    text
}
