//! The bodies of the fuzz targets, shared by the cargo-fuzz crate (`bench/fuzz`, run by
//! `bench/fuzz.sh`) and the regression test that replays every kept input on stable
//! (`tests/fuzz_regressions.rs`). Each takes arbitrary bytes, runs a reader or parser that the
//! product runs on untrusted input, and must return (errors are fine) without panicking,
//! hanging or allocating without bound.

use std::path::Path;

use prost::Message;
use trainfleet_proto::v1;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name its corpus directory has.
pub const TARGETS: &[(&str, Target)] = &[
    ("idx", idx),
    ("cifar", cifar),
    ("image", image),
    ("job_yaml", job_yaml),
    ("manifest", manifest),
    ("wire", wire),
];

/// IDX files (MNIST and kin): plain, with the header checked against the length, and as a
/// stream of unknown length.
pub fn idx(data: &[u8]) {
    use trainfleet_worker::data::idx;
    let path = Path::new("fuzz.idx");
    let _ = idx::parse(path, data, Some(data.len() as u64));
    let _ = idx::parse(path, data, None);
}

/// CIFAR: the first byte picks CIFAR-10 or -100; the rest is read as one batch member and as a
/// whole `.tar.gz` archive.
pub fn cifar(data: &[u8]) {
    use trainfleet_worker::data::cifar::{Variant, read_archive_from, records};
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let variant = if pick % 2 == 0 {
        Variant::Cifar10
    } else {
        Variant::Cifar100
    };
    let path = Path::new("fuzz.tar.gz");
    let _ = records(path, "data_batch_1.bin", rest, variant);
    let _ = read_archive_from(path, rest, variant);
}

/// One file of an image folder: the scan's check, then the decode as training reads it (the
/// first byte picks gray or RGB, and a resize or none).
pub fn image(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let _ = trainfleet_core::manifest::image_problem(rest);
    let spec = trainfleet_core::job::DatasetSpec {
        grayscale: pick & 1 == 1,
        image_size: (pick & 2 == 2).then_some([8, 8]),
        ..Default::default()
    };
    let _ = trainfleet_worker::data::imagefolder::decode(&spec, Path::new("fuzz.png"), rest);
}

/// A job as YAML, parsed and validated as Submit and `trainfleet run` do.
pub fn job_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = trainfleet_core::job::JobSpec::from_yaml(text, "fuzz.yaml") {
        // What validated must survive the round trip the coordinator stores it by.
        let again = trainfleet_core::job::JobSpec::from_yaml(&spec.to_yaml(), "again.yaml");
        assert!(
            again.is_ok(),
            "{text:?} validated but its YAML did not: {again:?}"
        );
    }
}

/// A dataset manifest as a worker reads it from its cache or the artifact store.
pub fn manifest(data: &[u8]) {
    use trainfleet_core::manifest::{Manifest, merkle_root};
    let Ok(m) = serde_json::from_slice::<Manifest>(data) else {
        return;
    };
    let root = merkle_root(&m.files);
    let _ = m.check_root(&root);
    let _ = m.check_root(&m.root);
}

/// Wire messages a client or a worker sends, decoded and converted to domain types: a
/// structured job, a registration and a task report.
pub fn wire(data: &[u8]) {
    use trainfleet_coordinator::convert;
    if let Ok(request) = v1::SubmitJobRequest::decode(data)
        && let Some(v1::submit_job_request::Spec::Structured(spec)) = request.spec
    {
        let _ = convert::job_spec_from_wire(spec);
    }
    if let Ok(request) = v1::RegisterRequest::decode(data) {
        let _ = convert::registration(request, "127.0.0.1:1".to_owned());
    }
    if let Ok(request) = v1::CompleteTaskRequest::decode(data) {
        let _ = convert::report(request.outcome, request.permanent);
    }
}
