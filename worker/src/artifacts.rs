//! What a finished run leaves in its output directory:
//!
//! - `model.safetensors`: the weights, names as the model builds them (readable by Python's
//!   `safetensors` as they are);
//! - `model.json`: everything needed to use them: architecture, input geometry, classes,
//!   normalisation, the weights' sha256, the dataset identity, test metrics, versions;
//! - `metrics.json`: every epoch, and the full test evaluation (per class, confusion matrix,
//!   per-sample correctness);
//! - `config.yaml`: the resolved job spec;
//! - `checkpoint.safetensors`: the last checkpoint (for resume).
//!
//! Files are written to temporary names and renamed, `model.json` last: a directory with a
//! `model.json` has everything it describes.

use std::path::Path;

use serde::{Deserialize, Serialize};
use trainfleet_core::job::{JobSpec, ModelSpec};

use crate::data::{Dataset, Identity, file_sha256};
use crate::error::{Error, Result};
use crate::metrics::Evaluation;
use crate::model::Geometry;
use crate::train::{EpochReport, Outcome};

/// File names in a run directory.
pub const MODEL_WEIGHTS: &str = "model.safetensors";
/// See [`MODEL_WEIGHTS`].
pub const MODEL_CARD: &str = "model.json";
/// See [`MODEL_WEIGHTS`].
pub const METRICS: &str = "metrics.json";
/// See [`MODEL_WEIGHTS`].
pub const CONFIG: &str = "config.yaml";

/// Normalisation a model expects its inputs in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Per-channel mean, in [0, 1] pixel units.
    pub mean: Vec<f64>,
    /// Per-channel standard deviation, in [0, 1] pixel units.
    pub std: Vec<f64>,
}

/// Test-split headline metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Headline {
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Top-5 accuracy (more than 5 classes).
    pub top5_accuracy: Option<f64>,
    /// Macro-averaged F1.
    pub macro_f1: f64,
    /// Test samples.
    pub samples: u64,
}

/// How the model was trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Epochs run, and the one whose weights were kept.
    pub epochs_run: u32,
    /// See `epochs_run`.
    pub kept_epoch: u32,
    /// Why training stopped early, if it did.
    pub stopped_early: Option<String>,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// libtorch intra-op threads.
    pub threads: i32,
    /// Seed.
    pub seed: u64,
    /// sha256 of the training-relevant job config.
    pub config_sha256: String,
    /// trainfleet and libtorch versions.
    pub trainfleet_version: String,
    /// See `trainfleet_version`.
    pub libtorch_version: String,
}

/// `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Format identifier, `trainfleet-model/1`.
    pub format: String,
    /// Job name.
    pub name: String,
    /// Architecture and its options.
    pub model: ModelSpec,
    /// Input geometry and class count.
    pub geometry: Geometry,
    /// Class names by index.
    pub classes: Vec<String>,
    /// Input normalisation.
    pub normalization: Normalization,
    /// Weights file and its sha256.
    pub weights_file: String,
    /// See `weights_file`.
    pub weights_sha256: String,
    /// The dataset it was trained and tested on.
    pub dataset: Identity,
    /// Test metrics.
    pub metrics: Headline,
    /// How it was trained.
    pub training: Provenance,
}

/// `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsFile {
    /// Every epoch.
    pub epochs: Vec<EpochReport>,
    /// The full test evaluation.
    pub test: Evaluation,
}

/// Writes the artifacts of a finished run to `dir`; returns the model card.
pub fn write(
    dir: &Path,
    spec: &JobSpec,
    dataset: &Dataset,
    outcome: &Outcome,
    device: tch::Device,
) -> Result<ModelCard> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let weights = dir.join(MODEL_WEIGHTS);
    // Dense row-major copies, whatever layout training used, sorted by name.
    let mut named: Vec<(String, tch::Tensor)> = outcome
        .var_store
        .variables()
        .into_iter()
        .map(|(name, t)| (name, t.to_device(tch::Device::Cpu).contiguous()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let tmp = dir.join(format!(".tmp.{MODEL_WEIGHTS}"));
    tch::Tensor::write_safetensors(&named, &tmp)?;
    std::fs::rename(&tmp, &weights).map_err(|e| Error::io(&weights, e))?;
    let (_, weights_sha256) = file_sha256(&weights)?;

    let metrics = MetricsFile {
        epochs: outcome.epochs.clone(),
        test: outcome.test.clone(),
    };
    write_atomically(
        &dir.join(METRICS),
        &serde_json::to_vec_pretty(&metrics).expect("serialises"),
    )?;
    let yaml = serde_yaml::to_string(spec).expect("spec serialises");
    write_atomically(&dir.join(CONFIG), yaml.as_bytes())?;

    let card = ModelCard {
        format: "trainfleet-model/1".to_owned(),
        name: spec.name.clone(),
        model: spec.model.clone(),
        geometry: outcome.geometry,
        classes: dataset.classes.clone(),
        normalization: Normalization {
            mean: dataset.mean.clone(),
            std: dataset.std.clone(),
        },
        weights_file: MODEL_WEIGHTS.to_owned(),
        weights_sha256,
        dataset: dataset.identity.clone(),
        metrics: Headline {
            accuracy: outcome.test.accuracy,
            loss: outcome.test.loss,
            top5_accuracy: outcome.test.top5_accuracy,
            macro_f1: outcome.test.macro_f1,
            samples: outcome.test.samples,
        },
        training: Provenance {
            epochs_run: outcome.epochs.len() as u32,
            kept_epoch: outcome.kept_epoch,
            stopped_early: outcome.stopped_early.clone(),
            device: crate::train::device_name(device),
            threads: tch::get_num_threads(),
            seed: spec.training.seed,
            config_sha256: crate::train::checkpoint::config_hash(spec),
            trainfleet_version: trainfleet_core::VERSION.to_owned(),
            libtorch_version: crate::LIBTORCH_VERSION.to_owned(),
        },
    };
    write_atomically(
        &dir.join(MODEL_CARD),
        &serde_json::to_vec_pretty(&card).expect("serialises"),
    )?;
    Ok(card)
}

/// Reads `model.json` from a run directory.
pub fn read_card(dir: &Path) -> Result<ModelCard> {
    let path = dir.join(MODEL_CARD);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::corrupt(
            &path,
            Some(e.column() as u64),
            format!("not a trainfleet model card: {e}"),
        )
    })
}

/// Reads `metrics.json` from a run directory.
pub fn read_metrics(dir: &Path) -> Result<MetricsFile> {
    let path = dir.join(METRICS);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::corrupt(&path, None, format!("unreadable metrics: {e}")))
}

/// Writes via a temporary file in the same directory and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    std::io::Write::write_all(&mut tmp, bytes).map_err(|e| Error::io(path, e))?;
    // Temporary files are private (0600); artifacts are meant to be read by others.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}
