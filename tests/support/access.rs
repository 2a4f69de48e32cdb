//! Clients for the access-control tests: calls as grpcurl would make them, with a bearer token,
//! and the CLI with one.

use std::process::Command;

use anyhow::ensure;
use serde_json::Value;

use super::{CallResult, binary};

/// Calls `method` with `token` (or none), in plaintext; the answer or (code, message).
pub fn call_as(
    addr: &str,
    token: Option<&str>,
    method: &str,
    body: Value,
) -> anyhow::Result<CallResult> {
    super::tls::Dial {
        token,
        ..Default::default()
    }
    .call(addr, method, body)
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
