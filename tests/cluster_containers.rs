//! trainfleet across hosts: every process in its own container on a private podman network (3
//! etcd members, 3 coordinator replicas, 2 workers, artifacts on an S3 API server), built from
//! the images `make images` makes. Jobs are submitted from the host with the reflection client
//! (JSON, as grpcurl would) to a **follower**. Then, one fault at a time (the nemesis in
//! `containers/mod.rs`), each job must complete with every epoch recorded once, train and eval
//! completed once, and the champion pointer in etcd naming an artifact that exists and verifies
//! (the checker in `containers/checker.rs`):
//!
//! a. kill -9 of the leader's container mid-training;
//! b. the leader cut off the network while it believes it leads;
//! c. the worker running a job cut off past its lease;
//! d. one etcd member stopped;
//! e. two workers added while jobs are queued.

mod containers;
mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use containers::checker::{self, call, check_champion, check_job, wait_done, wait_epochs};
use containers::{Cluster, LEASE_TIMEOUT, TTL, podman, podman_ok};
use serde_json::{Value, json};

const DATASET: &str = "synth-digits";

/// Submits through replica `via` (a follower forwards it); returns the job id.
fn submit(cluster: &Cluster, via: usize, yaml: &str) -> anyhow::Result<String> {
    let answer = call(
        cluster,
        via,
        "trainfleet.v1.JobService/Submit",
        json!({ "yaml": yaml }),
    )?;
    Ok(answer["job"]["id"].as_str().unwrap_or_default().to_owned())
}

/// The worker (by id) that holds the job's latest train attempt.
fn train_worker(job: &Value) -> String {
    checker::attempts(job, "train")
        .last()
        .and_then(|a| a["workerId"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn a_cluster_of_containers_survives_kills_partitions_and_a_lost_etcd_member() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), "a", 3, 2)?;
    let leader = cluster.wait_leader(None, Duration::from_secs(60))?;
    let follower = cluster.other_than(leader);

    // The workload's first job, through a follower: it works.
    let id = submit(
        &cluster,
        follower,
        &support::synth_job("through-a-follower", 2, 1),
    )?;
    check_job(&wait_done(&cluster, &id, Duration::from_secs(120))?, 2)?;
    check_champion(&cluster, DATASET)?;

    // a. kill -9 of the leader mid-training: a new leader within the TTL + 2 s.
    let id = submit(
        &cluster,
        follower,
        &support::synth_job("leader-killed", 4, 2),
    )?;
    wait_epochs(&cluster, &id, 1)?;
    let killed = Instant::now();
    cluster.kill(&cluster.coordinators[leader].clone())?;
    let second = cluster.wait_leader(Some(leader), TTL + Duration::from_secs(8))?;
    let took = killed.elapsed();
    ensure!(
        took <= TTL + Duration::from_secs(2),
        "a new leader within the TTL + 2 s: {took:?}"
    );
    eprintln!("a. leader {leader} killed; replica {second} leads after {took:?}");
    let job = wait_done(&cluster, &id, Duration::from_secs(180))?;
    check_job(&job, 4)?;
    check_champion(&cluster, DATASET)?;
    cluster.restart(&cluster.coordinators[leader].clone())?;

    // b. The leader cut off from etcd and the workers while it leads: it steps down, what it
    // still tries to write does not land, and healed, it follows.
    let leader = second;
    let old = cluster.coordinators[leader].clone();
    let follower = cluster.other_than(leader);
    let id = submit(
        &cluster,
        follower,
        &support::synth_job("leader-partitioned", 4, 3),
    )?;
    wait_epochs(&cluster, &id, 1)?;
    let old_address = cluster.endpoint(leader)?;
    cluster.partition(&old)?;
    // The health command, run from the host against the cut-off replica: it fails, saying why.
    let health = std::process::Command::new(support::binary("trainfleet-coordinator"))
        .args(["health", "--addr", &old_address, "--timeout", "1s"])
        .output()?;
    let said = String::from_utf8_lossy(&health.stderr);
    ensure!(
        !health.status.success() && said.contains("cannot reach"),
        "health of a partitioned replica: {said}"
    );
    // A cancel sent to the cut-off leader itself, on its own loopback: refused, whether its
    // memory still says it leads (the write cannot reach etcd) or it already stepped down (no
    // leader is reachable to forward to).
    let reflect = support::repo_root().join("tests/clients/reflect.py");
    let python = std::env::var("TRAINFLEET_TEST_PYTHON").unwrap_or_else(|_| {
        support::repo_root()
            .join(".venv/bin/python")
            .display()
            .to_string()
    });
    let late = cluster.inside(
        &old,
        &[
            &python,
            "-W",
            "ignore",
            reflect.to_str().unwrap_or_default(),
            "127.0.0.1:50051",
            "call",
            "trainfleet.v1.JobService/Cancel",
            &json!({ "id": id, "reason": "from the cut-off leader" }).to_string(),
        ],
    )?;
    ensure!(
        late.status.code() == Some(3),
        "the cut-off leader's cancel was refused: {}{}",
        String::from_utf8_lossy(&late.stdout),
        String::from_utf8_lossy(&late.stderr)
    );
    eprintln!(
        "b. the cut-off leader refused the cancel: {}",
        String::from_utf8_lossy(&late.stdout).trim()
    );
    let third = cluster.wait_leader(Some(leader), TTL + Duration::from_secs(10))?;
    // It stepped down: its leader health name is NOT_SERVING (asked inside its container).
    support::wait_for(
        TTL + Duration::from_secs(5),
        "the old leader to step down",
        || {
            podman(&[
                "exec",
                &old.id,
                "trainfleet-coordinator",
                "health",
                "--service",
                "trainfleet.v1.Leader",
            ])
            .ok()
            .filter(|o| !o.status.success())
        },
    )?;
    let job = wait_done(&cluster, &id, Duration::from_secs(180))?;
    check_job(&job, 4)?;
    check_champion(&cluster, DATASET)?;
    cluster.heal(&old)?;
    let new_leader = cluster.coordinators[third].name.clone();
    support::wait_for(Duration::from_secs(20), "the old leader to follow", || {
        cluster
            .ask(leader)
            .filter(|(me, at)| !me && at.starts_with(&new_leader))
    })?;
    ensure!(cluster.leaders() == vec![third], "one leader");

    // c. The worker running a job cut off past its lease: another resumes it from the
    // checkpoint; healed, the old worker's late reports are refused and nothing is doubled.
    let leader = third;
    let follower = cluster.other_than(leader);
    // Both workers serve the new leader before one is cut off, so one is left to resume.
    checker::wait_workers(&cluster, 2)?;
    let id = submit(
        &cluster,
        follower,
        &support::synth_job("worker-partitioned", 4, 4),
    )?;
    let job = wait_epochs(&cluster, &id, 1)?;
    let first_worker = train_worker(&job);
    let cut = cluster
        .workers
        .iter()
        .find(|w| w.name.ends_with(&format!("-{first_worker}")))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("worker {first_worker} not found: {job}"))?;
    cluster.partition(&cut)?;
    let moved = support::wait_for(
        LEASE_TIMEOUT + Duration::from_secs(20),
        "the task to move to the other worker",
        || {
            let job = checker::job(&cluster, &id).ok()?;
            let attempts = checker::attempts(&job, "train");
            (attempts.len() >= 2).then_some(job)
        },
    )
    .with_context(|| cluster.worker_logs())?;
    let second_attempt = checker::attempts(&moved, "train")[1].clone();
    ensure!(
        second_attempt["workerId"] != first_worker.as_str(),
        "resumed elsewhere: {moved}"
    );
    std::thread::sleep(Duration::from_secs(2));
    cluster.heal(&cut)?;
    let job = wait_done(&cluster, &id, Duration::from_secs(180))?;
    check_job(&job, 4)?;
    let resumed = checker::attempts(&job, "train")[1]["resumedFromEpoch"]
        .as_u64()
        .unwrap_or(0);
    ensure!(
        resumed >= 1,
        "resumed from the checkpoint, not from scratch: {job}"
    );
    eprintln!(
        "c. {first_worker} cut off; {} resumed from epoch {resumed}",
        second_attempt["workerId"]
    );
    ensure!(
        checker::attempts(&job, "train")[0]["outcome"] != "succeeded",
        "the cut-off worker's late completion was refused: {job}"
    );
    check_champion(&cluster, DATASET)?;

    // d. One etcd member stopped: jobs still complete.
    cluster.kill(&cluster.etcd[0].clone())?;
    let id = submit(
        &cluster,
        follower,
        &support::synth_job("etcd-member-down", 2, 5),
    )?;
    check_job(&wait_done(&cluster, &id, Duration::from_secs(180))?, 2)?;
    check_champion(&cluster, DATASET)?;

    // e. Two workers added while jobs are queued take them at their first poll.
    for worker in cluster.workers.clone() {
        podman_ok(&["stop", "--time", "20", &worker.id])?;
    }
    let queued: Vec<String> = (0..2)
        .map(|i| {
            call(
                &cluster,
                follower,
                "trainfleet.v1.JobService/Submit",
                json!({"sleep": {"duration": "1s", "name": format!("queued-{i}")}}),
            )
            .map(|a| a["job"]["id"].as_str().unwrap_or_default().to_owned())
        })
        .collect::<anyhow::Result<_>>()?;
    let added = Instant::now();
    cluster.add_worker("worker3")?;
    cluster.add_worker("worker4")?;
    for id in &queued {
        let job = wait_done(&cluster, id, Duration::from_secs(60))?;
        ensure!(job["state"] == "JOB_STATE_SUCCEEDED", "{job}");
        let worker = checker::attempts(&job, "sleep")
            .first()
            .and_then(|a| a["workerId"].as_str().map(str::to_owned))
            .unwrap_or_default();
        ensure!(
            worker == "worker3" || worker == "worker4",
            "taken by a new worker: {job}"
        );
    }
    eprintln!(
        "e. queued work done by the added workers {:?} after they were started",
        added.elapsed()
    );
    // Well within one long-poll (20 s): the new workers' first poll got the work.
    ensure!(
        added.elapsed() < Duration::from_secs(20),
        "queued work taken by the added workers in {:?}",
        added.elapsed()
    );
    Ok(())
}
