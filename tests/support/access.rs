//! Clients for the access-control tests: calls as grpcurl would make them, with a bearer token,
//! and the CLI with one.

use std::process::Command;

use anyhow::{Context, ensure};
use serde_json::Value;

use super::{CallResult, binary, reflect_as};

/// Calls `method` with `token` (or none); the answer or (code, message).
pub fn call_as(
    addr: &str,
    token: Option<&str>,
    method: &str,
    body: Value,
) -> anyhow::Result<CallResult> {
    let output = reflect_as(addr, token, &["call", method, &body.to_string()])?;
    let json: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "reflect.py printed: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    Ok(if output.status.code() == Some(3) {
        Err((
            json["code"].as_str().unwrap_or_default().to_owned(),
            json["message"].as_str().unwrap_or_default().to_owned(),
        ))
    } else {
        Ok(json)
    })
}

/// The gRPC code of a refused call (panics on success).
pub fn code(result: CallResult) -> (String, String) {
    result.expect_err("the call was refused")
}

/// `trainfleet ARGS` against `addr` with `token`: stdout, or an error with both streams.
pub fn cli_as(addr: &str, token: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(binary("trainfleet"))
        .args(args)
        .env("TRAINFLEET_ENDPOINT", addr)
        .env("TRAINFLEET_TOKEN", token)
        .output()?;
    ensure!(
        out.status.success(),
        "trainfleet {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}
