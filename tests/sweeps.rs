//! End-to-end sweeps: a real coordinator and two real workers run a grid sweep and an ASHA
//! sweep of tiny synth-digits trials started from the CLI; ASHA pauses trials at a rung and
//! resumes the promoted ones from their checkpoints; the best trial meets the champion through
//! the ordinary eval and gate; a sweep survives a coordinator restart; a sweep is cancelled
//! mid-trial; bad specs are refused naming the field, before anything is queued.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::sweeps::{call, cli, worker};
use support::*;

const FAST: &[&str] = &["--heartbeat-interval", "200ms", "--lease-timeout", "2s"];

/// A base job that trains in about a second per epoch on one core.
fn base_job(dir: &Path, epochs: u32, train_samples: u32) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("base.yaml"),
        format!(
            "name: digits\n\
             dataset:\n  builtin: synth-digits\n  synth: {{train_samples: {train_samples}, test_samples: 300, seed: 7}}\n  validation_pct: 20\n\
             model: {{arch: simple_cnn}}\n\
             training: {{epochs: {epochs}, batch_size: 32, optimizer: adam, threads: 1}}\n"
        ),
    )?;
    Ok(())
}

#[test]
fn a_grid_sweep_runs_every_point_on_two_workers_and_gates_the_best() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    base_job(d, 1, 600)?;
    std::fs::write(
        d.join("sweep.yaml"),
        "name: grid\njob_file: base.yaml\nspace:\n  training.learning_rate: {grid: [0.003, 0.0003]}\n  training.batch_size: {grid: [16, 64]}\nstrategy: grid\nparallelism: 2\nseed: 5\n",
    )?;
    let mut coordinator = start_coordinator(d, "coordinator", "127.0.0.1:0", FAST)?;
    let addr = coordinator.addr.clone();
    let _a = worker(d, "worker-a", &addr)?;
    let _b = worker(d, "worker-b", &addr)?;

    let out = cli(
        d,
        &addr,
        &["sweep", "start", "sweep.yaml", "--wait", "--json"],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{stderr}\n{}",
        coordinator.proc.log_text()
    );
    let sweep: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(sweep["state"], "succeeded", "{sweep:#}");
    let trials = sweep["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 4, "every grid point, once");
    let mut points = std::collections::BTreeSet::new();
    for t in trials {
        assert_eq!(t["state"], "succeeded", "{t:#}");
        assert_eq!(t["epochs"], 1);
        assert!(t["objective"].is_f64(), "{t:#}");
        points.insert((
            t["params"]["training.learning_rate"].to_string(),
            t["params"]["training.batch_size"].to_string(),
        ));
    }
    assert_eq!(points.len(), 4, "four distinct points: {points:?}");
    // The best is the trial with the highest validation accuracy (ties: the lower number).
    let best = sweep["best"].as_u64().expect("a best trial") as usize;
    let top = trials
        .iter()
        .map(|t| t["objective"].as_f64().unwrap_or(f64::MIN))
        .fold(f64::MIN, f64::max);
    assert_eq!(trials[best]["objective"].as_f64(), Some(top));
    assert!(
        stderr.lines().filter(|l| l.starts_with("trial ")).count() >= 4,
        "--wait prints each trial as it ends:\n{stderr}"
    );

    // Trials are ordinary jobs, spread over both workers, tagged with their sweep; they record
    // no model: only the gate job does.
    let mut workers = std::collections::BTreeSet::new();
    for t in trials {
        let job = call(
            &addr,
            "trainfleet.v1.JobService/Get",
            json!({ "id": t["job_id"] }),
        )?;
        assert_eq!(job["state"], "JOB_STATE_SUCCEEDED");
        assert_eq!(
            job["spec"]["name"],
            format!("grid-t{:03}", t["number"].as_u64().unwrap())
        );
        assert!(
            job["result"]["modelId"].is_null(),
            "a trial records no model: {job:#}"
        );
        workers.insert(job["attempts"][0]["workerId"].to_string());
    }
    assert_eq!(workers.len(), 2, "trials ran on both workers: {workers:?}");
    let gate = &sweep["gate"];
    assert_eq!(gate["trial"].as_u64(), Some(best as u64));
    assert_eq!(
        gate["promoted"], true,
        "no champion yet: the best takes the seat: {gate:#}"
    );
    let model_id = gate["model_id"].as_str().expect("a model").to_owned();
    let models = call(&addr, "trainfleet.v1.ModelService/List", json!({}))?;
    let models = models["models"].as_array().cloned().unwrap_or_default();
    assert_eq!(models.len(), 1, "one model, the gated best: {models:#?}");
    assert_eq!(models[0]["id"], model_id.as_str());
    let weights = format!(
        "{}/model.safetensors",
        trials[best]["run_uri"].as_str().unwrap_or("")
    );
    assert_eq!(
        models[0]["artifactUri"],
        weights.as_str(),
        "the best trial's own weights"
    );

    // The sweep is in the store: a restarted coordinator answers the same.
    coordinator.proc.kill();
    let restarted = start_coordinator(d, "coordinator-2", &addr, FAST)?;
    let again = call(
        &restarted.addr,
        "trainfleet.v1.SweepService/Get",
        json!({ "id": sweep["id"] }),
    )?;
    assert_eq!(again["state"], "SWEEP_STATE_SUCCEEDED");
    assert_eq!(again["trials"].as_array().map(Vec::len), Some(4));
    assert_eq!(again["gate"]["modelId"], model_id.as_str());
    Ok(())
}

#[test]
fn a_cancelled_sweep_stops_its_trial_and_bad_specs_queue_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    base_job(d, 30, 3000)?;
    let coordinator = start_coordinator(d, "coordinator", "127.0.0.1:0", FAST)?;
    let addr = coordinator.addr.clone();

    // Refused with the field and its line, locally by the CLI and by the coordinator.
    std::fs::write(
        d.join("bad.yaml"),
        "job_file: base.yaml\nspace:\n  training.learning_rate: {double: [0.1, 0.01]}\nmax_trials: 2\n",
    )?;
    let out = cli(d, &addr, &["sweep", "start", "bad.yaml"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bad.yaml:3:3: `space.training.learning_rate` min 0.1 is above max 0.01"),
        "{stderr}"
    );
    let structured = json!({ "structured": {
        "jobYaml": std::fs::read_to_string(d.join("base.yaml"))?,
        "parameters": [{ "path": "training.momentum", "logRange": { "min": 0.0, "max": 0.9 } }],
        "maxTrials": 2,
    }});
    let (code, message) = reflect_call(
        &addr,
        "trainfleet.v1.SweepService/Start",
        &structured.to_string(),
    )?
    .expect_err("a log range from 0");
    assert_eq!(code, "INVALID_ARGUMENT");
    assert!(
        message.contains("structured.space.training.momentum"),
        "{message}"
    );
    let listed = call(&addr, "trainfleet.v1.SweepService/List", json!({}))?;
    assert!(
        listed["sweeps"].as_array().is_none_or(Vec::is_empty),
        "{listed:#}"
    );
    let jobs = call(&addr, "trainfleet.v1.JobService/List", json!({}))?;
    assert!(
        jobs["jobs"].as_array().is_none_or(Vec::is_empty),
        "nothing queued: {jobs:#}"
    );

    // A random sweep, one trial at a time: cancel it while its first trial trains.
    std::fs::write(
        d.join("random.yaml"),
        "job_file: base.yaml\nspace:\n  training.learning_rate: {log: [0.0001, 0.01]}\nmax_trials: 5\nparallelism: 1\n",
    )?;
    let out = cli(d, &addr, &["sweep", "start", "random.yaml", "--json"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started: Value = serde_json::from_slice(&out.stdout)?;
    let id = started["id"].as_str().expect("id").to_owned();
    assert_eq!(started["started"], 1, "parallelism 1: one trial queued");
    let _worker = worker(d, "worker-a", &addr)?;
    let job_id = started["trials"][0]["job_id"]
        .as_str()
        .expect("job")
        .to_owned();
    wait_for(Duration::from_secs(60), "the first trial to train", || {
        let job = call(
            &addr,
            "trainfleet.v1.JobService/Get",
            json!({ "id": job_id }),
        )
        .ok()?;
        job["epochs"]
            .as_array()
            .filter(|e| !e.is_empty())
            .map(|_| ())
    })?;
    let out = cli(
        d,
        &addr,
        &["sweep", "cancel", &id, "--reason", "enough", "--json"],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cancelled: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["trials"][0]["state"], "cancelled");
    let job = wait_for(Duration::from_secs(30), "the trial's job to stop", || {
        let job = call(
            &addr,
            "trainfleet.v1.JobService/Get",
            json!({ "id": job_id }),
        )
        .ok()?;
        (job["state"] == "JOB_STATE_CANCELLED").then_some(job)
    })?;
    assert!(
        job["error"].as_str().unwrap_or("").contains("enough"),
        "{job:#}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let after = call(&addr, "trainfleet.v1.SweepService/Get", json!({ "id": id }))?;
    assert_eq!(
        after["started"], 1,
        "no trial started after the cancel: {after:#}"
    );
    let again = cli(d, &addr, &["sweep", "cancel", &id])?;
    assert!(String::from_utf8_lossy(&again.stderr).contains("already ended"));
    Ok(())
}

#[test]
fn asha_pauses_trials_at_a_rung_and_resumes_the_promoted_from_their_checkpoints()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    base_job(d, 3, 600)?;
    std::fs::write(
        d.join("asha.yaml"),
        "name: asha\njob_file: base.yaml\nspace:\n  training.learning_rate: {log: [0.0002, 0.02]}\n  training.batch_size: {categorical: [16, 32]}\nstrategy: asha\nasha: {min_epochs: 1, max_epochs: 3, eta: 3}\nmax_trials: 6\nparallelism: 2\nseed: 3\n",
    )?;
    let coordinator = start_coordinator(d, "coordinator", "127.0.0.1:0", FAST)?;
    let addr = coordinator.addr.clone();
    let _a = worker(d, "worker-a", &addr)?;
    let _b = worker(d, "worker-b", &addr)?;
    let out = cli(
        d,
        &addr,
        &["sweep", "start", "asha.yaml", "--wait", "--json"],
    )?;
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        coordinator.proc.log_text()
    );
    let sweep: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(sweep["state"], "succeeded", "{sweep:#}");
    assert_eq!(sweep["rungs"], json!([1, 3]));
    let trials = sweep["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 6, "exactly max_trials trials");
    // Asynchronous promotion: a trial is promoted when it is in the top third of the reports
    // at its rung so far, so once all six reported, the top two there were promoted and the
    // worst never was; every other trial either resumed or stopped at the rung.
    let promoted: Vec<&Value> = trials.iter().filter(|t| t["resumes"] == 1).collect();
    let stopped: Vec<&Value> = trials.iter().filter(|t| t["state"] == "stopped").collect();
    assert_eq!(promoted.len() + stopped.len(), 6, "{sweep:#}");
    let mut at_rung: Vec<(f64, &Value)> = trials
        .iter()
        .map(|t| (t["rungs"][0]["value"].as_f64().unwrap_or(f64::MIN), t))
        .collect();
    at_rung.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (_, t) in &at_rung[..2] {
        assert_eq!(t["rungs"][0]["promoted"], true, "a top-third trial: {t:#}");
    }
    assert_eq!(
        at_rung[5].1["state"], "stopped",
        "the worst at the rung: {sweep:#}"
    );
    for t in &stopped {
        assert_eq!(t["epochs"], 1, "stopped at the first rung: {t:#}");
        assert_eq!(t["rungs"].as_array().map(Vec::len), Some(1));
        let job = call(
            &addr,
            "trainfleet.v1.JobService/Get",
            json!({ "id": t["job_id"] }),
        )?;
        assert_eq!(job["state"], "JOB_STATE_CANCELLED");
        assert!(
            job["error"]
                .as_str()
                .unwrap_or("")
                .contains("stopped by ASHA"),
            "{job:#}"
        );
    }
    for t in &promoted {
        assert_eq!(t["state"], "succeeded", "{t:#}");
        assert_eq!(t["epochs"], 3);
        assert_eq!(t["rungs"][0]["promoted"], true);
        assert_eq!(t["rungs"][1]["epochs"], 3);
        // Resumed, not restarted: the second task started from epoch 1, and each epoch was
        // trained once.
        let job = call(
            &addr,
            "trainfleet.v1.JobService/Get",
            json!({ "id": t["job_id"] }),
        )?;
        let attempts = job["attempts"].as_array().cloned().unwrap_or_default();
        let train: Vec<&Value> = attempts.iter().filter(|a| a["task"] == "train").collect();
        assert_eq!(train.len(), 2, "{job:#}");
        assert!(
            train[0]["outcome"]
                .as_str()
                .unwrap_or("")
                .contains("paused after epoch 1"),
            "{job:#}"
        );
        assert_eq!(train[1]["resumedFromEpoch"], 1, "{job:#}");
        let epochs: Vec<u64> = job["epochs"]
            .as_array()
            .map(|e| e.iter().filter_map(|m| m["epoch"].as_u64()).collect())
            .unwrap_or_default();
        assert_eq!(epochs, vec![1, 2, 3], "{job:#}");
    }
    let best = sweep["best"].as_u64().expect("a best trial") as usize;
    assert_eq!(
        trials[best]["epochs"], 3,
        "the best is a fully trained trial"
    );

    // The offline page: every trial's curve, the parameters plot, the rung table, the gate.
    let id = sweep["id"].as_str().expect("id");
    let out = cli(d, &addr, &["sweep", "report", id, "--out", "report"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(d.join("report/index.html"))?;
    let figures: Value = serde_json::from_str(
        html.split("const FIGURES = ")
            .nth(1)
            .and_then(|rest| rest.split(";\n").next())
            .expect("the figures"),
    )?;
    let curves = figures["chart-curves"]["data"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(curves.len(), 6, "a curve per trial");
    let best_curve = curves
        .iter()
        .find(|c| c["name"] == format!("trial {best} (best)"))
        .expect("the best trial's curve");
    assert_eq!(best_curve["x"], json!([1, 2, 3]));
    let dims = &figures["chart-parallel"]["data"][0]["dimensions"];
    assert_eq!(figures["chart-parallel"]["data"][0]["type"], "parcoords");
    assert_eq!(
        dims.as_array().map(Vec::len),
        Some(3),
        "two parameters and the objective"
    );
    assert_eq!(
        html.matches("↑ promoted").count(),
        promoted.len(),
        "the rung table"
    );
    assert!(
        html.contains("promoted: it is the champion"),
        "the gate's decision"
    );
    assert_eq!(sweep["gate"]["trial"].as_u64(), Some(best as u64));
    assert!(
        sweep["gate"]["model_id"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    Ok(())
}
