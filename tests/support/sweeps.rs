//! What the sweep tests share: workers with their own directories, the CLI, reflection calls.

use std::path::Path;

use serde_json::Value;

use super::{Proc, binary, reflect_call, start_worker};

/// A worker named `name`, its caches under `dir`.
pub fn worker(dir: &Path, name: &str, coordinator: &str) -> anyhow::Result<Proc> {
    let dirs = format!(
        "data_dir: {}\nartifact_dir: {}\n",
        dir.join("data").display(),
        dir.join(format!("work-{name}")).display()
    );
    start_worker(dir, name, coordinator, &dirs)
}

/// The `trainfleet` CLI against `addr`, run in `dir`.
pub fn cli(dir: &Path, addr: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(std::process::Command::new(binary("trainfleet"))
        .args(args)
        .env("TRAINFLEET_ENDPOINT", addr)
        .current_dir(dir)
        .output()?)
}

/// A unary call through the reflection client; a non-OK status is an error.
pub fn call(addr: &str, method: &str, body: Value) -> anyhow::Result<Value> {
    reflect_call(addr, method, &body.to_string())?
        .map_err(|(code, message)| anyhow::anyhow!("{method}: {code}: {message}"))
}
