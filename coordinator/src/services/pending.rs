//! Services whose wire surface is designed but whose capability lands in a later release. Every
//! method answers UNIMPLEMENTED with a message that says what it waits for, so a user exploring
//! the API with grpcurl learns the truth rather than getting an empty success.

use tonic::{Request, Response, Status};
use trainfleet_proto::v1;
use trainfleet_proto::v1::sweep_service_server::SweepService;

use crate::error::Error;

const SWEEPS: &str = "hyperparameter sweeps are not built yet";

fn pending<T>(method: &'static str, why: &'static str) -> Result<Response<T>, Status> {
    Err(Error::NotYetImplemented {
        method,
        version: trainfleet_core::VERSION,
        why,
    }
    .into())
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
