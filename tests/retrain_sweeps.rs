//! A dataset whose policy retrains with a sweep, end to end: a real coordinator (archiving
//! finished sweeps at once), two real workers, a real image folder that grows; the first sweep's
//! best becomes the champion through the gate, and the next retrain's sweep proposes its best
//! configurations first.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::sweeps::{call, cli, worker};
use support::*;

const FAST: &[&str] = &["--heartbeat-interval", "200ms", "--lease-timeout", "2s"];

/// `sweep status ID --json`, once it ended.
fn wait_sweep(d: &Path, addr: &str, id: &str) -> anyhow::Result<Value> {
    wait_for(
        Duration::from_secs(240),
        &format!("sweep {id} to end"),
        || {
            let out = cli(d, addr, &["sweep", "status", id, "--json"]).ok()?;
            let sweep: Value = serde_json::from_slice(&out.stdout).ok()?;
            ["succeeded", "failed", "cancelled"]
                .contains(&sweep["state"].as_str()?)
                .then_some(sweep)
        },
    )
}

fn newest_decision(d: &Path, addr: &str) -> anyhow::Result<Value> {
    let out = cli(d, addr, &["dataset", "history", "shapes", "--json"])?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let history: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    Ok(history.first().cloned().unwrap_or_default())
}

#[test]
fn a_retrain_sweep_gates_its_best_and_the_next_retrain_starts_from_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let data = d.join("shapes");
    support::shapes::add_images(&data, 0..30)?;
    std::fs::write(
        d.join("job.yaml"),
        "name: shapes\n\
         dataset: {grayscale: true, image_size: [12, 12], validation_pct: 20}\n\
         model: {arch: cnn, channels: [8, 16], hidden: [32]}\n\
         training: {epochs: 2, batch_size: 16, learning_rate: 0.01, device: cpu, threads: 1}\n",
    )?;
    std::fs::write(
        d.join("retrain-sweep.yaml"),
        "space:\n  training.learning_rate: {log: [0.0003, 0.03]}\nmax_trials: 3\nparallelism: 2\nseed: 11\n",
    )?;
    // Every finished sweep leaves the store for the archive at once: the next retrain's warm
    // start is kept with the dataset, and the sweeps are still read from the archive.
    let mut flags = FAST.to_vec();
    flags.extend([
        "--retain-finished-sweeps",
        "0",
        "--archive-interval",
        "200ms",
    ]);
    let coordinator = start_coordinator(d, "coordinator", "127.0.0.1:0", &flags)?;
    let addr = coordinator.addr.clone();
    let _a = worker(d, "worker-a", &addr)?;
    let _b = worker(d, "worker-b", &addr)?;
    let run = |args: &[&str]| -> anyhow::Result<String> {
        let out = cli(d, &addr, args)?;
        anyhow::ensure!(
            out.status.success(),
            "trainfleet {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    // A retrain sweep's base job is the policy's job: a sweep naming its own is refused.
    std::fs::write(
        d.join("own-job.yaml"),
        "job_file: job.yaml\nspace:\n  training.learning_rate: {log: [0.001, 0.01]}\nmax_trials: 2\n",
    )?;
    let refused = cli(
        d,
        &addr,
        &[
            "dataset",
            "register",
            "shapes",
            "--dir",
            data.to_str().unwrap(),
            "--job",
            "job.yaml",
            "--sweep",
            "own-job.yaml",
        ],
    )?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("policy.sweep_yaml") && stderr.contains("`job_file` is set"),
        "{stderr}"
    );
    run(&[
        "dataset",
        "register",
        "shapes",
        "--dir",
        data.to_str().unwrap(),
        "--on-growth-pct",
        "10",
        "--job",
        "job.yaml",
        "--sweep",
        "retrain-sweep.yaml",
        "--warm-start-top-k",
        "2",
        "--warm-max-trials",
        "2",
    ])?;

    // Version 1 fires a sweep of 3 trials, nothing to warm-start from; its best becomes the
    // first champion through the gate.
    run(&["dataset", "scan", "shapes"])?;
    let first = newest_decision(d, &addr)?;
    assert_eq!(first["outcome"], "fired", "{first:#}");
    assert_eq!(
        (
            first["sweep_trials"].as_u64(),
            first["warm_start_configs"].as_u64()
        ),
        (Some(3), Some(0))
    );
    let first_id = first["sweep_id"].as_str().expect("a sweep").to_owned();
    let s1 = wait_sweep(d, &addr, &first_id)?;
    assert_eq!(s1["state"], "succeeded", "{s1:#}");
    assert_eq!(s1["retrain_dataset"], "shapes");
    assert_eq!(s1["trials"].as_array().map(Vec::len), Some(3));
    assert_eq!(s1["gate"]["promoted"], true, "no champion yet: {s1:#}");
    let champion = call(
        &addr,
        "trainfleet.v1.ModelService/List",
        json!({"dataset": "shapes"}),
    )?;
    let models = champion["models"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        models.len(),
        1,
        "only the gated best records a model: {models:#?}"
    );
    assert_eq!(models[0]["id"], s1["gate"]["model_id"]);
    // Every trial trained on version 1's pinned data.
    for t in s1["trials"].as_array().unwrap() {
        let job = call(
            &addr,
            "trainfleet.v1.JobService/Get",
            json!({"id": t["job_id"]}),
        )?;
        let root = first["root"].as_str().expect("a root");
        assert!(
            job["specYaml"].as_str().is_some_and(|y| y.contains(root)),
            "{job:#}"
        );
    }

    // 50 % more data: version 2 fires a sweep that proposes version 1's two best first and
    // runs 2 trials in all.
    support::shapes::add_images(&data, 30..45)?;
    run(&["dataset", "scan", "shapes"])?;
    let second = newest_decision(d, &addr)?;
    assert_eq!(second["outcome"], "fired", "{second:#}");
    assert_eq!(second["version"], 2);
    assert_eq!(second["warm_start_from"], first_id.as_str());
    assert_eq!(
        (
            second["warm_start_configs"].as_u64(),
            second["sweep_trials"].as_u64()
        ),
        (Some(2), Some(2))
    );
    let second_id = second["sweep_id"].as_str().expect("a sweep").to_owned();
    let s2 = wait_sweep(d, &addr, &second_id)?;
    assert_eq!(s2["state"], "succeeded", "{s2:#}");
    assert_eq!(s2["warm_start_from"], first_id.as_str());
    let mut ranked: Vec<&Value> = s1["trials"].as_array().unwrap().iter().collect();
    ranked.sort_by(|a, b| {
        let v = |t: &Value| t["objective"].as_f64().unwrap_or(f64::MIN);
        v(b).total_cmp(&v(a))
            .then(a["number"].as_u64().cmp(&b["number"].as_u64()))
    });
    let lr = |t: &Value| t["params"]["training.learning_rate"].clone();
    let proposed: Vec<Value> = s2["trials"].as_array().unwrap().iter().map(lr).collect();
    assert_eq!(
        proposed,
        [lr(ranked[0]), lr(ranked[1])],
        "the previous best, best first"
    );
    assert!(
        s2["gate"]["model_id"].is_string(),
        "the best met the champion: {s2:#}"
    );

    // Both were archived (the coordinator's log says so), and are still listed and read.
    wait_for(Duration::from_secs(30), "both sweeps archived", || {
        let log = coordinator.proc.log_text();
        (log.matches("finished sweeps moved to the archive").count() >= 2).then_some(())
    })?;
    let listed = call(&addr, "trainfleet.v1.SweepService/List", json!({}))?;
    let ids: Vec<&str> = listed["sweeps"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, [second_id.as_str(), first_id.as_str()], "{listed:#}");
    let archived = wait_sweep(d, &addr, &first_id)?;
    assert_eq!(archived["trials"], s1["trials"]);

    // The history says it, in words.
    let text = run(&["dataset", "history", "shapes"])?;
    assert!(
        text.contains(&format!(
            "sweep {second_id} (2 trials, 2 warm from {first_id})"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("sweep {first_id} (3 trials)")),
        "{text}"
    );
    Ok(())
}
