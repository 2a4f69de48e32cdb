//! A sweep's page (`trainfleet sweep report`), offline like a run's report: every trial's
//! objective per epoch, a parallel-coordinates plot of the parameters against the objective,
//! the rung table (values, promotions, pauses, resumes) and the best trial's gate decision.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::html::{esc, page_end, page_start};

/// One trial as the page shows it.
#[derive(Debug, Clone, Default)]
pub struct TrialSeries {
    /// Its number.
    pub number: u32,
    /// `succeeded`, `stopped`, `failed`, ...
    pub state: String,
    /// Path → value (as YAML text).
    pub params: BTreeMap<String, String>,
    /// The objective at its last epoch.
    pub objective: Option<f64>,
    /// The objective's metric at each epoch it trained.
    pub curve: Vec<(u32, f64)>,
    /// Its value at each rung it reached, and whether it was promoted from there.
    pub rungs: Vec<(Option<f64>, bool)>,
    /// Times it resumed from a checkpoint.
    pub resumes: u32,
}

/// The best trial's meeting with the champion.
#[derive(Debug, Clone, Default)]
pub struct GateSummary {
    /// The trial sent.
    pub trial: u32,
    /// The model recorded.
    pub model_id: String,
    /// Whether it became the champion.
    pub promoted: bool,
    /// The gate's reasons.
    pub reasons: Vec<String>,
}

/// What the sweep page shows.
#[derive(Debug, Clone, Default)]
pub struct SweepPage {
    /// Sweep id and name.
    pub id: String,
    /// See `id`.
    pub name: String,
    /// `grid`, `random` or `asha`, and the sweep's state.
    pub strategy: String,
    /// See `strategy`.
    pub state: String,
    /// The objective's metric and direction.
    pub metric: String,
    /// See `metric`.
    pub maximize: bool,
    /// ASHA's rung epochs (empty otherwise).
    pub rungs: Vec<u32>,
    /// Every trial, by number.
    pub trials: Vec<TrialSeries>,
    /// The best trial.
    pub best: Option<u32>,
    /// Its gate decision.
    pub gate: Option<GateSummary>,
}

/// The objective per epoch, one line per trial (the best drawn thick).
fn curves(page: &SweepPage) -> Value {
    let data: Vec<Value> = page
        .trials
        .iter()
        .filter(|t| !t.curve.is_empty())
        .map(|t| {
            let best = page.best == Some(t.number);
            json!({
                "type": "scatter",
                "mode": "lines+markers",
                "name": format!("trial {}{}", t.number, if best { " (best)" } else { "" }),
                "x": t.curve.iter().map(|(e, _)| e).collect::<Vec<_>>(),
                "y": t.curve.iter().map(|(_, v)| v).collect::<Vec<_>>(),
                "line": {"width": if best { 4.0 } else { 1.5 }},
            })
        })
        .collect();
    json!({
        "data": data,
        "layout": {
            "title": {"text": format!("{} per epoch", page.metric)},
            "height": 420,
            "xaxis": {"title": {"text": "epoch"}, "dtick": 1},
            "yaxis": {"title": {"text": page.metric}},
        },
    })
}

/// Parameters against the objective: numeric parameters on their own scale (log-like ranges
/// stay linear; hover shows the values), others as categories.
fn parallel(page: &SweepPage) -> Value {
    let scored: Vec<&TrialSeries> = page
        .trials
        .iter()
        .filter(|t| t.objective.is_some())
        .collect();
    let paths: BTreeSet<&String> = scored.iter().flat_map(|t| t.params.keys()).collect();
    let mut dimensions = Vec::new();
    for path in paths {
        let raw: Vec<&str> = scored
            .iter()
            .map(|t| t.params.get(path).map_or("", String::as_str))
            .collect();
        let numbers: Option<Vec<f64>> = raw.iter().map(|v| v.parse::<f64>().ok()).collect();
        match numbers {
            Some(values) => dimensions.push(json!({"label": path, "values": values})),
            None => {
                let labels: Vec<&str> = raw
                    .iter()
                    .copied()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let values: Vec<usize> = raw
                    .iter()
                    .map(|v| labels.iter().position(|l| l == v).unwrap_or(0))
                    .collect();
                dimensions.push(json!({
                    "label": path,
                    "values": values,
                    "tickvals": (0..labels.len()).collect::<Vec<_>>(),
                    "ticktext": labels,
                }));
            }
        }
    }
    let objective: Vec<f64> = scored.iter().filter_map(|t| t.objective).collect();
    dimensions.push(json!({"label": page.metric, "values": objective}));
    json!({
        "data": [{
            "type": "parcoords",
            "line": {
                "color": objective,
                "colorscale": "Viridis",
                "reversescale": !page.maximize,
                "showscale": true,
            },
            "dimensions": dimensions,
        }],
        "layout": {"title": {"text": "parameters against the objective"}, "height": 420},
    })
}

fn value(v: Option<f64>) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.4}"))
}

/// Renders the page.
pub fn render(page: &SweepPage) -> String {
    let mut out = page_start(&format!("trainfleet sweep {}", page.name));
    let direction = if page.maximize {
        "higher is better"
    } else {
        "lower is better"
    };
    let _ = write!(
        out,
        "<header><h1>Sweep {}</h1><div class=\"sub\">{} · {} · {} trials · {} ({direction}) · {}</div></header><main>",
        esc(&page.name),
        esc(&page.id),
        esc(&page.strategy),
        page.trials.len(),
        esc(&page.metric),
        esc(&page.state)
    );
    out.push_str(
        "<section><h2>Curves</h2><div class=\"chart\" id=\"chart-curves\"></div></section>\
         <section><h2>Parameters</h2><div class=\"chart\" id=\"chart-parallel\"></div></section>",
    );
    let rung_heads: String = page
        .rungs
        .iter()
        .map(|r| format!("<th>rung {r} ep</th>"))
        .collect();
    let paths: BTreeSet<&String> = page.trials.iter().flat_map(|t| t.params.keys()).collect();
    let param_heads: String = paths
        .iter()
        .map(|p| format!("<th>{}</th>", esc(p)))
        .collect();
    let _ = write!(
        out,
        "<section><h2>Trials</h2><table id=\"trials\"><tr><th>trial</th><th>state</th>{param_heads}\
         <th>{}</th><th>epochs</th>{rung_heads}<th>resumes</th></tr>",
        esc(&page.metric)
    );
    for t in &page.trials {
        let best = if page.best == Some(t.number) {
            " class=\"best\""
        } else {
            ""
        };
        let params: String = paths
            .iter()
            .map(|p| {
                format!(
                    "<td class=\"mono\">{}</td>",
                    esc(t.params.get(*p).map_or("", String::as_str))
                )
            })
            .collect();
        let rungs: String = (0..page.rungs.len())
            .map(|k| match t.rungs.get(k) {
                Some((v, true)) => format!("<td>{} ↑ promoted</td>", value(*v)),
                Some((v, false)) if k + 1 < page.rungs.len() && t.state != "running" => {
                    format!("<td>{} ‖ paused</td>", value(*v))
                }
                Some((v, false)) => format!("<td>{}</td>", value(*v)),
                None => "<td></td>".to_owned(),
            })
            .collect();
        let _ = write!(
            out,
            "<tr{best}><td>{}</td><td>{}</td>{params}<td>{}</td><td>{}</td>{rungs}<td>{}</td></tr>",
            t.number,
            esc(&t.state),
            value(t.objective),
            t.curve.last().map_or(0, |(e, _)| *e),
            t.resumes
        );
    }
    out.push_str("</table></section>");
    out.push_str("<section><h2>The best trial against the champion</h2><div id=\"gate\">");
    match &page.gate {
        Some(g) if g.model_id.is_empty() => {
            let _ = write!(out, "<p>Trial {} is being evaluated.</p>", g.trial);
        }
        Some(g) => {
            let verdict = if g.promoted {
                "promoted: it is the champion"
            } else {
                "not promoted: the champion stays"
            };
            let _ = write!(
                out,
                "<p>Trial {} as model <span class=\"mono\">{}</span>: <b>{verdict}</b>.</p><ul>",
                g.trial,
                esc(&g.model_id)
            );
            for r in &g.reasons {
                let _ = write!(out, "<li>{}</li>", esc(r));
            }
            out.push_str("</ul>");
        }
        None => out.push_str("<p>Not sent to the gate.</p>"),
    }
    out.push_str("</div></section></main>");
    page_end(
        &mut out,
        [
            ("chart-curves".to_owned(), curves(page)),
            ("chart-parallel".to_owned(), parallel(page)),
        ],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(
        number: u32,
        lr: &str,
        arch: &str,
        curve: &[f64],
        rungs: &[(Option<f64>, bool)],
    ) -> TrialSeries {
        TrialSeries {
            number,
            state: "succeeded".into(),
            params: BTreeMap::from([
                ("training.learning_rate".to_owned(), lr.to_owned()),
                ("model.arch".to_owned(), arch.to_owned()),
            ]),
            objective: curve.last().copied(),
            curve: curve
                .iter()
                .enumerate()
                .map(|(i, v)| (i as u32 + 1, *v))
                .collect(),
            rungs: rungs.to_vec(),
            resumes: 0,
        }
    }

    #[test]
    fn the_page_draws_every_trial_and_maps_categories_to_ticks() {
        let page = SweepPage {
            id: "s-1".into(),
            name: "digits <asha>".into(),
            strategy: "asha".into(),
            state: "succeeded".into(),
            metric: "val_accuracy".into(),
            maximize: true,
            rungs: vec![1, 3],
            trials: vec![
                trial(
                    0,
                    "0.001",
                    "cnn",
                    &[0.5, 0.7, 0.9],
                    &[(Some(0.5), true), (Some(0.9), false)],
                ),
                trial(1, "0.01", "simple_cnn", &[0.3], &[(Some(0.3), false)]),
            ],
            best: Some(0),
            gate: Some(GateSummary {
                trial: 0,
                model_id: "m-1".into(),
                promoted: true,
                reasons: vec!["first model".into()],
            }),
        };
        let html = render(&page);
        assert!(html.contains("digits &lt;asha&gt;"), "names are escaped");
        assert!(html.contains("0.5000 ↑ promoted") && html.contains("0.3000 ‖ paused"));
        assert!(html.contains("<b>promoted: it is the champion</b>"));
        let par = parallel(&page);
        let dims = par["data"][0]["dimensions"].as_array().unwrap();
        assert_eq!(dims.len(), 3);
        assert_eq!(dims[0]["label"], "model.arch");
        assert_eq!(dims[0]["ticktext"], json!(["cnn", "simple_cnn"]));
        assert_eq!(dims[0]["values"], json!([0, 1]));
        assert_eq!(dims[1]["values"], json!([0.001, 0.01]));
        assert_eq!(dims[2]["values"], json!([0.9, 0.3]));
        assert_eq!(curves(&page)["data"].as_array().unwrap().len(), 2);
    }
}
