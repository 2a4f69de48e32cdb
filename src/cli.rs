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
    /// A file with the bearer token calls carry (a coordinator with access control on);
    /// otherwise TRAINFLEET_TOKEN, if set.
    #[arg(long, env = "TRAINFLEET_TOKEN_FILE", global = true)]
    token_file: Option<std::path::PathBuf>,
    /// The CA of the coordinator's certificate (PEM): dial it with TLS (addresses without a
    /// scheme become https://).
    #[arg(long, env = "TRAINFLEET_CA_CERT", global = true)]
    ca_cert: Option<std::path::PathBuf>,
    /// Verify the coordinators' certificate as this name (a Service name it carries) instead of
    /// the dialed host: the leader's advertised address may be a pod IP.
    #[arg(long, env = "TRAINFLEET_TLS_SERVER_NAME", global = true)]
    tls_server_name: Option<String>,
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
    /// The retrain loop on synth-digits, offline: the data grows from 50 % to 100 %, scheduled
    /// scans notice, the policy retrains, the gate decides, the champion's lineage at the end.
    Demo(commands::demo::DemoArgs),
    /// Start a coordinator and a worker in this process (no services needed) and show them
    /// connected.
    Run(commands::run::RunArgs),
    /// List the workers a coordinator knows.
    Workers(commands::workers::WorkersArgs),
    /// Submit a job (YAML) to a coordinator.
    Submit(commands::jobs::SubmitArgs),
    /// Follow a job until it ends.
    Watch(commands::jobs::JobArgs),
    /// Show one job.
    Status(commands::jobs::JobArgs),
    /// List jobs, newest first.
    Jobs(commands::jobs::JobsArgs),
    /// Cancel a job (its worker stops within one batch).
    Cancel(commands::jobs::CancelArgs),
    /// List models; champions are marked.
    Models(commands::jobs::ModelsArgs),
    /// Training runs as experiments: list, show (params, epochs, system, artifact hashes),
    /// compare (a table and an HTML page with the curves overlaid).
    #[command(subcommand)]
    Runs(commands::runs::RunsCommand),
    /// Registered datasets: register, list, scan, versions, history.
    #[command(subcommand)]
    Dataset(commands::datasets::DatasetCommand),
    /// Ask a dataset's retrain policy for a retrain now (idempotency and min_interval apply).
    Retrain(commands::decisions::RetrainArgs),
    /// Make a model its dataset's champion by hand.
    Promote(commands::datasets::PromoteArgs),
    /// Move a dataset's champion pointer back to the previous champion.
    Rollback(commands::datasets::RollbackArgs),
    /// The audit trail (admins): state-changing and refused calls, newest first.
    Audit(commands::audit::AuditArgs),
    /// Bearer tokens (admins): create, list, revoke.
    #[command(subcommand)]
    Token(commands::tokens::TokenCommand),
    /// Hyperparameter sweeps: start, status, list, cancel, report.
    #[command(subcommand)]
    Sweep(commands::sweeps::SweepCommand),
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
    if let Err(err) = crate::client::set_token(cli.token_file.as_deref())
        .and_then(|()| crate::client::set_tls(cli.ca_cert.as_deref(), cli.tls_server_name.clone()))
    {
        eprintln!("trainfleet: error: {err:#}");
        return ExitCode::FAILURE;
    }
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => commands::demo::run(args).await,
            Command::Run(args) => commands::run::run(args).await,
            Command::Workers(args) => commands::workers::run(args).await,
            Command::Submit(args) => commands::jobs::submit(args).await,
            Command::Watch(args) => commands::jobs::watch_cmd(args).await,
            Command::Status(args) => commands::jobs::status(args).await,
            Command::Jobs(args) => commands::jobs::list(args).await,
            Command::Cancel(args) => commands::jobs::cancel(args).await,
            Command::Models(args) => commands::jobs::models(args).await,
            Command::Runs(command) => commands::runs::run(command).await,
            Command::Dataset(command) => commands::datasets::run(command).await,
            Command::Retrain(args) => commands::decisions::retrain(args).await,
            Command::Promote(args) => commands::datasets::promote(args).await,
            Command::Rollback(args) => commands::datasets::rollback(args).await,
            Command::Token(command) => commands::tokens::run(command).await,
            Command::Audit(args) => commands::audit::run(args).await,
            Command::Sweep(command) => commands::sweeps::run(command).await,
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
