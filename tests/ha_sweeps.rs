//! A sweep across a coordinator failover: real etcd, two replicas and two workers; the leader is
//! killed with SIGKILL in the middle of an ASHA sweep, with trials paused at their rung, and the
//! new leader carries the same sweep to its end: every trial once, rung records intact, paused
//! trials promoted and resumed from their checkpoints, the best through the gate.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::ha::{Cluster, TTL};
use support::*;

#[test]
fn an_asha_sweep_survives_a_killed_leader_with_no_trial_lost_or_doubled() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mut cluster = Cluster::start(d, 1, 2)?;
    let first = cluster.wait_leader(Duration::from_secs(20))?;
    let _a = cluster.worker("worker-a")?;
    let _b = cluster.worker("worker-b")?;
    std::fs::write(
        d.join("base.yaml"),
        "name: digits\ndataset:\n  builtin: synth-digits\n  synth: {train_samples: 600, test_samples: 300, seed: 7}\n  validation_pct: 20\nmodel: {arch: simple_cnn}\ntraining: {epochs: 3, batch_size: 32, optimizer: adam, threads: 1}\n",
    )?;
    std::fs::write(
        d.join("asha.yaml"),
        "name: ha-asha\njob_file: base.yaml\nspace:\n  training.learning_rate: {log: [0.0002, 0.02]}\nstrategy: asha\nasha: {min_epochs: 1, max_epochs: 3, eta: 3}\nmax_trials: 6\nparallelism: 2\nseed: 9\n",
    )?;
    let started = cluster.json(&["sweep", "start", "asha.yaml"])?;
    let id = started["id"].as_str().expect("id").to_owned();

    // Mid-sweep: some trial paused at the first rung, the sweep not over.
    wait_for(
        Duration::from_secs(120),
        "a trial paused at its rung",
        || {
            let sweep = cluster.json(&["sweep", "status", &id]).ok()?;
            let paused = sweep["trials"]
                .as_array()?
                .iter()
                .any(|t| t["state"] == "paused");
            (paused && sweep["state"] == "running").then_some(())
        },
    )?;
    cluster.kill(first);
    cluster.wait_leader_other_than(first, TTL + Duration::from_secs(10))?;

    let sweep = wait_for(Duration::from_secs(300), "the sweep to end", || {
        let sweep = cluster.json(&["sweep", "status", &id]).ok()?;
        ["succeeded", "failed", "cancelled"]
            .contains(&sweep["state"].as_str().unwrap_or(""))
            .then_some(sweep)
    })?;
    assert_eq!(sweep["state"], "succeeded", "{sweep:#}");
    let trials = sweep["trials"].as_array().cloned().unwrap_or_default();
    assert_eq!(trials.len(), 6, "exactly max_trials trials: {sweep:#}");
    let numbers: BTreeSet<u64> = trials.iter().filter_map(|t| t["number"].as_u64()).collect();
    assert_eq!(numbers, (0..6).collect(), "each number once");
    let job_ids: BTreeSet<&str> = trials.iter().filter_map(|t| t["job_id"].as_str()).collect();
    assert_eq!(job_ids.len(), 6, "one job per trial");
    let mut resumed = 0;
    for t in &trials {
        let rungs = t["rungs"].as_array().cloned().unwrap_or_default();
        assert!(
            !rungs.is_empty() && rungs[0]["value"].is_f64(),
            "rung 1 recorded: {t:#}"
        );
        let job = cluster.json(&["status", t["job_id"].as_str().unwrap()])?;
        let epochs: Vec<u64> = job["epochs"]
            .as_array()
            .map(|e| e.iter().filter_map(|m| m["epoch"].as_u64()).collect())
            .unwrap_or_default();
        let done = t["epochs"].as_u64().unwrap_or(0);
        assert_eq!(
            epochs,
            (1..=done).collect::<Vec<_>>(),
            "every epoch once: {job:#}"
        );
        match t["state"].as_str() {
            Some("succeeded") => {
                assert_eq!(done, 3, "{t:#}");
                assert_eq!(rungs[0]["promoted"], true, "{t:#}");
                assert_eq!(rungs.len(), 2, "{t:#}");
                resumed += 1;
            }
            Some("stopped") => assert_eq!(done, 1, "{t:#}"),
            other => panic!("trial ended {other:?}: {t:#}"),
        }
    }
    assert!(
        resumed >= 1,
        "a paused trial was promoted and resumed: {sweep:#}"
    );
    // Nothing ran twice: the trials' jobs and the gate's are all the jobs there are.
    let jobs: Value = cluster.json(&["jobs"])?;
    assert_eq!(jobs.as_array().map(Vec::len), Some(7), "{jobs:#}");
    let gate = &sweep["gate"];
    assert!(
        gate["model_id"].as_str().is_some_and(|m| !m.is_empty()),
        "{sweep:#}"
    );
    Ok(())
}
