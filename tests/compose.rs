//! The Compose files and the Dockerfile name only settings the binaries read: every
//! `TRAINFLEET_*` variable they set is one that `trainfleet-coordinator --help` or
//! `trainfleet-worker --help` lists, so a renamed flag cannot leave a deployment silently
//! unconfigured. (The files themselves run under Docker Compose; no Docker engine runs here, and
//! `tests/cluster_containers.rs` starts the same images with the same settings one by one.)

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use support::{binary, repo_root};

/// The `TRAINFLEET_*` variables a binary reads, from its `--help`.
fn variables(name: &str) -> anyhow::Result<BTreeSet<String>> {
    let out = Command::new(binary(name)).arg("--help").output()?;
    let help = String::from_utf8(out.stdout)?;
    Ok(help
        .split("env: ")
        .skip(1)
        .filter_map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            name.starts_with("TRAINFLEET_").then_some(name)
        })
        .collect())
}

/// Every `TRAINFLEET_*` name set in `text` (as `NAME:` in YAML or `NAME=` in a Dockerfile/.env).
fn set_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("TRAINFLEET_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        let after = text[i + name.len()..].chars().next();
        if matches!(after, Some(':') | Some('=')) {
            names.insert(name);
        }
    }
    names
}

#[test]
fn compose_files_and_the_dockerfile_set_only_variables_the_binaries_read() -> anyhow::Result<()> {
    let coordinator = variables("trainfleet-coordinator")?;
    let worker = variables("trainfleet-worker")?;
    assert!(
        coordinator.contains("TRAINFLEET_ETCD_ENDPOINTS"),
        "{coordinator:?}"
    );
    assert!(worker.contains("TRAINFLEET_COORDINATOR"), "{worker:?}");
    // Variables the Compose files pass on to the others, not to a binary.
    let compose_only = [
        "TRAINFLEET_CLUSTER_NAME",
        "TRAINFLEET_COORDINATOR_IMAGE",
        "TRAINFLEET_WORKER_IMAGE",
        "TRAINFLEET_COORDINATORS",
        "TRAINFLEET_DATASETS",
    ];
    for (file, reads) in [
        ("k8s/compose/control-plane.yaml", &coordinator),
        ("k8s/compose/worker.yaml", &worker),
    ] {
        let text = std::fs::read_to_string(repo_root().join(file))?;
        let _: serde_yaml::Value = serde_yaml::from_str(&text)?;
        for name in set_in(&text) {
            assert!(
                reads.contains(&name) || compose_only.contains(&name.as_str()),
                "{file} sets {name}, which the binary does not read"
            );
        }
    }
    let dockerfile = std::fs::read_to_string(repo_root().join("k8s/images/Dockerfile"))?;
    for name in set_in(&dockerfile) {
        assert!(
            coordinator.contains(&name) || worker.contains(&name),
            "the Dockerfile sets {name}, which no binary reads"
        );
    }
    Ok(())
}
