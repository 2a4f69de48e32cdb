//! The training job spec: the YAML that `trainfleet-worker train --config` and `trainfleet run`
//! take, and that the coordinator stores with a job.
//!
//! Parsing rejects unknown keys and unknown names with `file:line:column` and the valid choices
//! (serde does that for enums); [`JobSpec::validate`] then checks values that parse but cannot
//! work, naming the field path (`training.learning_rate`). Both happen before any work starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::load_yaml_file;
use crate::{Error, Result};

/// A training job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Human name; used in artifact paths and reports.
    #[serde(default = "default_name")]
    pub name: String,
    /// What to train on.
    pub dataset: DatasetSpec,
    /// What to train.
    pub model: ModelSpec,
    /// How to train it.
    #[serde(default)]
    pub training: TrainingSpec,
    /// When the trained model may replace the dataset's champion.
    #[serde(default)]
    pub gate: GateSpec,
    /// What the training task needs from a worker.
    #[serde(default)]
    pub resources: ResourceSpec,
    /// Attempts before the job fails (a lost worker costs one).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Free-form labels, copied onto the resulting model.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Where the run is also recorded (MLflow). Not part of the config's identity.
    #[serde(default, skip_serializing_if = "TrackingSpec::is_empty")]
    pub tracking: TrackingSpec,
}

/// Experiment tracking outside trainfleet.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingSpec {
    /// An MLflow tracking server (`http://host:5000`): each run becomes an MLflow run with its
    /// params, per-epoch metrics, tags, report and model. MLflow being down never fails a run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mlflow_uri: Option<String>,
    /// The MLflow experiment (created if missing); default `trainfleet`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
}

impl TrackingSpec {
    /// No tracking configured.
    pub fn is_empty(&self) -> bool {
        self.mlflow_uri.is_none() && self.experiment.is_none()
    }

    /// The experiment's name.
    pub fn experiment_name(&self) -> &str {
        self.experiment.as_deref().unwrap_or("trainfleet")
    }
}

fn default_max_attempts() -> u32 {
    3
}

/// Metrics a gate can compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateMetric {
    /// Top-1 accuracy on the test split.
    #[default]
    Accuracy,
    /// Unweighted mean of per-class F1.
    MacroF1,
}

impl GateMetric {
    /// The metric's name in results.
    pub fn name(self) -> &'static str {
        match self {
            GateMetric::Accuracy => "accuracy",
            GateMetric::MacroF1 => "macro_f1",
        }
    }
}

/// The promotion gate: when a challenger may replace the champion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateSpec {
    /// Metric compared on the identical test split.
    pub metric: GateMetric,
    /// The challenger must beat the champion by at least this much (absolute).
    pub min_delta: f64,
    /// The first model of a dataset is promoted only with at least this accuracy.
    pub min_accuracy: f64,
    /// When > 0, also require McNemar's exact test on the paired per-sample correctness to
    /// reject "no difference" at this level (two-sided p <= alpha).
    pub mcnemar_alpha: f64,
    /// When > 0, refuse promotion if any class's recall drops by more than this (absolute).
    pub max_class_drop: f64,
}

impl Default for GateSpec {
    fn default() -> Self {
        Self {
            metric: GateMetric::Accuracy,
            min_delta: 0.0,
            min_accuracy: 0.0,
            mcnemar_alpha: 0.0,
            max_class_drop: 0.0,
        }
    }
}

/// What the training task needs from a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceSpec {
    /// Run only where there is a CUDA device (implied by `training.device: cuda...`).
    pub gpu: bool,
    /// Minimum memory of the device in MiB; 0 for no requirement.
    pub min_memory_mb: u64,
    /// Worker slots the task occupies.
    pub slots: u32,
}

impl Default for ResourceSpec {
    fn default() -> Self {
        Self {
            gpu: false,
            min_memory_mb: 0,
            slots: 1,
        }
    }
}

fn default_name() -> String {
    "job".to_owned()
}

impl Default for JobSpec {
    fn default() -> Self {
        Self {
            name: default_name(),
            dataset: DatasetSpec::default(),
            model: ModelSpec::default(),
            training: TrainingSpec::default(),
            gate: GateSpec::default(),
            resources: ResourceSpec::default(),
            max_attempts: default_max_attempts(),
            labels: BTreeMap::new(),
            tracking: TrackingSpec::default(),
        }
    }
}

/// Builtin datasets: downloaded and checksum-verified, or generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Builtin {
    /// MNIST handwritten digits (IDX, 60k/10k, 28×28 grey).
    Mnist,
    /// Zalando's Fashion-MNIST (IDX, 60k/10k, 28×28 grey).
    FashionMnist,
    /// Kuzushiji-MNIST (IDX, 60k/10k, 28×28 grey).
    Kmnist,
    /// CIFAR-10 (binary batches, 50k/10k, 32×32 RGB).
    Cifar10,
    /// CIFAR-100, fine labels (binary batches, 50k/10k, 32×32 RGB).
    Cifar100,
    /// trainfleet's offline generator of 28×28 digits (IDX).
    SynthDigits,
}

impl Builtin {
    /// Every builtin.
    pub const ALL: [Builtin; 6] = [
        Builtin::Mnist,
        Builtin::FashionMnist,
        Builtin::Kmnist,
        Builtin::Cifar10,
        Builtin::Cifar100,
        Builtin::SynthDigits,
    ];

    /// The builtin called `name`.
    pub fn from_name(name: &str) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The name used in YAML and cache paths.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Mnist => "mnist",
            Builtin::FashionMnist => "fashion-mnist",
            Builtin::Kmnist => "kmnist",
            Builtin::Cifar10 => "cifar10",
            Builtin::Cifar100 => "cifar100",
            Builtin::SynthDigits => "synth-digits",
        }
    }
}

/// On-disk layouts trainfleet reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LocalFormat {
    /// One sub-directory per class holding PNG/JPEG files.
    Imagefolder,
    /// IDX pairs: `{train,test}-images-idx3-ubyte[.gz]` and `{train,test}-labels-idx1-ubyte[.gz]`.
    Idx,
}

impl LocalFormat {
    /// The format's name in YAML.
    pub fn name(self) -> &'static str {
        match self {
            LocalFormat::Imagefolder => "imagefolder",
            LocalFormat::Idx => "idx",
        }
    }
}

/// Batched augmentation applied to training batches on the device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentSpec {
    /// Pad by this many pixels, then crop back to size at a random offset (0 disables).
    pub crop_padding: u32,
    /// Mirror left-right with probability 0.5 (not for digits).
    pub horizontal_flip: bool,
}

/// Settings of the `synth-digits` generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthSpec {
    /// Training images generated.
    pub train_samples: u32,
    /// Test images generated (a separate draw: the official test split).
    pub test_samples: u32,
    /// Generator seed; the same seed gives byte-identical files.
    pub seed: u64,
}

impl Default for SynthSpec {
    fn default() -> Self {
        Self {
            train_samples: 20_000,
            test_samples: 4_000,
            seed: 1,
        }
    }
}

/// What to train on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetSpec {
    /// The registered dataset this is (set by the coordinator on retrains): models and the
    /// champion pointer are kept under this name instead of the source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Pin an image folder to one version: its manifest's Merkle root. The worker loads exactly
    /// that version's files, checks each one's sha256, and refuses to train on drifted data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Artifact URI of the pinned version's manifest (every file's path, sha256, label and
    /// split). Without it the worker re-scans the folder and requires the same root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// An image folder kept in an object store (`s3://bucket/cats`, `file:///srv/cats`) instead
    /// of `path`: the worker copies the pinned version's files (checked against the manifest)
    /// into its data cache and trains on that copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A builtin dataset; or leave unset and give `format` and `path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub builtin: Option<Builtin>,
    /// Layout of a local dataset at `path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<LocalFormat>,
    /// Directory of a local dataset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Images are resized to this (height, width) (imagefolder only; builtins have a fixed size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_size: Option<[u32; 2]>,
    /// Load images as one grey channel instead of RGB (imagefolder only).
    pub grayscale: bool,
    /// Train on this stable fraction of the training split (0 < f ≤ 1).
    pub fraction: f64,
    /// Percent of the training split carved out for validation (stable by content hash).
    pub validation_pct: u32,
    /// Percent held out for testing when the dataset has no official test split.
    pub test_pct: u32,
    /// Training-time augmentation.
    pub augment: AugmentSpec,
    /// Generator settings (synth-digits only).
    pub synth: SynthSpec,
    /// Cache directory for downloads and generated files (default: the worker's data_dir).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
}

impl Default for DatasetSpec {
    fn default() -> Self {
        Self {
            name: None,
            version: None,
            manifest: None,
            url: None,
            builtin: None,
            format: None,
            path: None,
            image_size: None,
            grayscale: false,
            fraction: 1.0,
            validation_pct: 10,
            test_pct: 20,
            augment: AugmentSpec::default(),
            synth: SynthSpec::default(),
            cache_dir: None,
        }
    }
}

/// Model architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// The seed project's CNN: two 3×3 convolutions, max-pool, dropout, two linear layers.
    #[default]
    SimpleCnn,
    /// A configurable CNN (`channels`, `kernel_size`, `batch_norm`, `dropout`, `hidden`).
    Cnn,
    /// ResNet-18 (basic blocks), small-image stem.
    Resnet18,
    /// ResNet-34 (basic blocks), small-image stem.
    Resnet34,
    /// ResNet-50 (bottleneck blocks), small-image stem.
    Resnet50,
    /// VGG-11 with batch norm.
    Vgg11,
    /// VGG-16 with batch norm.
    Vgg16,
    /// MobileNet-V2 (`width_mult`).
    MobilenetV2,
}

impl Arch {
    /// The name used in YAML.
    pub fn name(self) -> &'static str {
        match self {
            Arch::SimpleCnn => "simple_cnn",
            Arch::Cnn => "cnn",
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::Vgg11 => "vgg11",
            Arch::Vgg16 => "vgg16",
            Arch::MobilenetV2 => "mobilenet_v2",
        }
    }

    /// Every architecture, in documentation order.
    pub const ALL: [Arch; 8] = [
        Arch::SimpleCnn,
        Arch::Cnn,
        Arch::Resnet18,
        Arch::Resnet34,
        Arch::Resnet50,
        Arch::Vgg11,
        Arch::Vgg16,
        Arch::MobilenetV2,
    ];
}

/// What to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSpec {
    /// Architecture.
    pub arch: Arch,
    /// `cnn`: output channels of each conv block (each block halves the resolution).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<u32>>,
    /// `cnn`: square kernel size (odd).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_size: Option<u32>,
    /// `cnn`: batch norm after each convolution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_norm: Option<bool>,
    /// `simple_cnn`, `cnn`, `vgg*`: dropout probability before the classifier layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    /// `cnn`: widths of hidden linear layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden: Option<Vec<u32>>,
    /// `mobilenet_v2`: channel width multiplier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width_mult: Option<f64>,
    /// `resnet*`: start each residual branch's last batch norm at weight 0, so every block
    /// begins as the identity (torchvision's `zero_init_residual`; default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero_init_residual: Option<bool>,
    /// Start from these weights (a safetensors file with matching names and shapes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_weights: Option<PathBuf>,
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            arch: Arch::SimpleCnn,
            channels: None,
            kernel_size: None,
            batch_norm: None,
            dropout: None,
            hidden: None,
            width_mult: None,
            zero_init_residual: None,
            init_weights: None,
        }
    }
}

/// Optimisers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Stochastic gradient descent, optionally with (Nesterov) momentum.
    Sgd,
    /// Adam, weight decay as L2 in the gradient.
    Adam,
    /// AdamW, decoupled weight decay.
    Adamw,
}

/// Learning-rate schedules (after any linear warm-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// The same rate throughout.
    Constant,
    /// Multiply by `gamma` every `step_epochs`.
    Step,
    /// Cosine decay to 0 over the remaining epochs.
    Cosine,
}

/// Metrics early stopping can watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchedMetric {
    /// Validation accuracy (higher is better).
    ValAccuracy,
    /// Validation loss (lower is better).
    ValLoss,
}

/// Stop when the watched validation metric stops improving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// What to watch.
    #[serde(default = "default_watched")]
    pub metric: WatchedMetric,
    /// Epochs without improvement before stopping.
    pub patience: u32,
    /// Smallest change that counts as an improvement.
    #[serde(default)]
    pub min_delta: f64,
}

fn default_watched() -> WatchedMetric {
    WatchedMetric::ValAccuracy
}

/// How to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSpec {
    /// Passes over the training split.
    pub epochs: u32,
    /// Samples per step.
    pub batch_size: u32,
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// SGD momentum (0 disables).
    pub momentum: f64,
    /// Nesterov momentum (SGD with momentum > 0).
    pub nesterov: bool,
    /// Weight decay (L2 for SGD/Adam, decoupled for AdamW).
    pub weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: ScheduleKind,
    /// `step`: epochs between decays.
    pub step_epochs: u32,
    /// `step`: decay factor.
    pub gamma: f64,
    /// Linear warm-up from 0 over this many epochs (counted in batches).
    pub warmup_epochs: u32,
    /// Clip the global gradient norm to this (unset: no clipping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    /// Stop early on a validation metric.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// `auto` (CUDA when available), `cpu`, or `cuda:N`.
    pub device: String,
    /// Intra-op threads for libtorch on CPU (unset: libtorch's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// Seed for initialisation, shuffling, dropout and augmentation.
    pub seed: u64,
}

impl Default for TrainingSpec {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 64,
            optimizer: OptimizerKind::Adam,
            learning_rate: 1e-3,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
            schedule: ScheduleKind::Constant,
            step_epochs: 10,
            gamma: 0.1,
            warmup_epochs: 0,
            grad_clip: None,
            early_stopping: None,
            device: "auto".to_owned(),
            threads: None,
            seed: 42,
        }
    }
}

/// A parsed `training.device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// CUDA device 0 when available, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(u32),
}

impl DeviceRequest {
    /// Parses `auto`, `cpu`, `cuda` or `cuda:N`.
    pub fn parse(text: &str) -> Result<Self> {
        match text.trim() {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" => Ok(DeviceRequest::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceRequest::Cuda)
                .ok_or_else(|| {
                    Error::invalid_field(
                        "training.device",
                        format!("is {other:?}; use one of \"auto\", \"cpu\", \"cuda\", \"cuda:N\""),
                    )
                }),
        }
    }
}

impl JobSpec {
    /// Reads and validates a job file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let spec: Self = load_yaml_file(path)?;
        spec.validate().map_err(|e| with_origin(e, path))?;
        Ok(spec)
    }

    /// Parses and validates job YAML; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self> {
        let spec: Self = crate::config::parse_yaml(text, origin)?;
        spec.validate()
            .map_err(|e| with_origin(e, Path::new(origin)))?;
        Ok(spec)
    }

    /// Checks values that parse but cannot work; errors name the field path.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: String| Err(Error::invalid_field(field, message));
        if let Some(uri) = &self.tracking.mlflow_uri {
            match url::Url::parse(uri) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => {
                    return bad(
                        "tracking.mlflow_uri",
                        format!("{uri:?} is not an MLflow server address (http://host:port)"),
                    );
                }
            }
        }
        if self.tracking.experiment.as_deref() == Some("") {
            return bad("tracking.experiment", "is empty".into());
        }
        let d = &self.dataset;
        if let Some(url) = &d.url {
            if d.format != Some(LocalFormat::Imagefolder) || d.path.is_some() {
                return bad(
                    "dataset.url",
                    "is an image folder in an object store: it takes `format: imagefolder` and \
                     no `path`"
                        .into(),
                );
            }
            if d.version.is_none() || d.manifest.is_none() {
                return bad(
                    "dataset.url",
                    format!(
                        "{url} needs `version` and `manifest`: the worker copies exactly that \
                         version's files (register the prefix as a dataset and retrain it)"
                    ),
                );
            }
        }
        if d.name.is_some() && d.builtin.is_none() && d.format.is_none() && d.path.is_none() {
            // A registered dataset by name: the coordinator fills in its source and pins the
            // version (a number, a root hash, or the latest) before the job is queued.
            if let Some(v) = &d.version
                && !(v == "latest"
                    || v.parse::<u64>().is_ok()
                    || (v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())))
            {
                return bad(
                    "dataset.version",
                    format!("is {v:?}; name a version by number, root hash, or \"latest\""),
                );
            }
            return self.validate_rest();
        }
        match (d.builtin, d.format, &d.path) {
            (Some(_), None, None) => {}
            (None, Some(LocalFormat::Imagefolder), None) if d.url.is_some() => {}
            (Some(b), _, _) => {
                return bad(
                    "dataset.builtin",
                    format!("is {}; a builtin takes no `format` or `path`", b.name()),
                );
            }
            (None, Some(_), Some(_)) => {}
            (None, _, _) => {
                return bad(
                    "dataset",
                    "needs either `builtin` (mnist, fashion-mnist, kmnist, cifar10, cifar100, \
                     synth-digits), both `format` (imagefolder, idx) and `path`, or the `name` \
                     of a registered dataset"
                        .into(),
                );
            }
        }
        if let Some(version) = &d.version
            && (version.len() != 64 || !version.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return bad(
                "dataset.version",
                format!("is {version:?}; expected a version's 64-hex-digit root hash"),
            );
        }
        if d.manifest.is_some() && d.version.is_none() {
            return bad(
                "dataset.manifest",
                "needs `version`: the root hash the manifest must have".into(),
            );
        }
        if d.manifest.is_some() && d.format != Some(LocalFormat::Imagefolder) {
            return bad(
                "dataset.manifest",
                "lists an image folder's files; other datasets are pinned by `version` alone"
                    .into(),
            );
        }
        if d.image_size.is_some() && d.format != Some(LocalFormat::Imagefolder) {
            return bad(
                "dataset.image_size",
                "applies only to format: imagefolder".into(),
            );
        }
        if let Some([h, w]) = d.image_size
            && (!(8..=1024).contains(&h) || !(8..=1024).contains(&w))
        {
            return bad(
                "dataset.image_size",
                format!("is [{h}, {w}]; each side must be 8..=1024"),
            );
        }
        if !(d.fraction > 0.0 && d.fraction <= 1.0) {
            return bad(
                "dataset.fraction",
                format!("is {}; it must be in (0, 1]", d.fraction),
            );
        }
        if d.validation_pct >= 100 {
            return bad(
                "dataset.validation_pct",
                format!("is {}; it must be below 100", d.validation_pct),
            );
        }
        if d.test_pct >= 100 || d.validation_pct + d.test_pct >= 100 {
            return bad(
                "dataset.test_pct",
                format!(
                    "is {}; with validation_pct {} it leaves nothing to train on",
                    d.test_pct, d.validation_pct
                ),
            );
        }
        if d.builtin == Some(Builtin::SynthDigits)
            && (d.synth.train_samples == 0 || d.synth.test_samples == 0)
        {
            return bad(
                "dataset.synth",
                "needs train_samples and test_samples of at least 1".into(),
            );
        }
        self.validate_rest()
    }

    /// Whether the dataset is a registered one named without its source (the coordinator
    /// resolves it).
    pub fn names_registered_dataset(&self) -> bool {
        let d = &self.dataset;
        d.name.is_some()
            && d.builtin.is_none()
            && d.format.is_none()
            && d.path.is_none()
            && d.url.is_none()
    }

    fn validate_rest(&self) -> Result<()> {
        self.validate_model()?;
        self.validate_training()?;
        self.validate_job()
    }

    fn validate_job(&self) -> Result<()> {
        let bad = |field: &str, message: String| Err(Error::invalid_field(field, message));
        if !(1..=100).contains(&self.max_attempts) {
            return bad(
                "max_attempts",
                format!("is {}; it must be 1..=100", self.max_attempts),
            );
        }
        let g = &self.gate;
        if !(g.min_delta >= 0.0 && g.min_delta < 1.0) {
            return bad(
                "gate.min_delta",
                format!("is {}; it must be in [0, 1)", g.min_delta),
            );
        }
        if !(g.mcnemar_alpha >= 0.0 && g.mcnemar_alpha < 1.0) {
            return bad(
                "gate.mcnemar_alpha",
                format!(
                    "is {}; it must be in [0, 1) (0 disables the test)",
                    g.mcnemar_alpha
                ),
            );
        }
        if !(0.0..=1.0).contains(&g.max_class_drop) {
            return bad(
                "gate.max_class_drop",
                format!(
                    "is {}; it must be in [0, 1] (0 disables the rule)",
                    g.max_class_drop
                ),
            );
        }
        if !(0.0..=1.0).contains(&g.min_accuracy) {
            return bad(
                "gate.min_accuracy",
                format!("is {}; it must be in [0, 1]", g.min_accuracy),
            );
        }
        if !(1..=64).contains(&self.resources.slots) {
            return bad(
                "resources.slots",
                format!("is {}; it must be 1..=64", self.resources.slots),
            );
        }
        Ok(())
    }

    /// Whether the training task must run on a GPU: asked for, or implied by the device.
    pub fn needs_gpu(&self) -> bool {
        self.resources.gpu || self.training.device.trim().starts_with("cuda")
    }

    /// The name models of this job's dataset are filed under (the champion is per dataset):
    /// the registered name, else the builtin's name, else `format:path` for local data.
    pub fn dataset_key(&self) -> String {
        if let Some(name) = &self.dataset.name {
            return name.clone();
        }
        match (
            self.dataset.builtin,
            self.dataset.format,
            &self.dataset.path,
        ) {
            (Some(b), _, _) => b.name().to_owned(),
            (None, Some(f), Some(p)) => format!("{}:{}", f.name(), p.display()),
            (None, Some(f), None) if self.dataset.url.is_some() => {
                format!(
                    "{}:{}",
                    f.name(),
                    self.dataset.url.as_deref().unwrap_or_default()
                )
            }
            _ => "unknown".to_owned(),
        }
    }

    /// sha256 of the canonical YAML without the dataset version pin: the job configuration's
    /// identity, which with a version's root makes a retrain's idempotency key.
    pub fn config_hash(&self) -> String {
        let mut unpinned = self.clone();
        unpinned.dataset.version = None;
        unpinned.dataset.manifest = None;
        unpinned.tracking = TrackingSpec::default();
        crate::artifacts::sha256_hex(unpinned.to_yaml().as_bytes())
    }

    /// The spec as canonical YAML: what is stored with a job and sent to workers.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a job spec always serialises")
    }

    fn validate_model(&self) -> Result<()> {
        let m = &self.model;
        let only = |field: &str, set: bool, archs: &[Arch]| -> Result<()> {
            if set && !archs.contains(&m.arch) {
                let names: Vec<&str> = archs.iter().map(|a| a.name()).collect();
                return Err(Error::invalid_field(
                    format!("model.{field}"),
                    format!(
                        "applies only to arch {}; this model is {}",
                        names.join(", "),
                        m.arch.name()
                    ),
                ));
            }
            Ok(())
        };
        only("channels", m.channels.is_some(), &[Arch::Cnn])?;
        only("kernel_size", m.kernel_size.is_some(), &[Arch::Cnn])?;
        only("batch_norm", m.batch_norm.is_some(), &[Arch::Cnn])?;
        only("hidden", m.hidden.is_some(), &[Arch::Cnn])?;
        only(
            "dropout",
            m.dropout.is_some(),
            &[Arch::SimpleCnn, Arch::Cnn, Arch::Vgg11, Arch::Vgg16],
        )?;
        only("width_mult", m.width_mult.is_some(), &[Arch::MobilenetV2])?;
        only(
            "zero_init_residual",
            m.zero_init_residual.is_some(),
            &[Arch::Resnet18, Arch::Resnet34, Arch::Resnet50],
        )?;
        if let Some(channels) = &m.channels
            && (channels.is_empty()
                || channels.len() > 8
                || channels.iter().any(|&c| c == 0 || c > 4096))
        {
            return Err(Error::invalid_field(
                "model.channels",
                format!("is {channels:?}; give 1 to 8 widths, each 1..=4096"),
            ));
        }
        if let Some(k) = m.kernel_size
            && (k % 2 == 0 || !(1..=11).contains(&k))
        {
            return Err(Error::invalid_field(
                "model.kernel_size",
                format!("is {k}; use an odd size from 1 to 11"),
            ));
        }
        if let Some(p) = m.dropout
            && !(0.0..1.0).contains(&p)
        {
            return Err(Error::invalid_field(
                "model.dropout",
                format!("is {p}; it must be in [0, 1)"),
            ));
        }
        if let Some(hidden) = &m.hidden
            && hidden.iter().any(|&h| h == 0 || h > 65536)
        {
            return Err(Error::invalid_field(
                "model.hidden",
                format!("is {hidden:?}; each width must be 1..=65536"),
            ));
        }
        if let Some(w) = m.width_mult
            && !(w > 0.0 && w <= 4.0)
        {
            return Err(Error::invalid_field(
                "model.width_mult",
                format!("is {w}; it must be in (0, 4]"),
            ));
        }
        Ok(())
    }

    fn validate_training(&self) -> Result<()> {
        let t = &self.training;
        let bad = |field: &str, message: String| {
            Err(Error::invalid_field(format!("training.{field}"), message))
        };
        if !(1..=100_000).contains(&t.epochs) {
            return bad("epochs", format!("is {}; it must be 1..=100000", t.epochs));
        }
        if !(1..=1 << 20).contains(&t.batch_size) {
            return bad(
                "batch_size",
                format!("is {}; it must be 1..=1048576", t.batch_size),
            );
        }
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0 && t.learning_rate <= 10.0) {
            return bad(
                "learning_rate",
                format!("is {}; it must be in (0, 10]", t.learning_rate),
            );
        }
        if !(0.0..1.0).contains(&t.momentum) {
            return bad(
                "momentum",
                format!("is {}; it must be in [0, 1)", t.momentum),
            );
        }
        if t.nesterov && (t.optimizer != OptimizerKind::Sgd || t.momentum == 0.0) {
            return bad("nesterov", "needs optimizer: sgd with momentum > 0".into());
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return bad(
                "weight_decay",
                format!("is {}; it must be >= 0", t.weight_decay),
            );
        }
        if t.schedule == ScheduleKind::Step
            && (t.step_epochs == 0 || !(t.gamma > 0.0 && t.gamma <= 1.0))
        {
            return bad(
                "gamma",
                "step schedule needs step_epochs >= 1 and gamma in (0, 1]".into(),
            );
        }
        if t.warmup_epochs >= t.epochs && t.warmup_epochs > 0 {
            return bad(
                "warmup_epochs",
                format!(
                    "is {}; it must be below epochs ({})",
                    t.warmup_epochs, t.epochs
                ),
            );
        }
        if let Some(c) = t.grad_clip
            && !(c.is_finite() && c > 0.0)
        {
            return bad("grad_clip", format!("is {c}; it must be > 0"));
        }
        if let Some(es) = &t.early_stopping {
            if es.patience == 0 {
                return bad("early_stopping.patience", "must be at least 1".into());
            }
            if self.dataset.validation_pct == 0 {
                return bad(
                    "early_stopping",
                    "needs a validation split: set dataset.validation_pct > 0".into(),
                );
            }
        }
        if let Some(n) = t.threads
            && !(1..=1024).contains(&n)
        {
            return bad("threads", format!("is {n}; it must be 1..=1024"));
        }
        DeviceRequest::parse(&t.device)?;
        Ok(())
    }
}

fn with_origin(err: Error, path: &Path) -> Error {
    match err {
        Error::InvalidField { field, message } => Error::InvalidConfig {
            origin: path.display().to_string(),
            field,
            message,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "dataset:\n  builtin: synth-digits\nmodel:\n  arch: simple_cnn\n";

    #[test]
    fn minimal_job_gets_defaults() {
        let spec = JobSpec::from_yaml(MINIMAL, "job.yaml").unwrap();
        assert_eq!(spec.dataset.builtin, Some(Builtin::SynthDigits));
        assert_eq!(spec.training.epochs, 3);
        assert_eq!(
            DeviceRequest::parse(&spec.training.device).unwrap(),
            DeviceRequest::Auto
        );
    }

    #[test]
    fn unknown_model_lists_the_choices_with_line_and_column() {
        let text = "dataset:\n  builtin: mnist\nmodel:\n  arch: resnet19\n";
        let err = JobSpec::from_yaml(text, "job.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("job.yaml:4:9: model.arch: unknown variant `resnet19`"),
            "{err}"
        );
        for arch in Arch::ALL {
            assert!(err.contains(arch.name()), "{arch:?} missing from: {err}");
        }
    }

    #[test]
    fn unknown_dataset_and_optimizer_list_the_choices() {
        let err = JobSpec::from_yaml("dataset:\n  builtin: mnsit\nmodel: {}\n", "j")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`mnsit`, expected one of `mnist`, `fashion-mnist`"),
            "{err}"
        );
        let text = format!("{MINIMAL}training:\n  optimizer: rmsprop\n");
        let err = JobSpec::from_yaml(&text, "j").unwrap_err().to_string();
        assert!(
            err.contains("expected one of `sgd`, `adam`, `adamw`"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (
                "training:\n  learning_rate: -1\n",
                "`training.learning_rate` is -1",
            ),
            ("training:\n  batch_size: 0\n", "`training.batch_size` is 0"),
            ("training:\n  device: gpu\n", "`training.device` is \"gpu\""),
            (
                "training:\n  nesterov: true\n",
                "`training.nesterov` needs optimizer: sgd",
            ),
            (
                "training:\n  epochs: 2\n  warmup_epochs: 2\n",
                "`training.warmup_epochs` is 2",
            ),
            (
                "training:\n  early_stopping: {patience: 0}\n",
                "`training.early_stopping.patience`",
            ),
        ];
        for (extra, expected) in cases {
            let err = JobSpec::from_yaml(&format!("{MINIMAL}{extra}"), "job.yaml")
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("job.yaml: "), "{err}");
            assert!(err.contains(expected), "{extra}: {err}");
        }
    }

    #[test]
    fn tracking_needs_an_http_mlflow_address_and_stays_out_of_the_config_hash() {
        let base = "dataset:\n  builtin: mnist\nmodel: {}\n";
        for (tracking, expected) in [
            ("{mlflow_uri: \"localhost:5000\"}", "`tracking.mlflow_uri`"),
            (
                "{mlflow_uri: \"ftp://mlflow:21\"}",
                "is not an MLflow server address",
            ),
            (
                "{mlflow_uri: \"http://mlflow:5000\", experiment: \"\"}",
                "`tracking.experiment` is empty",
            ),
            ("{mlflow: \"http://x\"}", "unknown field `mlflow`"),
        ] {
            let text = format!("{base}tracking: {tracking}\n");
            let err = JobSpec::from_yaml(&text, "job.yaml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{tracking}: {err}");
        }
        let plain = JobSpec::from_yaml(base, "j").unwrap();
        let tracked = JobSpec::from_yaml(
            &format!(
                "{base}tracking: {{mlflow_uri: \"https://mlflow.internal\", experiment: pets}}\n"
            ),
            "j",
        )
        .unwrap();
        assert_eq!(tracked.tracking.experiment_name(), "pets");
        assert_eq!(plain.config_hash(), tracked.config_hash());
    }

    #[test]
    fn options_of_another_architecture_are_refused() {
        let text = "dataset:\n  builtin: cifar10\nmodel:\n  arch: resnet18\n  channels: [32]\n";
        let err = JobSpec::from_yaml(text, "j").unwrap_err().to_string();
        assert!(
            err.contains("`model.channels` applies only to arch cnn; this model is resnet18"),
            "{err}"
        );
        let text = "dataset:\n  builtin: mnist\nmodel:\n  arch: cnn\n  zero_init_residual: true\n";
        let err = JobSpec::from_yaml(text, "j").unwrap_err().to_string();
        assert!(
            err.contains(
                "`model.zero_init_residual` applies only to arch resnet18, resnet34, resnet50; \
                 this model is cnn"
            ),
            "{err}"
        );
        let resnet = "dataset:\n  builtin: cifar10\nmodel:\n  arch: resnet18\n";
        let zeroed = format!("{resnet}  zero_init_residual: true\n");
        let plain = JobSpec::from_yaml(resnet, "j").unwrap();
        let zeroed = JobSpec::from_yaml(&zeroed, "j").unwrap();
        assert_eq!(zeroed.model.zero_init_residual, Some(true));
        assert_ne!(plain.config_hash(), zeroed.config_hash());
    }

    #[test]
    fn dataset_needs_exactly_one_source() {
        let err = JobSpec::from_yaml("dataset: {}\nmodel: {}\n", "j")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`dataset` needs either `builtin`"), "{err}");
        let text = "dataset:\n  builtin: mnist\n  path: /x\nmodel: {}\n";
        assert!(
            JobSpec::from_yaml(text, "j")
                .unwrap_err()
                .to_string()
                .contains("takes no `format` or `path`")
        );
        let text = "dataset:\n  format: imagefolder\n  path: /data/pets\n  image_size: [64, 64]\nmodel: {}\n";
        JobSpec::from_yaml(text, "j").unwrap();
    }
}
