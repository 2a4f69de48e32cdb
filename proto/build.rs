//! Generates the trainfleet.v1 types and services, plus the encoded file-descriptor set that
//! server reflection serves (so `grpcurl` needs no .proto files).

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "trainfleet/v1/common.proto",
    "trainfleet/v1/worker.proto",
    "trainfleet/v1/cluster.proto",
    "trainfleet/v1/jobs.proto",
    "trainfleet/v1/datasets.proto",
    "trainfleet/v1/models.proto",
    "trainfleet/v1/sweeps.proto",
    "trainfleet/v1/access.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("trainfleet_v1_descriptor.bin"))
        .compile_protos(PROTOS, &["."])?;
    Ok(())
}
