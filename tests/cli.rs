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

/// `trainfleet run JOB`: train, evaluate, record; a second run compares with the first run's
/// model; Ctrl-C cancels cleanly and the state directory stays usable.
#[test]
fn run_trains_records_a_champion_compares_a_rerun_and_stops_on_ctrl_c() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let job = |epochs: u32| {
        format!(
            "name: tiny\ndataset:\n  builtin: synth-digits\n  synth: {{train_samples: 2000, test_samples: 400, seed: 3}}\n\
             model: {{arch: simple_cnn}}\ntraining: {{epochs: {epochs}, batch_size: 64, optimizer: adam, learning_rate: 0.001, threads: 1}}\n"
        )
    };
    let tiny = dir.path().join("tiny.yaml");
    std::fs::write(&tiny, job(1))?;
    let run = |file: &std::path::Path| support::trainfleet_run(&state, file);
    let first = run(&tiny)?;
    assert!(first.contains("epoch 1:"), "{first}");
    assert!(
        first.contains("promoted: first model of its dataset"),
        "{first}"
    );
    assert!(first.contains("artifacts: file://"), "{first}");
    // Again, with the paired test and the per-class rule: identical models disagree nowhere.
    let gated = dir.path().join("gated.yaml");
    std::fs::write(
        &gated,
        job(1) + "gate: {mcnemar_alpha: 0.05, max_class_drop: 0.02}\n",
    )?;
    let second = run(&gated)?;
    assert!(
        second.contains("not promoted") && second.contains("champion kept"),
        "the same seed on the same data is no better: {second}"
    );
    assert!(
        second.contains("McNemar: 0 samples only the challenger got right, 0 only the champion")
            && second.contains("no class recall drops by more than 0.02"),
        "{second}"
    );

    let long = dir.path().join("long.yaml");
    std::fs::write(&long, job(50))?;
    let mut proc = Proc::start(
        "run-long",
        &binary("trainfleet"),
        &[
            "run",
            &long.display().to_string(),
            "--state-dir",
            &state.display().to_string(),
        ],
        dir.path(),
    )?;
    wait_for(Duration::from_secs(120), "the first epoch", || {
        proc.log_text().contains("epoch 1:").then_some(())
    })?;
    proc.signal(libc::SIGINT);
    assert_eq!(proc.wait_exit(Duration::from_secs(30))?, Some(1));
    let log = proc.log_text();
    assert!(
        log.contains("interrupted: cancelling") && log.contains("ended cancelled"),
        "{log}"
    );
    // The state directory is consistent: the next run opens it and still has its champion.
    let third = run(&tiny)?;
    assert!(third.contains("champion kept"), "{third}");
    Ok(())
}

#[test]
fn demo_grows_the_data_retrains_and_ends_with_the_champions_lineage() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let demo = dir.path().join("demo");
    let run = || {
        Command::new(binary("trainfleet"))
            .args(["demo", "--samples", "400", "--steps", "1", "--epochs", "1"])
            .args(["--schedule", "* * * * * *", "--dir"])
            .arg(&demo)
            .output()
    };
    let output = run()?;
    let stdout = String::from_utf8(output.stdout)?;
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // 50 % then 100 %: the first version fires (no champion); the doubling fires on growth.
    assert!(
        stdout.contains("200 images): FIRED by schedule: the dataset has no champion yet"),
        "{stdout}"
    );
    assert!(
        stdout.contains("400 images): FIRED by schedule: grew 100.0% (200 → 400 samples)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("promoted: first model of its dataset"),
        "{stdout}"
    );
    let lineage = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("lineage"))
        .expect("the lineage line");
    assert!(lineage.contains("(v1)"), "{lineage}");
    // The champion's report knows the registered version it trained on, and the one before.
    let page = stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("report"))
        .and_then(|l| l.trim().strip_prefix("file://"))
        .expect("the champion's report line");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(
        std::path::Path::new(page).with_file_name("report.json"),
    )?)?;
    let version = report["dataset"]["version"].as_u64().unwrap();
    assert!(
        lineage.contains(&format!("(v{version})")),
        "{lineage} vs v{version}"
    );
    if version == 2 {
        assert_eq!(report["dataset"]["previous"]["number"], 1);
        assert_eq!(report["dataset"]["previous"]["samples"], 200);
        assert_eq!(report["dataset"]["samples"], 400);
    }
    assert_eq!(
        std::fs::read_dir(demo.join("data/digits/3"))?.count(),
        40,
        "the folder ends complete"
    );

    // The demo directory is its own: a rerun starts over; a foreign directory is refused.
    let again = run()?;
    assert!(again.status.success());
    let foreign = dir.path().join("mine");
    std::fs::create_dir(&foreign)?;
    std::fs::write(foreign.join("notes.txt"), "keep me")?;
    let refused = Command::new(binary("trainfleet"))
        .args(["demo", "--dir"])
        .arg(&foreign)
        .output()?;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is not a demo directory"),
        "{refused:?}"
    );
    assert!(foreign.join("notes.txt").exists());
    Ok(())
}
