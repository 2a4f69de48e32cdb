//! `trainfleet audit`: the coordinator's audit trail (admins), newest first: who called what,
//! on what, and how it ended.

use serde_json::json;
use trainfleet_proto::v1;
use trainfleet_proto::v1::access_service_client::AccessServiceClient;

use crate::cli::Remote;
use crate::client::{connect, status_error};
use crate::commands::tokens::{role_name, time};
use crate::table;

/// Arguments of `trainfleet audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    remote: Remote,
    /// How many entries, newest first.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

/// Prints the audit trail as a table or JSON.
pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let entries = AccessServiceClient::new(connect(&args.remote.endpoint).await?)
        .list_audit(v1::ListAuditRequest { limit: args.limit })
        .await
        .map_err(|s| status_error("ListAudit", s))?
        .into_inner()
        .entries;
    if args.remote.json {
        let all: Vec<_> = entries
            .iter()
            .map(|e| {
                json!({
                    "at": time(e.at.as_ref()),
                    "caller": e.caller,
                    "role": role_name(e.role),
                    "method": e.method,
                    "target": e.target,
                    "outcome": e.outcome,
                    "message": e.message,
                    "replica": e.replica,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("no audited calls");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                time(e.at.as_ref()),
                e.caller.clone(),
                role_name(e.role).to_owned(),
                e.method.trim_start_matches("trainfleet.v1.").to_owned(),
                e.target.clone(),
                e.outcome.clone(),
                e.replica.clone(),
            ]
        })
        .collect();
    println!(
        "{}",
        table::render(
            &[
                "AT", "CALLER", "ROLE", "METHOD", "TARGET", "OUTCOME", "REPLICA"
            ],
            &rows
        )
    );
    Ok(())
}
