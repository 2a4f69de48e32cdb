//! A job's local paths are checked where the data is: on the worker that runs the task. The
//! coordinator may run on another host with no access to them (containers, Kubernetes, VMs), so
//! it cannot refuse a job for a path it does not see; the worker refuses it as its first step,
//! permanently (another attempt on the same mount cannot help), naming the field and the host.

use crate::error::Error;
use trainfleet_core::job::JobSpec;

/// Fails when `dataset.path` or `model.init_weights` names a path this worker cannot see.
pub fn check(spec: &JobSpec) -> crate::Result<()> {
    let checks = [
        ("dataset.path", spec.dataset.path.as_ref()),
        ("model.init_weights", spec.model.init_weights.as_ref()),
    ];
    for (field, path) in checks {
        if let Some(path) = path
            && !path.exists()
        {
            let host = gethostname::gethostname().to_string_lossy().into_owned();
            return Err(Error::Spec(trainfleet_core::Error::invalid_field(
                field,
                format!(
                    "is {}, which does not exist on worker host {host} (a job's paths are \
                     resolved on the worker that runs it: mount the data at the same path on \
                     every worker, or use an object-store URL)",
                    path.display()
                ),
            )));
        }
    }
    Ok(())
}
