//! The classic architectures, adapted to input channels, resolution and classes. Parameter names
//! follow torchvision's (`layer1.0.conv1.weight`, `features.3.weight`, ...), so weights are easy
//! to compare and port.
//!
//! Small images (shorter side < 64, e.g. CIFAR and the MNIST family) get the usual adaptations:
//! ResNet uses a 3×3 stride-1 stem without max-pool; MobileNet-V2 keeps stride 1 in its stem and
//! first downsampling stage; VGG skips a pool that would shrink the map below one pixel and uses
//! a compact classifier on globally pooled features.

use tch::Tensor;
use tch::nn::{self, ModuleT};

use super::{Geometry, init};

fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, groups: i64) -> nn::Conv2D {
    let config = nn::ConvConfig {
        stride,
        padding: k / 2,
        bias: false,
        groups,
        ..Default::default()
    };
    init::kaiming_conv(p, c_in, c_out, k, config)
}

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    init::batch_norm2d(p, c)
}

/// The last batch norm of a residual branch: weight 0 under `zero_init_residual`.
fn last_bn(p: nn::Path, c: i64, zero_init_residual: bool) -> nn::BatchNorm {
    if zero_init_residual {
        init::zero_batch_norm2d(p, c)
    } else {
        init::batch_norm2d(p, c)
    }
}

fn small(g: Geometry) -> bool {
    g.height.min(g.width) < 64
}

/// ResNet depth variants.
#[derive(Debug, Clone, Copy)]
pub enum ResNet {
    /// Basic blocks [2, 2, 2, 2].
    R18,
    /// Basic blocks [3, 4, 6, 3].
    R34,
    /// Bottleneck blocks [3, 4, 6, 3].
    R50,
}

/// The projection shortcut of a residual block, when its shape changes (else identity).
fn shortcut(p: &nn::Path, c_in: i64, c_out: i64, stride: i64) -> Option<nn::SequentialT> {
    (stride != 1 || c_in != c_out).then(|| {
        nn::seq_t()
            .add(conv(p / "downsample" / 0, c_in, c_out, 1, stride, 1))
            .add(bn(p / "downsample" / 1, c_out))
    })
}

/// `relu(ys + shortcut(xs))`: the end of every residual block.
fn residual(ys: &Tensor, xs: &Tensor, down: Option<&nn::SequentialT>, train: bool) -> Tensor {
    let shortcut = down.map_or_else(|| xs.shallow_clone(), |d| xs.apply_t(d, train));
    (ys + shortcut).relu()
}

fn basic_block(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    stride: i64,
    zero: bool,
) -> impl ModuleT + use<> {
    let conv1 = conv(&p / "conv1", c_in, c_out, 3, stride, 1);
    let bn1 = bn(&p / "bn1", c_out);
    let conv2 = conv(&p / "conv2", c_out, c_out, 3, 1, 1);
    let bn2 = last_bn(&p / "bn2", c_out, zero);
    let down = shortcut(&p, c_in, c_out, stride);
    nn::func_t(move |xs, train| {
        let ys = xs
            .apply(&conv1)
            .apply_t(&bn1, train)
            .relu()
            .apply(&conv2)
            .apply_t(&bn2, train);
        residual(&ys, xs, down.as_ref(), train)
    })
}

fn bottleneck(p: nn::Path, c_in: i64, width: i64, stride: i64, zero: bool) -> impl ModuleT + use<> {
    let c_out = width * 4;
    let conv1 = conv(&p / "conv1", c_in, width, 1, 1, 1);
    let bn1 = bn(&p / "bn1", width);
    let conv2 = conv(&p / "conv2", width, width, 3, stride, 1);
    let bn2 = bn(&p / "bn2", width);
    let conv3 = conv(&p / "conv3", width, c_out, 1, 1, 1);
    let bn3 = last_bn(&p / "bn3", c_out, zero);
    let down = shortcut(&p, c_in, c_out, stride);
    nn::func_t(move |xs, train| {
        let ys = xs
            .apply(&conv1)
            .apply_t(&bn1, train)
            .relu()
            .apply(&conv2)
            .apply_t(&bn2, train)
            .relu()
            .apply(&conv3)
            .apply_t(&bn3, train);
        residual(&ys, xs, down.as_ref(), train)
    })
}

/// A ResNet; `zero_init_residual` as torchvision's option of that name.
pub fn resnet(
    root: &nn::Path,
    depth: ResNet,
    g: Geometry,
    zero_init_residual: bool,
) -> nn::FuncT<'static> {
    let (blocks, bottlenecked) = match depth {
        ResNet::R18 => ([2, 2, 2, 2], false),
        ResNet::R34 => ([3, 4, 6, 3], false),
        ResNet::R50 => ([3, 4, 6, 3], true),
    };
    let small = small(g);
    let stem = if small {
        conv(root / "conv1", g.channels, 64, 3, 1, 1)
    } else {
        conv(root / "conv1", g.channels, 64, 7, 2, 1)
    };
    let stem_bn = bn(root / "bn1", 64);
    let mut layers = nn::seq_t();
    let mut c_in = 64;
    for (stage, (&n, width)) in blocks.iter().zip([64, 128, 256, 512]).enumerate() {
        for b in 0..n {
            let stride = if b == 0 && stage > 0 { 2 } else { 1 };
            let p = root / format!("layer{}", stage + 1) / b;
            if bottlenecked {
                layers = layers.add(bottleneck(p, c_in, width, stride, zero_init_residual));
                c_in = width * 4;
            } else {
                layers = layers.add(basic_block(p, c_in, width, stride, zero_init_residual));
                c_in = width;
            }
        }
    }
    // torchvision leaves ResNet's fc at nn.Linear's default.
    let fc = init::torch_linear(root / "fc", c_in, g.classes);
    nn::func_t(move |xs, train| {
        let mut ys = xs.apply(&stem).apply_t(&stem_bn, train).relu();
        if !small {
            ys = ys.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        ys.apply_t(&layers, train)
            .adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
            .apply(&fc)
    })
}

/// VGG variants (with batch norm).
#[derive(Debug, Clone, Copy)]
pub enum Vgg {
    /// Configuration A.
    V11,
    /// Configuration D.
    V16,
}

/// A VGG with batch norm.
pub fn vgg(root: &nn::Path, variant: Vgg, g: Geometry, dropout: f64) -> nn::FuncT<'static> {
    const M: i64 = 0;
    let plan: &[i64] = match variant {
        Vgg::V11 => &[64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
        Vgg::V16 => &[
            64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M,
        ],
    };
    let features_path = root / "features";
    let mut features = nn::seq_t();
    let (mut c_in, mut side, mut index) = (g.channels, g.height.min(g.width), 0);
    for &c in plan {
        if c == M {
            if side >= 2 {
                features = features.add_fn(|x| x.max_pool2d_default(2));
                side /= 2;
            }
            index += 1;
        } else {
            let config = nn::ConvConfig {
                padding: 1,
                ..Default::default()
            };
            features = features
                .add(init::kaiming_conv(
                    &features_path / index,
                    c_in,
                    c,
                    3,
                    config,
                ))
                .add(bn(&features_path / (index + 1), c))
                .add_fn(|x| x.relu());
            index += 3;
            c_in = c;
        }
    }
    let classifier = root / "classifier";
    let fc1 = init::small_normal_linear(&classifier / 0, 512, 512);
    let fc2 = init::small_normal_linear(&classifier / 3, 512, g.classes);
    nn::func_t(move |xs, train| {
        xs.apply_t(&features, train)
            .adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
            .apply(&fc1)
            .relu()
            .dropout(dropout, train)
            .apply(&fc2)
    })
}

fn divisible(v: f64, by: i64) -> i64 {
    let rounded = ((v + by as f64 / 2.0) as i64 / by * by).max(by);
    if (rounded as f64) < 0.9 * v {
        rounded + by
    } else {
        rounded
    }
}

fn conv_bn_relu6(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    groups: i64,
) -> nn::SequentialT {
    nn::seq_t()
        .add(conv(&p / 0, c_in, c_out, k, stride, groups))
        .add(bn(&p / 1, c_out))
        .add_fn(|x| x.clamp(0.0, 6.0))
}

fn inverted_residual(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    stride: i64,
    expand: i64,
) -> impl ModuleT + use<> {
    let hidden = c_in * expand;
    let mut body = nn::seq_t();
    let mut i = 0;
    if expand != 1 {
        body = body.add(conv_bn_relu6(&p / "conv" / i, c_in, hidden, 1, 1, 1));
        i += 1;
    }
    body = body
        .add(conv_bn_relu6(
            &p / "conv" / i,
            hidden,
            hidden,
            3,
            stride,
            hidden,
        ))
        .add(conv(&p / "conv" / (i + 1), hidden, c_out, 1, 1, 1))
        .add(bn(&p / "conv" / (i + 2), c_out));
    let residual = stride == 1 && c_in == c_out;
    nn::func_t(move |xs, train| {
        let ys = xs.apply_t(&body, train);
        if residual { xs + ys } else { ys }
    })
}

/// MobileNet-V2 with width multiplier `width`.
pub fn mobilenet_v2(root: &nn::Path, g: Geometry, width: f64) -> nn::FuncT<'static> {
    let small = small(g);
    let settings: [(i64, i64, i64, i64); 7] = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];
    let features_path = root / "features";
    let mut c_in = divisible(32.0 * width, 8);
    let last = divisible(1280.0 * width.max(1.0), 8);
    let mut features = nn::seq_t().add(conv_bn_relu6(
        &features_path / 0,
        g.channels,
        c_in,
        3,
        if small { 1 } else { 2 },
        1,
    ));
    let mut index = 1;
    for (stage, &(t, c, n, s)) in settings.iter().enumerate() {
        let c_out = divisible(c as f64 * width, 8);
        for b in 0..n {
            let stride = if b > 0 || (small && stage == 1) { 1 } else { s };
            features = features.add(inverted_residual(
                &features_path / index,
                c_in,
                c_out,
                stride,
                t,
            ));
            c_in = c_out;
            index += 1;
        }
    }
    features = features.add(conv_bn_relu6(&features_path / index, c_in, last, 1, 1, 1));
    let fc = init::small_normal_linear(root / "classifier" / 1, last, g.classes);
    nn::func_t(move |xs, train| {
        let ys: Tensor = xs.apply_t(&features, train);
        ys.adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
            .dropout(0.2, train)
            .apply(&fc)
    })
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};
    use trainfleet_core::job::{Arch, ModelSpec};

    use super::*;

    #[test]
    fn every_zoo_model_maps_any_input_to_class_logits() {
        let inputs = [
            Geometry {
                channels: 1,
                height: 28,
                width: 28,
                classes: 10,
            },
            Geometry {
                channels: 3,
                height: 32,
                width: 32,
                classes: 100,
            },
            Geometry {
                channels: 3,
                height: 64,
                width: 64,
                classes: 7,
            },
        ];
        for arch in [
            Arch::Resnet18,
            Arch::Resnet34,
            Arch::Resnet50,
            Arch::Vgg11,
            Arch::Vgg16,
            Arch::MobilenetV2,
        ] {
            for g in inputs {
                let vs = nn::VarStore::new(Device::Cpu);
                let spec = ModelSpec {
                    arch,
                    ..Default::default()
                };
                let model = crate::model::build(&vs.root(), &spec, g).unwrap();
                let x = Tensor::randn(
                    [2, g.channels, g.height, g.width],
                    (Kind::Float, Device::Cpu),
                );
                let y = tch::no_grad(|| model.forward_t(&x, false));
                assert_eq!(y.size(), vec![2, g.classes], "{arch:?} on {g:?}");
            }
        }
    }

    #[test]
    fn names_follow_torchvision() {
        let g = Geometry {
            channels: 3,
            height: 32,
            width: 32,
            classes: 10,
        };
        let names = |arch| {
            let vs = nn::VarStore::new(Device::Cpu);
            crate::model::build(
                &vs.root(),
                &ModelSpec {
                    arch,
                    ..Default::default()
                },
                g,
            )
            .unwrap();
            vs.variables()
                .into_keys()
                .collect::<std::collections::BTreeSet<_>>()
        };
        let resnet = names(Arch::Resnet18);
        for n in [
            "conv1.weight",
            "bn1.running_var",
            "layer1.0.conv1.weight",
            "layer2.0.downsample.0.weight",
            "fc.weight",
        ] {
            assert!(resnet.contains(n), "resnet18 lacks {n}");
        }
        let r50 = names(Arch::Resnet50);
        assert!(r50.contains("layer4.2.conv3.weight"));
        let vgg = names(Arch::Vgg16);
        for n in [
            "features.0.weight",
            "features.1.running_mean",
            "features.40.weight",
            "classifier.3.weight",
        ] {
            assert!(vgg.contains(n), "vgg16 lacks {n}");
        }
        let mobile = names(Arch::MobilenetV2);
        for n in [
            "features.0.0.weight",
            "features.1.conv.0.0.weight",
            "features.18.0.weight",
            "classifier.1.weight",
        ] {
            assert!(mobile.contains(n), "mobilenet_v2 lacks {n}");
        }
    }
}
