//! Run reports end to end: two real trainings through `trainfleet run` (the second is compared
//! with the first's model), then the second run's report is
//!
//! - opened in headless Chromium from its `file://` URL inside a network namespace with no
//!   network (so nothing can come from a CDN): no console messages from the page, every chart's
//!   element drawn with data in it, and a screenshot written to
//!   `target/test-artifacts/report.png` for a person to look at;
//! - checked as files: every PNG decodes, has a sensible size and is not blank, and
//!   `report.json` holds the comparison the CLI printed.
//!
//! Then the same state directory is served (`trainfleet run --serve`) and the two runs are
//! listed, shown and compared with `trainfleet runs`; the comparison page is opened offline in
//! Chromium too, its overlaid curves drawn.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use support::{Proc, assert_png_drawn, binary, repo_root, trainfleet_run, wait_for};

/// The Chromium the setup script installs (Debian's `chromium`), or `TRAINFLEET_CHROMIUM`.
fn chromium() -> PathBuf {
    let path = std::env::var_os("TRAINFLEET_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.is_file(),
        "{} not found: run scripts/setup.sh (it installs Debian's chromium)",
        path.display()
    );
    path
}

/// A command that runs `program` in a new network namespace: only a loopback interface, down.
fn offline(program: &Path) -> Command {
    let probe = |args: &[&str]| {
        Command::new("unshare")
            .args(args)
            .arg("true")
            .status()
            .is_ok_and(|s| s.success())
    };
    let args: &[&str] = if probe(&["--net"]) {
        &["--net"]
    } else if probe(&["--net", "--map-root-user"]) {
        &["--net", "--map-root-user"]
    } else {
        panic!(
            "cannot create a network namespace with unshare(1); the report must be shown offline"
        );
    };
    let mut command = Command::new("unshare");
    command.args(args).arg(program);
    command
}

/// Headless Chromium with the flags that keep it from reaching out on its own.
fn headless(profile: &Path) -> Command {
    let mut command = offline(&chromium());
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=15000",
        "--window-size=1300,3600",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// The rendered DOM's part that belongs to the chart element `id` (up to the next chart).
fn chart_markup<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("chart {id} is not in the rendered page"));
    let start = dom[..at].rfind("<div").expect("the chart is a div");
    let rest = &dom[start..];
    let end = rest[1..]
        .find("<div class=\"chart")
        .map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

#[test]
fn a_real_report_renders_offline_in_headless_chromium() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let job = |seed: u32, lr: &str| {
        format!(
            "name: report-e2e\ndataset:\n  builtin: synth-digits\n  synth: {{train_samples: 1500, test_samples: 300, seed: 5}}\n\
             model: {{arch: simple_cnn}}\n\
             training: {{epochs: 2, batch_size: 64, optimizer: adam, learning_rate: {lr}, threads: 1, seed: {seed}}}\n\
             gate: {{mcnemar_alpha: 0.05}}\n"
        )
    };
    let first = dir.path().join("first.yaml");
    std::fs::write(&first, job(1, "0.001"))?;
    let second = dir.path().join("second.yaml");
    std::fs::write(&second, job(2, "0.002"))?;
    let out = trainfleet_run(&state, &first)?;
    let champion = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("model "))
        .and_then(|l| l.split(':').next())
        .expect("the first run names its model")
        .to_owned();
    let out = trainfleet_run(&state, &second)?;
    let uri = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("report: "))
        .unwrap_or_else(|| panic!("no report link in:\n{out}"));
    let page = PathBuf::from(uri.strip_prefix("file://").expect("a local report"));
    let report_dir = page.parent().unwrap();

    // The files: every PNG decodes and is drawn; the data holds the comparison the CLI printed.
    let pngs: Vec<PathBuf> = std::fs::read_dir(report_dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    let pngs: Vec<PathBuf> = pngs
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    for name in [
        "curves.png",
        "confusion.png",
        "confusion_normalised.png",
        "per_class.png",
        "distribution.png",
        "comparison.png",
        "samples.png",
        "misclassified.png",
        "confident.png",
    ] {
        assert!(pngs.iter().any(|p| p.ends_with(name)), "{name} missing");
    }
    for png in &pngs {
        assert_png_drawn(png);
    }
    let data: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("report.json"))?)?;
    assert_eq!(data["comparison"]["champion_id"], champion.as_str());
    assert_eq!(data["epochs"].as_array().unwrap().len(), 2);
    let reasons = data["comparison"]["gate"]["reasons"].as_array().unwrap();
    assert!(!reasons.is_empty());
    for reason in reasons {
        assert!(
            out.contains(reason.as_str().unwrap()),
            "{reason} not in\n{out}"
        );
    }
    assert!(data["comparison"]["gate"]["mcnemar"]["p_value"].is_number());

    // The page, offline: the rendered DOM, and the console.
    let html = std::fs::read_to_string(&page)?;
    let ids: Vec<&str> = html
        .match_indices("<div class=\"chart\" id=\"")
        .map(|(i, m)| {
            let rest = &html[i + m.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect();
    assert_eq!(
        ids,
        [
            "chart-loss",
            "chart-accuracy",
            "chart-comparison",
            "chart-confusion",
            "chart-confusion-normalised",
            "chart-per-class",
            "chart-distribution"
        ]
    );
    let url = format!("file://{}", page.display());
    let dumped = headless(&dir.path().join("profile-dom"))
        .arg("--dump-dom")
        .arg(&url)
        .output()?;
    assert!(
        dumped.status.success(),
        "{}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    let dom = String::from_utf8(dumped.stdout)?;
    let log = String::from_utf8_lossy(&dumped.stderr);
    // Console output of the page itself (Chromium's own pages log to the same stream).
    let console: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(":CONSOLE") && l.contains("source: file://"))
        .collect();
    assert!(
        console.is_empty(),
        "the page logged:\n{}",
        console.join("\n")
    );
    for id in &ids {
        let chart = chart_markup(&dom, id);
        assert!(
            chart.contains("js-plotly-plot") && chart.contains("main-svg"),
            "{id} was not drawn"
        );
        let lines = chart.matches("class=\"js-line\" d=\"M").count();
        let bars = chart.matches("class=\"point\"><path d=\"M").count();
        let heatmap = chart.contains("class=\"hm\"") && chart.contains("data:image/png");
        assert!(
            lines > 0 || bars > 0 || heatmap,
            "{id} has no data drawn in it"
        );
        match *id {
            // Each series draws its line, and its legend entry one more.
            "chart-loss" | "chart-accuracy" => assert!(lines >= 2, "{id}: {lines} lines"),
            "chart-confusion" | "chart-confusion-normalised" => assert!(heatmap, "{id}"),
            _ => assert!(bars >= 10, "{id}: {bars} bars"),
        }
    }
    for grid in ["samples", "misclassified", "confident"] {
        assert!(dom.contains(&format!("id=\"{grid}\"")), "{grid}");
    }

    // A screenshot for a person to look at.
    let shots = repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&shots)?;
    let shot = shots.join("report.png");
    let _ = std::fs::remove_file(&shot);
    let taken = headless(&dir.path().join("profile-shot"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()?;
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    assert_png_drawn(&shot);
    eprintln!("report screenshot: {}", shot.display());

    runs_are_listed_shown_and_compared(dir.path(), &state, &champion)
}

/// Drawn traces in a rendered chart: its lines (each series' line and legend entry).
fn drawn_lines(dom: &str, id: &str) -> usize {
    chart_markup(dom, id)
        .matches("class=\"js-line\" d=\"M")
        .count()
}

fn runs_are_listed_shown_and_compared(
    dir: &Path,
    state: &Path,
    first_model: &str,
) -> anyhow::Result<()> {
    let serve = Proc::start(
        "serve",
        &binary("trainfleet"),
        &[
            "run",
            "--serve",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            state.to_str().unwrap(),
        ],
        dir,
    )?;
    let addr = wait_for(Duration::from_secs(30), "the embedded coordinator", || {
        serve
            .log_text()
            .lines()
            .find_map(|l| l.strip_prefix("coordinator listening on "))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_owned)
    })?;
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(binary("trainfleet"))
            .args(args)
            .args(["--endpoint", &addr])
            .current_dir(dir)
            .output()?;
        let stdout = String::from_utf8(out.stdout)?;
        anyhow::ensure!(
            out.status.success(),
            "{args:?}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    };
    let listed: serde_json::Value = serde_json::from_str(&cli(&["runs", "list", "--json"])?)?;
    let runs = listed.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{listed:#}");
    let (second, first) = (&runs[0], &runs[1]);
    assert_eq!(first["result"]["model_id"], first_model);
    for run in runs {
        assert_eq!(run["run"]["device"], "cpu");
        assert_eq!(run["run"]["threads"], 1);
        assert!(
            run["run"]["libtorch_version"]
                .as_str()
                .unwrap()
                .starts_with("2.13")
        );
        assert_eq!(run["run"]["dataset_root"].as_str().unwrap().len(), 64);
        assert_eq!(
            run["run"]["artifact_sha256"]["model.safetensors"]
                .as_str()
                .unwrap()
                .len(),
            64
        );
        assert_eq!(run["params"]["training.epochs"], "2");
        assert_eq!(run["epochs"].as_array().unwrap().len(), 2);
    }
    let (a, b) = (
        first["id"].as_str().unwrap(),
        second["id"].as_str().unwrap(),
    );
    // The weights' hash as recorded is the file's.
    let weights = Path::new(
        first["run"]["run_uri"]
            .as_str()
            .unwrap()
            .strip_prefix("file://")
            .unwrap(),
    )
    .join("model.safetensors");
    let digest: String = sha2::Digest::finalize(sha2::Digest::chain_update(
        <sha2::Sha256 as sha2::Digest>::new(),
        std::fs::read(&weights)?,
    ))
    .iter()
    .map(|b| format!("{b:02x}"))
    .collect();
    assert_eq!(
        first["run"]["artifact_sha256"]["model.safetensors"],
        digest.as_str()
    );

    let shown = cli(&["runs", "show", b])?;
    for part in [
        "system: cpu (1 threads)",
        "TRAIN_LOSS",
        "model.safetensors",
        "training.learning_rate = 0.002",
        "report: file://",
    ] {
        assert!(shown.contains(part), "{part} not in\n{shown}");
    }

    let page = dir.join("compare.html");
    let compared = cli(&["runs", "compare", a, b, "--out", page.to_str().unwrap()])?;
    assert!(
        compared.contains("training.learning_rate  0.001"),
        "{compared}"
    );
    assert!(compared.contains("training.seed"), "{compared}");
    assert!(
        !compared.contains("training.epochs"),
        "equal params are not listed: {compared}"
    );
    let dumped = headless(&dir.join("profile-compare"))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()?;
    let dom = String::from_utf8(dumped.stdout)?;
    for id in ["chart-loss", "chart-accuracy"] {
        // Two runs, train and validation each: four lines, each with a legend entry.
        assert!(
            drawn_lines(&dom, id) >= 4,
            "{id}: {} lines",
            drawn_lines(&dom, id)
        );
    }

    // A dataset report before any training: an image folder registered by name.
    let folder = dir.join("shapes");
    for (c, class) in ["circle", "square", "triangle"].iter().enumerate() {
        std::fs::create_dir_all(folder.join(class))?;
        for i in 0..12u8 {
            let image = image::RgbImage::from_fn(16, 16, |x, y| {
                image::Rgb([40 * c as u8 + i, (x * 15) as u8, (y * 15) as u8 ^ i])
            });
            image.save(folder.join(class).join(format!("{i:02}.png")))?;
        }
    }
    cli(&[
        "dataset",
        "register",
        "shapes",
        "--dir",
        folder.to_str().unwrap(),
    ])?;
    let out_dir = dir.join("shapes-report");
    let reported = cli(&[
        "dataset",
        "report",
        "shapes",
        "--out",
        out_dir.to_str().unwrap(),
    ])?;
    assert!(
        reported.contains("3 classes, images [3, 16, 16]"),
        "{reported}"
    );
    let total: u64 = reported
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    assert_eq!(total, 36, "{reported}");
    for png in ["distribution.png", "samples.png"] {
        assert_png_drawn(&out_dir.join(png));
    }
    let dumped = headless(&dir.join("profile-dataset"))
        .arg("--dump-dom")
        .arg(format!("file://{}", out_dir.join("dataset.html").display()))
        .output()?;
    let dom = String::from_utf8(dumped.stdout)?;
    let bars = chart_markup(&dom, "chart-distribution")
        .matches("class=\"point\"><path d=\"M")
        .count();
    assert!(bars >= 6, "{bars} bars: 3 classes in at least two splits");
    assert_eq!(
        dom.matches("<figure").count(),
        24,
        "8 samples of each class"
    );
    drop(serve);
    Ok(())
}

/// A report that cannot be written (here: a file sits where the eval's report directory goes)
/// is recorded on the job, and the run still succeeds and promotes its model.
#[test]
fn a_report_that_cannot_be_made_fails_nothing() -> anyhow::Result<()> {
    use std::io::BufRead;

    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let job = dir.path().join("job.yaml");
    std::fs::write(
        &job,
        "name: no-report\ndataset:\n  builtin: synth-digits\n  synth: {train_samples: 3000, test_samples: 300, seed: 2}\n\
         model: {arch: simple_cnn}\ntraining: {epochs: 3, batch_size: 32, threads: 1}\n",
    )?;
    let mut child = Command::new(binary("trainfleet"))
        .arg("run")
        .arg(&job)
        .arg("--state-dir")
        .arg(&state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut out = String::new();
    // As soon as the job is queued (it trains for seconds), block the eval's report directory.
    for line in lines.by_ref() {
        let line = line?;
        out.push_str(&line);
        out.push('\n');
        if let Some(id) = line
            .strip_prefix("job ")
            .and_then(|r| r.strip_suffix(" queued"))
        {
            let base = state.join("work/eval").join(format!("{id}-eval"));
            std::fs::create_dir_all(&base)?;
            std::fs::write(base.join("report"), "in the way")?;
            break;
        }
    }
    for line in lines {
        out.push_str(&line?);
        out.push('\n');
    }
    let status = child.wait()?;
    assert!(status.success(), "{out}");
    assert!(out.contains(": succeeded"), "{out}");
    assert!(
        out.contains("promoted: first model of its dataset"),
        "{out}"
    );
    assert!(
        out.contains("report: not made (") && out.contains("report"),
        "{out}"
    );
    Ok(())
}
