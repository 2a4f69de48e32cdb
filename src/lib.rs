//! The `trainfleet` command-line tool.
//!
//! - [`cli`]: argument parsing and dispatch to a command.
//! - [`commands`]: one module per verb (`run`, `workers`).
//! - [`client`]: connecting to a coordinator.
//! - [`table`]: the human-readable output.
#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod commands;
pub mod table;
