//! Run reports: what a person opens to see how a run went.
//!
//! A [`RunReport`] holds everything a report shows: the training curves, the test evaluation,
//! the dataset version and its class distribution, sample images, the misclassified and the
//! confidently correct test images, and the comparison with the champion (with the gate's
//! decision). It is rendered three ways, all from the same data:
//!
//! - `report.html`: one self-contained page with interactive plotly charts; plotly.js and the
//!   images are embedded, so it opens from a file with no network ([`html`]);
//! - one PNG per chart, for terminals, CI artifacts and readers without JavaScript ([`png`]);
//! - `report.json`: the data itself, for `trainfleet runs` and other tools.
//!
//! [`sweep`] renders a sweep's page the same way (curves, parameters, rungs, the gate).
//!
//! [`collect`] builds the parts that need libtorch (thumbnails, predictions). Rendering is
//! pure: no tensors, no I/O besides writing the files.

pub mod build;
pub mod collect;
pub mod compare;
pub mod dataset;
pub mod html;
pub mod png;
pub mod sweep;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use trainfleet_core::gate::GateRecord;

use crate::error::{Error, Result};
use crate::metrics::ClassMetrics;
use crate::train::EpochReport;

/// File name of the HTML page in a report directory.
pub const HTML: &str = "report.html";
/// File name of the report's data in a report directory.
pub const JSON: &str = "report.json";

/// The split names, in display order.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// Left-out entries a report lists by name (a version records as many).
pub const SKIPPED_LISTED: usize = 20;

/// Where and on what a run trained.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct System {
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// libtorch intra-op threads.
    pub threads: i32,
    /// libtorch version.
    pub libtorch_version: String,
    /// trainfleet version.
    pub trainfleet_version: String,
}

/// The test split's scores.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TestScores {
    /// Samples scored.
    pub samples: u64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Top-5 accuracy, with more than 5 classes.
    pub top5_accuracy: Option<f64>,
    /// Mean per-class F1.
    pub macro_f1: f64,
    /// Per class, in class order.
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

/// A dataset version as the report shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    /// Builtin name, directory or URL.
    pub source: String,
    /// Root hash of the version trained on.
    pub root: String,
    /// Its number among the registered dataset's versions (0: not a registered dataset).
    pub version: u64,
    /// Its samples as the version counts them (0: not known; then the splits' sum is used).
    #[serde(default)]
    pub samples: u64,
    /// Samples per class for each split (`train`, `val`, `test`), in class order.
    pub counts: BTreeMap<String, Vec<u64>>,
    /// The version before it, for the growth.
    pub previous: Option<PreviousVersion>,
    /// How many entries were left out of it (by its scan, or by the loader's walk), and the
    /// first of them with why.
    #[serde(default)]
    pub skipped_count: u64,
    /// See `skipped_count`.
    #[serde(default)]
    pub skipped: Vec<(String, String)>,
}

impl DatasetSummary {
    /// Samples in the version: as registered, or else in all splits.
    pub fn total(&self) -> u64 {
        if self.samples > 0 {
            self.samples
        } else {
            self.counts.values().flatten().sum()
        }
    }

    /// Growth since the previous version, in percent of its samples.
    pub fn growth_pct(&self) -> Option<f64> {
        let previous = self.previous.as_ref()?;
        (previous.samples > 0).then(|| {
            (self.total() as f64 - previous.samples as f64) / previous.samples as f64 * 100.0
        })
    }
}

/// The version a dataset had before.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PreviousVersion {
    /// Its number.
    pub number: u64,
    /// Its root hash.
    pub root: String,
    /// Its samples.
    pub samples: u64,
}

/// One image in a grid, with what the model made of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thumb {
    /// Sample id (file path, or split and index).
    pub id: String,
    /// True class index.
    pub label: usize,
    /// Predicted class index, for test images.
    pub predicted: Option<usize>,
    /// The model's probability for its prediction.
    pub confidence: Option<f64>,
    /// The image, as PNG.
    #[serde(with = "base64_bytes")]
    pub png: Vec<u8>,
}

/// The challenger against the champion, on the same samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The champion's model id; empty for a first model.
    pub champion_id: String,
    /// Headline metrics of the challenger.
    pub challenger: BTreeMap<String, f64>,
    /// Headline metrics of the champion, when it could be scored.
    pub champion: Option<BTreeMap<String, f64>>,
    /// Why it could not be scored.
    pub champion_error: Option<String>,
    /// Per-class recall of both, in class order (the champion's empty without one).
    pub challenger_recall: Vec<f64>,
    /// See `challenger_recall`.
    pub champion_recall: Vec<f64>,
    /// Samples only the challenger got right, and only the champion.
    pub challenger_only: u64,
    /// See `challenger_only`.
    pub champion_only: u64,
    /// The gate's decision.
    pub gate: GateRecord,
}

/// Both models' scores in chart order, for the side-by-side charts.
#[derive(Debug, Clone, PartialEq)]
pub struct SideBySide {
    /// What each pair of bars is.
    pub labels: Vec<String>,
    /// The challenger's values.
    pub challenger: Vec<f64>,
    /// The champion's values.
    pub champion: Vec<f64>,
}

impl Comparison {
    /// The headline metrics both models have (loss left out: it is on another scale, and lower
    /// is better), then per-class recall; `None` when the champion was not scored.
    pub fn side_by_side(&self, classes: &[String]) -> Option<SideBySide> {
        let champion = self.champion.as_ref()?;
        let mut out = SideBySide {
            labels: Vec::new(),
            challenger: Vec::new(),
            champion: Vec::new(),
        };
        for (k, v) in &self.challenger {
            if let Some(o) = champion.get(k).filter(|_| k != "loss") {
                out.labels.push(k.clone());
                out.challenger.push(*v);
                out.champion.push(*o);
            }
        }
        if self.champion_recall.len() == classes.len() {
            for (i, class) in classes.iter().enumerate() {
                out.labels.push(format!("recall: {class}"));
                out.challenger
                    .push(self.challenger_recall.get(i).copied().unwrap_or(f64::NAN));
                out.champion.push(self.champion_recall[i]);
            }
        }
        Some(out)
    }
}

/// Everything a run's report shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The job (the run).
    pub job_id: String,
    /// The job's name.
    pub name: String,
    /// When the report was made (RFC 3339).
    pub generated_at: String,
    /// Where the run's artifacts are.
    pub run_uri: String,
    /// Architecture.
    pub model: String,
    /// The resolved job spec.
    pub config_yaml: String,
    /// Hash of the training-relevant config.
    pub config_hash: String,
    /// Device and versions.
    pub system: System,
    /// Every epoch.
    pub epochs: Vec<EpochReport>,
    /// The epoch whose weights were kept.
    pub kept_epoch: u32,
    /// Class names, by index.
    pub classes: Vec<String>,
    /// Test scores of the run's model.
    pub test: TestScores,
    /// The dataset version.
    pub dataset: DatasetSummary,
    /// Training images, a few per class.
    pub samples: Vec<Thumb>,
    /// Test images the model got wrong, most confident first.
    pub misclassified: Vec<Thumb>,
    /// Test images it got right, most confident first.
    pub confident: Vec<Thumb>,
    /// The comparison with the champion, when the run was evaluated against one (or as a
    /// first model: then `champion_id` is empty).
    pub comparison: Option<Comparison>,
}

/// What [`write`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The HTML page.
    pub html: PathBuf,
    /// Every file, HTML, JSON and PNGs, by name.
    pub files: Vec<String>,
}

/// Writes `report.html`, `report.json` and the PNGs into `dir` (each file atomically).
pub fn write(dir: &Path, report: &RunReport) -> Result<Written> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for (name, bytes) in png::render_all(report)? {
        crate::artifacts::write_atomically(&dir.join(&name), &bytes)?;
        files.push(name);
    }
    let json = serde_json::to_vec(report).expect("reports serialise");
    crate::artifacts::write_atomically(&dir.join(JSON), &json)?;
    files.push(JSON.to_owned());
    let page = html::render(report);
    crate::artifacts::write_atomically(&dir.join(HTML), page.as_bytes())?;
    files.push(HTML.to_owned());
    tracing::info!(
        dir = %dir.display(),
        files = files.len(),
        html_bytes = page.len(),
        millis = started.elapsed().as_millis() as u64,
        "report written"
    );
    Ok(Written {
        html: dir.join(HTML),
        files,
    })
}

/// Reads `report.json`.
pub fn read(path: &Path) -> Result<RunReport> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::corrupt(path, None, format!("not a trainfleet report: {e}")))
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny grey thumbnail, `shade` everywhere.
    pub fn thumb(label: usize, predicted: Option<usize>, shade: u8) -> Thumb {
        let image = image::GrayImage::from_pixel(8, 8, image::Luma([shade]));
        let mut png = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        Thumb {
            id: format!("test/{label}-{shade}"),
            label,
            predicted,
            confidence: predicted.map(|_| 0.875),
            png,
        }
    }

    /// A report as a three-class run against a champion would produce.
    pub fn sample_report() -> RunReport {
        let classes: Vec<String> = ["circle", "square", "<tri&angle>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let epochs = (1..=4)
            .map(|e| EpochReport {
                epoch: e,
                learning_rate: 0.01,
                train_loss: 1.2 / e as f64,
                train_accuracy: 0.5 + 0.1 * e as f64,
                val_loss: Some(1.3 / e as f64),
                val_accuracy: Some(0.45 + 0.1 * e as f64),
                train_seconds: 0.5,
                images_per_sec: 1000.0,
            })
            .collect();
        let confusion = vec![vec![30, 2, 1], vec![3, 25, 2], vec![0, 4, 33]];
        let test = crate::metrics::from_predictions(
            &confusion
                .iter()
                .enumerate()
                .flat_map(|(t, row)| {
                    row.iter()
                        .flat_map(move |&n| std::iter::repeat_n(t as i64, n as usize))
                })
                .collect::<Vec<_>>(),
            &confusion
                .iter()
                .flat_map(|row| {
                    row.iter()
                        .enumerate()
                        .flat_map(|(p, &n)| std::iter::repeat_n(p as i64, n as usize))
                })
                .collect::<Vec<_>>(),
            0.4,
            None,
            &classes,
        );
        let metrics = |a: f64| BTreeMap::from([("accuracy".to_owned(), a), ("macro_f1".into(), a)]);
        RunReport {
            job_id: "j-20261126-000001".into(),
            name: "shapes".into(),
            generated_at: "2026-11-26T10:00:00Z".into(),
            run_uri: "file:///tmp/runs/j-1/attempt-1".into(),
            model: "cnn".into(),
            config_yaml: "name: shapes\nmodel: {name: cnn}\n".into(),
            config_hash: "ab".repeat(32),
            system: System {
                device: "cpu".into(),
                threads: 2,
                libtorch_version: "2.13.0".into(),
                trainfleet_version: "0.1.0".into(),
            },
            epochs,
            kept_epoch: 4,
            test: TestScores {
                samples: test.samples,
                loss: test.loss,
                accuracy: test.accuracy,
                top5_accuracy: None,
                macro_f1: test.macro_f1,
                per_class: test.per_class,
                confusion,
            },
            dataset: DatasetSummary {
                source: "/data/shapes".into(),
                root: "cd".repeat(32),
                version: 3,
                samples: 0,
                counts: BTreeMap::from([
                    ("train".into(), vec![100, 90, 110]),
                    ("val".into(), vec![10, 9, 11]),
                    ("test".into(), vec![33, 30, 37]),
                ]),
                previous: Some(PreviousVersion {
                    number: 2,
                    root: "ef".repeat(32),
                    samples: 300,
                }),
                skipped_count: 0,
                skipped: Vec::new(),
            },
            samples: (0..3)
                .flat_map(|c| (0..2).map(move |i| thumb(c, None, 40 * (c + i) as u8 + 20)))
                .collect(),
            misclassified: vec![thumb(0, Some(1), 200), thumb(2, Some(1), 90)],
            confident: vec![thumb(1, Some(1), 150)],
            classes,
            comparison: Some(Comparison {
                champion_id: "m-20261125-000003".into(),
                challenger: metrics(0.88),
                champion: Some(metrics(0.81)),
                champion_error: None,
                challenger_recall: vec![0.9, 0.85, 0.9],
                champion_recall: vec![0.8, 0.8, 0.83],
                challenger_only: 12,
                champion_only: 3,
                gate: GateRecord {
                    promoted: true,
                    reasons: vec![
                        "accuracy 0.8800 beats champion m-3 (0.8100 + min_delta 0)".into(),
                    ],
                    metric: "accuracy".into(),
                    challenger_value: 0.88,
                    champion_value: 0.81,
                    champion_id: "m-20261125-000003".into(),
                    mcnemar: Some(trainfleet_core::gate::Mcnemar {
                        challenger_only: 12,
                        champion_only: 3,
                        p_value: 0.035,
                    }),
                },
            }),
        }
    }

    #[test]
    fn growth_is_measured_from_the_previous_version() {
        let r = sample_report();
        assert_eq!(r.dataset.total(), 430);
        assert!((r.dataset.growth_pct().unwrap() - 130.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn the_json_round_trips_images_included() {
        let r = sample_report();
        let back: RunReport = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn write_puts_the_page_the_data_and_every_png_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let written = write(dir.path(), &sample_report()).unwrap();
        for name in &written.files {
            assert!(dir.path().join(name).is_file(), "{name}");
        }
        assert!(written.files.iter().any(|f| f == "curves.png"));
        assert_eq!(read(&dir.path().join(JSON)).unwrap(), sample_report());
    }
}
