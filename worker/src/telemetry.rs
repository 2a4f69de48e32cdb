//! The worker's Prometheus metrics ([`get`]), served on a plain-HTTP port of its own
//! (`metrics_listen`): training throughput, epoch times, tasks by kind and outcome, whether it
//! is connected, and the memory its devices use. No job or task id is a label.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A finished task's kind and outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// `train`, `eval`, `scan` or `sleep`.
    pub kind: &'static str,
    /// `succeeded`, `failed` or `cancelled`.
    pub outcome: &'static str,
}

/// A device, as torch names it (`cpu`, `cuda:0`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabel {
    /// The device.
    pub device: String,
}

/// Every metric of a worker process.
pub struct Telemetry {
    registry: Registry,
    /// Training throughput of the last epoch.
    pub images_per_second: Gauge<f64, AtomicU64>,
    /// Time of each training epoch.
    pub epoch_seconds: Histogram,
    /// Tasks finished, by kind and outcome.
    pub tasks: Family<TaskLabels, Counter>,
    /// Tasks running now.
    pub running: Gauge,
    /// 1 while a session with the coordinator is open.
    pub connected: Gauge,
    /// Memory in use per device: the process's resident memory for the CPU.
    pub memory: Family<DeviceLabel, Gauge>,
}

impl Telemetry {
    fn new() -> Self {
        let t = Telemetry {
            registry: Registry::default(),
            images_per_second: Gauge::default(),
            epoch_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 18)),
            tasks: Family::default(),
            running: Gauge::default(),
            connected: Gauge::default(),
            memory: Family::default(),
        };
        let mut registry = Registry::with_prefix("trainfleet_worker");
        let r = &mut registry;
        r.register(
            "images_per_second",
            "Training throughput of the last finished epoch",
            t.images_per_second.clone(),
        );
        r.register(
            "epoch_seconds",
            "Time of each training epoch",
            t.epoch_seconds.clone(),
        );
        r.register(
            "tasks",
            "Tasks finished, by kind and outcome",
            t.tasks.clone(),
        );
        r.register("tasks_running", "Tasks running now", t.running.clone());
        r.register(
            "connected",
            "1 while a session with the coordinator is open",
            t.connected.clone(),
        );
        r.register(
            "device_memory_bytes",
            "Memory in use per device (the CPU: this process's resident memory)",
            t.memory.clone(),
        );
        Telemetry { registry, ..t }
    }

    /// Records a finished task.
    pub fn task_done(&self, kind: &'static str, outcome: &'static str) {
        self.tasks
            .get_or_create(&TaskLabels { kind, outcome })
            .inc();
    }
}

/// The process's metrics.
pub fn get() -> &'static Telemetry {
    static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();
    TELEMETRY.get_or_init(Telemetry::new)
}

/// Resident memory of this process, from /proc (Linux).
fn resident_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page as i64)
}

/// The exposition text, with memory read now.
pub fn render() -> String {
    let t = get();
    if let Some(rss) = resident_bytes() {
        t.memory
            .get_or_create(&DeviceLabel {
                device: "cpu".to_owned(),
            })
            .set(rss);
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &t.registry) {
        tracing::warn!(error = %e, "metrics: encoding failed");
    }
    text
}
