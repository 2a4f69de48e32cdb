//! Access control end to end: a coordinator with `--auth` and a bootstrap secret, tokens made
//! with the CLI, calls made with the reflection client (as grpcurl would, `-H authorization`),
//! a worker that authenticates with its own token.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::access::{call_as, cli_as, code};
use support::*;

const FAST: &[&str] = &["--heartbeat-interval", "200ms", "--lease-timeout", "2s"];

#[test]
fn tokens_and_roles_decide_who_may_call_what() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bootstrap = "b00t5trap-secret-that-is-long-enough-0123456789";
    let secret_file = dir.path().join("bootstrap");
    std::fs::write(&secret_file, format!("{bootstrap}\n"))?;
    let secret_arg = secret_file.display().to_string();
    let mut flags = FAST.to_vec();
    flags.extend(["--auth", "--bootstrap-token-file", &secret_arg]);
    let coordinator = start_coordinator(dir.path(), "coordinator", "127.0.0.1:0", &flags)?;
    let addr = coordinator.addr.as_str();

    // No token: UNAUTHENTICATED, saying how to send one. Health stays open for probes.
    let (c, m) = code(call_as(
        addr,
        None,
        "trainfleet.v1.JobService/List",
        json!({}),
    )?);
    assert_eq!(c, "UNAUTHENTICATED", "{m}");
    assert!(m.contains("authorization: Bearer"), "{m}");
    let (c, _) = code(call_as(
        addr,
        Some("tf_00000000_nonsense"),
        "trainfleet.v1.JobService/List",
        json!({}),
    )?);
    assert_eq!(c, "UNAUTHENTICATED");
    let health = Command::new(binary("trainfleet-coordinator"))
        .args(["health", "--addr", addr])
        .output()?;
    assert!(health.status.success(), "health is open: {health:?}");
    // Reflection needs a token too: a stranger cannot even list the services.
    let listed = reflect_as(addr, None, &["list"])?;
    assert_eq!(listed.status.code(), Some(3), "{listed:?}");

    // The bootstrap admin makes the others; each secret is printed once, alone on stdout.
    let viewer = cli_as(
        addr,
        bootstrap,
        &["token", "create", "--name", "dash", "--role", "viewer"],
    )?
    .trim()
    .to_owned();
    let submitter = cli_as(
        addr,
        bootstrap,
        &["token", "create", "--name", "ci", "--role", "submitter"],
    )?
    .trim()
    .to_owned();
    let worker_token = cli_as(
        addr,
        bootstrap,
        &["token", "create", "--name", "w1", "--role", "worker"],
    )?
    .trim()
    .to_owned();
    assert!(viewer.starts_with("tf_") && viewer.len() == 76, "{viewer}");
    let listed: Value =
        serde_json::from_str(&cli_as(addr, bootstrap, &["token", "list", "--json"])?)?;
    let names: Vec<&str> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names.len(), 3, "{listed}");
    assert!(
        ["dash", "ci", "w1"].iter().all(|n| names.contains(n)),
        "{listed}"
    );
    assert!(
        !listed.to_string().contains(&viewer[12..]),
        "no secret is listed"
    );
    assert!(
        listed.to_string().contains("bootstrap"),
        "created_by: {listed}"
    );

    // A viewer reads, and may not change anything.
    let who = call_as(
        addr,
        Some(&viewer),
        "trainfleet.v1.AccessService/WhoAmI",
        json!({}),
    )?
    .expect("whoami");
    assert_eq!(
        (who["name"].as_str(), who["role"].as_str()),
        (Some("dash"), Some("ROLE_VIEWER"))
    );
    call_as(
        addr,
        Some(&viewer),
        "trainfleet.v1.JobService/List",
        json!({}),
    )?
    .expect("a viewer lists");
    let (c, m) = code(call_as(
        addr,
        Some(&viewer),
        "trainfleet.v1.ModelService/Promote",
        json!({"id": "m-x", "reason": "because"}),
    )?);
    assert_eq!(c, "PERMISSION_DENIED", "{m}");
    assert!(
        m.contains("dash (role viewer)") && m.contains("admin"),
        "{m}"
    );
    let (c, _) = code(call_as(
        addr,
        Some(&viewer),
        "trainfleet.v1.JobService/Submit",
        json!({"yaml": synth_job("v", 1, 1)}),
    )?);
    assert_eq!(c, "PERMISSION_DENIED");
    let (c, _) = code(call_as(
        addr,
        Some(&viewer),
        "trainfleet.v1.AccessService/ListTokens",
        json!({}),
    )?);
    assert_eq!(c, "PERMISSION_DENIED");
    // A reflection client with a token lists the services and describes them.
    let listed = reflect_as(addr, Some(&viewer), &["list"])?;
    let services = String::from_utf8_lossy(&listed.stdout);
    assert!(
        services.contains("trainfleet.v1.AccessService"),
        "{services}"
    );

    // A worker token serves the worker protocol and nothing else.
    let (c, _) = code(call_as(
        addr,
        Some(&worker_token),
        "trainfleet.v1.JobService/List",
        json!({}),
    )?);
    assert_eq!(c, "PERMISSION_DENIED");
    let (c, _) = code(call_as(
        addr,
        Some(&viewer),
        "trainfleet.v1.WorkerService/Register",
        json!({"workerId": "x"}),
    )?);
    assert_eq!(c, "PERMISSION_DENIED", "a viewer is not a worker");

    // A worker with its token registers and trains a submitter's job; one without never joins.
    let token_file = dir.path().join("w1.token");
    std::fs::write(&token_file, &worker_token)?;
    let _w1 = start_worker(
        dir.path(),
        "w1",
        addr,
        &format!("token_file: {}\n", token_file.display()),
    )?;
    let _stranger = start_worker(dir.path(), "stranger", addr, "")?;
    let submitted = call_as(
        addr,
        Some(&submitter),
        "trainfleet.v1.JobService/Submit",
        json!({"yaml": synth_job("by-ci", 1, 1)}),
    )?
    .expect("a submitter submits");
    let id = submitted["job"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let job = wait_for(Duration::from_secs(120), "the job to end", || {
        let job = call_as(
            addr,
            Some(&viewer),
            "trainfleet.v1.JobService/Get",
            json!({"id": id}),
        )
        .ok()?
        .ok()?;
        matches!(
            job["state"].as_str(),
            Some("JOB_STATE_SUCCEEDED" | "JOB_STATE_FAILED")
        )
        .then_some(job)
    })?;
    assert_eq!(job["state"], "JOB_STATE_SUCCEEDED", "{job}");
    assert_eq!(job["submittedBy"], "ci", "{job}");

    // A submitter cancels its own jobs, not others'; an admin cancels anyone's.
    let other = cli_as(
        addr,
        bootstrap,
        &["token", "create", "--name", "other", "--role", "submitter"],
    )?
    .trim()
    .to_owned();
    let sleeper = call_as(
        addr,
        Some(&submitter),
        "trainfleet.v1.JobService/Submit",
        json!({"sleep": {"duration": "60s"}}),
    )?
    .expect("a sleep job");
    let sleeper = sleeper["job"]["id"].as_str().unwrap_or_default().to_owned();
    let (c, m) = code(call_as(
        addr,
        Some(&other),
        "trainfleet.v1.JobService/Cancel",
        json!({"id": sleeper}),
    )?);
    assert_eq!(c, "PERMISSION_DENIED", "{m}");
    assert!(
        m.contains("only its own jobs") && m.contains("submitted by ci"),
        "{m}"
    );
    call_as(
        addr,
        Some(&submitter),
        "trainfleet.v1.JobService/Cancel",
        json!({"id": sleeper}),
    )?
    .expect("its own job");
    let again = call_as(
        addr,
        Some(&submitter),
        "trainfleet.v1.JobService/Submit",
        json!({"sleep": {"duration": "60s"}}),
    )?
    .expect("a sleep job");
    let again = again["job"]["id"].as_str().unwrap_or_default().to_owned();
    call_as(
        addr,
        Some(bootstrap),
        "trainfleet.v1.JobService/Cancel",
        json!({"id": again}),
    )?
    .expect("an admin cancels anyone's job");
    let workers = call_as(
        addr,
        Some(&viewer),
        "trainfleet.v1.ClusterService/ListWorkers",
        json!({}),
    )?
    .expect("workers");
    let ids: Vec<&str> = workers["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["workerId"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["w1"],
        "the worker without a token never registered: {workers}"
    );

    // Revoked: refused at once (one replica here; tests/ha.rs checks every replica).
    cli_as(addr, bootstrap, &["token", "revoke", "dash"])?;
    let revoked = Instant::now();
    let (c, m) = code(call_as(
        addr,
        Some(&viewer),
        "trainfleet.v1.JobService/List",
        json!({}),
    )?);
    assert_eq!(c, "UNAUTHENTICATED", "{m}");
    assert!(revoked.elapsed() < Duration::from_secs(5));
    // Bad requests to the token calls name the field.
    let (c, m) = code(call_as(
        addr,
        Some(bootstrap),
        "trainfleet.v1.AccessService/CreateToken",
        json!({"name": "a b", "role": "ROLE_VIEWER"}),
    )?);
    assert_eq!(c, "INVALID_ARGUMENT");
    assert!(m.contains("name"), "{m}");
    let (c, _) = code(call_as(
        addr,
        Some(bootstrap),
        "trainfleet.v1.AccessService/CreateToken",
        json!({"name": "ci", "role": "ROLE_VIEWER"}),
    )?);
    assert_eq!(c, "ALREADY_EXISTS");
    let (c, _) = code(call_as(
        addr,
        Some(bootstrap),
        "trainfleet.v1.AccessService/RevokeToken",
        json!({"token": "nobody"}),
    )?);
    assert_eq!(c, "NOT_FOUND");

    // The audit trail has each of these: who, role, method, target, outcome. Written behind
    // the calls, so it may take a moment.
    let has = |audit: &Value, caller: &str, method: &str, target: &str, outcome: &str| {
        audit.as_array().into_iter().flatten().any(|e| {
            e["caller"] == caller
                && e["method"] == method
                && e["outcome"] == outcome
                && e["target"].as_str().unwrap_or_default().starts_with(target)
        })
    };
    let audit = wait_for(Duration::from_secs(10), "the audit trail", || {
        let out = cli_as(addr, bootstrap, &["audit", "--json", "--limit", "1000"]).ok()?;
        let audit: Value = serde_json::from_str(&out).ok()?;
        has(
            &audit,
            "bootstrap",
            "trainfleet.v1.AccessService/RevokeToken",
            "",
            "NOT_FOUND",
        )
        .then_some(audit)
    })?;
    let checks = [
        (
            // A stranger's reflection client is stopped at its first call, reflection itself.
            "anonymous",
            "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "",
            "UNAUTHENTICATED",
        ),
        (
            "dash",
            "trainfleet.v1.ModelService/Promote",
            "",
            "PERMISSION_DENIED",
        ),
        (
            "w1",
            "trainfleet.v1.JobService/List",
            "",
            "PERMISSION_DENIED",
        ),
        (
            "bootstrap",
            "trainfleet.v1.AccessService/CreateToken",
            "token dash",
            "OK",
        ),
        (
            "bootstrap",
            "trainfleet.v1.AccessService/RevokeToken",
            "token dash",
            "OK",
        ),
        ("ci", "trainfleet.v1.JobService/Submit", "job j-", "OK"),
        (
            "other",
            "trainfleet.v1.JobService/Cancel",
            "",
            "PERMISSION_DENIED",
        ),
        (
            "bootstrap",
            "trainfleet.v1.JobService/Cancel",
            "job j-",
            "OK",
        ),
        (
            "w1",
            "trainfleet.v1.WorkerService/Register",
            "worker w1",
            "OK",
        ),
        (
            "w1",
            "trainfleet.v1.WorkerService/CompleteTask",
            "task j-",
            "OK",
        ),
        (
            "anonymous",
            "trainfleet.v1.WorkerService/Register",
            "",
            "UNAUTHENTICATED",
        ),
    ];
    for (caller, method, target, outcome) in checks {
        assert!(
            has(&audit, caller, method, target, outcome),
            "{caller} {method} {target} {outcome} not in the audit trail: {audit:#}"
        );
    }
    // Allowed reads are not audited (refused ones are).
    assert!(!has(
        &audit,
        "dash",
        "trainfleet.v1.JobService/List",
        "",
        "OK"
    ));
    // Only admins read the trail.
    let (c, _) = code(call_as(
        addr,
        Some(&submitter),
        "trainfleet.v1.AccessService/ListAudit",
        json!({}),
    )?);
    assert_eq!(c, "PERMISSION_DENIED");
    Ok(())
}

#[test]
fn a_short_or_missing_bootstrap_secret_stops_the_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let short = dir.path().join("short");
    std::fs::write(&short, "tooshort")?;
    for (file, says) in [
        (short.display().to_string(), "at least 32"),
        (dir.path().join("missing").display().to_string(), "missing"),
    ] {
        let out = Command::new(binary("trainfleet-coordinator"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--auth",
                "--bootstrap-token-file",
                &file,
            ])
            .arg("--data-dir")
            .arg(dir.path().join("state"))
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("bootstrap_token_file") && stderr.contains(says),
            "{stderr}"
        );
    }
    Ok(())
}
