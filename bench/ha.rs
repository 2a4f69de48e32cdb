//! HA benchmark: failover time, and the etcd write rate idle workers cause.
//!
//! Starts real etcd members (Debian's `etcd-server`) and three release `trainfleet-coordinator`
//! replicas with `--store etcd` on loopback.
//!
//! 1. **Failover**, `--kills` times: find the leader (`GetLeader` on each replica), SIGKILL it,
//!    and time until another replica answers `is_self` (ask every 20 ms); then restart the
//!    killed replica and let it settle as a follower. p50 and max, with the lease TTL.
//! 2. **Write rate of idle workers**: `--workers` synthetic workers (the real Register and
//!    Heartbeat calls, each on its own connection) heartbeat every `--heartbeat` for
//!    `--seconds`. etcd's revision counts every write transaction the cluster makes; its growth
//!    over the window, per second, is compared with the heartbeats per second.
//!
//! Prints one JSON object; `bench/ha.sh` runs it.

#[path = "common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use common::{channel, register, wait_addr};
use trainfleet_core::etcd_process::EtcdCluster;
use trainfleet_core::kv::KvStore;
use trainfleet_core::kv::etcd::{EtcdOptions, EtcdStore};
use trainfleet_proto::v1;
use trainfleet_proto::v1::cluster_service_client::ClusterServiceClient;
use trainfleet_proto::v1::worker_service_client::WorkerServiceClient;

#[derive(Debug, Parser)]
struct Args {
    /// The coordinator binary.
    #[arg(long, default_value = "target/release/trainfleet-coordinator")]
    coordinator: PathBuf,
    /// etcd members.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Leader kills.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Lease TTL of the leader, seconds.
    #[arg(long, default_value_t = 5)]
    ttl: u64,
    /// Idle workers heartbeating.
    #[arg(long, default_value_t = 100)]
    workers: usize,
    /// Their heartbeat interval (the coordinator is told the same).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Length of the idle measurement.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

/// A replica, stopped by PID when dropped.
struct Replica {
    child: Option<Child>,
    addr: String,
    addr_file: PathBuf,
    args: Vec<String>,
    binary: PathBuf,
    log: PathBuf,
}

impl Replica {
    fn start(binary: &Path, args: Vec<String>, dir: &Path, i: usize) -> anyhow::Result<Self> {
        let addr_file = dir.join(format!("replica{i}.addr"));
        let log = dir.join(format!("replica{i}.log"));
        let mut r = Self {
            child: None,
            addr: String::new(),
            addr_file: addr_file.clone(),
            args,
            binary: binary.to_owned(),
            log,
        };
        r.args
            .extend(["--addr-file".into(), addr_file.display().to_string()]);
        r.spawn()?;
        Ok(r)
    }

    /// Starts the process (again) and waits for the address it bound (port 0: a new one).
    fn spawn(&mut self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(&self.addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.child = Some(
            Command::new(&self.binary)
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start {}", self.binary.display()))?,
        );
        self.addr = wait_addr(&self.addr_file)?;
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
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

async fn leader(replicas: &[Replica], except: Option<usize>) -> Option<usize> {
    for (i, r) in replicas.iter().enumerate() {
        if Some(i) != except && r.child.is_some() && is_leader(&r.addr).await {
            return Some(i);
        }
    }
    None
}

async fn wait_leader(except: Option<usize>, replicas: &[Replica]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(l) = leader(replicas, except).await {
            return Ok(l);
        }
        anyhow::ensure!(Instant::now() < deadline, "no leader within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let etcd = EtcdCluster::start(dir.path(), args.members)?;
    let endpoints = etcd.endpoints().join(",");
    let mut replicas = Vec::new();
    for i in 0..3 {
        let flags: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--store",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
            "--etcd-prefix",
            "/bench",
            "--etcd-lease-ttl",
            &format!("{}s", args.ttl),
            "--heartbeat-interval",
            &humantime::format_duration(args.heartbeat).to_string(),
            "--lease-timeout",
            &humantime::format_duration(args.heartbeat * 5).to_string(),
            "--artifacts",
            &dir.path().join("artifacts").display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        replicas.push(Replica::start(&args.coordinator, flags, dir.path(), i)?);
    }

    if let Err(e) = wait_leader(None, &replicas).await {
        for r in &replicas {
            eprintln!(
                "--- {}\n{}",
                r.log.display(),
                std::fs::read_to_string(&r.log).unwrap_or_default()
            );
        }
        return Err(e);
    }

    // 1. Failover.
    let mut failovers = Vec::new();
    for _ in 0..args.kills {
        let old = wait_leader(None, &replicas).await?;
        let killed = Instant::now();
        replicas[old].kill();
        wait_leader(Some(old), &replicas).await?;
        failovers.push(killed.elapsed().as_secs_f64());
        replicas[old].spawn()?;
        // Let it come back as a follower before the next kill.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut sorted = failovers.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));

    // 2. Idle workers' write rate.
    let leader_addr = replicas[wait_leader(None, &replicas).await?].addr.clone();
    let mut tasks = Vec::new();
    let (beats_tx, mut beats_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for i in 0..args.workers {
        let (addr, beats, stop, every) = (
            leader_addr.clone(),
            beats_tx.clone(),
            stop.clone(),
            args.heartbeat,
        );
        tasks.push(tokio::spawn(async move {
            let mut client = WorkerServiceClient::new(channel(&addr).await?);
            let id = format!("idle-{i:03}");
            let session = register(&mut client, &id).await?;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                client
                    .heartbeat(v1::HeartbeatRequest {
                        worker_id: id.clone(),
                        session_id: session.clone(),
                        free_slots: 1,
                        tasks: Vec::new(),
                    })
                    .await?;
                let _ = beats.send(());
            }
            anyhow::Ok(())
        }));
    }
    drop(beats_tx);
    // Registration writes each worker once; measure after they settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while beats_rx.try_recv().is_ok() {}
    let store = EtcdStore::connect(EtcdOptions {
        endpoints: etcd.endpoints(),
        prefix: "/bench".into(),
        ..EtcdOptions::default()
    })
    .await?;
    let revision = || async { store.put(b"bench/probe", b"x").await };
    let start_rev = revision().await?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let end_rev = revision().await?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut beats = 0u64;
    while beats_rx.try_recv().is_ok() {
        beats += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    // The probe itself is one write of the difference.
    let writes = (end_rev - start_rev - 1).max(0) as f64;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "failover_s": {
                "each": failovers,
                "p50": percentile(&sorted, 0.5),
                "max": sorted.last(),
                "lease_ttl_s": args.ttl,
                "etcd_members": args.members,
            },
            "idle_workers": {
                "workers": args.workers,
                "heartbeat_interval_s": args.heartbeat.as_secs_f64(),
                "heartbeats_per_s": beats as f64 / elapsed,
                "etcd_writes_per_s": writes / elapsed,
                "seconds": elapsed,
            },
        }))?
    );
    Ok(())
}
