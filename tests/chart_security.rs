//! The chart's TLS and tokens: every file a coordinator, a worker or the helm test reads (the
//! certificate, the CA, each token) is mounted from the operator's Secret under the key it
//! names, each pod gets only what it needs, every client verifies the certificate as the
//! Service's name, and an install must choose between protection and `insecure: true`.

mod charts;
mod support;

use std::path::Path;

use charts::*;
use serde_yaml::Value;
use trainfleet_core::config::WorkerConfig;

/// The (Secret, key) a pod reads `file` from: the volume mounted above it, and the item (or
/// the file name, with no items) it maps.
fn secret_of(pod: &Value, container: &Value, file: &Path) -> Option<(String, String)> {
    let mount = container["volumeMounts"].as_sequence()?.iter().find(|m| {
        m["mountPath"]
            .as_str()
            .is_some_and(|p| file.parent() == Some(Path::new(p)))
    })?;
    let volume = pod["volumes"]
        .as_sequence()?
        .iter()
        .find(|v| v["name"] == mount["name"])?;
    let secret = volume["secret"]["secretName"].as_str()?.to_owned();
    let name = file.file_name()?.to_str()?;
    let key = match volume["secret"]["items"].as_sequence() {
        Some(items) => items.iter().find(|i| i["path"] == name)?["key"]
            .as_str()?
            .to_owned(),
        None => name.to_owned(),
    };
    Some((secret, key))
}

fn keys_mounted(pod: &Value, volume: &str) -> Vec<String> {
    pod["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter(|v| v["name"] == volume)
        .flat_map(|v| {
            v["secret"]["items"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|i| i["key"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn tls_and_tokens_reach_each_client_from_the_secrets_and_no_more() {
    let docs = install(&ci("secure-values.yaml"));
    let deployment = find(&docs, "Deployment", "trainfleet-coordinator");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = container(deployment);
    let (_dir, path) = config_file(&docs, "trainfleet-coordinator", "coordinator.yaml");
    let config = coordinator_config(&path, c).unwrap();
    assert!(!config.insecure, "protected: no insecure needed");
    let tls = config.tls.clone().expect("tls");
    assert_eq!(tls.server_name.as_deref(), Some("trainfleet.default.svc"));
    for (file, key) in [
        (&tls.cert_file, "tls.crt"),
        (&tls.key_file, "tls.key"),
        (tls.ca_file.as_ref().unwrap(), "ca.crt"),
    ] {
        assert_eq!(
            secret_of(pod, c, file),
            Some(("trainfleet-tls".to_owned(), key.to_owned())),
            "{}",
            file.display()
        );
    }
    assert!(config.auth.enabled);
    let bootstrap = config.auth.bootstrap_token_file.clone().unwrap();
    assert_eq!(
        secret_of(pod, c, &bootstrap),
        Some(("trainfleet-tokens".to_owned(), "bootstrap".to_owned()))
    );
    let roles: Vec<(String, String)> = config
        .auth
        .static_tokens
        .iter()
        .map(|t| (t.role.clone(), secret_of(pod, c, &t.file).unwrap().1))
        .collect();
    assert_eq!(
        roles,
        [
            ("worker".to_owned(), "worker".to_owned()),
            ("viewer".to_owned(), "viewer".to_owned())
        ]
    );

    // A worker dials https with the CA, verifies the Service's name, carries the workers'
    // token; it gets the CA and that token only (no key, no other token).
    let workers = find(&docs, "Deployment", "trainfleet-worker-cpu");
    let (_wdir, wpath) = config_file(&docs, "trainfleet-worker-cpu", "worker.yaml");
    let worker = WorkerConfig::from_file(&wpath).unwrap();
    assert!(
        worker
            .coordinator
            .starts_with("https://trainfleet.default.svc:")
    );
    let wtls = worker.tls.clone().unwrap();
    assert_eq!(wtls.server_name.as_deref(), Some("trainfleet.default.svc"));
    let (wpod, wc) = (&workers["spec"]["template"]["spec"], container(workers));
    assert_eq!(
        secret_of(wpod, wc, &wtls.ca_file),
        Some(("trainfleet-tls".to_owned(), "ca.crt".to_owned()))
    );
    assert_eq!(
        secret_of(wpod, wc, worker.token_file.as_ref().unwrap()),
        Some(("trainfleet-tokens".to_owned(), "worker".to_owned()))
    );
    assert_eq!(keys_mounted(wpod, "tls-ca"), ["ca.crt"]);
    assert_eq!(keys_mounted(wpod, "auth"), ["worker"]);

    // The helm test checks through TLS with the viewer's token, and holds nothing else.
    let test = find(&docs, "Pod", "trainfleet-test");
    let tc = &test["spec"]["containers"][0];
    let args: Vec<&str> = tc["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for wanted in [
        "--ca-cert=/etc/trainfleet-tls/ca.crt",
        "--tls-server-name=trainfleet.default.svc",
        "--token-file=/etc/trainfleet-auth/viewer",
    ] {
        assert!(args.contains(&wanted), "{args:?}");
    }
    assert_eq!(
        secret_of(&test["spec"], tc, Path::new("/etc/trainfleet-auth/viewer")),
        Some(("trainfleet-tokens".to_owned(), "viewer".to_owned()))
    );
    assert_eq!(keys_mounted(&test["spec"], "auth"), ["viewer"]);
}

#[test]
fn an_install_chooses_protection_or_says_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let bucket = "artifacts: {s3: {bucket: b, existingSecret: s}}\n";
    // TLS alone is not enough: tokens too, or insecure.
    let half = write(
        "half.yaml",
        &format!("{bucket}tls: {{enabled: true, existingSecret: t}}\n"),
    );
    let err = render(&["-f", &half]).unwrap_err();
    assert!(
        err.contains("turn on tls.enabled and auth.enabled"),
        "{err}"
    );
    // On without its Secret: the key is named.
    let no_secret = write(
        "nosecret.yaml",
        &format!("{bucket}tls: {{enabled: true}}\nauth: {{enabled: true, existingSecret: a}}\n"),
    );
    let err = render(&["-f", &no_secret]).unwrap_err();
    assert!(err.contains("tls.existingSecret"), "{err}");
    let no_tokens = write(
        "notokens.yaml",
        &format!("{bucket}tls: {{enabled: true, existingSecret: t}}\nauth: {{enabled: true}}\n"),
    );
    let err = render(&["-f", &no_tokens]).unwrap_err();
    assert!(err.contains("auth.existingSecret"), "{err}");
    // Insecure, said: plaintext, and nothing mounted.
    let open = write("open.yaml", &format!("{bucket}insecure: true\n"));
    let rendered = render(&["-f", &open]).unwrap();
    assert!(rendered.contains("insecure: true"));
    assert!(!rendered.contains("/etc/trainfleet-tls"));
}
