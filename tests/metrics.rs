//! Metrics end to end: a real Prometheus server (Debian's) scrapes a coordinator and a worker
//! while a job trains; its HTTP API then answers queries with the values the job implies. The
//! alert rules the chart ships pass `promtool check rules` and their unit tests.

mod support;

use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use support::*;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One instant query: the value of each series, by its labels.
fn query(prometheus: &str, promql: &str) -> anyhow::Result<Vec<(Value, f64)>> {
    let text = ureq::get(format!("{prometheus}/api/v1/query"))
        .query("query", promql)
        .call()?
        .body_mut()
        .read_to_string()?;
    let answer: Value = serde_json::from_str(&text)?;
    anyhow::ensure!(answer["status"] == "success", "{promql}: {answer}");
    Ok(answer["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let value = r["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            (r["metric"].clone(), value)
        })
        .collect())
}

/// The single value of `promql`, once Prometheus has one.
fn value(prometheus: &str, promql: &str) -> Option<f64> {
    match query(prometheus, promql).ok()?.as_slice() {
        [(_, v)] => Some(*v),
        _ => None,
    }
}

#[test]
fn prometheus_scrapes_both_and_sees_what_a_job_did() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (coordinator_metrics, worker_metrics, prometheus_port) =
        (free_port()?, free_port()?, free_port()?);
    let metrics_flag = format!("127.0.0.1:{coordinator_metrics}");
    let coordinator = start_coordinator(
        dir.path(),
        "coordinator",
        "127.0.0.1:0",
        &[
            "--heartbeat-interval",
            "200ms",
            "--lease-timeout",
            "2s",
            "--metrics-listen",
            &metrics_flag,
        ],
    )?;
    let addr = coordinator.addr.as_str();
    let _worker = start_worker(
        dir.path(),
        "w1",
        addr,
        &format!("metrics_listen: 127.0.0.1:{worker_metrics}\n"),
    )?;

    // The endpoint itself: OpenMetrics text, no ids as labels.
    let text = wait_for(Duration::from_secs(20), "the worker's metrics", || {
        ureq::get(format!("http://127.0.0.1:{worker_metrics}/metrics"))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()
    })?;
    assert!(
        text.contains("trainfleet_worker_connected") && text.ends_with("# EOF\n"),
        "{text}"
    );

    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n\
             - job_name: coordinator\n  static_configs: [{{targets: ['127.0.0.1:{coordinator_metrics}']}}]\n\
             - job_name: worker\n  static_configs: [{{targets: ['127.0.0.1:{worker_metrics}']}}]\n"
        ),
    )?;
    let _prometheus = Proc::start(
        "prometheus",
        std::path::Path::new("prometheus"),
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
            &format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
        ],
        dir.path(),
    )
    .context("starting prometheus (make setup installs Debian's)")?;
    let prometheus = format!("http://127.0.0.1:{prometheus_port}");
    wait_for(Duration::from_secs(30), "both targets up", || {
        (value(&prometheus, "sum(up)")? == 2.0).then_some(())
    })?;

    // A job trains and is evaluated; a Get of an unknown job is NOT_FOUND.
    let submitted = reflect_call(
        addr,
        "trainfleet.v1.JobService/Submit",
        &json!({"yaml": synth_job("scraped", 2, 1)}).to_string(),
    )?
    .map_err(|e| anyhow::anyhow!("submit: {e:?}"))?;
    let id = submitted["job"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let missing = reflect_call(addr, "trainfleet.v1.JobService/Get", r#"{"id": "j-nope"}"#)?;
    assert_eq!(missing.map_err(|e| e.0).unwrap_err(), "NOT_FOUND");
    wait_for(Duration::from_secs(120), "the job to end", || {
        let job = reflect_call(
            addr,
            "trainfleet.v1.JobService/Get",
            &json!({"id": id}).to_string(),
        )
        .ok()?
        .ok()?;
        (job["state"] == "JOB_STATE_SUCCEEDED").then_some(())
    })?;

    // What Prometheus now knows, as the job implies it (waiting for the next scrapes).
    let expect = |promql: &str, check: &dyn Fn(f64) -> bool| -> anyhow::Result<f64> {
        wait_for(Duration::from_secs(20), promql, || {
            value(&prometheus, promql).filter(|v| check(*v))
        })
    };
    expect("trainfleet_is_leader", &|v| v == 1.0)?;
    expect("trainfleet_workers{state=\"alive\"}", &|v| v == 1.0)?;
    expect("trainfleet_queue_depth", &|v| v == 0.0)?;
    // One train task and one eval, both succeeded; each was scheduled once.
    expect(
        "trainfleet_task_duration_seconds_count{outcome=\"succeeded\"}",
        &|v| v == 2.0,
    )?;
    expect("trainfleet_schedule_to_start_seconds_count", &|v| v == 2.0)?;
    // The first model of a dataset has no champion to beat: promoted.
    expect("trainfleet_promotions_total{result=\"promoted\"}", &|v| {
        v == 1.0
    })?;
    expect(
        "trainfleet_grpc_requests_total{method=\"trainfleet.v1.JobService/Submit\",code=\"OK\"}",
        &|v| v == 1.0,
    )?;
    expect(
        "trainfleet_grpc_requests_total{method=\"trainfleet.v1.JobService/Get\",code=\"NOT_FOUND\"}",
        &|v| v == 1.0,
    )?;
    expect("trainfleet_store_commit_seconds_count", &|v| v > 0.0)?;
    // The worker: two epochs at some positive speed, one train and one eval task.
    expect("trainfleet_worker_epoch_seconds_count", &|v| v == 2.0)?;
    expect("trainfleet_worker_images_per_second", &|v| v > 0.0)?;
    expect(
        "trainfleet_worker_tasks_total{kind=\"train\",outcome=\"succeeded\"}",
        &|v| v == 1.0,
    )?;
    expect(
        "trainfleet_worker_tasks_total{kind=\"eval\",outcome=\"succeeded\"}",
        &|v| v == 1.0,
    )?;
    expect("trainfleet_worker_connected", &|v| v == 1.0)?;
    expect(
        "trainfleet_worker_device_memory_bytes{device=\"cpu\"}",
        &|v| v > 1e6,
    )?;
    // No series carries a job, task or worker id.
    let labels = query(&prometheus, "{__name__=~\"trainfleet_.*\"}")?;
    for (metric, _) in &labels {
        let shown = metric.to_string();
        assert!(
            !shown.contains(&id) && !shown.contains("\"w1\"") && !shown.contains("task_id"),
            "{shown}"
        );
    }
    Ok(())
}

/// The value of one sample (`name{labels}` exactly as exposed) in OpenMetrics text; 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_busy_worker_takes_its_next_task_in_its_report_and_never_runs_more_than_its_slots()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let metrics_port = free_port()?;
    let metrics_flag = format!("127.0.0.1:{metrics_port}");
    let coordinator = start_coordinator(
        dir.path(),
        "coordinator",
        "127.0.0.1:0",
        &["--metrics-listen", &metrics_flag],
    )?;
    let addr = coordinator.addr.as_str();
    // Ten short jobs queued before the worker comes: it is busy from its first poll to the end.
    let mut ids = Vec::new();
    for i in 0..10 {
        let body = json!({"sleep": {"duration": "0.2s", "name": format!("nap-{i}")}});
        let job = reflect_call(addr, "trainfleet.v1.JobService/Submit", &body.to_string())?
            .map_err(|e| anyhow::anyhow!("submit: {e:?}"))?;
        ids.push(job["job"]["id"].as_str().unwrap_or_default().to_owned());
    }
    // Polls that wait the coordinator's longest: once the queue is dry, the last report holds
    // the poll open and no idle PollTask adds to the count.
    let _worker = start_worker(dir.path(), "w1", addr, "slots: 2\npoll_wait: 30s\n")?;
    let mut spans = Vec::new();
    for id in &ids {
        let job = wait_for(Duration::from_secs(60), "the jobs to end", || {
            let job = reflect_call(
                addr,
                "trainfleet.v1.JobService/Get",
                &json!({ "id": id }).to_string(),
            )
            .ok()?
            .ok()?;
            (job["state"] == "JOB_STATE_SUCCEEDED").then_some(job)
        })?;
        let at = |field: &str| {
            humantime::parse_rfc3339(job[field].as_str().unwrap_or_default())
                .with_context(|| format!("{id}: {field} in {job}"))
        };
        spans.push((at("startedAt")?, at("finishedAt")?));
    }
    // Never more than its two slots at once, as the coordinator saw the leases.
    for (start, _) in &spans {
        let running = spans
            .iter()
            .filter(|(s, f)| s <= start && start < f)
            .count();
        assert!(
            running <= 2,
            "{running} jobs running at {start:?}: {spans:?}"
        );
    }
    // Every report was recorded, and every next task came with one: a PollTask for each of
    // the first two slots (one more if a task ended while the second was still open). The
    // last two reports are still open, waiting for work, so they are not counted yet.
    let text = ureq::get(format!("http://{metrics_flag}/metrics"))
        .call()?
        .body_mut()
        .read_to_string()?;
    let calls = |method: &str| {
        sample(
            &text,
            &format!(
                "trainfleet_grpc_requests_total{{method=\"trainfleet.v1.WorkerService/{method}\",code=\"OK\"}}"
            ),
        )
    };
    assert!(
        (8.0..=10.0).contains(&calls("CompleteTask")),
        "CompleteTask {}: {text}",
        calls("CompleteTask")
    );
    assert!(
        (1.0..=3.0).contains(&calls("PollTask")),
        "PollTask {}: {text}",
        calls("PollTask")
    );
    Ok(())
}

#[test]
fn the_alert_rules_pass_promtool_and_fire_when_they_should() -> anyhow::Result<()> {
    let files = repo_root().join("k8s/charts/trainfleet/files");
    for args in [
        &["check", "rules", "alerts.yaml"][..],
        &["test", "rules", "alerts-test.yaml"][..],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&files)
            .output()
            .context("promtool (make setup installs Debian's prometheus)")?;
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
