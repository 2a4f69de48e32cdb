//! The trainfleet.v1 wire API.
//!
//! - [`v1`]: prost messages and tonic clients/servers generated from `proto/trainfleet/v1/*.proto`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors of those files (and the well-known types they
//!   import), registered with server reflection so that clients need no .proto files.
//!
//! Generated types stay at the edge: each crate converts them to its own domain types in one
//! `convert` module.
#![allow(missing_docs)]

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
];

/// Fully qualified name of the internal worker protocol.
pub const WORKER_SERVICE: &str = "trainfleet.v1.WorkerService";

/// Health-check name that is SERVING only on the replica that leads now (`grpc.health.v1`).
/// `""` and the public service names are SERVING on every serving replica, leader or follower.
pub const LEADER_HEALTH_SERVICE: &str = "trainfleet.v1.Leader";
