//! The one table of who may call what. A method missing from it is refused (default deny); a
//! test walks the served descriptor set and fails if any method lacks a rule.

use super::Role;

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone, with or without a token (health, for probes).
    Open,
    /// Any valid token, whatever its role (server reflection, WhoAmI).
    AnyToken,
    /// A valid token whose role is at least this one (viewer < submitter < admin).
    AtLeast(Role),
    /// A worker's token only.
    Worker,
}

use Role::{Admin, Submitter, Viewer};
use Rule::{AnyToken, AtLeast, Open, Worker};

/// Every service's methods, by service: `(service, method or "*", rule)`. A `*` row covers the
/// whole service; a named row wins over it.
pub const RULES: &[(&str, &str, Rule)] = &[
    ("grpc.health.v1.Health", "*", Open),
    ("grpc.reflection.v1.ServerReflection", "*", AnyToken),
    ("grpc.reflection.v1alpha.ServerReflection", "*", AnyToken),
    ("trainfleet.v1.WorkerService", "*", Worker),
    // Jobs.
    ("trainfleet.v1.JobService", "Submit", AtLeast(Submitter)),
    ("trainfleet.v1.JobService", "Get", AtLeast(Viewer)),
    ("trainfleet.v1.JobService", "List", AtLeast(Viewer)),
    // A submitter may cancel its own jobs; the service checks the owner.
    ("trainfleet.v1.JobService", "Cancel", AtLeast(Submitter)),
    ("trainfleet.v1.JobService", "Watch", AtLeast(Viewer)),
    // Datasets.
    ("trainfleet.v1.DatasetService", "Register", AtLeast(Admin)),
    ("trainfleet.v1.DatasetService", "List", AtLeast(Viewer)),
    ("trainfleet.v1.DatasetService", "Scan", AtLeast(Submitter)),
    (
        "trainfleet.v1.DatasetService",
        "ListVersions",
        AtLeast(Viewer),
    ),
    (
        "trainfleet.v1.DatasetService",
        "GetVersion",
        AtLeast(Viewer),
    ),
    (
        "trainfleet.v1.DatasetService",
        "Retrain",
        AtLeast(Submitter),
    ),
    ("trainfleet.v1.DatasetService", "History", AtLeast(Viewer)),
    // Models.
    ("trainfleet.v1.ModelService", "List", AtLeast(Viewer)),
    ("trainfleet.v1.ModelService", "Get", AtLeast(Viewer)),
    ("trainfleet.v1.ModelService", "GetChampion", AtLeast(Viewer)),
    ("trainfleet.v1.ModelService", "Promote", AtLeast(Admin)),
    ("trainfleet.v1.ModelService", "Rollback", AtLeast(Admin)),
    // The cluster.
    (
        "trainfleet.v1.ClusterService",
        "ListWorkers",
        AtLeast(Viewer),
    ),
    ("trainfleet.v1.ClusterService", "GetLeader", AtLeast(Viewer)),
    ("trainfleet.v1.ClusterService", "GetQueue", AtLeast(Viewer)),
    // Sweeps.
    ("trainfleet.v1.SweepService", "Start", AtLeast(Submitter)),
    ("trainfleet.v1.SweepService", "Get", AtLeast(Viewer)),
    ("trainfleet.v1.SweepService", "List", AtLeast(Viewer)),
    // A submitter may cancel its own sweeps; the service checks the owner.
    ("trainfleet.v1.SweepService", "Cancel", AtLeast(Submitter)),
    // Tokens.
    ("trainfleet.v1.AccessService", "CreateToken", AtLeast(Admin)),
    ("trainfleet.v1.AccessService", "ListTokens", AtLeast(Admin)),
    ("trainfleet.v1.AccessService", "RevokeToken", AtLeast(Admin)),
    ("trainfleet.v1.AccessService", "WhoAmI", AnyToken),
    ("trainfleet.v1.AccessService", "ListAudit", AtLeast(Admin)),
];

/// Methods that change state, recorded in the audit trail whatever their outcome (every
/// refused call is recorded too). Heartbeats and polls are not: they are the worker protocol's
/// steady beat, not decisions.
pub const AUDITED: &[&str] = &[
    "trainfleet.v1.JobService/Submit",
    "trainfleet.v1.JobService/Cancel",
    "trainfleet.v1.DatasetService/Register",
    "trainfleet.v1.DatasetService/Scan",
    "trainfleet.v1.DatasetService/Retrain",
    "trainfleet.v1.ModelService/Promote",
    "trainfleet.v1.ModelService/Rollback",
    "trainfleet.v1.SweepService/Start",
    "trainfleet.v1.SweepService/Cancel",
    "trainfleet.v1.AccessService/CreateToken",
    "trainfleet.v1.AccessService/RevokeToken",
    "trainfleet.v1.WorkerService/Register",
    "trainfleet.v1.WorkerService/CompleteTask",
];

/// Whether calls of `/service/method` are audited even when allowed.
pub fn audited(path: &str) -> bool {
    AUDITED.contains(&path.trim_start_matches('/'))
}

/// The rule for `/service/method`; `None`: no rule, so refused.
pub fn rule(path: &str) -> Option<Rule> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    let mut wildcard = None;
    for (s, m, rule) in RULES {
        if *s != service {
            continue;
        }
        if *m == method {
            return Some(*rule);
        }
        if *m == "*" {
            wildcard = Some(*rule);
        }
    }
    wildcard
}

/// Whether `role` passes `rule` (a caller with a valid token).
pub fn allows(rule: Rule, role: Role) -> bool {
    match rule {
        Open | AnyToken => true,
        Worker => role == Role::Worker,
        AtLeast(needed) => role != Role::Worker && role >= needed,
    }
}

/// Whether `service/method` is a method this coordinator serves (metrics label only these).
pub fn is_served(method: &str) -> bool {
    static SERVED: std::sync::OnceLock<std::collections::HashSet<String>> =
        std::sync::OnceLock::new();
    SERVED
        .get_or_init(|| {
            served_methods()
                .into_iter()
                .map(|m| m.trim_start_matches('/').to_owned())
                .collect()
        })
        .contains(method)
}

/// Every method the coordinator serves (`/service/method`), from the descriptor sets reflection
/// serves.
pub fn served_methods() -> Vec<String> {
    served().into_iter().map(|m| m.path).collect()
}

/// A served method.
#[derive(Debug, Clone)]
pub struct Served {
    /// `/service/method`.
    pub path: String,
    /// Whether it streams requests or responses.
    pub streaming: bool,
}

/// Every method the coordinator serves, from the descriptor sets reflection serves.
pub fn served() -> Vec<Served> {
    use prost::Message;
    use prost_types::FileDescriptorSet;
    let mut methods = Vec::new();
    for set in [
        trainfleet_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ] {
        let set = FileDescriptorSet::decode(set).expect("a descriptor set");
        for file in set.file {
            let package = file.package().to_owned();
            for service in file.service {
                let name = format!("{package}.{}", service.name());
                for method in service.method {
                    methods.push(Served {
                        path: format!("/{name}/{}", method.name()),
                        streaming: method.client_streaming() || method.server_streaming(),
                    });
                }
            }
        }
    }
    methods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_method_has_a_rule_and_no_rule_names_a_method_that_is_not_served() {
        let served = served_methods();
        assert!(served.len() > 30, "{served:?}");
        let missing: Vec<&String> = served.iter().filter(|m| rule(m).is_none()).collect();
        assert!(
            missing.is_empty(),
            "methods without an access rule: {missing:?}"
        );
        for (service, method, _) in RULES {
            let prefix = format!("/{service}/");
            assert!(
                served.iter().any(|m| m.starts_with(&prefix)
                    && (*method == "*" || m.ends_with(&format!("/{method}")))),
                "a rule for {service}/{method}, which is not served"
            );
        }
        assert_eq!(rule("/trainfleet.v1.JobService/Explode"), None);
        for method in AUDITED {
            assert!(
                served.contains(&format!("/{method}")),
                "audited {method} is not served"
            );
        }
        assert_eq!(rule("/no.such.Service/Get"), None);
    }

    #[test]
    fn roles_are_ordered_and_workers_are_kept_to_their_protocol() {
        let promote = rule("/trainfleet.v1.ModelService/Promote").unwrap();
        assert!(!allows(promote, Role::Viewer));
        assert!(!allows(promote, Role::Submitter));
        assert!(allows(promote, Role::Admin));
        assert!(!allows(promote, Role::Worker));
        let submit = rule("/trainfleet.v1.JobService/Submit").unwrap();
        assert!(allows(submit, Role::Submitter) && !allows(submit, Role::Viewer));
        let poll = rule("/trainfleet.v1.WorkerService/PollTask").unwrap();
        assert!(allows(poll, Role::Worker) && !allows(poll, Role::Admin));
        let get = rule("/trainfleet.v1.JobService/Get").unwrap();
        assert!(!allows(get, Role::Worker), "a worker reads nothing public");
    }
}
