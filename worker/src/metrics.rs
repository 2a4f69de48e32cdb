//! Evaluation: accuracy, top-5, loss, per-class precision/recall/F1, macro-F1, the confusion
//! matrix, and the per-sample correctness vector that the paired significance test of the
//! promotion gate needs (same samples, same order, for champion and challenger).

use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

use crate::data::Split;
use crate::train::Normalizer;

/// One class's scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Class name.
    pub name: String,
    /// Of the samples predicted as this class, the share that are.
    pub precision: f64,
    /// Of the samples of this class, the share found.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Samples of this class.
    pub support: u64,
}

/// A model's scores on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Samples scored.
    pub samples: u64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Top-5 accuracy, when there are more than 5 classes.
    pub top5_accuracy: Option<f64>,
    /// Mean of the per-class F1 scores.
    pub macro_f1: f64,
    /// Per class, in class order.
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
    /// Whether each sample (in split order) was classified correctly.
    pub correct: Vec<bool>,
    /// The predicted class of each sample, in split order (not saved: reports use it).
    #[serde(skip)]
    pub predicted: Vec<i64>,
    /// The softmax probability of each prediction, when the model was run (not saved).
    #[serde(skip)]
    pub confidence: Vec<f32>,
}

/// Scores `model` on `split` in order, in batches of `batch_size`, without gradients.
pub fn evaluate(
    model: &dyn tch::nn::ModuleT,
    split: &Split,
    normalizer: &Normalizer,
    classes: &[String],
    batch_size: i64,
) -> Evaluation {
    let n = split.len() as i64;
    let k = classes.len();
    if n == 0 {
        return from_predictions(&[], &[], 0.0, None, classes);
    }
    // Batches go to the normaliser's (the model's) device, wherever the split is kept.
    let device = normalizer.device();
    let (loss_sum, predictions, confidences, top5_hits) = tch::no_grad(|| {
        let mut loss_sum = Tensor::zeros([], (Kind::Double, device));
        let mut top5_hits = Tensor::zeros([], (Kind::Int64, device));
        let mut predictions = Vec::new();
        let mut confidences = Vec::new();
        let mut start = 0;
        while start < n {
            let len = batch_size.min(n - start);
            let x = normalizer.apply(&split.images.narrow(0, start, len).to_device(device));
            let y = split.labels.narrow(0, start, len).to_device(device);
            let logits = model.forward_t(&x, false);
            loss_sum += logits
                .cross_entropy_loss::<Tensor>(&y, None, Reduction::Sum, -100, 0.0)
                .to_kind(Kind::Double);
            if k > 5 {
                let (_, top) = logits.topk(5, 1, true, true);
                top5_hits += top
                    .eq_tensor(&y.unsqueeze(1))
                    .any_dim(1, false)
                    .sum(Kind::Int64);
            }
            let (confidence, predicted) = logits.softmax(1, Kind::Float).max_dim(1, false);
            predictions.push(predicted);
            confidences.push(confidence);
            start += len;
        }
        (
            loss_sum,
            Tensor::cat(&predictions, 0),
            Tensor::cat(&confidences, 0),
            top5_hits,
        )
    });
    let predicted =
        Vec::<i64>::try_from(predictions.to_device(tch::Device::Cpu)).unwrap_or_default();
    let truth = Vec::<i64>::try_from(split.labels.to_device(tch::Device::Cpu)).unwrap_or_default();
    let loss = f64::try_from(loss_sum).unwrap_or(f64::NAN) / n as f64;
    let top5 = (k > 5).then(|| i64::try_from(top5_hits).unwrap_or(0) as f64 / n as f64);
    let mut evaluation = from_predictions(&truth, &predicted, loss, top5, classes);
    evaluation.confidence =
        Vec::<f32>::try_from(confidences.to_device(tch::Device::Cpu)).unwrap_or_default();
    evaluation
}

/// Builds an evaluation from true and predicted labels.
pub fn from_predictions(
    truth: &[i64],
    predicted: &[i64],
    loss: f64,
    top5: Option<f64>,
    classes: &[String],
) -> Evaluation {
    let k = classes.len();
    let mut confusion = vec![vec![0u64; k]; k];
    let mut correct = Vec::with_capacity(truth.len());
    for (&t, &p) in truth.iter().zip(predicted) {
        confusion[t as usize][p as usize] += 1;
        correct.push(t == p);
    }
    let per_class: Vec<ClassMetrics> = (0..k)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let support: u64 = confusion[c].iter().sum();
            let predicted_c: u64 = confusion.iter().map(|row| row[c]).sum();
            let precision = if predicted_c > 0 {
                tp / predicted_c as f64
            } else {
                0.0
            };
            let recall = if support > 0 {
                tp / support as f64
            } else {
                0.0
            };
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassMetrics {
                name: classes[c].clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    let hits = correct.iter().filter(|&&c| c).count();
    Evaluation {
        samples: truth.len() as u64,
        loss,
        accuracy: if truth.is_empty() {
            0.0
        } else {
            hits as f64 / truth.len() as f64
        },
        top5_accuracy: top5,
        macro_f1: if k == 0 {
            0.0
        } else {
            per_class.iter().map(|c| c.f1).sum::<f64>() / k as f64
        },
        per_class,
        confusion,
        correct,
        predicted: predicted.to_vec(),
        confidence: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_class_scores_from_a_known_confusion() {
        let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        // a: 2 right, 1 as b; b: 1 right; c: 1 as a.
        let truth = [0, 0, 0, 1, 2];
        let predicted = [0, 0, 1, 1, 0];
        let e = from_predictions(&truth, &predicted, 0.5, None, &classes);
        assert_eq!(
            e.confusion,
            vec![vec![2, 1, 0], vec![0, 1, 0], vec![1, 0, 0]]
        );
        assert_eq!(e.correct, vec![true, true, false, true, false]);
        assert!((e.accuracy - 0.6).abs() < 1e-12);
        let a = &e.per_class[0];
        assert!((a.precision - 2.0 / 3.0).abs() < 1e-12 && (a.recall - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(e.per_class[2].f1, 0.0);
        let expected_macro = (2.0 / 3.0 + 2.0 / 3.0 + 0.0) / 3.0;
        assert!(
            (e.macro_f1 - expected_macro).abs() < 1e-12,
            "{}",
            e.macro_f1
        );
    }
}
