//! The Helm chart (`k8s/charts/trainfleet`), checked as far as a machine without helm or a
//! cluster allows. Rendering uses Helm's own template engine (Go's text/template with sprig, in
//! `k8s/charts/render`, built here with Debian's Go); values are checked against
//! `values.schema.json` (JSON schema, as `helm install` does); every rendered document is
//! validated with `kubernetes-validate --strict` for two Kubernetes versions; and the config
//! files the chart writes are loaded with the binaries' own loaders (`deny_unknown_fields`: a key
//! the chart writes that the binary does not know fails here).

mod charts;
mod support;

use std::path::PathBuf;

use charts::*;
use serde_yaml::Value;
use trainfleet_core::config::{CoordinatorConfig, StoreKind, WorkerConfig};

#[test]
fn every_value_set_renders_validates_and_writes_configs_the_binaries_accept() {
    let mut sets: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    sets.sort();
    assert!(sets.len() >= 3, "{sets:?}");
    for set in sets {
        let docs = install(&set);
        let name = set.display().to_string();
        let coordinator = find(&docs, "Deployment", "trainfleet-coordinator");
        let (_dir, path) = config_file(&docs, "trainfleet-coordinator", "coordinator.yaml");
        let config = coordinator_config(&path, container(coordinator))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(config.store, StoreKind::Etcd, "{name}");
        assert!(!config.etcd.endpoints.is_empty(), "{name}");
        // The service dials the replicas' port; probes ask the per-replica health name.
        let c = container(coordinator);
        assert_eq!(
            c["ports"][0]["containerPort"],
            config.listen.port(),
            "{name}"
        );
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            assert_eq!(
                c[probe]["grpc"]["port"],
                config.listen.port(),
                "{name} {probe}"
            );
            assert_eq!(c[probe]["grpc"]["service"], "", "{name} {probe}");
        }
        assert_eq!(
            env(c, "TRAINFLEET_ADVERTISE_ADDRESS").unwrap()["value"],
            format!("$(POD_IP):{}", config.listen.port())
        );
        let annotation = &coordinator["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotation["checksum/config"].as_str().unwrap().len(), 64);
        // Every workload's selector picks its own pods, and the Service picks the coordinators.
        for d in docs
            .iter()
            .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
        {
            let selector = d["spec"]["selector"]["matchLabels"].as_mapping().unwrap();
            let labels = d["spec"]["template"]["metadata"]["labels"]
                .as_mapping()
                .unwrap();
            for (k, v) in selector {
                assert_eq!(
                    labels.get(k),
                    Some(v),
                    "{name}: {:?}",
                    d["metadata"]["name"]
                );
            }
            let pod = &d["spec"]["template"]["spec"];
            assert_eq!(pod["automountServiceAccountToken"], false);
            let security = &pod["containers"][0]["securityContext"];
            assert_eq!(security["runAsNonRoot"], true, "{name}");
            assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(security["capabilities"]["drop"][0], "ALL", "{name}");
        }
        let service = find(&docs, "Service", "trainfleet");
        for (k, v) in service["spec"]["selector"].as_mapping().unwrap() {
            assert_eq!(
                coordinator["spec"]["template"]["metadata"]["labels"]
                    .as_mapping()
                    .unwrap()
                    .get(k),
                Some(v)
            );
        }
        // Each worker group's config loads, and points at the client Service.
        for d in docs.iter().filter(|d| {
            d["kind"] == "ConfigMap"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("trainfleet-worker-"))
        }) {
            let map = d["metadata"]["name"].as_str().unwrap();
            let (_dir, path) = config_file(&docs, map, "worker.yaml");
            let worker = WorkerConfig::from_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            assert_eq!(
                worker.coordinator,
                format!("{scheme}://trainfleet.default.svc:{}", config.listen.port())
            );
        }
    }
}

#[test]
fn the_defaults_run_three_coordinators_a_bundled_etcd_and_a_cpu_group() {
    let docs = install(&ci("default-values.yaml"));
    let coordinator = find(&docs, "Deployment", "trainfleet-coordinator");
    assert_eq!(coordinator["spec"]["replicas"], 3);
    let pdb = find(&docs, "PodDisruptionBudget", "trainfleet-coordinator");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1, "a drain is never blocked");
    let etcd = find(&docs, "StatefulSet", "trainfleet-etcd");
    assert_eq!(etcd["spec"]["replicas"], 3);
    let command: Vec<&str> = container(etcd)["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(command.contains(&"--auto-compaction-mode=periodic"));
    assert!(command.iter().any(|a| a.starts_with("--initial-cluster=trainfleet-etcd-0=http://trainfleet-etcd-0.trainfleet-etcd-peer.default.svc:2380,")));
    assert_eq!(
        find(&docs, "Service", "trainfleet-etcd-peer")["spec"]["publishNotReadyAddresses"],
        true
    );
    let (_dir, path) = config_file(&docs, "trainfleet-coordinator", "coordinator.yaml");
    let config = CoordinatorConfig::from_file(&path).unwrap();
    assert_eq!(config.etcd.endpoints.len(), 3);
    assert_eq!(config.artifacts, "s3://trainfleet-runs/trainfleet");
    let c = container(coordinator);
    assert_eq!(
        env(c, "AWS_ACCESS_KEY_ID").unwrap()["valueFrom"]["secretKeyRef"]["name"],
        "trainfleet-s3"
    );
    let cpu = find(&docs, "Deployment", "trainfleet-worker-cpu");
    assert_eq!(cpu["spec"]["replicas"], 2);
    assert!(
        container(cpu)["resources"]["limits"]
            .get("nvidia.com/gpu")
            .is_none()
    );
    assert_eq!(
        env(container(cpu), "AWS_SECRET_ACCESS_KEY").unwrap()["valueFrom"]["secretKeyRef"]["name"],
        "trainfleet-s3",
        "workers write artifacts too"
    );
    let notes = render(&["-f", ci("default-values.yaml").to_str().unwrap(), "--notes"]).unwrap();
    assert!(
        notes.contains(
            "grpcurl -plaintext localhost:50051 trainfleet.v1.ClusterService/ListWorkers"
        )
    );
    assert!(notes.contains("gpus: 1"));
}

#[test]
fn a_gpu_group_gets_its_gpus_runtime_shm_and_nodes() {
    let docs = install(&ci("gpu-values.yaml"));
    let gpu = find(&docs, "Deployment", "trainfleet-worker-gpu");
    let pod = &gpu["spec"]["template"]["spec"];
    assert_eq!(pod["runtimeClassName"], "nvidia");
    assert_eq!(pod["nodeSelector"]["nvidia.com/gpu.present"], "true");
    assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
    assert_eq!(pod["terminationGracePeriodSeconds"], 120);
    let c = container(gpu);
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 2);
    assert_eq!(c["resources"]["limits"]["memory"], "32Gi");
    let shm = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "shm")
        .unwrap();
    assert_eq!(shm["emptyDir"]["medium"], "Memory");
    assert_eq!(shm["emptyDir"]["sizeLimit"], "8Gi");
    assert_eq!(
        env(c, "AWS_ENDPOINT").unwrap()["value"],
        "http://minio.storage.svc:9000"
    );
    assert_eq!(env(c, "AWS_ALLOW_HTTP").unwrap()["value"], "true");
    let (_dir, path) = config_file(&docs, "trainfleet-worker-gpu", "worker.yaml");
    let worker = WorkerConfig::from_file(&path).unwrap();
    assert_eq!(worker.labels["accelerator"], "a100");
    assert_eq!(worker.labels["group"], "gpu");
    // The CPU group is still there.
    find(&docs, "Deployment", "trainfleet-worker-cpu");
    // `helm test` asks through the client Service for every worker of both groups.
    let test = find(&docs, "Pod", "trainfleet-test");
    assert_eq!(test["metadata"]["annotations"]["helm.sh/hook"], "test");
    let args: Vec<&str> = test["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "health",
            "--addr=trainfleet.default.svc:50051",
            "--timeout=10s",
            "--workers=4"
        ]
    );
}

#[test]
fn external_etcd_takes_its_password_and_tls_from_the_secret() {
    let docs = install(&ci("external-etcd-values.yaml"));
    assert!(
        !docs.iter().any(|d| d["kind"] == "StatefulSet"),
        "no bundled etcd"
    );
    let coordinator = find(&docs, "Deployment", "trainfleet-coordinator");
    assert_eq!(coordinator["spec"]["replicas"], 5);
    let c = container(coordinator);
    let password = &env(c, "TRAINFLEET_ETCD_PASSWORD").unwrap()["valueFrom"]["secretKeyRef"];
    assert_eq!(password["name"], "trainfleet-etcd");
    assert_eq!(password["key"], "password");
    let pod = &coordinator["spec"]["template"]["spec"];
    let tls = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "etcd-tls")
        .unwrap();
    assert_eq!(tls["secret"]["secretName"], "trainfleet-etcd");
    let (_dir, path) = config_file(&docs, "trainfleet-coordinator", "coordinator.yaml");
    let config = coordinator_config(&path, c).unwrap();
    assert_eq!(config.etcd.user.as_deref(), Some("trainfleet"));
    let files = config.etcd.tls.expect("tls");
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "etcd-tls")
        .unwrap();
    assert!(
        files
            .ca_file
            .starts_with(mount["mountPath"].as_str().unwrap())
    );
    assert_eq!(config.retention.finished_jobs, 5000);
    assert_eq!(config.artifacts, "/srv/artifacts");
    for workload in ["trainfleet-coordinator", "trainfleet-worker-cpu"] {
        let mounts = container(find(&docs, "Deployment", workload))["volumeMounts"].clone();
        let names: Vec<&str> = mounts
            .as_sequence()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"artifacts") && names.contains(&"data"),
            "{workload}: {names:?}"
        );
    }
    // Workers read jobs' data from the mounted volume and the named prefix, nothing else.
    let (_dir, path) = config_file(&docs, "trainfleet-worker-cpu", "worker.yaml");
    let worker = WorkerConfig::from_file(&path).unwrap();
    assert_eq!(worker.data_roots, ["/srv/data", "s3://datasets/images"]);
}

#[test]
fn a_typo_a_wrong_type_or_a_missing_bucket_fails_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let typo = write("typo.yaml", "coordinator: {replica: 5}\n");
    let err = check_values(&["-f", &typo]).unwrap_err();
    assert!(
        err.contains("coordinator:") && err.contains("'replica' was unexpected"),
        "{err}"
    );
    let err = check_values(&["--set", "coordinator.replicas=three"]).unwrap_err();
    assert!(
        err.contains("coordinator.replicas: 'three' is not of type 'integer'"),
        "{err}"
    );
    let err = check_values(&["--set", "workerGroups.gpu.gpus=1"]).unwrap_err();
    assert!(
        err.contains("workerGroups.gpu: 'enabled' is a required property"),
        "{err}"
    );

    // Values that pass the schema but not together are refused by the templates.
    let unprotected = write("open.yaml", "artifacts: {s3: {bucket: b}}\n");
    let err = render(&["-f", &unprotected]).unwrap_err();
    assert!(
        err.contains("insecure: the coordinators listen on the pod network"),
        "{err}"
    );
    let no_bucket = write(
        "s3.yaml",
        "insecure: true\nartifacts: {s3: {existingSecret: keys}}\n",
    );
    let err = render(&["-f", &no_bucket]).unwrap_err();
    assert!(err.contains("artifacts.s3.bucket"), "{err}");
    let no_endpoints = write(
        "etcd.yaml",
        "insecure: true\netcd: {enabled: false}\nartifacts: {s3: {bucket: b}}\n",
    );
    let err = render(&["-f", &no_endpoints]).unwrap_err();
    assert!(err.contains("externalEtcd.endpoints"), "{err}");
    let no_secret = write(
        "auth.yaml",
        "insecure: true\netcd: {enabled: false}\nexternalEtcd: {endpoints: [http://e:2379], user: u}\nartifacts: {s3: {bucket: b}}\n",
    );
    let err = render(&["-f", &no_secret]).unwrap_err();
    assert!(err.contains("externalEtcd.existingSecret"), "{err}");
}

#[test]
fn the_network_policy_admits_workers_and_named_clients_and_only_coordinators_reach_etcd() {
    let docs = install(&ci("network-policy-values.yaml"));
    let labels = |workload: &str, kind: &str| {
        find(&docs, kind, workload)["spec"]["template"]["metadata"]["labels"]
            .as_mapping()
            .unwrap()
            .clone()
    };
    let matches = |selector: &Value, labels: &serde_yaml::Mapping| {
        selector["matchLabels"]
            .as_mapping()
            .unwrap()
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    };
    let coordinator = find(&docs, "NetworkPolicy", "trainfleet-coordinator");
    let from = coordinator["spec"]["ingress"][0]["from"]
        .as_sequence()
        .unwrap();
    assert_eq!(coordinator["spec"]["ingress"][0]["ports"][0]["port"], 50051);
    let worker = labels("trainfleet-worker-cpu", "Deployment");
    let replica = labels("trainfleet-coordinator", "Deployment");
    let member = labels("trainfleet-etcd", "StatefulSet");
    assert!(
        matches(&from[0]["podSelector"], &worker),
        "workers reach the API"
    );
    assert!(
        matches(&from[0]["podSelector"], &replica),
        "followers forward"
    );
    assert_eq!(
        from[1]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "ml-pipelines"
    );
    let etcd = find(&docs, "NetworkPolicy", "trainfleet-etcd");
    let client_from = &etcd["spec"]["ingress"][0]["from"][0]["podSelector"];
    assert!(matches(client_from, &replica));
    assert!(!matches(client_from, &worker), "workers do not reach etcd");
    assert!(matches(
        &etcd["spec"]["ingress"][1]["from"][0]["podSelector"],
        &member
    ));
    // Workers take nothing but scrapes of their metrics port.
    let workers = find(&docs, "NetworkPolicy", "trainfleet-workers");
    let ingress = workers["spec"]["ingress"].as_sequence().unwrap();
    assert_eq!(ingress.len(), 1, "{ingress:?}");
    assert_eq!(ingress[0]["ports"].as_sequence().map(Vec::len), Some(1));
    assert_eq!(ingress[0]["ports"][0]["port"], 9090);
    let defaults = render(&["-f", ci("default-values.yaml").to_str().unwrap()]).unwrap();
    assert!(!defaults.contains("kind: NetworkPolicy"), "off by default");
}

/// The values table of `k8s/charts/trainfleet/README.md`, from the `## @section` and
/// `## @param key description` comments of values.yaml, with each key's default.
fn values_table(values_yaml: &str) -> (String, Vec<String>) {
    let values: Value = serde_yaml::from_str(values_yaml).unwrap();
    let mut table = String::new();
    let mut keys = Vec::new();
    for line in values_yaml.lines().map(str::trim) {
        if let Some(section) = line.strip_prefix("## @section ") {
            table.push_str(&format!(
                "\n### {section}\n\n| Key | Description | Default |\n|---|---|---|\n"
            ));
        } else if let Some(param) = line.strip_prefix("## @param ") {
            let (key, description) = param.split_once(' ').unwrap_or((param, ""));
            let default = key
                .split('.')
                .try_fold(&values, |v, part| v.get(part))
                .unwrap_or_else(|| panic!("values.yaml documents {key}, which it does not set"));
            let shown = serde_json::to_string(default).unwrap();
            let shown = if shown.len() > 60 {
                "see `values.yaml`".to_owned()
            } else {
                format!("`{}`", shown.replace('|', "\\|"))
            };
            table.push_str(&format!("| `{key}` | {description} | {shown} |\n"));
            keys.push(key.to_owned());
        }
    }
    (table, keys)
}

/// Every leaf of `value` under `prefix`, as dotted paths.
fn leaves(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value.as_mapping() {
        Some(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = k.as_str().unwrap();
                let path = if prefix.is_empty() {
                    key.to_owned()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(v, &path, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

#[test]
fn every_value_is_documented_and_the_readme_table_is_current() {
    let values_yaml = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    let (table, keys) = values_table(&values_yaml);
    let mut all = Vec::new();
    leaves(&serde_yaml::from_str(&values_yaml).unwrap(), "", &mut all);
    for leaf in &all {
        assert!(
            keys.iter()
                .any(|k| leaf == k || leaf.starts_with(&format!("{k}."))),
            "values.yaml sets {leaf} without a `## @param` comment for it (or a key above it)"
        );
    }
    let readme_path = chart().join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap_or_default();
    let (begin, end) = ("<!-- values table: begin -->", "<!-- values table: end -->");
    let current = readme
        .split_once(begin)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(t, _)| t.to_owned())
        .unwrap_or_default();
    if std::env::var_os("TRAINFLEET_BLESS").is_some() {
        let (head, tail) = match (readme.split_once(begin), readme.split_once(end)) {
            (Some((head, _)), Some((_, tail))) => (head.to_owned(), tail.to_owned()),
            _ => (readme.clone(), "\n".to_owned()),
        };
        std::fs::write(&readme_path, format!("{head}{begin}\n{table}\n{end}{tail}")).unwrap();
        return;
    }
    assert_eq!(
        current.trim(),
        table.trim(),
        "k8s/charts/trainfleet/README.md's values table is not values.yaml's: regenerate it with \
         TRAINFLEET_BLESS=1 cargo test --test chart every_value_is_documented"
    );
}

#[test]
fn metrics_are_served_scraped_by_a_service_monitor_and_alerted_on() {
    let docs = install_with(&[
        "-f",
        ci("network-policy-values.yaml").to_str().unwrap(),
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.prometheusRule.enabled=true",
    ]);
    // Both binaries serve on the metrics port, named on their pods.
    let (_dir, path) = config_file(&docs, "trainfleet-coordinator", "coordinator.yaml");
    let coordinator = container(find(&docs, "Deployment", "trainfleet-coordinator"));
    let config = coordinator_config(&path, coordinator).unwrap();
    assert_eq!(config.metrics_listen.map(|a| a.port()), Some(9090));
    let worker = container(find(&docs, "Deployment", "trainfleet-worker-cpu"));
    assert_eq!(
        env(worker, "TRAINFLEET_METRICS_LISTEN").unwrap()["value"],
        "0.0.0.0:9090"
    );
    for c in [coordinator, worker] {
        let ports = c["ports"].as_sequence().unwrap();
        assert!(
            ports
                .iter()
                .any(|p| p["name"] == "metrics" && p["containerPort"] == 9090),
            "{ports:?}"
        );
    }
    // The ServiceMonitor selects the metrics Service, which selects every pod of the release.
    let service = find(&docs, "Service", "trainfleet-metrics");
    let monitor = find(&docs, "ServiceMonitor", "trainfleet");
    let wanted = monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap();
    let labels = service["metadata"]["labels"].as_mapping().unwrap();
    assert!(
        wanted.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "{wanted:?}"
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    // The rules shipped are the ones promtool checks (tests/metrics.rs).
    let rule = find(&docs, "PrometheusRule", "trainfleet");
    let file: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("files/alerts.yaml")).unwrap())
            .unwrap();
    assert_eq!(rule["spec"], file);
    let alerts: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert!(
        [
            "TrainfleetNoLeader",
            "TrainfleetQueueAgeGrowing",
            "TrainfleetWorkersLost"
        ]
        .iter()
        .all(|a| alerts.contains(a)),
        "{alerts:?}"
    );
    // With network policies, the metrics port is open to scrapers on coordinators and workers.
    for policy in ["trainfleet-coordinator", "trainfleet-workers"] {
        let ingress = find(&docs, "NetworkPolicy", policy)["spec"]["ingress"]
            .as_sequence()
            .unwrap();
        assert!(
            ingress.iter().any(|rule| rule["ports"][0]["port"] == 9090),
            "{policy}: {ingress:?}"
        );
    }
}
