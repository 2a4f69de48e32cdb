//! The job a retrain runs: the policy's `job_yaml`, its dataset pointed at the registered source
//! and pinned to the version; and the same resolution for any job that names a registered
//! dataset.

use trainfleet_core::job::{JobSpec, LocalFormat};

use crate::error::{Error, Result};
use crate::records::{DatasetRecord, VersionRecord};

/// The job a retrain of `record` on `version` runs: the policy's job, its dataset pointed at
/// the registered folder and pinned to the version. `Err` says why there is none.
pub fn retrain_spec(
    record: &DatasetRecord,
    version: Option<&VersionRecord>,
) -> std::result::Result<JobSpec, String> {
    if record.job_yaml.is_empty() {
        return Err(format!(
            "the policy of `{}` has no job_yaml: there is nothing to train",
            record.name
        ));
    }
    // The job may leave `dataset` out: it is this dataset. Appending it keeps the line numbers
    // of errors in what the user wrote.
    let value: serde_yaml::Value =
        trainfleet_core::config::parse_yaml(&record.job_yaml, "policy.job_yaml")
            .map_err(|e| format!("the policy's job_yaml is not valid: {e}"))?;
    let text = if value.get("dataset").is_some() {
        record.job_yaml.clone()
    } else {
        format!("{}\ndataset: {{}}\n", record.job_yaml.trim_end())
    };
    // Parsed, not validated yet: its dataset is completed first.
    let mut spec: JobSpec = trainfleet_core::config::parse_yaml(&text, "policy.job_yaml")
        .map_err(|e| format!("the policy's job_yaml is not valid: {e}"))?;
    point_at(&mut spec.dataset, record);
    // A placeholder pin validates the shape when there is no version yet (registration).
    const PLACEHOLDER: &str = "0000000000000000000000000000000000000000000000000000000000000000";
    let d = &mut spec.dataset;
    d.version = Some(version.map_or(PLACEHOLDER.to_owned(), |v| v.root.clone()));
    // Image folders are loaded file by file from the manifest; sample datasets (builtins, IDX)
    // are checked against the root after loading.
    d.manifest = (d.format == Some(LocalFormat::Imagefolder))
        .then(|| match version {
            Some(v) => v.manifest_uri.clone(),
            None => "placeholder".to_owned(),
        })
        .filter(|m| !m.is_empty());
    if spec.name.is_empty() || spec.name == JobSpec::default().name {
        spec.name = format!("retrain {}", record.name);
    }
    spec.validate()
        .map_err(|e| format!("the policy's job_yaml does not make a valid retrain: {e}"))?;
    Ok(spec)
}

/// Points a job's dataset section at the registered source (the job's other dataset settings,
/// such as image size or synth-digits' generator settings, stay).
fn point_at(d: &mut trainfleet_core::job::DatasetSpec, record: &DatasetRecord) {
    d.name = Some(record.name.clone());
    d.builtin = None;
    d.format = None;
    d.path = None;
    d.url = None;
    if !record.builtin.is_empty() {
        d.builtin = trainfleet_core::job::Builtin::from_name(&record.builtin);
    } else if !record.url.is_empty() {
        d.format = Some(LocalFormat::Imagefolder);
        d.url = Some(record.url.clone());
    } else {
        d.format = Some(if record.format == "idx" {
            LocalFormat::Idx
        } else {
            LocalFormat::Imagefolder
        });
        d.path = Some(record.directory.clone().into());
    }
}

/// Fills in the source of a job that names a registered dataset, pinned to the version it asks
/// for (a number, a root hash, or the latest), and validates the result.
pub(crate) fn resolve_registered(
    datasets: &std::collections::BTreeMap<String, DatasetRecord>,
    spec: &mut JobSpec,
) -> Result<()> {
    let name = spec.dataset.name.clone().unwrap_or_default();
    let record = datasets.get(&name).ok_or_else(|| {
        Error::NotFound(format!(
            "`dataset.name` is {name:?}, which is not registered (DatasetService.Register)"
        ))
    })?;
    let wanted = spec.dataset.version.clone().unwrap_or_default();
    let version = match wanted.as_str() {
        "" | "latest" => record.versions.last(),
        text => record
            .versions
            .iter()
            .find(|v| v.root == text || v.number.to_string() == text),
    }
    .ok_or_else(|| {
        if record.versions.is_empty() {
            Error::FailedPrecondition(format!(
                "dataset `{name}` has no version yet: scan it first (trainfleet dataset scan {name})"
            ))
        } else {
            Error::NotFound(format!("dataset `{name}` has no version {wanted:?}"))
        }
    })?;
    point_at(&mut spec.dataset, record);
    spec.dataset.version = Some(version.root.clone());
    spec.dataset.manifest = (spec.dataset.format == Some(LocalFormat::Imagefolder))
        .then(|| version.manifest_uri.clone())
        .filter(|m| !m.is_empty());
    spec.validate()?;
    Ok(())
}

/// The dataset section a scan of a builtin or IDX dataset loads: the retrain job's, so both see
/// the same samples (or the defaults when there is no job).
pub(crate) fn scan_dataset_yaml(record: &DatasetRecord) -> String {
    if record.builtin.is_empty() && record.format != "idx" {
        return String::new();
    }
    let mut d = retrain_spec(record, None)
        .map(|s| s.dataset)
        .unwrap_or_default();
    point_at(&mut d, record);
    d.version = None;
    d.manifest = None;
    d.fraction = 1.0;
    serde_yaml::to_string(&d).expect("a dataset spec serialises")
}
