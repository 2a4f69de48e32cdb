//! `trainfleet-coordinator`: reads settings (YAML file, then `TRAINFLEET_*` environment, then
//! flags), binds, serves until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use trainfleet_coordinator::Coordinator;
use trainfleet_core::config::{CoordinatorConfig, StoreKind};
use trainfleet_core::process::{init_tracing, shutdown_signal};

/// The trainfleet control plane: tracks workers, datasets and models; schedules training.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// YAML settings file (see configs/coordinator.yaml).
    #[arg(long, short, env = "TRAINFLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Address to serve gRPC on; port 0 picks a free one.
    #[arg(long, env = "TRAINFLEET_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address clients and workers should use to reach this replica.
    #[arg(long, env = "TRAINFLEET_ADVERTISE_ADDRESS")]
    advertise_address: Option<String>,
    /// How often workers heartbeat, e.g. "2s".
    #[arg(long, env = "TRAINFLEET_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// Silence after which a worker is lost, e.g. "10s".
    #[arg(long, env = "TRAINFLEET_LEASE_TIMEOUT", value_parser = humantime::parse_duration)]
    lease_timeout: Option<Duration>,
    /// Where the coordinator keeps its state.
    #[arg(long, env = "TRAINFLEET_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where run artifacts go: a directory shared with the workers, or a URL (`s3://bucket/p`).
    #[arg(long, env = "TRAINFLEET_ARTIFACTS")]
    artifacts: Option<String>,
    /// Finished jobs kept in the state store before older ones move to the archive.
    #[arg(long, env = "TRAINFLEET_RETAIN_FINISHED_JOBS")]
    retain_finished_jobs: Option<usize>,
    /// Finished sweeps kept in the state store (with their trials) before older ones move to
    /// the archive.
    #[arg(long, env = "TRAINFLEET_RETAIN_FINISHED_SWEEPS")]
    retain_finished_sweeps: Option<usize>,
    /// Finished jobs (and sweeps) older than this move to the archive, e.g. "7days".
    #[arg(long, env = "TRAINFLEET_RETAIN_FINISHED_FOR", value_parser = humantime::parse_duration)]
    retain_finished_for: Option<Duration>,
    /// How often the archiver looks for jobs to move, e.g. "30s".
    #[arg(long, env = "TRAINFLEET_ARCHIVE_INTERVAL", value_parser = humantime::parse_duration)]
    archive_interval: Option<Duration>,
    /// Require bearer tokens on every call but health (see AccessService).
    #[arg(long, env = "TRAINFLEET_AUTH")]
    auth: bool,
    /// File with the bootstrap admin secret (at least 32 characters), e.g. a mounted Secret.
    #[arg(long, env = "TRAINFLEET_BOOTSTRAP_TOKEN_FILE")]
    bootstrap_token_file: Option<PathBuf>,
    /// Certificate chain (PEM) to serve TLS with; reloaded when the file changes.
    #[arg(long, env = "TRAINFLEET_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "TRAINFLEET_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The cluster's CA (PEM): verifies workers' client certificates, and the leader's when a
    /// follower forwards to it.
    #[arg(long, env = "TRAINFLEET_TLS_CA", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 0.0.0.0:9090.
    #[arg(long, env = "TRAINFLEET_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Serve on a non-loopback address without TLS and access control: anyone who reaches the
    /// port may do anything. Refused without this flag.
    #[arg(long, env = "TRAINFLEET_INSECURE")]
    insecure: bool,
    /// Once listening, write the bound address to this file (for scripts and tests using port 0).
    #[arg(long, env = "TRAINFLEET_ADDR_FILE")]
    addr_file: Option<PathBuf>,
    /// Where state lives: embedded (one replica) or etcd (replicas elect a leader).
    #[arg(long, env = "TRAINFLEET_STORE", value_parser = ["embedded", "etcd"])]
    store: Option<String>,
    /// etcd client URLs, comma-separated (with --store etcd).
    #[arg(long, env = "TRAINFLEET_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Key prefix of this cluster in etcd, e.g. "/trainfleet/prod".
    #[arg(long, env = "TRAINFLEET_ETCD_PREFIX")]
    etcd_prefix: Option<String>,
    /// TTL of the leader's lease, e.g. "5s".
    #[arg(long, env = "TRAINFLEET_ETCD_LEASE_TTL", value_parser = humantime::parse_duration)]
    etcd_lease_ttl: Option<Duration>,
    /// How long a follower holds a public call while no leader is known, e.g. "7s".
    #[arg(long, env = "TRAINFLEET_ETCD_FORWARD_WAIT", value_parser = humantime::parse_duration)]
    etcd_forward_wait: Option<Duration>,
    /// etcd user (with TRAINFLEET_ETCD_PASSWORD).
    #[arg(long, env = "TRAINFLEET_ETCD_USER")]
    etcd_user: Option<String>,
    /// etcd password; prefer the environment variable to the flag.
    #[arg(long, env = "TRAINFLEET_ETCD_PASSWORD", hide_env_values = true)]
    etcd_password: Option<String>,
    /// CA of the etcd members' certificates (PEM): TLS to etcd, with https:// endpoints.
    #[arg(long, env = "TRAINFLEET_ETCD_CA_FILE")]
    etcd_ca_file: Option<PathBuf>,
    /// Client certificate for etcd (PEM), with --etcd-key-file.
    #[arg(long, env = "TRAINFLEET_ETCD_CERT_FILE", requires = "etcd_ca_file")]
    etcd_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "TRAINFLEET_ETCD_KEY_FILE", requires = "etcd_ca_file")]
    etcd_key_file: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Checks a replica's health (grpc.health.v1): exits 0 when SERVING, 1 saying why not. For
    /// container HEALTHCHECKs and Compose healthchecks.
    Health {
        /// The replica to ask; by default this host on the port of --listen (or 50051).
        #[arg(long)]
        addr: Option<String>,
        /// Health name: "" (any serving replica), a trainfleet.v1 service name, or
        /// trainfleet.v1.Leader (SERVING on the leader only).
        #[arg(long, default_value = "")]
        service: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Also require this many alive workers (ClusterService/ListWorkers, answered through
        /// any replica): what `helm test` checks.
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// A file with a token for --workers (a viewer's), when access control is on.
        #[arg(long, env = "TRAINFLEET_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// The CA of the coordinator's certificate (PEM): dial with TLS.
        #[arg(long, env = "TRAINFLEET_CA_CERT")]
        ca_cert: Option<PathBuf>,
        /// Verify the certificate as this name instead of the dialed host.
        #[arg(long, env = "TRAINFLEET_TLS_SERVER_NAME")]
        tls_server_name: Option<String>,
    },
}

impl Args {
    fn into_config(self) -> anyhow::Result<(CoordinatorConfig, Option<PathBuf>)> {
        let (mut config, origin) = match &self.config {
            // Validated once, below, with the environment and flags applied: a file may leave
            // to them what goes with its keys (the etcd password with `etcd.user`).
            Some(path) => (
                trainfleet_core::config::load_yaml_file::<CoordinatorConfig>(path)?,
                path.display().to_string(),
            ),
            None => (CoordinatorConfig::default(), "defaults".to_owned()),
        };
        let overridden = self.listen.is_some()
            || self.heartbeat_interval.is_some()
            || self.lease_timeout.is_some()
            || self.archive_interval.is_some();
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.advertise_address {
            config.advertise_address = Some(v);
        }
        if let Some(v) = self.heartbeat_interval {
            config.heartbeat_interval = v;
        }
        if let Some(v) = self.lease_timeout {
            config.lease_timeout = v;
        }
        if let Some(v) = self.retain_finished_jobs {
            config.retention.finished_jobs = v;
        }
        if let Some(v) = self.retain_finished_sweeps {
            config.retention.finished_sweeps = v;
        }
        if let Some(v) = self.retain_finished_for {
            config.retention.finished_age = v;
        }
        if let Some(v) = self.archive_interval {
            config.retention.interval = v;
        }
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        if self.auth {
            config.auth.enabled = true;
        }
        if let Some(v) = self.bootstrap_token_file {
            config.auth.bootstrap_token_file = Some(v);
        }
        if let (Some(cert_file), Some(key_file)) = (self.tls_cert, self.tls_key) {
            config.tls = Some(trainfleet_core::config::ServerTls {
                cert_file,
                key_file,
                ca_file: self.tls_ca,
                server_name: None,
            });
        }
        if let Some(v) = self.metrics_listen {
            config.metrics_listen = Some(v);
        }
        if self.insecure {
            config.insecure = true;
        }
        if let Some(v) = self.artifacts {
            config.artifacts = v;
        }
        match self.store.as_deref() {
            Some("etcd") => config.store = StoreKind::Etcd,
            Some(_) => config.store = StoreKind::Embedded,
            None => {}
        }
        if !self.etcd_endpoints.is_empty() {
            config.etcd.endpoints = self.etcd_endpoints;
        }
        if let Some(v) = self.etcd_prefix {
            config.etcd.prefix = v;
        }
        if let Some(v) = self.etcd_lease_ttl {
            config.etcd.lease_ttl = v;
        }
        if let Some(v) = self.etcd_forward_wait {
            config.etcd.forward_wait = v;
        }
        if let Some(v) = self.etcd_user {
            config.etcd.user = Some(v);
        }
        if let Some(v) = self.etcd_password {
            config.etcd.password = Some(v);
        }
        if let Some(ca_file) = self.etcd_ca_file {
            config.etcd.tls = Some(trainfleet_core::kv::etcd::EtcdTls {
                ca_file,
                cert_file: self.etcd_cert_file,
                key_file: self.etcd_key_file,
                server_name: None,
            });
        }
        let origin = if overridden {
            format!("{origin} with flag/environment overrides")
        } else {
            origin
        };
        config.validate(&origin)?;
        Ok((config, self.addr_file))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("trainfleet-coordinator: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(mut args: Args) -> anyhow::Result<()> {
    if let Some(Command::Health {
        addr,
        service,
        timeout,
        workers,
        token_file,
        ca_cert,
        tls_server_name,
    }) = args.command.take()
    {
        let names = trainfleet_proto::TlsSettingNames {
            ca: "--ca-cert",
            cert: "--cert",
            key: "--key",
        };
        let tls = trainfleet_proto::ClientTls::from_files(ca_cert.as_deref(), None, None, &names)
            .map_err(anyhow::Error::msg)?
            .with_server_name(tls_server_name);
        let addr = addr.unwrap_or_else(|| match args.listen {
            Some(listen) if !listen.ip().is_unspecified() => listen.to_string(),
            Some(listen) => format!("127.0.0.1:{}", listen.port()),
            None => "127.0.0.1:50051".to_owned(),
        });
        trainfleet_coordinator::probe::check(&addr, &service, timeout, &tls)
            .await
            .map_err(anyhow::Error::msg)?;
        if workers == 0 {
            println!("{addr}: SERVING");
            return Ok(());
        }
        let token = match &token_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read the token file {}: {e}", path.display())
            })?),
            None => None,
        };
        let (alive, all) =
            trainfleet_coordinator::probe::workers(&addr, timeout, token.as_deref(), &tls)
                .await
                .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            alive >= workers,
            "{addr}: {alive} of {all} workers alive; wanted at least {workers}"
        );
        println!("{addr}: SERVING, {alive} of {all} workers alive");
        return Ok(());
    }
    let (config, addr_file) = args.into_config()?;
    let coordinator = Coordinator::bind(config).await?;
    if let Some(path) = addr_file {
        write_atomically(&path, &coordinator.local_addr().to_string())?;
    }
    let shutdown = CancellationToken::new();
    let signalled = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signalled.cancel();
    });
    coordinator.serve(shutdown).await?;
    Ok(())
}

/// Writes via a temporary file and rename, so a reader never sees a half-written address.
fn write_atomically(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
