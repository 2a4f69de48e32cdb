//! What security costs the dispatch path: the same load against a coordinator with everything
//! off (plaintext, no tokens) and with everything on (TLS on the port, workers authenticated by
//! client certificates bound to their ids, submitters by bearer tokens, every call checked by
//! the access layer and the mutating ones audited), side by side in one run.
//!
//! Each configuration gets a fresh release coordinator on loopback (its embedded store, durable
//! writes) and `--workers` worker loops speaking the real WorkerService, each on its own
//! connection (mTLS when on). Like the worker, a loop's CompleteTask carries the poll for its
//! next task (`--separate-poll`: a PollTask after each report, the protocol before it could). Rounds alternate off, on, off, on... so that drift on a shared
//! machine hits both alike; the figures are the medians over rounds:
//!
//! Four configurations: off; TLS with workers known by certificates; tokens (checked on every
//! call, mutating calls audited) in plaintext, workers by a static worker token; and both.
//!
//! 1. latency: sleep(0) jobs submitted one at a time to idle workers, from just before Submit
//!    to the moment a worker's PollTask returns it (p50, p99);
//! 2. throughput: `--submitters` concurrent submitters push `--jobs` jobs; tasks/s is jobs
//!    received by workers (and completed) per second of wall time, and the coordinator's own
//!    CPU time per task (from /proc: what the server pays, apart from the load generator's own
//!    TLS on the same cores).
//!
//! Prints one JSON object with each configuration and its ratios to off. `bench/dispatch_secure.sh`
//! builds and runs it.

#[path = "common.rs"]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use common::{Stopped, wait_addr};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SanType,
};
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use trainfleet_proto::v1::job_service_client::JobServiceClient;
use trainfleet_proto::v1::worker_service_client::WorkerServiceClient;
use trainfleet_proto::{AuthChannel, Bearer, v1};

#[derive(Debug, Parser)]
struct Args {
    /// The coordinator binary.
    #[arg(long, default_value = "target/release/trainfleet-coordinator")]
    coordinator: PathBuf,
    /// Worker loops taking tasks.
    #[arg(long, default_value_t = 20)]
    workers: usize,
    /// Jobs submitted one at a time for the latency measurement, per round.
    #[arg(long, default_value_t = 300)]
    latency_jobs: usize,
    /// Jobs for the throughput measurement, per round.
    #[arg(long, default_value_t = 4000)]
    jobs: usize,
    /// Concurrent submitters in the throughput measurement.
    #[arg(long, default_value_t = 16)]
    submitters: usize,
    /// Rounds per configuration (alternating).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Workers poll with a PollTask after each CompleteTask, as before the report could carry
    /// the next poll (`poll_next`): to compare the two protocols.
    #[arg(long)]
    separate_poll: bool,
}

const SECRET: &str = "bench-bootstrap-secret-0123456789abcdef";
/// The workers' static token, when they are known by tokens rather than certificates.
const WORKER_SECRET: &str = "bench-worker-secret-0123456789abcdef0";

/// The CA, the coordinator's certificate and the workers' identities, in `dir`.
struct Pki {
    ca_pem: String,
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = server.signed_by(&key, &*ca)?;
        std::fs::write(dir.join("server.pem"), cert.pem())?;
        std::fs::write(dir.join("server-key.pem"), key.serialize_pem())?;
        std::fs::write(dir.join("ca.pem"), ca.pem())?;
        std::fs::write(dir.join("bootstrap"), SECRET)?;
        std::fs::write(dir.join("worker-token"), WORKER_SECRET)?;
        std::fs::write(
            dir.join("auth.yaml"),
            format!(
                "auth:\n  static_tokens:\n    - {{name: bench-workers, role: worker, file: {}}}\n",
                dir.join("worker-token").display()
            ),
        )?;
        Ok(Self {
            ca_pem: ca.pem(),
            ca,
            dir: dir.to_owned(),
        })
    }

    /// A client certificate naming worker `id`.
    fn worker(&self, id: &str) -> anyhow::Result<Identity> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://trainfleet/worker/{id}").try_into()?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &*self.ca)?;
        Ok(Identity::from_pem(cert.pem(), key.serialize_pem()))
    }
}

/// How clients dial one configuration.
#[derive(Clone)]
struct Dial {
    addr: String,
    tls: Option<ClientTlsConfig>,
    token: Option<String>,
}

impl Dial {
    async fn channel(&self, identity: Option<Identity>) -> anyhow::Result<Channel> {
        let endpoint = match &self.tls {
            Some(tls) => {
                let tls = match identity {
                    Some(id) => tls.clone().identity(id),
                    None => tls.clone(),
                };
                Endpoint::from_shared(format!("https://{}", self.addr))?.tls_config(tls)?
            }
            None => Endpoint::from_shared(format!("http://{}", self.addr))?,
        };
        Ok(endpoint.tcp_nodelay(true).connect().await?)
    }

    async fn jobs(&self) -> anyhow::Result<JobServiceClient<AuthChannel>> {
        let bearer = Bearer::new(self.token.as_deref()).map_err(anyhow::Error::msg)?;
        Ok(JobServiceClient::with_interceptor(
            self.channel(None).await?,
            bearer,
        ))
    }
}

fn summary(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at =
        |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.99))
}

/// One worker loop: register, then poll, note the arrival, complete; with `combined`, the
/// completion carries the next poll (as the worker does), else a PollTask follows it.
async fn worker(
    dial: Dial,
    id: String,
    identity: Option<Identity>,
    combined: bool,
    received: mpsc::UnboundedSender<(String, Instant)>,
) -> anyhow::Result<()> {
    // Known by a certificate, or (tokens without TLS) by the workers' token.
    let token = (dial.token.is_some() && identity.is_none()).then_some(WORKER_SECRET);
    let bearer = Bearer::new(token).map_err(anyhow::Error::msg)?;
    let mut client = WorkerServiceClient::with_interceptor(dial.channel(identity).await?, bearer);
    let session = client
        .register(v1::RegisterRequest {
            worker_id: id.clone(),
            host: "bench".into(),
            devices: vec![v1::Device {
                kind: v1::DeviceKind::Cpu as i32,
                name: "bench cpu".into(),
                memory_bytes: 1 << 30,
                cores: 1,
                index: 0,
            }],
            slots: 1,
            version: "bench".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .session_id;
    let mut next = None;
    loop {
        let task = match next.take() {
            Some(task) => task,
            None => {
                let polled = client
                    .poll_task(v1::PollTaskRequest {
                        worker_id: id.clone(),
                        session_id: session.clone(),
                        free_slots: 1,
                        max_wait: Some(POLL_WAIT),
                    })
                    .await?
                    .into_inner()
                    .task;
                let Some(task) = polled else { continue };
                task
            }
        };
        if received
            .send((task.job_id.clone(), Instant::now()))
            .is_err()
        {
            return Ok(());
        }
        next = client
            .complete_task(v1::CompleteTaskRequest {
                worker_id: id.clone(),
                session_id: session.clone(),
                task_id: task.id,
                attempt: task.attempt,
                outcome: Some(v1::complete_task_request::Outcome::Success(
                    v1::TaskResult::default(),
                )),
                permanent: false,
                // Like the worker: the report carries the poll for the next task.
                poll_next: combined.then_some(v1::PollNext {
                    free_slots: 1,
                    max_wait: Some(POLL_WAIT),
                }),
            })
            .await?
            .into_inner()
            .next_task;
    }
}

/// How long a worker loop's polls wait.
const POLL_WAIT: prost_types::Duration = prost_types::Duration {
    seconds: 5,
    nanos: 0,
};

async fn submit(client: &mut JobServiceClient<AuthChannel>) -> anyhow::Result<String> {
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

/// One round: a fresh coordinator, the workers, then latency and throughput.
/// What a round turns on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    /// Plaintext, no tokens.
    Off,
    /// TLS on the port, workers by client certificate; no tokens.
    Tls,
    /// Tokens checked and mutating calls audited; plaintext.
    Tokens,
    /// Both.
    On,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Off, Mode::Tls, Mode::Tokens, Mode::On];

    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Tls => "tls_mtls",
            Mode::Tokens => "tokens_audit",
            Mode::On => "on_tls_mtls_tokens",
        }
    }

    fn tls(self) -> bool {
        matches!(self, Mode::Tls | Mode::On)
    }

    fn tokens(self) -> bool {
        matches!(self, Mode::Tokens | Mode::On)
    }
}

/// CPU time (user + system) the process `pid` has used, from /proc.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("/proc stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// What one round measured.
struct Measured {
    latencies: Vec<Duration>,
    tasks_per_sec: f64,
    /// The coordinator's CPU time per task in the throughput phase, in microseconds.
    cpu_us_per_task: f64,
}

async fn round(args: &Args, pki: &Pki, mode: Mode) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let addr_file = dir.path().join("addr");
    let mut command = Command::new(&args.coordinator);
    command
        .args(["--listen", "127.0.0.1:0", "--addr-file"])
        .arg(&addr_file)
        .arg("--data-dir")
        .arg(dir.path().join("state"))
        .arg("--artifacts")
        .arg(dir.path().join("artifacts"))
        .args(["--heartbeat-interval", "1s", "--lease-timeout", "60s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if mode.tokens() {
        command
            .arg("--config")
            .arg(pki.dir.join("auth.yaml"))
            .arg("--auth")
            .arg("--bootstrap-token-file")
            .arg(pki.dir.join("bootstrap"));
    }
    if mode.tls() {
        command
            .arg("--tls-cert")
            .arg(pki.dir.join("server.pem"))
            .arg("--tls-key")
            .arg(pki.dir.join("server-key.pem"))
            .arg("--tls-ca")
            .arg(pki.dir.join("ca.pem"));
    }
    let coordinator = Stopped(command.spawn().context("starting the coordinator")?);
    let dial = Dial {
        addr: wait_addr(&addr_file)?,
        tls: mode.tls().then(|| {
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pki.ca_pem.clone()))
        }),
        token: mode.tokens().then(|| SECRET.to_owned()),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut loops = Vec::new();
    for i in 0..args.workers {
        let id = format!("bench-{i:03}");
        // With TLS, workers are known by their certificates; with tokens alone, by the
        // bootstrap token (the bench's one secret).
        let identity = if mode.tls() {
            Some(pki.worker(&id)?)
        } else {
            None
        };
        let combined = !args.separate_poll;
        loops.push(tokio::spawn(worker(
            dial.clone(),
            id,
            identity,
            combined,
            tx.clone(),
        )));
    }
    drop(tx);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut jobs = dial.jobs().await?;
    let mut latencies = Vec::with_capacity(args.latency_jobs);
    for _ in 0..args.latency_jobs {
        let sent = Instant::now();
        let id = submit(&mut jobs).await?;
        let (got, at) = rx.recv().await.context("workers stopped")?;
        anyhow::ensure!(got == id, "got {got}, expected {id}");
        latencies.push(at - sent);
    }

    let per = args.jobs / args.submitters;
    let pid = coordinator.0.id();
    let cpu_before = cpu_seconds(pid)?;
    let begin = Instant::now();
    let mut submitters = Vec::new();
    for _ in 0..args.submitters {
        let dial = dial.clone();
        submitters.push(tokio::spawn(async move {
            let mut client = dial.jobs().await?;
            for _ in 0..per {
                submit(&mut client).await?;
            }
            anyhow::Ok(())
        }));
    }
    for _ in 0..per * args.submitters {
        tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .context("no task for 60 s")?
            .context("workers stopped")?;
    }
    let tasks_per_sec = (per * args.submitters) as f64 / begin.elapsed().as_secs_f64();
    let cpu_us_per_task = (cpu_seconds(pid)? - cpu_before) * 1e6 / (per * args.submitters) as f64;
    for s in submitters {
        s.await??;
    }
    for l in loops {
        l.abort();
    }
    drop(coordinator);
    Ok(Measured {
        latencies,
        tasks_per_sec,
        cpu_us_per_task,
    })
}

/// Per round of one configuration: p50 and p99 latency (ms), tasks/s.
#[derive(Default, Clone)]
struct Rounds {
    p50: Vec<f64>,
    p99: Vec<f64>,
    tasks_per_sec: Vec<f64>,
    cpu_us_per_task: Vec<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let keys = tempfile::tempdir()?;
    let pki = Pki::new(keys.path())?;
    let mut by_mode: HashMap<Mode, Rounds> = HashMap::new();
    for r in 0..args.rounds {
        for mode in Mode::ALL {
            let m = round(&args, &pki, mode).await?;
            let (p50, p99) = summary(m.latencies);
            let (tps, cpu) = (m.tasks_per_sec, m.cpu_us_per_task);
            eprintln!(
                "round {r}: {}: p50 {p50:.2} ms, p99 {p99:.2} ms, {tps:.0} tasks/s, coordinator CPU {cpu:.0} us/task",
                mode.name()
            );
            let entry = by_mode.entry(mode).or_default();
            entry.p50.push(p50);
            entry.p99.push(p99);
            entry.tasks_per_sec.push(tps);
            entry.cpu_us_per_task.push(cpu);
        }
    }
    let figures = |mode: Mode| {
        let r = by_mode[&mode].clone();
        (
            median(r.p50),
            median(r.p99),
            median(r.tasks_per_sec),
            median(r.cpu_us_per_task),
        )
    };
    let off = figures(Mode::Off);
    let mut result = serde_json::json!({
        "workers": args.workers,
        "rounds_each": args.rounds,
        "poll": if args.separate_poll { "separate PollTask" } else { "carried by CompleteTask" },
    });
    for mode in Mode::ALL {
        let f = figures(mode);
        result[mode.name()] = serde_json::json!({
            "p50_ms": f.0, "p99_ms": f.1, "tasks_per_sec": f.2, "coordinator_cpu_us_per_task": f.3,
            "ratio_to_off": {
                "p50": f.0 / off.0, "p99": f.1 / off.1, "tasks_per_sec": f.2 / off.2,
                "coordinator_cpu_per_task": f.3 / off.3,
            },
        });
    }
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
