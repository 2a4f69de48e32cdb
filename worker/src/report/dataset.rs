//! The dataset report, before any training (`trainfleet dataset report NAME`): sample images of
//! each class and the class distribution of each split, as one offline HTML page and PNGs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{DatasetSummary, RunReport, Thumb, Written, collect, html, png};
use crate::data::Dataset;
use crate::error::{Error, Result};

/// File name of the dataset report's page.
pub const HTML: &str = "dataset.html";

/// What a dataset report shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetReport {
    /// The registered dataset's name.
    pub name: String,
    /// When it was made (RFC 3339).
    pub generated_at: String,
    /// Class names.
    pub classes: Vec<String>,
    /// Channels, height, width.
    pub shape: [usize; 3],
    /// Source, root as loaded, counts per split and class, and the recorded version.
    pub dataset: DatasetSummary,
    /// The root the latest recorded version has (empty: none recorded yet).
    pub recorded_root: String,
    /// Training images, a few per class.
    pub samples: Vec<Thumb>,
}

/// Gathers the report of a loaded dataset.
pub fn collect(name: &str, dataset: &Dataset) -> Result<DatasetReport> {
    Ok(DatasetReport {
        name: name.to_owned(),
        generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        classes: dataset.classes.clone(),
        shape: dataset.shape,
        dataset: DatasetSummary {
            source: dataset.identity.source.clone(),
            root: dataset.identity.root_sha256.clone(),
            counts: collect::counts(dataset)?,
            skipped_count: dataset.identity.skipped.len() as u64,
            skipped: super::build::first_skipped(&dataset.identity.skipped),
            ..DatasetSummary::default()
        },
        recorded_root: String::new(),
        samples: collect::samples(dataset, collect::SAMPLES_PER_CLASS)?,
    })
}

/// The parts of a run report the shared charts read.
fn as_run(report: &DatasetReport) -> RunReport {
    RunReport {
        name: report.name.clone(),
        classes: report.classes.clone(),
        dataset: report.dataset.clone(),
        samples: report.samples.clone(),
        ..RunReport::default()
    }
}

/// Writes `dataset.html`, `dataset.json`, `distribution.png` and `samples.png` into `dir`.
pub fn write(dir: &Path, report: &DatasetReport) -> Result<Written> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let run = as_run(report);
    let mut files = Vec::new();
    for (name, bytes) in [
        ("distribution.png", png::distribution(&run)?),
        ("samples.png", png::samples(&run)?),
    ] {
        crate::artifacts::write_atomically(&dir.join(name), &bytes)?;
        files.push(name.to_owned());
    }
    let json = serde_json::to_vec(report).expect("reports serialise");
    crate::artifacts::write_atomically(&dir.join("dataset.json"), &json)?;
    files.push("dataset.json".into());
    crate::artifacts::write_atomically(&dir.join(HTML), render(report).as_bytes())?;
    files.push(HTML.into());
    Ok(Written {
        html: dir.join(HTML),
        files,
    })
}

/// Renders the page.
pub fn render(report: &DatasetReport) -> String {
    let run = as_run(report);
    let d = &report.dataset;
    let mut out = html::page_start(&format!("trainfleet dataset: {}", report.name));
    let _ = write!(
        out,
        "<header><h1>Dataset {}</h1><div class=\"sub\">generated {}</div></header><main>",
        html::esc(&report.name),
        html::esc(&report.generated_at)
    );
    let version = match (d.version, report.recorded_root.as_str()) {
        (0, _) => "no version recorded yet (scan it: trainfleet dataset scan)".to_owned(),
        (n, root) if root == d.root => format!("{n} (the files loaded are that version)"),
        (n, root) => format!(
            "{n} has root {}; the files now differ: rescan to record a new version",
            &root[..root.len().min(12)]
        ),
    };
    let _ = write!(
        out,
        "<section id=\"dataset\"><h2>Dataset</h2><table>\
         <tr><td>source</td><td class=\"mono\">{}</td></tr>\
         <tr><td>root (as loaded)</td><td class=\"mono\">{}</td></tr>\
         <tr><td>latest version</td><td>{}</td></tr>\
         <tr><td>classes</td><td>{}</td></tr>\
         <tr><td>image shape</td><td>{} × {} × {}</td></tr>",
        html::esc(&d.source),
        html::esc(&d.root),
        html::esc(&version),
        report.classes.len(),
        report.shape[0],
        report.shape[1],
        report.shape[2]
    );
    let totals: BTreeMap<&String, u64> =
        d.counts.iter().map(|(k, v)| (k, v.iter().sum())).collect();
    for split in super::SPLITS {
        if let Some(n) = totals.get(&split.to_owned()) {
            let _ = write!(out, "<tr><td>{split} samples</td><td>{n}</td></tr>");
        }
    }
    out.push_str("</table>");
    skipped_list(&mut out, d);
    let chart = html::distribution(&run);
    let _ = write!(out, "<div class=\"chart\" id=\"{}\"></div>", chart.id);
    html::samples_grid(&mut out, &run);
    out.push_str("</section></main>");
    html::page_end(&mut out, [(chart.id.to_owned(), chart.figure)]);
    out
}

/// The entries left out of the data, with why (nothing when none were).
pub(crate) fn skipped_list(out: &mut String, d: &DatasetSummary) {
    if d.skipped_count == 0 {
        return;
    }
    let noun = if d.skipped_count == 1 {
        "entry"
    } else {
        "entries"
    };
    let _ = write!(
        out,
        "<h3 id=\"skipped\">{} {noun} left out</h3><table class=\"skipped\">\
         <tr><th>path</th><th>why</th></tr>",
        d.skipped_count
    );
    for (path, reason) in &d.skipped {
        let _ = write!(
            out,
            "<tr><td class=\"mono\">{}</td><td>{}</td></tr>",
            html::esc(path),
            html::esc(reason)
        );
    }
    out.push_str("</table>");
    let more = d.skipped_count.saturating_sub(d.skipped.len() as u64);
    if more > 0 {
        let _ = write!(out, "<p>and {more} more.</p>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    fn sample() -> DatasetReport {
        let run = sample_report();
        DatasetReport {
            name: "shapes".into(),
            generated_at: "2026-11-26T10:00:00Z".into(),
            classes: run.classes,
            shape: [1, 8, 8],
            dataset: run.dataset,
            recorded_root: "cd".repeat(32),
            samples: run.samples,
        }
    }

    #[test]
    fn the_page_has_the_distribution_and_the_samples_and_the_pngs_decode() {
        let report = sample();
        let page = render(&report);
        assert!(page.contains("id=\"chart-distribution\"") && page.contains("id=\"samples\""));
        assert!(page.contains("the files loaded are that version"));
        assert!(!page.contains("left out"), "nothing was left out");
        let mut thin = report.clone();
        thin.dataset.skipped_count = 3;
        thin.dataset.skipped = vec![
            (
                "cat/fake.png".into(),
                "not a PNG or JPEG: starts with bytes 3c 68 74 6d at byte 0".into(),
            ),
            (
                "notes.txt".into(),
                "files at the top level belong to no class".into(),
            ),
        ];
        let page = render(&thin);
        assert!(page.contains("3 entries left out"), "the count");
        assert!(page.contains("<td class=\"mono\">cat/fake.png</td><td>not a PNG or JPEG: starts with bytes 3c 68 74 6d at byte 0</td>"));
        assert!(page.contains("and 1 more."));
        let dir = tempfile::tempdir().unwrap();
        let written = write(dir.path(), &report).unwrap();
        assert_eq!(
            written.files,
            [
                "distribution.png",
                "samples.png",
                "dataset.json",
                "dataset.html"
            ]
        );
        for name in ["distribution.png", "samples.png"] {
            let png = std::fs::read(dir.path().join(name)).unwrap();
            crate::report::png::tests::assert_drawn(name, &png, (400, 100));
        }
    }
}
