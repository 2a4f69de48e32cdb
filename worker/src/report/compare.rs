//! The comparison of runs (`trainfleet runs compare`): one self-contained HTML page with their
//! curves overlaid, the params that differ and the final metrics side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use plotly::common::{DashType, Line, Mode, Title};
use plotly::layout::{Axis, Layout};
use plotly::{Plot, Scatter};
use serde_json::{Value, json};

use super::html::{esc, page_end, page_start};

/// One run as compared.
#[derive(Debug, Clone, Default)]
pub struct RunSeries {
    /// Job id.
    pub id: String,
    /// Job name.
    pub name: String,
    /// Per epoch, its metrics by name.
    pub epochs: Vec<(u32, BTreeMap<String, f64>)>,
    /// Resolved config, flattened (`training.learning_rate` → `0.001`).
    pub params: BTreeMap<String, String>,
    /// Final metrics (test scores).
    pub metrics: BTreeMap<String, f64>,
    /// Facts: device, dataset root, versions, gate decision.
    pub facts: BTreeMap<String, String>,
}

/// Params whose values differ between the runs (a param missing in one run differs).
pub fn differing_params(runs: &[RunSeries]) -> Vec<(String, Vec<String>)> {
    let keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.params.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let values: Vec<String> = runs
                .iter()
                .map(|r| r.params.get(k).cloned().unwrap_or_else(|| "–".into()))
                .collect();
            values
                .iter()
                .any(|v| v != &values[0])
                .then(|| (k.clone(), values))
        })
        .collect()
}

/// One chart: `metric` (and its `val_` twin) per epoch for every run.
fn overlay(runs: &[RunSeries], what: &str) -> Value {
    let mut plot = Plot::new();
    for run in runs {
        for (split, dash) in [("train", DashType::Solid), ("val", DashType::Dash)] {
            let key = format!("{split}_{what}");
            let points: Vec<(u32, f64)> = run
                .epochs
                .iter()
                .filter_map(|(e, values)| values.get(&key).map(|v| (*e, *v)))
                .collect();
            if points.is_empty() {
                continue;
            }
            let (x, y): (Vec<u32>, Vec<f64>) = points.into_iter().unzip();
            plot.add_trace(
                Scatter::new(x, y)
                    .name(format!("{} {split}", run.id))
                    .mode(Mode::LinesMarkers)
                    .line(Line::new().dash(dash)),
            );
        }
    }
    plot.set_layout(
        Layout::new()
            .title(Title::with_text(format!("{what} per epoch")))
            .height(380)
            .x_axis(Axis::new().title(Title::with_text("epoch")))
            .y_axis(Axis::new().title(Title::with_text(what))),
    );
    let value: Value = serde_json::from_str(&plot.to_json()).expect("figures are JSON");
    let mut figure = json!({"data": value["data"], "layout": value["layout"]});
    figure["layout"]["xaxis"]["dtick"] = json!(1);
    figure
}

/// Renders the comparison page.
pub fn render(runs: &[RunSeries]) -> String {
    let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    let mut out = page_start(&format!("trainfleet: {}", ids.join(" vs ")));
    let _ = write!(
        out,
        "<header><h1>Runs compared</h1><div class=\"sub\">{}</div></header><main>",
        esc(&ids.join(" · "))
    );
    out.push_str(
        "<section><h2>Curves</h2><div class=\"row\">\
         <div class=\"chart\" id=\"chart-loss\"></div>\
         <div class=\"chart\" id=\"chart-accuracy\"></div></div></section>",
    );
    let header: String = runs
        .iter()
        .map(|r| format!("<th>{}<br><small>{}</small></th>", esc(&r.id), esc(&r.name)))
        .collect();
    let _ = write!(
        out,
        "<section><h2>Final metrics</h2><table id=\"metrics\"><tr><th>metric</th>{header}</tr>"
    );
    let metric_keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.metrics.keys()).collect();
    for key in metric_keys {
        let cells: String = runs
            .iter()
            .map(|r| {
                r.metrics
                    .get(key)
                    .map_or("<td>–</td>".into(), |v| format!("<td>{v:.4}</td>"))
            })
            .collect();
        let _ = write!(out, "<tr><td>{}</td>{cells}</tr>", esc(key));
    }
    out.push_str("</table></section>");
    let _ = write!(
        out,
        "<section><h2>Params that differ</h2><table id=\"params\"><tr><th>param</th>{header}</tr>"
    );
    let differing = differing_params(runs);
    if differing.is_empty() {
        out.push_str("<tr><td colspan=\"9\">none: the same config</td></tr>");
    }
    for (key, values) in differing {
        let cells: String = values
            .iter()
            .map(|v| format!("<td class=\"mono\">{}</td>", esc(v)))
            .collect();
        let _ = write!(out, "<tr><td>{}</td>{cells}</tr>", esc(&key));
    }
    out.push_str("</table></section>");
    let _ = write!(
        out,
        "<section><h2>Runs</h2><table id=\"facts\"><tr><th></th>{header}</tr>"
    );
    let fact_keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.facts.keys()).collect();
    for key in fact_keys {
        let cells: String = runs
            .iter()
            .map(|r| {
                format!(
                    "<td class=\"mono\">{}</td>",
                    esc(r.facts.get(key).map_or("–", String::as_str))
                )
            })
            .collect();
        let _ = write!(out, "<tr><td>{}</td>{cells}</tr>", esc(key));
    }
    out.push_str("</table></section></main>");
    page_end(
        &mut out,
        [
            ("chart-loss".to_owned(), overlay(runs, "loss")),
            ("chart-accuracy".to_owned(), overlay(runs, "accuracy")),
        ],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, lr: &str, losses: &[f64]) -> RunSeries {
        RunSeries {
            id: id.into(),
            name: "pets".into(),
            epochs: losses
                .iter()
                .enumerate()
                .map(|(i, &l)| {
                    (
                        i as u32 + 1,
                        BTreeMap::from([
                            ("train_loss".to_owned(), l),
                            ("val_loss".to_owned(), l + 0.1),
                            ("train_accuracy".to_owned(), 1.0 - l),
                        ]),
                    )
                })
                .collect(),
            params: BTreeMap::from([
                ("training.learning_rate".to_owned(), lr.to_owned()),
                ("model.arch".to_owned(), "cnn".to_owned()),
            ]),
            metrics: BTreeMap::from([("accuracy".to_owned(), 0.9)]),
            facts: BTreeMap::from([("device".to_owned(), "cpu".to_owned())]),
        }
    }

    #[test]
    fn only_differing_params_are_listed() {
        let runs = [run("a", "0.1", &[0.5]), run("b", "0.01", &[0.4])];
        assert_eq!(
            differing_params(&runs),
            vec![(
                "training.learning_rate".to_owned(),
                vec!["0.1".to_owned(), "0.01".to_owned()]
            )]
        );
    }

    #[test]
    fn the_curves_overlay_every_run_train_and_validation() {
        let runs = [
            run("a", "0.1", &[0.5, 0.3]),
            run("b", "0.01", &[0.4, 0.2, 0.1]),
        ];
        let loss = overlay(&runs, "loss");
        let names: Vec<&str> = loss["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a train", "a val", "b train", "b val"]);
        assert_eq!(loss["data"][2]["y"], json!([0.4, 0.2, 0.1]));
        let page = render(&runs);
        assert!(page.contains("id=\"chart-loss\"") && page.contains("plotly.js v3"));
        assert!(page.contains("<td>training.learning_rate</td>"));
    }
}
