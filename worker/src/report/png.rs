//! The report's charts as PNG files, drawn with plotters into an RGB buffer and encoded with
//! `image`. Text uses DejaVu Sans, embedded (the `dejavu` crate), so the PNGs look the same on a
//! machine without fonts.

use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::{RunReport, SPLITS, Thumb};
use crate::error::{Error, Result};

/// Series colours: a colour-blind-safe palette (Okabe–Ito).
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
];

const FONT: &str = "sans-serif";

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Both fonts are valid TrueType files compiled in; registering them cannot fail.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Draws into a white `width`×`height` canvas and encodes it as PNG.
fn canvas(
    name: &str,
    (width, height): (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> DrawResult,
) -> Result<Vec<u8>> {
    let mut pixels = vec![255u8; width as usize * height as usize * 3];
    paint(name, &mut pixels, (width, height), draw)?;
    encode(name, pixels, (width, height))
}

fn paint(
    name: &str,
    pixels: &mut [u8],
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> DrawResult,
) -> Result<()> {
    register_fonts();
    let fail = |e: &dyn std::fmt::Display| Error::Report(format!("cannot draw {name}: {e}"));
    let root = BitMapBackend::with_buffer(pixels, size).into_drawing_area();
    draw(&root).map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

fn encode(name: &str, pixels: Vec<u8>, (width, height): (u32, u32)) -> Result<Vec<u8>> {
    let image = image::RgbImage::from_raw(width, height, pixels).expect("buffer matches its size");
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::Report(format!("cannot encode {name}: {e}")))?;
    Ok(png)
}

fn text_style(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().color(&BLACK)
}

fn bold(size: u32) -> TextStyle<'static> {
    (FONT, size, FontStyle::Bold).into_font().color(&BLACK)
}

/// One line chart of `series` against the epochs.
fn line_chart(
    area: &Area<'_>,
    title: &str,
    y_label: &str,
    epochs: &[u32],
    series: &[(&str, Vec<Option<f64>>)],
) -> DrawResult {
    let values = series.iter().flat_map(|(_, v)| v.iter().flatten().copied());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.08).max(1e-3);
    let last = epochs.last().copied().unwrap_or(1).max(2);
    let mut chart = ChartBuilder::on(area)
        .caption(title, bold(18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(1f64..last as f64, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_label)
        .label_style(text_style(13))
        .x_labels(last.min(12) as usize)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (i, (name, values)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let points: Vec<(f64, f64)> = epochs
            .iter()
            .zip(values)
            .filter_map(|(&e, v)| v.map(|v| (e as f64, v)))
            .collect();
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .label_font(text_style(13))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

/// Loss and accuracy per epoch, train and validation, side by side.
pub fn curves(report: &RunReport) -> Result<Vec<u8>> {
    let epochs: Vec<u32> = report.epochs.iter().map(|e| e.epoch).collect();
    let pick = |f: fn(&crate::train::EpochReport) -> Option<f64>| -> Vec<Option<f64>> {
        report.epochs.iter().map(f).collect()
    };
    canvas("curves.png", (1200, 440), |root| {
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(600);
        line_chart(
            &left,
            "loss per epoch",
            "loss",
            &epochs,
            &[
                ("train", pick(|e| Some(e.train_loss))),
                ("validation", pick(|e| e.val_loss)),
            ],
        )?;
        line_chart(
            &right,
            "accuracy per epoch",
            "accuracy",
            &epochs,
            &[
                ("train", pick(|e| Some(e.train_accuracy))),
                ("validation", pick(|e| e.val_accuracy)),
            ],
        )
    })
}

/// Shortens a label to `max` characters.
fn clip(label: &str, max: usize) -> String {
    if label.chars().count() <= max {
        label.to_owned()
    } else {
        let mut s: String = label.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// White to blue.
fn blues(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(mix(247.0, 8.0), mix(251.0, 48.0), mix(255.0, 107.0))
}

/// The confusion matrix, counts or row-normalised, with the value in each cell.
pub fn confusion(report: &RunReport, normalised: bool) -> Result<Vec<u8>> {
    let k = report.classes.len();
    let cell = (560 / k.max(1)).clamp(12, 80) as i32;
    let (left, top) = (150, 70);
    let side = cell * k as i32;
    let size = ((left + side + 40) as u32, (top + side + 90) as u32);
    let name = if normalised {
        "confusion_normalised.png"
    } else {
        "confusion.png"
    };
    canvas(name, size, |root| {
        root.fill(&WHITE)?;
        let title = if normalised {
            "confusion matrix (share of each true class)"
        } else {
            "confusion matrix (counts)"
        };
        root.draw(&Text::new(title, (12, 16), bold(18)))?;
        let max = report
            .test
            .confusion
            .iter()
            .flatten()
            .copied()
            .max()
            .unwrap_or(1)
            .max(1);
        for (t, row) in report.test.confusion.iter().enumerate() {
            let total: u64 = row.iter().sum();
            for (p, &n) in row.iter().enumerate() {
                let share = if total > 0 {
                    n as f64 / total as f64
                } else {
                    0.0
                };
                let shade = if normalised {
                    share
                } else {
                    n as f64 / max as f64
                };
                let (x, y) = (left + p as i32 * cell, top + t as i32 * cell);
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    blues(shade).filled(),
                ))?;
                if cell >= 24 {
                    let label = if normalised {
                        format!("{share:.2}")
                    } else {
                        n.to_string()
                    };
                    let color = if shade > 0.55 { WHITE } else { BLACK };
                    let style = text_style((cell as u32 / 3).clamp(9, 16))
                        .color(&color)
                        .pos(plotters::style::text_anchor::Pos::new(
                            plotters::style::text_anchor::HPos::Center,
                            plotters::style::text_anchor::VPos::Center,
                        ));
                    root.draw(&Text::new(label, (x + cell / 2, y + cell / 2), style))?;
                }
            }
        }
        let small = text_style(12);
        for (i, class) in report.classes.iter().enumerate() {
            let mid = i as i32 * cell + cell / 2;
            root.draw(&Text::new(
                clip(class, 18),
                (8, top + mid - 6),
                small.clone(),
            ))?;
            root.draw(&Text::new(
                clip(class, 10),
                (left + mid - 4, top + side + 8),
                small.clone().transform(FontTransform::Rotate90),
            ))?;
        }
        root.draw(&Text::new("true ↓   predicted →", (12, 44), text_style(13)))?;
        Ok(())
    })
}

/// Grouped bars: one group per category, one bar per series.
fn grouped_bars(
    name: &str,
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
    y_max: Option<f64>,
) -> Result<Vec<u8>> {
    let n = categories.len().max(1);
    let width = (140 + n * 70).clamp(700, 1400) as u32;
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let y_max = y_max.unwrap_or(top * 1.12).max(1e-9);
    canvas(name, (width, 460), |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption(title, bold(18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..n as f64, 0f64..y_max)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(y_label)
            .label_style(text_style(13))
            .draw()?;
        let m = series.len().max(1) as f64;
        for (s, (label, values)) in series.iter().enumerate() {
            let color = PALETTE[s % PALETTE.len()];
            chart
                .draw_series(
                    values
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| v.is_finite())
                        .map(|(i, &v)| {
                            let x0 = i as f64 + 0.1 + 0.8 * s as f64 / m;
                            Rectangle::new([(x0, 0.0), (x0 + 0.8 / m, v)], color.filled())
                        }),
                )?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .label_font(text_style(13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        let label_style = text_style(12).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ));
        for (i, category) in categories.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            root.draw(&Text::new(
                clip(category, 12),
                (x, y + 8),
                label_style.clone(),
            ))?;
        }
        Ok(())
    })
}

/// Precision, recall and F1 per class.
pub fn per_class(report: &RunReport) -> Result<Vec<u8>> {
    let classes: Vec<String> = report
        .test
        .per_class
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let pick = |f: fn(&crate::metrics::ClassMetrics) -> f64| -> Vec<f64> {
        report.test.per_class.iter().map(f).collect()
    };
    grouped_bars(
        "per_class.png",
        "per-class scores (test)",
        "score",
        &classes,
        &[
            ("precision".into(), pick(|c| c.precision)),
            ("recall".into(), pick(|c| c.recall)),
            ("F1".into(), pick(|c| c.f1)),
        ],
        Some(1.05),
    )
}

/// Samples per class in each split.
pub fn distribution(report: &RunReport) -> Result<Vec<u8>> {
    let series: Vec<(String, Vec<f64>)> = SPLITS
        .iter()
        .filter_map(|s| {
            let counts = report.dataset.counts.get(*s)?;
            Some((s.to_string(), counts.iter().map(|&c| c as f64).collect()))
        })
        .collect();
    grouped_bars(
        "distribution.png",
        "class distribution per split",
        "samples",
        &report.classes,
        &series,
        None,
    )
}

/// Challenger and champion headline metrics and per-class recall, side by side.
pub fn comparison(report: &RunReport) -> Result<Option<Vec<u8>>> {
    let Some(c) = &report.comparison else {
        return Ok(None);
    };
    let Some(bars) = c.side_by_side(&report.classes) else {
        return Ok(None);
    };
    grouped_bars(
        "comparison.png",
        &format!(
            "challenger vs champion {} (same test samples)",
            c.champion_id
        ),
        "score",
        &bars.labels,
        &[
            ("challenger (this run)".into(), bars.challenger),
            (format!("champion {}", c.champion_id), bars.champion),
        ],
        Some(1.05),
    )
    .map(Some)
}

/// Decodes a thumbnail and scales it (nearest neighbour) to `side`×`side` RGB.
fn thumb_rgb(t: &Thumb, side: u32) -> Result<image::RgbImage> {
    let decoded = image::load_from_memory(&t.png)
        .map_err(|e| Error::Report(format!("the image of {} is not readable: {e}", t.id)))?;
    Ok(image::imageops::resize(
        &decoded.to_rgb8(),
        side,
        side,
        image::imageops::FilterType::Nearest,
    ))
}

/// A grid of images: one row per group, a caption under each image.
fn image_grid(
    name: &str,
    title: &str,
    rows: &[(String, Vec<(&Thumb, String)>)],
    label_width: u32,
) -> Result<Vec<u8>> {
    const SIDE: u32 = 64;
    const CELL_W: u32 = 104;
    const CELL_H: u32 = SIDE + 30;
    let columns = rows.iter().map(|(_, r)| r.len()).max().unwrap_or(0).max(1) as u32;
    let width = (label_width + columns * CELL_W + 16).max(420);
    let height = 48 + rows.len().max(1) as u32 * CELL_H;
    let mut pixels = vec![255u8; (width * height * 3) as usize];
    // Images first, straight into the buffer; then the text over it.
    for (r, (_, row)) in rows.iter().enumerate() {
        for (c, (thumb, _)) in row.iter().enumerate() {
            let image = thumb_rgb(thumb, SIDE)?;
            let (x0, y0) = (
                label_width + c as u32 * CELL_W + (CELL_W - SIDE) / 2,
                40 + r as u32 * CELL_H,
            );
            for (x, y, px) in image.enumerate_pixels() {
                let i = (((y0 + y) * width + x0 + x) * 3) as usize;
                pixels[i..i + 3].copy_from_slice(&px.0);
            }
        }
    }
    paint(name, &mut pixels, (width, height), |root| {
        root.draw(&Text::new(title, (12, 12), bold(18)))?;
        let caption_style = text_style(11).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ));
        for (r, (label, row)) in rows.iter().enumerate() {
            let y0 = 40 + r as i32 * CELL_H as i32;
            if label_width > 0 {
                root.draw(&Text::new(
                    clip(label, 14),
                    (10, y0 + SIDE as i32 / 2 - 7),
                    bold(13),
                ))?;
            }
            for (c, (_, caption)) in row.iter().enumerate() {
                let x = label_width as i32 + c as i32 * CELL_W as i32 + CELL_W as i32 / 2;
                root.draw(&Text::new(
                    clip(caption, 17),
                    (x, y0 + SIDE as i32 + 4),
                    caption_style.clone(),
                ))?;
            }
        }
        if rows.iter().all(|(_, r)| r.is_empty()) {
            root.draw(&Text::new("none", (12, 44), text_style(13)))?;
        }
        Ok(())
    })?;
    encode(name, pixels, (width, height))
}

/// What a thumbnail's caption says: its class, or truth → prediction and confidence.
pub fn caption(report: &RunReport, t: &Thumb) -> String {
    let class = |i: usize| {
        report
            .classes
            .get(i)
            .cloned()
            .unwrap_or_else(|| i.to_string())
    };
    match (t.predicted, t.confidence) {
        (Some(p), Some(conf)) if p == t.label => format!("{} {:.0}%", class(p), conf * 100.0),
        (Some(p), Some(conf)) => format!("{}→{} {:.0}%", class(t.label), class(p), conf * 100.0),
        _ => class(t.label),
    }
}

/// Training images, a row per class.
pub fn samples(report: &RunReport) -> Result<Vec<u8>> {
    let rows: Vec<(String, Vec<(&Thumb, String)>)> = report
        .classes
        .iter()
        .enumerate()
        .map(|(i, class)| {
            let row = report
                .samples
                .iter()
                .filter(|t| t.label == i)
                .map(|t| (t, t.id.rsplit('/').next().unwrap_or(&t.id).to_owned()))
                .collect();
            (class.clone(), row)
        })
        .collect();
    image_grid("samples.png", "training samples per class", &rows, 130)
}

/// Test images in rows of 8, captioned with truth, prediction and confidence.
fn test_grid(report: &RunReport, name: &str, title: &str, thumbs: &[Thumb]) -> Result<Vec<u8>> {
    let rows: Vec<(String, Vec<(&Thumb, String)>)> = thumbs
        .chunks(8)
        .map(|chunk| {
            let row = chunk.iter().map(|t| (t, caption(report, t))).collect();
            (String::new(), row)
        })
        .collect();
    image_grid(name, title, &rows, 0)
}

/// Every PNG of the report, by file name.
pub fn render_all(report: &RunReport) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = vec![("curves.png".to_owned(), curves(report)?)];
    if !report.test.confusion.is_empty() {
        out.push(("confusion.png".into(), confusion(report, false)?));
        out.push(("confusion_normalised.png".into(), confusion(report, true)?));
        out.push(("per_class.png".into(), per_class(report)?));
    }
    if !report.dataset.counts.is_empty() {
        out.push(("distribution.png".into(), distribution(report)?));
    }
    if let Some(png) = comparison(report)? {
        out.push(("comparison.png".into(), png));
    }
    if !report.samples.is_empty() {
        out.push(("samples.png".into(), samples(report)?));
    }
    out.push((
        "misclassified.png".into(),
        test_grid(
            report,
            "misclassified.png",
            "misclassified test images (true→predicted, confidence)",
            &report.misclassified,
        )?,
    ));
    out.push((
        "confident.png".into(),
        test_grid(
            report,
            "confident.png",
            "confidently correct test images",
            &report.confident,
        )?,
    ));
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    /// Decodes a PNG and checks that it has the expected size and is not blank: more than a
    /// sliver of it differs from the background, in several distinct colours.
    pub(crate) fn assert_drawn(name: &str, png: &[u8], min_size: (u32, u32)) {
        let image = image::load_from_memory_with_format(png, image::ImageFormat::Png)
            .unwrap_or_else(|e| panic!("{name} does not decode: {e}"))
            .to_rgb8();
        let (w, h) = image.dimensions();
        assert!(w >= min_size.0 && h >= min_size.1, "{name} is {w}x{h}");
        let background = image.get_pixel(0, 0).0;
        let drawn = image.pixels().filter(|p| p.0 != background).count();
        assert!(
            drawn as f64 > 0.01 * (w * h) as f64,
            "{name}: only {drawn} of {} pixels drawn",
            w * h
        );
        let colours: std::collections::HashSet<[u8; 3]> = image.pixels().map(|p| p.0).collect();
        assert!(colours.len() > 8, "{name}: {} colours", colours.len());
    }

    #[test]
    fn every_chart_renders_to_a_decodable_non_blank_png() {
        let report = sample_report();
        let pngs = render_all(&report).unwrap();
        let names: Vec<&str> = pngs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "curves.png",
                "confusion.png",
                "confusion_normalised.png",
                "per_class.png",
                "distribution.png",
                "comparison.png",
                "samples.png",
                "misclassified.png",
                "confident.png"
            ]
        );
        for (name, png) in &pngs {
            assert_drawn(name, png, (400, 120));
        }
    }

    #[test]
    fn the_curves_show_both_series_in_their_colours() {
        let png = curves(&sample_report()).unwrap();
        let image = image::load_from_memory(&png).unwrap().to_rgb8();
        for colour in [PALETTE[0], PALETTE[1]] {
            let n = image
                .pixels()
                .filter(|p| p.0 == [colour.0, colour.1, colour.2])
                .count();
            assert!(n > 200, "{colour:?}: {n} pixels");
        }
    }

    #[test]
    fn a_thumbnail_that_is_not_an_image_is_a_report_error() {
        let mut report = sample_report();
        report.misclassified[0].png = b"not a png".to_vec();
        let err = render_all(&report).unwrap_err();
        assert!(matches!(err, Error::Report(_)), "{err}");
        assert!(
            err.to_string().contains(&report.misclassified[0].id),
            "{err}"
        );
    }

    #[test]
    fn many_classes_still_render() {
        let mut report = sample_report();
        let k = 40;
        report.classes = (0..k).map(|i| format!("class-{i}")).collect();
        report.test.confusion = (0..k)
            .map(|t| (0..k).map(|p| (t * p % 7) as u64).collect())
            .collect();
        report.test.per_class = Vec::new();
        report.dataset.counts.clear();
        report.comparison = None;
        for (name, png) in render_all(&report).unwrap() {
            assert_drawn(&name, &png, (400, 120));
        }
    }
}
