//! Plain convolutional networks.

use tch::Tensor;
use tch::nn;
use trainfleet_core::job::ModelSpec;

use super::{Geometry, Model, init};
use crate::error::{Error, Result};

/// The seed project's CNN (PyTorch's classic MNIST example): conv 3×3 → 32, conv 3×3 → 64,
/// max-pool 2, dropout, linear → 128, dropout, linear → classes. The flatten size follows from
/// the input size, so it works on any channels and resolution ≥ 6×6.
pub fn simple(root: &nn::Path, spec: &ModelSpec, g: Geometry) -> Result<Model> {
    let (h, w) = ((g.height - 4) / 2, (g.width - 4) / 2);
    if h < 1 || w < 1 {
        return Err(Error::Unsupported(format!(
            "simple_cnn needs images of at least 6×6, got {}×{}",
            g.height, g.width
        )));
    }
    let dropout = spec.dropout.unwrap_or(0.25);
    let conv1 = init::torch_conv(root / "conv1", g.channels, 32, 3, Default::default());
    let conv2 = init::torch_conv(root / "conv2", 32, 64, 3, Default::default());
    let fc1 = init::torch_linear(root / "fc1", 64 * h * w, 128);
    let fc2 = init::torch_linear(root / "fc2", 128, g.classes);
    Ok(Box::new(nn::func_t(move |xs, train| {
        xs.apply(&conv1)
            .relu()
            .apply(&conv2)
            .relu()
            .max_pool2d_default(2)
            .dropout(dropout, train)
            .flatten(1, -1)
            .apply(&fc1)
            .relu()
            .dropout(2.0 * dropout, train)
            .apply(&fc2)
    })))
}

/// A configurable CNN: for each width in `channels`, a block of conv (kernel `kernel_size`,
/// same padding) → [batch norm] → ReLU → max-pool 2; then global average pooling, `hidden`
/// linear layers with ReLU and dropout, and the classifier.
pub fn configurable(root: &nn::Path, spec: &ModelSpec, g: Geometry) -> Result<Model> {
    let channels = spec.channels.clone().unwrap_or_else(|| vec![32, 64]);
    let kernel = spec.kernel_size.unwrap_or(3) as i64;
    let batch_norm = spec.batch_norm.unwrap_or(true);
    let dropout = spec.dropout.unwrap_or(0.0);
    let hidden = spec.hidden.clone().unwrap_or_else(|| vec![128]);
    let mut smallest = g.height.min(g.width);
    let mut features = nn::seq_t();
    let mut c_in = g.channels;
    for (i, &c_out) in channels.iter().enumerate() {
        if smallest < 2 {
            return Err(Error::Unsupported(format!(
                "cnn with {} blocks halves {}×{} images below 1 pixel; use fewer channels entries",
                channels.len(),
                g.height,
                g.width
            )));
        }
        let block = root / "features" / i;
        let conv_config = nn::ConvConfig {
            padding: kernel / 2,
            bias: !batch_norm,
            ..Default::default()
        };
        features = features.add(init::torch_conv(
            &block / "conv",
            c_in,
            c_out as i64,
            kernel,
            conv_config,
        ));
        if batch_norm {
            features = features.add(init::batch_norm2d(&block / "bn", c_out as i64));
        }
        features = features.add_fn(|x| x.relu().max_pool2d_default(2));
        c_in = c_out as i64;
        smallest /= 2;
    }
    let mut head = nn::seq_t();
    let mut width = c_in;
    for (i, &h) in hidden.iter().enumerate() {
        head = head
            .add(init::torch_linear(root / "classifier" / i, width, h as i64))
            .add_fn(|x| x.relu())
            .add_fn_t(move |x, train| x.dropout(dropout, train));
        width = h as i64;
    }
    head = head.add(init::torch_linear(
        root / "classifier" / hidden.len(),
        width,
        g.classes,
    ));
    Ok(Box::new(nn::func_t(move |xs, train| {
        let features: Tensor = xs.apply_t(&features, train);
        features
            .adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
            .apply_t(&head, train)
    })))
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};
    use trainfleet_core::job::Arch;

    use super::*;

    fn check(spec: ModelSpec, g: Geometry) {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = super::super::build(&vs.root(), &spec, g).unwrap();
        let x = Tensor::randn(
            [2, g.channels, g.height, g.width],
            (Kind::Float, Device::Cpu),
        );
        assert_eq!(model.forward_t(&x, true).size(), vec![2, g.classes]);
    }

    #[test]
    fn builds_for_grey_and_rgb_inputs_of_any_size() {
        let grey = Geometry {
            channels: 1,
            height: 28,
            width: 28,
            classes: 10,
        };
        let rgb = Geometry {
            channels: 3,
            height: 32,
            width: 48,
            classes: 100,
        };
        for g in [grey, rgb] {
            check(
                ModelSpec {
                    arch: Arch::SimpleCnn,
                    ..Default::default()
                },
                g,
            );
            let cnn = ModelSpec {
                arch: Arch::Cnn,
                channels: Some(vec![8, 16, 32]),
                hidden: Some(vec![64, 32]),
                dropout: Some(0.1),
                ..Default::default()
            };
            check(cnn, g);
        }
    }

    #[test]
    fn parameter_names_are_stable_and_readable() {
        let vs = nn::VarStore::new(Device::Cpu);
        let g = Geometry {
            channels: 1,
            height: 28,
            width: 28,
            classes: 10,
        };
        super::super::build(&vs.root(), &ModelSpec::default(), g).unwrap();
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "conv1.bias",
                "conv1.weight",
                "conv2.bias",
                "conv2.weight",
                "fc1.bias",
                "fc1.weight",
                "fc2.bias",
                "fc2.weight"
            ]
        );
        assert_eq!(vs.variables()["fc1.weight"].size(), vec![128, 64 * 12 * 12]);
    }

    #[test]
    fn too_small_inputs_are_refused_with_the_reason() {
        let vs = nn::VarStore::new(Device::Cpu);
        let g = Geometry {
            channels: 1,
            height: 4,
            width: 4,
            classes: 10,
        };
        let err = super::super::build(&vs.root(), &ModelSpec::default(), g)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("at least 6×6"), "{err}");
    }
}
