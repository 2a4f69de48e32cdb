//! A trainfleet cluster in containers, one process per container on a private podman network the
//! test creates (its own name and subnet): etcd members, an S3 API server (moto), coordinator
//! replicas and workers, from the images `make images` and `tests/containers/images.sh` build.
//! The host talks only to these containers (by their addresses on that network, or inside their
//! network namespaces with `nsenter`). Every container is stopped and removed by its id, and the
//! network with it, when the cluster is dropped, whether the test passed or not.
//!
//! The three parts of a Jepsen-shaped test live apart: this file is the cluster and its
//! nemesis (kill, partition, heal, pause), `checker.rs` reads the final state and says what was
//! lost or doubled, and the test file holds the workload.
#![allow(dead_code)]

pub mod checker;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::support::repo_root;

/// The leader's lease TTL in the container tests.
pub const TTL: Duration = Duration::from_secs(3);
/// A worker silent this long is lost and its task requeued.
pub const LEASE_TIMEOUT: Duration = Duration::from_secs(4);
/// The S3 bucket and prefix of the artifacts.
pub const BUCKET: &str = "trainfleet";
const S3_KEYS: [(&str, &str); 5] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_ALLOW_HTTP", "true"),
    ("AWS_ENDPOINT", "PLACEHOLDER"),
];

/// Runs podman with the project's settings.
pub fn podman(args: &[&str]) -> anyhow::Result<Output> {
    Command::new("podman")
        .args(args)
        .env(
            "CONTAINERS_CONF",
            repo_root().join("k8s/images/containers.conf"),
        )
        .output()
        .context("running podman (scripts/setup.sh installs it)")
}

/// Runs podman; fails with its output when it fails.
pub fn podman_ok(args: &[&str]) -> anyhow::Result<String> {
    let out = podman(args)?;
    if !out.status.success() {
        bail!(
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// One container of the cluster.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its id (what every podman command is given).
    pub id: String,
    /// Its name, which is also its DNS name on the network.
    pub name: String,
}

/// The cluster: a network and the containers on it.
pub struct Cluster {
    pub network: String,
    pub prefix: String,
    pub etcd: Vec<Member>,
    pub s3: Member,
    pub coordinators: Vec<Member>,
    pub workers: Vec<Member>,
    /// Every container ever started, removed on drop.
    started: Vec<String>,
    pub runtime: tokio::runtime::Runtime,
    pub dir: PathBuf,
}

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

impl Cluster {
    /// Starts 3 etcd members, the S3 server (with its bucket), `coordinators` replicas and
    /// `workers` workers. `tag` keeps concurrent runs apart.
    pub fn start(
        dir: &std::path::Path,
        tag: &str,
        coordinators: usize,
        workers: usize,
    ) -> anyhow::Result<Self> {
        let out = Command::new(repo_root().join("tests/containers/images.sh")).output()?;
        if !out.status.success() {
            bail!(
                "tests/containers/images.sh: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let pid = std::process::id();
        let prefix = format!("tf{pid}{tag}");
        let network = format!("{prefix}-net");
        // A subnet of our own in the 10.89.0.0/16 podman range, different per run.
        let subnet = format!("10.89.{}.0/24", 100 + pid % 150);
        podman_ok(&["network", "create", "--subnet", &subnet, &network])?;
        let placeholder = Member {
            id: String::new(),
            name: String::new(),
        };
        let mut cluster = Self {
            network,
            prefix,
            etcd: Vec::new(),
            s3: placeholder,
            coordinators: Vec::new(),
            workers: Vec::new(),
            started: Vec::new(),
            runtime: tokio::runtime::Runtime::new()?,
            dir: dir.to_owned(),
        };
        let names: Vec<String> = (1..=3).map(|i| cluster.name(&format!("etcd{i}"))).collect();
        let initial = names
            .iter()
            .map(|n| format!("{n}=http://{n}:2380"))
            .collect::<Vec<_>>()
            .join(",");
        let etcd_image = format!("trainfleet-e2e-etcd:{}", etcd_version()?);
        let token = cluster.prefix.clone();
        for name in &names {
            let (peer, client) = (format!("http://{name}:2380"), format!("http://{name}:2379"));
            let member = cluster.run(
                name,
                &[],
                &etcd_image,
                &[
                    "--name",
                    name,
                    "--data-dir",
                    "/tmp/etcd",
                    "--listen-peer-urls",
                    "http://0.0.0.0:2380",
                    "--listen-client-urls",
                    "http://0.0.0.0:2379",
                    "--initial-advertise-peer-urls",
                    &peer,
                    "--advertise-client-urls",
                    &client,
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-token",
                    &token,
                ],
            )?;
            cluster.etcd.push(member);
        }
        let s3_name = cluster.name("s3");
        cluster.s3 = cluster.run(&s3_name, &[], "trainfleet-e2e-s3:5.2.5", &[])?;
        crate::support::wait_for(Duration::from_secs(30), "the S3 server's bucket", || {
            podman(&[
                "exec",
                &cluster.s3.id,
                "python3",
                "-c",
                &format!(
                    "import urllib.request as u; \
                     u.urlopen(u.Request('http://127.0.0.1:5000/{BUCKET}', method='PUT'))"
                ),
            ])
            .ok()
            .filter(|o| o.status.success())
        })?;
        for i in 1..=coordinators {
            cluster.add_coordinator(i)?;
        }
        for i in 1..=workers {
            cluster.add_worker(&format!("worker{i}"))?;
        }
        Ok(cluster)
    }

    /// The container name for `role` in this run.
    pub fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn s3_env(&self) -> Vec<String> {
        S3_KEYS
            .iter()
            .map(|(k, v)| match *k {
                "AWS_ENDPOINT" => format!("{k}=http://{}:5000", self.s3.name),
                _ => format!("{k}={v}"),
            })
            .collect()
    }

    /// Starts a container on the network; it is removed when the cluster is dropped.
    pub fn run(
        &mut self,
        name: &str,
        env: &[String],
        image: &str,
        args: &[&str],
    ) -> anyhow::Result<Member> {
        let mut all: Vec<String> = vec![
            "run".into(),
            "--detach".into(),
            "--name".into(),
            name.into(),
            "--network".into(),
            self.network.clone(),
            // The images' HEALTHCHECK needs systemd timers, which these hosts lack; the tests
            // run the health command themselves.
            "--no-healthcheck".into(),
        ];
        for e in env {
            all.push("--env".into());
            all.push(e.clone());
        }
        all.push(image.into());
        all.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let id = podman_ok(&refs)?;
        self.started.push(id.clone());
        Ok(Member {
            id,
            name: name.to_owned(),
        })
    }

    /// Starts coordinator replica `i` (1-based); [`Cluster::restart`] starts a killed one again.
    pub fn add_coordinator(&mut self, i: usize) -> anyhow::Result<()> {
        let name = self.name(&format!("coordinator{i}"));
        let endpoints = self
            .etcd
            .iter()
            .map(|m| format!("http://{}:2379", m.name))
            .collect::<Vec<_>>()
            .join(",");
        let advertise = format!("{name}:50051");
        let artifacts = format!("s3://{BUCKET}/e2e");
        let ttl = format!("{}s", TTL.as_secs());
        let lease = format!("{}s", LEASE_TIMEOUT.as_secs());
        let mut env = self.s3_env();
        // The test's own network, reached by nothing else: plaintext and no tokens, said so.
        env.push("TRAINFLEET_INSECURE=true".to_owned());
        let member = self.run(
            &name,
            &env,
            &format!("trainfleet-coordinator:{}", version()),
            &[
                "--store",
                "etcd",
                "--etcd-endpoints",
                &endpoints,
                "--etcd-prefix",
                "/e2e",
                "--etcd-lease-ttl",
                &ttl,
                "--heartbeat-interval",
                "500ms",
                "--lease-timeout",
                &lease,
                "--advertise-address",
                &advertise,
                "--artifacts",
                &artifacts,
            ],
        )?;
        self.coordinators.push(member);
        Ok(())
    }

    /// Starts a worker named `role`, dialling every replica.
    pub fn add_worker(&mut self, role: &str) -> anyhow::Result<Member> {
        let name = self.name(role);
        let replicas = (1..=3)
            .map(|i| format!("{}:50051", self.name(&format!("coordinator{i}"))))
            .collect::<Vec<_>>()
            .join(",");
        let mut env = self.s3_env();
        env.push(format!("TRAINFLEET_WORKER_ID={role}"));
        let member = self.run(
            &name,
            &env,
            &format!("trainfleet-worker:{}", version()),
            &["--coordinator", &replicas],
        )?;
        self.workers.push(member.clone());
        Ok(member)
    }

    /// The address of `member` on the test network, as the host reaches it.
    pub fn ip(&self, member: &Member) -> anyhow::Result<String> {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.network
        );
        let ip = podman_ok(&["inspect", "--format", &format, &member.id])?;
        if ip.is_empty() || ip == "<no value>" {
            bail!("{} has no address on {}", member.name, self.network);
        }
        Ok(ip)
    }

    /// `host:port` of coordinator `i` (0-based) for the host's clients.
    pub fn endpoint(&self, i: usize) -> anyhow::Result<String> {
        Ok(format!("{}:50051", self.ip(&self.coordinators[i])?))
    }

    /// What replica `i` says about leadership: (is it the leader, the leader's address).
    pub fn ask(&self, i: usize) -> Option<(bool, String)> {
        crate::support::ask_leader(&self.runtime, &self.endpoint(i).ok()?)
    }

    /// The replicas that say they lead.
    pub fn leaders(&self) -> Vec<usize> {
        (0..self.coordinators.len())
            .filter(|&i| self.ask(i).is_some_and(|(me, _)| me))
            .collect()
    }

    /// Waits until exactly one replica leads and it is not `not`; returns it.
    pub fn wait_leader(&self, not: Option<usize>, timeout: Duration) -> anyhow::Result<usize> {
        crate::support::wait_for(timeout, "one (new) leader", || {
            match self.leaders().as_slice() {
                [one] if Some(*one) != not => Some(*one),
                _ => None,
            }
        })
    }

    /// A replica other than `i` that answers (a follower, to submit through).
    pub fn other_than(&self, i: usize) -> usize {
        (0..self.coordinators.len())
            .find(|&j| j != i && self.ask(j).is_some())
            .unwrap_or(i.wrapping_add(1) % self.coordinators.len())
    }

    // --- the nemesis ---------------------------------------------------------------------------

    /// `kill -9` of the container's process.
    pub fn kill(&self, member: &Member) -> anyhow::Result<()> {
        podman_ok(&["kill", "--signal", "KILL", &member.id]).map(drop)
    }

    /// Starts a stopped or killed container again (same id, same name).
    pub fn restart(&self, member: &Member) -> anyhow::Result<()> {
        podman_ok(&["start", &member.id]).map(drop)
    }

    /// Cuts `member` off the network: nobody reaches it and it reaches nobody.
    pub fn partition(&self, member: &Member) -> anyhow::Result<()> {
        podman_ok(&["network", "disconnect", &self.network, &member.id]).map(drop)
    }

    /// Puts `member` back on the network (its address may change; its name stays).
    pub fn heal(&self, member: &Member) -> anyhow::Result<()> {
        podman_ok(&["network", "connect", &self.network, &member.id]).map(drop)
    }

    /// Runs `program` on the host inside `member`'s network namespace (to talk to it on its own
    /// loopback while it is partitioned).
    pub fn inside(&self, member: &Member, program: &[&str]) -> anyhow::Result<Output> {
        let pid = podman_ok(&["inspect", "--format", "{{.State.Pid}}", &member.id])?;
        Ok(Command::new("nsenter")
            .args(["--target", &pid, "--net", "--"])
            .args(program)
            .output()?)
    }

    /// The container's log (stdout and stderr).
    pub fn logs(&self, member: &Member) -> String {
        podman(&["logs", &member.id])
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }

    /// Every replica's log, for failure messages.
    pub fn coordinator_logs(&self) -> String {
        self.coordinators
            .iter()
            .map(|c| format!("--- {}\n{}", c.name, tail(&self.logs(c), 40)))
            .collect()
    }

    /// The last lines of every worker's log, to say why a task did not move.
    pub fn worker_logs(&self) -> String {
        self.workers
            .iter()
            .map(|w| format!("--- {}\n{}", w.name, tail(&self.logs(w), 40)))
            .collect()
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn etcd_version() -> anyhow::Result<String> {
    let out = Command::new("etcd").arg("--version").output()?;
    String::from_utf8(out.stdout)?
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version: "))
        .map(str::to_owned)
        .context("etcd --version")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // By id, newest first; --volumes drops the anonymous volumes with them.
        for id in self.started.iter().rev() {
            let _ = podman(&["rm", "--force", "--volumes", "--time", "0", id]);
        }
        let _ = podman(&["network", "rm", &self.network]);
    }
}
