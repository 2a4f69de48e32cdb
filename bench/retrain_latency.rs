//! Retrain latency: from a scan that detects growth to the retrain's task in a worker's hands.
//!
//! Starts the release `trainfleet-coordinator` and `trainfleet-worker` binaries on loopback,
//! registers an image folder with a 10 % growth policy, and for each round grows the folder by
//! 20 % and calls `DatasetService.Scan`. The scan runs on the worker; when its result reaches
//! the coordinator, the version is recorded, the policy fires, and the retrain's train task is
//! queued and handed to the worker's parked poll. Both ends are read from the coordinator's own
//! job records, on its clock: the scan job's `finished_at` (the moment the growth was known) and
//! the retrain job's `started_at` (its first lease). The scan's own duration is reported beside.
//!
//! The files are random bytes named `.png`: scans hash them like any image, and the retrain
//! fails at decoding right after its lease, which frees the worker for the next round (what is
//! measured ends at the lease). Prints one JSON object; `bench/retrain_latency.sh` runs it.

#[path = "common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use common::{Stopped, wait_addr};
use tonic::transport::{Channel, Endpoint};
use trainfleet_proto::v1;
use trainfleet_proto::v1::dataset_service_client::DatasetServiceClient;
use trainfleet_proto::v1::job_service_client::JobServiceClient;

#[derive(Debug, Parser)]
struct Args {
    /// The coordinator binary.
    #[arg(long, default_value = "target/release/trainfleet-coordinator")]
    coordinator: PathBuf,
    /// The worker binary.
    #[arg(long, default_value = "target/release/trainfleet-worker")]
    worker: PathBuf,
    /// Rounds (each grows the folder by 20 % and scans).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Files at the start (two classes).
    #[arg(long, default_value_t = 5000)]
    files: usize,
    /// Bytes per file.
    #[arg(long, default_value_t = 4096)]
    file_size: usize,
}

fn write_files(root: &Path, range: std::ops::Range<usize>, size: usize) -> anyhow::Result<()> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for i in range {
        let class = if i % 2 == 0 { "a" } else { "b" };
        std::fs::create_dir_all(root.join(class))?;
        let mut bytes = vec![0u8; size];
        for chunk in bytes.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let word = (state ^ i as u64).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        std::fs::write(root.join(class).join(format!("{i:07}.png")), bytes)?;
    }
    Ok(())
}

fn nanos(t: &Option<prost_types::Timestamp>) -> i128 {
    t.as_ref()
        .map_or(0, |t| t.seconds as i128 * 1_000_000_000 + t.nanos as i128)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

async fn jobs(client: &mut JobServiceClient<Channel>) -> anyhow::Result<Vec<v1::Job>> {
    Ok(client
        .list(v1::ListJobsRequest {
            page_size: 20,
            ..Default::default()
        })
        .await?
        .into_inner()
        .jobs)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    write_files(&data, 0..args.files, args.file_size)?;

    let addr_file = dir.path().join("addr");
    let log = |name: &str| -> anyhow::Result<Stdio> {
        Ok(std::fs::File::create(dir.path().join(name))?.into())
    };
    let _coordinator = Stopped(
        Command::new(&args.coordinator)
            .args(["--listen", "127.0.0.1:0", "--addr-file"])
            .arg(&addr_file)
            .arg("--data-dir")
            .arg(dir.path().join("state"))
            .arg("--artifacts")
            .arg(dir.path().join("artifacts"))
            .stderr(log("coordinator.log")?)
            .spawn()
            .with_context(|| format!("cannot start {}", args.coordinator.display()))?,
    );
    let addr = wait_addr(&addr_file)?;
    let config = dir.path().join("worker.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {}\nartifact_dir: {}\nslots: 1\ndata_roots: [{:?}]\n",
            dir.path().join("cache").display(),
            dir.path().join("work").display(),
            data.canonicalize()?.display().to_string()
        ),
    )?;
    let _worker = Stopped(
        Command::new(&args.worker)
            .arg("--config")
            .arg(&config)
            .args(["--coordinator", &addr, "--worker-id", "bench"])
            .stderr(log("worker.log")?)
            .spawn()
            .with_context(|| format!("cannot start {}", args.worker.display()))?,
    );
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut datasets = DatasetServiceClient::new(channel.clone());
    let mut job_client = JobServiceClient::new(channel);
    datasets
        .register(v1::RegisterDatasetRequest {
            name: "bench".into(),
            source: Some(v1::DatasetSource {
                location: Some(v1::dataset_source::Location::Directory(
                    data.display().to_string(),
                )),
                format: "imagefolder".into(),
            }),
            policy: Some(v1::RetrainPolicy {
                on_growth_pct: 10.0,
                job_yaml: "model: {arch: simple_cnn}\ntraining: {device: cpu}\n".into(),
                ..Default::default()
            }),
        })
        .await?;

    let (mut scan_ms, mut lease_ms) = (Vec::new(), Vec::new());
    let mut rounds = Vec::new();
    let mut files = args.files;
    for round in 0..=args.rounds {
        if round > 0 {
            let more = files / 5;
            write_files(&data, files..files + more, args.file_size)?;
            files += more;
        }
        let t = Instant::now();
        let scan = datasets
            .scan(v1::ScanDatasetRequest {
                name: "bench".into(),
                full: false,
            })
            .await?
            .into_inner();
        let scan_elapsed = t.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(scan.changed, "round {round}: the scan saw no change");
        // The retrain the growth fired, once leased (or already over: it fails at decoding).
        let deadline = Instant::now() + Duration::from_secs(30);
        let (scanned, retrain) = loop {
            let all = jobs(&mut job_client).await?;
            let scanned = all.iter().find(|j| j.name == "scan bench").cloned();
            let retrain = all
                .iter()
                .find(|j| j.retrain_dataset == "bench" && j.started_at.is_some())
                .cloned();
            if let (Some(s), Some(r)) = (scanned, retrain)
                && nanos(&r.created_at) >= nanos(&s.created_at)
                && r.state != v1::JobState::Training as i32
            {
                break (s, r);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "round {round}: no retrain leased"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let latency = (nanos(&retrain.started_at) - nanos(&scanned.finished_at)) as f64 / 1e6;
        // Round 0 is the first version (no champion): it warms the worker up and is not counted.
        if round > 0 {
            scan_ms.push(scan_elapsed);
            lease_ms.push(latency);
        }
        rounds.push(serde_json::json!({
            "round": round, "files": files, "scan_ms": scan_elapsed,
            "detect_to_lease_ms": latency, "counted": round > 0,
        }));
    }
    let max = lease_ms.iter().copied().fold(0.0, f64::max);
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "rounds": rounds,
            "detect_to_lease_ms": {"median": median(&mut lease_ms), "max": max, "bar": 1000.0},
            "scan_ms_median": median(&mut scan_ms),
        }))?
    );
    Ok(())
}
