//! End-to-end dataset versions: a real coordinator and worker, datasets registered and scanned
//! through a real reflection client (JSON, as with grpcurl).

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::*;

const FAST: &[&str] = &["--heartbeat-interval", "200ms", "--lease-timeout", "2s"];

fn call(addr: &str, method: &str, body: Value) -> anyhow::Result<Value> {
    reflect_call(addr, method, &body.to_string())?
        .map_err(|(code, message)| anyhow::anyhow!("{method}: {code}: {message}"))
}

fn images(root: &Path, class: &str, range: std::ops::Range<usize>) -> anyhow::Result<()> {
    std::fs::create_dir_all(root.join(class))?;
    for i in range {
        // A real PNG (scans check that images decode) whose one row of pixels says which it is.
        let text = format!("{class} image {i}").into_bytes();
        let png = image::GrayImage::from_raw(text.len() as u32, 1, text).expect("one row");
        png.save(root.join(class).join(format!("{i:04}.png")))?;
    }
    Ok(())
}

#[test]
fn scans_record_a_version_only_when_the_content_changes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("pets");
    images(&data, "cat", 0..40)?;
    images(&data, "dog", 0..40)?;
    let coordinator = start_coordinator(dir.path(), "coordinator", "127.0.0.1:0", FAST)?;
    let addr = coordinator.addr.as_str();
    let _worker = start_worker(dir.path(), "scanner", addr, "")?;

    let registered = call(
        addr,
        "trainfleet.v1.DatasetService/Register",
        json!({
            "name": "pets",
            "source": {"directory": data.display().to_string(), "format": "imagefolder"},
            "policy": {"onGrowthPct": 10.0, "onContentChange": true},
        }),
    )?;
    assert_eq!(registered["name"], "pets");

    let scan = |full: bool| {
        call(
            addr,
            "trainfleet.v1.DatasetService/Scan",
            json!({"name": "pets", "full": full}),
        )
    };
    let first = scan(false)?;
    assert_eq!(first["changed"], true, "{first}");
    let v1 = &first["version"];
    assert_eq!(
        (v1["number"].as_str(), v1["sampleCount"].as_str()),
        (Some("1"), Some("80"))
    );
    assert_eq!(v1["counts"]["byClass"]["cat"], "40");
    assert!(
        v1["manifestUri"].as_str().unwrap().starts_with("file://"),
        "{v1}"
    );

    // Nothing changed: same version, nothing new recorded (also with a full re-read).
    for full in [false, true] {
        let again = scan(full)?;
        // Proto3 JSON leaves `false` out.
        assert!(!again["changed"].as_bool().unwrap_or(false), "{again}");
        assert_eq!(again["version"]["rootHash"], v1["rootHash"]);
    }

    // Growth: a new version with the diff. One upload is not an image at all (an HTML error
    // page saved as .png): the version leaves it out and says why, so no training sees it.
    images(&data, "dog", 40..50)?;
    std::fs::write(data.join("dog/fake.png"), "<html>502 Bad Gateway</html>")?;
    let grown = scan(false)?;
    assert_eq!(grown["changed"], true);
    let v2 = &grown["version"];
    assert_eq!(
        (v2["number"].as_str(), v2["added"].as_str()),
        (Some("2"), Some("10"))
    );
    assert_eq!(v2["skippedCount"], "1", "{v2}");
    assert_eq!(v2["skipped"][0]["path"], "dog/fake.png", "{v2}");
    let why = v2["skipped"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("not a PNG or JPEG: starts with bytes 3c 68 74 6d at byte 0"),
        "{why}"
    );
    // `trainfleet dataset versions` shows it too.
    let out = std::process::Command::new(binary("trainfleet"))
        .args(["dataset", "versions", "pets", "--endpoint", addr])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("version 2: 1 entry left out")
            && text.contains("dog/fake.png: not a PNG or JPEG"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let listed = call(
        addr,
        "trainfleet.v1.DatasetService/ListVersions",
        json!({"name": "pets"}),
    )?;
    let numbers: Vec<&str> = listed["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["number"].as_str().unwrap())
        .collect();
    assert_eq!(numbers, ["2", "1"], "newest first");
    let latest = call(
        addr,
        "trainfleet.v1.DatasetService/GetVersion",
        json!({"name": "pets", "version": "latest"}),
    )?;
    assert_eq!(latest["rootHash"], v2["rootHash"]);
    let by_root = call(
        addr,
        "trainfleet.v1.DatasetService/GetVersion",
        json!({"name": "pets", "version": v1["rootHash"]}),
    )?;
    assert_eq!(by_root["number"], "1");

    // The directory vanishes: the scan fails with the reason and records nothing.
    std::fs::rename(&data, dir.path().join("moved"))?;
    let (code, message) = reflect_call(
        addr,
        "trainfleet.v1.DatasetService/Scan",
        &json!({"name": "pets"}).to_string(),
    )?
    .expect_err("vanished");
    assert_eq!(code, "FAILED_PRECONDITION");
    assert!(
        message.contains("pets") && message.contains("cannot scan"),
        "{message}"
    );
    let latest = call(
        addr,
        "trainfleet.v1.DatasetService/GetVersion",
        json!({"name": "pets", "version": "latest"}),
    )?;
    assert_eq!(latest["number"], "2", "no broken version");

    // A directory no worker has: the coordinator cannot know (it may not see the workers'
    // disks), so it registers; the scan, run where the data should be, names the path.
    call(
        addr,
        "trainfleet.v1.DatasetService/Register",
        json!({"name": "gone", "source": {"directory": "/nonexistent/x"}}),
    )?;
    let (code, message) = reflect_call(
        addr,
        "trainfleet.v1.DatasetService/Scan",
        &json!({"name": "gone"}).to_string(),
    )?
    .expect_err("no such directory on the worker");
    assert_eq!(code, "FAILED_PRECONDITION");
    assert!(
        message.contains("/nonexistent/x") && message.contains("cannot scan"),
        "{message}"
    );

    // A directory outside the worker's data roots (the test's directory): the scan is refused
    // naming the field, and no version is recorded.
    let outside = tempfile::tempdir()?;
    images(&outside.path().join("secrets"), "cat", 0..3)?;
    call(
        addr,
        "trainfleet.v1.DatasetService/Register",
        json!({"name": "secrets", "source": {"directory": outside.path().join("secrets").display().to_string()}}),
    )?;
    let (code, message) = reflect_call(
        addr,
        "trainfleet.v1.DatasetService/Scan",
        &json!({"name": "secrets"}).to_string(),
    )?
    .expect_err("outside the data roots");
    assert_eq!(code, "FAILED_PRECONDITION");
    assert!(
        message.contains("permission denied: `scan.directory`")
            && message.contains("outside this worker's data roots"),
        "{message}"
    );
    Ok(())
}

#[test]
fn bad_registrations_are_refused_naming_the_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coordinator = start_coordinator(dir.path(), "coordinator", "127.0.0.1:0", FAST)?;
    let addr = coordinator.addr.as_str();
    let refused = |body: Value| {
        reflect_call(
            addr,
            "trainfleet.v1.DatasetService/Register",
            &body.to_string(),
        )
        .map(|r| r.expect_err("refused"))
    };
    let dir_text = dir.path().display().to_string();
    let (code, message) = refused(json!({"name": "Bad Name", "source": {"directory": dir_text}}))?;
    assert_eq!(code, "INVALID_ARGUMENT");
    assert!(message.contains("`name`"), "{message}");
    let (code, message) = refused(json!({
        "name": "neg", "source": {"directory": dir_text}, "policy": {"onGrowthPct": -5}
    }))?;
    assert_eq!(code, "INVALID_ARGUMENT");
    assert!(message.contains("policy.on_growth_pct"), "{message}");
    let (code, message) = refused(json!({
        "name": "job", "source": {"directory": dir_text},
        "policy": {"jobYaml": "model: {arch: resnet9000}\n"}
    }))?;
    assert_eq!(code, "INVALID_ARGUMENT");
    assert!(message.contains("policy.job_yaml:1:"), "{message}");
    let listed = call(addr, "trainfleet.v1.DatasetService/List", json!({}))?;
    assert!(
        listed["datasets"].as_array().is_none_or(Vec::is_empty),
        "{listed}"
    );
    let (code, _) = reflect_call(
        addr,
        "trainfleet.v1.DatasetService/Scan",
        &json!({"name": "unknown"}).to_string(),
    )?
    .expect_err("unknown dataset");
    assert_eq!(code, "NOT_FOUND");
    Ok(())
}
