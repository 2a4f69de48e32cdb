//! A sweep's search space: one distribution per dotted job path, and the pure functions that turn
//! (space, seed, trial index) into a trial's values and its job.
//!
//! Proposals are a pure function of the space, the sweep's seed and the trial's index (the RNG is
//! ChaCha8 seeded from both), so the same spec and seed propose the same trials in any order, and
//! a coordinator that takes over a sweep needs only the number of trials proposed to go on.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

use crate::job::JobSpec;
use crate::{Error, Result};

/// One parameter's distribution. In YAML, a one-key mapping: `{log: [1e-4, 1e-1]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Form", into = "Form")]
pub enum Param {
    /// Always this value (to pin a field for the whole sweep without editing the base job).
    Const(Value),
    /// An integer uniform in `[min, max]`, both included.
    Int(i64, i64),
    /// A float uniform in `[min, max)`.
    Double(f64, f64),
    /// A float log-uniform in `[min, max)`; both must be > 0 (learning rates, weight decay).
    Log(f64, f64),
    /// One of these values, uniformly.
    Categorical(Vec<Value>),
    /// Every one of these values: `strategy: grid` runs the cross product of all grid
    /// parameters; `random` and `asha` draw from them like `categorical`.
    Grid(Vec<Value>),
}

/// The YAML form of a [`Param`]: exactly one of these keys.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Form {
    #[serde(rename = "const", default, skip_serializing_if = "Option::is_none")]
    constant: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    int: Option<(i64, i64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    double: Option<(f64, f64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    log: Option<(f64, f64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    categorical: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grid: Option<Vec<Value>>,
}

impl TryFrom<Form> for Param {
    type Error = String;

    fn try_from(f: Form) -> Result<Self, String> {
        let mut set = Vec::new();
        if let Some(v) = f.constant {
            set.push(Param::Const(v));
        }
        if let Some((lo, hi)) = f.int {
            set.push(Param::Int(lo, hi));
        }
        if let Some((lo, hi)) = f.double {
            set.push(Param::Double(lo, hi));
        }
        if let Some((lo, hi)) = f.log {
            set.push(Param::Log(lo, hi));
        }
        if let Some(v) = f.categorical {
            set.push(Param::Categorical(v));
        }
        if let Some(v) = f.grid {
            set.push(Param::Grid(v));
        }
        match set.len() {
            1 => Ok(set.remove(0)),
            0 => Err("give one of const, int, double, log, categorical, grid".to_owned()),
            _ => Err("give only one of const, int, double, log, categorical, grid".to_owned()),
        }
    }
}

impl From<Param> for Form {
    fn from(p: Param) -> Self {
        let mut f = Form::default();
        match p {
            Param::Const(v) => f.constant = Some(v),
            Param::Int(lo, hi) => f.int = Some((lo, hi)),
            Param::Double(lo, hi) => f.double = Some((lo, hi)),
            Param::Log(lo, hi) => f.log = Some((lo, hi)),
            Param::Categorical(v) => f.categorical = Some(v),
            Param::Grid(v) => f.grid = Some(v),
        }
        f
    }
}

/// Most values a categorical or grid parameter may list.
pub const MAX_CHOICES: usize = 10_000;

impl Param {
    /// Checks the distribution itself (ranges, emptiness); `field` names it in errors.
    pub fn check(&self, field: &str) -> Result<()> {
        let bad = |message: String| Err(Error::invalid_field(field, message));
        match self {
            Param::Const(_) => Ok(()),
            Param::Int(lo, hi) if lo > hi => bad(format!("min {lo} is above max {hi}")),
            Param::Double(lo, hi) | Param::Log(lo, hi) if !(lo.is_finite() && hi.is_finite()) => {
                bad(format!("range [{lo}, {hi}] must be finite"))
            }
            Param::Double(lo, hi) | Param::Log(lo, hi) if lo > hi => {
                bad(format!("min {lo} is above max {hi}"))
            }
            Param::Log(lo, _) if *lo <= 0.0 => bad(format!(
                "a log range must be above 0; min is {lo} (use double for ranges that reach 0)"
            )),
            Param::Categorical(v) | Param::Grid(v) if v.is_empty() => {
                bad("lists no values".to_owned())
            }
            Param::Categorical(v) | Param::Grid(v) if v.len() > MAX_CHOICES => {
                bad(format!("lists {} values; at most {MAX_CHOICES}", v.len()))
            }
            _ => Ok(()),
        }
    }

    /// The values whose job must validate for the parameter to be usable: both ends of a range,
    /// every listed value.
    pub fn extremes(&self) -> Vec<Value> {
        match self {
            Param::Const(v) => vec![v.clone()],
            Param::Int(lo, hi) => vec![Value::from(*lo), Value::from(*hi)],
            Param::Double(lo, hi) | Param::Log(lo, hi) => vec![Value::from(*lo), Value::from(*hi)],
            Param::Categorical(v) | Param::Grid(v) => v.clone(),
        }
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> Value {
        match self {
            Param::Const(v) => v.clone(),
            Param::Int(lo, hi) => Value::from(rng.random_range(*lo..=*hi)),
            Param::Double(lo, hi) if lo == hi => Value::from(*lo),
            Param::Double(lo, hi) => Value::from(rng.random_range(*lo..*hi)),
            Param::Log(lo, hi) if lo == hi => Value::from(*lo),
            Param::Log(lo, hi) => Value::from(rng.random_range(lo.ln()..hi.ln()).exp()),
            Param::Categorical(v) | Param::Grid(v) => v[rng.random_range(0..v.len())].clone(),
        }
    }
}

/// Number of grid points: the product of every grid parameter's length (1 with none).
pub fn grid_size(space: &BTreeMap<String, Param>) -> u64 {
    space
        .values()
        .filter_map(|p| match p {
            Param::Grid(v) => Some(v.len() as u64),
            _ => None,
        })
        .fold(1u64, |n, len| n.saturating_mul(len))
}

/// The values of trial `index`. With `grid`, grid parameters take grid point `index mod size`
/// (the last path in key order varies fastest); every other parameter is drawn from the RNG of
/// (seed, index), in key order.
pub fn propose(
    space: &BTreeMap<String, Param>,
    seed: u64,
    index: u32,
    grid: bool,
) -> BTreeMap<String, Value> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, u64::from(index)));
    let mut point = u64::from(index) % grid_size(space).max(1);
    let mut grid_values = BTreeMap::new();
    if grid {
        for (path, param) in space.iter().rev() {
            if let Param::Grid(values) = param {
                let len = values.len() as u64;
                grid_values.insert(path.clone(), values[(point % len) as usize].clone());
                point /= len;
            }
        }
    }
    space
        .iter()
        .map(|(path, param)| {
            let value = match grid_values.remove(path) {
                Some(v) => v,
                None => param.sample(&mut rng),
            };
            (path.clone(), value)
        })
        .collect()
}

/// A trial's own training seed: distinct per (sweep seed, index), stable across coordinators.
pub fn trial_seed(seed: u64, index: u32) -> u64 {
    mix(seed ^ 0x7472_6961_6c73, u64::from(index)) >> 1
}

/// The base job with `values` set at their dotted paths, parsed and validated as a job. Errors
/// name the parameter (`space.training.learning_rate`) and the value.
pub fn apply(base: &JobSpec, values: &BTreeMap<String, Value>) -> Result<JobSpec> {
    let mut doc: Value = serde_yaml::to_value(base).expect("a job spec always serialises");
    for (path, value) in values {
        set(&mut doc, path, value.clone())?;
    }
    let spec: JobSpec = serde_yaml::from_value(doc).map_err(|e| {
        // serde names the offending key in backticks: find the parameter with that segment.
        let text = e.to_string();
        let field = values
            .keys()
            .find(|path| {
                path.split('.')
                    .any(|seg| text.contains(&format!("`{seg}`")))
            })
            .map_or_else(|| "space".to_owned(), |p| format!("space.{p}"));
        Error::invalid_field(field, format!("does not fit the job spec: {e}"))
    })?;
    spec.validate().map_err(|e| match e {
        Error::InvalidField { field, message } => {
            let param = values
                .iter()
                .find(|(path, _)| **path == field || field.starts_with(&format!("{path}.")));
            match param {
                Some((path, value)) => Error::invalid_field(
                    format!("space.{path}"),
                    format!("{} makes the job invalid: {field} {message}", show(value)),
                ),
                None => Error::invalid_field(field, message),
            }
        }
        other => other,
    })?;
    Ok(spec)
}

/// Sets `value` at a dotted path, making mappings on the way; refuses to go through a value that
/// is not a mapping.
fn set(doc: &mut Value, path: &str, value: Value) -> Result<()> {
    let mut at = doc;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if at.is_null() {
            *at = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = at else {
            return Err(Error::invalid_field(
                format!("space.{path}"),
                format!("{} is not a section of the job spec", parts[..i].join(".")),
            ));
        };
        let key = Value::from(*part);
        if i + 1 == parts.len() {
            map.insert(key, value);
            return Ok(());
        }
        at = map.entry(key).or_insert(Value::Null);
    }
    Ok(())
}

/// A value as one line: scalars plainly, sequences and mappings in flow style.
pub fn show(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Sequence(items) => {
            let items: Vec<String> = items.iter().map(show).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Mapping(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", show(k), show(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Tagged(t) => format!("{} {}", t.tag, show(&t.value)),
    }
}

/// splitmix64 of a combined word: well-spread seeds from (seed, index).
fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed
        .wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
