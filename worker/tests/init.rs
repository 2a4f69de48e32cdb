//! Every model starts as its PyTorch counterpart does: each parameter of each architecture is
//! compared with PyTorch's own initialisation of a parameter of the same shape and kind
//! (`tests/reference/init_stats.py`, run with the PyTorch in `.venv`): the mean, the standard
//! deviation and the largest magnitude must agree within what one random draw allows, and a
//! constant (a batch norm's weight of 1, a zero bias) must be exactly that constant.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use tch::{Device, Kind, nn};
use trainfleet_core::job::{Arch, ModelSpec};
use trainfleet_worker::model::{Geometry, build};

fn python() -> PathBuf {
    std::env::var_os("TRAINFLEET_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"))
}

/// PyTorch's statistics for every parameter of `params` under `family`'s scheme.
fn reference(family: &str, zero_init_residual: bool, params: &[(String, Vec<i64>)]) -> Vec<Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/init_stats.py");
    let request = json!({
        "family": family,
        "zero_init_residual": zero_init_residual,
        "params": params.iter().map(|(n, s)| json!({"name": n, "shape": s})).collect::<Vec<_>>(),
    });
    let mut child = Command::new(python())
        .args(["-W", "ignore"])
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the .venv Python (make setup installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "init_stats.py failed");
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

fn check(arch: Arch, family: &str, geometry: Geometry) {
    check_spec(
        ModelSpec {
            arch,
            ..Default::default()
        },
        family,
        geometry,
    )
}

fn check_spec(spec: ModelSpec, family: &str, geometry: Geometry) {
    let arch = spec.arch;
    let zero_init_residual = spec.zero_init_residual.unwrap_or(false);
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = build(&vs.root(), &spec, geometry).expect("builds");
    let mut variables: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let params: Vec<(String, Vec<i64>)> = variables
        .iter()
        .map(|(n, t)| (n.clone(), t.size()))
        .collect();
    let expected = reference(family, zero_init_residual, &params);
    let mut wrong = Vec::new();
    for ((name, tensor), reference) in variables.iter().zip(&expected) {
        assert_eq!(reference["name"], name.as_str());
        let values = tensor.to_kind(Kind::Double).flatten(0, -1);
        let n = values.numel() as f64;
        let mean = values.mean(Kind::Double).double_value(&[]);
        let std = if n > 1.0 {
            values.std(true).double_value(&[])
        } else {
            0.0
        };
        let max_abs = values.abs().max().double_value(&[]);
        let (r_mean, r_std, r_max) = (
            reference["mean"].as_f64().unwrap(),
            reference["std"].as_f64().unwrap(),
            reference["max_abs"].as_f64().unwrap(),
        );
        let ok = if r_std == 0.0 {
            // A constant: exactly it.
            std == 0.0 && (mean - r_mean).abs() < 1e-9
        } else {
            // One draw of n values: the mean within 5 standard errors, the spread within 5
            // relative standard errors (plus 3 %), no value far outside PyTorch's range.
            (mean - r_mean).abs() <= 5.0 * r_std / n.sqrt()
                && (std / r_std - 1.0).abs() <= 0.03 + 5.0 / (2.0 * n).sqrt()
                && max_abs <= 1.25 * r_max
        };
        if !ok {
            wrong.push(format!(
                "{name} {:?}: mean {mean:.5} std {std:.5} max {max_abs:.5}; PyTorch: mean \
                 {r_mean:.5} std {r_std:.5} max {r_max:.5}",
                tensor.size()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{arch:?} ({family}): {} of {} parameters start unlike PyTorch's:\n{}",
        wrong.len(),
        variables.len(),
        wrong.join("\n")
    );
}

const GREY: Geometry = Geometry {
    channels: 1,
    height: 28,
    width: 28,
    classes: 10,
};
const RGB: Geometry = Geometry {
    channels: 3,
    height: 32,
    width: 32,
    classes: 10,
};

#[test]
fn the_simple_and_configurable_cnns_start_as_plain_pytorch_layers() {
    check(Arch::SimpleCnn, "plain", GREY);
    check(Arch::Cnn, "plain", RGB);
}

#[test]
fn resnets_start_as_torchvision_resnets() {
    check(Arch::Resnet18, "resnet", RGB);
    check(Arch::Resnet34, "resnet", GREY);
    check(Arch::Resnet50, "resnet", RGB);
}

#[test]
fn zero_init_residual_starts_each_block_as_the_identity_as_torchvision_does() {
    for arch in [Arch::Resnet18, Arch::Resnet50] {
        let spec = ModelSpec {
            arch,
            zero_init_residual: Some(true),
            ..Default::default()
        };
        check_spec(spec, "resnet", RGB);
    }
}

#[test]
fn vggs_start_as_torchvision_vggs() {
    check(Arch::Vgg11, "vgg", RGB);
    check(Arch::Vgg16, "vgg", GREY);
}

#[test]
fn mobilenet_v2_starts_as_torchvision_mobilenet_v2() {
    check(Arch::MobilenetV2, "mobilenet_v2", RGB);
}
