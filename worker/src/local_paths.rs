//! A job's paths are checked where the data is: on the worker that runs the task, against the
//! worker's data roots (`data_roots` in its config; see `trainfleet_core::data_roots`). The
//! coordinator may run on another host with no access to them (containers, Kubernetes, VMs), so
//! it cannot judge a path it does not see; the worker refuses a job as its first step, before
//! anything named by the job is opened, permanently (another attempt on the same worker cannot
//! help), naming the field.

use trainfleet_core::data_roots::DataRoots;
use trainfleet_core::job::{DatasetSpec, JobSpec};

use crate::error::Error;

/// Fails when the job names a file or URL outside `roots`, or a path that does not exist here.
pub fn check(spec: &JobSpec, roots: &DataRoots) -> crate::Result<()> {
    check_dataset(&spec.dataset, "dataset", roots)?;
    if let Some(path) = &spec.model.init_weights {
        roots
            .check_path("model.init_weights", path)
            .map_err(|e| with_host(e, path))?;
    }
    Ok(())
}

/// The dataset section's `path` and `url`; `at` is where the section is ("dataset").
pub fn check_dataset(dataset: &DatasetSpec, at: &str, roots: &DataRoots) -> crate::Result<()> {
    if let Some(path) = &dataset.path {
        roots
            .check_path(&format!("{at}.path"), path)
            .map_err(|e| with_host(e, path))?;
    }
    if let Some(url) = &dataset.url {
        roots.check_url(&format!("{at}.url"), url)?;
    }
    Ok(())
}

/// A path that cannot be used here: say on which host, since paths resolve on the worker.
fn with_host(err: trainfleet_core::Error, path: &std::path::Path) -> Error {
    match err {
        trainfleet_core::Error::InvalidField { field, .. } if !path.exists() => {
            let host = gethostname::gethostname().to_string_lossy().into_owned();
            Error::Spec(trainfleet_core::Error::invalid_field(
                field,
                format!(
                    "is {}, which does not exist on worker host {host} (a job's paths are \
                     resolved on the worker that runs it: mount the data at the same path on \
                     every worker, or use an object-store URL)",
                    path.display()
                ),
            ))
        }
        other => Error::Spec(other),
    }
}
