//! The self-contained HTML page: plotly charts (plotly.js embedded, so the page needs no
//! network), tables and image grids (PNG data URIs), in one file.
//!
//! Each chart is a `<div class="chart" id="chart-…">` drawn by `Plotly.newPlot` from a figure
//! built with the `plotly` crate; the few attributes it does not model (cell labels on heatmaps,
//! a reversed axis) are added to the figure's JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use plotly::common::{Mode, Title};
use plotly::layout::{Axis, BarMode, Layout, Legend};
use plotly::{Bar, HeatMap, Plot, Scatter};
use serde_json::{Value, json};

use super::{Comparison, RunReport, SPLITS, Thumb};

/// Escapes text for HTML element content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// plotly.js itself, from the `plotly` crate's embedded copy. The crate's offline sources also
/// carry MathJax, which no chart here needs: only the first script (plotly.js) is kept.
pub fn plotly_js() -> &'static str {
    static JS: OnceLock<String> = OnceLock::new();
    JS.get_or_init(|| {
        let sources = Plot::offline_js_sources();
        let end = sources
            .find("</script>")
            .expect("the plotly crate embeds plotly.js in a script tag");
        format!("{}</script>", &sources[..end])
    })
}

/// Opens a page titled `title`: the style sheet and plotly.js in its head; the caller writes the
/// body and closes it with [`page_end`].
pub fn page_start(title: &str) -> String {
    let mut out = String::with_capacity(plotly_js().len() + 256 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style>{}</head><body>",
        esc(title),
        plotly_js()
    );
    out
}

/// Closes a page: draws each figure (`{data, layout}`) into the element with its id.
pub fn page_end(out: &mut String, figures: impl IntoIterator<Item = (String, Value)>) {
    // One JSON object keyed by element id; every `<` is escaped so that no string in it (a
    // class name, say) can end or confuse the script element.
    let figures: serde_json::Map<String, Value> = figures.into_iter().collect();
    let figures = serde_json::to_string(&figures)
        .expect("figures serialise")
        .replace('<', "\\u003c");
    let _ = write!(
        out,
        "<script>\nconst FIGURES = {figures};\n\
         for (const [id, fig] of Object.entries(FIGURES)) {{\n\
           const el = document.getElementById(id);\n\
           if (el) Plotly.newPlot(el, fig.data, fig.layout, {{responsive: true, displaylogo: false}});\n\
         }}\n</script></body></html>\n"
    );
}

/// A chart to draw: its element id, a caption and the figure.
pub struct Chart {
    /// Element id (`chart-…`).
    pub id: &'static str,
    /// Heading shown above it.
    pub caption: String,
    /// `{data, layout}` as plotly.js takes them.
    pub figure: Value,
}

fn figure(plot: &Plot) -> Value {
    let value: Value = serde_json::from_str(&plot.to_json()).expect("plotly figures are JSON");
    json!({"data": value["data"], "layout": value["layout"]})
}

/// Class names such as "0".."9" are names, not numbers.
fn categorical(figure: &mut Value, axes: &[&str]) {
    for axis in axes {
        figure["layout"][*axis]["type"] = json!("category");
    }
}

fn base_layout(title: &str, x: &str, y: &str) -> Layout {
    Layout::new()
        .title(Title::with_text(title))
        .height(360)
        .x_axis(Axis::new().title(Title::with_text(x)))
        .y_axis(Axis::new().title(Title::with_text(y)))
        .legend(Legend::new())
}

/// Loss or accuracy per epoch, train and validation.
pub fn curves(report: &RunReport, what: &str) -> Chart {
    let epochs: Vec<u32> = report.epochs.iter().map(|e| e.epoch).collect();
    let (train, val): (Vec<f64>, Vec<Option<f64>>) = report
        .epochs
        .iter()
        .map(|e| match what {
            "loss" => (e.train_loss, e.val_loss),
            _ => (e.train_accuracy, e.val_accuracy),
        })
        .unzip();
    let mut plot = Plot::new();
    plot.add_trace(
        Scatter::new(epochs.clone(), train)
            .name("train")
            .mode(Mode::LinesMarkers),
    );
    if val.iter().any(Option::is_some) {
        let val: Vec<f64> = val.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect();
        plot.add_trace(
            Scatter::new(epochs, val)
                .name("validation")
                .mode(Mode::LinesMarkers),
        );
    }
    plot.set_layout(base_layout(&format!("{what} per epoch"), "epoch", what));
    let (id, caption) = match what {
        "loss" => ("chart-loss", "Loss"),
        _ => ("chart-accuracy", "Accuracy"),
    };
    let mut figure = figure(&plot);
    figure["layout"]["xaxis"]["dtick"] = json!(1);
    Chart {
        id,
        caption: caption.into(),
        figure,
    }
}

/// The confusion matrix as a heatmap, in counts or normalised by the true class.
pub fn confusion(report: &RunReport, normalised: bool) -> Chart {
    let z: Vec<Vec<f64>> = report
        .test
        .confusion
        .iter()
        .map(|row| {
            let total: u64 = row.iter().sum();
            row.iter()
                .map(|&n| match (normalised, total) {
                    (false, _) => n as f64,
                    (true, 0) => 0.0,
                    (true, t) => n as f64 / t as f64,
                })
                .collect()
        })
        .collect();
    let mut plot = Plot::new();
    plot.add_trace(
        HeatMap::new(report.classes.clone(), report.classes.clone(), z)
            .color_scale(plotly::common::ColorScale::Palette(
                plotly::common::ColorScalePalette::Blues,
            ))
            // plotly.js's Blues runs dark to light; more should be darker.
            .reverse_scale(true)
            .name(if normalised { "share" } else { "count" }),
    );
    let title = if normalised {
        "confusion matrix (row-normalised)"
    } else {
        "confusion matrix (counts)"
    };
    plot.set_layout(base_layout(title, "predicted", "true").height(420));
    let mut figure = figure(&plot);
    figure["data"][0]["texttemplate"] = json!(if normalised { "%{z:.2f}" } else { "%{z}" });
    figure["layout"]["yaxis"]["autorange"] = json!("reversed");
    categorical(&mut figure, &["xaxis", "yaxis"]);
    Chart {
        id: if normalised {
            "chart-confusion-normalised"
        } else {
            "chart-confusion"
        },
        caption: if normalised {
            "Confusion matrix, normalised".into()
        } else {
            "Confusion matrix".into()
        },
        figure,
    }
}

/// Precision, recall and F1 per class.
pub fn per_class(report: &RunReport) -> Chart {
    let names: Vec<String> = report
        .test
        .per_class
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let mut plot = Plot::new();
    for (label, pick) in [
        (
            "precision",
            (|c| c.precision) as fn(&crate::metrics::ClassMetrics) -> f64,
        ),
        ("recall", |c| c.recall),
        ("F1", |c| c.f1),
    ] {
        let values: Vec<f64> = report.test.per_class.iter().map(pick).collect();
        plot.add_trace(Bar::new(names.clone(), values).name(label));
    }
    plot.set_layout(
        base_layout("per-class scores (test)", "class", "score").bar_mode(BarMode::Group),
    );
    let mut figure = figure(&plot);
    categorical(&mut figure, &["xaxis"]);
    Chart {
        id: "chart-per-class",
        caption: "Per-class precision, recall and F1".into(),
        figure,
    }
}

/// Samples per class in each split.
pub fn distribution(report: &RunReport) -> Chart {
    let mut plot = Plot::new();
    for split in SPLITS {
        if let Some(counts) = report.dataset.counts.get(split) {
            plot.add_trace(Bar::new(report.classes.clone(), counts.clone()).name(split));
        }
    }
    plot.set_layout(
        base_layout("class distribution per split", "class", "samples").bar_mode(BarMode::Group),
    );
    let mut figure = figure(&plot);
    categorical(&mut figure, &["xaxis"]);
    Chart {
        id: "chart-distribution",
        caption: "Class distribution".into(),
        figure,
    }
}

/// Challenger and champion side by side: headline metrics and per-class recall.
pub fn comparison(report: &RunReport, c: &Comparison) -> Option<Chart> {
    let bars = c.side_by_side(&report.classes)?;
    let mut plot = Plot::new();
    plot.add_trace(Bar::new(bars.labels.clone(), bars.challenger).name("challenger (this run)"));
    plot.add_trace(
        Bar::new(bars.labels, bars.champion).name(format!("champion {}", c.champion_id)),
    );
    plot.set_layout(
        base_layout("challenger vs champion, same test samples", "", "score")
            .bar_mode(BarMode::Group),
    );
    let mut figure = figure(&plot);
    categorical(&mut figure, &["xaxis"]);
    Some(Chart {
        id: "chart-comparison",
        caption: "Champion vs challenger".into(),
        figure,
    })
}

/// Every chart the report has, in page order.
pub fn charts(report: &RunReport) -> Vec<Chart> {
    let mut charts = vec![curves(report, "loss"), curves(report, "accuracy")];
    if !report.test.confusion.is_empty() {
        charts.push(confusion(report, false));
        charts.push(confusion(report, true));
        charts.push(per_class(report));
    }
    if !report.dataset.counts.is_empty() {
        charts.push(distribution(report));
    }
    if let Some(chart) = report
        .comparison
        .as_ref()
        .and_then(|c| comparison(report, c))
    {
        charts.push(chart);
    }
    charts
}

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2330; background: #f5f6f8; }
header { background: #1d2330; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header .sub { opacity: .75; font-size: 13px; }
main { padding: 18px 28px 40px; max-width: 1280px; }
section { background: #fff; border-radius: 8px; padding: 14px 18px; margin: 16px 0; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
h2 { font-size: 17px; margin: 4px 0 10px; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; }
.card { background: #fff; border-radius: 8px; padding: 10px 16px; min-width: 130px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.card .v { font-size: 22px; font-weight: 600; }
.card .k { font-size: 12px; color: #667; text-transform: uppercase; letter-spacing: .04em; }
.verdict { display: inline-block; padding: 2px 10px; border-radius: 12px; font-weight: 600; font-size: 13px; }
.promoted { background: #d9f5e1; color: #17663a; } .kept { background: #fde2e1; color: #8a1f1b; } .none { background: #e8eaf0; color: #333; }
.row { display: flex; flex-wrap: wrap; gap: 12px; } .row > .chart { flex: 1 1 520px; min-width: 420px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e4e6eb; text-align: right; } th:first-child, td:first-child { text-align: left; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; text-align: center; font-size: 11px; width: 84px; }
figure img { width: 72px; height: 72px; image-rendering: pixelated; border: 1px solid #ccd; background: #000; }
figure.wrong img { border: 2px solid #c62828; } figure.right img { border: 2px solid #2e7d32; }
.classrow { display: flex; align-items: center; gap: 8px; margin: 4px 0; } .classrow .name { width: 110px; font-weight: 600; overflow: hidden; text-overflow: ellipsis; }
pre { background: #f0f2f5; padding: 10px; border-radius: 6px; overflow: auto; font-size: 12px; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: 12px; }
ul.reasons { margin: 6px 0; }
"#;

fn card(out: &mut String, key: &str, value: &str) {
    let _ = write!(
        out,
        r#"<div class="card"><div class="k">{}</div><div class="v">{}</div></div>"#,
        esc(key),
        esc(value)
    );
}

fn data_uri(png: &[u8]) -> String {
    format!("data:image/png;base64,{}", STANDARD.encode(png))
}

fn thumb(report: &RunReport, t: &Thumb) -> String {
    let class = |i: usize| {
        report
            .classes
            .get(i)
            .cloned()
            .unwrap_or_else(|| i.to_string())
    };
    let (css, caption) = match (t.predicted, t.confidence) {
        (Some(p), Some(conf)) if p == t.label => {
            ("right", format!("{} · {:.0}%", class(p), conf * 100.0))
        }
        (Some(p), Some(conf)) => (
            "wrong",
            format!(
                "true {} → {} · {:.0}%",
                class(t.label),
                class(p),
                conf * 100.0
            ),
        ),
        _ => ("", class(t.label)),
    };
    format!(
        r#"<figure class="{css}" title="{}"><img alt="{}" src="{}"><figcaption>{}</figcaption></figure>"#,
        esc(&t.id),
        esc(&t.id),
        data_uri(&t.png),
        esc(&caption)
    )
}

fn verdict(report: &RunReport) -> (&'static str, String) {
    match &report.comparison {
        Some(c) if c.gate.promoted => ("promoted", "promoted to champion".into()),
        Some(c) if c.champion_id.is_empty() => ("kept", "not promoted (below the floor)".into()),
        Some(c) => ("kept", format!("champion {} kept", c.champion_id)),
        None => ("none", "not compared".into()),
    }
}

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

/// Renders the whole page.
pub fn render(report: &RunReport) -> String {
    let charts = charts(report);
    let by_id: BTreeMap<&str, &Chart> = charts.iter().map(|c| (c.id, c)).collect();
    let mut out = page_start(&format!(
        "trainfleet report: {} · {}",
        report.name, report.job_id
    ));
    let (css, words) = verdict(report);
    let _ = write!(
        out,
        r#"<header><h1>{}</h1><div class="sub">run <span class="mono">{}</span> · model {} · generated {} · <span class="verdict {css}">{}</span></div></header><main>"#,
        esc(&report.name),
        esc(&report.job_id),
        esc(&report.model),
        esc(&report.generated_at),
        esc(&words)
    );

    out.push_str(r#"<div class="cards">"#);
    card(&mut out, "test accuracy", &pct(report.test.accuracy));
    card(
        &mut out,
        "macro F1",
        &format!("{:.4}", report.test.macro_f1),
    );
    card(&mut out, "test loss", &format!("{:.4}", report.test.loss));
    if let Some(top5) = report.test.top5_accuracy {
        card(&mut out, "top-5 accuracy", &pct(top5));
    }
    card(&mut out, "test samples", &report.test.samples.to_string());
    card(
        &mut out,
        "epochs (kept)",
        &format!("{} ({})", report.epochs.len(), report.kept_epoch),
    );
    out.push_str("</div>");

    let chart_div = |out: &mut String, id: &str| {
        if let Some(c) = by_id.get(id) {
            let _ = write!(
                out,
                r#"<div class="chart" id="{}" data-caption="{}"></div>"#,
                c.id,
                esc(&c.caption)
            );
        }
    };

    out.push_str("<section><h2>Training curves</h2><div class=\"row\">");
    chart_div(&mut out, "chart-loss");
    chart_div(&mut out, "chart-accuracy");
    out.push_str("</div></section>");

    if let Some(c) = &report.comparison {
        comparison_section(&mut out, report, c);
        if by_id.contains_key("chart-comparison") {
            chart_div(&mut out, "chart-comparison");
        }
        out.push_str("</section>");
    }

    out.push_str("<section><h2>Test evaluation</h2><div class=\"row\">");
    chart_div(&mut out, "chart-confusion");
    chart_div(&mut out, "chart-confusion-normalised");
    out.push_str("</div>");
    chart_div(&mut out, "chart-per-class");
    out.push_str(
        "<table id=\"per-class\"><tr><th>class</th><th>precision</th><th>recall</th>\
         <th>F1</th><th>support</th></tr>",
    );
    for c in &report.test.per_class {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td></tr>",
            esc(&c.name),
            c.precision,
            c.recall,
            c.f1,
            c.support
        );
    }
    out.push_str("</table></section>");

    grid_section(
        &mut out,
        report,
        "misclassified",
        "Misclassified test images (most confident first)",
        &report.misclassified,
    );
    grid_section(
        &mut out,
        report,
        "confident",
        "Confidently correct test images",
        &report.confident,
    );

    dataset_section(&mut out, report);
    chart_div(&mut out, "chart-distribution");
    samples_grid(&mut out, report);
    out.push_str("</section>");

    let _ = write!(
        out,
        "<section><h2>Run</h2><table>\
         <tr><td>artifacts</td><td class=\"mono\">{}</td></tr>\
         <tr><td>config hash</td><td class=\"mono\">{}</td></tr>\
         <tr><td>device</td><td>{}</td></tr><tr><td>threads</td><td>{}</td></tr>\
         <tr><td>libtorch</td><td>{}</td></tr><tr><td>trainfleet</td><td>{}</td></tr>\
         </table><h2>Configuration</h2><pre>{}</pre></section>",
        esc(&report.run_uri),
        esc(&report.config_hash),
        esc(&report.system.device),
        report.system.threads,
        esc(&report.system.libtorch_version),
        esc(&report.system.trainfleet_version),
        esc(&report.config_yaml)
    );
    out.push_str("</main>");

    page_end(
        &mut out,
        charts.into_iter().map(|c| (c.id.to_owned(), c.figure)),
    );
    out
}

fn comparison_section(out: &mut String, report: &RunReport, c: &Comparison) {
    out.push_str("<section id=\"comparison\"><h2>Champion vs challenger</h2>");
    if c.champion_id.is_empty() {
        out.push_str("<p>First model of its dataset: no champion to compare with.</p>");
    } else if let Some(champion) = &c.champion {
        let _ = write!(
            out,
            "<table><tr><th>metric</th><th>challenger (this run)</th><th>champion {}</th><th>Δ</th></tr>",
            esc(&c.champion_id)
        );
        for (k, v) in &c.challenger {
            let other = champion.get(k);
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{v:.4}</td><td>{}</td><td>{}</td></tr>",
                esc(k),
                other.map_or("–".into(), |o| format!("{o:.4}")),
                other.map_or("–".into(), |o| format!("{:+.4}", v - o))
            );
        }
        out.push_str("</table>");
        let p = c.gate.mcnemar.map_or_else(
            || trainfleet_core::gate::mcnemar_exact_p(c.challenger_only, c.champion_only),
            |m| m.p_value,
        );
        let _ = write!(
            out,
            "<p>McNemar on the same {} test samples: <b>{}</b> only the challenger got right, \
             <b>{}</b> only the champion; exact two-sided p = <b>{p:.4}</b>.</p>",
            report.test.samples, c.challenger_only, c.champion_only
        );
    } else {
        let _ = write!(
            out,
            "<p>Champion {} could not be scored on this data: {}</p>",
            esc(&c.champion_id),
            esc(c.champion_error.as_deref().unwrap_or("no scores"))
        );
    }
    let (css, words) = verdict(report);
    let _ = write!(
        out,
        "<p>Gate on <code>{}</code>: <span class=\"verdict {css}\">{}</span></p><ul class=\"reasons\">",
        esc(&c.gate.metric),
        esc(&words)
    );
    for reason in &c.gate.reasons {
        let _ = write!(out, "<li>{}</li>", esc(reason));
    }
    out.push_str("</ul>");
}

fn grid_section(out: &mut String, report: &RunReport, id: &str, title: &str, thumbs: &[Thumb]) {
    let _ = write!(
        out,
        "<section><h2>{}</h2><div class=\"grid\" id=\"{id}\">",
        esc(title)
    );
    if thumbs.is_empty() {
        out.push_str("<p>None.</p>");
    }
    for t in thumbs {
        out.push_str(&thumb(report, t));
    }
    out.push_str("</div></section>");
}

fn dataset_section(out: &mut String, report: &RunReport) {
    let d = &report.dataset;
    let _ = write!(
        out,
        "<section id=\"dataset\"><h2>Dataset version</h2><table>\
         <tr><td>source</td><td class=\"mono\">{}</td></tr>\
         <tr><td>root</td><td class=\"mono\">{}</td></tr>",
        esc(&d.source),
        esc(&d.root)
    );
    if d.version > 0 {
        let _ = write!(out, "<tr><td>version</td><td>{}</td></tr>", d.version);
    }
    for split in SPLITS {
        if let Some(counts) = d.counts.get(split) {
            let _ = write!(
                out,
                "<tr><td>{split} samples</td><td>{}</td></tr>",
                counts.iter().sum::<u64>()
            );
        }
    }
    let growth = match (&d.previous, d.growth_pct()) {
        (Some(p), Some(g)) => format!(
            "{g:+.1}% since version {} ({} → {} samples, root {})",
            p.number,
            p.samples,
            d.total(),
            &p.root[..p.root.len().min(12)]
        ),
        _ if d.version == 0 => {
            "not tracked: the job did not name a registered dataset version".into()
        }
        _ => "first version".into(),
    };
    let _ = write!(
        out,
        "<tr><td>growth</td><td>{}</td></tr></table>",
        esc(&growth)
    );
    super::dataset::skipped_list(out, d);
}

pub(crate) fn samples_grid(out: &mut String, report: &RunReport) {
    out.push_str("<h2>Training samples per class</h2><div id=\"samples\">");
    for (i, class) in report.classes.iter().enumerate() {
        let row: Vec<&Thumb> = report.samples.iter().filter(|t| t.label == i).collect();
        if row.is_empty() {
            continue;
        }
        let _ = write!(
            out,
            "<div class=\"classrow\"><div class=\"name\" title=\"{0}\">{0}</div><div class=\"grid\">",
            esc(class)
        );
        for t in row {
            out.push_str(&thumb(report, t));
        }
        out.push_str("</div></div>");
    }
    out.push_str("</div>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    #[test]
    fn the_page_embeds_plotly_and_every_chart_and_fetches_nothing() {
        let page = render(&sample_report());
        assert!(page.contains("plotly.js v3"), "plotly.js is embedded");
        for id in [
            "chart-loss",
            "chart-accuracy",
            "chart-confusion",
            "chart-confusion-normalised",
            "chart-per-class",
            "chart-distribution",
            "chart-comparison",
        ] {
            assert!(page.contains(&format!("id=\"{id}\"")), "{id}");
        }
        // Nothing is loaded from elsewhere: no src or href but data URIs (outside plotly.js,
        // whose map features, unused here, name tile servers).
        let own = page.replace(plotly_js(), "");
        for attr in [
            "src=\"http",
            "href=\"http",
            "src=\"//",
            "<link",
            "src=\"file",
        ] {
            assert!(!own.contains(attr), "{attr}");
        }
        // A class name with markup stays text.
        assert!(page.contains("&lt;tri&amp;angle&gt;"));
        assert!(!page.contains("<tri&angle>"));
        assert!(page.contains("p = <b>0.0350</b>"));
        assert!(page.contains("promoted to champion"));
    }

    #[test]
    fn figures_carry_the_data() {
        let report = sample_report();
        let loss = curves(&report, "loss").figure;
        assert_eq!(loss["data"].as_array().unwrap().len(), 2);
        assert_eq!(loss["data"][0]["y"][0], json!(1.2));
        let heat = confusion(&report, true).figure;
        let first_row = heat["data"][0]["z"][0].as_array().unwrap();
        let sum: f64 = first_row.iter().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-9);
        assert_eq!(heat["layout"]["yaxis"]["autorange"], json!("reversed"));
        for chart in [per_class(&report), distribution(&report)] {
            assert_eq!(
                chart.figure["layout"]["xaxis"]["type"],
                json!("category"),
                "{}",
                chart.id
            );
        }
    }

    #[test]
    fn a_script_breaking_class_name_cannot_end_the_script() {
        let mut report = sample_report();
        report.classes[0] = "</script><script>alert(1)</script>".into();
        let page = render(&report);
        // plotly.js's and the figures' script elements, nothing else.
        assert_eq!(page.matches("</script>").count(), 2);
        assert!(!page.contains("<script>alert"));
    }
}
