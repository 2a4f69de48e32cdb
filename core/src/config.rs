//! Coordinator and worker settings.
//!
//! Precedence, lowest first: built-in defaults, the YAML file, `TRAINFLEET_*` environment
//! variables, command-line flags (the binaries apply the last two with clap). Unknown keys are
//! refused with `file:line:column`, so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub mod tls;

pub use tls::{ClientTlsFiles, ServerTls};

/// Settings of a coordinator replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Address the gRPC server binds. Port 0 picks a free port (tests, embedded mode).
    pub listen: SocketAddr,
    /// Address clients and workers should use to reach this replica (reported by
    /// `ClusterService.GetLeader`); defaults to the bound address.
    pub advertise_address: Option<String>,
    /// How often workers are told to heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A worker silent for this long is lost and its tasks are requeued. Must exceed
    /// `heartbeat_interval` with room for a missed beat or two.
    #[serde(with = "humantime_serde")]
    pub lease_timeout: Duration,
    /// Longest a `PollTask` long-poll is held open.
    #[serde(with = "humantime_serde")]
    pub max_poll_wait: Duration,
    /// How long a lost worker stays listed before it is forgotten.
    #[serde(with = "humantime_serde")]
    pub lost_worker_retention: Duration,
    /// Where the coordinator keeps its state (the embedded store).
    pub data_dir: PathBuf,
    /// Where run artifacts go: a directory (shared with the workers), or an object-store URL
    /// such as `s3://bucket/prefix` (credentials from the usual `AWS_*` variables).
    pub artifacts: String,
    /// Where coordinator state lives: `embedded` (one file under `data_dir`; one replica) or
    /// `etcd` (replicas elect a leader; see `etcd`).
    pub store: StoreKind,
    /// The etcd cluster, when `store: etcd`.
    pub etcd: EtcdConfig,
    /// How long finished jobs stay in the state store before they move to the archive.
    pub retention: RetentionConfig,
    /// Who may call what: bearer tokens with roles.
    pub auth: AuthConfig,
    /// Where Prometheus scrapes `/metrics` (plain HTTP, a port of its own); none by default.
    pub metrics_listen: Option<SocketAddr>,
    /// TLS on the gRPC port (certificate files are reloaded when they change).
    pub tls: Option<ServerTls>,
    /// Serve on an address other machines can reach without TLS and access control. Refused
    /// unless set: anyone who can reach such a port could submit jobs, promote models or pose
    /// as a worker. Loopback addresses (`trainfleet run`, `demo`) need neither.
    pub insecure: bool,
}

/// Access control. With it on, every call but health needs `authorization: Bearer <token>`,
/// and the token's role must allow the method (see `proto/trainfleet/v1/access.proto`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require tokens.
    pub enabled: bool,
    /// A file holding the bootstrap secret (at least 32 characters; a mounted Kubernetes
    /// Secret): whoever presents it is the admin `bootstrap`, who makes the other tokens.
    /// Read at start; there is no built-in default.
    pub bootstrap_token_file: Option<PathBuf>,
    /// Tokens known before any admin makes one, each from a file (a mounted Secret), so that a
    /// deployment's workers and checks can call from the start: the role is one of viewer,
    /// submitter, admin, worker. Read at start, never stored; rotate by changing the file and
    /// restarting.
    pub static_tokens: Vec<StaticToken>,
}

/// A token from a file (see [`AuthConfig::static_tokens`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    /// Who holds it, as the audit trail names it.
    pub name: String,
    /// viewer, submitter, admin or worker.
    pub role: String,
    /// The file holding the secret (at least 32 characters).
    pub file: PathBuf,
}

/// When finished jobs leave the state store for the archive in the artifact store (where `Get`,
/// `List` and `runs show` still find them). A finished job is archived once it is not among the
/// newest `finished_jobs` finished jobs, or once it finished more than `finished_age` ago;
/// jobs a champion's lineage or a pending retrain refers to stay either way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Finished jobs kept in the store, newest first. Bounds the store and the leader's memory:
    /// a job with its tasks is about 5 KiB there.
    pub finished_jobs: usize,
    /// Finished jobs (and sweeps) older than this are archived even when fewer are kept.
    #[serde(with = "humantime_serde")]
    pub finished_age: Duration,
    /// Finished sweeps kept in the store with their trials, newest first; older ones move to
    /// the archive (`SweepService.Get` and `List` still find them).
    pub finished_sweeps: usize,
    /// How often the archiver looks for jobs to move.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            finished_jobs: 1000,
            finished_age: Duration::from_secs(7 * 24 * 3600),
            finished_sweeps: 100,
            interval: Duration::from_secs(30),
        }
    }
}

/// Where coordinator state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// A redb file under `data_dir`: one replica, no services needed.
    #[default]
    Embedded,
    /// etcd: replicas campaign for leadership; every write is fenced by the leader's key.
    Etcd,
}

/// How a coordinator uses etcd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// Client URLs of the members.
    pub endpoints: Vec<String>,
    /// Every key of this cluster starts with this; clusters sharing an etcd use different ones.
    pub prefix: String,
    /// TTL of the leader's lease: a leader that cannot renew it within this time steps down,
    /// and another replica takes over after it expires.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Deadline of one call to one member; a call that times out is retried on the next member
    /// (an etcd member that lost its raft leader can hold a request for seconds).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// How long a follower holds a forwarded public call while no leader is known or reachable
    /// (an election in progress) before answering UNAVAILABLE. A leader is normally elected
    /// within `lease_ttl` of the old one's death, so the default covers a failover.
    #[serde(with = "humantime_serde")]
    pub forward_wait: Duration,
    /// User name, when etcd has authentication on.
    pub user: Option<String>,
    /// Password of `user`; better given as `TRAINFLEET_ETCD_PASSWORD`.
    pub password: Option<String>,
    /// TLS to etcd (PEM files); the endpoints are then `https://`.
    pub tls: Option<crate::kv::etcd::EtcdTls>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            prefix: "/trainfleet/default".to_owned(),
            lease_ttl: Duration::from_secs(5),
            call_timeout: Duration::from_secs(2),
            forward_wait: Duration::from_secs(7),
            user: None,
            password: None,
            tls: None,
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            advertise_address: None,
            heartbeat_interval: Duration::from_secs(2),
            lease_timeout: Duration::from_secs(10),
            max_poll_wait: Duration::from_secs(30),
            lost_worker_retention: Duration::from_secs(3600),
            data_dir: PathBuf::from(".trainfleet/state"),
            artifacts: ".trainfleet/artifacts".to_owned(),
            store: StoreKind::default(),
            etcd: EtcdConfig::default(),
            retention: RetentionConfig::default(),
            auth: AuthConfig::default(),
            metrics_listen: None,
            tls: None,
            insecure: false,
        }
    }
}

impl CoordinatorConfig {
    /// Reads and validates a YAML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = load_yaml_file(path)?;
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    /// Checks values that parse but make no sense together. `origin` names where they came from.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let invalid = |field: &str, message: String| Error::InvalidConfig {
            origin: origin.to_owned(),
            field: field.to_owned(),
            message,
        };
        if self.heartbeat_interval.is_zero() {
            return Err(invalid(
                "heartbeat_interval",
                "must be greater than 0".into(),
            ));
        }
        if self.lease_timeout <= self.heartbeat_interval {
            return Err(invalid(
                "lease_timeout",
                format!(
                    "({}) must be longer than heartbeat_interval ({}), or every worker is lost \
                     between two beats; 3-5x the interval is usual",
                    humantime::format_duration(self.lease_timeout),
                    humantime::format_duration(self.heartbeat_interval)
                ),
            ));
        }
        if self.max_poll_wait.is_zero() {
            return Err(invalid("max_poll_wait", "must be greater than 0".into()));
        }
        let protected = self.tls.is_some() && self.auth.enabled;
        if !(self.listen.ip().is_loopback() || protected || self.insecure) {
            let missing = match (self.tls.is_some(), self.auth.enabled) {
                (false, false) => "without TLS or access control (tls, auth.enabled)",
                (false, true) => "without TLS (tls.cert_file, tls.key_file)",
                _ => "without access control (auth.enabled)",
            };
            return Err(invalid(
                "listen",
                format!(
                    "is {}, which other machines can reach, {missing}: anyone there could \
                     submit jobs, promote models or pose as a worker. Turn both on, listen on \
                     127.0.0.1, or pass --insecure (insecure: true) to serve it unprotected",
                    self.listen
                ),
            ));
        }
        if self.retention.interval.is_zero() {
            return Err(invalid(
                "retention.interval",
                "must be greater than 0".into(),
            ));
        }
        if self.store == StoreKind::Etcd {
            if self.etcd.endpoints.is_empty() {
                return Err(invalid(
                    "etcd.endpoints",
                    "needs at least one client URL".into(),
                ));
            }
            if let Some(bad) = self
                .etcd
                .endpoints
                .iter()
                .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
            {
                return Err(invalid(
                    "etcd.endpoints",
                    format!("has {bad:?}; use http://host:2379"),
                ));
            }
            if !self.etcd.prefix.starts_with('/') || self.etcd.prefix.len() < 2 {
                return Err(invalid(
                    "etcd.prefix",
                    format!(
                        "is {:?}; it must start with '/' and name the cluster",
                        self.etcd.prefix
                    ),
                ));
            }
            if self.etcd.lease_ttl < Duration::from_secs(1) {
                return Err(invalid(
                    "etcd.lease_ttl",
                    "must be at least 1s (etcd grants whole seconds)".into(),
                ));
            }
            if self.etcd.tls.is_some()
                && let Some(plain) = self
                    .etcd
                    .endpoints
                    .iter()
                    .find(|e| e.starts_with("http://"))
            {
                return Err(invalid(
                    "etcd.endpoints",
                    format!("has {plain:?}, but etcd.tls is set: use https://"),
                ));
            }
            if self.etcd.user.is_some() != self.etcd.password.is_some() {
                return Err(invalid("etcd.user", "and etcd.password go together".into()));
            }
        }
        for (i, token) in self.auth.static_tokens.iter().enumerate() {
            if !["viewer", "submitter", "admin", "worker"].contains(&token.role.as_str()) {
                return Err(invalid(
                    &format!("auth.static_tokens[{i}].role"),
                    format!(
                        "is {:?}; use viewer, submitter, admin or worker",
                        token.role
                    ),
                ));
            }
            let name_ok = !token.name.is_empty()
                && token.name.len() <= 64
                && token
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !name_ok {
                return Err(invalid(
                    &format!("auth.static_tokens[{i}].name"),
                    format!(
                        "is {:?}; use 1-64 of letters, digits, '.', '_', '-'",
                        token.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Settings of a worker process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Coordinator to dial: `host:port` or `http://host:port`.
    pub coordinator: String,
    /// Stable worker id; default `<hostname>-<random>`, new on every start.
    pub worker_id: Option<String>,
    /// Tasks run at once.
    pub slots: u32,
    /// Where datasets are cached and read.
    pub data_dir: PathBuf,
    /// Where run artifacts are written before upload.
    pub artifact_dir: PathBuf,
    /// First delay before reconnecting to an unreachable coordinator; doubles up to
    /// `reconnect_max`, with jitter.
    #[serde(with = "humantime_serde")]
    pub reconnect_initial: Duration,
    /// Longest delay between reconnection attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// How long each `PollTask` long-poll may wait (the coordinator caps it).
    #[serde(with = "humantime_serde")]
    pub poll_wait: Duration,
    /// Labels reported at registration (placement hints).
    pub labels: BTreeMap<String, String>,
    /// Where jobs may read data from: absolute directories (`/srv/datasets`, `file:///mnt/x`)
    /// and object-store prefixes (`s3://bucket/datasets`). A job naming a path or URL outside
    /// them is refused before anything is read (symlinks and `..` resolved). `data_dir`, the
    /// worker's own cache, is always allowed; nothing else is by default.
    pub data_roots: Vec<String>,
    /// Where Prometheus scrapes `/metrics` (plain HTTP); none by default.
    pub metrics_listen: Option<SocketAddr>,
    /// TLS to the coordinator: its CA, and this worker's client certificate and key.
    pub tls: Option<ClientTlsFiles>,
    /// A file holding this worker's token (role `worker`), for a coordinator with access
    /// control on; `TRAINFLEET_TOKEN_FILE` or `--token-file` override it.
    pub token_file: Option<PathBuf>,
    /// Base URL of a dataset mirror, tried before the canonical URLs (`{mirror}/{dataset}/{file}`);
    /// `TRAINFLEET_DATASET_MIRROR` overrides it.
    pub dataset_mirror: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            coordinator: "127.0.0.1:50051".to_owned(),
            worker_id: None,
            slots: 1,
            data_dir: PathBuf::from(".trainfleet/data"),
            artifact_dir: PathBuf::from(".trainfleet/artifacts"),
            reconnect_initial: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
            poll_wait: Duration::from_secs(20),
            labels: BTreeMap::new(),
            data_roots: Vec::new(),
            metrics_listen: None,
            tls: None,
            token_file: None,
            dataset_mirror: None,
        }
    }
}

impl WorkerConfig {
    /// Reads and validates a YAML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = load_yaml_file(path)?;
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    /// Checks values that parse but cannot work. `origin` names where they came from.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let invalid = |field: &str, message: String| Error::InvalidConfig {
            origin: origin.to_owned(),
            field: field.to_owned(),
            message,
        };
        if self.coordinator.trim().is_empty() {
            return Err(invalid(
                "coordinator",
                "must name host:port of a coordinator".into(),
            ));
        }
        if self.slots == 0 {
            return Err(invalid("slots", "must be at least 1".into()));
        }
        if let Some(id) = &self.worker_id {
            crate::ids::validate_worker_id("worker_id", id).map_err(|e| match e {
                Error::InvalidField { message, .. } => invalid("worker_id", message),
                other => other,
            })?;
        }
        if self.reconnect_initial.is_zero() || self.reconnect_initial > self.reconnect_max {
            return Err(invalid(
                "reconnect_initial",
                "must be greater than 0 and at most reconnect_max".into(),
            ));
        }
        crate::data_roots::DataRoots::check_entries(&self.data_roots, "data_roots").map_err(
            |e| match e {
                Error::InvalidField { field, message } => invalid(&field, message),
                other => other,
            },
        )?;
        Ok(())
    }
}

/// Reads a YAML file into `T`; an empty file gives `T::default()`.
pub fn load_yaml_file<T: DeserializeOwned + Default>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadConfig {
        path: path.to_owned(),
        source,
    })?;
    parse_yaml(&text, &path.display().to_string())
}

/// Parses YAML text into `T`, reporting errors as `origin:line:column: message`.
pub fn parse_yaml<T: DeserializeOwned + Default>(text: &str, origin: &str) -> Result<T> {
    match serde_yaml::from_str::<Option<T>>(text) {
        Ok(value) => Ok(value.unwrap_or_default()),
        Err(err) => Err(yaml_error(origin, &err)),
    }
}

/// Turns a serde_yaml error into `origin:line:column: message` (serde_yaml appends
/// " at line L column C" to its message; we move that to the front where editors look for it).
pub fn yaml_error(origin: &str, err: &serde_yaml::Error) -> Error {
    let mut message = err.to_string();
    let location = match err.location() {
        Some(loc) => {
            if let Some(cut) = message.rfind(" at line ") {
                message.truncate(cut);
            }
            format!("{origin}:{}:{}", loc.line(), loc.column())
        }
        None => origin.to_owned(),
    };
    Error::ParseConfig { location, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typo_names_file_line_and_column() {
        let text = "listen: 127.0.0.1:7000\nheartbeat_intervall: 3s\n";
        let err = parse_yaml::<CoordinatorConfig>(text, "coord.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("coord.yaml:2:1: unknown field `heartbeat_intervall`"),
            "{err}"
        );
        assert!(err.contains("expected one of `listen`"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_place() {
        let err = parse_yaml::<WorkerConfig>("slots: many\n", "w.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("w.yaml:1:"), "{err}");
        assert!(err.contains("slots"), "{err}");
    }

    #[test]
    fn empty_file_gives_defaults_and_values_override_them() {
        assert_eq!(
            parse_yaml::<WorkerConfig>("# nothing\n", "w").unwrap(),
            WorkerConfig::default()
        );
        let c: CoordinatorConfig =
            parse_yaml("lease_timeout: 1m 30s\nheartbeat_interval: 500ms\n", "c").unwrap();
        assert_eq!(c.lease_timeout, Duration::from_secs(90));
        assert_eq!(c.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(c.listen, CoordinatorConfig::default().listen);
    }

    #[test]
    fn lease_shorter_than_interval_is_refused() {
        let c = CoordinatorConfig {
            lease_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let err = c.validate("c.yaml").unwrap_err().to_string();
        assert!(
            err.starts_with("c.yaml: `lease_timeout` (1s) must be longer"),
            "{err}"
        );
    }

    #[test]
    fn worker_validation_names_the_field() {
        let w = WorkerConfig {
            slots: 0,
            ..Default::default()
        };
        assert_eq!(
            w.validate("w.yaml").unwrap_err().to_string(),
            "w.yaml: `slots` must be at least 1"
        );
        let w = WorkerConfig {
            worker_id: Some("a/b".into()),
            ..Default::default()
        };
        assert!(
            w.validate("w.yaml")
                .unwrap_err()
                .to_string()
                .contains("`worker_id` has '/'")
        );
    }

    #[test]
    fn missing_file_says_which() {
        let err = CoordinatorConfig::from_file(Path::new("/nonexistent/c.yaml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/c.yaml"), "{err}");
    }
}
