//! Coordinator high availability end to end: real etcd members (Debian's `etcd-server`), three
//! coordinator replicas and workers, all started by the test on loopback ports and stopped by
//! PID. Leadership is read from each replica (`ClusterService.GetLeader`); jobs, the champion
//! and what the replicas wrote are read through the CLI and etcd itself.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::ha::{Cluster, TTL};
use support::*;
use trainfleet_core::kv::KvStore;

/// The tests of this file run one at a time: each starts etcd members, replicas and workers,
/// and on a 2-core machine two of them at once would measure each other's load.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn submit(cluster: &Cluster, name: &str, yaml: &str) -> anyhow::Result<String> {
    let path = cluster.dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml)?;
    let job = cluster.json(&["submit", path.to_str().unwrap()])?;
    Ok(job["id"].as_str().unwrap_or_default().to_owned())
}

fn wait_job(cluster: &Cluster, id: &str, timeout: Duration) -> anyhow::Result<Value> {
    wait_for(timeout, &format!("job {id} to end"), || {
        let job = cluster.json(&["status", id]).ok()?;
        ["succeeded", "failed", "cancelled"]
            .contains(&job["state"].as_str().unwrap_or(""))
            .then_some(job)
    })
}

#[test]
fn a_killed_leader_is_replaced_within_the_ttl_and_its_job_completes_once() -> anyhow::Result<()> {
    let _serial = serial();
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), 3, 3)?;
    let first = cluster.wait_leader(Duration::from_secs(20))?;
    let _a = cluster.worker("worker-a")?;
    let _b = cluster.worker("worker-b")?;

    let id = submit(&cluster, "failover", &support::synth_job("failover", 4, 3))?;
    wait_for(Duration::from_secs(120), "the job's first epoch", || {
        let job = cluster.json(&["status", &id]).ok()?;
        job["epochs"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
            .then_some(())
    })?;

    // kill -9 the leader mid-training.
    let killed = Instant::now();
    cluster.kill(first);
    let second = cluster.wait_leader_other_than(first, TTL + Duration::from_secs(8))?;
    let took = killed.elapsed();
    assert_ne!(second, first);
    assert!(
        took <= TTL + Duration::from_secs(2),
        "a new leader serves within the lease TTL + 2 s: {took:?}"
    );

    let job = wait_job(&cluster, &id, Duration::from_secs(180))?;
    assert_eq!(job["state"], "succeeded", "{job}");
    let attempts = job["attempts"].as_array().cloned().unwrap_or_default();
    let completed = |task: &str| {
        attempts
            .iter()
            .filter(|a| a["task"].as_str().is_some_and(|t| t.ends_with(task)))
            .filter(|a| a["outcome"] == "succeeded")
            .count()
    };
    assert_eq!(completed("train"), 1, "the training completed once: {job}");
    let train_attempts = attempts
        .iter()
        .filter(|a| a["task"].as_str().is_some_and(|t| t.ends_with("train")))
        .count();
    assert_eq!(
        train_attempts, 1,
        "the worker kept training through the failover and delivered to the new leader: {job}"
    );
    assert_eq!(completed("eval"), 1, "the eval completed once: {job}");
    let epochs: Vec<u64> = job["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["epoch"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(epochs, [1, 2, 3, 4], "every epoch once: {job}");
    let model = job["result"]["model_id"].as_str().unwrap().to_owned();
    let models = cluster.json(&["models"])?;
    assert_eq!(models[0]["id"], model.as_str());
    assert_eq!(
        models[0]["champion"], true,
        "the pointer names it: {models}"
    );
    // The pointer in etcd is the new leader's write.
    let store = cluster.etcd_store();
    let champions = cluster
        .runtime
        .block_on(store.prefix(b"/trainfleet/champions/"))?;
    assert_eq!(champions.len(), 1);
    let pointer: Value = serde_json::from_slice(&champions[0].value)?;
    assert_eq!(pointer["model_id"], model.as_str());
    Ok(())
}

#[test]
fn a_frozen_leader_is_fenced_off_and_rejoins_as_a_follower() -> anyhow::Result<()> {
    let _serial = serial();
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::start(dir.path(), 1, 2)?;
    let old = cluster.wait_leader(Duration::from_secs(20))?;
    let new = 1 - old;
    let worker = cluster.worker("worker")?;
    // Two models of one dataset: the first becomes the champion; the second cannot pass its
    // gate (min_delta 0.99) and stays a plain model.
    let first = submit(&cluster, "m1", &support::synth_job("m1", 1, 1))?;
    let m1 = wait_job(&cluster, &first, Duration::from_secs(120))?["result"]["model_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let second = submit(
        &cluster,
        "m2",
        &format!(
            "{}gate: {{min_delta: 0.99}}\n",
            support::synth_job("m2", 1, 2)
        ),
    )?;
    let m2 = wait_job(&cluster, &second, Duration::from_secs(120))?;
    assert_eq!(m2["result"]["promoted"], false, "{m2}");
    let m2 = m2["result"]["model_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    drop(worker);
    // A job no worker can take (it needs a GPU): it stays queued, in the old leader's memory.
    let gpu_job = support::synth_job("waits", 1, 1).replace(
        "model: {arch: simple_cnn}",
        "model: {arch: simple_cnn}\nresources: {gpu: true}",
    );
    let id = submit(&cluster, "waits", &gpu_job)?;

    // Freeze the leader past its lease: the other replica takes over, promotes m2 by hand and
    // cancels the job.
    cluster.proc(old).signal(libc::SIGSTOP);
    let frozen = Instant::now();
    wait_for(
        TTL + Duration::from_secs(8),
        "the other replica to lead",
        || cluster.ask(new).is_some_and(|(me, _)| me).then_some(()),
    )?;
    let out = cluster.cli(&["promote", &m2, "--reason", "new leader", "--expect", &m1])?;
    assert!(out.status.success(), "{out:?}");
    let out = cluster.cli(&["cancel", &id, "--reason", "by the new leader"])?;
    assert!(out.status.success(), "{out:?}");
    assert!(frozen.elapsed() > TTL);

    // Thaw the old leader and at once ask it, and only it, to write what its stale memory
    // allows: m1 promoted where it believes m1 is the champion, which would put the pointer
    // back. It is refused: by the fence in etcd if the old leader still acts on its memory
    // (UNAVAILABLE), or, once it has stepped down and forwards the call, by the new leader's
    // compare-and-swap, since the champion is m2 now (ABORTED).
    cluster.proc(old).signal(libc::SIGCONT);
    let late = reflect_call(
        &cluster.addrs[old],
        "trainfleet.v1.ModelService/Promote",
        &serde_json::json!({"id": m1, "reason": "late", "expectedChampion": m1}).to_string(),
    )?;
    let (code, message) = late.expect_err("the old leader's late write is refused");
    assert!(
        ["UNAVAILABLE", "ABORTED"].contains(&code.as_str()),
        "{code}: {message}"
    );

    // It rejoins as a follower that names the new leader.
    wait_for(Duration::from_secs(10), "the old leader to follow", || {
        cluster
            .ask(old)
            .filter(|(me, leader)| !me && *leader == cluster.addrs[new])
    })?;
    assert_eq!(cluster.leaders(), vec![new]);

    // etcd holds the new leader's writes: the pointer names m2 and the job is cancelled.
    let store = cluster.etcd_store();
    let pointer = cluster
        .runtime
        .block_on(store.prefix(b"/trainfleet/champions/"))?;
    assert_eq!(pointer.len(), 1);
    let pointer: Value = serde_json::from_slice(&pointer[0].value)?;
    assert_eq!(pointer["model_id"], m2.as_str(), "{pointer}");
    let key = format!("/trainfleet/jobs/{id}");
    let record = cluster
        .runtime
        .block_on(store.get(key.as_bytes()))?
        .expect("the job record");
    let job: Value = serde_json::from_slice(&record.value)?;
    assert_eq!(job["state"], "cancelled", "{job}");
    let champion = cluster.json(&["models"])?;
    assert!(
        champion
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == m2.as_str() && m["champion"] == true),
        "{champion}"
    );
    assert!(
        cluster.proc(old).log_text().contains("stepping down"),
        "the old leader noticed: {}",
        cluster.proc(old).log_text()
    );
    Ok(())
}

#[test]
fn sigterm_hands_over_well_under_the_ttl() -> anyhow::Result<()> {
    let _serial = serial();
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), 1, 2)?;
    let first = cluster.wait_leader(Duration::from_secs(20))?;
    let _worker = cluster.worker("worker")?;
    let out = cluster.cli(&["submit", "--sleep", "100ms", "--watch"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    const SERVING: i32 = 1;
    const NOT_SERVING: i32 = 2;
    // Readiness: every replica serves the public names (a follower forwards); the leader names
    // are SERVING on the leader alone.
    for service in ["", "trainfleet.v1.JobService"] {
        assert_eq!(cluster.health(first, service), Some(SERVING), "{service}");
        assert_eq!(
            cluster.health(1 - first, service),
            Some(SERVING),
            "{service}"
        );
    }
    for service in ["trainfleet.v1.Leader", "trainfleet.v1.WorkerService"] {
        assert_eq!(cluster.health(first, service), Some(SERVING), "{service}");
        assert_eq!(
            cluster.health(1 - first, service),
            Some(NOT_SERVING),
            "{service}"
        );
    }
    // The worker protocol is not forwarded: a follower refuses it, naming the leader.
    let follower = reflect_call(
        &cluster.addrs[1 - first],
        "trainfleet.v1.WorkerService/PollTask",
        r#"{"workerId": "w", "sessionId": "s"}"#,
    )?
    .expect_err("a follower does not lease tasks");
    assert_eq!(follower.0, "UNAVAILABLE", "{follower:?}");
    assert!(follower.1.contains(&cluster.addrs[first]), "{follower:?}");

    // SIGTERM: the leader resigns; the other replica leads well before the TTL would expire.
    let sent = Instant::now();
    cluster.proc(first).signal(libc::SIGTERM);
    let second = cluster.wait_leader_other_than(first, Duration::from_secs(10))?;
    let took = sent.elapsed();
    assert_ne!(second, first);
    assert!(
        took < TTL,
        "hand-over in {took:?}, under the {TTL:?} TTL\n--- old leader\n{}\n--- new leader\n{}",
        cluster.proc(first).log_text(),
        cluster.proc(second).log_text()
    );
    let code = cluster.replicas[first]
        .as_mut()
        .unwrap()
        .proc
        .wait_exit(Duration::from_secs(10))?;
    assert_eq!(code, Some(0));
    cluster.replicas[first] = None;
    // The worker follows; work goes on.
    let out = cluster.cli(&["submit", "--sleep", "100ms", "--watch"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn a_dead_etcd_member_changes_nothing() -> anyhow::Result<()> {
    let _serial = serial();
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), 3, 2)?;
    cluster.wait_leader(Duration::from_secs(20))?;
    let _worker = cluster.worker("worker")?;
    cluster.etcd.members[0].kill();
    for round in 0..3 {
        let out = cluster.cli(&["submit", "--sleep", "100ms", "--watch"])?;
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let jobs = cluster.json(&["jobs"])?;
    assert_eq!(jobs.as_array().map(Vec::len), Some(3), "{jobs}");
    Ok(())
}

#[test]
fn any_replica_answers_by_forwarding_to_the_leader() -> anyhow::Result<()> {
    let _serial = serial();
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), 1, 3)?;
    let leader = cluster.wait_leader(Duration::from_secs(20))?;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let _worker = cluster.worker("worker")?;
    // Every replica is ready, so probes, Services and rolling updates see all three.
    for i in 0..3 {
        let out = health_command(&cluster.addrs[i], "")?;
        assert!(out.status.success(), "replica {i}: {}", stderr(&out));
    }
    let out = health_command(&cluster.addrs[followers[0]], "trainfleet.v1.Leader")?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("NOT_SERVING"), "{}", stderr(&out));

    // Submit through a follower, as grpcurl would: the leader queues it and says so.
    let (submitted, metadata) = reflect_call_with_metadata(
        &cluster.addrs[followers[0]],
        "trainfleet.v1.JobService/Submit",
        r#"{"sleep": {"duration": "0.5s", "name": "via-follower"}}"#,
    )?;
    let submitted = submitted.map_err(|e| anyhow::anyhow!("Submit via a follower: {e:?}"))?;
    assert_eq!(
        metadata["trainfleet-forwarded-to"], cluster.addrs[leader],
        "{metadata}"
    );
    let id = submitted["job"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // Watch (a server stream) through the other follower until the job ends.
    let events = reflect_call(
        &cluster.addrs[followers[1]],
        "trainfleet.v1.JobService/Watch",
        &format!(r#"{{"id": "{id}"}}"#),
    )?
    .map_err(|e| anyhow::anyhow!("Watch via a follower: {e:?}"))?;
    let last = events.as_array().and_then(|e| e.last()).cloned();
    assert_eq!(
        last.as_ref().map(|e| e["finished"]["state"].clone()),
        Some(Value::from("JOB_STATE_SUCCEEDED")),
        "{events}"
    );
    // GetLeader is each replica's own answer.
    let own = reflect_call(
        &cluster.addrs[followers[0]],
        "trainfleet.v1.ClusterService/GetLeader",
        "{}",
    )?
    .map_err(|e| anyhow::anyhow!("GetLeader: {e:?}"))?;
    assert_eq!(own["address"], cluster.addrs[leader], "{own}");
    assert_ne!(own["isSelf"], true, "{own}");

    // The leader dies: a call to a follower waits for the next leader instead of failing.
    cluster.kill(leader);
    let (listed, metadata) = reflect_call_with_metadata(
        &cluster.addrs[followers[0]],
        "trainfleet.v1.JobService/List",
        "{}",
    )?;
    let listed = listed.map_err(|e| anyhow::anyhow!("List during a failover: {e:?}"))?;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(1), "{listed}");
    let new_leader = cluster.wait_leader(Duration::from_secs(10))?;
    let served_by = metadata["trainfleet-forwarded-to"].clone();
    assert!(
        new_leader == followers[0] || served_by == cluster.addrs[new_leader],
        "served by {served_by}, leader {new_leader}"
    );
    // A replica that is gone: the health command says why, and fails.
    let out = health_command(&cluster.addrs[leader], "")?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
    Ok(())
}

fn health_command(addr: &str, service: &str) -> anyhow::Result<std::process::Output> {
    Ok(std::process::Command::new(binary("trainfleet-coordinator"))
        .args([
            "health",
            "--addr",
            addr,
            "--service",
            service,
            "--timeout",
            "1s",
        ])
        .output()?)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
