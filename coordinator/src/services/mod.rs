//! gRPC service implementations. Each is a thin adapter: convert the request (`crate::convert`),
//! call the domain layer, convert the answer back. Errors are `crate::Error` and become a
//! `tonic::Status` through its single `From` impl.

pub mod access;
pub mod cluster;
pub mod datasets;
pub mod jobs;
pub mod models;
pub mod sweeps;
pub mod worker;
