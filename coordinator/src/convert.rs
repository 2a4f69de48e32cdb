//! The one place where wire types (trainfleet.v1, prost) meet coordinator domain types.
//! Everything that arrives is validated here, so services and the registry never see a
//! malformed value; every error names the offending field.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use trainfleet_core::Error as CoreError;
use trainfleet_core::device::{Device, DeviceKind};
use trainfleet_core::ids::validate_worker_id;
use trainfleet_proto::v1;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> v1::RegisterRequest {
        v1::RegisterRequest {
            worker_id: "w1".into(),
            host: "h".into(),
            devices: vec![v1::Device {
                kind: v1::DeviceKind::Cpu as i32,
                name: "cpu".into(),
                ..Default::default()
            }],
            slots: 1,
            version: "0.1.0".into(),
            ..Default::default()
        }
    }

    fn field_error(req: v1::RegisterRequest) -> String {
        registration(req, String::new()).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_request_converts() {
        let r = registration(request(), "peer".into()).unwrap();
        assert_eq!(r.devices[0].kind, DeviceKind::Cpu);
        assert_eq!(r.peer, "peer");
    }

    #[test]
    fn each_malformed_field_is_named() {
        let mut req = request();
        req.worker_id = "bad id".into();
        assert!(field_error(req).starts_with("`worker_id` has ' '"));

        let mut req = request();
        req.slots = 0;
        assert_eq!(
            field_error(req),
            "`slots` is 0; it must be between 1 and 1024"
        );

        let mut req = request();
        req.devices[0].kind = 9;
        assert!(field_error(req).starts_with("`devices[0].kind` is 9"));

        let mut req = request();
        req.devices[0].kind = v1::DeviceKind::Cuda as i32;
        assert!(field_error(req).starts_with("`devices` lists no DEVICE_KIND_CPU"));

        let mut req = request();
        req.host = "a\u{7}b".into();
        assert_eq!(field_error(req), "`host` contains control characters");
    }

    #[test]
    fn poll_wait_is_capped_and_negative_is_refused() {
        let cap = Duration::from_secs(30);
        assert_eq!(poll_wait(None, cap).unwrap(), cap);
        let d = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
        assert_eq!(poll_wait(d(5), cap).unwrap(), Duration::from_secs(5));
        assert_eq!(poll_wait(d(500), cap).unwrap(), cap);
        assert!(
            poll_wait(d(-1), cap)
                .unwrap_err()
                .to_string()
                .starts_with("`max_wait`")
        );
    }

    #[test]
    fn unknown_state_filter_is_refused() {
        assert_eq!(liveness_filter(0).unwrap(), None);
        assert!(
            liveness_filter(42)
                .unwrap_err()
                .to_string()
                .starts_with("`state` is 42")
        );
    }
}
