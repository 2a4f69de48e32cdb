//! The sweep spec: a base job, a search space over its dotted paths, a strategy and a budget.
//! `configs/sweep-*.yaml` are examples; `SweepService.Start` takes the same YAML.
//!
//! Parsing rejects unknown keys with `file:line:column`; [`SweepSpec::validate`] then checks what
//! parses but cannot work (a path the job spec lacks, a range with min > max, a log range that
//! reaches 0, a range end that makes the job invalid), and errors carry the line of the field
//! when it can be found, and always its path (`space.training.learning_rate`). Nothing runs
//! before a spec validates.
//!
//! - `space.rs`: distributions, proposals, applying values to the base job.
//! - `asha.rs`: the rung arithmetic and promotion rule of ASHA.

pub mod asha;
mod locate;
pub mod space;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

pub use space::Param;

use crate::job::JobSpec;
use crate::{Error, Result};

/// Most trials one sweep may run.
pub const MAX_TRIALS: u32 = 10_000;

/// A hyperparameter sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Human name; trials are named `<name>-t<number>`.
    #[serde(default = "default_name")]
    pub name: String,
    /// The base job, inline. Every trial is this job with the space's values set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobSpec>,
    /// Or the base job's file, relative to the sweep file (read when the sweep file is; the wire
    /// takes `job` inline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_file: Option<String>,
    /// Dotted job path → distribution.
    pub space: BTreeMap<String, Param>,
    /// How trials are chosen.
    #[serde(default)]
    pub strategy: Strategy,
    /// Trials in all (for `grid`, when unset: the warm starts, then every grid point; required
    /// otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_trials: Option<u32>,
    /// Trials training at once (paused ASHA trials do not count: they hold no worker).
    #[serde(default = "default_parallelism")]
    pub parallelism: u32,
    /// The sweep stops starting trials once this many failed (default: a quarter of
    /// `max_trials`, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failed_trials: Option<u32>,
    /// What trials are ranked by.
    #[serde(default)]
    pub objective: Objective,
    /// With the same spec, the same seed proposes the same trials.
    #[serde(default)]
    pub seed: u64,
    /// ASHA's rungs (with `strategy: asha`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asha: Option<AshaSpec>,
    /// When the sweep ends, its best trial meets the dataset's champion through the job's gate
    /// (the ordinary eval on the same test split); it is promoted only if it wins.
    #[serde(default = "yes")]
    pub promote_best: bool,
    /// Configurations proposed first (a previous sweep's best): path → value, each path in the
    /// space; paths left out are drawn as usual.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warm_start: Vec<BTreeMap<String, Value>>,
}

/// How trials are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Every point of the grid parameters' cross product (other parameters drawn per trial).
    Grid,
    /// Independent draws.
    #[default]
    Random,
    /// Random draws, trained in rungs: asynchronous successive halving with promotions that
    /// resume paused trials from their checkpoints.
    Asha,
}

impl Strategy {
    /// Its name in specs and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Grid => "grid",
            Strategy::Random => "random",
            Strategy::Asha => "asha",
        }
    }
}

/// The metric trials are ranked by: a per-epoch validation metric, so the test split stays
/// for the gate (ranking many trials on test, then gating the winner on test, would be biased).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    /// `val_accuracy` or `val_loss`.
    pub metric: String,
    /// `maximize` or `minimize` (default: maximize accuracy, minimize loss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
}

impl Default for Objective {
    fn default() -> Self {
        Self {
            metric: "val_accuracy".to_owned(),
            direction: None,
        }
    }
}

impl Objective {
    /// Metrics a sweep can rank by.
    pub const METRICS: [&'static str; 2] = ["val_accuracy", "val_loss"];

    /// Whether larger is better.
    pub fn maximize(&self) -> bool {
        match self.direction {
            Some(d) => d == Direction::Maximize,
            None => !self.metric.ends_with("loss"),
        }
    }
}

/// Which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Larger is better.
    Maximize,
    /// Smaller is better.
    Minimize,
}

/// ASHA's rungs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AshaSpec {
    /// Epochs of the first rung.
    #[serde(default = "one")]
    pub min_epochs: u32,
    /// Epochs of the last rung (default: the base job's `training.epochs`); every trial's job
    /// has `training.epochs` set to this, so its learning-rate schedule is the same at every
    /// rung and a resumed trial continues exactly where it paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_epochs: Option<u32>,
    /// Reduction factor: the top 1/η of a rung is promoted.
    #[serde(default = "three")]
    pub eta: u32,
}

fn default_name() -> String {
    "sweep".to_owned()
}
fn default_parallelism() -> u32 {
    4
}
fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}

impl SweepSpec {
    /// Reads a sweep file (its `job_file`, if any, relative to it) and validates it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string(), path.parent())
    }

    /// Parses and validates sweep YAML; `origin` names it in errors. A `job_file` is read
    /// relative to `dir`; without a directory (the wire), only an inline `job` is accepted.
    pub fn from_yaml(text: &str, origin: &str, dir: Option<&Path>) -> Result<Self> {
        let mut spec: Self =
            serde_yaml::from_str(text).map_err(|e| crate::config::yaml_error(origin, &e))?;
        let located = |e: Error| locate::with_location(e, text, origin);
        match (&spec.job, spec.job_file.take(), dir) {
            (Some(_), Some(_), _) => {
                return Err(located(Error::invalid_field(
                    "job_file",
                    "and job are both set; give the base job one way",
                )));
            }
            (None, Some(file), Some(dir)) => {
                spec.job = Some(JobSpec::from_file(&dir.join(file))?);
            }
            (None, Some(_), None) => {
                return Err(located(Error::invalid_field(
                    "job_file",
                    "cannot be read here; send the base job inline as job:",
                )));
            }
            _ => {}
        }
        spec.validate().map_err(located)?;
        Ok(spec)
    }

    /// Parses sweep YAML that must not name a base job, sets `base` as its job, and validates:
    /// a dataset's retrain sweep, whose base job is the policy's job pinned to a version.
    pub fn with_base(text: &str, origin: &str, base: JobSpec) -> Result<Self> {
        let mut spec: Self =
            serde_yaml::from_str(text).map_err(|e| crate::config::yaml_error(origin, &e))?;
        let located = |e: Error| locate::with_location(e, text, origin);
        for (field, set) in [
            ("job", spec.job.is_some()),
            ("job_file", spec.job_file.is_some()),
        ] {
            if set {
                return Err(located(Error::invalid_field(
                    field,
                    "is set, but a retrain sweep's base job is the policy's job_yaml; leave it out",
                )));
            }
        }
        spec.job = Some(base);
        spec.validate().map_err(located)?;
        Ok(spec)
    }

    /// What the retrain policy's idempotency compares: the base job's configuration (without
    /// its version pin) and the search itself, without warm starts (which differ from one
    /// retrain to the next while the search stays the same).
    pub fn config_hash(&self) -> String {
        let mut search = self.clone();
        let base = search
            .job
            .take()
            .map(|j| j.config_hash())
            .unwrap_or_default();
        search.warm_start.clear();
        let text = format!("{base}\n{}", search.to_yaml());
        crate::artifacts::sha256_hex(text.as_bytes())
    }

    /// The spec as canonical YAML, with the base job inline: what is stored with a sweep.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a sweep spec always serialises")
    }

    /// The base job.
    pub fn base(&self) -> &JobSpec {
        self.job.as_ref().expect("validated specs have a job")
    }

    /// Trials in all: `max_trials`, or for a grid without it, its warm starts and then every
    /// grid point.
    pub fn trials(&self) -> u32 {
        self.max_trials.unwrap_or_else(|| {
            let all = space::grid_size(&self.space) + self.warm_start.len() as u64;
            u32::try_from(all).unwrap_or(MAX_TRIALS)
        })
    }

    /// Failed trials after which no new trial starts.
    pub fn failure_budget(&self) -> u32 {
        self.max_failed_trials
            .unwrap_or_else(|| self.trials().div_ceil(4).max(1))
    }

    /// ASHA's rung epochs (empty for other strategies).
    pub fn rungs(&self) -> Vec<u32> {
        match (&self.asha, self.strategy) {
            (Some(a), Strategy::Asha) => asha::rungs(
                a.min_epochs,
                a.max_epochs.unwrap_or(self.base().training.epochs),
                a.eta,
            ),
            _ => Vec::new(),
        }
    }

    /// The values of trial `index`: a warm-start configuration first, then proposals.
    pub fn propose(&self, index: u32) -> BTreeMap<String, Value> {
        let grid = self.strategy == Strategy::Grid;
        let warm = self.warm_start.len() as u32;
        let mut values = space::propose(&self.space, self.seed, index.saturating_sub(warm), grid);
        if let Some(pinned) = self.warm_start.get(index as usize) {
            for (path, value) in pinned {
                values.insert(path.clone(), value.clone());
            }
        }
        values
    }

    /// Trial `index`'s job: the base with `values` set, its own name, seed and labels, and for
    /// ASHA the last rung's epochs.
    pub fn trial_job(&self, index: u32, values: &BTreeMap<String, Value>) -> Result<JobSpec> {
        let mut job = space::apply(self.base(), values)?;
        job.name = format!("{}-t{index:03}", self.name);
        if !values.contains_key("training.seed") {
            job.training.seed = space::trial_seed(self.seed, index);
        }
        if let Some(last) = self.rungs().last() {
            job.training.epochs = *last;
        }
        job.labels.insert("sweep".to_owned(), self.name.clone());
        job.labels.insert("trial".to_owned(), index.to_string());
        Ok(job)
    }

    /// Checks what parses but cannot work; errors name the field path.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: String| Err(Error::invalid_field(field, message));
        crate::ids::validate_worker_id("name", &self.name)?;
        let Some(base) = &self.job else {
            return bad(
                "job",
                "is missing; give the base job inline (job:) or job_file:".into(),
            );
        };
        if self.space.is_empty() {
            return bad("space", "is empty; give at least one parameter".into());
        }
        for (path, param) in &self.space {
            let field = format!("space.{path}");
            if path.is_empty()
                || !path.split('.').all(|p| {
                    !p.is_empty()
                        && p.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                })
            {
                return bad(
                    &field,
                    "is not a dotted job path like training.learning_rate".into(),
                );
            }
            if path == "name" || path.starts_with("labels") {
                return bad(&field, "is set by the sweep for each trial".into());
            }
            if self.strategy == Strategy::Asha && path == "training.epochs" {
                return bad(&field, "is set by ASHA's rungs (asha.max_epochs)".into());
            }
            param.check(&field)?;
        }
        // Each end of each range, with every other parameter at its first value (so a `const`
        // arch and the widths that only that arch takes validate together).
        let first: BTreeMap<String, Value> = self
            .space
            .iter()
            .map(|(path, p)| (path.clone(), p.extremes().swap_remove(0)))
            .collect();
        for (path, param) in &self.space {
            for value in param.extremes() {
                let mut values = first.clone();
                values.insert(path.clone(), value);
                space::apply(base, &values)?;
            }
        }
        let grid = space::grid_size(&self.space);
        let random = self.space.values().any(|p| {
            matches!(
                p,
                Param::Int(..) | Param::Double(..) | Param::Log(..) | Param::Categorical(_)
            )
        });
        match self.max_trials {
            Some(n) if !(1..=MAX_TRIALS).contains(&n) => {
                return bad("max_trials", format!("is {n}; it must be 1..={MAX_TRIALS}"));
            }
            Some(n)
                if self.strategy == Strategy::Grid
                    && u64::from(n) > grid + self.warm_start.len() as u64
                    && !random =>
            {
                return bad(
                    "max_trials",
                    format!(
                        "is {n}, above the grid's {grid} points (and {} warm starts); with no random parameter the extra trials would repeat configurations",
                        self.warm_start.len()
                    ),
                );
            }
            None if self.strategy != Strategy::Grid => {
                return bad(
                    "max_trials",
                    format!("is required with strategy {}", self.strategy.name()),
                );
            }
            None if grid > u64::from(MAX_TRIALS) => {
                return bad(
                    "space",
                    format!("spans {grid} grid points; at most {MAX_TRIALS}"),
                );
            }
            _ => {}
        }
        if self.strategy == Strategy::Grid
            && !self.space.values().any(|p| matches!(p, Param::Grid(_)))
        {
            return bad(
                "strategy",
                "is grid, but no parameter is a grid list".into(),
            );
        }
        if !(1..=1024).contains(&self.parallelism) {
            return bad(
                "parallelism",
                format!("is {}; it must be 1..=1024", self.parallelism),
            );
        }
        if self.max_failed_trials == Some(0) {
            return bad("max_failed_trials", "must be at least 1".into());
        }
        if !Objective::METRICS.contains(&self.objective.metric.as_str()) {
            return bad(
                "objective.metric",
                format!(
                    "is {:?}; use one of {}",
                    self.objective.metric,
                    Objective::METRICS.join(", ")
                ),
            );
        }
        if base.dataset.validation_pct == 0 {
            return bad(
                "job.dataset.validation_pct",
                "is 0; trials are ranked on validation metrics, so the base job needs a validation split".into(),
            );
        }
        match (self.strategy, &self.asha) {
            (Strategy::Asha, None) => {
                return bad(
                    "asha",
                    "is required with strategy asha (min_epochs, max_epochs, eta)".into(),
                );
            }
            (Strategy::Asha, Some(a)) => {
                let max = a.max_epochs.unwrap_or(base.training.epochs);
                if a.eta < 2 {
                    return bad("asha.eta", format!("is {}; it must be at least 2", a.eta));
                }
                if a.min_epochs == 0 || a.min_epochs >= max {
                    return bad(
                        "asha.min_epochs",
                        format!(
                            "is {}; it must be 1 or more and below max_epochs ({max})",
                            a.min_epochs
                        ),
                    );
                }
                if max > 100_000 {
                    return bad(
                        "asha.max_epochs",
                        format!("is {max}; it must be at most 100000"),
                    );
                }
            }
            (_, Some(_)) => {
                return bad(
                    "asha",
                    format!(
                        "applies only to strategy asha; this sweep is {}",
                        self.strategy.name()
                    ),
                );
            }
            _ => {}
        }
        for (i, pinned) in self.warm_start.iter().enumerate() {
            if let Some(path) = pinned.keys().find(|p| !self.space.contains_key(*p)) {
                return bad(
                    &format!("warm_start[{i}].{path}"),
                    "is not a path of the space".into(),
                );
            }
            self.trial_job(i as u32, &self.propose(i as u32))
                .map_err(|e| Error::invalid_field(format!("warm_start[{i}]"), e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
