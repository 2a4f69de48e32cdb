//! Reading a rendered pod spec the way a kubelet does: `$(VAR)` expansion, ConfigMap and
//! Secret files, resource quantities, an HTTP GET probe.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::support::binary;
use serde_yaml::Value;

/// `$(VAR)` references replaced from `env` as Kubernetes does (`$$` escapes; unknown ones stay).
pub fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(tail) = rest.strip_prefix("$$") {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = rest
            .strip_prefix("$(")
            .and_then(|r| r.split_once(')'))
            .filter(|(name, _)| env.iter().any(|(k, _)| k == name))
        {
            let found = env.iter().rev().find(|(k, _)| k == name);
            out.push_str(&found.map(|(_, v)| v.clone()).unwrap_or_default());
            rest = tail;
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out + rest
}

/// Writes a ConfigMap's or Secret's keys as files (all of them, or the `items` mapping).
pub fn write_files(
    dir: &Path,
    data: &BTreeMap<String, String>,
    items: &Value,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let chosen: Vec<(String, String)> = match items.as_sequence() {
        Some(items) => items
            .iter()
            .map(|i| (text(&i["key"]), text(&i["path"])))
            .collect(),
        None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
    };
    for (key, path) in chosen {
        let value = data.get(&key).with_context(|| format!("no key {key:?}"))?;
        std::fs::write(dir.join(path), value)?;
    }
    Ok(())
}

/// Memory limits as podman flags; what cannot be honoured here is refused.
pub fn resources(pod: &str, resources: &Value) -> anyhow::Result<Vec<String>> {
    let mut args = Vec::new();
    if let Some(limits) = resources["limits"].as_mapping() {
        for (k, v) in limits {
            match text(k).as_str() {
                "memory" => args.push(format!("--memory={}", bytes(&text(v))?)),
                "cpu" => {}
                other => bail!("{pod}: resource {other} is not available here"),
            }
        }
    }
    Ok(args)
}

/// A Kubernetes quantity of bytes (`512Mi`, `8Gi`, `1G`, `1000`).
pub fn bytes(quantity: &str) -> anyhow::Result<u64> {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = quantity.strip_suffix(suffix) {
            return Ok(n
                .parse::<u64>()
                .with_context(|| format!("quantity {quantity}"))?
                * factor);
        }
    }
    quantity
        .parse()
        .with_context(|| format!("quantity {quantity}"))
}

/// The status code of an HTTP/1.0 GET.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<u16> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut head = String::new();
    stream.take(64).read_to_string(&mut head).ok();
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")
}

pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a gRPC health or HTTP GET probe of the container at `ip` succeeds, run from the host.
pub fn probe(ip: &str, container: &Value, probe: &Value) -> bool {
    let port = |p: &Value| -> Option<u64> {
        p.as_u64().or_else(|| {
            container["ports"]
                .as_sequence()?
                .iter()
                .find(|c| c["name"] == *p)?["containerPort"]
                .as_u64()
        })
    };
    if !probe["grpc"].is_null() {
        let Some(port) = port(&probe["grpc"]["port"]) else {
            return false;
        };
        let service = probe["grpc"]["service"].as_str().unwrap_or_default();
        return std::process::Command::new(binary("trainfleet-coordinator"))
            .args([
                "health",
                "--addr",
                &format!("{}:{port}", ip),
                "--timeout",
                "1s",
            ])
            .args(["--service", service])
            .output()
            .is_ok_and(|o| o.status.success());
    }
    if !probe["httpGet"].is_null() {
        let Some(port) = port(&probe["httpGet"]["port"]) else {
            return false;
        };
        let path = probe["httpGet"]["path"].as_str().unwrap_or("/");
        return http_get(&format!("{}:{port}", ip), path)
            .is_ok_and(|status| (200..400).contains(&status));
    }
    false
}
