//! Services whose wire surface is designed but whose capability lands in a later release. Every
//! method answers UNIMPLEMENTED with a message that says what it waits for, so a user exploring
//! the API with grpcurl learns the truth rather than getting an empty success.

use tonic::{Request, Response, Status};
use trainfleet_proto::v1;
use trainfleet_proto::v1::dataset_service_server::DatasetService;
use trainfleet_proto::v1::sweep_service_server::SweepService;

use crate::error::Error;

const DATASETS: &str = "dataset versions and retrain policies are not built yet";
const SWEEPS: &str = "hyperparameter sweeps are not built yet";

fn pending<T>(method: &'static str, why: &'static str) -> Result<Response<T>, Status> {
    Err(Error::NotYetImplemented {
        method,
        version: trainfleet_core::VERSION,
        why,
    }
    .into())
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
