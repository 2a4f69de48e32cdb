//! `synth-digits`: a deterministic procedural generator of 28×28 handwritten-style digits, the
//! offline dataset for demos, tests and benches.
//!
//! Each digit is a few strokes (polylines and elliptic arcs) in a unit box. Every sample gets its
//! own jitter of the control points, a random affine transform (rotation, anisotropic scale,
//! shear, shift), stroke thickness and ink, is rendered with anti-aliased edges, then gets pixel
//! noise. Sample `i` depends only on (seed, split, i), so the files are byte-identical for a given
//! seed whatever the thread count. Output is IDX, so it flows through the same loader as MNIST.

use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use trainfleet_core::job::SynthSpec;

use crate::data::idx;
use crate::error::{Error, Result};

/// Bumped whenever rendering changes, so cached files of an older generator are not reused.
pub const GENERATOR_VERSION: u32 = 2;
/// Image side in pixels.
pub const SIZE: usize = 28;

type Stroke = Vec<(f64, f64)>;

fn arc(cx: f64, cy: f64, rx: f64, ry: f64, from_deg: f64, to_deg: f64) -> Stroke {
    let steps = (((to_deg - from_deg).abs() / 12.0).ceil() as usize).max(2);
    (0..=steps)
        .map(|i| {
            let t = (from_deg + (to_deg - from_deg) * i as f64 / steps as f64) * PI / 180.0;
            (cx + rx * t.cos(), cy + ry * t.sin())
        })
        .collect()
}

/// Strokes of `digit` in a unit box (x right, y down), with a per-sample style choice.
fn template(digit: u8, rng: &mut ChaCha8Rng) -> Vec<Stroke> {
    match digit {
        0 => vec![arc(0.5, 0.5, 0.27, 0.38, 0.0, 360.0)],
        1 => {
            let mut strokes = vec![vec![(0.52, 0.12), (0.5, 0.88)]];
            if rng.random_bool(0.7) {
                strokes.push(vec![(0.34, 0.28), (0.52, 0.12)]);
            }
            if rng.random_bool(0.3) {
                strokes.push(vec![(0.36, 0.88), (0.66, 0.88)]);
            }
            strokes
        }
        2 => {
            let mut top = arc(0.5, 0.33, 0.25, 0.21, 200.0, 390.0);
            top.extend([(0.24, 0.86), (0.8, 0.86)]);
            vec![top]
        }
        3 => {
            let mut s = arc(0.47, 0.31, 0.24, 0.19, -160.0, 90.0);
            s.extend(arc(0.47, 0.69, 0.27, 0.19, -90.0, 160.0));
            vec![s]
        }
        4 => {
            if rng.random_bool(0.5) {
                vec![vec![(0.6, 0.88), (0.6, 0.12), (0.2, 0.64), (0.82, 0.64)]]
            } else {
                vec![
                    vec![(0.3, 0.12), (0.24, 0.56), (0.8, 0.56)],
                    vec![(0.64, 0.3), (0.64, 0.9)],
                ]
            }
        }
        5 => {
            let mut s = vec![(0.74, 0.13), (0.33, 0.13), (0.29, 0.46)];
            s.extend(arc(0.5, 0.66, 0.26, 0.23, -135.0, 140.0));
            vec![s]
        }
        6 => {
            let mut s = vec![(0.68, 0.12), (0.46, 0.26), (0.32, 0.46), (0.28, 0.66)];
            s.extend(arc(0.5, 0.67, 0.22, 0.2, 180.0, 540.0));
            vec![s]
        }
        7 => {
            let mut strokes = vec![vec![(0.2, 0.14), (0.8, 0.14), (0.42, 0.88)]];
            if rng.random_bool(0.25) {
                strokes.push(vec![(0.4, 0.5), (0.72, 0.5)]);
            }
            strokes
        }
        8 => vec![
            arc(0.5, 0.3, 0.19, 0.17, 0.0, 360.0),
            arc(0.5, 0.69, 0.24, 0.2, 0.0, 360.0),
        ],
        _ => {
            let mut s = arc(0.49, 0.33, 0.22, 0.2, 0.0, 360.0);
            s.extend([(0.71, 0.33), (0.62, 0.88)]);
            vec![s]
        }
    }
}

/// Renders one sample.
pub fn render(digit: u8, rng: &mut ChaCha8Rng) -> [u8; SIZE * SIZE] {
    let strokes = template(digit, rng);
    let angle = rng.random_range(-18.0f64..18.0).to_radians();
    let (sx, sy) = (rng.random_range(0.72..1.1), rng.random_range(0.78..1.1));
    let shear = rng.random_range(-0.3..0.3);
    let (tx, ty) = (rng.random_range(-0.09..0.09), rng.random_range(-0.07..0.07));
    let thickness = rng.random_range(1.2..3.3); // pixels
    let softness = rng.random_range(0.6..1.6); // pixels of edge falloff
    let ink = rng.random_range(0.65..1.0);
    let jitter = 0.035;
    // Elastic distortion: a smooth random displacement field (two low-frequency waves per axis).
    let waves: Vec<(f64, f64, f64, f64)> = (0..4)
        .map(|_| {
            (
                rng.random_range(-0.045..0.045),
                rng.random_range(1.5..4.5),
                rng.random_range(1.5..4.5),
                rng.random_range(0.0..2.0 * PI),
            )
        })
        .collect();
    let warp = |(x, y): (f64, f64)| {
        let wave = |(a, fx, fy, phase): (f64, f64, f64, f64)| {
            a * (fx * x + phase).sin() * (fy * y + phase).cos()
        };
        (
            x + wave(waves[0]) + wave(waves[1]),
            y + wave(waves[2]) + wave(waves[3]),
        )
    };
    let (sin, cos) = angle.sin_cos();
    let to_pixels = |(x, y): (f64, f64)| {
        let (x, y) = warp((x, y));
        let (x, y) = (x - 0.5, y - 0.5);
        let (x, y) = (x * sx + shear * y, y * sy);
        let (x, y) = (x * cos - y * sin, x * sin + y * cos);
        ((x + 0.5 + tx) * SIZE as f64, (y + 0.5 + ty) * SIZE as f64)
    };
    let mut canvas = [0f64; SIZE * SIZE];
    for stroke in &strokes {
        // Densify so the warp bends straight segments too.
        let mut dense = Vec::new();
        for pair in stroke.windows(2) {
            for k in 0..4 {
                let t = k as f64 / 4.0;
                dense.push((
                    pair[0].0 + (pair[1].0 - pair[0].0) * t,
                    pair[0].1 + (pair[1].1 - pair[0].1) * t,
                ));
            }
        }
        dense.push(*stroke.last().expect("strokes have points"));
        let points: Vec<(f64, f64)> = dense
            .iter()
            .map(|&(x, y)| {
                to_pixels((
                    x + rng.random_range(-jitter..jitter) * 0.5,
                    y + rng.random_range(-jitter..jitter) * 0.5,
                ))
            })
            .collect();
        for pair in points.windows(2) {
            draw_segment(
                &mut canvas,
                pair[0],
                pair[1],
                thickness / 2.0,
                softness,
                ink,
            );
        }
    }
    if rng.random_bool(0.12) {
        // A stray mark, as on scanned forms.
        let a = (
            rng.random_range(0.0..SIZE as f64),
            rng.random_range(0.0..SIZE as f64),
        );
        let b = (
            a.0 + rng.random_range(-6.0..6.0),
            a.1 + rng.random_range(-6.0..6.0),
        );
        draw_segment(
            &mut canvas,
            a,
            b,
            rng.random_range(0.5..1.2),
            1.0,
            ink * rng.random_range(0.4..1.0),
        );
    }
    if rng.random_bool(0.15) {
        // Occlusion: a patch of the digit is missing.
        let (w, h) = (rng.random_range(3..8), rng.random_range(3..8));
        let (x0, y0) = (
            rng.random_range(4..SIZE - 4 - w),
            rng.random_range(4..SIZE - 4 - h),
        );
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                canvas[y * SIZE + x] = 0.0;
            }
        }
    }
    let noise = rng.random_range(0.0..0.12);
    let mut out = [0u8; SIZE * SIZE];
    for (o, &v) in out.iter_mut().zip(&canvas) {
        let n = (rng.random::<f64>() - 0.5) * 2.0 * noise;
        *o = ((v + n).clamp(0.0, 1.0) * 255.0).round() as u8;
    }
    out
}

/// Anti-aliased thick segment: intensity falls off over `softness` pixels at the edge.
fn draw_segment(
    canvas: &mut [f64; SIZE * SIZE],
    a: (f64, f64),
    b: (f64, f64),
    radius: f64,
    softness: f64,
    ink: f64,
) {
    let reach = radius + softness;
    let x0 = (a.0.min(b.0) - reach).floor().max(0.0) as usize;
    let x1 = ((a.0.max(b.0) + reach).ceil() as usize).min(SIZE - 1);
    let y0 = (a.1.min(b.1) - reach).floor().max(0.0) as usize;
    let y1 = ((a.1.max(b.1) + reach).ceil() as usize).min(SIZE - 1);
    if x0 > x1 || y0 > y1 || a.0.max(b.0) < -reach || a.1.max(b.1) < -reach {
        return;
    }
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = (dx * dx + dy * dy).max(1e-9);
    for y in y0..=y1 {
        for x in x0..=x1 {
            let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
            let t = (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0);
            let (cx, cy) = (a.0 + t * dx - px, a.1 + t * dy - py);
            let d = (cx * cx + cy * cy).sqrt();
            let v = ((radius - d) / softness + 0.5).clamp(0.0, 1.0) * ink;
            let cell = &mut canvas[y * SIZE + x];
            *cell = cell.max(v);
        }
    }
}

/// Generates `count` samples of one split: images (count × 28 × 28) and labels. Labels cycle
/// 0..9 so classes are balanced.
pub fn generate(seed: u64, split_salt: u64, count: usize) -> (Vec<u8>, Vec<u8>) {
    let samples: Vec<(u8, [u8; SIZE * SIZE])> = (0..count)
        .into_par_iter()
        .map(|i| {
            let mut rng =
                ChaCha8Rng::seed_from_u64(seed ^ split_salt.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            rng.set_stream(i as u64);
            let digit = (i % 10) as u8;
            (digit, render(digit, &mut rng))
        })
        .collect();
    let mut images = Vec::with_capacity(count * SIZE * SIZE);
    let mut labels = Vec::with_capacity(count);
    for (label, pixels) in samples {
        labels.push(label);
        images.extend_from_slice(&pixels);
    }
    (images, labels)
}

/// Directory holding the generated IDX files for `spec` under `cache_dir`, generating them first
/// if needed (written to a temporary directory and renamed, so a crash never leaves half a set).
pub fn ensure(cache_dir: &Path, spec: &SynthSpec) -> Result<PathBuf> {
    let dir = cache_dir.join("synth-digits").join(format!(
        "v{GENERATOR_VERSION}-seed{}-train{}-test{}",
        spec.seed, spec.train_samples, spec.test_samples
    ));
    if dir.join("t10k-labels-idx1-ubyte").exists() {
        return Ok(dir);
    }
    let parent = dir.parent().expect("has a parent");
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".synth-")
        .tempdir_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    tracing::info!(
        train = spec.train_samples,
        test = spec.test_samples,
        seed = spec.seed,
        "generating synth-digits"
    );
    for (prefix, salt, count) in [
        ("train", 1, spec.train_samples),
        ("t10k", 2, spec.test_samples),
    ] {
        let (images, labels) = generate(spec.seed, salt, count as usize);
        let n = count as usize;
        let files = [
            (
                format!("{prefix}-images-idx3-ubyte"),
                idx::encode(&[n, SIZE, SIZE], &images),
            ),
            (
                format!("{prefix}-labels-idx1-ubyte"),
                idx::encode(&[n], &labels),
            ),
        ];
        for (name, bytes) in files {
            let path = tmp.path().join(name);
            std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        }
    }
    let staged = tmp.keep();
    match std::fs::rename(&staged, &dir) {
        Ok(()) => Ok(dir),
        // Another process generated the same set meanwhile: theirs is identical.
        Err(_) if dir.join("t10k-labels-idx1-ubyte").exists() => {
            let _ = std::fs::remove_dir_all(&staged);
            Ok(dir)
        }
        Err(e) => Err(Error::io(&dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = generate(7, 1, 64);
        assert_eq!(a, generate(7, 1, 64));
        assert_ne!(a.0, generate(8, 1, 64).0);
        assert_ne!(a.0, generate(7, 2, 64).0, "test split is a different draw");
        assert_eq!(a.1[..12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
    }

    #[test]
    fn images_have_ink_and_variation() {
        let (images, _) = generate(3, 1, 200);
        for img in images.chunks(SIZE * SIZE) {
            let ink = img.iter().filter(|&&p| p > 64).count();
            assert!(
                (15..500).contains(&ink),
                "a digit covers a plausible area: {ink} pixels"
            );
        }
        // Two samples of the same digit differ (jitter, affine, thickness).
        assert_ne!(
            images[..SIZE * SIZE],
            images[10 * SIZE * SIZE..11 * SIZE * SIZE]
        );
    }

    #[test]
    fn ensure_writes_idx_files_once() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SynthSpec {
            train_samples: 30,
            test_samples: 10,
            seed: 5,
        };
        let out = ensure(dir.path(), &spec).unwrap();
        let images = idx::read(&out.join("train-images-idx3-ubyte")).unwrap();
        assert_eq!(images.dims, vec![30, 28, 28]);
        let labels = idx::read(&out.join("t10k-labels-idx1-ubyte")).unwrap();
        assert_eq!(labels.dims, vec![10]);
        let modified = std::fs::metadata(out.join("train-images-idx3-ubyte"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(ensure(dir.path(), &spec).unwrap(), out);
        let again = std::fs::metadata(out.join("train-images-idx3-ubyte"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(modified, again, "cached, not regenerated");
    }
}
