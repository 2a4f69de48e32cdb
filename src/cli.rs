//! Arguments and dispatch.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands;

/// trainfleet: retrain image classifiers automatically when their data changes.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a client verb finds the coordinator.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// Coordinator address: host:port or http://host:port.
    #[arg(
        long,
        env = "TRAINFLEET_ENDPOINT",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub endpoint: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a coordinator and a worker in this process (no services needed) and show them
    /// connected.
    Run(commands::run::RunArgs),
    /// List the workers a coordinator knows.
    Workers(commands::workers::WorkersArgs),
}

/// Parses arguments, runs the command, maps errors to a message and exit code.
pub fn main() -> ExitCode {
    trainfleet_core::process::init_tracing_with("warn");
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("trainfleet: error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => commands::run::run(args).await,
            Command::Workers(args) => commands::workers::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("trainfleet: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
