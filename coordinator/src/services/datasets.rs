//! `trainfleet.v1.DatasetService`: registered datasets, scans and versions.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tonic::{Request, Response, Status};
use trainfleet_core::job::Builtin;
use trainfleet_core::policy::RetrainPolicy;
use trainfleet_core::schedule::Schedule;
use trainfleet_proto::v1;
use trainfleet_proto::v1::dataset_service_server::DatasetService;

use crate::auth::audit::AuditTarget;
use crate::error::Error;
use crate::records::{DatasetRecord, RetrainSweep};
use crate::state::State;

/// Serves datasets.
#[derive(Debug, Clone)]
pub struct DatasetApi {
    state: Arc<State>,
}

impl DatasetApi {
    /// The service over a replica's state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> Status {
    Error::from(trainfleet_core::Error::invalid_field(field, message)).into()
}

fn check_name(field: &str, name: &str) -> Result<(), Status> {
    if name.is_empty() || name.len() > 64 {
        return Err(invalid(field, "must be 1..=64 characters of [a-z0-9-]"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(invalid(
            field,
            format!("has {bad:?}; use only a-z, 0-9 and '-'"),
        ));
    }
    Ok(())
}

/// Validates a Register request into a record (without versions).
pub fn registration(req: v1::RegisterDatasetRequest) -> Result<DatasetRecord, Status> {
    use v1::dataset_source::Location;
    check_name("name", &req.name)?;
    let source = req.source.ok_or_else(|| invalid("source", "is required"))?;
    let format = |allowed: &[&str]| -> Result<String, Status> {
        match source.format.as_str() {
            "" => Ok("imagefolder".to_owned()),
            f if allowed.contains(&f) => Ok(f.to_owned()),
            other => Err(invalid(
                "source.format",
                format!("is {other:?}; this source takes {}", allowed.join(" or ")),
            )),
        }
    };
    let (directory, format, builtin, url) = match source.location.clone() {
        Some(Location::Directory(dir)) if !dir.is_empty() => {
            let format = format(&["imagefolder", "idx"])?;
            // Whether the directory exists is for a worker to say: the first scan runs where
            // the data is, and fails naming the path when it is not there.
            (dir, format, String::new(), String::new())
        }
        Some(Location::Builtin(name)) => {
            if Builtin::from_name(&name).is_none() {
                let names: Vec<&str> = Builtin::ALL.iter().map(|b| b.name()).collect();
                return Err(invalid(
                    "source.builtin",
                    format!("is {name:?}; the builtins are {}", names.join(", ")),
                ));
            }
            (String::new(), String::new(), name, String::new())
        }
        Some(Location::ObjectStoreUrl(url)) => {
            let format = format(&["imagefolder"])?;
            let parsed = url::Url::parse(&url)
                .map_err(|e| invalid("source.object_store_url", format!("is {url:?}: {e}")))?;
            if !["s3", "file", "memory", "gs", "az", "abfs"].contains(&parsed.scheme()) {
                return Err(invalid(
                    "source.object_store_url",
                    format!(
                        "has scheme {:?}; use s3://, gs://, az://, or file:// for a local prefix",
                        parsed.scheme()
                    ),
                ));
            }
            (String::new(), format, String::new(), url)
        }
        _ => {
            return Err(invalid(
                "source",
                "needs a `directory`, a `builtin` or an `object_store_url`",
            ));
        }
    };
    let p = req.policy.unwrap_or_default();
    if !(p.on_growth_pct.is_finite() && p.on_growth_pct >= 0.0) {
        return Err(invalid(
            "policy.on_growth_pct",
            format!("is {}; it must be >= 0 (0 disables)", p.on_growth_pct),
        ));
    }
    if !p.schedule.is_empty() {
        Schedule::parse(&p.schedule, &p.time_zone, "policy").map_err(Error::from)?;
    } else if !p.time_zone.is_empty() {
        Schedule::parse("0 0 * * *", &p.time_zone, "policy").map_err(Error::from)?;
    }
    let min_interval = p
        .min_interval
        .map(Duration::try_from)
        .transpose()
        .map_err(|_| invalid("policy.min_interval", "must not be negative"))?
        .unwrap_or_default();
    let record = DatasetRecord {
        name: req.name,
        directory,
        format,
        builtin,
        url,
        policy: RetrainPolicy {
            on_growth_pct: (p.on_growth_pct > 0.0).then_some(p.on_growth_pct),
            on_content_change: p.on_content_change,
            min_interval,
            schedule: (!p.schedule.is_empty()).then_some(p.schedule),
            time_zone: (!p.time_zone.is_empty()).then_some(p.time_zone),
            min_samples_per_class: p.min_samples_per_class.unwrap_or(1),
        },
        job_yaml: p.job_yaml,
        sweep: (!p.sweep_yaml.is_empty()).then(|| RetrainSweep {
            yaml: p.sweep_yaml,
            warm_start_top_k: p.warm_start_top_k.unwrap_or(3),
            warm_max_trials: p.warm_max_trials,
        }),
        created_at: SystemTime::now(),
        versions: Vec::new(),
        retrain: Default::default(),
    };
    // The job must make a valid retrain once pointed at this dataset (a builtin's fields, say,
    // are replaced; a model that cannot take image-folder input is refused now, not later).
    if !record.job_yaml.is_empty()
        && let Err(why) = crate::control::retrain_spec(&record, None)
    {
        return Err(invalid("policy.job_yaml", why));
    }
    if record.sweep.is_some() {
        if record.job_yaml.is_empty() {
            return Err(invalid(
                "policy.sweep_yaml",
                "is set without policy.job_yaml: a retrain sweep's base job is job_yaml",
            ));
        }
        if let Err(why) = crate::control::retrain_sweep(&record, None) {
            return Err(invalid("policy.sweep_yaml", why));
        }
    }
    if p.warm_start_top_k.is_some_and(|k| k > 100) {
        return Err(invalid(
            "policy.warm_start_top_k",
            "must be at most 100 (0 turns warm starts off)",
        ));
    }
    Ok(record)
}

#[tonic::async_trait]
impl DatasetService for DatasetApi {
    async fn register(
        &self,
        request: Request<v1::RegisterDatasetRequest>,
    ) -> Result<Response<v1::Dataset>, Status> {
        let record = registration(request.into_inner())?;
        let target = format!("dataset {}", record.name);
        let dataset = self.state.term()?.control.register_dataset(record).await?;
        Ok(AuditTarget::on(Response::new(dataset.to_wire()), target))
    }

    async fn list(
        &self,
        _request: Request<v1::ListDatasetsRequest>,
    ) -> Result<Response<v1::ListDatasetsResponse>, Status> {
        Ok(Response::new(v1::ListDatasetsResponse {
            datasets: self
                .state
                .term()?
                .control
                .datasets()
                .iter()
                .map(|d| d.to_wire())
                .collect(),
        }))
    }

    async fn scan(
        &self,
        request: Request<v1::ScanDatasetRequest>,
    ) -> Result<Response<v1::ScanDatasetResponse>, Status> {
        let req = request.into_inner();
        check_name("name", &req.name)?;
        let term = self.state.term()?;
        let (version, changed) = term.control.scan(&req.name, req.full, &term.stop).await?;
        Ok(AuditTarget::on(
            Response::new(v1::ScanDatasetResponse {
                version: Some(version.to_wire(&req.name)),
                changed,
            }),
            format!("dataset {}", req.name),
        ))
    }

    async fn list_versions(
        &self,
        request: Request<v1::ListDatasetVersionsRequest>,
    ) -> Result<Response<v1::ListDatasetVersionsResponse>, Status> {
        let req = request.into_inner();
        let before = match req.page_token.as_str() {
            "" => 0,
            token => token
                .parse()
                .map_err(|_| invalid("page_token", "is not a token this service issued"))?,
        };
        let size = match req.page_size as usize {
            0 => 50,
            n => n.min(500),
        };
        let (versions, next) = self
            .state
            .term()?
            .control
            .versions(&req.name, size, before)?;
        Ok(Response::new(v1::ListDatasetVersionsResponse {
            versions: versions.iter().map(|v| v.to_wire(&req.name)).collect(),
            next_page_token: if next == 0 {
                String::new()
            } else {
                next.to_string()
            },
        }))
    }

    async fn retrain(
        &self,
        request: Request<v1::RetrainRequest>,
    ) -> Result<Response<v1::RetrainDecision>, Status> {
        let req = request.into_inner();
        check_name("name", &req.name)?;
        Ok(Response::new(
            self.state
                .term()?
                .control
                .retrain(&req.name, &req.version, &req.reason)
                .await?
                .to_wire(),
        ))
    }

    async fn history(
        &self,
        request: Request<v1::DatasetHistoryRequest>,
    ) -> Result<Response<v1::DatasetHistoryResponse>, Status> {
        let req = request.into_inner();
        check_name("name", &req.name)?;
        let limit = match req.page_size as usize {
            0 => 50,
            n => n.min(1000),
        };
        Ok(Response::new(v1::DatasetHistoryResponse {
            decisions: self
                .state
                .term()?
                .control
                .history(&req.name, limit)?
                .iter()
                .map(|d| d.to_wire())
                .collect(),
        }))
    }

    async fn get_version(
        &self,
        request: Request<v1::GetDatasetVersionRequest>,
    ) -> Result<Response<v1::DatasetVersion>, Status> {
        let req = request.into_inner();
        Ok(Response::new(
            self.state
                .term()?
                .control
                .version(&req.name, &req.version)?
                .to_wire(&req.name),
        ))
    }
}
