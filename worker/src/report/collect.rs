//! The parts of a report that come from tensors: thumbnails of samples, the class counts of
//! each split, and which test images to show (from the model's predictions).

use std::collections::BTreeMap;

use tch::{Device, Kind};

use super::{TestScores, Thumb};
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::metrics::Evaluation;

/// Training samples shown per class.
pub const SAMPLES_PER_CLASS: usize = 8;
/// Misclassified and confidently correct test images shown.
pub const TEST_IMAGES: usize = 24;

/// Encodes sample `index` of `split` (u8, channels × height × width) as PNG.
pub fn thumbnail_png(split: &Split, index: usize) -> Result<Vec<u8>> {
    let image = split
        .images
        .get(index as i64)
        .to_device(Device::Cpu)
        .to_kind(Kind::Uint8)
        .contiguous();
    let shape = image.size();
    let (c, h, w) = match shape.as_slice() {
        [c, h, w] => (*c, *h as u32, *w as u32),
        other => return Err(Error::Report(format!("an image of shape {other:?}"))),
    };
    let chw: Vec<u8> = Vec::try_from(image.flatten(0, -1))?;
    let plane = (h * w) as usize;
    let mut png = Vec::new();
    let mut cursor = std::io::Cursor::new(&mut png);
    let written = match c {
        1 => image::GrayImage::from_raw(w, h, chw)
            .expect("one plane")
            .write_to(&mut cursor, image::ImageFormat::Png),
        3 => {
            let mut hwc = Vec::with_capacity(chw.len());
            for i in 0..plane {
                hwc.extend([chw[i], chw[plane + i], chw[2 * plane + i]]);
            }
            image::RgbImage::from_raw(w, h, hwc)
                .expect("three planes")
                .write_to(&mut cursor, image::ImageFormat::Png)
        }
        n => return Err(Error::Report(format!("images with {n} channels"))),
    };
    written.map_err(|e| Error::Report(format!("cannot encode a thumbnail: {e}")))?;
    Ok(png)
}

/// The first `per_class` samples of each class: from the training split, topped up from the
/// validation and test splits for a class with fewer training samples.
pub fn samples(dataset: &Dataset, per_class: usize) -> Result<Vec<Thumb>> {
    let mut taken = vec![0usize; dataset.classes.len()];
    let mut thumbs = Vec::new();
    for split in [&dataset.train, &dataset.val, &dataset.test] {
        if split.is_empty() {
            continue;
        }
        let labels: Vec<i64> = Vec::try_from(split.labels.to_device(Device::Cpu))?;
        for (i, &label) in labels.iter().enumerate() {
            let slot = &mut taken[label as usize];
            if *slot >= per_class {
                continue;
            }
            *slot += 1;
            thumbs.push(Thumb {
                id: split.ids[i].clone(),
                label: label as usize,
                predicted: None,
                confidence: None,
                png: thumbnail_png(split, i)?,
            });
            if taken.iter().all(|&t| t >= per_class) {
                break;
            }
        }
    }
    thumbs.sort_by_key(|t| t.label);
    Ok(thumbs)
}

/// Samples per class in each non-empty split.
pub fn counts(dataset: &Dataset) -> Result<BTreeMap<String, Vec<u64>>> {
    let mut out = BTreeMap::new();
    for (name, split) in [
        ("train", &dataset.train),
        ("val", &dataset.val),
        ("test", &dataset.test),
    ] {
        if split.is_empty() {
            continue;
        }
        let labels: Vec<i64> = Vec::try_from(split.labels.to_device(Device::Cpu))?;
        let mut counts = vec![0u64; dataset.classes.len()];
        for l in labels {
            counts[l as usize] += 1;
        }
        out.insert(name.to_owned(), counts);
    }
    Ok(out)
}

/// Test images the model got wrong (`correct == false`) or right, most confident first, at most
/// `limit`, with their prediction and confidence.
pub fn test_images(
    test: &Split,
    evaluation: &Evaluation,
    correct: bool,
    limit: usize,
) -> Result<Vec<Thumb>> {
    let labels: Vec<i64> = Vec::try_from(test.labels.to_device(Device::Cpu))?;
    let mut chosen: Vec<usize> = (0..evaluation.correct.len())
        .filter(|&i| evaluation.correct[i] == correct)
        .collect();
    let confidence = |i: usize| evaluation.confidence.get(i).copied().unwrap_or(0.0);
    chosen.sort_by(|&a, &b| confidence(b).total_cmp(&confidence(a)).then(a.cmp(&b)));
    chosen.truncate(limit);
    chosen
        .into_iter()
        .map(|i| {
            Ok(Thumb {
                id: test.ids[i].clone(),
                label: labels[i] as usize,
                predicted: evaluation.predicted.get(i).map(|&p| p as usize),
                confidence: evaluation.confidence.get(i).map(|&c| c as f64),
                png: thumbnail_png(test, i)?,
            })
        })
        .collect()
}

/// The report's view of an evaluation.
pub fn scores(e: &Evaluation) -> TestScores {
    TestScores {
        samples: e.samples,
        loss: e.loss,
        accuracy: e.accuracy,
        top5_accuracy: e.top5_accuracy,
        macro_f1: e.macro_f1,
        per_class: e.per_class.clone(),
        confusion: e.confusion.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    fn split() -> Split {
        // Four 2×2 RGB images: sample i has every pixel = 10·i, channel c adds c.
        let pixels: Vec<u8> = (0..4u8)
            .flat_map(|i| (0..3u8).flat_map(move |c| std::iter::repeat_n(10 * i + c, 4)))
            .collect();
        Split {
            images: Tensor::from_slice(&pixels).view([4, 3, 2, 2]),
            labels: Tensor::from_slice(&[0i64, 1, 0, 1]),
            ids: (0..4).map(|i| format!("test/{i}")).collect(),
        }
    }

    #[test]
    fn a_thumbnail_is_the_sample_as_png_channels_interleaved() {
        let png = thumbnail_png(&split(), 2).unwrap();
        let image = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (2, 2));
        assert_eq!(image.get_pixel(1, 1).0, [20, 21, 22]);
    }

    #[test]
    fn misclassified_images_come_most_confident_first() {
        let classes = vec!["a".to_owned(), "b".to_owned()];
        let mut e =
            crate::metrics::from_predictions(&[0, 1, 0, 1], &[1, 1, 1, 0], 0.1, None, &classes);
        e.confidence = vec![0.6, 0.99, 0.9, 0.7];
        let wrong = test_images(&split(), &e, false, 2).unwrap();
        let ids: Vec<&str> = wrong.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["test/2", "test/3"]);
        assert_eq!((wrong[0].label, wrong[0].predicted), (0, Some(1)));
        assert!((wrong[0].confidence.unwrap() - 0.9).abs() < 1e-6);
        let right = test_images(&split(), &e, true, 5).unwrap();
        assert_eq!(right.len(), 1);
        assert_eq!(right[0].id, "test/1");
    }
}
