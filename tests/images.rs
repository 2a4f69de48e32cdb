//! The images `make images` builds, run as a user would run them (podman, since no Docker engine
//! runs here): labels, the non-root user, flags and config errors, the health command, a clean
//! exit on SIGTERM, libtorch found inside the worker image through its relative rpath, and a
//! worker whose coordinator does not resolve backing off. Every container is started with
//! `--network none` (nothing it does leaves it) and removed by its id, even when a check fails.
//!
//! `scripts/test.sh` builds the images first (`scripts/images.sh`); run alone, this test needs
//! `make images`.

mod containers;
mod support;

use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, bail};
use containers::podman;
use serde_json::Value;
use support::*;

const COORDINATOR: &str = "trainfleet-coordinator";
const WORKER: &str = "trainfleet-worker";

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

fn image(name: &str) -> String {
    format!("{name}:{}", version())
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A container this test started, removed (by id) when dropped.
struct Container(String);

impl Container {
    fn run(args: &[&str]) -> anyhow::Result<Self> {
        let mut all = vec!["run", "--detach", "--network", "none"];
        all.extend_from_slice(args);
        let out = podman(&all)?;
        if !out.status.success() {
            bail!("podman run {args:?}: {}", text(&out));
        }
        Ok(Self(String::from_utf8(out.stdout)?.trim().to_owned()))
    }

    fn exec(&self, command: &[&str]) -> anyhow::Result<Output> {
        let mut all = vec!["exec", self.0.as_str()];
        all.extend_from_slice(command);
        podman(&all)
    }

    fn logs(&self) -> String {
        podman(&["logs", &self.0])
            .map(|o| text(&o))
            .unwrap_or_default()
    }

    /// SIGTERM (`podman stop`, 20 s grace): the process must exit 0.
    fn stop_cleanly(&self) -> anyhow::Result<()> {
        let out = podman(&["stop", "--time", "20", &self.0])?;
        anyhow::ensure!(out.status.success(), "podman stop: {}", text(&out));
        let code = self.inspect("{{.State.ExitCode}}")?;
        anyhow::ensure!(code == "0", "exit code {code} on SIGTERM: {}", self.logs());
        Ok(())
    }

    fn inspect(&self, format: &str) -> anyhow::Result<String> {
        let out = podman(&["inspect", "--format", format, &self.0])?;
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.0]);
    }
}

fn inspect_image(name: &str) -> anyhow::Result<Value> {
    let out = podman(&["image", "inspect", &image(name)])?;
    if !out.status.success() {
        bail!(
            "image {} is missing: run `make images` first ({})",
            image(name),
            text(&out)
        );
    }
    let all: Value = serde_json::from_slice(&out.stdout)?;
    Ok(all[0].clone())
}

#[test]
fn both_images_are_labelled_non_root_and_the_coordinator_is_small() -> anyhow::Result<()> {
    for name in [COORDINATOR, WORKER] {
        let info = inspect_image(name)?;
        let labels = &info["Config"]["Labels"];
        assert_eq!(
            labels["org.opencontainers.image.version"],
            version(),
            "{name}: {labels}"
        );
        let revision = labels["org.opencontainers.image.revision"]
            .as_str()
            .unwrap_or_default();
        assert!(
            revision.len() >= 12 && revision != "unknown",
            "{name}: {labels}"
        );
        assert!(
            labels["org.opencontainers.image.source"].is_string(),
            "{name}: {labels}"
        );
        assert_eq!(info["Config"]["User"], "10001:10001", "{name}");
        // Also tagged with the revision.
        let tagged = podman(&[
            "image",
            "exists",
            &format!("{name}:{}-{revision}", version()),
        ])?;
        assert!(tagged.status.success(), "{name}:{}-{revision}", version());
    }
    let size = inspect_image(COORDINATOR)?["Size"]
        .as_u64()
        .unwrap_or(u64::MAX);
    assert!(size <= 100_000_000, "the coordinator image is {size} bytes");
    Ok(())
}

#[test]
fn the_coordinator_image_refuses_bad_flags_and_config_serves_health_and_stops_on_sigterm()
-> anyhow::Result<()> {
    let coordinator = image(COORDINATOR);
    // An unknown flag: exit non-zero, naming it.
    let out = podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        &coordinator,
        "--lisen",
        "0.0.0.0:1",
    ])?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("--lisen"), "{}", text(&out));
    // A typo'd key in a mounted config: exit 1 with file:line:column.
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("coordinator.yaml"),
        "listen: 0.0.0.0:50051\nheartbeat_intervall: 2s\n",
    )?;
    let mount = format!("{}:/etc/trainfleet:ro,Z", dir.path().display());
    let out = podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--volume",
        &mount,
        "--env",
        "TRAINFLEET_CONFIG=/etc/trainfleet/coordinator.yaml",
        &coordinator,
    ])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("coordinator.yaml:2:") && said.contains("heartbeat_intervall"),
        "{said}"
    );

    // Secure by default: the image listens on 0.0.0.0, so without TLS and access control it
    // will not serve unless told it may.
    let out = podman(&["run", "--rm", "--network", "none", &coordinator])?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("--insecure"), "{}", text(&out));

    // Served: the image's own health command says SERVING; the process is not root.
    let running = Container::run(&["--env", "TRAINFLEET_INSECURE=true", &coordinator])?;
    wait_for(Duration::from_secs(30), "the coordinator to serve", || {
        running
            .exec(&["trainfleet-coordinator", "health"])
            .ok()
            .filter(|o| o.status.success())
    })
    .with_context(|| running.logs())?;
    // The image has no shell or `id`: the serving process's real and effective uid, read on the
    // host from /proc.
    let pid = running.inspect("{{.State.Pid}}")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>())
        .unwrap_or_default();
    assert_eq!(uids, ["10001", "10001"], "{status}");
    // Nothing in it but the process: no shell to exec.
    let shell = running.exec(&["/bin/sh", "-c", "true"])?;
    assert!(
        !shell.status.success(),
        "the coordinator image has no shell"
    );
    // The leader-only name on a standalone coordinator (it leads), and an unknown name.
    let leader = running.exec(&[
        "trainfleet-coordinator",
        "health",
        "--service",
        "trainfleet.v1.Leader",
    ])?;
    assert!(leader.status.success(), "{}", text(&leader));
    let unknown = running.exec(&["trainfleet-coordinator", "health", "--service", "nope"])?;
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("knows no health name"),
        "{}",
        text(&unknown)
    );
    // Nothing listens on this port: the command says it cannot reach it.
    let closed = running.exec(&["trainfleet-coordinator", "health", "--addr", "127.0.0.1:9"])?;
    assert!(!closed.status.success());
    assert!(text(&closed).contains("cannot reach"), "{}", text(&closed));

    // SIGTERM (podman stop): exit 0, well within the grace period.
    running.stop_cleanly()?;
    assert!(
        running.logs().contains("coordinator stopped"),
        "{}",
        running.logs()
    );
    Ok(())
}

#[test]
fn the_worker_image_finds_libtorch_inside_itself() -> anyhow::Result<()> {
    let worker = image(WORKER);
    // A typo'd flag: exit non-zero, naming it.
    let out = podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        &worker,
        "--coordinater",
        "x:1",
    ])?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("--coordinater"), "{}", text(&out));
    let out = podman(&["run", "--rm", "--network", "none", &worker, "devices"])?;
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("2.13.0"), "libtorch version: {said}");
    // The dynamic linker resolves libtorch_cuda from the image's own copy, with no
    // LD_LIBRARY_PATH, and every library it needs is there.
    let out = podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "ldd",
        &worker,
        "/opt/trainfleet/bin/trainfleet-worker",
    ])?;
    let ldd = text(&out);
    assert!(out.status.success(), "{ldd}");
    assert!(
        ldd.contains(
            "libtorch_cuda.so => /opt/trainfleet/bin/../python/torch/lib/libtorch_cuda.so"
        ),
        "{ldd}"
    );
    assert!(!ldd.contains("not found"), "{ldd}");
    let env = podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "env",
        &worker,
    ])?;
    assert!(!text(&env).contains("LD_LIBRARY_PATH"), "{}", text(&env));
    // The rpath is relative: the build machine's paths are not in the binary's dynamic section.
    let dir = tempfile::tempdir()?;
    let created = podman(&["create", &worker])?;
    let id = String::from_utf8(created.stdout)?.trim().to_owned();
    let copied = dir.path().join("trainfleet-worker");
    let out = podman(&[
        "cp",
        &format!("{id}:/opt/trainfleet/bin/trainfleet-worker"),
        copied.to_str().unwrap_or_default(),
    ]);
    let _ = podman(&["rm", "--force", &id]);
    assert!(out?.status.success());
    let readelf = Command::new("readelf").arg("-d").arg(&copied).output()?;
    let dynamic = text(&readelf);
    assert!(
        dynamic.contains("[$ORIGIN/../python/torch/lib]"),
        "{dynamic}"
    );
    assert!(dynamic.contains("libtorch_cuda.so"), "DT_NEEDED: {dynamic}");
    Ok(())
}

#[test]
fn a_worker_whose_coordinator_does_not_resolve_backs_off_without_spinning() -> anyhow::Result<()> {
    let running = Container::run(&[
        &image(WORKER),
        "--coordinator",
        "no-such-coordinator.invalid:50051",
    ])?;
    std::thread::sleep(Duration::from_secs(4));
    let logs = running.logs();
    assert!(
        logs.contains("no-such-coordinator.invalid") && logs.contains("dns error"),
        "{logs}"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "plain text, no colour codes: {logs}"
    );
    let attempts = logs
        .lines()
        .filter(|l| l.contains("lost contact with the coordinator"))
        .count();
    // Backoff from 200 ms, doubling with jitter: a handful of attempts in 4 s, not hundreds.
    assert!(
        (2..=10).contains(&attempts),
        "{attempts} attempts in 4 s: {logs}"
    );
    assert_eq!(running.inspect("{{.State.Running}}")?, "true", "{logs}");
    running.stop_cleanly()?;
    Ok(())
}
