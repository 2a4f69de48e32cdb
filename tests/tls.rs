//! TLS end to end: a coordinator serving TLS with access control, workers that authenticate
//! with client certificates, a plaintext client refused with a clear error, a forged report
//! refused, the certificate rotated without a restart, and a coordinator that will not serve
//! an open port unprotected.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::tls::{Dial, Pki, pem_body, served_certificate};
use support::*;

const BOOTSTRAP: &str = "b00t5trap-secret-that-is-long-enough-0123456789";

/// The flags of a coordinator with TLS (the certificate `pki` made, its CA for workers) and
/// tokens (the bootstrap secret, written into `dir`).
fn protected_flags(dir: &std::path::Path, pki: &Pki) -> anyhow::Result<Vec<String>> {
    let secret = dir.join("bootstrap");
    std::fs::write(&secret, BOOTSTRAP)?;
    let shown = |p: &std::path::Path| p.display().to_string();
    Ok(vec![
        "--auth".to_owned(),
        "--bootstrap-token-file".to_owned(),
        shown(&secret),
        "--tls-cert".to_owned(),
        shown(&pki.server_cert),
        "--tls-key".to_owned(),
        shown(&pki.server_key),
        "--tls-ca".to_owned(),
        shown(&pki.ca_file),
    ])
}

fn registration(id: &str) -> Value {
    json!({
        "workerId": id,
        "host": "test",
        "devices": [{"kind": "DEVICE_KIND_CPU", "index": 0, "name": "cpu", "cores": 1}],
        "slots": 1,
        "version": "0.1.0",
    })
}

#[test]
fn tls_binds_workers_to_their_certificates_and_refuses_plaintext() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path(), "cluster")?;
    let protected = protected_flags(dir.path(), &pki)?;
    let ca = pki.ca_file.display().to_string();
    let coordinator = start_coordinator(
        dir.path(),
        "coordinator",
        "127.0.0.1:0",
        &["--heartbeat-interval", "200ms", "--lease-timeout", "2s"]
            .into_iter()
            .chain(protected.iter().map(String::as_str))
            .collect::<Vec<_>>(),
    )?;
    let addr = coordinator.addr.as_str();
    let admin = Dial {
        ca: Some(&pki.ca_file),
        token: Some(BOOTSTRAP),
        ..Dial::default()
    };

    // A plaintext client (grpcurl -plaintext) is told the port needs TLS, token or not.
    let plaintext = Dial {
        token: Some(BOOTSTRAP),
        ..Dial::default()
    };
    let (c, m) = plaintext
        .call(addr, "trainfleet.v1.JobService/List", json!({}))?
        .expect_err("plaintext is refused");
    assert_eq!(c, "UNAUTHENTICATED", "{m}");
    assert!(m.contains("serves TLS") && m.contains("-cacert"), "{m}");
    // The CLI without --ca-cert says the same.
    let out = Command::new(binary("trainfleet"))
        .args(["jobs", "--endpoint", addr])
        .env("TRAINFLEET_TOKEN", BOOTSTRAP)
        .env_remove("TRAINFLEET_CA_CERT")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("serves TLS"), "{err}");
    // Health stays open in plaintext (kubelet's gRPC probes cannot speak TLS) and over TLS.
    for extra in [&[][..], &["--ca-cert", ca.as_str()][..]] {
        let health = Command::new(binary("trainfleet-coordinator"))
            .args(["health", "--addr", addr])
            .args(extra)
            .output()?;
        assert!(health.status.success(), "health {extra:?}: {health:?}");
    }

    // Over TLS with a token: the reflection client lists and calls; so does the CLI.
    let listed = admin.reflect(addr, &["list"])?;
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("trainfleet.v1.JobService"),
        "{listed:?}"
    );
    admin
        .call(addr, "trainfleet.v1.AccessService/WhoAmI", json!({}))?
        .expect("whoami over TLS");
    let out = Command::new(binary("trainfleet"))
        .args(["workers", "--endpoint", addr, "--ca-cert", &ca])
        .env("TRAINFLEET_TOKEN", BOOTSTRAP)
        .output()?;
    assert!(out.status.success(), "{out:?}");

    // A worker's certificate is its credential: no token needed for the worker protocol, and
    // nothing else is allowed with it.
    let w1 = pki.worker("w1")?;
    let w2 = pki.worker("w2")?;
    let as_w1 = Dial {
        ca: Some(&pki.ca_file),
        client: Some(&w1),
        token: None,
    };
    let as_w2 = Dial {
        client: Some(&w2),
        ..as_w1
    };
    let (c, m) = as_w1
        .call(addr, "trainfleet.v1.JobService/List", json!({}))?
        .expect_err("a worker certificate reads no jobs");
    assert_eq!(c, "PERMISSION_DENIED", "{m}");
    assert!(m.contains("worker/w1"), "{m}");
    let (c, m) = as_w1
        .call(
            addr,
            "trainfleet.v1.WorkerService/Register",
            registration("w2"),
        )?
        .expect_err("w1 cannot register as w2");
    assert_eq!(c, "PERMISSION_DENIED", "{m}");
    assert!(m.contains("`w1`") && m.contains("`w2`"), "{m}");

    // w2 (played by this test, with w2's certificate) registers and leases a job's task.
    let session = as_w2
        .call(
            addr,
            "trainfleet.v1.WorkerService/Register",
            registration("w2"),
        )?
        .expect("w2 registers")["sessionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let submitted = admin
        .call(
            addr,
            "trainfleet.v1.JobService/Submit",
            json!({"yaml": synth_job("mtls", 1, 1)}),
        )?
        .expect("submit");
    let job_id = submitted["job"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let polled = as_w2
        .call(
            addr,
            "trainfleet.v1.WorkerService/PollTask",
            json!({"workerId": "w2", "sessionId": session, "freeSlots": 1, "maxWait": "10s"}),
        )?
        .expect("w2 polls");
    let task = polled["task"]["id"].as_str().unwrap_or_default().to_owned();
    assert!(!task.is_empty(), "w2 leased a task: {polled}");

    // w1 forges w2's report: refused, and the task is still w2's.
    let (c, m) = as_w1
        .call(
            addr,
            "trainfleet.v1.WorkerService/CompleteTask",
            json!({"workerId": "w2", "sessionId": session, "taskId": task, "attempt": 1,
                   "failure": "forged", "permanent": true}),
        )?
        .expect_err("w1 cannot complete w2's task");
    assert_eq!(c, "PERMISSION_DENIED", "{m}");
    let job = admin
        .call(addr, "trainfleet.v1.JobService/Get", json!({"id": job_id}))?
        .expect("get");
    assert_eq!(job["state"].as_str(), Some("JOB_STATE_TRAINING"), "{job}");
    assert_eq!(job["workerId"].as_str(), Some("w2"), "{job}");
    assert!(!job.to_string().contains("forged"), "{job}");

    // A real worker with w1's certificate (and no token) joins over TLS. w2 never heartbeats,
    // so its task is requeued when its lease runs out, and w1 trains the job to its end.
    let _worker = start_worker(
        dir.path(),
        "w1",
        addr,
        &format!(
            "tls:\n  ca_file: {}\n  cert_file: {}\n  key_file: {}\n",
            pki.ca_file.display(),
            w1.cert.display(),
            w1.key.display()
        ),
    )?;
    let job = wait_for(Duration::from_secs(120), "the job to end", || {
        let job = admin
            .call(addr, "trainfleet.v1.JobService/Get", json!({"id": job_id}))
            .ok()?
            .ok()?;
        matches!(
            job["state"].as_str(),
            Some("JOB_STATE_SUCCEEDED" | "JOB_STATE_FAILED")
        )
        .then_some(job)
    })?;
    assert_eq!(job["state"].as_str(), Some("JOB_STATE_SUCCEEDED"), "{job}");

    // The certificate is rotated in place: new connections get the new one, no restart, and
    // clients trusting the CA carry on. A broken file is ignored, the last good one kept.
    let before = served_certificate(addr)?;
    let rotated = pki.issue_server()?;
    assert_ne!(pem_body(&before), pem_body(&rotated));
    wait_for(Duration::from_secs(10), "the rotated certificate", || {
        let served = served_certificate(addr).ok()?;
        (pem_body(&served) == pem_body(&rotated)).then_some(())
    })?;
    std::fs::write(&pki.server_cert, "not a certificate")?;
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(pem_body(&served_certificate(addr)?), pem_body(&rotated));
    admin
        .call(addr, "trainfleet.v1.AccessService/WhoAmI", json!({}))?
        .expect("still served over TLS");
    assert!(
        coordinator.proc.log_text().contains("cannot be used"),
        "the broken file is logged"
    );

    // The audit trail has the refusals: the plaintext call, the forged registration and report.
    let audit = Command::new(binary("trainfleet"))
        .args(["audit", "--json", "--endpoint", addr, "--ca-cert", &ca])
        .env("TRAINFLEET_TOKEN", BOOTSTRAP)
        .output()?;
    assert!(audit.status.success(), "{audit:?}");
    let records: Value = serde_json::from_slice(&audit.stdout)?;
    let seen = |caller: &str, method: &str, outcome: &str| {
        records.as_array().into_iter().flatten().any(|r| {
            r["caller"].as_str() == Some(caller)
                && r["method"].as_str().is_some_and(|m| m.ends_with(method))
                && r["outcome"].as_str() == Some(outcome)
        })
    };
    // (The reflection client's first call, and the CLI's, were the plaintext ones.)
    assert!(
        seen("anonymous", "ServerReflectionInfo", "UNAUTHENTICATED")
            && seen("anonymous", "ClusterService/GetLeader", "UNAUTHENTICATED"),
        "{records}"
    );
    assert!(
        seen("worker/w1", "WorkerService/Register", "PERMISSION_DENIED"),
        "{records}"
    );
    assert!(
        seen(
            "worker/w1",
            "WorkerService/CompleteTask",
            "PERMISSION_DENIED"
        ),
        "{records}"
    );
    Ok(())
}

#[test]
fn an_open_port_is_served_only_with_tls_and_auth_or_insecure() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // 0.0.0.0 without protection: refused, saying what is missing and how to proceed.
    let out = Command::new(binary("trainfleet-coordinator"))
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("state"))
        .env_remove("TRAINFLEET_INSECURE")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("listen")
            && err.contains("without TLS or access control")
            && err.contains("--insecure"),
        "{err}"
    );
    // Loopback needs nothing; --insecure serves the open port, as named.
    let loopback_dir = tempfile::tempdir()?;
    let _loopback = start_coordinator(loopback_dir.path(), "loopback", "127.0.0.1:0", &[])?;
    let open = start_coordinator(dir.path(), "open", "0.0.0.0:0", &["--insecure"])?;
    let port = open.addr.rsplit(':').next().unwrap_or_default().to_owned();
    let health = Command::new(binary("trainfleet-coordinator"))
        .args(["health", "--addr", &format!("127.0.0.1:{port}")])
        .output()?;
    assert!(health.status.success(), "{health:?}");
    Ok(())
}

#[test]
fn replicas_forward_over_tls_and_a_worker_follows_the_leader_with_its_certificate()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path(), "ha")?;
    let protected = protected_flags(dir.path(), &pki)?;
    let etcd = trainfleet_core::etcd_process::EtcdCluster::start(dir.path(), 1)?;
    let endpoints = etcd.endpoints().join(",");
    let replicas = (0..2)
        .map(|i| {
            start_coordinator(
                dir.path(),
                &format!("coordinator{i}"),
                "127.0.0.1:0",
                &[
                    "--store",
                    "etcd",
                    "--etcd-endpoints",
                    &endpoints,
                    "--etcd-prefix",
                    "/tls-test",
                    "--etcd-lease-ttl",
                    "3s",
                ]
                .into_iter()
                .chain(protected.iter().map(String::as_str))
                .collect::<Vec<_>>(),
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let admin = Dial {
        ca: Some(&pki.ca_file),
        token: Some(BOOTSTRAP),
        ..Dial::default()
    };
    // Which replica follows, asked over TLS (GetLeader is each replica's own answer).
    let follower = wait_for(Duration::from_secs(30), "a leader and a follower", || {
        replicas.iter().find_map(|r| {
            let answer = admin
                .call(&r.addr, "trainfleet.v1.ClusterService/GetLeader", json!({}))
                .ok()?
                .ok()?;
            (answer["isSelf"] != true && answer["address"].as_str().is_some_and(|a| !a.is_empty()))
                .then(|| r.addr.clone())
        })
    })?;

    // A Submit to the follower reaches the leader over TLS (the follower trusts the CA).
    let submitted = admin
        .call(
            &follower,
            "trainfleet.v1.JobService/Submit",
            json!({"sleep": {"duration": "0s", "name": "through-a-follower"}}),
        )?
        .map_err(|e| anyhow::anyhow!("submit through the follower: {e:?}"))?;
    let job_id = submitted["job"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // A worker told only of the follower is sent to the leader and joins it by certificate.
    let w1 = pki.worker("w1")?;
    let _worker = start_worker(
        dir.path(),
        "w1",
        &follower,
        &format!(
            "tls:\n  ca_file: {}\n  cert_file: {}\n  key_file: {}\n",
            pki.ca_file.display(),
            w1.cert.display(),
            w1.key.display()
        ),
    )?;
    let job = wait_for(Duration::from_secs(60), "the job to end", || {
        let job = admin
            .call(
                &follower,
                "trainfleet.v1.JobService/Get",
                json!({"id": job_id}),
            )
            .ok()?
            .ok()?;
        matches!(
            job["state"].as_str(),
            Some("JOB_STATE_SUCCEEDED" | "JOB_STATE_FAILED")
        )
        .then_some(job)
    })?;
    assert_eq!(job["state"].as_str(), Some("JOB_STATE_SUCCEEDED"), "{job}");
    assert_eq!(job["attempts"][0]["workerId"].as_str(), Some("w1"), "{job}");
    Ok(())
}
