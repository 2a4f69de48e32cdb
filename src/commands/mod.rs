//! One module per CLI verb.

pub mod audit;
pub mod datasets;
pub mod decisions;
pub mod demo;
pub mod jobs;
pub mod run;
pub mod runs;
pub mod sweeps;
pub mod tokens;
pub mod workers;
