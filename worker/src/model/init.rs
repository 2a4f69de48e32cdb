//! Initialisation, the one place that owns it: every layer starts exactly as its PyTorch
//! counterpart does, so a recipe moved from a PyTorch script trains the same way here.
//!
//! `tch`'s defaults are not PyTorch's: its convolutions and linear layers draw weights from a
//! Kaiming-uniform with the ReLU gain (bound √(6/fan_in), 2.45× PyTorch's), convolution biases
//! start at 0, and batch-norm weights are uniform in [0, 1). Each constructor here names the
//! scheme it reproduces:
//!
//! - [`torch_conv`], [`torch_linear`]: `nn.Conv2d` / `nn.Linear` `reset_parameters`, i.e.
//!   `kaiming_uniform_(a=√5)` for the weight (bound 1/√fan_in) and U(±1/√fan_in) for the bias.
//! - [`kaiming_conv`]: torchvision's ResNet, VGG and MobileNet-V2 convolutions,
//!   `kaiming_normal_(mode="fan_out", nonlinearity="relu")` (std √(2/fan_out)), bias 0.
//! - [`small_normal_linear`]: torchvision's VGG and MobileNet-V2 classifiers, N(0, 0.01), bias 0.
//! - [`batch_norm2d`]: `nn.BatchNorm2d`: weight 1, bias 0 (torchvision keeps these).
//! - [`zero_batch_norm2d`]: torchvision's `zero_init_residual`: the last batch norm of each
//!   residual branch starts at weight 0, so the block starts as the identity.

use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, Init};

/// PyTorch's default bound for a layer with this fan-in: 1/√fan_in.
fn torch_bound(fan_in: i64) -> f64 {
    1.0 / (fan_in.max(1) as f64).sqrt()
}

fn uniform(bound: f64) -> Init {
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A convolution initialised as `nn.Conv2d` is. `config` gives stride, padding, groups and
/// whether there is a bias; its initialisers are replaced.
pub fn torch_conv(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    config: nn::ConvConfig,
) -> nn::Conv2D {
    let bound = torch_bound(c_in / config.groups.max(1) * k * k);
    let config = nn::ConvConfig {
        ws_init: uniform(bound),
        bs_init: uniform(bound),
        ..config
    };
    nn::conv2d(p, c_in, c_out, k, config)
}

/// A convolution initialised as torchvision's ResNet, VGG and MobileNet-V2 do.
pub fn kaiming_conv(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    config: nn::ConvConfig,
) -> nn::Conv2D {
    let config = nn::ConvConfig {
        ws_init: Init::Kaiming {
            dist: NormalOrUniform::Normal,
            fan: FanInOut::FanOut,
            non_linearity: NonLinearity::ReLU,
        },
        bs_init: Init::Const(0.0),
        ..config
    };
    nn::conv2d(p, c_in, c_out, k, config)
}

/// A linear layer initialised as `nn.Linear` is.
pub fn torch_linear(p: nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
    let bound = torch_bound(c_in);
    nn::linear(
        p,
        c_in,
        c_out,
        nn::LinearConfig {
            ws_init: uniform(bound),
            bs_init: Some(uniform(bound)),
            bias: true,
        },
    )
}

/// A linear layer initialised as torchvision's VGG and MobileNet-V2 classifiers are.
pub fn small_normal_linear(p: nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
    nn::linear(
        p,
        c_in,
        c_out,
        nn::LinearConfig {
            ws_init: Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
            bs_init: Some(Init::Const(0.0)),
            bias: true,
        },
    )
}

/// Batch normalisation initialised as `nn.BatchNorm2d` is.
pub fn batch_norm2d(p: nn::Path, c: i64) -> nn::BatchNorm {
    batch_norm2d_from(p, c, 1.0)
}

/// Batch normalisation whose weight starts at 0 (bias 0), as `zero_init_residual` leaves the
/// last one of each residual branch.
pub fn zero_batch_norm2d(p: nn::Path, c: i64) -> nn::BatchNorm {
    batch_norm2d_from(p, c, 0.0)
}

fn batch_norm2d_from(p: nn::Path, c: i64, weight: f64) -> nn::BatchNorm {
    nn::batch_norm2d(
        p,
        c,
        nn::BatchNormConfig {
            ws_init: Init::Const(weight),
            bs_init: Init::Const(0.0),
            ..Default::default()
        },
    )
}
