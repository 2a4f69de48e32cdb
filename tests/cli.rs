//! End-to-end: the `trainfleet` CLI as a user runs it.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

#[test]
fn run_starts_an_embedded_cluster_and_shows_the_worker_connected() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let output = Command::new(binary("trainfleet"))
        .args(["run", "--state-dir"])
        .arg(dir.path())
        .output()?;
    let stdout = String::from_utf8(output.stdout)?;
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("coordinator listening on 127.0.0.1:"),
        "{stdout}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("local "))
        .expect("the worker's row");
    assert!(row.contains("alive") && row.contains("cpu"), "{row}");
    Ok(())
}

#[test]
fn workers_verb_prints_table_and_json_and_reports_an_unreachable_endpoint() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coordinator = start_coordinator(dir.path(), "coordinator", "127.0.0.1:0", &[])?;
    let config = dir.path().join("w.yaml");
    std::fs::write(&config, "worker_id: cli-worker\nslots: 3\n")?;
    let _worker = Proc::start(
        "worker",
        &binary("trainfleet-worker"),
        &[
            "--config",
            &config.display().to_string(),
            "--coordinator",
            &coordinator.addr,
        ],
        dir.path(),
    )?;
    let cli = |args: &[&str]| {
        Command::new(binary("trainfleet"))
            .args(args)
            .env("TRAINFLEET_ENDPOINT", &coordinator.addr)
            .output()
            .expect("trainfleet runs")
    };
    let json = wait_for(
        Duration::from_secs(30),
        "cli-worker in `trainfleet workers --json`",
        || {
            let out = cli(&["workers", "--json"]);
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (json[0]["worker_id"] == "cli-worker").then_some(json)
        },
    )?;
    assert_eq!(json[0]["state"], "alive");
    assert_eq!(json[0]["slots"], 3);
    assert_eq!(json[0]["devices"][0]["kind"], "DEVICE_KIND_CPU");

    let table = String::from_utf8(cli(&["workers"]).stdout)?;
    assert!(table.starts_with("WORKER "), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("cli-worker") && l.contains("3/3")),
        "{table}"
    );
    let lost_only = String::from_utf8(cli(&["workers", "--state", "lost"]).stdout)?;
    assert_eq!(lost_only.trim(), "no workers");

    let dead = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let out = cli(&["workers", "--endpoint", &dead]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr)?;
    assert!(
        stderr.contains(&format!("cannot reach the coordinator at {dead}")),
        "{stderr}"
    );
    Ok(())
}
