//! The retrain policy's decisions: `trainfleet retrain` asks for one, `dataset history` lists
//! them (a retrain that runs a sweep shows the sweep and what it was warm-started from).

use serde_json::json;
use trainfleet_proto::v1;

use super::datasets::{NameArgs, client, print_json, short, time};
use crate::cli::Remote;
use crate::client::status_error;
use crate::table;

/// Arguments of `trainfleet retrain`.
#[derive(Debug, clap::Args)]
pub struct RetrainArgs {
    #[command(flatten)]
    remote: Remote,
    /// Dataset name.
    name: String,
    /// Version: number or root hash (default: the latest).
    #[arg(long, default_value = "")]
    version: String,
    /// Why, recorded with the decision.
    #[arg(long, default_value = "")]
    reason: String,
}

pub(super) async fn history(args: NameArgs) -> anyhow::Result<()> {
    let decisions = client(&args.remote.endpoint)
        .await?
        .history(v1::DatasetHistoryRequest {
            name: args.name,
            page_size: 1000,
        })
        .await
        .map_err(|s| status_error("History", s))?
        .into_inner()
        .decisions;
    if args.remote.json {
        return print_json(&json!(
            decisions.iter().map(decision_json).collect::<Vec<_>>()
        ));
    }
    if decisions.is_empty() {
        println!("no retrain decisions yet");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = decisions
        .iter()
        .map(|d| {
            vec![
                time(&d.decided_at),
                d.trigger.clone(),
                format!("v{} {}", d.version_number, short(&d.version_root)),
                outcome_name(d.outcome).to_owned(),
                retrain_of(d),
                d.reason.clone(),
            ]
        })
        .collect();
    println!(
        "{}",
        table::render(
            &[
                "DECIDED", "TRIGGER", "VERSION", "OUTCOME", "RETRAIN", "REASON"
            ],
            &rows
        )
    );
    Ok(())
}

/// `trainfleet retrain`: asks the policy for a retrain now.
pub async fn retrain(args: RetrainArgs) -> anyhow::Result<()> {
    let d = client(&args.remote.endpoint)
        .await?
        .retrain(v1::RetrainRequest {
            name: args.name,
            version: args.version,
            reason: args.reason,
        })
        .await
        .map_err(|s| status_error("Retrain", s))?
        .into_inner();
    if args.remote.json {
        return print_json(&decision_json(&d));
    }
    print_decision(&d);
    Ok(())
}

/// What a decision queued: `job j-…`, or `sweep s-… (8 trials, 3 warm from s-…)`.
fn retrain_of(d: &v1::RetrainDecision) -> String {
    if !d.sweep_id.is_empty() {
        let warm = if d.warm_start_configs > 0 {
            format!(", {} warm from {}", d.warm_start_configs, d.warm_start_from)
        } else {
            String::new()
        };
        format!("sweep {} ({} trials{warm})", d.sweep_id, d.sweep_trials)
    } else if !d.job_id.is_empty() {
        format!("job {}", d.job_id)
    } else {
        String::new()
    }
}

/// One decision as a line a person reads.
pub fn print_decision(d: &v1::RetrainDecision) {
    let job = match retrain_of(d) {
        what if what.is_empty() => what,
        what => format!(" → {what}"),
    };
    println!(
        "{} v{}: {}{job}: {}",
        d.dataset,
        d.version_number,
        outcome_name(d.outcome),
        d.reason
    );
}

/// The outcome's lower-case name.
pub fn outcome_name(outcome: i32) -> &'static str {
    use v1::retrain_decision::Outcome;
    match Outcome::try_from(outcome) {
        Ok(Outcome::Fired) => "fired",
        Ok(Outcome::Coalesced) => "coalesced",
        Ok(Outcome::Skipped) => "skipped",
        Ok(Outcome::Deferred) => "deferred",
        _ => "unknown",
    }
}

fn decision_json(d: &v1::RetrainDecision) -> serde_json::Value {
    json!({
        "dataset": d.dataset, "decided_at": time(&d.decided_at), "trigger": d.trigger,
        "version": d.version_number, "root": d.version_root,
        "outcome": outcome_name(d.outcome), "reason": d.reason, "job_id": d.job_id,
        "sweep_id": d.sweep_id, "sweep_trials": d.sweep_trials,
        "warm_start_from": d.warm_start_from, "warm_start_configs": d.warm_start_configs,
        "defer_until": d.defer_until.map(|t| t.to_string()),
    })
}
