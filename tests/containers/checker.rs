//! Reads what the cluster ended with and says what was lost or doubled: a job's state, its
//! epochs, how many times its train and eval tasks completed, and whether the champion pointer
//! in etcd names a model artifact that exists in the object store with the recorded sha256.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use trainfleet_core::kv::KvStore;
use trainfleet_core::kv::etcd::{EtcdOptions, EtcdStore};

use super::{BUCKET, Cluster};
use crate::support::{reflect_call, wait_for};

/// A call through replica `via` with the reflection client (JSON, as grpcurl would).
pub fn call(cluster: &Cluster, via: usize, method: &str, body: Value) -> anyhow::Result<Value> {
    let addr = cluster.endpoint(via)?;
    reflect_call(&addr, method, &body.to_string())?
        .map_err(|(code, message)| anyhow::anyhow!("{method} via {addr}: {code}: {message}"))
}

/// The job as any answering replica reports it.
pub fn job(cluster: &Cluster, id: &str) -> anyhow::Result<Value> {
    let mut last = None;
    for via in 0..cluster.coordinators.len() {
        match call(
            cluster,
            via,
            "trainfleet.v1.JobService/Get",
            json!({ "id": id }),
        ) {
            Ok(job) => return Ok(job),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no replica")))
}

/// Waits for the job to end; returns it.
pub fn wait_done(cluster: &Cluster, id: &str, timeout: Duration) -> anyhow::Result<Value> {
    wait_for(timeout, &format!("job {id} to end"), || {
        let job = job(cluster, id).ok()?;
        [
            "JOB_STATE_SUCCEEDED",
            "JOB_STATE_FAILED",
            "JOB_STATE_CANCELLED",
        ]
        .contains(&job["state"].as_str().unwrap_or(""))
        .then_some(job)
    })
    .with_context(|| cluster.coordinator_logs())
}

/// Waits until at least `n` workers are registered and alive with the leader (asked through
/// any answering replica); a fault's workload starts from a whole cluster.
pub fn wait_workers(cluster: &Cluster, n: usize) -> anyhow::Result<()> {
    wait_for(
        Duration::from_secs(60),
        &format!("{n} alive workers"),
        || {
            (0..cluster.coordinators.len()).find_map(|via| {
                let answer = call(
                    cluster,
                    via,
                    "trainfleet.v1.ClusterService/ListWorkers",
                    json!({ "state": "WORKER_STATE_ALIVE" }),
                )
                .ok()?;
                (answer["workers"].as_array().map_or(0, Vec::len) >= n).then_some(())
            })
        },
    )
    .with_context(|| cluster.worker_logs())
}

/// Waits until the job has recorded at least `epochs` epochs.
pub fn wait_epochs(cluster: &Cluster, id: &str, epochs: usize) -> anyhow::Result<Value> {
    wait_for(Duration::from_secs(120), "the job's epochs", || {
        let job = job(cluster, id).ok()?;
        (job["epochs"].as_array().map_or(0, Vec::len) >= epochs).then_some(job)
    })
}

/// Completed attempts of the job's `task` ("train", "eval").
pub fn completed(job: &Value, task: &str) -> usize {
    attempts(job, task)
        .iter()
        .filter(|a| a["outcome"] == "succeeded")
        .count()
}

/// The job's attempts of `task`.
pub fn attempts(job: &Value, task: &str) -> Vec<Value> {
    job["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["task"] == task)
        .cloned()
        .collect()
}

/// The job succeeded with epochs 1..=`epochs` each recorded once, its training and its eval each
/// completed once.
pub fn check_job(job: &Value, epochs: u64) -> anyhow::Result<()> {
    ensure!(
        job["state"] == "JOB_STATE_SUCCEEDED",
        "not succeeded: {job}"
    );
    let recorded: Vec<u64> = job["epochs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["epoch"].as_u64().unwrap_or(0))
        .collect();
    ensure!(
        recorded == (1..=epochs).collect::<Vec<_>>(),
        "every epoch once: {recorded:?}"
    );
    ensure!(
        completed(job, "train") == 1,
        "training completed once: {job}"
    );
    ensure!(completed(job, "eval") == 1, "eval completed once: {job}");
    Ok(())
}

/// The champion pointer of `dataset` in etcd names a model whose weights are in the object
/// store and hash to what the registry recorded. Returns the model id.
pub fn check_champion(cluster: &Cluster, dataset: &str) -> anyhow::Result<String> {
    let mut endpoints = Vec::new();
    for member in &cluster.etcd {
        if let Ok(ip) = cluster.ip(member) {
            endpoints.push(format!("http://{ip}:2379"));
        }
    }
    let pointers = cluster.runtime.block_on(async {
        let store = EtcdStore::connect(EtcdOptions {
            endpoints,
            prefix: "/e2e".into(),
            ..EtcdOptions::default()
        })
        .await?;
        store.prefix(b"/trainfleet/champions/").await
    })?;
    ensure!(
        pointers.len() == 1,
        "one champion pointer: {}",
        pointers.len()
    );
    let pointer: Value = serde_json::from_slice(&pointers[0].value)?;
    let model_id = pointer["model_id"].as_str().unwrap_or_default().to_owned();
    let model = call(
        cluster,
        cluster.other_than(usize::MAX),
        "trainfleet.v1.ModelService/Get",
        json!({ "id": model_id }),
    )?;
    ensure!(model["dataset"] == dataset, "{model}");
    let uri = model["artifactUri"].as_str().unwrap_or_default();
    let key = uri
        .strip_prefix(&format!("s3://{BUCKET}/"))
        .with_context(|| format!("artifact {uri} is not in s3://{BUCKET}/"))?;
    // A signed S3 GET (the server refuses anonymous reads), as any S3 client would make it.
    let endpoint = format!("http://{}:5000", cluster.ip(&cluster.s3)?);
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()?;
    let bytes = cluster
        .runtime
        .block_on(async {
            use object_store::ObjectStoreExt;
            s3.get(&object_store::path::Path::from(key))
                .await?
                .bytes()
                .await
        })
        .with_context(|| format!("GET {uri} from {endpoint}"))?;
    let sha = format!("{:x}", Sha256::digest(&bytes));
    if sha != model["artifactSha256"].as_str().unwrap_or_default() {
        bail!(
            "{uri} hashes to {sha}, the registry says {}",
            model["artifactSha256"]
        );
    }
    Ok(model_id)
}
