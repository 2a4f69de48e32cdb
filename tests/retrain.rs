//! The retrain loop end to end: a real coordinator and worker, a real image folder that grows,
//! real training. Every step goes through the `trainfleet` CLI, as a person would drive it.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use support::shapes::{add_images, image};
use support::*;

const FAST: &[&str] = &["--heartbeat-interval", "200ms", "--lease-timeout", "3s"];

fn cli(dir: &Path, addr: &str, args: &[&str]) -> anyhow::Result<Output> {
    Ok(std::process::Command::new(binary("trainfleet"))
        .args(args)
        .env("TRAINFLEET_ENDPOINT", addr)
        .current_dir(dir)
        .output()?)
}

/// Runs the CLI and returns its stdout, failing with stderr when it fails.
fn ok(dir: &Path, addr: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = cli(dir, addr, args)?;
    anyhow::ensure!(
        out.status.success(),
        "trainfleet {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn json(dir: &Path, addr: &str, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = args.to_vec();
    all.push("--json");
    Ok(serde_json::from_str(&ok(dir, addr, &all)?)?)
}

fn history(dir: &Path, addr: &str) -> anyhow::Result<Vec<Value>> {
    let h = json(dir, addr, &["dataset", "history", "shapes"])?;
    Ok(h.as_array().cloned().unwrap_or_default())
}

/// Waits for the retrain job of the newest decision to end; returns the job.
fn wait_job_end(dir: &Path, addr: &str, id: &str) -> anyhow::Result<Value> {
    wait_for(
        Duration::from_secs(120),
        &format!("job {id} to end"),
        || {
            let job = json(dir, addr, &["status", id]).ok()?;
            ["succeeded", "failed", "cancelled"]
                .contains(&job["state"].as_str().unwrap_or(""))
                .then_some(job)
        },
    )
}

/// A coordinator and one worker, their state and caches under `d`.
fn cluster(d: &Path) -> anyhow::Result<(CoordinatorProc, Proc)> {
    let coordinator = start_coordinator(d, "coordinator", "127.0.0.1:0", FAST)?;
    let dirs = format!(
        "data_dir: {}\nartifact_dir: {}\n",
        d.join("data").display(),
        d.join("work").display()
    );
    let worker = start_worker(d, "trainer", &coordinator.addr, &dirs)?;
    Ok((coordinator, worker))
}

fn job_yaml(epochs: u32, learning_rate: f64, seed: u64) -> String {
    format!(
        "name: shapes-cnn\n\
         dataset: {{grayscale: true, image_size: [12, 12]}}\n\
         model: {{arch: cnn, channels: [8, 16], hidden: [32]}}\n\
         training: {{epochs: {epochs}, batch_size: 16, learning_rate: {learning_rate}, \
         seed: {seed}, device: cpu}}\n"
    )
}

#[test]
fn growth_retrains_on_the_pinned_version_and_the_gate_guards_the_champion() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let data = d.join("shapes");
    add_images(&data, 0..40)?;
    let (coordinator, _worker) = cluster(d)?;
    let addr = coordinator.addr.as_str();
    let job = d.join("job.yaml");
    std::fs::write(&job, job_yaml(4, 0.01, 7))?;
    let register = |job: &Path| {
        ok(
            d,
            addr,
            &[
                "dataset",
                "register",
                "shapes",
                "--dir",
                data.to_str().unwrap(),
                "--on-growth-pct",
                "10",
                "--job",
                job.to_str().unwrap(),
            ],
        )
    };
    register(&job)?;

    // Version 1: no champion yet, so the policy fires; the model becomes the first champion.
    let out = ok(d, addr, &["dataset", "scan", "shapes"])?;
    assert!(out.contains("new version 1"), "{out}");
    let h = history(d, addr)?;
    assert_eq!(
        (h[0]["outcome"].as_str(), h[0]["trigger"].as_str()),
        (Some("fired"), Some("scan"))
    );
    assert!(
        h[0]["reason"].as_str().unwrap().contains("no champion yet"),
        "{}",
        h[0]
    );
    let first = wait_job_end(d, addr, h[0]["job_id"].as_str().unwrap())?;
    assert_eq!(first["state"], "succeeded", "{first}");
    let champion = first["result"]["model_id"].as_str().unwrap().to_owned();
    let models = json(d, addr, &["models", "--dataset", "shapes"])?;
    assert_eq!(models[0]["id"], champion.as_str());
    assert_eq!(models[0]["champion"], true, "{models}");
    let v1 = json(d, addr, &["dataset", "versions", "shapes"])?[0].clone();
    assert_eq!(
        models[0]["dataset_version"], v1["root"],
        "lineage names the version"
    );

    // +5%: recorded as a version, but below the threshold: skipped, with the numbers.
    add_images(&data, 40..42)?;
    ok(d, addr, &["dataset", "scan", "shapes"])?;
    let h = history(d, addr)?;
    assert_eq!(h[0]["outcome"], "skipped", "{}", h[0]);
    assert!(
        h[0]["reason"]
            .as_str()
            .unwrap()
            .contains("grew 5.0% (120 → 126 samples) < on_growth_pct 10"),
        "{}",
        h[0]
    );

    // +15% since the champion's version: fired, pinned to version 3, evaluated against the
    // champion on version 3's test split.
    add_images(&data, 42..46)?;
    ok(d, addr, &["dataset", "scan", "shapes"])?;
    let h = history(d, addr)?;
    assert_eq!(h[0]["outcome"], "fired", "{}", h[0]);
    assert!(
        h[0]["reason"]
            .as_str()
            .unwrap()
            .contains("grew 15.0% (120 → 138"),
        "{}",
        h[0]
    );
    let third = wait_job_end(d, addr, h[0]["job_id"].as_str().unwrap())?;
    assert_eq!(third["state"], "succeeded", "{third}");
    let spec: Value = serde_json::to_value(third["spec_yaml"].as_str().unwrap())?;
    let v3 = json(d, addr, &["dataset", "versions", "shapes"])?[0].clone();
    assert!(
        spec.as_str()
            .unwrap()
            .contains(&format!("version: {}", v3["root"].as_str().unwrap()))
    );

    // The eval scored both models on the same samples: exactly version 3's test files.
    let challenger = third["result"]["model_id"].as_str().unwrap().to_owned();
    let model = reflect_call(
        addr,
        "trainfleet.v1.ModelService/Get",
        &serde_json::json!({"id": challenger}).to_string(),
    )?
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(model["datasetVersionNumber"], "3", "{model}");
    let path = |uri: &str| uri.trim_start_matches("file://").to_owned();
    let samples: Value = serde_json::from_slice(&std::fs::read(path(
        model["evalSamplesUri"].as_str().unwrap(),
    ))?)?;
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(path(v3["manifest_uri"].as_str().unwrap()))?)?;
    let test_files: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["split"] == "test")
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    let ids: Vec<&str> = samples["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    assert!(!ids.is_empty());
    assert_eq!(
        ids, test_files,
        "the eval's samples are version 3's test split, in order"
    );
    assert_eq!(samples["dataset_root"], v3["root"]);
    assert_eq!(
        samples["challenger_correct"].as_array().unwrap().len(),
        ids.len()
    );
    assert_eq!(
        samples["champion_correct"].as_array().unwrap().len(),
        ids.len(),
        "the champion was scored on the same samples"
    );
    let champion_now = json(d, addr, &["models", "--dataset", "shapes"])?
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["champion"] == true)
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .unwrap();

    // A deliberately worse challenger (one epoch at a learning rate that cannot learn): the
    // gate rejects it and the pointer does not move.
    std::fs::write(&job, job_yaml(1, 0.000001, 7))?;
    register(&job)?;
    let out = ok(
        d,
        addr,
        &["retrain", "shapes", "--reason", "try a worse config"],
    )?;
    assert!(out.contains("fired"), "{out}");
    let worse_job = history(d, addr)?[0]["job_id"].as_str().unwrap().to_owned();
    let worse = wait_job_end(d, addr, &worse_job)?;
    assert_eq!(worse["state"], "succeeded", "{worse}");
    assert_eq!(worse["result"]["promoted"], false, "{worse}");
    let reasons = worse["result"]["reasons"].to_string();
    assert!(reasons.contains("does not beat champion"), "{reasons}");
    let champion_after = json(d, addr, &["models", "--dataset", "shapes"])?
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["champion"] == true)
        .map(|m| m["id"].as_str().unwrap().to_owned());
    assert_eq!(champion_after.as_deref(), Some(champion_now.as_str()));
    // The same request again is idempotent: same version, same config.
    let out = ok(d, addr, &["retrain", "shapes"])?;
    assert!(
        out.contains("skipped") && out.contains("idempotent"),
        "{out}"
    );

    // Drift: a file of version 3 changes on disk without a scan. A retrain pinned to version 3
    // (a new config) is refused by the worker, naming the file, and trains nothing.
    image("checker", 100).save(data.join("checker/0003.png"))?;
    std::fs::write(&job, job_yaml(4, 0.01, 8))?;
    register(&job)?;
    let out = ok(d, addr, &["retrain", "shapes", "--version", "3"])?;
    assert!(out.contains("fired"), "{out}");
    let drift_job = history(d, addr)?[0]["job_id"].as_str().unwrap().to_owned();
    let drifted = wait_job_end(d, addr, &drift_job)?;
    assert_eq!(drifted["state"], "failed", "{drifted}");
    let error = drifted["error"].as_str().unwrap();
    assert!(
        error.contains("refusing to train on drifted data") && error.contains("checker/0003.png"),
        "{error}"
    );
    // The failed retrain gave its key back: nothing is pending, and it may be asked again.
    let listed = json(d, addr, &["dataset", "list"])?;
    assert_eq!(listed[0]["pending_retrain_job"], "", "{listed}");

    // By hand: promote the other model (compare-and-swap on the current champion), then roll
    // back; a stale expectation is refused with ABORTED and changes nothing.
    let other = if champion_now == champion {
        &challenger
    } else {
        &champion
    };
    let out = ok(
        d,
        addr,
        &[
            "promote",
            other,
            "--reason",
            "by hand",
            "--expect",
            &champion_now,
        ],
    )?;
    assert!(out.contains("is now the champion"), "{out}");
    let stale = cli(
        d,
        addr,
        &[
            "promote",
            &champion_now,
            "--reason",
            "x",
            "--expect",
            &champion_now,
        ],
    )?;
    assert!(!stale.status.success());
    assert!(
        String::from_utf8_lossy(&stale.stderr).contains("Aborted"),
        "{stale:?}"
    );
    let out = ok(
        d,
        addr,
        &["rollback", "shapes", "--reason", "test", "--expect", other],
    )?;
    assert!(out.contains(&champion_now), "{out}");

    let table = ok(d, addr, &["dataset", "history", "shapes"])?;
    for word in ["fired", "skipped", "manual", "scan", "idempotent"] {
        assert!(table.contains(word), "{word} missing from:\n{table}");
    }
    Ok(())
}

#[test]
fn builtin_and_object_store_datasets_are_versioned_and_retrained_pinned() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (coordinator, _worker) = cluster(d)?;
    let addr = coordinator.addr.as_str();

    // A builtin (the offline generator, small): one version of 400 samples, listed per sample.
    let job = d.join("synth.yaml");
    std::fs::write(
        &job,
        "name: synth\n\
         dataset: {synth: {train_samples: 300, test_samples: 100, seed: 5}}\n\
         model: {arch: cnn, channels: [8], hidden: [16]}\n\
         training: {epochs: 1, batch_size: 32, device: cpu}\n",
    )?;
    ok(
        d,
        addr,
        &[
            "dataset",
            "register",
            "digits",
            "--builtin",
            "synth-digits",
            "--job",
            job.to_str().unwrap(),
        ],
    )?;
    let out = ok(d, addr, &["dataset", "scan", "digits"])?;
    assert!(
        out.contains("new version 1") && out.contains("400 samples"),
        "{out}"
    );
    let again = ok(d, addr, &["dataset", "scan", "digits"])?;
    assert!(
        again.contains("unchanged"),
        "a builtin does not change: {again}"
    );
    let decision = json(d, addr, &["dataset", "history", "digits"])?[0].clone();
    assert_eq!(decision["outcome"], "fired", "{decision}");
    let trained = wait_job_end(d, addr, decision["job_id"].as_str().unwrap())?;
    assert_eq!(trained["state"], "succeeded", "{trained}");
    assert!(
        trained["spec_yaml"]
            .as_str()
            .unwrap()
            .contains(&format!("version: {}", decision["root"].as_str().unwrap())),
        "{trained}"
    );
    let model = json(d, addr, &["models", "--dataset", "digits"])?[0].clone();
    assert_eq!(
        model["dataset_version"], decision["root"],
        "the model's data root is the version's root"
    );
    let bad = cli(
        d,
        addr,
        &["dataset", "register", "x", "--builtin", "imagenet"],
    )?;
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("source.builtin"),
        "{bad:?}"
    );

    // An object-store prefix (file:// here; s3:// the same way): scanned by listing, trained
    // from a checked copy of the pinned version.
    let bucket = d.join("bucket").join("shapes");
    add_images(&bucket, 0..20)?;
    let url = format!("file://{}", bucket.display());
    std::fs::write(d.join("job.yaml"), job_yaml(2, 0.01, 7))?;
    ok(
        d,
        addr,
        &[
            "dataset",
            "register",
            "remote",
            "--url",
            &url,
            "--job",
            d.join("job.yaml").to_str().unwrap(),
        ],
    )?;
    let out = ok(d, addr, &["dataset", "scan", "remote"])?;
    assert!(
        out.contains("new version 1") && out.contains("60 samples"),
        "{out}"
    );
    let decision = json(d, addr, &["dataset", "history", "remote"])?[0].clone();
    let trained = wait_job_end(d, addr, decision["job_id"].as_str().unwrap())?;
    assert_eq!(trained["state"], "succeeded", "{trained}");
    let copy = d
        .join("data/remote")
        .join(decision["root"].as_str().unwrap())
        .join("checker/0007.png");
    assert_eq!(
        std::fs::read(copy)?,
        std::fs::read(bucket.join("checker/0007.png"))?
    );
    let gone = cli(
        d,
        addr,
        &["dataset", "register", "y", "--url", "ftp://host/x"],
    )?;
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("source.object_store_url"),
        "{gone:?}"
    );
    Ok(())
}

#[test]
fn a_bad_upload_is_left_out_and_a_class_left_empty_is_not_trained() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let data = d.join("shapes");
    add_images(&data, 0..40)?;
    let (coordinator, _worker) = cluster(d)?;
    let addr = coordinator.addr.as_str();
    let job = d.join("job.yaml");
    std::fs::write(&job, job_yaml(3, 0.01, 7))?;
    let (dir_arg, job_arg) = (data.to_str().unwrap(), job.to_str().unwrap());
    ok(
        d,
        addr,
        &[
            "dataset", "register", "shapes", "--dir", dir_arg, "--job", job_arg,
        ],
    )?;
    ok(d, addr, &["dataset", "scan", "shapes"])?;
    let first = history(d, addr)?[0]["job_id"].as_str().unwrap().to_owned();
    assert_eq!(wait_job_end(d, addr, &first)?["state"], "succeeded");

    // 50 good images and one upload that is not what its name says.
    for (class, n) in [("horizontal", 17), ("vertical", 17), ("checker", 16)] {
        for i in 100..100 + n {
            image(class, i).save(data.join(class).join(format!("{i:04}.png")))?;
        }
    }
    std::fs::write(
        data.join("checker/upload.png"),
        b"<html><body>502 Bad Gateway</body></html>",
    )?;
    let out = ok(d, addr, &["dataset", "scan", "shapes"])?;
    assert!(out.contains("new version 2"), "{out}");
    let versions = ok(d, addr, &["dataset", "versions", "shapes"])?;
    assert!(
        versions.contains("version 2: 1 entry left out"),
        "{versions}"
    );
    assert!(
        versions.contains("checker/upload.png")
            && versions.contains("not a PNG or JPEG: starts with bytes 3c 68 74 6d at byte 0"),
        "{versions}"
    );
    let v2 = json(d, addr, &["dataset", "versions", "shapes"])?[0].clone();
    assert_eq!(
        (v2["number"].as_u64(), v2["samples"].as_u64()),
        (Some(2), Some(170))
    );

    // The retrain fires on the growth, trains on the version's files only, and is gated.
    let h = history(d, addr)?;
    assert_eq!(h[0]["outcome"], "fired", "{}", h[0]);
    assert!(
        h[0]["reason"].as_str().unwrap().contains("120 → 170"),
        "{}",
        h[0]
    );
    let retrain = wait_job_end(d, addr, h[0]["job_id"].as_str().unwrap())?;
    assert_eq!(retrain["state"], "succeeded", "{retrain}");
    let result = &retrain["result"];
    assert!(result["promoted"].is_boolean(), "{retrain}");
    assert!(
        !result["reasons"].as_array().unwrap().is_empty(),
        "the gate says why: {retrain}"
    );
    // Its report names the file the version left out.
    let report = result["report"]
        .as_str()
        .unwrap()
        .trim_start_matches("file://");
    let page = std::fs::read_to_string(report)?;
    assert!(
        page.contains("1 entry left out") && page.contains("checker/upload.png"),
        "the run report lists what the version left out: {}",
        page.split("id=\"dataset\"")
            .nth(1)
            .unwrap_or("no dataset section")
            .chars()
            .take(1500)
            .collect::<String>()
    );

    // Every checker image is replaced by a broken upload: the version is recorded, the class
    // is seen as empty, and nothing trains.
    for entry in std::fs::read_dir(data.join("checker"))? {
        std::fs::write(entry?.path(), b"\x89PNG\r\n\x1a\ntruncated")?;
    }
    let out = ok(d, addr, &["dataset", "scan", "shapes"])?;
    assert!(out.contains("new version 3"), "{out}");
    let h = history(d, addr)?;
    assert_eq!(h[0]["outcome"], "skipped", "{}", h[0]);
    assert!(
        h[0]["reason"]
            .as_str()
            .unwrap()
            .contains("class `checker` has no usable samples"),
        "{}",
        h[0]
    );
    let listed = json(d, addr, &["dataset", "list"])?;
    assert_eq!(listed[0]["pending_retrain_job"], "", "{listed}");
    Ok(())
}
