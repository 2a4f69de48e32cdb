//! Dispatch benchmark: how fast does the coordinator hand queued tasks to workers?
//!
//! Starts the release `trainfleet-coordinator` binary on loopback (its real embedded store,
//! durable writes and all), connects N worker loops (each its own HTTP/2 connection, speaking
//! the real WorkerService: Register, PollTask, CompleteTask, Heartbeat) and submits sleep(0) jobs
//! through JobService. Three measurements:
//!
//! 1. latency: jobs submitted one at a time to idle workers; for each, the time from just before
//!    Submit is sent to the moment a worker's PollTask returns it (so it includes the Submit's own
//!    durable write: an upper bound on queued → worker has it);
//! 2. throughput: `--submitters` concurrent submitters push `--jobs` jobs as fast as they can;
//!    tasks/s is jobs received by workers per second of wall time (each is also completed with
//!    CompleteTask), with the dispatch latency at saturation;
//! 3. paced: the same submitters held to `--rate` tasks/s for `--paced-seconds`: the rate is
//!    sustained if the phase ends on time, and its latency is the one a cluster at that rate sees;
//! 4. memory: the coordinator's RSS (from /proc) idle, with the N workers, after `--registered`
//!    more workers register (before any job), and after all the jobs (it keeps their records).
//!
//! Prints one JSON object. `bench/dispatch.sh` builds and runs it.

#[path = "common.rs"]
mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use common::{Stopped, channel, register, wait_addr};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use trainfleet_proto::v1;
use trainfleet_proto::v1::job_service_client::JobServiceClient;
use trainfleet_proto::v1::worker_service_client::WorkerServiceClient;

#[derive(Debug, Parser)]
struct Args {
    /// The coordinator binary.
    #[arg(long, default_value = "target/release/trainfleet-coordinator")]
    coordinator: PathBuf,
    /// Worker loops taking tasks.
    #[arg(long, default_value_t = 50)]
    workers: usize,
    /// Jobs submitted one at a time for the latency measurement.
    #[arg(long, default_value_t = 1000)]
    latency_jobs: usize,
    /// Jobs for the throughput measurement.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Concurrent submitters in the throughput measurement.
    #[arg(long, default_value_t = 16)]
    submitters: usize,
    /// Target rate (tasks/s) of the paced measurement.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Length of the paced measurement.
    #[arg(long, default_value_t = 10.0)]
    paced_seconds: f64,
    /// Extra workers registered for the memory measurement.
    #[arg(long, default_value_t = 1000)]
    registered: usize,
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn summary(mut samples: Vec<Duration>) -> serde_json::Value {
    samples.sort();
    serde_json::json!({
        "samples": samples.len(),
        "p50_ms": percentile(&samples, 0.50),
        "p90_ms": percentile(&samples, 0.90),
        "p99_ms": percentile(&samples, 0.99),
        "max_ms": percentile(&samples, 1.0),
    })
}

/// One worker: poll, note when the task arrived, complete it, poll again. Heartbeats keep it alive.
async fn worker(
    addr: String,
    id: String,
    received: mpsc::UnboundedSender<(String, Instant)>,
) -> anyhow::Result<()> {
    let mut client = WorkerServiceClient::new(channel(&addr).await?);
    let session = register(&mut client, &id).await?;
    {
        let (mut beat, id, session) = (client.clone(), id.clone(), session.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let request = v1::HeartbeatRequest {
                    worker_id: id.clone(),
                    session_id: session.clone(),
                    tasks: Vec::new(),
                    free_slots: 1,
                };
                if beat.heartbeat(request).await.is_err() {
                    return;
                }
            }
        });
    }
    loop {
        let task = client
            .poll_task(v1::PollTaskRequest {
                worker_id: id.clone(),
                session_id: session.clone(),
                free_slots: 1,
                max_wait: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
            })
            .await?
            .into_inner()
            .task;
        let Some(task) = task else { continue };
        let now = Instant::now();
        if received.send((task.job_id.clone(), now)).is_err() {
            return Ok(());
        }
        client
            .complete_task(v1::CompleteTaskRequest {
                worker_id: id.clone(),
                session_id: session.clone(),
                task_id: task.id,
                attempt: task.attempt,
                outcome: Some(v1::complete_task_request::Outcome::Success(
                    v1::TaskResult::default(),
                )),
                permanent: false,
                poll_next: None,
            })
            .await?;
    }
}

async fn submit(client: &mut JobServiceClient<Channel>) -> anyhow::Result<String> {
    let job = client
        .submit(v1::SubmitJobRequest {
            spec: Some(v1::submit_job_request::Spec::Sleep(v1::SleepJob {
                duration: Some(prost_types::Duration::default()),
                name: "bench".into(),
            })),
            idempotency_key: String::new(),
        })
        .await?
        .into_inner()
        .job
        .context("no job")?;
    Ok(job.id)
}

/// What one load phase measured.
struct Load {
    jobs: usize,
    submitters: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Load {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "jobs": self.jobs,
            "submitters": self.submitters,
            "seconds": self.elapsed.as_secs_f64(),
            "tasks_per_sec": self.jobs as f64 / self.elapsed.as_secs_f64(),
            "dispatch_latency": summary(self.latencies.clone()),
        })
    }
}

/// `submitters` concurrent submitters send `per` jobs each (one every `pace`, or as fast as they
/// can); returns when workers have received every job.
async fn load(
    addr: &str,
    rx: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    submitters: usize,
    per: usize,
    pace: Option<Duration>,
) -> anyhow::Result<Load> {
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = per * submitters;
    let begin = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..submitters {
        let (addr, sent_at) = (addr.to_owned(), sent_at.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = JobServiceClient::new(channel(&addr).await?);
            let mut tick = pace.map(|p| {
                // Stagger the submitters across one period.
                let start = tokio::time::Instant::now() + p.mul_f64(i as f64 / submitters as f64);
                let mut t = tokio::time::interval_at(start, p);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            for _ in 0..per {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let sent = Instant::now();
                let id = submit(&mut client).await?;
                sent_at.lock().unwrap().insert(id, sent);
            }
            anyhow::Ok(())
        }));
    }
    let mut arrivals = Vec::with_capacity(total);
    while arrivals.len() < total {
        let arrival = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .context("no task for 60 s")?
            .context("workers stopped")?;
        arrivals.push(arrival);
    }
    let elapsed = begin.elapsed();
    for t in tasks {
        t.await??;
    }
    let sent_at = sent_at.lock().unwrap();
    let latencies = arrivals
        .iter()
        .filter_map(|(id, at)| sent_at.get(id).map(|s| at.saturating_duration_since(*s)))
        .collect();
    Ok(Load {
        jobs: total,
        submitters,
        elapsed,
        latencies,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let addr_file = dir.path().join("addr");
    let child = Command::new(&args.coordinator)
        .args(["--listen", "127.0.0.1:0", "--addr-file"])
        .arg(&addr_file)
        .arg("--data-dir")
        .arg(dir.path().join("state"))
        .arg("--artifacts")
        .arg(dir.path().join("artifacts"))
        .args(["--heartbeat-interval", "1s", "--lease-timeout", "60s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", args.coordinator.display()))?;
    let coordinator = Stopped(child);
    let pid = coordinator.0.id();
    let addr = wait_addr(&addr_file)?;
    let rss_idle = rss_kib(pid)?;

    let (tx, mut rx) = mpsc::unbounded_channel();
    for i in 0..args.workers {
        tokio::spawn(worker(addr.clone(), format!("bench-{i:03}"), tx.clone()));
    }
    drop(tx);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_workers = rss_kib(pid)?;

    // Memory with many registered workers (they register and stay silent; the lease is 60 s).
    let mut client = WorkerServiceClient::new(channel(&addr).await?);
    for i in 0..args.registered {
        register(&mut client, &format!("idle-{i:04}")).await?;
    }
    let rss_registered = rss_kib(pid)?;

    // 1. Latency, one job at a time.
    let mut jobs = JobServiceClient::new(channel(&addr).await?);
    let mut idle = Vec::with_capacity(args.latency_jobs);
    for _ in 0..args.latency_jobs {
        let sent = Instant::now();
        let id = submit(&mut jobs).await?;
        let (got, at) = rx.recv().await.context("workers stopped")?;
        anyhow::ensure!(got == id, "got {got}, expected {id}");
        idle.push(at - sent);
    }

    // 2. Throughput: submitters as fast as they can.
    let flat_out = load(
        &addr,
        &mut rx,
        args.submitters,
        args.jobs / args.submitters,
        None,
    )
    .await?;

    // 3. Paced: the bar's rate, sustained, and the latency at that rate.
    let per = ((args.rate * args.paced_seconds) as usize / args.submitters).max(1);
    let interval = Duration::from_secs_f64(args.submitters as f64 / args.rate);
    let paced = load(&addr, &mut rx, args.submitters, per, Some(interval)).await?;
    let total = flat_out.jobs + paced.jobs;

    let rss_after_jobs = rss_kib(pid)?;

    let result = serde_json::json!({
        "workers": args.workers,
        "latency_idle": summary(idle),
        "throughput_flat_out": flat_out.json(),
        "paced": {
            "target_tasks_per_sec": args.rate,
            "result": paced.json(),
        },
        "coordinator_rss_mib": {
            "idle": rss_idle as f64 / 1024.0,
            "with_workers": rss_workers as f64 / 1024.0,
            "with_registered": rss_registered as f64 / 1024.0,
            "registered_workers": args.workers + args.registered,
            "after_jobs": rss_after_jobs as f64 / 1024.0,
            "jobs_held": args.latency_jobs + total,
        },
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    drop(coordinator);
    Ok(())
}
