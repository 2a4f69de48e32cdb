//! The one place where wire types (trainfleet.v1, prost) meet coordinator domain types.
//! Everything that arrives is validated here, so services and the registry never see a
//! malformed value; every error names the offending field.

mod dispatch;
mod events;
mod records;
pub mod sweeps;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use trainfleet_core::Error as CoreError;
use trainfleet_core::device::{Device, DeviceKind};
use trainfleet_core::ids::validate_worker_id;
use trainfleet_core::job::JobSpec;
use trainfleet_proto::v1;

pub use dispatch::progress_from_wire;

use crate::registry::{Liveness, Registration, WorkerSnapshot};

type CoreResult<T> = Result<T, CoreError>;

/// Most devices one worker may report: more is a bug or an attack, not a machine.
const MAX_DEVICES: usize = 64;
/// Most slots one worker may claim.
const MAX_SLOTS: u32 = 1024;
/// Longest free-text field (host, version, label) accepted.
const MAX_TEXT: usize = 256;

/// Validates a `RegisterRequest` into a [`Registration`].
pub fn registration(req: v1::RegisterRequest, peer: String) -> CoreResult<Registration> {
    validate_worker_id("worker_id", &req.worker_id)?;
    text("host", &req.host)?;
    text("version", &req.version)?;
    text("libtorch_version", &req.libtorch_version)?;
    if req.slots == 0 || req.slots > MAX_SLOTS {
        return Err(CoreError::invalid_field(
            "slots",
            format!("is {}; it must be between 1 and {MAX_SLOTS}", req.slots),
        ));
    }
    if req.devices.len() > MAX_DEVICES {
        return Err(CoreError::invalid_field(
            "devices",
            format!(
                "has {} entries; at most {MAX_DEVICES} are accepted",
                req.devices.len()
            ),
        ));
    }
    let devices = req
        .devices
        .into_iter()
        .enumerate()
        .map(|(i, d)| device(i, d))
        .collect::<CoreResult<Vec<_>>>()?;
    if !devices.iter().any(|d| d.kind == DeviceKind::Cpu) {
        return Err(CoreError::invalid_field(
            "devices",
            "lists no DEVICE_KIND_CPU device; every worker has a CPU",
        ));
    }
    for (key, value) in &req.labels {
        text(&format!("labels[{key:?}]"), key)?;
        text(&format!("labels[{key:?}]"), value)?;
    }
    Ok(Registration {
        worker_id: req.worker_id,
        host: req.host,
        devices,
        slots: req.slots,
        version: req.version,
        libtorch_version: req.libtorch_version,
        labels: req.labels.into_iter().collect::<BTreeMap<_, _>>(),
        peer,
    })
}

fn device(i: usize, d: v1::Device) -> CoreResult<Device> {
    let field = |name: &str| format!("devices[{i}].{name}");
    let kind = match v1::DeviceKind::try_from(d.kind) {
        Ok(v1::DeviceKind::Cpu) => DeviceKind::Cpu,
        Ok(v1::DeviceKind::Cuda) => DeviceKind::Cuda,
        Ok(v1::DeviceKind::Unspecified) | Err(_) => {
            return Err(CoreError::invalid_field(
                field("kind"),
                format!("is {}; use DEVICE_KIND_CPU or DEVICE_KIND_CUDA", d.kind),
            ));
        }
    };
    text(&field("name"), &d.name)?;
    Ok(Device {
        kind,
        index: d.index,
        name: d.name,
        memory_bytes: d.memory_bytes,
        cores: d.cores,
    })
}

fn text(field: &str, value: &str) -> CoreResult<()> {
    if value.len() > MAX_TEXT {
        return Err(CoreError::invalid_field(
            field,
            format!("is {} bytes long; the limit is {MAX_TEXT}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(CoreError::invalid_field(
            field,
            "contains control characters",
        ));
    }
    Ok(())
}

/// The `state` filter of `ListWorkers`: `None` lists all.
pub fn liveness_filter(state: i32) -> CoreResult<Option<Liveness>> {
    match v1::WorkerState::try_from(state) {
        Ok(v1::WorkerState::Unspecified) => Ok(None),
        Ok(v1::WorkerState::Alive) => Ok(Some(Liveness::Alive)),
        Ok(v1::WorkerState::Lost) => Ok(Some(Liveness::Lost)),
        Err(_) => Err(CoreError::invalid_field(
            "state",
            format!("is {state}; use WORKER_STATE_ALIVE, WORKER_STATE_LOST or leave it unset"),
        )),
    }
}

/// The `max_wait` of `PollTask`, capped at `cap`; unset or zero means the cap.
pub fn poll_wait(max_wait: Option<prost_types::Duration>, cap: Duration) -> CoreResult<Duration> {
    let Some(d) = max_wait else { return Ok(cap) };
    let wait = Duration::try_from(d).map_err(|_| {
        CoreError::invalid_field("max_wait", "must be a non-negative duration (e.g. \"20s\")")
    })?;
    Ok(if wait.is_zero() { cap } else { wait.min(cap) })
}

/// The free slots and wait of a CompleteTask's `poll_next`; its wait is capped like PollTask's.
pub fn poll_next(next: v1::PollNext, cap: Duration) -> CoreResult<(u32, Duration)> {
    if next.free_slots == 0 {
        return Err(CoreError::invalid_field(
            "poll_next.free_slots",
            "must be at least 1 (leave poll_next unset to report without polling)",
        ));
    }
    let wait = poll_wait(next.max_wait, cap).map_err(|_| {
        CoreError::invalid_field(
            "poll_next.max_wait",
            "must be a non-negative duration (e.g. \"20s\")",
        )
    })?;
    Ok((next.free_slots, wait))
}

/// A registry snapshot as the wire `WorkerInfo`.
pub fn worker_info(w: WorkerSnapshot) -> v1::WorkerInfo {
    let r = w.registration;
    v1::WorkerInfo {
        worker_id: r.worker_id,
        host: r.host,
        state: match w.liveness {
            Liveness::Alive => v1::WorkerState::Alive,
            Liveness::Lost => v1::WorkerState::Lost,
        } as i32,
        devices: r.devices.into_iter().map(device_to_wire).collect(),
        slots: r.slots,
        free_slots: w.free_slots,
        version: r.version,
        libtorch_version: r.libtorch_version,
        registered_at: Some(timestamp(w.registered_at)),
        last_heartbeat_at: Some(timestamp(w.last_heartbeat_at)),
        heartbeat_deadline: Some(timestamp(w.deadline_at)),
        running_tasks: w.running_tasks,
        labels: r.labels.into_iter().collect(),
        peer: r.peer,
    }
}

fn device_to_wire(d: Device) -> v1::Device {
    v1::Device {
        kind: match d.kind {
            DeviceKind::Cpu => v1::DeviceKind::Cpu,
            DeviceKind::Cuda => v1::DeviceKind::Cuda,
        } as i32,
        index: d.index,
        name: d.name,
        memory_bytes: d.memory_bytes,
        cores: d.cores,
    }
}

/// Wall-clock time as a protobuf `Timestamp`.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// A std `Duration` as a protobuf `Duration`.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

/// A core job spec as the wire `JobSpec`: enum values by their YAML names, model options as
/// strings (lists comma-separated).
pub fn job_spec_to_wire(spec: &JobSpec) -> v1::JobSpec {
    let yaml = serde_yaml::to_value(spec).expect("a job spec always serialises");
    let field = |section: &str, name: &str| -> Option<serde_yaml::Value> {
        yaml.get(section)?.get(name).cloned()
    };
    let text = |section: &str, name: &str| -> String {
        field(section, name)
            .map(|v| scalar_text(&v))
            .unwrap_or_default()
    };
    let mut options = std::collections::HashMap::new();
    if let Some(serde_yaml::Value::Mapping(model)) = yaml.get("model") {
        for (key, value) in model {
            let Some(key) = key.as_str() else { continue };
            if matches!(key, "arch" | "init_weights") || value.is_null() {
                continue;
            }
            options.insert(key.to_owned(), scalar_text(value));
        }
    }
    let t = &spec.training;
    v1::JobSpec {
        name: spec.name.clone(),
        dataset: spec.dataset_key(),
        dataset_version: spec.dataset.version.clone().unwrap_or_default(),
        model: Some(v1::ModelSpec {
            arch: text("model", "arch"),
            options,
            init_weights: spec
                .model
                .init_weights
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        }),
        training: Some(v1::TrainingSpec {
            epochs: t.epochs,
            batch_size: t.batch_size,
            optimizer: text("training", "optimizer"),
            learning_rate: t.learning_rate,
            weight_decay: t.weight_decay,
            schedule: text("training", "schedule"),
            warmup_epochs: t.warmup_epochs,
            seed: t.seed,
            device: t.device.clone(),
        }),
        gate: Some(v1::GateSpec {
            metric: spec.gate.metric.name().to_owned(),
            min_delta: spec.gate.min_delta,
            min_accuracy: spec.gate.min_accuracy,
            mcnemar_alpha: spec.gate.mcnemar_alpha,
            max_class_drop: spec.gate.max_class_drop,
        }),
        resources: Some(v1::ResourceRequest {
            gpu: spec.needs_gpu(),
            min_memory_bytes: spec.resources.min_memory_mb << 20,
            slots: spec.resources.slots,
        }),
        max_attempts: spec.max_attempts,
        labels: spec.labels.clone().into_iter().collect(),
        tracking: (!spec.tracking.is_empty()).then(|| v1::TrackingSpec {
            mlflow_uri: spec.tracking.mlflow_uri.clone().unwrap_or_default(),
            experiment: spec.tracking.experiment.clone().unwrap_or_default(),
        }),
    }
}

fn scalar_text(value: &serde_yaml::Value) -> String {
    match value {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Sequence(items) => {
            items.iter().map(scalar_text).collect::<Vec<_>>().join(",")
        }
        serde_yaml::Value::Null => String::new(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// A wire `JobSpec` (the structured form of `Submit`) as a validated core spec. Errors name the
/// field as `structured.<path>`.
pub fn job_spec_from_wire(spec: v1::JobSpec) -> CoreResult<JobSpec> {
    use serde_yaml::{Mapping, Value};
    let bad = |field: &str, message: String| {
        CoreError::invalid_field(format!("structured.{field}"), message)
    };
    let mut root = Mapping::new();
    let put = |map: &mut Mapping, key: &str, value: Value| {
        map.insert(Value::from(key), value);
    };
    if !spec.name.is_empty() {
        put(&mut root, "name", Value::from(spec.name.clone()));
    }
    let mut dataset = Mapping::new();
    let builtin = trainfleet_core::job::Builtin::from_name(&spec.dataset).is_some();
    match spec.dataset.split_once(':') {
        _ if !spec.dataset_version.is_empty() && (builtin || spec.dataset.contains(':')) => {
            return Err(bad(
                "dataset_version",
                format!(
                    "pins a version of a registered dataset; {:?} is a builtin or a path",
                    spec.dataset
                ),
            ));
        }
        Some((format, path)) if !path.is_empty() => {
            put(&mut dataset, "format", Value::from(format));
            put(&mut dataset, "path", Value::from(path));
        }
        _ if builtin => put(&mut dataset, "builtin", Value::from(spec.dataset.clone())),
        _ if !spec.dataset.is_empty() => {
            put(&mut dataset, "name", Value::from(spec.dataset.clone()));
            if !spec.dataset_version.is_empty() {
                put(
                    &mut dataset,
                    "version",
                    Value::from(spec.dataset_version.clone()),
                );
            }
        }
        _ => {
            return Err(bad(
                "dataset",
                "is empty; name a builtin (mnist, fashion-mnist, kmnist, cifar10, cifar100,                  synth-digits) or `imagefolder:/path` / `idx:/path`"
                    .into(),
            ));
        }
    }
    put(&mut root, "dataset", Value::Mapping(dataset));
    let model = spec
        .model
        .ok_or_else(|| bad("model", "is required (at least `arch`)".into()))?;
    let mut m = Mapping::new();
    put(&mut m, "arch", Value::from(model.arch));
    for (key, raw) in model.options {
        let value = if raw.contains(',') {
            Value::Sequence(
                raw.split(',')
                    .map(|item| parse_scalar(item.trim()))
                    .collect(),
            )
        } else {
            parse_scalar(&raw)
        };
        put(&mut m, &key, value);
    }
    if !model.init_weights.is_empty() {
        put(&mut m, "init_weights", Value::from(model.init_weights));
    }
    put(&mut root, "model", Value::Mapping(m));
    if let Some(t) = spec.training {
        let mut training = Mapping::new();
        let nonzero = |v: u64| (v != 0).then(|| Value::from(v));
        for (key, value) in [
            ("epochs", nonzero(t.epochs.into())),
            ("batch_size", nonzero(t.batch_size.into())),
            ("warmup_epochs", nonzero(t.warmup_epochs.into())),
            ("seed", nonzero(t.seed)),
            (
                "learning_rate",
                (t.learning_rate != 0.0).then(|| Value::from(t.learning_rate)),
            ),
            (
                "weight_decay",
                (t.weight_decay != 0.0).then(|| Value::from(t.weight_decay)),
            ),
            (
                "optimizer",
                (!t.optimizer.is_empty()).then(|| Value::from(t.optimizer)),
            ),
            (
                "schedule",
                (!t.schedule.is_empty()).then(|| Value::from(t.schedule)),
            ),
            (
                "device",
                (!t.device.is_empty()).then(|| Value::from(t.device)),
            ),
        ] {
            if let Some(value) = value {
                put(&mut training, key, value);
            }
        }
        put(&mut root, "training", Value::Mapping(training));
    }
    if let Some(g) = spec.gate {
        let mut gate = Mapping::new();
        if !g.metric.is_empty() {
            put(&mut gate, "metric", Value::from(g.metric));
        }
        put(&mut gate, "min_delta", Value::from(g.min_delta));
        put(&mut gate, "min_accuracy", Value::from(g.min_accuracy));
        put(&mut gate, "mcnemar_alpha", Value::from(g.mcnemar_alpha));
        put(&mut gate, "max_class_drop", Value::from(g.max_class_drop));
        put(&mut root, "gate", Value::Mapping(gate));
    }
    if let Some(r) = spec.resources {
        let mut resources = Mapping::new();
        put(&mut resources, "gpu", Value::from(r.gpu));
        put(
            &mut resources,
            "min_memory_mb",
            Value::from(r.min_memory_bytes.div_ceil(1 << 20)),
        );
        put(&mut resources, "slots", Value::from(r.slots.max(1)));
        put(&mut root, "resources", Value::Mapping(resources));
    }
    if spec.max_attempts != 0 {
        put(&mut root, "max_attempts", Value::from(spec.max_attempts));
    }
    if let Some(t) = spec.tracking {
        let mut tracking = Mapping::new();
        if !t.mlflow_uri.is_empty() {
            put(&mut tracking, "mlflow_uri", Value::from(t.mlflow_uri));
        }
        if !t.experiment.is_empty() {
            put(&mut tracking, "experiment", Value::from(t.experiment));
        }
        put(&mut root, "tracking", Value::Mapping(tracking));
    }
    if !spec.labels.is_empty() {
        let labels: Mapping = spec
            .labels
            .into_iter()
            .map(|(k, v)| (Value::from(k), Value::from(v)))
            .collect();
        put(&mut root, "labels", Value::Mapping(labels));
    }
    let parsed: JobSpec = serde_yaml::from_value(Value::Mapping(root))
        .map_err(|e| CoreError::invalid_field("structured", e.to_string()))?;
    parsed.validate().map_err(|e| match e {
        CoreError::InvalidField { field, message } => bad(&field, message),
        other => other,
    })?;
    Ok(parsed)
}

fn parse_scalar(raw: &str) -> serde_yaml::Value {
    serde_yaml::from_str(raw).unwrap_or_else(|_| serde_yaml::Value::from(raw))
}

/// The outcome of a `CompleteTask` as a [`Report`](crate::requests::Report).
pub fn report(
    outcome: Option<v1::complete_task_request::Outcome>,
    permanent: bool,
) -> CoreResult<crate::requests::Report> {
    use crate::requests::Report;
    use v1::complete_task_request::Outcome;
    match outcome {
        None => Err(CoreError::invalid_field(
            "outcome",
            "is missing: set one of success, failure, cancelled, paused",
        )),
        Some(Outcome::Success(result)) => {
            if result.detail_json.len() > 1 << 20 {
                return Err(CoreError::invalid_field(
                    "success.detail_json",
                    "is larger than 1 MiB",
                ));
            }
            if let Some((name, value)) = result.metrics.iter().find(|(_, v)| !v.is_finite()) {
                return Err(CoreError::invalid_field(
                    format!("success.metrics[{name:?}]"),
                    format!("is {value}; metrics must be finite"),
                ));
            }
            Ok(Report::Success {
                metrics: result.metrics.into_iter().collect(),
                artifacts: result.artifacts.into_iter().collect(),
                detail_json: result.detail_json,
            })
        }
        Some(Outcome::Failure(reason)) => Ok(Report::Failure {
            reason: reason.chars().take(4096).collect(),
            permanent,
        }),
        Some(Outcome::Cancelled(_)) => Ok(Report::Cancelled),
        Some(Outcome::Paused(p)) => {
            if p.epoch == 0 || p.checkpoint.is_empty() {
                return Err(CoreError::invalid_field(
                    "paused",
                    "needs the epoch it stopped after and that epoch's checkpoint",
                ));
            }
            if p.epochs.len() > 100_000 {
                return Err(CoreError::invalid_field(
                    "paused.epochs",
                    "lists more epochs than a job may have",
                ));
            }
            Ok(Report::Paused {
                epoch: p.epoch,
                checkpoint: p.checkpoint,
                epochs: p
                    .epochs
                    .into_iter()
                    .map(|e| {
                        (
                            e.epoch,
                            e.values
                                .into_iter()
                                .filter(|(_, v)| v.is_finite())
                                .collect(),
                        )
                    })
                    .collect(),
            })
        }
    }
}
