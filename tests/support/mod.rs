//! Helpers for end-to-end tests: start the real binaries, stop them by PID, and talk to them with
//! real reflection clients (the Python grpcio-reflection client in tests/clients and `buf curl`),
//! never the project's own Rust client.
#![allow(dead_code)]

pub mod access;
pub mod ha;
pub mod shapes;
pub mod sweeps;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// Root of the repository.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A workspace binary, built by `cargo build --workspace --bins` (scripts/test.sh does that first;
/// cargo only builds this package's own binaries for its tests).
pub fn binary(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_trainfleet"))
        .parent()
        .expect("target dir")
        .to_owned();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the end-to-end tests (make test does)",
        path.display()
    );
    path
}

/// A child process the test owns: stopped by PID (SIGKILL) when dropped, its stderr in a file.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `binary` with `args`, stdout and stderr appended to `dir/<name>.log`.
    pub fn start(name: &str, binary: &Path, args: &[&str], dir: &Path) -> anyhow::Result<Self> {
        Self::start_with_env(name, binary, args, &[], dir)
    }

    /// Like [`Proc::start`], with extra environment variables.
    pub fn start_with_env(
        name: &str,
        binary: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(binary)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .map(|c| c.id() as i32)
            .expect("process already reaped")
    }

    /// Sends `signal` to this process (by PID).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with the PID of a child we have not reaped yet.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit on its own; its exit code (None if killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let child = self.child.as_mut().context("already reaped")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not exit within {timeout:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// CPU time (user + system) the process has used so far, from /proc/PID/stat.
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("proc stat");
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `probe` every 50 ms until it returns `Some`, or fails after `timeout` with `what`.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A synth-digits job that trains in a few seconds on one core; `epochs` sets how long.
pub fn synth_job(name: &str, epochs: u32, seed: u64) -> String {
    format!(
        "name: {name}\n\
         dataset:\n  builtin: synth-digits\n  synth: {{train_samples: 3000, test_samples: 500, seed: 7}}\n\
         model: {{arch: simple_cnn}}\n\
         training: {{epochs: {epochs}, batch_size: 64, learning_rate: 0.001, optimizer: adam, seed: {seed}, threads: 1}}\n"
    )
}

/// What the replica at `addr` (`host:port`) says about leadership: (is it the leader, the
/// leader's address); `None` when it does not answer within a second.
pub fn ask_leader(runtime: &tokio::runtime::Runtime, addr: &str) -> Option<(bool, String)> {
    use trainfleet_proto::v1;
    use trainfleet_proto::v1::cluster_service_client::ClusterServiceClient;
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(Duration::from_millis(300))
            .timeout(Duration::from_millis(700))
            .connect()
            .await
            .ok()?;
        let answer = ClusterServiceClient::new(channel)
            .get_leader(v1::GetLeaderRequest {})
            .await
            .ok()?
            .into_inner();
        Some((answer.is_self, answer.address))
    })
}

/// A coordinator started on an ephemeral loopback port.
pub struct CoordinatorProc {
    pub proc: Proc,
    pub addr: String,
}

/// Starts `trainfleet-coordinator` with `extra` flags, on `listen` (use "127.0.0.1:0" for a free
/// port), and waits for the address it bound.
pub fn start_coordinator(
    dir: &Path,
    name: &str,
    listen: &str,
    extra: &[&str],
) -> anyhow::Result<CoordinatorProc> {
    start_coordinator_with_env(dir, name, listen, extra, &[])
}

/// Like [`start_coordinator`], with extra environment variables.
pub fn start_coordinator_with_env(
    dir: &Path,
    name: &str,
    listen: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<CoordinatorProc> {
    let addr_file = dir.join(format!("{name}.addr"));
    let _ = std::fs::remove_file(&addr_file);
    let addr_arg = addr_file.display().to_string();
    // Each test's coordinator keeps its state and artifacts in the test's directory (restarts
    // in one test reuse them, as a real restart would).
    let data_dir = dir.join("state").display().to_string();
    let artifacts = dir.join("artifacts").display().to_string();
    let mut args = vec![
        "--listen",
        listen,
        "--addr-file",
        &addr_arg,
        "--data-dir",
        &data_dir,
        "--artifacts",
        &artifacts,
    ];
    args.extend_from_slice(extra);
    let proc = Proc::start_with_env(name, &binary("trainfleet-coordinator"), &args, env, dir)?;
    let addr = wait_for(
        Duration::from_secs(20),
        "the coordinator's address file",
        || {
            std::fs::read_to_string(&addr_file)
                .ok()
                .filter(|s| !s.is_empty())
        },
    )
    .with_context(|| proc.log_text())?;
    Ok(CoordinatorProc { proc, addr })
}

/// Python with grpcio-reflection: TRAINFLEET_TEST_PYTHON (scripts/env.sh sets it) or .venv.
fn python() -> PathBuf {
    std::env::var_os("TRAINFLEET_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"))
}

/// Result of a reflection client call: parsed JSON on success, (code, message) on an RPC error.
pub type CallResult = Result<Value, (String, String)>;

/// Runs tests/clients/reflect.py (reflection v1alpha) against `addr`.
pub fn reflect(addr: &str, args: &[&str]) -> anyhow::Result<Output> {
    reflect_as(addr, None, args)
}

/// Like [`reflect`], carrying `token` as `authorization: Bearer` metadata on every call.
pub fn reflect_as(addr: &str, token: Option<&str>, args: &[&str]) -> anyhow::Result<Output> {
    let env: Vec<(&str, &str)> = token.map(|t| ("TRAINFLEET_TOKEN", t)).into_iter().collect();
    reflect_with(addr, &env, args)
}

/// Like [`reflect`], with `env` (TRAINFLEET_TOKEN, TRAINFLEET_CA_CERT, TRAINFLEET_TLS_CERT and
/// TRAINFLEET_TLS_KEY: see reflect.py) and nothing else of those from the test's environment.
pub fn reflect_with(addr: &str, env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<Output> {
    let script = repo_root().join("tests/clients/reflect.py");
    let mut command = Command::new(python());
    for name in [
        "TRAINFLEET_TOKEN",
        "TRAINFLEET_CA_CERT",
        "TRAINFLEET_TLS_CERT",
        "TRAINFLEET_TLS_KEY",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let output = command
        .arg("-W")
        .arg("ignore")
        .arg(&script)
        .arg(addr)
        .args(args)
        .output()
        .with_context(|| format!("running {} (make setup installs it)", python().display()))?;
    if output.status.code() != Some(0) && output.status.code() != Some(3) {
        bail!(
            "reflect.py {args:?} failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// Calls a unary method through reflection with a JSON body, as grpcurl would.
pub fn reflect_call(addr: &str, method: &str, body: &str) -> anyhow::Result<CallResult> {
    Ok(reflect_call_with_metadata(addr, method, body)?.0)
}

/// Like [`reflect_call`], also returning the response's initial metadata (headers) as JSON.
pub fn reflect_call_with_metadata(
    addr: &str,
    method: &str,
    body: &str,
) -> anyhow::Result<(CallResult, Value)> {
    let output = reflect(addr, &["call", method, body])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let metadata = stderr
        .lines()
        .find_map(|l| l.strip_prefix("metadata: "))
        .map(serde_json::from_str)
        .transpose()?
        .unwrap_or(Value::Null);
    let json: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "reflect.py printed: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    let result = if output.status.code() == Some(3) {
        Err((
            json["code"].as_str().unwrap_or_default().to_owned(),
            json["message"].as_str().unwrap_or_default().to_owned(),
        ))
    } else {
        Ok(json)
    };
    Ok((result, metadata))
}

/// Runs `buf curl` (reflection v1 only) against `http://{addr}{path}`; stdout on success.
pub fn buf_curl(addr: &str, args: &[&str], path: &str) -> anyhow::Result<String> {
    let buf = repo_root().join(".tools/node_modules/.bin/buf");
    let output = Command::new(&buf)
        .args([
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--reflect-protocol",
            "grpc-v1",
        ])
        .args(args)
        .arg(format!("http://{addr}{path}"))
        .output()
        .with_context(|| format!("running {} (make setup installs it)", buf.display()))?;
    if !output.status.success() {
        bail!(
            "buf curl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// The workers a coordinator lists, via the reflection client.
pub fn list_workers(addr: &str) -> anyhow::Result<Vec<Value>> {
    let json = reflect_call(addr, "trainfleet.v1.ClusterService/ListWorkers", "{}")?
        .map_err(|(code, message)| anyhow::anyhow!("ListWorkers: {code}: {message}"))?;
    Ok(json["workers"].as_array().cloned().unwrap_or_default())
}

/// The state of worker `id` in `workers` ("WORKER_STATE_ALIVE", ...), if listed.
pub fn worker_state(workers: &[Value], id: &str) -> Option<String> {
    workers
        .iter()
        .find(|w| w["workerId"] == id)
        .and_then(|w| w["state"].as_str().map(str::to_owned))
}

/// Starts `trainfleet-worker` with id `name` against `coordinator`, with fast reconnects, `dir`
/// as its data root (unless `extra_config` names `data_roots`), plus `extra_config` (YAML
/// lines) in its config file.
pub fn start_worker(
    dir: &Path,
    name: &str,
    coordinator: &str,
    extra_config: &str,
) -> anyhow::Result<Proc> {
    let config = dir.join(format!("{name}.yaml"));
    // The test's own directory is where its datasets are made.
    let roots = if extra_config.contains("data_roots:") {
        String::new()
    } else {
        format!(
            "data_roots: [{:?}]\n",
            dir.canonicalize()?.display().to_string()
        )
    };
    let poll_wait = if extra_config.contains("poll_wait:") {
        ""
    } else {
        "poll_wait: 2s\n"
    };
    std::fs::write(
        &config,
        format!("reconnect_initial: 100ms\nreconnect_max: 1s\n{poll_wait}{roots}{extra_config}"),
    )?;
    Proc::start(
        name,
        &binary("trainfleet-worker"),
        &[
            "--config",
            &config.display().to_string(),
            "--coordinator",
            coordinator,
            "--worker-id",
            name,
        ],
        dir,
    )
}

/// `trainfleet run JOB --state-dir STATE` to its end: its stdout, or an error with both streams.
pub fn trainfleet_run(state: &Path, job: &Path) -> anyhow::Result<String> {
    let out = Command::new(binary("trainfleet"))
        .arg("run")
        .arg(job)
        .arg("--state-dir")
        .arg(state)
        .output()?;
    let stdout = String::from_utf8(out.stdout)?;
    anyhow::ensure!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// Decodes a PNG and checks that it is at least 400×120 and not blank: more than 1 % of it
/// differs from the corner's colour, in more than 8 colours.
pub fn assert_png_drawn(path: &Path) {
    let image = image::open(path)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()))
        .to_rgb8();
    let (w, h) = image.dimensions();
    assert!(w >= 400 && h >= 120, "{}: {w}x{h}", path.display());
    let background = image.get_pixel(0, 0).0;
    let drawn = image.pixels().filter(|p| p.0 != background).count();
    assert!(
        drawn as f64 > 0.01 * (w * h) as f64,
        "{}: {drawn} pixels drawn of {}",
        path.display(),
        w * h
    );
    let colours: std::collections::HashSet<[u8; 3]> = image.pixels().map(|p| p.0).collect();
    assert!(
        colours.len() > 8,
        "{}: {} colours",
        path.display(),
        colours.len()
    );
}
