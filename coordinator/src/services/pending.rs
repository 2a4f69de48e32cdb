//! Services whose wire surface is designed but whose capability lands in a later release. Every
//! method answers UNIMPLEMENTED with a message that says what it waits for, so a user exploring
//! the API with grpcurl learns the truth rather than getting an empty success.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};
use trainfleet_proto::v1;
use trainfleet_proto::v1::dataset_service_server::DatasetService;
use trainfleet_proto::v1::job_service_server::JobService;
use trainfleet_proto::v1::model_service_server::ModelService;
use trainfleet_proto::v1::sweep_service_server::SweepService;

use crate::error::Error;

const JOBS: &str = "job scheduling (training tasks on workers) is not built yet";
const DATASETS: &str = "dataset versions and retrain policies are not built yet";
const MODELS: &str = "the model registry and champion pointer are not built yet";
const SWEEPS: &str = "hyperparameter sweeps are not built yet";

fn pending<T>(method: &'static str, why: &'static str) -> Result<Response<T>, Status> {
    Err(Error::NotYetImplemented {
        method,
        version: trainfleet_core::VERSION,
        why,
    }
    .into())
}

/// `trainfleet.v1.JobService`, pending job scheduling.
#[derive(Debug, Default, Clone)]
pub struct JobApi;

#[tonic::async_trait]
impl JobService for JobApi {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::JobEvent, Status>> + Send>>;

    async fn submit(
        &self,
        _: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::SubmitJobResponse>, Status> {
        pending("trainfleet.v1.JobService/Submit", JOBS)
    }
    async fn get(&self, _: Request<v1::GetJobRequest>) -> Result<Response<v1::Job>, Status> {
        pending("trainfleet.v1.JobService/Get", JOBS)
    }
    async fn list(
        &self,
        _: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        pending("trainfleet.v1.JobService/List", JOBS)
    }
    async fn cancel(&self, _: Request<v1::CancelJobRequest>) -> Result<Response<v1::Job>, Status> {
        pending("trainfleet.v1.JobService/Cancel", JOBS)
    }
    async fn watch(
        &self,
        _: Request<v1::WatchJobRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        pending("trainfleet.v1.JobService/Watch", JOBS)
    }
}

/// `trainfleet.v1.DatasetService`, pending dataset versioning.
#[derive(Debug, Default, Clone)]
pub struct DatasetApi;

#[tonic::async_trait]
impl DatasetService for DatasetApi {
    async fn register(
        &self,
        _: Request<v1::RegisterDatasetRequest>,
    ) -> Result<Response<v1::Dataset>, Status> {
        pending("trainfleet.v1.DatasetService/Register", DATASETS)
    }
    async fn list(
        &self,
        _: Request<v1::ListDatasetsRequest>,
    ) -> Result<Response<v1::ListDatasetsResponse>, Status> {
        pending("trainfleet.v1.DatasetService/List", DATASETS)
    }
    async fn scan(
        &self,
        _: Request<v1::ScanDatasetRequest>,
    ) -> Result<Response<v1::ScanDatasetResponse>, Status> {
        pending("trainfleet.v1.DatasetService/Scan", DATASETS)
    }
    async fn list_versions(
        &self,
        _: Request<v1::ListDatasetVersionsRequest>,
    ) -> Result<Response<v1::ListDatasetVersionsResponse>, Status> {
        pending("trainfleet.v1.DatasetService/ListVersions", DATASETS)
    }
    async fn get_version(
        &self,
        _: Request<v1::GetDatasetVersionRequest>,
    ) -> Result<Response<v1::DatasetVersion>, Status> {
        pending("trainfleet.v1.DatasetService/GetVersion", DATASETS)
    }
}

/// `trainfleet.v1.ModelService`, pending the model registry.
#[derive(Debug, Default, Clone)]
pub struct ModelApi;

#[tonic::async_trait]
impl ModelService for ModelApi {
    async fn list(
        &self,
        _: Request<v1::ListModelsRequest>,
    ) -> Result<Response<v1::ListModelsResponse>, Status> {
        pending("trainfleet.v1.ModelService/List", MODELS)
    }
    async fn get(&self, _: Request<v1::GetModelRequest>) -> Result<Response<v1::Model>, Status> {
        pending("trainfleet.v1.ModelService/Get", MODELS)
    }
    async fn get_champion(
        &self,
        _: Request<v1::GetChampionRequest>,
    ) -> Result<Response<v1::Model>, Status> {
        pending("trainfleet.v1.ModelService/GetChampion", MODELS)
    }
    async fn promote(
        &self,
        _: Request<v1::PromoteModelRequest>,
    ) -> Result<Response<v1::Model>, Status> {
        pending("trainfleet.v1.ModelService/Promote", MODELS)
    }
    async fn rollback(
        &self,
        _: Request<v1::RollbackRequest>,
    ) -> Result<Response<v1::Model>, Status> {
        pending("trainfleet.v1.ModelService/Rollback", MODELS)
    }
}

/// `trainfleet.v1.SweepService`, pending sweeps.
#[derive(Debug, Default, Clone)]
pub struct SweepApi;

#[tonic::async_trait]
impl SweepService for SweepApi {
    async fn start(
        &self,
        _: Request<v1::StartSweepRequest>,
    ) -> Result<Response<v1::Sweep>, Status> {
        pending("trainfleet.v1.SweepService/Start", SWEEPS)
    }
    async fn get(&self, _: Request<v1::GetSweepRequest>) -> Result<Response<v1::Sweep>, Status> {
        pending("trainfleet.v1.SweepService/Get", SWEEPS)
    }
}
