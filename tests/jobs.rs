//! End-to-end jobs: a real coordinator and two real workers training tiny synth-digits models.
//! Jobs arrive through a real reflection client (JSON, as a grpcurl user sends them) and through
//! the CLI; a worker is killed with SIGKILL mid-training and its task resumes elsewhere from the
//! checkpoint; a job is cancelled; the coordinator restarts and still knows everything.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const FAST: &[&str] = &["--heartbeat-interval", "200ms", "--lease-timeout", "2s"];

fn start_worker(dir: &std::path::Path, name: &str, coordinator: &str) -> anyhow::Result<Proc> {
    let dirs = format!(
        "data_dir: {}\nartifact_dir: {}\n",
        dir.join("data").display(),
        dir.join(format!("work-{name}")).display()
    );
    support::start_worker(dir, name, coordinator, &dirs)
}

fn cli(dir: &std::path::Path, addr: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(std::process::Command::new(binary("trainfleet"))
        .args(args)
        .env("TRAINFLEET_ENDPOINT", addr)
        .current_dir(dir)
        .output()?)
}

fn get_job(addr: &str, id: &str) -> anyhow::Result<Value> {
    reflect_call(
        addr,
        "trainfleet.v1.JobService/Get",
        &json!({ "id": id }).to_string(),
    )?
    .map_err(|(code, message)| anyhow::anyhow!("Get {id}: {code}: {message}"))
}

fn wait_job(addr: &str, id: &str, state: &str, timeout: Duration) -> anyhow::Result<Value> {
    wait_for(timeout, &format!("job {id} to be {state}"), || {
        let job = get_job(addr, id).ok()?;
        (job["state"] == state).then_some(job)
    })
}

fn submit_json(addr: &str, yaml: &str) -> anyhow::Result<String> {
    let body = json!({ "yaml": yaml }).to_string();
    let answer = reflect_call(addr, "trainfleet.v1.JobService/Submit", &body)?
        .map_err(|(code, message)| anyhow::anyhow!("Submit: {code}: {message}"))?;
    Ok(answer["job"]["id"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn jobs_spread_over_workers_survive_a_killed_worker_cancel_and_a_coordinator_restart()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut coordinator = start_coordinator(dir.path(), "coordinator", "127.0.0.1:0", FAST)?;
    let addr = coordinator.addr.clone();
    let mut a = start_worker(dir.path(), "worker-a", &addr)?;
    let mut b = start_worker(dir.path(), "worker-b", &addr)?;

    // Four jobs: two as JSON through the reflection client, two through the CLI.
    let mut ids = vec![
        submit_json(&addr, &support::synth_job("json-1", 1, 1))?,
        submit_json(&addr, &support::synth_job("json-2", 1, 2))?,
    ];
    for (name, seed) in [("cli-1", 3), ("cli-2", 4)] {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, support::synth_job(name, 1, seed))?;
        let out = cli(
            dir.path(),
            &addr,
            &["submit", &file.display().to_string(), "--json"],
        )?;
        anyhow::ensure!(out.status.success(), "{out:?}");
        let job: Value = serde_json::from_slice(&out.stdout)?;
        ids.push(job["id"].as_str().unwrap_or_default().to_owned());
    }
    let mut trained_on = std::collections::BTreeSet::new();
    for id in &ids {
        let job = wait_job(&addr, id, "JOB_STATE_SUCCEEDED", Duration::from_secs(240))
            .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", a.log_text(), b.log_text()))?;
        let attempts = job["attempts"].as_array().cloned().unwrap_or_default();
        // One train attempt, then one eval (another round if the champion moved meanwhile).
        assert_eq!(attempts[0]["task"], "train", "{job}");
        assert!(
            attempts.len() >= 2 && attempts[1..].iter().all(|t| t["task"] == "eval"),
            "{job}"
        );
        trained_on.insert(
            attempts[0]["workerId"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        assert!(job["result"]["modelId"].is_string(), "{job}");
    }
    assert_eq!(
        trained_on.len(),
        2,
        "both workers took training tasks: {trained_on:?}"
    );
    // What `helm test` asks: a replica serves, and the cluster has the workers it should.
    let health = |workers: &str| {
        std::process::Command::new(binary("trainfleet-coordinator"))
            .args([
                "health",
                "--addr",
                &addr,
                "--timeout",
                "2s",
                "--workers",
                workers,
            ])
            .output()
    };
    let out = health("2")?;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("SERVING, 2 of 2 workers alive"),
        "{out:?}"
    );
    let out = health("3")?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 of 2 workers alive; wanted at least 3"),
        "{out:?}"
    );

    // Kill -9 the worker training a longer job once an epoch's checkpoint is recorded: the other
    // worker resumes from it.
    let long = submit_json(&addr, &support::synth_job("long", 4, 5))?;
    let job = wait_for(Duration::from_secs(120), "an epoch of the long job", || {
        let job = get_job(&addr, &long).ok()?;
        (job["epochs"].as_array().is_some_and(|e| !e.is_empty())).then_some(job)
    })?;
    let victim = job["workerId"].as_str().unwrap_or_default().to_owned();
    let (dead, survivor) = if victim == "worker-a" {
        (&mut a, "worker-b")
    } else {
        (&mut b, "worker-a")
    };
    dead.kill();
    let job = wait_job(
        &addr,
        &long,
        "JOB_STATE_SUCCEEDED",
        Duration::from_secs(240),
    )?;
    let attempts = job["attempts"].as_array().cloned().unwrap_or_default();
    let second = attempts
        .iter()
        .find(|t| t["task"] == "train" && t["attempt"] == 2)
        .unwrap_or_else(|| panic!("a second train attempt: {job}"));
    assert_eq!(second["workerId"], survivor, "{job}");
    assert!(
        second["resumedFromEpoch"].as_u64().unwrap_or(0) >= 1,
        "resumed from a checkpoint, not restarted: {job}"
    );
    let epochs: Vec<u64> = job["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["epoch"].as_u64().unwrap_or(1))
        .collect();
    assert_eq!(epochs, [1, 2, 3, 4], "every epoch once: {job}");

    // Cancel a running job through the CLI; the worker stops within a batch.
    let doomed = submit_json(&addr, &support::synth_job("doomed", 20, 6))?;
    wait_job(
        &addr,
        &doomed,
        "JOB_STATE_TRAINING",
        Duration::from_secs(60),
    )?;
    let out = cli(dir.path(), &addr, &["cancel", &doomed, "--reason", "test"])?;
    anyhow::ensure!(out.status.success(), "{out:?}");
    let job = wait_job(
        &addr,
        &doomed,
        "JOB_STATE_CANCELLED",
        Duration::from_secs(30),
    )?;
    assert_eq!(job["error"], "cancelled: test");

    let champion = reflect_call(
        &addr,
        "trainfleet.v1.ModelService/GetChampion",
        r#"{"dataset": "synth-digits"}"#,
    )?
    .map_err(|(c, m)| anyhow::anyhow!("{c}: {m}"))?;

    // Restart the coordinator on the same state: every job and the champion are still there.
    // A dataset directory no worker has: accepted (the coordinator need not see the workers'
    // disks), then refused by the worker as its first step, naming the field and the path.
    let missing = submit_json(
        &addr,
        "dataset: {format: imagefolder, path: /nonexistent/pets}\nmodel: {arch: cnn}\n",
    )?;
    let failed = wait_job(&addr, &missing, "JOB_STATE_FAILED", Duration::from_secs(60))?;
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("dataset.path") && error.contains("/nonexistent/pets"),
        "{failed}"
    );

    // Paths outside the workers' data roots (the test's directory): refused naming the field,
    // before anything is opened. The weights are a FIFO: opening it would block the task, so a
    // prompt refusal shows nothing read it.
    let outside = tempfile::tempdir()?;
    let images = outside.path().join("pets");
    std::fs::create_dir_all(images.join("cat"))?;
    let fifo = outside.path().join("weights.safetensors");
    anyhow::ensure!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()?
            .success()
    );
    let escape = dir.path().join("escape");
    std::os::unix::fs::symlink(outside.path(), &escape)?;
    let cases = [
        (
            format!(
                "dataset: {{format: imagefolder, path: {}}}\nmodel: {{arch: cnn}}\n",
                images.display()
            ),
            "dataset.path",
        ),
        (
            format!(
                "dataset: {{format: imagefolder, path: {}/pets}}\nmodel: {{arch: cnn}}\n",
                escape.display()
            ),
            "dataset.path",
        ),
        (
            format!(
                "dataset: {{format: imagefolder, path: {}/data/../../../{}}}\nmodel: {{arch: cnn}}\n",
                dir.path().display(),
                images.strip_prefix("/")?.display()
            ),
            "dataset.path",
        ),
        (
            format!(
                "dataset: {{builtin: synth-digits}}\nmodel: {{arch: simple_cnn, init_weights: {}}}\n",
                fifo.display()
            ),
            "model.init_weights",
        ),
    ];
    for (yaml, field) in cases {
        let id = submit_json(&addr, &yaml)?;
        let failed = wait_job(&addr, &id, "JOB_STATE_FAILED", Duration::from_secs(60))?;
        let error = failed["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("permission denied: `{field}`"))
                && error.contains("outside this worker's data roots"),
            "{yaml}: {failed}"
        );
        // Refused once, not retried: another attempt on the same roots cannot help.
        assert_eq!(
            failed["attempts"].as_array().map_or(0, Vec::len),
            1,
            "{failed}"
        );
    }

    coordinator.proc.signal(libc::SIGTERM);
    assert_eq!(
        coordinator.proc.wait_exit(Duration::from_secs(15))?,
        Some(0)
    );
    let restarted = start_coordinator(dir.path(), "coordinator-2", &addr, FAST)?;
    let out = cli(dir.path(), &restarted.addr, &["jobs", "--json"])?;
    anyhow::ensure!(out.status.success(), "{out:?}");
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    assert_eq!(listed.len(), 11, "{listed:?}");
    let again = reflect_call(
        &restarted.addr,
        "trainfleet.v1.ModelService/GetChampion",
        r#"{"dataset": "synth-digits"}"#,
    )?
    .map_err(|(c, m)| anyhow::anyhow!("{c}: {m}"))?;
    assert_eq!(again["id"], champion["id"]);
    Ok(())
}

#[test]
fn bad_input_is_refused_with_the_right_code_and_nothing_is_queued() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coordinator = start_coordinator(dir.path(), "coordinator", "127.0.0.1:0", FAST)?;
    let addr = coordinator.addr.as_str();

    // A 10 MB job file, through the CLI (argv could not carry it to a script client).
    let big = dir.path().join("big.yaml");
    let mut text = support::synth_job("big", 1, 1);
    text.push_str("# ");
    text.push_str(&"x".repeat(10 << 20));
    text.push('\n');
    std::fs::write(&big, text)?;
    let out = cli(dir.path(), addr, &["submit", &big.display().to_string()])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("the limit is 1048576 bytes"),
        "{stderr}"
    );

    // An unknown model: the YAML's line and column, and the valid choices.
    let yaml = support::synth_job("typo", 1, 1).replace("simple_cnn", "resnet9000");
    let body = json!({ "yaml": yaml }).to_string();
    let (code, message) =
        reflect_call(addr, "trainfleet.v1.JobService/Submit", &body)?.expect_err("refused");
    assert_eq!(code, "INVALID_ARGUMENT");
    assert!(
        message.contains("yaml:5:15")
            && message.contains("resnet9000")
            && message.contains("resnet18"),
        "{message}"
    );
    // The same mistake in the structured form names the field.
    let body = r#"{"structured": {"dataset": "synth-digits", "model": {"arch": "resnet9000"}}}"#;
    let (code, message) =
        reflect_call(addr, "trainfleet.v1.JobService/Submit", body)?.expect_err("refused");
    assert_eq!(code, "INVALID_ARGUMENT");
    assert!(message.contains("structured"), "{message}");

    // Nothing was queued by any of that.
    let listed = reflect_call(addr, "trainfleet.v1.JobService/List", "{}")?
        .map_err(|(c, m)| anyhow::anyhow!("{c}: {m}"))?;
    assert_eq!(listed["jobs"].as_array().map_or(0, Vec::len), 0, "{listed}");

    // A worker completing a task it does not hold: a stranger, then a registered worker.
    let job = reflect_call(
        addr,
        "trainfleet.v1.JobService/Submit",
        r#"{"sleep": {"duration": "60s"}}"#,
    )?
    .map_err(|(c, m)| anyhow::anyhow!("{c}: {m}"))?;
    let job_id = job["job"]["id"].as_str().unwrap_or_default().to_owned();
    let task_id = format!("{job_id}-sleep");
    let queue = reflect_call(addr, "trainfleet.v1.ClusterService/GetQueue", "{}")?
        .map_err(|(c, m)| anyhow::anyhow!("{c}: {m}"))?;
    assert_eq!(queue["queued"][0]["taskId"], task_id.as_str(), "{queue}");
    assert_eq!(queue["queued"][0]["kind"], "TASK_KIND_SLEEP", "{queue}");
    let complete = |worker: &str, session: &str| {
        json!({
            "workerId": worker, "sessionId": session, "taskId": task_id, "attempt": 1,
            "success": {"metrics": {"accuracy": 1.0}}
        })
        .to_string()
    };
    let (code, message) = reflect_call(
        addr,
        "trainfleet.v1.WorkerService/CompleteTask",
        &complete("ghost", "x"),
    )?
    .expect_err("stranger");
    assert_eq!(code, "NOT_FOUND", "{message}");
    let registered = reflect_call(
        addr,
        "trainfleet.v1.WorkerService/Register",
        r#"{"workerId": "idle", "slots": 1, "devices": [{"kind": "DEVICE_KIND_CPU"}]}"#,
    )?
    .map_err(|(c, m)| anyhow::anyhow!("{c}: {m}"))?;
    let session = registered["sessionId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (code, _) = reflect_call(
        addr,
        "trainfleet.v1.WorkerService/CompleteTask",
        &complete("idle", "forged"),
    )?
    .expect_err("a forged session");
    assert_eq!(code, "NOT_FOUND");
    let (code, message) = reflect_call(
        addr,
        "trainfleet.v1.WorkerService/CompleteTask",
        &complete("idle", &session),
    )?
    .expect_err("not its task");
    assert_eq!(code, "FAILED_PRECONDITION");
    assert!(message.contains("nothing changed"), "{message}");
    let after = get_job(addr, &job_id)?;
    assert_eq!(after["state"], "JOB_STATE_QUEUED", "{after}");
    assert!(
        after["result"].is_null() && after.get("attempts").is_none(),
        "{after}"
    );
    Ok(())
}
