//! Models built from the job spec, adapted to the dataset's channels, image size and classes.
//!
//! Every model is built from a `tch::nn::Path`, so parameters get stable, readable names
//! (`features.0.weight`, `classifier.2.bias`) that Python's `safetensors` reads as they are.
//!
//! - [`cnn`]: the seed project's simple CNN and the configurable CNN.

pub mod cnn;

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
    match spec.arch {
        Arch::SimpleCnn => cnn::simple(root, spec, geometry),
        Arch::Cnn => cnn::configurable(root, spec, geometry),
        other => Err(Error::Unsupported(format!(
            "model arch {} is not in this build yet; available: simple_cnn, cnn",
            other.name()
        ))),
    }
}
