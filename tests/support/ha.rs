//! A highly available cluster for tests: real etcd members (Debian's `etcd-server`) and
//! coordinator replicas over them, started on loopback ports and stopped by PID; workers and the
//! CLI are given every live replica.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use trainfleet_core::etcd_process::EtcdCluster;
use trainfleet_core::kv::etcd::{EtcdOptions, EtcdStore};

use super::*;

/// The leader's lease TTL in these tests.
pub const TTL: Duration = Duration::from_secs(3);

pub struct Cluster {
    pub dir: std::path::PathBuf,
    pub etcd: EtcdCluster,
    pub replicas: Vec<Option<CoordinatorProc>>,
    pub addrs: Vec<String>,
    pub runtime: tokio::runtime::Runtime,
}

impl Cluster {
    pub fn start(dir: &Path, members: usize, replicas: usize) -> anyhow::Result<Self> {
        let etcd = EtcdCluster::start(dir, members)?;
        let endpoints = etcd.endpoints().join(",");
        let ttl = format!("{}s", TTL.as_secs());
        let mut started = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..replicas {
            let c = start_coordinator(
                dir,
                &format!("coordinator{i}"),
                "127.0.0.1:0",
                &[
                    "--heartbeat-interval",
                    "200ms",
                    "--lease-timeout",
                    "5s",
                    "--store",
                    "etcd",
                    "--etcd-endpoints",
                    &endpoints,
                    "--etcd-prefix",
                    "/ha-test",
                    "--etcd-lease-ttl",
                    &ttl,
                ],
            )?;
            addrs.push(c.addr.clone());
            started.push(Some(c));
        }
        Ok(Self {
            dir: dir.to_owned(),
            etcd,
            replicas: started,
            addrs,
            runtime: tokio::runtime::Runtime::new()?,
        })
    }

    /// What replica `i` says about leadership: (is it the leader, the leader's address).
    pub fn ask(&self, i: usize) -> Option<(bool, String)> {
        self.replicas[i].as_ref()?;
        ask_leader(&self.runtime, &self.addrs[i])
    }

    /// The health status replica `i` reports for `service` ("" for the server as a whole).
    pub fn health(&self, i: usize, service: &str) -> Option<i32> {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        let addr = format!("http://{}", self.addrs[i]);
        self.runtime.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(addr)
                .ok()?
                .connect()
                .await
                .ok()?;
            let answer = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: service.to_owned(),
                })
                .await
                .ok()?;
            Some(answer.into_inner().status)
        })
    }

    pub fn leaders(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|&i| self.ask(i).is_some_and(|(is_self, _)| is_self))
            .collect()
    }

    /// Waits until exactly one replica leads; returns it.
    pub fn wait_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        self.wait_leader_other_than(usize::MAX, timeout)
    }

    /// Waits until exactly one replica leads and it is not `old`.
    pub fn wait_leader_other_than(&self, old: usize, timeout: Duration) -> anyhow::Result<usize> {
        wait_for(timeout, "one (new) leader", || {
            match self.leaders().as_slice() {
                [one] if *one != old => Some(*one),
                _ => None,
            }
        })
    }

    /// The live replicas' addresses, comma-separated (what a worker or the CLI is given).
    pub fn endpoints(&self) -> String {
        (0..self.replicas.len())
            .filter(|&i| self.replicas[i].is_some())
            .map(|i| self.addrs[i].clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn proc(&self, i: usize) -> &Proc {
        &self.replicas[i].as_ref().expect("running").proc
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.replicas[i].take() {
            c.proc.kill();
        }
    }

    pub fn worker(&self, name: &str) -> anyhow::Result<Proc> {
        let config = format!(
            "data_dir: {}\nartifact_dir: {}\n",
            self.dir.join("data").display(),
            self.dir.join(format!("work-{name}")).display()
        );
        start_worker(&self.dir, name, &self.endpoints(), &config)
    }

    pub fn cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(std::process::Command::new(binary("trainfleet"))
            .args(args)
            .env("TRAINFLEET_ENDPOINT", self.endpoints())
            .current_dir(&self.dir)
            .output()?)
    }

    pub fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli(&all)?;
        anyhow::ensure!(
            out.status.success(),
            "trainfleet {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// A raw view of this cluster's keys in etcd.
    pub fn etcd_store(&self) -> EtcdStore {
        self.runtime
            .block_on(EtcdStore::connect(EtcdOptions {
                endpoints: self.etcd.endpoints(),
                prefix: "/ha-test".into(),
                ..EtcdOptions::default()
            }))
            .expect("etcd reachable")
    }
}
