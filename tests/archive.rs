//! End to end, retention and the job archive: a real coordinator that keeps no finished job in
//! its store, a real worker training two tiny synth-digits runs. The second run (same recipe,
//! not promoted) is archived; the coordinator is made to die at the worst moment (the archive
//! written, the store not yet let go) and loses nothing; after the restart the run is found in
//! the archive by `JobService.Get` (grpcurl-style reflection client), `List`, `trainfleet jobs`
//! and `trainfleet runs show`. The champion's job is never archived.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const FAST: &[&str] = &[
    "--heartbeat-interval",
    "200ms",
    "--lease-timeout",
    "2s",
    "--retain-finished-jobs",
    "0",
    "--archive-interval",
    "300ms",
];

fn call(addr: &str, method: &str, body: Value) -> anyhow::Result<Value> {
    reflect_call(
        addr,
        &format!("trainfleet.v1.JobService/{method}"),
        &body.to_string(),
    )?
    .map_err(|(code, message)| anyhow::anyhow!("{method}: {code}: {message}"))
}

fn cli(dir: &std::path::Path, addr: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(binary("trainfleet"))
        .args(args)
        .env("TRAINFLEET_ENDPOINT", addr)
        .current_dir(dir)
        .output()?;
    let stdout = String::from_utf8(out.stdout)?;
    anyhow::ensure!(
        out.status.success(),
        "{args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

#[test]
fn an_archived_run_is_found_again_and_a_crash_mid_archive_loses_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut coordinator = start_coordinator_with_env(
        dir.path(),
        "coordinator",
        "127.0.0.1:0",
        FAST,
        &[("TRAINFLEET_CRASH_AT", "archive-written")],
    )?;
    let addr = coordinator.addr.clone();
    let dirs = format!(
        "data_dir: {}\nartifact_dir: {}\n",
        dir.path().join("data").display(),
        dir.path().join("work").display()
    );
    let _worker = start_worker(dir.path(), "worker", &addr, &dirs)?;

    let submit = |name: &str| -> anyhow::Result<String> {
        let job = call(&addr, "Submit", json!({ "yaml": synth_job(name, 1, 1) }))?;
        Ok(job["job"]["id"].as_str().unwrap_or_default().to_owned())
    };
    let wait_done = |addr: &str, id: &str| -> anyhow::Result<Value> {
        wait_for(
            Duration::from_secs(120),
            &format!("job {id} to succeed"),
            || {
                let job = call(addr, "Get", json!({ "id": id })).ok()?;
                (job["state"] == "JOB_STATE_SUCCEEDED").then_some(job)
            },
        )
    };
    let champion = submit("champion")?;
    let champion_job = wait_done(&addr, &champion)?;
    assert_eq!(champion_job["result"]["promoted"], true, "{champion_job:#}");

    // The same recipe again: equal scores do not beat the champion, so nothing protects it, and
    // with no finished job retained its archiving starts at once; the coordinator dies between
    // writing the archive and letting go of the store.
    let second = submit("same recipe")?;
    let exited = coordinator.proc.wait_exit(Duration::from_secs(180))?;
    assert!(
        exited.is_none_or(|code| code != 0),
        "the coordinator was to abort mid-archive: {exited:?}\n{}",
        coordinator.proc.log_text()
    );
    assert!(
        coordinator
            .proc
            .log_text()
            .contains("archive-written: aborting"),
        "{}",
        coordinator.proc.log_text()
    );

    // Restarted (without the crash) on the same state: the job was in both places, the next
    // pass finishes the move.
    let restarted = start_coordinator(dir.path(), "coordinator-2", &addr, FAST)?;
    let archived = wait_for(
        Duration::from_secs(30),
        "the second run to be read from the archive",
        || {
            let job = call(&restarted.addr, "Get", json!({ "id": second })).ok()?;
            (job["source"] == "JOB_SOURCE_ARCHIVE").then_some(job)
        },
    )?;
    assert_eq!(archived["state"], "JOB_STATE_SUCCEEDED", "{archived:#}");
    // proto3 JSON leaves a false `promoted` out.
    assert_ne!(archived["result"]["promoted"], true, "{archived:#}");
    assert!(archived["archivedAt"].is_string(), "{archived:#}");
    assert_eq!(archived["epochs"].as_array().map(Vec::len), Some(1));
    assert!(archived["run"]["runUri"].is_string(), "{archived:#}");

    let champion_now = call(&restarted.addr, "Get", json!({ "id": champion }))?;
    assert_eq!(
        champion_now["source"], "JOB_SOURCE_STORE",
        "the champion's job stays in the store: {champion_now:#}"
    );

    let listed = call(&restarted.addr, "List", json!({}))?;
    let sources: Vec<(String, String)> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["id"].as_str().unwrap().to_owned(),
                j["source"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        [
            (second.clone(), "JOB_SOURCE_ARCHIVE".to_owned()),
            (champion.clone(), "JOB_SOURCE_STORE".to_owned())
        ],
        "{listed:#}"
    );

    let jobs: Vec<Value> =
        serde_json::from_str(&cli(dir.path(), &restarted.addr, &["jobs", "--json"])?)?;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert_eq!(jobs[0]["source"], "archive");
    let shown = cli(dir.path(), &restarted.addr, &["runs", "show", &second])?;
    for part in [
        "read from the archive",
        "system: cpu (1 threads)",
        "model.safetensors",
        "not promoted",
    ] {
        assert!(shown.contains(part), "{part:?} not in\n{shown}");
    }
    Ok(())
}
