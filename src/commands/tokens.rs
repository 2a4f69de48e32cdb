//! `trainfleet token create|list|revoke`: bearer tokens for a coordinator with access control on
//! (admins only). A new token's secret is printed once; the coordinator keeps only its hash.

use std::time::Duration;

use serde_json::json;
use trainfleet_proto::v1;
use trainfleet_proto::v1::access_service_client::AccessServiceClient;

use crate::cli::Remote;
use crate::client::{connect, status_error};
use crate::table;

/// `trainfleet token ...`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token; its secret is printed once (to stdout, alone, for `> file`).
    Create(CreateArgs),
    /// List tokens (never their secrets).
    List(ListArgs),
    /// Revoke a token by id or name: every replica refuses it within a second.
    Revoke(RevokeArgs),
}

/// Arguments of `trainfleet token create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    remote: Remote,
    /// Unique name: who or what holds it, e.g. ci-pipeline.
    #[arg(long)]
    name: String,
    /// What it may do.
    #[arg(long, value_enum)]
    role: RoleArg,
    /// Lifetime, e.g. 30days; no expiry when absent.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
}

/// Arguments of `trainfleet token list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    remote: Remote,
}

/// Arguments of `trainfleet token revoke`.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    remote: Remote,
    /// The token's id or name.
    token: String,
}

/// Roles a token can have.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    /// Reads everything.
    Viewer,
    /// Reads; submits and cancels its own jobs; scans and retrains datasets.
    Submitter,
    /// Everything, including promotion, rollback, dataset registration and tokens.
    Admin,
    /// The worker protocol only.
    Worker,
}

/// Runs a token verb.
pub async fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create(args) => create(args).await,
        TokenCommand::List(args) => list(args).await,
        TokenCommand::Revoke(args) => revoke(args).await,
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let role = match args.role {
        RoleArg::Viewer => v1::Role::Viewer,
        RoleArg::Submitter => v1::Role::Submitter,
        RoleArg::Admin => v1::Role::Admin,
        RoleArg::Worker => v1::Role::Worker,
    };
    let answer = AccessServiceClient::new(connect(&args.remote.endpoint).await?)
        .create_token(v1::CreateTokenRequest {
            name: args.name,
            role: role as i32,
            ttl: args
                .ttl
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
        })
        .await
        .map_err(|s| status_error("CreateToken", s))?
        .into_inner();
    let token = answer.token.unwrap_or_default();
    if args.remote.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"token": token_json(&token), "secret": answer.secret})
            )?
        );
    } else {
        eprintln!(
            "token {} ({}, {}) made; its secret follows and is not shown again:",
            token.name,
            token.id,
            role_name(token.role)
        );
        println!("{}", answer.secret);
    }
    Ok(())
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let tokens = AccessServiceClient::new(connect(&args.remote.endpoint).await?)
        .list_tokens(v1::ListTokensRequest {})
        .await
        .map_err(|s| status_error("ListTokens", s))?
        .into_inner()
        .tokens;
    if args.remote.json {
        let all: Vec<_> = tokens.iter().map(token_json).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if tokens.is_empty() {
        println!("no tokens");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.name.clone(),
                role_name(t.role).to_owned(),
                time(t.created_at.as_ref()),
                t.expires_at
                    .as_ref()
                    .map_or_else(|| "never".to_owned(), |e| time(Some(e))),
                t.created_by.clone(),
            ]
        })
        .collect();
    println!(
        "{}",
        table::render(&["ID", "NAME", "ROLE", "CREATED", "EXPIRES", "BY"], &rows)
    );
    Ok(())
}

async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let token = AccessServiceClient::new(connect(&args.remote.endpoint).await?)
        .revoke_token(v1::RevokeTokenRequest { token: args.token })
        .await
        .map_err(|s| status_error("RevokeToken", s))?
        .into_inner();
    if args.remote.json {
        println!("{}", serde_json::to_string_pretty(&token_json(&token))?);
    } else {
        println!("revoked {} ({})", token.name, token.id);
    }
    Ok(())
}

/// A role's name as users write it ("-" when unset).
pub fn role_name(role: i32) -> &'static str {
    match v1::Role::try_from(role) {
        Ok(v1::Role::Viewer) => "viewer",
        Ok(v1::Role::Submitter) => "submitter",
        Ok(v1::Role::Admin) => "admin",
        Ok(v1::Role::Worker) => "worker",
        _ => "-",
    }
}

/// A timestamp as RFC 3339, to the second.
pub fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| std::time::SystemTime::try_from(*t).ok())
        .map_or_else(
            || "-".to_owned(),
            |at| humantime::format_rfc3339_seconds(at).to_string(),
        )
}

fn token_json(t: &v1::Token) -> serde_json::Value {
    json!({
        "id": t.id,
        "name": t.name,
        "role": role_name(t.role),
        "createdAt": time(t.created_at.as_ref()),
        "expiresAt": t.expires_at.as_ref().map(|e| time(Some(e))),
        "createdBy": t.created_by,
    })
}
