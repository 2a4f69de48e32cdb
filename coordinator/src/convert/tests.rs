//! Conversions between the wire and the domain, both ways.

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

#[test]
fn a_structured_spec_becomes_the_same_job_as_its_yaml_and_back() {
    let wire = v1::JobSpec {
        name: "digits".into(),
        dataset: "synth-digits".into(),
        model: Some(v1::ModelSpec {
            arch: "cnn".into(),
            options: [
                ("channels".to_owned(), "16,32".to_owned()),
                ("dropout".to_owned(), "0.25".to_owned()),
            ]
            .into_iter()
            .collect(),
            init_weights: String::new(),
        }),
        training: Some(v1::TrainingSpec {
            epochs: 2,
            optimizer: "sgd".into(),
            learning_rate: 0.05,
            device: "cpu".into(),
            ..Default::default()
        }),
        gate: Some(v1::GateSpec {
            min_delta: 0.01,
            ..Default::default()
        }),
        max_attempts: 5,
        ..Default::default()
    };
    let spec = job_spec_from_wire(wire).unwrap();
    let yaml = JobSpec::from_yaml(
        "name: digits\ndataset: {builtin: synth-digits}\n\
         model: {arch: cnn, channels: [16, 32], dropout: 0.25}\n\
         training: {epochs: 2, optimizer: sgd, learning_rate: 0.05, device: cpu}\n\
         gate: {min_delta: 0.01}\nmax_attempts: 5\n",
        "test",
    )
    .unwrap();
    assert_eq!(spec, yaml);
    let back = job_spec_to_wire(&spec);
    assert_eq!(back.dataset, "synth-digits");
    assert_eq!(back.model.as_ref().unwrap().options["channels"], "16,32");
    assert_eq!(back.training.as_ref().unwrap().optimizer, "sgd");
    assert_eq!(
        job_spec_from_wire(back).unwrap(),
        spec,
        "wire → spec → wire → spec"
    );
}

#[test]
fn a_structured_spec_names_the_bad_field() {
    let wire = v1::JobSpec {
        dataset: "synth-digits".into(),
        model: Some(v1::ModelSpec {
            arch: "simple_cnn".into(),
            ..Default::default()
        }),
        training: Some(v1::TrainingSpec {
            learning_rate: -1.0,
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = job_spec_from_wire(wire).unwrap_err().to_string();
    assert!(err.contains("structured.training.learning_rate"), "{err}");
}

#[test]
fn a_structured_spec_may_name_a_registered_dataset_and_its_version() {
    let model = Some(v1::ModelSpec {
        arch: "simple_cnn".into(),
        ..Default::default()
    });
    let wire = v1::JobSpec {
        dataset: "pets".into(),
        dataset_version: "3".into(),
        model: model.clone(),
        ..Default::default()
    };
    let spec = job_spec_from_wire(wire).unwrap();
    assert!(spec.names_registered_dataset());
    assert_eq!(spec.dataset.name.as_deref(), Some("pets"));
    assert_eq!(spec.dataset.version.as_deref(), Some("3"));
    let pinned_builtin = v1::JobSpec {
        dataset: "mnist".into(),
        dataset_version: "3".into(),
        model,
        ..Default::default()
    };
    let err = job_spec_from_wire(pinned_builtin).unwrap_err().to_string();
    assert!(err.contains("structured.dataset_version"), "{err}");
}
