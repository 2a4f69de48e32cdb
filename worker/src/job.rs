//! A training job from spec to artifacts, and the verification of a saved model: what
//! `trainfleet-worker train` and `verify` run, and what a train task will run on a worker.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use sha2::{Digest, Sha256};
use tch::{Device, nn};
use trainfleet_core::job::JobSpec;

use crate::artifacts::{self, ModelCard};
use crate::data::{self, Dataset};
use crate::error::{Error, Result};
use crate::model;
use crate::train::{self, Event, RunOptions};

/// The outcome of [`run`].
#[derive(Debug)]
pub struct Trained {
    /// The model card written.
    pub card: ModelCard,
    /// Epoch reports, test evaluation and the rest.
    pub outcome: train::Outcome,
    /// Seconds spent loading (and generating or downloading) the dataset.
    pub load_seconds: f64,
    /// What a report shows of the run (with [`RunOptions::report`]), or why it could not be
    /// gathered.
    pub report_parts: Option<std::result::Result<ReportParts, String>>,
}

/// Loads the dataset, trains, evaluates and writes the artifacts to `out_dir`.
pub fn run(
    spec: &JobSpec,
    data: &data::DataSettings,
    out_dir: &Path,
    options: &RunOptions<'_>,
    on_event: &mut dyn FnMut(&Event<'_>),
) -> Result<Trained> {
    spec.validate()?;
    let device = train::resolve_device(spec)?;
    let started = Instant::now();
    let loaded = data::load_with(&spec.dataset, &data.dir, &data.downloader)?;
    let placement = data_placement(&loaded, device);
    let dataset = loaded.to_device(placement);
    let load_seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        source = %dataset.identity.source,
        train = dataset.train.len(),
        val = dataset.val.len(),
        test = dataset.test.len(),
        device = %train::device_name(device),
        data_on = %train::device_name(placement),
        load_seconds,
        "dataset ready"
    );
    let outcome = train::train(spec, &dataset, device, out_dir, options, on_event)?;
    let card = artifacts::write(out_dir, spec, &dataset, &outcome, device)?;
    let report_parts = options
        .report
        .then(|| report_parts(&dataset, &outcome.test).map_err(|e| e.to_string()));
    Ok(Trained {
        card,
        outcome,
        load_seconds,
        report_parts,
    })
}

/// Where the dataset's tensors live: on the training device when they take at most half of its
/// memory (or when its memory is unknown), else in host memory, with each batch copied over.
fn data_placement(dataset: &Dataset, device: Device) -> Device {
    let Device::Cuda(index) = device else {
        return device;
    };
    let bytes: i64 = [&dataset.train, &dataset.val, &dataset.test]
        .iter()
        .map(|s| s.images.numel() as i64 + 8 * s.labels.numel() as i64)
        .sum();
    let memory = crate::devices::detect()
        .into_iter()
        .find(|d| d.kind == trainfleet_core::device::DeviceKind::Cuda && d.index as usize == index)
        .map_or(0, |d| d.memory_bytes);
    if memory > 0 && bytes as u64 > memory / 2 {
        tracing::warn!(
            dataset_bytes = bytes,
            device_memory = memory,
            "dataset does not fit comfortably on the GPU; keeping it in host memory"
        );
        Device::Cpu
    } else {
        device
    }
}

/// The result of [`verify`].
#[derive(Debug)]
pub struct Verified {
    /// The model card.
    pub card: ModelCard,
    /// Test samples re-evaluated.
    pub samples: usize,
    /// Of those, predictions whose correctness matches what training recorded.
    pub matching: usize,
    /// Accuracy on those samples now.
    pub accuracy: f64,
}

/// Reloads the model in `dir`, checks its weights' sha256, rebuilds it from its card and
/// re-evaluates it on the first `samples` test samples, comparing with the recorded results.
pub fn verify(dir: &Path, data: &data::DataSettings, samples: usize) -> Result<Verified> {
    let Loaded { card, _vs, model } = load_model(dir, Device::Cpu)?;
    let spec_path = dir.join(artifacts::CONFIG);
    let spec = JobSpec::from_file(&spec_path)?;
    let dataset: Dataset = data::load_with(&spec.dataset, &data.dir, &data.downloader)?;
    if dataset.identity.root_sha256 != card.dataset.root_sha256 {
        return Err(Error::Unsupported(format!(
            "the dataset now at {} differs from the one the model was tested on (root {} vs {}); \
             verification needs the same data",
            dataset.identity.source,
            &dataset.identity.root_sha256[..12],
            &card.dataset.root_sha256[..12]
        )));
    }
    let n = samples.min(dataset.test.len());
    let subset = data::Split {
        images: dataset.test.images.narrow(0, 0, n as i64),
        labels: dataset.test.labels.narrow(0, 0, n as i64),
        ids: dataset.test.ids[..n].to_vec(),
    };
    let evaluation = train::evaluate_split(model.as_ref(), &subset, &dataset, Device::Cpu);
    let recorded = artifacts::read_metrics(dir)?.test.correct;
    let matching = evaluation
        .correct
        .iter()
        .zip(&recorded)
        .filter(|(a, b)| a == b)
        .count();
    Ok(Verified {
        card,
        samples: n,
        matching,
        accuracy: evaluation.accuracy,
    })
}

/// What an eval task measured: both models on the challenger's dataset test split, same
/// samples, same order.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PairScores {
    /// Test samples scored (for both models).
    pub samples: u64,
    /// sha256 over the test split's images and labels in order: the identity of the samples.
    pub sample_digest: String,
    /// Root hash of the dataset.
    pub dataset_root: String,
    /// The challenger's metrics.
    pub challenger: BTreeMap<String, f64>,
    /// The champion's metrics; `None` when there is no champion or it could not be scored.
    pub champion: Option<BTreeMap<String, f64>>,
    /// Why the champion could not be scored.
    pub champion_error: Option<String>,
    /// Class names, in the order of the recall vectors.
    pub classes: Vec<String>,
    /// Per-class recall of the challenger.
    pub challenger_recall: Vec<f64>,
    /// Per-class recall of the champion (empty without one).
    pub champion_recall: Vec<f64>,
    /// Paired correctness on the same samples (McNemar's discordant pairs): samples only the
    /// challenger got right, and samples only the champion got right.
    pub challenger_only: u64,
    /// See `challenger_only`.
    pub champion_only: u64,
    /// Every scored sample's id, in the order both models saw them (written to the eval's
    /// `samples.json`, not sent in the result).
    #[serde(skip)]
    pub sample_ids: Vec<String>,
    /// Whether the challenger got each sample right.
    #[serde(skip)]
    pub challenger_correct: Vec<bool>,
    /// Whether the champion got each sample right (empty without one).
    #[serde(skip)]
    pub champion_correct: Vec<bool>,
    /// What the run's report shows of the challenger, or why it could not be gathered (not sent
    /// in the result; a report that cannot be made never fails the eval).
    #[serde(skip)]
    pub report_parts: std::result::Result<ReportParts, String>,
}

/// The challenger's side of a run report, gathered while the data is loaded.
#[derive(Debug, Clone)]
pub struct ReportParts {
    /// Its full evaluation on the test split (confusion, per class, predictions).
    pub evaluation: crate::metrics::Evaluation,
    /// Samples per class in each split.
    pub counts: BTreeMap<String, Vec<u64>>,
    /// Training images, a few per class.
    pub samples: Vec<crate::report::Thumb>,
    /// Test images it got wrong, most confident first.
    pub misclassified: Vec<crate::report::Thumb>,
    /// Test images it got right, most confident first.
    pub confident: Vec<crate::report::Thumb>,
    /// Where the data came from.
    pub source: String,
    /// What the loader left out of an image folder it walked, and why.
    pub skipped: Vec<(String, String)>,
}

fn report_parts(dataset: &Dataset, evaluation: &crate::metrics::Evaluation) -> Result<ReportParts> {
    use crate::report::collect;
    Ok(ReportParts {
        evaluation: evaluation.clone(),
        counts: collect::counts(dataset)?,
        samples: collect::samples(dataset, collect::SAMPLES_PER_CLASS)?,
        misclassified: collect::test_images(
            &dataset.test,
            evaluation,
            false,
            collect::TEST_IMAGES,
        )?,
        confident: collect::test_images(&dataset.test, evaluation, true, collect::TEST_IMAGES)?,
        source: dataset.identity.source.clone(),
        skipped: dataset.identity.skipped.clone(),
    })
}

/// A saved model, loaded after checking its weights against the card.
struct Loaded {
    card: ModelCard,
    _vs: nn::VarStore,
    model: Box<dyn nn::ModuleT>,
}

fn load_model(dir: &Path, device: Device) -> Result<Loaded> {
    let card = artifacts::read_card(dir)?;
    let weights = dir.join(&card.weights_file);
    let (_, sha) = data::file_sha256(&weights)?;
    if sha != card.weights_sha256 {
        return Err(Error::Checksum {
            file: weights.display().to_string(),
            url: dir.join(artifacts::MODEL_CARD).display().to_string(),
            expected: card.weights_sha256.clone(),
            got: sha,
            action: "the weights were modified after training; refusing to load them",
        });
    }
    let mut vs = nn::VarStore::new(device);
    let model = model::build(&vs.root(), &card.model, card.geometry)?;
    vs.load(&weights)?;
    Ok(Loaded {
        card,
        _vs: vs,
        model,
    })
}

fn headline(e: &crate::metrics::Evaluation) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::from([
        ("accuracy".to_owned(), e.accuracy),
        ("loss".to_owned(), e.loss),
        ("macro_f1".to_owned(), e.macro_f1),
    ]);
    if let Some(top5) = e.top5_accuracy {
        m.insert("top5_accuracy".to_owned(), top5);
    }
    m
}

/// Scores the challenger in `challenger_dir` and the champion in `champion_dir` (if any) on the
/// challenger's test split. The champion is scored with its own normalisation; one it cannot be
/// scored (other classes or input shape) is reported, not fatal.
pub fn evaluate_pair(
    challenger_dir: &Path,
    champion_dir: Option<&Path>,
    data: &data::DataSettings,
) -> Result<PairScores> {
    let spec = JobSpec::from_file(&challenger_dir.join(artifacts::CONFIG))?;
    let device = train::resolve_device(&spec)?;
    let challenger = load_model(challenger_dir, device)?;
    let loaded = data::load_with(&spec.dataset, &data.dir, &data.downloader)?;
    if loaded.identity.root_sha256 != challenger.card.dataset.root_sha256 {
        return Err(Error::Unsupported(format!(
            "the dataset at {} changed since the challenger was trained (root {} vs {}); \
             refusing to score it on different data",
            loaded.identity.source,
            &loaded.identity.root_sha256[..12],
            &challenger.card.dataset.root_sha256[..12]
        )));
    }
    let test = loaded.test.to_device(device);
    let mut digest = Sha256::new();
    let images: Vec<u8> = Vec::try_from(loaded.test.images.flatten(0, -1))?;
    let labels: Vec<i64> = Vec::try_from(loaded.test.labels.flatten(0, -1))?;
    digest.update(&images);
    for l in &labels {
        digest.update(l.to_le_bytes());
    }
    let sample_digest = data::hex(&digest.finalize());
    let score = |m: &Loaded| {
        let n = &m.card.normalization;
        let normalizer = train::Normalizer::new(&n.mean, &n.std, device);
        crate::metrics::evaluate(m.model.as_ref(), &test, &normalizer, &loaded.classes, 512)
    };
    let challenger_eval = score(&challenger);
    let (champion, champion_error) = match champion_dir {
        None => (None, None),
        Some(dir) => match load_model(dir, device) {
            Err(e) => (None, Some(format!("cannot load it: {e}"))),
            Ok(m) if m.card.classes != loaded.classes => (
                None,
                Some(format!(
                    "it knows {} classes, the data has {}",
                    m.card.classes.len(),
                    loaded.classes.len()
                )),
            ),
            Ok(m) if m.card.geometry != challenger.card.geometry => (
                None,
                Some(format!(
                    "it takes {:?} inputs, the data is {:?}",
                    m.card.geometry, challenger.card.geometry
                )),
            ),
            Ok(m) => (Some(score(&m)), None),
        },
    };
    let report_parts = report_parts(&loaded, &challenger_eval).map_err(|e| e.to_string());
    let recall = |e: &crate::metrics::Evaluation| e.per_class.iter().map(|c| c.recall).collect();
    let (mut challenger_only, mut champion_only) = (0, 0);
    if let Some(champ) = &champion {
        for (a, b) in challenger_eval.correct.iter().zip(&champ.correct) {
            match (a, b) {
                (true, false) => challenger_only += 1,
                (false, true) => champion_only += 1,
                _ => {}
            }
        }
    }
    Ok(PairScores {
        samples: challenger_eval.samples,
        sample_digest,
        dataset_root: loaded.identity.root_sha256.clone(),
        challenger: headline(&challenger_eval),
        champion: champion.as_ref().map(headline),
        champion_error,
        classes: loaded.classes.clone(),
        challenger_recall: recall(&challenger_eval),
        champion_recall: champion.as_ref().map(recall).unwrap_or_default(),
        challenger_only,
        champion_only,
        sample_ids: loaded.test.ids.clone(),
        champion_correct: champion.map(|c| c.correct).unwrap_or_default(),
        challenger_correct: challenger_eval.correct,
        report_parts,
    })
}
