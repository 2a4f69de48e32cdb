//! Cross-host benchmark on the container cluster of `tests/cluster_containers.rs` (3 etcd
//! members, 3 coordinator replicas, the S3 server, each in its own container on a private podman
//! network), run by `bench/containers.sh`:
//!
//! 1. **Failover across hosts**, `ROUNDS` times: find the leader, `podman kill -s KILL` its
//!    container, and time until another replica answers `GetLeader` with `is_self` (asked every
//!    20 ms); restart the container and wait for it to follow. p50 and max.
//! 2. **Forwarding overhead**: the same unary call (`ClusterService/ListWorkers`) to the leader
//!    and to a follower (which forwards it), alternately, `CALLS` times each on one connection
//!    per replica: p50 and p99 of both.
//! 3. **Worker container start → registered**, `WORKERS` times: from `podman run` of a worker
//!    container to the worker listed ALIVE by the leader.
//!
//! A cargo test target of the root package (so that it shares the test harness), ignored by
//! `cargo test`; prints one JSON object.

#[path = "../tests/containers/mod.rs"]
mod containers;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use containers::{Cluster, podman_ok};
use trainfleet_proto::v1;
use trainfleet_proto::v1::cluster_service_client::ClusterServiceClient;

const ROUNDS: usize = 10;
const CALLS: usize = 500;
const WORKERS: usize = 5;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
#[ignore = "a benchmark: bench/containers.sh runs it"]
fn containers_bench() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path(), "b", 3, 0)?;
    let mut leader = cluster.wait_leader(None, Duration::from_secs(60))?;

    // 1. Failover.
    let mut failovers = Vec::new();
    for round in 0..ROUNDS {
        let victim = cluster.coordinators[leader].clone();
        let killed = Instant::now();
        cluster.kill(&victim)?;
        let next = support::wait_for(Duration::from_secs(30), "a new leader", || {
            (0..cluster.coordinators.len())
                .filter(|&i| i != leader)
                .find(|&i| cluster.ask(i).is_some_and(|(me, _)| me))
        })?;
        failovers.push(ms(killed.elapsed()));
        eprintln!("round {round}: {:.0} ms", failovers[round]);
        cluster.restart(&victim)?;
        let old = leader;
        support::wait_for(Duration::from_secs(30), "the old leader to follow", || {
            cluster.ask(old).filter(|(me, _)| !me)
        })?;
        leader = next;
    }
    failovers.sort_by(f64::total_cmp);

    // 2. Forwarding overhead.
    let follower = cluster.other_than(leader);
    let (via_leader, via_follower) = cluster.runtime.block_on(async {
        let connect = |addr: String| async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await?;
            anyhow::Ok(ClusterServiceClient::new(channel))
        };
        let mut to_leader = connect(cluster.endpoint(leader)?).await?;
        let mut to_follower = connect(cluster.endpoint(follower)?).await?;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..CALLS + 50 {
            for (client, out) in [(&mut to_leader, &mut a), (&mut to_follower, &mut b)] {
                let started = Instant::now();
                client
                    .list_workers(v1::ListWorkersRequest::default())
                    .await?;
                // The first 50 of each warm connections and caches up.
                if i >= 50 {
                    out.push(ms(started.elapsed()));
                }
            }
        }
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        anyhow::Ok((a, b))
    })?;

    // 3. Worker container start → registered.
    let mut starts = Vec::new();
    for i in 0..WORKERS {
        let role = format!("bench-worker{i}");
        let started = Instant::now();
        let worker = cluster.add_worker(&role)?;
        let addr = format!("http://{}", cluster.endpoint(leader)?);
        cluster.runtime.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(addr)?
                .connect()
                .await?;
            let mut client = ClusterServiceClient::new(channel);
            loop {
                let listed = client
                    .list_workers(v1::ListWorkersRequest::default())
                    .await?;
                let alive = listed
                    .into_inner()
                    .workers
                    .iter()
                    .any(|w| w.worker_id == role && w.state == v1::WorkerState::Alive as i32);
                if alive {
                    return anyhow::Ok(());
                }
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(60),
                    "{role} never registered"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })?;
        starts.push(ms(started.elapsed()));
        podman_ok(&["rm", "--force", "--time", "5", &worker.id])?;
    }
    starts.sort_by(f64::total_cmp);

    println!(
        "{}",
        serde_json::json!({
            "failover_ms": {"p50": percentile(&failovers, 0.5), "max": failovers.last(),
                            "all": failovers, "lease_ttl_s": containers::TTL.as_secs()},
            "unary_via_leader_ms": {"p50": percentile(&via_leader, 0.5),
                                    "p99": percentile(&via_leader, 0.99)},
            "unary_via_follower_ms": {"p50": percentile(&via_follower, 0.5),
                                      "p99": percentile(&via_follower, 0.99)},
            "calls_each": via_leader.len(),
            "worker_start_to_registered_ms": {"p50": percentile(&starts, 0.5),
                                              "max": starts.last(), "all": starts},
        })
    );
    Ok(())
}
