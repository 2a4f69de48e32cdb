//! Experiment tracking in MLflow, through its REST API (`/api/2.0/mlflow/...` and the artifact
//! proxy `/api/2.0/mlflow-artifacts/...` that `mlflow server` serves by default).
//!
//! The eval task records each run once it is complete: the resolved config as params, every
//! epoch's metrics (step = epoch) and the test scores, tags (dataset root, config hash,
//! versions, device, the gate's decision), and the report and model files as artifacts. It is
//! idempotent: a run is found again by its `trainfleet.job_id` tag, metric points already there
//! are not sent twice, files are overwritten, so a retried eval leaves one complete MLflow run.
//!
//! MLflow being down never fails a job: every call is retried with backoff, and what could not
//! be recorded comes back as an error message the job reports (`JobResult.tracking_error`).
//! Credentials come from MLflow's own variables: `MLFLOW_TRACKING_TOKEN`, or
//! `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Attempts per call before giving up (so about 3.5 s of backoff when MLflow is down).
const ATTEMPTS: u32 = 4;
/// MLflow's own limits per `log-batch` call.
const BATCH_METRICS: usize = 1000;
const BATCH_PARAMS: usize = 100;
const BATCH_TAGS: usize = 100;
/// Longest param value MLflow accepts.
const PARAM_VALUE_MAX: usize = 6000;

/// Why a call to MLflow failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    /// MLflow answered with an error.
    #[error("MLflow {call}: HTTP {status}: {message}")]
    Refused {
        /// The API call.
        call: String,
        /// HTTP status.
        status: u16,
        /// MLflow's error code and message.
        message: String,
    },
    /// MLflow could not be reached (after retries).
    #[error("MLflow {call}: cannot reach {base} after {ATTEMPTS} attempts: {message}")]
    Unreachable {
        /// The API call.
        call: String,
        /// Server address.
        base: String,
        /// The last transport error.
        message: String,
    },
    /// Anything else: an unexpected answer, a file that cannot be read.
    #[error("MLflow: {0}")]
    Other(String),
}

impl TrackingError {
    fn code(&self) -> Option<&str> {
        match self {
            TrackingError::Refused { message, .. } => message.split(':').next(),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, TrackingError>;

/// An MLflow run as the server describes it.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// Run id.
    pub run_id: String,
    /// `mlflow-artifacts:/<experiment>/<run>/artifacts` when the server proxies artifacts.
    pub artifact_uri: String,
    /// RUNNING, FINISHED, FAILED or KILLED.
    pub status: String,
}

/// A client of one MLflow tracking server.
pub struct Mlflow {
    base: String,
    agent: ureq::Agent,
    auth: Option<String>,
    backoff: Duration,
}

impl Mlflow {
    /// A client of the server at `uri` (`http://host:port`, perhaps with a path prefix).
    pub fn new(uri: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        let auth = match (
            std::env::var("MLFLOW_TRACKING_TOKEN"),
            std::env::var("MLFLOW_TRACKING_USERNAME"),
            std::env::var("MLFLOW_TRACKING_PASSWORD"),
        ) {
            (Ok(token), _, _) if !token.is_empty() => Some(format!("Bearer {token}")),
            (_, Ok(user), Ok(password)) => {
                use base64::Engine;
                let pair =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(format!("Basic {pair}"))
            }
            _ => None,
        };
        Self {
            base: uri.trim_end_matches('/').to_owned(),
            agent,
            auth,
            backoff: Duration::from_millis(500),
        }
    }

    /// Sends one request, retrying transport errors, 429 and 5xx with exponential backoff.
    fn send(&self, call: &str, method: &str, path: &str, body: Body<'_>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut delay = self.backoff;
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                std::thread::sleep(delay);
                delay *= 2;
            }
            let mut request = ureq::http::Request::builder().method(method).uri(&url);
            if let Some(auth) = &self.auth {
                request = request.header("Authorization", auth);
            }
            let response = match body {
                Body::None => self.agent.run(request.body(()).expect("valid request")),
                Body::Json(value) => self.agent.run(
                    request
                        .header("Content-Type", "application/json")
                        .body(value.to_string())
                        .expect("valid request"),
                ),
                Body::File(path) => {
                    let bytes = std::fs::read(path).map_err(|e| {
                        TrackingError::Other(format!("cannot read {}: {e}", path.display()))
                    })?;
                    self.agent.run(
                        request
                            .header("Content-Type", "application/octet-stream")
                            .body(bytes)
                            .expect("valid request"),
                    )
                }
            };
            let mut response = match response {
                Ok(r) => r,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let status = response.status().as_u16();
            let text = response.body_mut().read_to_string().unwrap_or_default();
            if status == 429 || status >= 500 {
                last = format!(
                    "HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                );
                continue;
            }
            if !(200..300).contains(&status) {
                let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let message = match (parsed["error_code"].as_str(), parsed["message"].as_str()) {
                    (Some(code), Some(m)) => format!("{code}: {m}"),
                    _ => text.chars().take(300).collect(),
                };
                return Err(TrackingError::Refused {
                    call: call.to_owned(),
                    status,
                    message,
                });
            }
            return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        Err(TrackingError::Unreachable {
            call: call.to_owned(),
            base: self.base.clone(),
            message: last,
        })
    }

    fn post(&self, call: &str, body: Value) -> Result<Value> {
        self.send(
            call,
            "POST",
            &format!("/api/2.0/mlflow/{call}"),
            Body::Json(&body),
        )
    }

    fn get(&self, call: &str, query: &[(&str, &str)]) -> Result<Value> {
        let query: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", url_encode(v)))
            .collect();
        self.send(
            call,
            "GET",
            &format!("/api/2.0/mlflow/{call}?{}", query.join("&")),
            Body::None,
        )
    }

    /// The id of experiment `name`, created if it does not exist.
    pub fn experiment_id(&self, name: &str) -> Result<String> {
        let found = |v: Value| v["experiment"]["experiment_id"].as_str().map(str::to_owned);
        match self.get("experiments/get-by-name", &[("experiment_name", name)]) {
            Ok(v) => return found(v).ok_or_else(|| unexpected("experiments/get-by-name")),
            Err(e) if e.code() == Some("RESOURCE_DOES_NOT_EXIST") => {}
            Err(e) => return Err(e),
        }
        match self.post("experiments/create", json!({ "name": name })) {
            Ok(v) => v["experiment_id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| unexpected("experiments/create")),
            // Created meanwhile by another worker.
            Err(e) if e.code() == Some("RESOURCE_ALREADY_EXISTS") => {
                found(self.get("experiments/get-by-name", &[("experiment_name", name)])?)
                    .ok_or_else(|| unexpected("experiments/get-by-name"))
            }
            Err(e) => Err(e),
        }
    }

    /// The run tagged with `trainfleet.job_id = job_id` in `experiment`, if there is one.
    pub fn find_run(&self, experiment: &str, job_id: &str) -> Result<Option<RunInfo>> {
        let v = self.post(
            "runs/search",
            json!({
                "experiment_ids": [experiment],
                "filter": format!("tags.`trainfleet.job_id` = '{}'", job_id.replace('\'', "")),
                "max_results": 1,
            }),
        )?;
        Ok(v["runs"].get(0).map(|r| run_info(&r["info"])))
    }

    /// Starts a run.
    pub fn create_run(
        &self,
        experiment: &str,
        name: &str,
        start_ms: u64,
        tags: &BTreeMap<String, String>,
    ) -> Result<RunInfo> {
        let v = self.post(
            "runs/create",
            json!({
                "experiment_id": experiment,
                "run_name": name,
                "start_time": start_ms,
                "tags": key_values(tags),
            }),
        )?;
        Ok(run_info(&v["run"]["info"]))
    }

    /// The steps already recorded for metric `key`.
    pub fn steps(&self, run_id: &str, key: &str) -> Result<BTreeSet<i64>> {
        let v = self.get(
            "metrics/get-history",
            &[("run_id", run_id), ("metric_key", key)],
        )?;
        Ok(v["metrics"]
            .as_array()
            .map(|m| m.iter().filter_map(|p| p["step"].as_i64()).collect())
            .unwrap_or_default())
    }

    /// Logs params, metrics and tags, in batches within MLflow's limits.
    pub fn log(
        &self,
        run_id: &str,
        params: &BTreeMap<String, String>,
        metrics: &[Metric],
        tags: &BTreeMap<String, String>,
    ) -> Result<()> {
        let params = key_values(params);
        for chunk in params.chunks(BATCH_PARAMS) {
            self.post("runs/log-batch", json!({"run_id": run_id, "params": chunk}))?;
        }
        let tags = key_values(tags);
        for chunk in tags.chunks(BATCH_TAGS) {
            self.post("runs/log-batch", json!({"run_id": run_id, "tags": chunk}))?;
        }
        for chunk in metrics.chunks(BATCH_METRICS) {
            let metrics: Vec<Value> = chunk
                .iter()
                .map(|m| {
                    json!({"key": m.key, "value": m.value, "timestamp": m.timestamp_ms, "step": m.step})
                })
                .collect();
            self.post(
                "runs/log-batch",
                json!({"run_id": run_id, "metrics": metrics}),
            )?;
        }
        Ok(())
    }

    /// Uploads `file` as the run's artifact `path` (through the server's artifact proxy).
    pub fn upload(&self, run: &RunInfo, path: &str, file: &Path) -> Result<()> {
        let root = artifact_root(&run.artifact_uri)?;
        let target = format!(
            "/api/2.0/mlflow-artifacts/artifacts/{root}/{}",
            path.split('/')
                .map(url_encode)
                .collect::<Vec<_>>()
                .join("/")
        );
        self.send("artifact upload", "PUT", &target, Body::File(file))?;
        Ok(())
    }

    /// Ends the run with `status` (FINISHED, FAILED).
    pub fn finish(&self, run_id: &str, status: &str) -> Result<()> {
        self.post(
            "runs/update",
            json!({"run_id": run_id, "status": status, "end_time": now_ms()}),
        )?;
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Body<'a> {
    None,
    Json(&'a Value),
    File(&'a Path),
}

/// One metric point.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Name.
    pub key: String,
    /// Value (finite: MLflow rejects NaN in JSON).
    pub value: f64,
    /// Epoch, or 0 for final scores.
    pub step: i64,
    /// When, in ms since the Unix epoch.
    pub timestamp_ms: u64,
}

fn run_info(info: &Value) -> RunInfo {
    RunInfo {
        run_id: info["run_id"].as_str().unwrap_or_default().to_owned(),
        artifact_uri: info["artifact_uri"].as_str().unwrap_or_default().to_owned(),
        status: info["status"].as_str().unwrap_or_default().to_owned(),
    }
}

fn unexpected(call: &str) -> TrackingError {
    TrackingError::Other(format!("unexpected answer to {call}"))
}

fn key_values(map: &BTreeMap<String, String>) -> Vec<Value> {
    map.iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect()
}

/// The path under the artifact proxy for an `mlflow-artifacts:` URI.
fn artifact_root(uri: &str) -> Result<String> {
    let rest = uri.strip_prefix("mlflow-artifacts:").ok_or_else(|| {
        TrackingError::Other(format!(
            "the server keeps this run's artifacts at {uri}, which it does not serve; start \
             `mlflow server` with artifact serving (the default, or --serve-artifacts) so that \
             workers can upload through it"
        ))
    })?;
    // `mlflow-artifacts:/1/abc/artifacts` or `mlflow-artifacts://host:port/1/abc/artifacts`.
    let path = match rest.strip_prefix("//") {
        Some(with_host) => with_host.split_once('/').map_or("", |(_, p)| p),
        None => rest,
    };
    Ok(path.trim_matches('/').to_owned())
}

fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A config as MLflow params: nested keys joined with dots (`training.learning_rate`), lists
/// as JSON, values cut to MLflow's limit.
pub fn flatten_params(config: &Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            Value::Null => {}
            Value::String(s) => {
                out.insert(prefix.to_owned(), s.chars().take(PARAM_VALUE_MAX).collect());
            }
            other => {
                out.insert(
                    prefix.to_owned(),
                    other.to_string().chars().take(PARAM_VALUE_MAX).collect(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", config, &mut out);
    out
}

/// An epoch's metric points (step = epoch).
pub fn epoch_metrics(e: &crate::train::EpochReport, timestamp_ms: u64) -> Vec<Metric> {
    [
        ("train_loss", Some(e.train_loss)),
        ("train_accuracy", Some(e.train_accuracy)),
        ("val_loss", e.val_loss),
        ("val_accuracy", e.val_accuracy),
        ("learning_rate", Some(e.learning_rate)),
        ("images_per_sec", Some(e.images_per_sec)),
        ("epoch_seconds", Some(e.train_seconds)),
    ]
    .into_iter()
    .filter_map(|(key, value)| {
        value.filter(|v| v.is_finite()).map(|value| Metric {
            key: key.to_owned(),
            value,
            step: e.epoch as i64,
            timestamp_ms,
        })
    })
    .collect()
}

/// The tags a run gets as soon as it starts.
fn start_tags(job_id: &str, spec: &trainfleet_core::job::JobSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("trainfleet.job_id".to_owned(), job_id.to_owned()),
        ("trainfleet.job_name".into(), spec.name.clone()),
        ("trainfleet.config_hash".into(), spec.config_hash()),
        (
            "trainfleet.version".into(),
            trainfleet_core::VERSION.to_owned(),
        ),
    ])
}

/// A config's params, without `tracking` (where a run is recorded is not how it was trained).
fn spec_params(spec: &trainfleet_core::job::JobSpec) -> BTreeMap<String, String> {
    let mut value = serde_json::to_value(spec).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.remove("tracking");
    }
    flatten_params(&value)
}

/// Live tracking while a train task runs: the MLflow run is created (or found again, on a
/// resumed attempt) with its params when training starts, and each epoch's metrics are sent
/// as the epoch ends, so the curves grow in MLflow's UI during training. It runs on its own
/// thread behind a bounded queue: training never waits for MLflow. When MLflow cannot be
/// reached it stops trying and says so once; the eval task records the whole run at the end
/// anyway (and reports what it could not).
#[derive(Clone)]
pub struct Live {
    events: std::sync::mpsc::SyncSender<LiveEvent>,
}

enum LiveEvent {
    Epoch(Box<crate::train::EpochReport>),
    /// The run ended here for good: FAILED or KILLED.
    End(&'static str),
}

impl Live {
    /// Starts the tracker thread for job `job_id`.
    pub fn start(uri: &str, job_id: &str, spec: &trainfleet_core::job::JobSpec) -> Live {
        let (tx, rx) = std::sync::mpsc::sync_channel::<LiveEvent>(1024);
        let (uri, job_id, spec) = (uri.to_owned(), job_id.to_owned(), spec.clone());
        let spawned = std::thread::Builder::new()
            .name("mlflow-live".into())
            .spawn(move || {
                let client = Mlflow::new(&uri);
                let run = (|| -> Result<String> {
                    let experiment = client.experiment_id(spec.tracking.experiment_name())?;
                    let info = match client.find_run(&experiment, &job_id)? {
                        Some(info) => info,
                        None => {
                            client.create_run(&experiment, &job_id, now_ms(), &start_tags(&job_id, &spec))?
                        }
                    };
                    client.log(&info.run_id, &spec_params(&spec), &[], &BTreeMap::new())?;
                    Ok(info.run_id)
                })();
                let run_id = match run {
                    Ok(id) => id,
                    Err(e) => {
                        tracing::warn!(%job_id, error = %e, "MLflow: live tracking off for this run; the eval will record it");
                        return;
                    }
                };
                let stopped = |e: &TrackingError| {
                    tracing::warn!(%job_id, error = %e, "MLflow: live tracking stopped; the eval will record the rest");
                };
                for event in rx {
                    let epoch = match event {
                        LiveEvent::Epoch(epoch) => epoch,
                        LiveEvent::End(status) => {
                            if let Err(e) = client.finish(&run_id, status) {
                                stopped(&e);
                            }
                            return;
                        }
                    };
                    let mut points = epoch_metrics(&epoch, now_ms());
                    // A resumed attempt may replay an epoch a lost one already sent.
                    let sent = match points.first().map(|p| client.steps(&run_id, &p.key)) {
                        None => Default::default(),
                        Some(Ok(sent)) => sent,
                        Some(Err(e)) => return stopped(&e),
                    };
                    points.retain(|p| !sent.contains(&p.step));
                    if let Err(e) = client.log(&run_id, &BTreeMap::new(), &points, &BTreeMap::new()) {
                        return stopped(&e);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the MLflow tracker thread");
        }
        Live { events: tx }
    }

    /// Queues an epoch's metrics (dropped, never waited for, if the queue is full).
    pub fn epoch(&self, report: &crate::train::EpochReport) {
        let _ = self
            .events
            .try_send(LiveEvent::Epoch(Box::new(report.clone())));
    }

    /// Marks the run ended for good: `FAILED` (no attempt will follow) or `KILLED` (cancelled).
    pub fn end(&self, status: &'static str) {
        let _ = self.events.try_send(LiveEvent::End(status));
    }
}

/// What one run records in MLflow.
pub struct RunRecord<'a> {
    /// The job (found again by it).
    pub job_id: &'a str,
    /// The resolved spec (params, and where to track).
    pub spec: &'a trainfleet_core::job::JobSpec,
    /// The model card (device, versions, dataset identity).
    pub card: &'a crate::artifacts::ModelCard,
    /// Every epoch.
    pub epochs: &'a [crate::train::EpochReport],
    /// Headline scores of the challenger, and of the champion when it was scored.
    pub challenger: &'a BTreeMap<String, f64>,
    /// See `challenger`.
    pub champion: Option<&'a BTreeMap<String, f64>>,
    /// The gate's decision.
    pub gate: &'a trainfleet_core::gate::GateRecord,
    /// The registered dataset version's number (0: none).
    pub dataset_version: u64,
    /// trainfleet's URIs of the run's artifacts and report.
    pub run_uri: &'a str,
    /// See `run_uri`.
    pub report_uri: Option<&'a str>,
    /// Files to attach: artifact path in MLflow → local file.
    pub files: Vec<(String, std::path::PathBuf)>,
}

/// Records `run` in the MLflow server at `uri`; returns the MLflow run id.
pub fn record(uri: &str, run: &RunRecord<'_>) -> Result<String> {
    let client = Mlflow::new(uri);
    let experiment = client.experiment_id(run.spec.tracking.experiment_name())?;
    let card = run.card;
    let mut tags = BTreeMap::from([
        ("trainfleet.job_id".to_owned(), run.job_id.to_owned()),
        ("trainfleet.job_name".into(), run.spec.name.clone()),
        (
            "trainfleet.dataset_root".into(),
            card.dataset.root_sha256.clone(),
        ),
        (
            "trainfleet.dataset_source".into(),
            card.dataset.source.clone(),
        ),
        ("trainfleet.config_hash".into(), run.spec.config_hash()),
        (
            "trainfleet.version".into(),
            card.training.trainfleet_version.clone(),
        ),
        (
            "trainfleet.libtorch_version".into(),
            card.training.libtorch_version.clone(),
        ),
        ("trainfleet.device".into(), card.training.device.clone()),
        (
            "trainfleet.threads".into(),
            card.training.threads.to_string(),
        ),
        (
            "trainfleet.model_arch".into(),
            card.model.arch.name().to_owned(),
        ),
        (
            "trainfleet.weights_sha256".into(),
            card.weights_sha256.clone(),
        ),
        ("trainfleet.run_uri".into(), run.run_uri.to_owned()),
        (
            "trainfleet.gate.promoted".into(),
            run.gate.promoted.to_string(),
        ),
        (
            "trainfleet.gate.reasons".into(),
            run.gate.reasons.join("; "),
        ),
    ]);
    if run.dataset_version > 0 {
        tags.insert(
            "trainfleet.dataset_version".into(),
            run.dataset_version.to_string(),
        );
    }
    if !run.gate.champion_id.is_empty() {
        tags.insert(
            "trainfleet.champion_id".into(),
            run.gate.champion_id.clone(),
        );
    }
    if let Some(report) = run.report_uri {
        tags.insert("trainfleet.report_uri".into(), report.to_owned());
    }
    let existing = client.find_run(&experiment, run.job_id)?;
    let recorded_before = existing.is_some();
    let info = match existing {
        Some(info) => info,
        None => {
            let trained_ms: f64 = run.epochs.iter().map(|e| e.train_seconds * 1000.0).sum();
            let start = now_ms().saturating_sub(trained_ms as u64);
            client.create_run(&experiment, run.job_id, start, &tags)?
        }
    };
    let params = spec_params(run.spec);
    let now = now_ms();
    let mut metrics: Vec<Metric> = run
        .epochs
        .iter()
        .flat_map(|e| epoch_metrics(e, now))
        .collect();
    let finals = run
        .challenger
        .iter()
        .map(|(k, v)| (format!("test_{k}"), *v))
        .chain(
            run.champion
                .into_iter()
                .flatten()
                .map(|(k, v)| (format!("champion_{k}"), *v)),
        );
    for (key, value) in finals.filter(|(_, v)| v.is_finite()) {
        metrics.push(Metric {
            key,
            value,
            step: 0,
            timestamp_ms: now,
        });
    }
    if recorded_before {
        // A run recorded before (a retried eval): send only the points it lacks.
        let keys: BTreeSet<String> = metrics.iter().map(|m| m.key.clone()).collect();
        let mut present = BTreeMap::new();
        for key in keys {
            present.insert(key.clone(), client.steps(&info.run_id, &key)?);
        }
        metrics.retain(|m| !present[&m.key].contains(&m.step));
    }
    client.log(&info.run_id, &params, &metrics, &tags)?;
    for (path, file) in &run.files {
        client.upload(&info, path, file)?;
    }
    client.finish(&info.run_id, "FINISHED")?;
    Ok(info.run_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_flatten_to_dotted_params() {
        let params = flatten_params(&json!({
            "name": "x",
            "training": {"learning_rate": 0.001, "epochs": 3},
            "model": {"arch": "cnn", "channels": [8, 16]},
            "labels": {},
            "dataset": {"version": null},
        }));
        assert_eq!(
            params,
            BTreeMap::from([
                ("name".to_owned(), "x".to_owned()),
                ("training.learning_rate".into(), "0.001".into()),
                ("training.epochs".into(), "3".into()),
                ("model.arch".into(), "cnn".into()),
                ("model.channels".into(), "[8,16]".into()),
            ])
        );
    }

    #[test]
    fn artifact_roots_come_from_proxied_uris_only() {
        assert_eq!(
            artifact_root("mlflow-artifacts:/1/abc/artifacts").unwrap(),
            "1/abc/artifacts"
        );
        assert_eq!(
            artifact_root("mlflow-artifacts://h:5000/1/abc/artifacts").unwrap(),
            "1/abc/artifacts"
        );
        let err = artifact_root("file:///srv/mlruns/1/abc/artifacts").unwrap_err();
        assert!(err.to_string().contains("--serve-artifacts"), "{err}");
    }

    #[test]
    fn an_unreachable_server_is_retried_then_reported() {
        // A port nothing listens on: bind, take the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut client = Mlflow::new(&format!("http://127.0.0.1:{port}"));
        client.backoff = Duration::from_millis(1);
        let err = client.experiment_id("x").unwrap_err();
        assert!(matches!(err, TrackingError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains("after 4 attempts"), "{err}");
    }
}
