//! The training loop: batches gathered by index from on-device tensors, per-step schedule,
//! optional clipping and early stopping, a checkpoint each epoch, and exact resume.
//!
//! Determinism (CPU): the shuffle of epoch `e` comes from a ChaCha stream keyed by (seed, e), and
//! libtorch's RNG (dropout, augmentation) is reseeded with (seed, e) at the start of each epoch.
//! A run resumed after epoch k therefore replays epochs k+1.. exactly as an uninterrupted run.
//! libtorch's RNG and thread count are process-wide, so this holds for one training at a time
//! per process: concurrent trainings in one process draw from each other's random streams.
//!
//! - [`optim`]: SGD/Adam/AdamW on tensors, with checkpointable state.
//! - [`schedule`]: learning rate per step.
//! - [`checkpoint`]: one safetensors file per checkpoint, replaced atomically.

pub mod checkpoint;
mod fused;
pub mod optim;
pub mod phases;
pub mod schedule;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};
use trainfleet_core::job::{AugmentSpec, DeviceRequest, JobSpec, WatchedMetric};

use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::metrics::{self, Evaluation};
use crate::model::{self, Geometry};
use checkpoint::{Checkpoint, CheckpointMeta};
use optim::Optimizer;
use phases::{Phase, PhaseClock};

/// Batch size used for evaluation (no gradients, so it can be larger than training's).
const EVAL_BATCH: i64 = 512;

/// Maps u8 pixels to normalised floats: `(x / 255 - mean) / std`, per channel, in one fused op.
#[derive(Debug)]
pub struct Normalizer {
    scale: Tensor,
    shift: Tensor,
}

impl Normalizer {
    /// A normaliser for per-channel `mean` and `std` (in [0, 1] units) on `device`.
    pub fn new(mean: &[f64], std: &[f64], device: Device) -> Self {
        let c = mean.len() as i64;
        let scale: Vec<f32> = std.iter().map(|s| (1.0 / (255.0 * s)) as f32).collect();
        let shift: Vec<f32> = mean.iter().zip(std).map(|(m, s)| (-m / s) as f32).collect();
        Self {
            scale: Tensor::from_slice(&scale)
                .view([1, c, 1, 1])
                .to_device(device),
            shift: Tensor::from_slice(&shift)
                .view([1, c, 1, 1])
                .to_device(device),
        }
    }

    /// The device batches are normalised (and the model runs) on.
    pub fn device(&self) -> Device {
        self.scale.device()
    }

    /// Normalises a u8 batch.
    pub fn apply(&self, images: &Tensor) -> Tensor {
        self.apply_float(&images.to_kind(Kind::Float))
    }

    /// Normalises a float batch in [0, 255].
    pub fn apply_float(&self, pixels: &Tensor) -> Tensor {
        pixels * &self.scale + &self.shift
    }
}

/// Batched, on-device augmentation of float pixels in [0, 255].
pub fn augment(pixels: &Tensor, spec: &AugmentSpec) -> Tensor {
    let (n, _, h, w) = pixels.size4().expect("NCHW batch");
    let mut x = pixels.shallow_clone();
    if spec.crop_padding > 0 {
        // A random crop of the zero-padded image is a random integer shift with zero fill: one
        // nearest-neighbour grid sample for the whole batch.
        let p = spec.crop_padding as i64;
        let opts = (Kind::Float, x.device());
        let dx = Tensor::randint_low(-p, p + 1, [n], (Kind::Int64, x.device()))
            .to_kind(Kind::Float)
            * (2.0 / w as f64);
        let dy = Tensor::randint_low(-p, p + 1, [n], (Kind::Int64, x.device()))
            .to_kind(Kind::Float)
            * (2.0 / h as f64);
        let ones = Tensor::ones([n], opts);
        let zeros = Tensor::zeros([n], opts);
        let theta = Tensor::stack(&[&ones, &zeros, &dx, &zeros, &ones, &dy], 1).view([n, 2, 3]);
        let grid = Tensor::affine_grid_generator(&theta, [n, x.size()[1], h, w], false);
        x = x.grid_sampler(&grid, 1, 0, false);
    }
    if spec.horizontal_flip {
        let flip = Tensor::rand([n], (Kind::Float, x.device()))
            .lt(0.5)
            .view([n, 1, 1, 1]);
        x = x.flip([3]).where_self(&flip, &x);
    }
    x
}

/// The device a job asks for, checked against what this process can use.
pub fn resolve_device(spec: &JobSpec) -> Result<Device> {
    match DeviceRequest::parse(&spec.training.device)? {
        DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Auto => Ok(Device::cuda_if_available()),
        DeviceRequest::Cuda(n) => {
            let count = tch::Cuda::device_count();
            if (n as i64) < count {
                Ok(Device::Cuda(n as usize))
            } else {
                Err(Error::Unsupported(format!(
                    "training.device is cuda:{n} but this worker has {count} usable CUDA device(s)"
                )))
            }
        }
    }
}

/// Human name of a device, as in the job spec.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".to_owned(),
    }
}

/// What happened in one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based epoch.
    pub epoch: u32,
    /// Learning rate at the epoch's last step.
    pub learning_rate: f64,
    /// Mean training loss and accuracy over the epoch (with dropout and augmentation on).
    pub train_loss: f64,
    /// See `train_loss`.
    pub train_accuracy: f64,
    /// Validation loss and accuracy, when there is a validation split.
    pub val_loss: Option<f64>,
    /// See `val_loss`.
    pub val_accuracy: Option<f64>,
    /// Wall time of the training pass (validation excluded).
    pub train_seconds: f64,
    /// Training throughput.
    pub images_per_sec: f64,
}

/// Progress reported while training.
#[derive(Debug)]
pub enum Event<'a> {
    /// Training continues from a checkpoint that completed `epoch`.
    Resumed {
        /// Last completed epoch.
        epoch: u32,
    },
    /// An epoch begins.
    EpochStarted {
        /// 1-based epoch and total.
        epoch: u32,
        /// See `epoch`.
        epochs: u32,
        /// Batches in the epoch.
        batches: u64,
    },
    /// Batches done in the current epoch; `loss` is the running mean so far.
    Batch {
        /// 1-based epoch.
        epoch: u32,
        /// Batches done.
        batch: u64,
        /// Batches in the epoch.
        batches: u64,
        /// Running mean training loss.
        loss: f64,
        /// Throughput so far in this epoch.
        images_per_sec: f64,
    },
    /// An epoch finished (its checkpoint is written).
    Epoch(&'a EpochReport),
}

/// Options of one run that are not part of the job spec.
#[derive(Debug, Default)]
pub struct RunOptions<'a> {
    /// Continue from `checkpoint.safetensors` in the output directory when there is one.
    pub resume: bool,
    /// Set to stop within one batch; the run then returns [`Error::Cancelled`].
    pub cancel: Option<&'a AtomicBool>,
    /// Stop after this epoch even if more are planned (for tests of resume; 0 means no limit).
    pub stop_after_epoch: u32,
    /// Gather what a run report shows while the data is loaded (`trainfleet-worker train`
    /// writes one; a train task leaves the report to its eval).
    pub report: bool,
}

/// The result of a finished run.
#[derive(Debug)]
pub struct Outcome {
    /// Every epoch, including those before a resume.
    pub epochs: Vec<EpochReport>,
    /// Scores of the final weights on the test split.
    pub test: Evaluation,
    /// Why training stopped before `epochs`, if it did.
    pub stopped_early: Option<String>,
    /// The epoch whose weights were kept (the best one under early stopping, else the last).
    pub kept_epoch: u32,
    /// The last completed epoch of the checkpoint resumed from, if any.
    pub resumed_from: Option<u32>,
    /// The trained model's variables.
    pub var_store: nn::VarStore,
    /// Input geometry the model was built for.
    pub geometry: Geometry,
}

/// Trains the model `spec` describes on `dataset` (already on `device`), writing a checkpoint to
/// `out_dir` after every epoch.
pub fn train(
    spec: &JobSpec,
    dataset: &Dataset,
    device: Device,
    out_dir: &Path,
    options: &RunOptions<'_>,
    on_event: &mut dyn FnMut(&Event<'_>),
) -> Result<Outcome> {
    let t = &spec.training;
    if let Some(threads) = t.threads {
        tch::set_num_threads(threads as i32);
    }
    tch::manual_seed(t.seed as i64);
    let geometry = Geometry {
        channels: dataset.shape[0] as i64,
        height: dataset.shape[1] as i64,
        width: dataset.shape[2] as i64,
        classes: dataset.classes.len() as i64,
    };
    let mut vs = nn::VarStore::new(device);
    let model = model::build(&vs.root(), &spec.model, geometry)?;
    if let Some(path) = &spec.model.init_weights {
        vs.load(path).map_err(|e| {
            Error::Unsupported(format!(
                "model.init_weights {}: {e} (names and shapes must match this model)",
                path.display()
            ))
        })?;
    }
    let mut optimizer = Optimizer::new(&vs, t);
    let normalizer = Normalizer::new(&dataset.mean, &dataset.std, device);
    let config_hash = checkpoint::config_hash(spec);

    let mut meta = CheckpointMeta::new(config_hash.clone());
    let mut best_weights: Option<Vec<(String, Tensor)>> = None;
    let mut resumed_from = None;
    if options.resume
        && let Some(saved) = Checkpoint::read(out_dir)?
    {
        saved.restore(&config_hash, &mut vs, &mut optimizer)?;
        best_weights = saved.best_weights();
        meta = saved.meta;
        resumed_from = Some(meta.epoch);
        on_event(&Event::Resumed { epoch: meta.epoch });
    }

    let n = dataset.train.len();
    let batch = t.batch_size as usize;
    let batches = n.div_ceil(batch) as u64;
    let watch = t.early_stopping.as_ref();
    let mut stopped_early = None;
    for epoch in meta.epoch + 1..=t.epochs {
        if meta.bad_epochs > 0 && watch.is_some_and(|es| meta.bad_epochs >= es.patience) {
            break;
        }
        on_event(&Event::EpochStarted {
            epoch,
            epochs: t.epochs,
            batches,
        });
        tch::manual_seed(epoch_seed(t.seed, epoch) as i64);
        let mut order: Vec<i64> = (0..n as i64).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(t.seed);
        rng.set_stream(epoch as u64);
        order.shuffle(&mut rng);
        // Indices live with the data; a batch moves to the training device after the gather (a
        // no-op when the dataset is on that device already).
        let data_device = dataset.train.images.device();
        let order = Tensor::from_slice(&order).to_device(data_device);

        let started = Instant::now();
        let mut loss_sum = Tensor::zeros([], (Kind::Double, device));
        let mut hits = Tensor::zeros([], (Kind::Int64, device));
        let report_every = (batches / 50).max(1);
        let mut lr = t.learning_rate;
        let mut clock = PhaseClock::from_env(device);
        for b in 0..batches {
            clock.start();
            if options.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(Error::Cancelled);
            }
            let start = b as i64 * batch as i64;
            let len = (batch as i64).min(n as i64 - start);
            let idx = order.narrow(0, start, len);
            let y = dataset.train.labels.index_select(0, &idx).to_device(device);
            let mut pixels = dataset
                .train
                .images
                .index_select(0, &idx)
                .to_device(device)
                .to_kind(Kind::Float);
            if spec.dataset.augment != AugmentSpec::default() {
                pixels = augment(&pixels, &spec.dataset.augment);
            }
            let x = normalizer.apply_float(&pixels);
            clock.end(Phase::Gather);
            let logits = model.forward_t(&x, true);
            let loss = logits.cross_entropy_for_logits(&y);
            clock.end(Phase::Forward);
            optimizer.zero_grad();
            loss.backward();
            clock.end(Phase::Backward);
            if let Some(max) = t.grad_clip {
                optimizer.clip_grad_norm(max);
            }
            lr = schedule::learning_rate(t, meta.global_step, batches);
            optimizer.step(lr)?;
            meta.global_step += 1;
            tch::no_grad(|| {
                loss_sum += loss.detach().to_kind(Kind::Double) * len as f64;
                hits += logits.argmax(1, false).eq_tensor(&y).sum(Kind::Int64);
            });
            clock.end(Phase::Step);
            if (b + 1) % report_every == 0 || b + 1 == batches {
                let done = ((b + 1) * batch as u64).min(n as u64);
                on_event(&Event::Batch {
                    epoch,
                    batch: b + 1,
                    batches,
                    loss: f64::try_from(&loss_sum).unwrap_or(f64::NAN) / done as f64,
                    images_per_sec: done as f64 / started.elapsed().as_secs_f64().max(1e-9),
                });
            }
        }
        let train_seconds = started.elapsed().as_secs_f64();
        clock.report(epoch);
        let val = (!dataset.val.is_empty()).then(|| {
            metrics::evaluate(
                model.as_ref(),
                &dataset.val,
                &normalizer,
                &dataset.classes,
                EVAL_BATCH,
            )
        });
        let report = EpochReport {
            epoch,
            learning_rate: lr,
            train_loss: f64::try_from(&loss_sum).unwrap_or(f64::NAN) / n as f64,
            train_accuracy: i64::try_from(&hits).unwrap_or(0) as f64 / n as f64,
            val_loss: val.as_ref().map(|v| v.loss),
            val_accuracy: val.as_ref().map(|v| v.accuracy),
            train_seconds,
            images_per_sec: n as f64 / train_seconds.max(1e-9),
        };
        if let (Some(es), Some(v)) = (watch, &val) {
            let score = match es.metric {
                WatchedMetric::ValAccuracy => v.accuracy,
                WatchedMetric::ValLoss => -v.loss,
            };
            if meta
                .best_score
                .is_none_or(|best| score > best + es.min_delta)
            {
                meta.best_score = Some(score);
                meta.best_epoch = epoch;
                meta.bad_epochs = 0;
                best_weights = Some(copy_variables(&vs));
            } else {
                meta.bad_epochs += 1;
            }
        }
        meta.epoch = epoch;
        meta.history.push(report.clone());
        Checkpoint::write(out_dir, &meta, &vs, &optimizer, best_weights.as_deref())?;
        on_event(&Event::Epoch(&report));
        if let Some(es) = watch
            && meta.bad_epochs >= es.patience
            && epoch < t.epochs
        {
            stopped_early = Some(format!(
                "{} did not improve by more than {} for {} epoch(s); kept epoch {}",
                match es.metric {
                    WatchedMetric::ValAccuracy => "val_accuracy",
                    WatchedMetric::ValLoss => "val_loss",
                },
                es.min_delta,
                es.patience,
                meta.best_epoch
            ));
            break;
        }
        if options.stop_after_epoch == epoch {
            return Err(Error::Cancelled);
        }
    }
    if stopped_early.is_none()
        && watch.is_some()
        && meta.bad_epochs >= watch.map_or(u32::MAX, |e| e.patience)
    {
        stopped_early = Some(format!(
            "early stopping had already triggered at epoch {}",
            meta.epoch
        ));
    }
    let kept_epoch = match (&best_weights, watch) {
        (Some(best), Some(_)) => {
            restore_variables(&mut vs, best);
            meta.best_epoch
        }
        _ => meta.epoch,
    };
    let test = metrics::evaluate(
        model.as_ref(),
        &dataset.test,
        &normalizer,
        &dataset.classes,
        EVAL_BATCH,
    );
    Ok(Outcome {
        epochs: meta.history,
        test,
        stopped_early,
        kept_epoch,
        resumed_from,
        var_store: vs,
        geometry,
    })
}

fn epoch_seed(seed: u64, epoch: u32) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(epoch as u64)
}

fn copy_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    tch::no_grad(|| {
        vs.variables()
            .into_iter()
            .map(|(k, t)| (k, t.copy()))
            .collect()
    })
}

fn restore_variables(vs: &mut nn::VarStore, saved: &[(String, Tensor)]) {
    let vars = vs.variables();
    tch::no_grad(|| {
        for (name, t) in saved {
            if let Some(v) = vars.get(name) {
                v.shallow_clone().copy_(t);
            }
        }
    });
}

/// Evaluates a model on a split; a convenience for `verify` and the eval task.
pub fn evaluate_split(
    model: &dyn nn::ModuleT,
    split: &Split,
    dataset: &Dataset,
    device: Device,
) -> Evaluation {
    let normalizer = Normalizer::new(&dataset.mean, &dataset.std, device);
    metrics::evaluate(model, split, &normalizer, &dataset.classes, EVAL_BATCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn augmentation_shifts_with_zero_fill_and_mirrors() {
        tch::manual_seed(3);
        // One bright pixel in the middle of a 9×9 image, 64 copies.
        let img = Tensor::zeros([64, 1, 9, 9], (Kind::Float, Device::Cpu));
        let _ = img.narrow(2, 4, 1).narrow(3, 4, 1).fill_(255.0);
        let crop = augment(
            &img,
            &AugmentSpec {
                crop_padding: 2,
                horizontal_flip: false,
            },
        );
        assert_eq!(crop.size(), img.size());
        // Every copy still has exactly one bright pixel (integer shift, no interpolation),
        // within 2 pixels of the centre, and the shifts vary across the batch.
        let positions: Vec<i64> = Vec::try_from(crop.view([64, 81]).argmax(1, false)).unwrap();
        for &p in &positions {
            let (y, x) = (p / 9, p % 9);
            assert!(
                (2..=6).contains(&y) && (2..=6).contains(&x),
                "pixel moved to ({y}, {x})"
            );
        }
        let sums: Vec<f32> =
            Vec::try_from(crop.view([64, 81]).sum_dim_intlist(1, false, Kind::Float)).unwrap();
        assert!(sums.iter().all(|&s| s == 255.0), "{sums:?}");
        assert!(
            positions.iter().any(|&p| p != positions[0]),
            "shifts differ per sample"
        );

        let left = Tensor::zeros([64, 1, 3, 3], (Kind::Float, Device::Cpu));
        let _ = left.narrow(3, 0, 1).fill_(1.0);
        let flipped = augment(
            &left,
            &AugmentSpec {
                crop_padding: 0,
                horizontal_flip: true,
            },
        );
        let right_column: Vec<f32> = Vec::try_from(flipped.narrow(3, 2, 1).sum_dim_intlist(
            [1, 2, 3].as_slice(),
            false,
            Kind::Float,
        ))
        .unwrap();
        let mirrored = right_column.iter().filter(|&&s| s == 3.0).count();
        assert!(
            (16..48).contains(&mirrored),
            "about half mirrored: {mirrored}"
        );
    }
}
