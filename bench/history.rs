//! History benchmark: a coordinator with 100,000 finished jobs behind it.
//!
//! The history is written straight into the state store (the records a finished two-task
//! training job leaves: spec, ten epochs of metrics, two attempts, result, run, a train and an
//! eval task, and the model it trained; about 6 KiB a job), because running 100,000 real trainings is not a benchmark. Then,
//! side by side in one run, with release `trainfleet-coordinator`s:
//!
//! 1. **Embedded, without retention** (`--retain-finished-jobs` above the history, the
//!    behaviour before the archive): restart → SERVING, and RSS once serving.
//! 2. **Embedded, default retention**: the first start archives the backlog (timed); then a
//!    restart → SERVING, RSS, and an archived job read by `Get` and a `List` page that reaches
//!    into the archive.
//! 3. **etcd** (3 real members, 3 replicas): failover (SIGKILL the leader → another answers
//!    `is_self`) with an empty history, then with the history (archived by default retention);
//!    etcd's database size with the history, after archiving, and after compaction + defrag.
//!
//! Prints one JSON object; `bench/history.sh` runs it.

#[path = "common.rs"]
mod common;
#[path = "history_seed.rs"]
mod seed;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use common::{channel, wait_addr};
use serde_json::json;
use trainfleet_core::etcd_process::EtcdCluster;
use trainfleet_core::kv::etcd::{EtcdOptions, EtcdStore};
use trainfleet_proto::v1;
use trainfleet_proto::v1::cluster_service_client::ClusterServiceClient;
use trainfleet_proto::v1::job_service_client::JobServiceClient;

#[derive(Debug, Parser)]
struct Args {
    /// The coordinator binary.
    #[arg(long, default_value = "target/release/trainfleet-coordinator")]
    coordinator: PathBuf,
    /// Finished jobs in the history.
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// Leader kills per etcd measurement.
    #[arg(long, default_value_t = 3)]
    kills: usize,
    /// Lease TTL of the leader, seconds.
    #[arg(long, default_value_t = 5)]
    ttl: u64,
    /// Skip the etcd part.
    #[arg(long)]
    no_etcd: bool,
}

/// A coordinator process, SIGKILLed when dropped.
struct Replica {
    child: Option<Child>,
    addr: String,
    addr_file: PathBuf,
    args: Vec<String>,
    binary: PathBuf,
    log: PathBuf,
}

impl Replica {
    fn start(binary: &Path, mut args: Vec<String>, dir: &Path, name: &str) -> anyhow::Result<Self> {
        let addr_file = dir.join(format!("{name}.addr"));
        args.extend(["--addr-file".into(), addr_file.display().to_string()]);
        let mut r = Self {
            child: None,
            addr: String::new(),
            addr_file,
            args,
            binary: binary.to_owned(),
            log: dir.join(format!("{name}.log")),
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(&self.addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.child = Some(
            Command::new(&self.binary)
                .args(&self.args)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        );
        self.addr = wait_addr(&self.addr_file)?;
        Ok(())
    }

    fn rss_mib(&self) -> f64 {
        let pid = self.child.as_ref().map_or(0, Child::id);
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / 1024.0)
    }

    fn stop(&mut self, signal: i32) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe { libc::kill(c.id() as i32, signal) };
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop(libc::SIGKILL);
    }
}

async fn is_leader(addr: &str) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(c) = endpoint
        .connect_timeout(Duration::from_millis(200))
        .timeout(Duration::from_millis(300))
        .connect()
        .await
    else {
        return false;
    };
    ClusterServiceClient::new(c)
        .get_leader(v1::GetLeaderRequest {})
        .await
        .is_ok_and(|r| r.into_inner().is_self)
}

async fn wait_leader(replicas: &[Replica], except: Option<usize>) -> anyhow::Result<usize> {
    wait_leader_for(replicas, except, Duration::from_secs(120)).await
}

async fn wait_leader_for(
    replicas: &[Replica],
    except: Option<usize>,
    limit: Duration,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + limit;
    loop {
        for (i, r) in replicas.iter().enumerate() {
            if Some(i) != except && r.child.is_some() && is_leader(&r.addr).await {
                return Ok(i);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no leader within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// From start to `GetLeader.is_self` (SERVING as leader), seconds.
async fn time_to_serving(r: &mut Replica) -> anyhow::Result<f64> {
    let began = Instant::now();
    r.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while !is_leader(&r.addr).await {
        anyhow::ensure!(Instant::now() < deadline, "not serving within 300 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(began.elapsed().as_secs_f64())
}

/// Jobs the log says were archived so far.
fn archived_so_far(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("finished jobs moved to the archive"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("archived="))
                .and_then(|n| n.parse::<usize>().ok())
        })
        .sum()
}

async fn wait_archived(r: &Replica, want: usize) -> anyhow::Result<f64> {
    let began = Instant::now();
    while archived_so_far(&r.log_text()) < want {
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(900),
            "archived {} of {want} in 900 s",
            archived_so_far(&r.log_text())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(began.elapsed().as_secs_f64())
}

fn embedded_args(dir: &Path, retain: usize) -> Vec<String> {
    [
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &dir.join("state").display().to_string(),
        "--artifacts",
        &dir.join("artifacts").display().to_string(),
        "--retain-finished-jobs",
        &retain.to_string(),
        "--archive-interval",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn embedded(args: &Args, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let retained = 1000;
    let mut out = serde_json::Map::new();
    for (label, retain) in [
        ("no_retention", usize::MAX),
        ("default_retention", retained),
    ] {
        let case = dir.join(label);
        std::fs::create_dir_all(case.join("state"))?;
        let (seconds, bytes) = {
            let store = trainfleet_core::kv::embedded::EmbeddedStore::open(
                &case.join("state").join("state.redb"),
            )?;
            seed::seed(&store, args.jobs).await?
        };
        eprintln!(
            "history: {label}: seeded {} jobs in {seconds:.1} s",
            args.jobs
        );
        let mut r = Replica::start(&args.coordinator, embedded_args(&case, retain), &case, "c")?;
        let mut first = serde_json::Map::new();
        first.insert("seed_seconds".into(), json!(seconds));
        first.insert("seed_mib".into(), json!(bytes as f64 / 1048576.0));
        if retain != usize::MAX {
            first.insert(
                "archive_backlog_seconds".into(),
                json!(wait_archived(&r, args.jobs - retained).await?),
            );
        }
        r.stop(libc::SIGTERM);
        let serving = time_to_serving(&mut r).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        first.insert("restart_to_serving_seconds".into(), json!(serving));
        first.insert("rss_mib".into(), json!(r.rss_mib()));
        if retain != usize::MAX {
            let mut jobs = JobServiceClient::new(channel(&r.addr).await?);
            // Pages of 500 newest first: the first ones are the retained jobs, then the
            // archive's; time the first page that is all archive.
            let mut token = String::new();
            let (list_ms, oldest) = loop {
                let began = Instant::now();
                let page = jobs
                    .list(v1::ListJobsRequest {
                        states: vec![],
                        page_size: 500,
                        page_token: token.clone(),
                    })
                    .await?
                    .into_inner();
                let ms = began.elapsed().as_secs_f64() * 1000.0;
                anyhow::ensure!(!page.jobs.is_empty(), "no page reached the archive");
                if page
                    .jobs
                    .iter()
                    .all(|j| j.source == v1::JobSource::Archive as i32)
                {
                    break (
                        ms,
                        page.jobs.last().map(|j| j.id.clone()).unwrap_or_default(),
                    );
                }
                token = page.next_page_token;
            };
            let began = Instant::now();
            let got = jobs
                .get(v1::GetJobRequest { id: oldest })
                .await?
                .into_inner();
            first.insert(
                "archived_get_ms".into(),
                json!(began.elapsed().as_secs_f64() * 1000.0),
            );
            first.insert("archive_list_page_ms".into(), json!(list_ms));
            anyhow::ensure!(
                got.source == v1::JobSource::Archive as i32,
                "an archived job is read from the archive"
            );
            first.insert("rss_after_reads_mib".into(), json!(r.rss_mib()));
        }
        out.insert(label.into(), serde_json::Value::Object(first));
    }
    Ok(serde_json::Value::Object(out))
}

async fn etcd_status(endpoints: &[String]) -> anyhow::Result<(i64, i64)> {
    let mut client = etcd_client::Client::connect(endpoints, None).await?;
    let mut size = 0;
    let mut revision = 0;
    for e in endpoints {
        let mut one = etcd_client::Client::connect([e], None).await?;
        let s = one.status().await?;
        size = size.max(s.db_size());
        revision = s.header().map_or(0, |h| h.revision());
    }
    let _ = client.status().await?;
    Ok((size, revision))
}

async fn failovers(args: &Args, replicas: &mut [Replica]) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::new();
    for _ in 0..args.kills {
        let leader = wait_leader(replicas, None).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let began = Instant::now();
        replicas[leader].stop(libc::SIGKILL);
        wait_leader(replicas, Some(leader)).await?;
        times.push(began.elapsed().as_secs_f64());
        replicas[leader].spawn()?;
    }
    Ok(times)
}

async fn etcd(args: &Args, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let cluster = EtcdCluster::start(dir, 3)?;
    let endpoints = cluster.endpoints();
    let start = |prefix: &str| -> anyhow::Result<Vec<Replica>> {
        (0..3)
            .map(|i| {
                let flags: Vec<String> = [
                    "--listen",
                    "127.0.0.1:0",
                    "--store",
                    "etcd",
                    "--etcd-endpoints",
                    &endpoints.join(","),
                    "--etcd-prefix",
                    prefix,
                    "--etcd-lease-ttl",
                    &format!("{}s", args.ttl),
                    "--archive-interval",
                    "1s",
                    "--artifacts",
                    &dir.join("artifacts").display().to_string(),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                Replica::start(
                    &args.coordinator,
                    flags,
                    dir,
                    &format!("{}{i}", &prefix[1..]),
                )
            })
            .collect()
    };
    eprintln!("history: etcd: failover with an empty history");
    let mut empty = start("/empty")?;
    let empty_times = match failovers(args, &mut empty).await {
        Ok(t) => t,
        Err(e) => {
            for r in &empty {
                eprintln!("--- {}\n{}", r.log.display(), r.log_text());
            }
            return Err(e);
        }
    };
    drop(empty);

    let (before_size, _) = etcd_status(&endpoints).await?;
    let store = EtcdStore::connect(EtcdOptions {
        endpoints: endpoints.clone(),
        prefix: "/history".into(),
        call_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
        user: None,
        tls: None,
    })
    .await?;
    let (seed_seconds, _) = seed::seed(&store, args.jobs).await?;
    eprintln!(
        "history: etcd: seeded {} jobs in {seed_seconds:.1} s",
        args.jobs
    );
    let (seeded_size, _) = etcd_status(&endpoints).await?;
    let mut replicas = start("/history")?;
    let began = Instant::now();
    // The first leader loads the whole unarchived history before it serves.
    let leader = match wait_leader_for(&replicas, None, Duration::from_secs(900)).await {
        Ok(l) => l,
        Err(e) => {
            for r in &replicas {
                eprintln!("--- {}\n{}", r.log.display(), r.log_text());
            }
            return Err(e);
        }
    };
    let backlog_load_seconds = began.elapsed().as_secs_f64();
    let archive_seconds = wait_archived(&replicas[leader], args.jobs - 1000).await?;
    let (archived_size, revision) = etcd_status(&endpoints).await?;
    let history_times = failovers(args, &mut replicas).await?;
    // What etcd's own --auto-compaction-retention would do, then a defrag of each member.
    let mut client = etcd_client::Client::connect(&endpoints, None).await?;
    client
        .compact(
            revision,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await?;
    for e in &endpoints {
        etcd_client::Client::connect([e], None)
            .await?
            .defragment()
            .await?;
    }
    let (compacted_size, _) = etcd_status(&endpoints).await?;
    let live_keys = client
        .get(
            "/history",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await?
        .count();
    Ok(json!({
        "ttl_seconds": args.ttl,
        "failover_empty_seconds": empty_times,
        "failover_history_seconds": history_times,
        "seed_seconds": seed_seconds,
        "backlog_first_leader_seconds": backlog_load_seconds,
        "archive_backlog_seconds": archive_seconds,
        "db_mib_before": before_size as f64 / 1048576.0,
        "db_mib_with_history": seeded_size as f64 / 1048576.0,
        "db_mib_after_archive": archived_size as f64 / 1048576.0,
        "db_mib_after_compact_defrag": compacted_size as f64 / 1048576.0,
        "live_keys_after": live_keys,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let embedded = embedded(&args, &dir.path().join("embedded")).await?;
    let etcd = if args.no_etcd {
        serde_json::Value::Null
    } else {
        let etcd_dir = dir.path().join("etcd");
        std::fs::create_dir_all(&etcd_dir)?;
        etcd(&args, &etcd_dir).await?
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "jobs": args.jobs,
            "embedded": embedded,
            "etcd": etcd,
        }))?
    );
    Ok(())
}
