//! Experiment tracking against a real MLflow tracking server (PyPI `mlflow`, from .venv) on
//! loopback: a tiny training with `tracking.mlflow_uri` set, then everything read back through
//! MLflow's REST API: the params, every epoch's metrics (sent as each epoch ended, each once),
//! the tags and the artifacts (the report and the model, byte for byte). A job cancelled
//! mid-training leaves its MLflow run KILLED with the epochs it finished. Before the server starts, the same job against an address where
//! nothing listens succeeds anyway and says what was not recorded.

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{binary, trainfleet_run};

/// `mlflow server` in its own process group (it starts uvicorn and job runners as children),
/// stopped through that group by the leader's PID.
struct MlflowServer {
    child: Child,
    base: String,
    log: PathBuf,
}

impl MlflowServer {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let python = std::env::var_os("TRAINFLEET_TEST_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| support::repo_root().join(".venv/bin/python"));
        let mlflow = python.parent().unwrap().join("mlflow");
        anyhow::ensure!(
            mlflow.exists(),
            "{} not found: run scripts/setup.sh (it installs mlflow into .venv)",
            mlflow.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = dir.join("mlflow.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(mlflow)
            .args([
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--workers",
                "1",
            ])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.join("mlartifacts"))
            .current_dir(dir)
            .env("MLFLOW_DISABLE_TELEMETRY", "true")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()?;
        let server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let started = Instant::now();
        loop {
            if ureq::get(format!("{}/health", server.base)).call().is_ok() {
                return Ok(server);
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(120),
                "MLflow did not answer within 120 s:\n{}",
                std::fs::read_to_string(&server.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn api(&self, path: &str) -> anyhow::Result<Value> {
        let text = ureq::get(format!("{}/api/2.0/mlflow/{path}", self.base))
            .call()?
            .body_mut()
            .read_to_string()?;
        Ok(serde_json::from_str(&text)?)
    }

    fn artifact(&self, run_id: &str, path: &str) -> anyhow::Result<Vec<u8>> {
        Ok(ureq::get(format!(
            "{}/get-artifact?run_uuid={run_id}&path={path}",
            self.base
        ))
        .call()?
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()?)
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        let group = -(self.child.id() as i32);
        // SAFETY: kill(2) on the process group this test created.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above; whatever is left of the group.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// The `epoch N: k v  k v` lines `trainfleet run` prints, as (epoch, key, value).
fn printed_epochs(out: &str) -> Vec<(i64, String, f64)> {
    let mut points = Vec::new();
    for line in out.lines() {
        let Some(rest) = line.trim().strip_prefix("epoch ") else {
            continue;
        };
        let (epoch, values) = rest.split_once(':').unwrap();
        let words: Vec<&str> = values.split_whitespace().collect();
        for pair in words.chunks(2) {
            points.push((
                epoch.parse().unwrap(),
                pair[0].to_owned(),
                pair[1].parse().unwrap(),
            ));
        }
    }
    points
}

fn job(mlflow: &str) -> String {
    format!(
        "name: tracked\ndataset:\n  builtin: synth-digits\n  synth: {{train_samples: 1200, test_samples: 240, seed: 9}}\n\
         model: {{arch: simple_cnn}}\n\
         training: {{epochs: 3, batch_size: 64, optimizer: adam, learning_rate: 0.002, threads: 1, seed: 4}}\n\
         tracking: {{mlflow_uri: \"{mlflow}\", experiment: e2e}}\n"
    )
}

#[test]
fn runs_are_recorded_in_a_real_mlflow_and_mlflow_down_fails_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");

    // MLflow down: the job succeeds, and says what was not recorded.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let down = dir.path().join("down.yaml");
    std::fs::write(&down, job(&format!("http://127.0.0.1:{closed}")))?;
    let out = trainfleet_run(&state, &down)?;
    assert!(out.contains(": succeeded"), "{out}");
    assert!(out.contains("mlflow: not recorded: MLflow"), "{out}");
    assert!(out.contains("after 4 attempts"), "{out}");

    let server = MlflowServer::start(dir.path())?;
    let up = dir.path().join("up.yaml");
    std::fs::write(&up, job(&server.base))?;
    let out = trainfleet_run(&state, &up)?;
    let run_id = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("mlflow run: "))
        .unwrap_or_else(|| {
            panic!(
                "no MLflow run in:\n{out}\n{}",
                std::fs::read_to_string(&server.log).unwrap_or_default()
            )
        })
        .to_owned();
    let job_id = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("job ")
                .and_then(|r| r.strip_suffix(" queued"))
        })
        .expect("job id")
        .to_owned();

    let got = server.api(&format!("runs/get?run_id={run_id}"))?;
    let info = &got["run"]["info"];
    assert_eq!(info["status"], "FINISHED");
    let data = &got["run"]["data"];
    let pairs = |v: &Value| -> std::collections::BTreeMap<String, String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p["key"].as_str().unwrap().to_owned(),
                            p["value"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let params = pairs(&data["params"]);
    assert_eq!(params["name"], "tracked");
    assert_eq!(params["model.arch"], "simple_cnn");
    assert_eq!(params["training.learning_rate"], "0.002");
    assert_eq!(params["training.epochs"], "3");
    assert_eq!(params["dataset.builtin"], "synth-digits");
    assert!(
        !params.keys().any(|k| k.starts_with("tracking")),
        "{params:?}"
    );
    let tags = pairs(&data["tags"]);
    assert_eq!(tags["trainfleet.job_id"], job_id);
    assert_eq!(tags["trainfleet.dataset_root"].len(), 64);
    assert_eq!(tags["trainfleet.config_hash"].len(), 64);
    assert_eq!(tags["trainfleet.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(tags["trainfleet.device"], "cpu");
    assert!(tags.contains_key("trainfleet.libtorch_version"));
    assert!(tags["trainfleet.report_uri"].ends_with("report.html"));

    // Every epoch's metrics, equal to what the CLI printed from the coordinator's record.
    let printed = printed_epochs(&out);
    assert_eq!(
        printed.iter().filter(|p| p.1 == "train_loss").count(),
        3,
        "{out}"
    );
    for key in ["train_loss", "train_accuracy", "val_loss", "val_accuracy"] {
        let history = server.api(&format!(
            "metrics/get-history?run_id={run_id}&metric_key={key}"
        ))?;
        let mut points: Vec<(i64, f64)> = history["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["step"].as_i64().unwrap(), m["value"].as_f64().unwrap()))
            .collect();
        points.sort_by_key(|p| p.0);
        assert_eq!(
            points.iter().map(|p| p.0).collect::<Vec<_>>(),
            [1, 2, 3],
            "{key}"
        );
        for (epoch, value) in points {
            let shown = printed
                .iter()
                .find(|p| p.0 == epoch && p.1 == key)
                .unwrap_or_else(|| panic!("{key} of epoch {epoch} not printed"));
            assert!(
                (shown.2 - value).abs() < 1e-4,
                "{key} {epoch}: {value} vs {}",
                shown.2
            );
        }
    }
    // Sent live, as each epoch ended (the eval would have stamped them all at once).
    let history = server.api(&format!(
        "metrics/get-history?run_id={run_id}&metric_key=train_loss"
    ))?;
    let mut stamps: Vec<(i64, i64)> = history["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["step"].as_i64().unwrap(),
                m["timestamp"].as_i64().unwrap(),
            )
        })
        .collect();
    stamps.sort();
    assert!(
        stamps.windows(2).all(|w| w[0].1 < w[1].1),
        "epochs were not logged as they ended: {stamps:?}"
    );
    let accuracy = server.api(&format!(
        "metrics/get-history?run_id={run_id}&metric_key=test_accuracy"
    ))?;
    assert_eq!(accuracy["metrics"].as_array().unwrap().len(), 1);

    // The artifacts: the report and the model, byte for byte.
    let listed = |path: &str| -> anyhow::Result<Vec<String>> {
        let v = server.api(&format!("artifacts/list?run_id={run_id}&path={path}"))?;
        Ok(v["files"]
            .as_array()
            .map(|f| {
                f.iter()
                    .map(|f| f["path"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default())
    };
    let report = listed("report")?;
    for name in ["report.html", "report.json", "curves.png", "confusion.png"] {
        assert!(
            report.contains(&format!("report/{name}")),
            "{name} not in {report:?}"
        );
    }
    let model = listed("model")?;
    for name in [
        "model.safetensors",
        "model.json",
        "metrics.json",
        "config.yaml",
    ] {
        assert!(
            model.contains(&format!("model/{name}")),
            "{name} not in {model:?}"
        );
    }
    let weights = server.artifact(&run_id, "model/model.safetensors")?;
    let digest: String = Sha256::digest(&weights)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(digest, tags["trainfleet.weights_sha256"]);
    let run_dir = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("artifacts: file://"))
        .expect("artifacts line");
    assert_eq!(
        weights,
        std::fs::read(Path::new(run_dir).join("model.safetensors"))?
    );
    let page = server.artifact(&run_id, "report/report.html")?;
    let local_page = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("report: file://"))
        .expect("report line");
    assert_eq!(page, std::fs::read(local_page)?);

    cancelled_runs_end_killed(dir.path(), &state, &server)
}

/// A job cancelled mid-training (Ctrl-C on `trainfleet run`) leaves its MLflow run KILLED, with
/// the epochs it finished.
fn cancelled_runs_end_killed(
    dir: &Path,
    state: &Path,
    server: &MlflowServer,
) -> anyhow::Result<()> {
    use std::io::BufRead;

    let long = dir.join("long.yaml");
    std::fs::write(&long, job(&server.base).replace("epochs: 3", "epochs: 40"))?;
    let mut child = Command::new(binary("trainfleet"))
        .arg("run")
        .arg(&long)
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut job_id = String::new();
    for line in lines.by_ref() {
        let line = line?;
        if let Some(id) = line
            .strip_prefix("job ")
            .and_then(|r| r.strip_suffix(" queued"))
        {
            job_id = id.to_owned();
        }
        if line.trim_start().starts_with("epoch 2:") {
            break;
        }
    }
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let rest: Vec<String> = lines.collect::<Result<_, _>>()?;
    assert!(child.wait()?.code().is_some(), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("cancelled")), "{rest:?}");
    let experiment =
        server.api("experiments/get-by-name?experiment_name=e2e")?["experiment"]["experiment_id"]
            .as_str()
            .unwrap()
            .to_owned();
    let found = support::wait_for(Duration::from_secs(20), "the run to end KILLED", || {
        let body = serde_json::json!({
            "experiment_ids": [experiment],
            "filter": format!("tags.`trainfleet.job_id` = '{job_id}'"),
        });
        let text = ureq::post(format!("{}/api/2.0/mlflow/runs/search", server.base))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        let run = v["runs"].get(0)?.clone();
        (run["info"]["status"] == "KILLED").then_some(run)
    })?;
    let run_id = found["info"]["run_id"].as_str().unwrap();
    let history = server.api(&format!(
        "metrics/get-history?run_id={run_id}&metric_key=train_loss"
    ))?;
    let steps = history["metrics"].as_array().unwrap().len();
    assert!((2..40).contains(&steps), "{steps} epochs recorded");
    Ok(())
}
