//! Sweeps on the wire: a structured `SweepSpec` into the domain spec (validated exactly like the
//! YAML form), and a sweep with its trials out.

use std::collections::BTreeMap;

use trainfleet_core::sweep::{AshaSpec, Direction, Objective, Param, Strategy, SweepSpec};
use trainfleet_core::{Error, Result};
use trainfleet_proto::v1;

use super::timestamp;
use crate::records::{SweepState, SweepView, TrialRecord, TrialState};

/// Largest sweep YAML (or structured base job YAML) accepted.
pub const MAX_SWEEP_YAML: usize = 1 << 20;

fn yaml_value(field: &str, text: &str) -> Result<serde_yaml::Value> {
    serde_yaml::from_str(text)
        .map_err(|e| Error::invalid_field(field, format!("is not a YAML value: {e}")))
}

fn yaml_values(field: &str, values: &v1::Values) -> Result<Vec<serde_yaml::Value>> {
    values
        .items
        .iter()
        .enumerate()
        .map(|(i, text)| yaml_value(&format!("{field}.items[{i}]"), text))
        .collect()
}

/// A Start request into a validated spec; errors name the field (and, for YAML, the line).
pub fn sweep_spec_from_wire(req: v1::start_sweep_request::Spec) -> Result<SweepSpec> {
    use v1::start_sweep_request::Spec;
    let s = match req {
        Spec::SpecYaml(text) => {
            if text.len() > MAX_SWEEP_YAML {
                return Err(Error::invalid_field(
                    "spec_yaml",
                    format!("is {} bytes; the limit is {MAX_SWEEP_YAML}", text.len()),
                ));
            }
            return SweepSpec::from_yaml(&text, "spec_yaml", None);
        }
        Spec::Structured(s) => s,
    };
    if s.job_yaml.len() > MAX_SWEEP_YAML {
        return Err(Error::invalid_field(
            "structured.job_yaml",
            format!(
                "is {} bytes; the limit is {MAX_SWEEP_YAML}",
                s.job_yaml.len()
            ),
        ));
    }
    let job = trainfleet_core::job::JobSpec::from_yaml(&s.job_yaml, "structured.job_yaml")?;
    let mut space = BTreeMap::new();
    for (i, p) in s.parameters.into_iter().enumerate() {
        use v1::sweep_parameter::Space;
        let field = format!("structured.parameters[{i}]");
        let param = match p.space {
            None => {
                return Err(Error::invalid_field(
                    &field,
                    "has no distribution; set one of const_value, int_range, double_range, log_range, categorical, grid",
                ));
            }
            Some(Space::ConstValue(text)) => {
                Param::Const(yaml_value(&format!("{field}.const_value"), &text)?)
            }
            Some(Space::IntRange(r)) => Param::Int(r.min, r.max),
            Some(Space::DoubleRange(r)) => Param::Double(r.min, r.max),
            Some(Space::LogRange(r)) => Param::Log(r.min, r.max),
            Some(Space::Categorical(v)) => {
                Param::Categorical(yaml_values(&format!("{field}.categorical"), &v)?)
            }
            Some(Space::Grid(v)) => Param::Grid(yaml_values(&format!("{field}.grid"), &v)?),
        };
        if space.insert(p.path.clone(), param).is_some() {
            return Err(Error::invalid_field(
                format!("{field}.path"),
                format!("{:?} appears twice", p.path),
            ));
        }
    }
    let strategy = match s.strategy.as_str() {
        "" | "random" => Strategy::Random,
        "grid" => Strategy::Grid,
        "asha" => Strategy::Asha,
        other => {
            return Err(Error::invalid_field(
                "structured.strategy",
                format!("is {other:?}; use grid, random or asha"),
            ));
        }
    };
    let direction = match s.objective_direction.as_str() {
        "" => None,
        "maximize" => Some(Direction::Maximize),
        "minimize" => Some(Direction::Minimize),
        other => {
            return Err(Error::invalid_field(
                "structured.objective_direction",
                format!("is {other:?}; use maximize or minimize"),
            ));
        }
    };
    let spec = SweepSpec {
        name: if s.name.is_empty() {
            "sweep".to_owned()
        } else {
            s.name
        },
        job: Some(job),
        job_file: None,
        space,
        strategy,
        max_trials: (s.max_trials > 0).then_some(s.max_trials),
        parallelism: if s.parallelism == 0 { 4 } else { s.parallelism },
        max_failed_trials: (s.max_failed_trials > 0).then_some(s.max_failed_trials),
        objective: Objective {
            metric: if s.objective_metric.is_empty() {
                "val_accuracy".to_owned()
            } else {
                s.objective_metric
            },
            direction,
        },
        seed: s.seed,
        asha: s.asha.map(|a| AshaSpec {
            min_epochs: a.min_epochs.max(1),
            max_epochs: (a.max_epochs > 0).then_some(a.max_epochs),
            eta: if a.eta == 0 { 3 } else { a.eta },
        }),
        promote_best: !s.skip_gate,
        warm_start: Vec::new(),
    };
    spec.validate().map_err(|e| match e {
        Error::InvalidField { field, message } => {
            Error::invalid_field(format!("structured.{field}"), message)
        }
        other => other,
    })?;
    Ok(spec)
}

impl SweepState {
    /// The wire value.
    pub fn to_wire(self) -> v1::SweepState {
        match self {
            SweepState::Running => v1::SweepState::Running,
            SweepState::Gating => v1::SweepState::Gating,
            SweepState::Succeeded => v1::SweepState::Succeeded,
            SweepState::Failed => v1::SweepState::Failed,
            SweepState::Cancelled => v1::SweepState::Cancelled,
        }
    }
}

impl TrialState {
    /// The wire value.
    pub fn to_wire(self) -> v1::TrialState {
        match self {
            TrialState::Running => v1::TrialState::Running,
            TrialState::Paused => v1::TrialState::Paused,
            TrialState::Succeeded => v1::TrialState::Succeeded,
            TrialState::Failed => v1::TrialState::Failed,
            TrialState::Cancelled => v1::TrialState::Cancelled,
            TrialState::Stopped => v1::TrialState::Stopped,
        }
    }
}

fn trial_to_wire(t: &TrialRecord) -> v1::Trial {
    v1::Trial {
        number: t.number,
        job_id: t.job_id.clone(),
        params: t
            .params
            .iter()
            .map(|(k, v)| {
                let yaml = serde_yaml::to_value(v).unwrap_or_default();
                (k.clone(), trainfleet_core::sweep::space::show(&yaml))
            })
            .collect(),
        state: t.state.to_wire() as i32,
        objective: t.objective,
        epochs: t.epochs,
        rungs: t
            .rungs
            .iter()
            .map(|r| v1::RungReport {
                epochs: 0,
                value: r.value,
                promoted: r.promoted,
            })
            .collect(),
        resumes: t.resumes,
        error: t.error.clone(),
        run_uri: t.run_uri.clone(),
    }
}

impl SweepView {
    /// The wire form.
    pub fn to_wire(&self) -> v1::Sweep {
        let r = &self.record;
        let rungs = r.spec.rungs();
        let mut trials: Vec<v1::Trial> = self.trials.iter().map(trial_to_wire).collect();
        for (wire, t) in trials.iter_mut().zip(&self.trials) {
            for (report, epochs) in wire.rungs.iter_mut().zip(&rungs).take(t.rungs.len()) {
                report.epochs = *epochs;
            }
        }
        v1::Sweep {
            id: r.id.clone(),
            name: r.spec.name.clone(),
            state: r.state.to_wire() as i32,
            strategy: r.spec.strategy.name().to_owned(),
            spec_yaml: r.spec.to_yaml(),
            trials,
            best: r.best,
            objective_metric: r.spec.objective.metric.clone(),
            maximize: r.spec.objective.maximize(),
            rungs,
            gate: r.gate.as_ref().map(|g| v1::SweepGate {
                job_id: g.job_id.clone(),
                trial: g.trial,
                model_id: g.model_id.clone(),
                promoted: g.promoted,
                reasons: g.reasons.clone(),
            }),
            error: r.error.clone(),
            created_at: Some(timestamp(r.created_at)),
            finished_at: r.finished_at.map(timestamp),
            max_trials: r.spec.trials(),
            started: r.started,
            failed: r.failed,
            owner: r.owner.clone(),
            retrain_dataset: r
                .retrain
                .as_ref()
                .map(|o| o.dataset.clone())
                .unwrap_or_default(),
            warm_start_from: r.warm_start_from.clone(),
        }
    }
}
