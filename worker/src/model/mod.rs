//! Models built from the job spec, adapted to the dataset's channels, image size and classes.
//!
//! Every model is built from a `tch::nn::Path`, so parameters get stable, readable names
//! (`features.0.weight`, `classifier.2.bias`) that Python's `safetensors` reads as they are.
//!
//! - [`cnn`]: the seed project's simple CNN and the configurable CNN.
//! - [`zoo`]: ResNet-18/34/50, VGG-11/16 (batch norm), MobileNet-V2.
//! - [`init`]: every layer initialised as its PyTorch (or torchvision) counterpart is.

pub mod cnn;
pub mod init;
pub mod zoo;

use tch::nn::{self, ModuleT};
use trainfleet_core::job::{Arch, ModelSpec};

use crate::error::{Error, Result};

/// Input geometry and output size a model is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Geometry {
    /// Input channels (1 grey, 3 RGB).
    pub channels: i64,
    /// Input height and width.
    pub height: i64,
    /// See `height`.
    pub width: i64,
    /// Output classes.
    pub classes: i64,
}

/// A trainable classifier: images (N×C×H×W float) to logits (N×classes).
pub type Model = Box<dyn ModuleT + Send>;

/// Builds the model `spec` asks for under `root`.
pub fn build(root: &nn::Path, spec: &ModelSpec, geometry: Geometry) -> Result<Model> {
    if geometry.classes < 2 {
        return Err(Error::Unsupported(format!(
            "a classifier needs at least 2 classes, the dataset has {}",
            geometry.classes
        )));
    }
    let zero = spec.zero_init_residual.unwrap_or(false);
    match spec.arch {
        Arch::SimpleCnn => cnn::simple(root, spec, geometry),
        Arch::Cnn => cnn::configurable(root, spec, geometry),
        Arch::Resnet18 => Ok(Box::new(zoo::resnet(
            root,
            zoo::ResNet::R18,
            geometry,
            zero,
        ))),
        Arch::Resnet34 => Ok(Box::new(zoo::resnet(
            root,
            zoo::ResNet::R34,
            geometry,
            zero,
        ))),
        Arch::Resnet50 => Ok(Box::new(zoo::resnet(
            root,
            zoo::ResNet::R50,
            geometry,
            zero,
        ))),
        Arch::Vgg11 => Ok(Box::new(zoo::vgg(
            root,
            zoo::Vgg::V11,
            geometry,
            spec.dropout.unwrap_or(0.5),
        ))),
        Arch::Vgg16 => Ok(Box::new(zoo::vgg(
            root,
            zoo::Vgg::V16,
            geometry,
            spec.dropout.unwrap_or(0.5),
        ))),
        Arch::MobilenetV2 => Ok(Box::new(zoo::mobilenet_v2(
            root,
            geometry,
            spec.width_mult.unwrap_or(1.0),
        ))),
    }
}
