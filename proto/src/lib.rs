//! The trainfleet.v1 wire API.
//!
//! - [`v1`]: prost messages and tonic clients/servers generated from `proto/trainfleet/v1/*.proto`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors of those files (and the well-known types they
//!   import), registered with server reflection so that clients need no .proto files.
//!
//! Generated types stay at the edge: each crate converts them to its own domain types in one
//! `convert` module.
#![allow(missing_docs)]

pub mod tls;

pub use tls::{ClientTls, TlsSettingNames};

/// Generated code for package `trainfleet.v1`.
pub mod v1 {
    tonic::include_proto!("trainfleet.v1");
}

/// Encoded `FileDescriptorSet` of the trainfleet.v1 API, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("trainfleet_v1_descriptor");

/// Fully qualified names of the public services, in the order reflection lists them.
pub const PUBLIC_SERVICES: &[&str] = &[
    "trainfleet.v1.JobService",
    "trainfleet.v1.DatasetService",
    "trainfleet.v1.ModelService",
    "trainfleet.v1.ClusterService",
    "trainfleet.v1.SweepService",
    "trainfleet.v1.AccessService",
];

/// Fully qualified name of the internal worker protocol.
pub const WORKER_SERVICE: &str = "trainfleet.v1.WorkerService";

/// Health-check name that is SERVING only on the replica that leads now (`grpc.health.v1`).
/// `""` and the public service names are SERVING on every serving replica, leader or follower.
pub const LEADER_HEALTH_SERVICE: &str = "trainfleet.v1.Leader";

/// Adds `authorization: Bearer <token>` to every call (a coordinator with access control on
/// requires it); with no token it adds nothing. Clients wrap their channel with it:
/// `XServiceClient::with_interceptor(channel, Bearer::new(token))`.
#[derive(Debug, Clone, Default)]
pub struct Bearer {
    header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Bearer {
    /// For `token` (`None`: no header). Fails when the token is not printable ASCII.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        let header = match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| "the token has characters a header cannot carry".to_owned())?,
            ),
        };
        Ok(Self { header })
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry the bearer token: what the CLI and workers dial with.
pub type AuthChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;
