//! End-to-end: `trainfleet-worker train` and `verify` as a user runs them, and the weights read
//! by Python's `safetensors` (the format promise made to users who leave trainfleet).

mod support;

use std::process::Command;

use support::*;

const JOB: &str = "name: e2e\n\
dataset:\n  builtin: synth-digits\n  synth: {train_samples: 400, test_samples: 100, seed: 2}\n\
model:\n  arch: cnn\n  channels: [8, 16]\n  hidden: [32]\n\
training:\n  epochs: 2\n  batch_size: 32\n  threads: 1\n  device: cpu\n";

#[test]
fn train_then_verify_then_read_the_weights_from_python() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let job = dir.path().join("job.yaml");
    std::fs::write(&job, JOB)?;
    let (out, data) = (dir.path().join("run"), dir.path().join("data"));
    let worker = binary("trainfleet-worker");
    let train = Command::new(&worker)
        .args(["train", "--config"])
        .arg(&job)
        .arg("--out")
        .arg(&out)
        .arg("--data-dir")
        .arg(&data)
        .output()?;
    let stdout = String::from_utf8(train.stdout)?;
    assert!(
        train.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&train.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("epoch ")).count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("test accuracy"), "{stdout}");
    // A run on its own leaves its report too (no champion to compare with).
    let page = out.join("report/report.html");
    assert!(
        stdout.contains(&format!(
            "report: file://{}",
            std::fs::canonicalize(&page)?.display()
        )),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report/report.json"))?)?;
    assert_eq!(report["epochs"].as_array().map(Vec::len), Some(2));
    assert!(report["comparison"].is_null());
    assert_eq!(report["test"]["samples"], 100);
    for png in [
        "curves.png",
        "confusion.png",
        "samples.png",
        "misclassified.png",
    ] {
        assert_png_drawn(&out.join("report").join(png));
    }

    let card: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("model.json"))?)?;
    assert_eq!(card["format"], "trainfleet-model/1");
    assert_eq!(card["model"]["arch"], "cnn");
    assert_eq!(card["geometry"]["classes"], 10);
    assert_eq!(card["dataset"]["files"].as_array().map(Vec::len), Some(4));
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json"))?)?;
    assert_eq!(metrics["epochs"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        metrics["test"]["correct"].as_array().map(Vec::len),
        Some(100)
    );
    assert_eq!(
        metrics["test"]["confusion"].as_array().map(Vec::len),
        Some(10)
    );

    let verify = Command::new(&worker)
        .arg("verify")
        .arg(&out)
        .arg("--data-dir")
        .arg(&data)
        .output()?;
    let text = String::from_utf8(verify.stdout)?;
    assert!(
        verify.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(text.contains("100/100 test predictions match"), "{text}");

    let python = std::env::var("TRAINFLEET_TEST_PYTHON")
        .unwrap_or_else(|_| repo_root().join(".venv/bin/python").display().to_string());
    let script = "import json, sys\nfrom safetensors import safe_open\n\
                  f = safe_open(sys.argv[1], 'pt')\n\
                  print(json.dumps({k: list(f.get_slice(k).get_shape()) for k in f.keys()}))";
    let read = Command::new(python)
        .args(["-W", "ignore", "-c", script])
        .arg(out.join("model.safetensors"))
        .output()?;
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let shapes: serde_json::Value = serde_json::from_slice(&read.stdout)?;
    assert_eq!(
        shapes["features.0.conv.weight"],
        serde_json::json!([8, 1, 3, 3])
    );
    assert_eq!(
        shapes["features.1.bn.running_mean"],
        serde_json::json!([16])
    );
    assert_eq!(shapes["classifier.1.weight"], serde_json::json!([10, 32]));
    Ok(())
}

#[test]
fn an_unknown_model_fails_at_start_with_the_choices_and_the_place() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let job = dir.path().join("job.yaml");
    std::fs::write(&job, JOB.replace("arch: cnn", "arch: resnet19"))?;
    let out = Command::new(binary("trainfleet-worker"))
        .args(["train", "--config"])
        .arg(&job)
        .arg("--out")
        .arg(dir.path().join("run"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr)?;
    assert!(
        stderr.contains(&format!(
            "{}:6:9: model.arch: unknown variant `resnet19`",
            job.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("`resnet18`") && stderr.contains("`mobilenet_v2`"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists() && !dir.path().join("run").exists(),
        "nothing was started"
    );
    Ok(())
}

#[test]
fn ctrl_c_stops_training_cleanly_and_resume_finishes_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let job = dir.path().join("job.yaml");
    // Big enough that epochs take a moment; small enough for CI.
    std::fs::write(
        &job,
        JOB.replace("train_samples: 400", "train_samples: 3000")
            .replace("epochs: 2", "epochs: 4"),
    )?;
    let (out, data) = (dir.path().join("run"), dir.path().join("data"));
    let (job_arg, out_arg, data_arg) = (
        job.display().to_string(),
        out.display().to_string(),
        data.display().to_string(),
    );
    let args = [
        "train",
        "--config",
        &job_arg,
        "--out",
        &out_arg,
        "--data-dir",
        &data_arg,
    ];
    let mut first = Proc::start("train", &binary("trainfleet-worker"), &args, dir.path())?;
    wait_for(
        std::time::Duration::from_secs(120),
        "the first epoch",
        || {
            first
                .log_text()
                .lines()
                .any(|l| l.starts_with("epoch   1"))
                .then_some(())
        },
    )?;
    first.signal(libc::SIGINT);
    assert_eq!(
        first.wait_exit(std::time::Duration::from_secs(30))?,
        Some(130),
        "{}",
        first.log_text()
    );
    let log = first.log_text();
    assert!(
        log.contains("interrupted; the last completed epoch is checkpointed"),
        "{log}"
    );
    assert!(log.contains("--resume"), "{log}");
    assert!(out.join("checkpoint.safetensors").exists() && !out.join("model.json").exists());

    let resumed = Command::new(binary("trainfleet-worker"))
        .args(args)
        .arg("--resume")
        .output()?;
    let stdout = String::from_utf8(resumed.stdout)?;
    assert!(
        resumed.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(stdout.contains("resuming after epoch"), "{stdout}");
    assert!(stdout.contains("epoch   4"), "{stdout}");
    assert!(
        !stdout.contains("epoch   1 "),
        "epoch 1 is not run again: {stdout}"
    );
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json"))?)?;
    assert_eq!(
        metrics["epochs"].as_array().map(Vec::len),
        Some(4),
        "history covers all epochs"
    );
    Ok(())
}
