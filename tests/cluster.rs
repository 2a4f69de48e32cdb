//! End-to-end: the real coordinator and worker binaries on ephemeral loopback ports, observed
//! through real reflection clients (Python grpcio-reflection over v1alpha, `buf curl` over v1).

mod support;

use std::time::Duration;

use support::*;

/// Short timings so that deadlines pass quickly; the protocol is the same at any scale.
const FAST: &[&str] = &["--heartbeat-interval", "200ms", "--lease-timeout", "1s"];

fn start_worker(dir: &std::path::Path, name: &str, coordinator: &str) -> anyhow::Result<Proc> {
    support::start_worker(dir, name, coordinator, "")
}

fn wait_for_state(addr: &str, worker: &str, state: &str, timeout: Duration) -> anyhow::Result<()> {
    wait_for(timeout, &format!("{worker} to be {state}"), || {
        let workers = list_workers(addr).ok()?;
        (worker_state(&workers, worker).as_deref() == Some(state)).then_some(())
    })
}

#[test]
fn reflection_clients_see_the_worker_and_its_devices() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coordinator = start_coordinator(dir.path(), "coordinator", "127.0.0.1:0", FAST)?;
    let addr = coordinator.addr.clone();
    let _worker = start_worker(dir.path(), "worker-a", &addr)?;
    wait_for_state(
        &addr,
        "worker-a",
        "WORKER_STATE_ALIVE",
        Duration::from_secs(30),
    )?;

    // list (v1alpha): every public service, the worker protocol, health and reflection.
    let listed = String::from_utf8(reflect(&addr, &["list"])?.stdout)?;
    for service in EXPECTED_SERVICES {
        assert!(
            listed.lines().any(|l| l == *service),
            "{service} not listed:\n{listed}"
        );
    }
    // list (v1), by the other client.
    let listed_v1 = buf_curl(&addr, &["--list-services"], "")?;
    assert!(
        listed_v1.contains("trainfleet.v1.ClusterService"),
        "{listed_v1}"
    );

    // describe: the proto comments reach the user through reflection.
    let described =
        String::from_utf8(reflect(&addr, &["describe", "trainfleet.v1.ClusterService"])?.stdout)?;
    assert!(
        described.contains("rpc ListWorkers ( .trainfleet.v1.ListWorkersRequest )"),
        "{described}"
    );
    assert!(
        described.contains("// Every worker the coordinator knows"),
        "{described}"
    );

    // health: overall and per service.
    for service in [
        "",
        "trainfleet.v1.ClusterService",
        "trainfleet.v1.WorkerService",
    ] {
        let body = format!(r#"{{"service": "{service}"}}"#);
        let health = reflect_call(&addr, "grpc.health.v1.Health/Check", &body)?.expect("health");
        assert_eq!(health["status"], "SERVING", "service {service:?}");
    }
    let unknown = reflect_call(
        &addr,
        "grpc.health.v1.Health/Check",
        r#"{"service": "nope.Service"}"#,
    )?;
    assert_eq!(unknown.unwrap_err().0, "NOT_FOUND");

    // ListWorkers as JSON: the worker with its real CPU.
    let workers = list_workers(&addr)?;
    let worker = workers
        .iter()
        .find(|w| w["workerId"] == "worker-a")
        .expect("worker-a listed");
    assert_eq!(worker["state"], "WORKER_STATE_ALIVE");
    let cpu = &worker["devices"][0];
    assert_eq!(cpu["kind"], "DEVICE_KIND_CPU");
    let cores = std::thread::available_parallelism()?.get() as u64;
    assert_eq!(cpu["cores"].as_u64(), Some(cores));
    let memory: u64 = cpu["memoryBytes"]
        .as_str()
        .expect("int64 as JSON string")
        .parse()?;
    assert!(memory > 64 << 20, "memory {memory}");
    assert!(
        worker["libtorchVersion"]
            .as_str()
            .unwrap_or_default()
            .starts_with("2.13.0"),
        "{worker}"
    );
    assert!(worker["lastHeartbeatAt"].is_string() && worker["heartbeatDeadline"].is_string());

    // The same through buf curl (reflection v1), filtered by state.
    let alive = buf_curl(
        &addr,
        &["--data", r#"{"state": "WORKER_STATE_ALIVE"}"#],
        "/trainfleet.v1.ClusterService/ListWorkers",
    )?;
    assert!(alive.contains("\"workerId\": \"worker-a\""), "{alive}");
    Ok(())
}

/// What `list` must show: the public services, the worker protocol, health, and the reflection
/// version the Python client speaks (v1alpha; `buf curl` checks v1).
const EXPECTED_SERVICES: &[&str] = &[
    "trainfleet.v1.JobService",
    "trainfleet.v1.DatasetService",
    "trainfleet.v1.ModelService",
    "trainfleet.v1.ClusterService",
    "trainfleet.v1.SweepService",
    "trainfleet.v1.WorkerService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
];

#[test]
fn killed_worker_is_lost_and_a_restarted_coordinator_is_rejoined() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut coordinator = start_coordinator(dir.path(), "coordinator", "127.0.0.1:0", FAST)?;
    let addr = coordinator.addr.clone();
    let mut doomed = start_worker(dir.path(), "doomed", &addr)?;
    let survivor = start_worker(dir.path(), "survivor", &addr)?;
    wait_for_state(
        &addr,
        "doomed",
        "WORKER_STATE_ALIVE",
        Duration::from_secs(30),
    )?;
    wait_for_state(
        &addr,
        "survivor",
        "WORKER_STATE_ALIVE",
        Duration::from_secs(30),
    )?;

    // kill -9: no goodbye; only the missed deadline tells.
    doomed.kill();
    wait_for_state(
        &addr,
        "doomed",
        "WORKER_STATE_LOST",
        Duration::from_secs(15),
    )?;
    let workers = list_workers(&addr)?;
    assert_eq!(
        worker_state(&workers, "survivor").as_deref(),
        Some("WORKER_STATE_ALIVE")
    );
    let lost = buf_curl(
        &addr,
        &["--data", r#"{"state": "WORKER_STATE_LOST"}"#],
        "/trainfleet.v1.ClusterService/ListWorkers",
    )?;
    assert!(
        lost.contains("\"doomed\"") && !lost.contains("\"survivor\""),
        "{lost}"
    );

    // Restart the coordinator on the same port: it starts with no workers, and the survivor
    // notices (its session is unknown) and registers again by itself.
    coordinator.proc.signal(libc::SIGTERM);
    assert_eq!(
        coordinator.proc.wait_exit(Duration::from_secs(10))?,
        Some(0),
        "graceful exit"
    );
    let restarted = start_coordinator(dir.path(), "coordinator-2", &addr, FAST)?;
    assert_eq!(restarted.addr, addr);
    wait_for_state(
        &addr,
        "survivor",
        "WORKER_STATE_ALIVE",
        Duration::from_secs(30),
    )?;
    let workers = list_workers(&addr)?;
    assert_eq!(
        worker_state(&workers, "doomed").as_deref(),
        Some("WORKER_STATE_LOST"),
        "the restarted coordinator remembers the lost worker from its state store"
    );
    assert!(
        survivor
            .log_text()
            .contains("lost contact with the coordinator"),
        "{}",
        survivor.log_text()
    );
    let registrations = survivor
        .log_text()
        .lines()
        .filter(|l| l.contains(" registered "))
        .count();
    assert!(
        registrations >= 2,
        "the survivor registered {registrations} time(s)"
    );
    Ok(())
}

#[test]
fn malformed_requests_get_invalid_argument_naming_the_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coordinator = start_coordinator(dir.path(), "coordinator", "127.0.0.1:0", FAST)?;
    let addr = &coordinator.addr;

    let cases = [
        (
            r#"{"workerId": "bad id", "slots": 1}"#,
            "`worker_id` has ' ' at offset 3",
        ),
        (
            r#"{"workerId": "w", "slots": 0, "devices": [{"kind": "DEVICE_KIND_CPU"}]}"#,
            "`slots` is 0",
        ),
        (
            r#"{"workerId": "w", "slots": 1, "devices": [{"kind": 9}]}"#,
            "`devices[0].kind` is 9",
        ),
        (
            r#"{"workerId": "w", "slots": 1}"#,
            "`devices` lists no DEVICE_KIND_CPU",
        ),
    ];
    for (body, expected) in cases {
        let (code, message) = reflect_call(addr, "trainfleet.v1.WorkerService/Register", body)?
            .expect_err("malformed Register must fail");
        assert_eq!(code, "INVALID_ARGUMENT", "{body}");
        assert!(message.contains(expected), "{body}: {message}");
    }
    let (code, message) = reflect_call(
        addr,
        "trainfleet.v1.ClusterService/ListWorkers",
        r#"{"state": 7}"#,
    )?
    .expect_err("unknown enum value");
    assert_eq!(
        (code.as_str(), message.contains("`state` is 7")),
        ("INVALID_ARGUMENT", true),
        "{message}"
    );

    // A session the coordinator never issued.
    let (code, message) = reflect_call(
        addr,
        "trainfleet.v1.WorkerService/Heartbeat",
        r#"{"workerId": "ghost", "sessionId": "0"}"#,
    )?
    .expect_err("unknown session");
    assert_eq!(code, "NOT_FOUND");
    assert!(message.contains("register again"), "{message}");

    // A sweep whose spec is wrong is refused naming the field, through reflection as grpcurl
    // would send it; an unknown sweep is NOT_FOUND.
    let (code, message) = reflect_call(
        addr,
        "trainfleet.v1.SweepService/Start",
        r#"{"specYaml": "job: {dataset: {builtin: synth-digits}, model: {arch: simple_cnn}}\nspace: {training.learning_rate: {log: [0, 0.1]}}\nmax_trials: 2\n"}"#,
    )?
    .expect_err("a log range from 0");
    assert_eq!(code, "INVALID_ARGUMENT");
    assert!(
        message.contains("spec_yaml:2:") && message.contains("space.training.learning_rate"),
        "{message}"
    );
    let (code, _) = reflect_call(
        addr,
        "trainfleet.v1.SweepService/Get",
        r#"{"id": "s-none"}"#,
    )?
    .expect_err("unknown sweep");
    assert_eq!(code, "NOT_FOUND");

    // Nothing malformed was recorded.
    assert!(list_workers(addr)?.is_empty());
    Ok(())
}

/// Starts `binary --config config` (plus `env`), expects exit status 1 before anything is
/// served, and returns what it printed.
fn refused_at_start(
    dir: &std::path::Path,
    name: &str,
    binary_name: &str,
    config: &std::path::Path,
    env: &[(&str, &str)],
) -> anyhow::Result<String> {
    let config = config.display().to_string();
    let mut proc =
        Proc::start_with_env(name, &binary(binary_name), &["--config", &config], env, dir)?;
    assert_eq!(
        proc.wait_exit(Duration::from_secs(20))?,
        Some(1),
        "{name} must refuse to start"
    );
    Ok(proc.log_text())
}

#[test]
fn a_typo_in_the_config_fails_at_start_with_file_line_column() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("coordinator.yaml");
    std::fs::write(&config, "listen: 127.0.0.1:0\nheartbeat_intervall: 1s\n")?;
    let log = refused_at_start(
        dir.path(),
        "coordinator",
        "trainfleet-coordinator",
        &config,
        &[],
    )?;
    assert!(
        log.contains(&format!(
            "{}:2:1: unknown field `heartbeat_intervall`",
            config.display()
        )),
        "{log}"
    );

    let worker_config = dir.path().join("worker.yaml");
    std::fs::write(
        &worker_config,
        "coordinator: 127.0.0.1:1\nslots: 1\nslotz: 2\n",
    )?;
    let log = refused_at_start(
        dir.path(),
        "worker",
        "trainfleet-worker",
        &worker_config,
        &[],
    )?;
    assert!(
        log.contains(&format!(
            "{}:3:1: unknown field `slotz`",
            worker_config.display()
        )),
        "{log}"
    );

    // Values that parse but cannot work are refused too, naming the field.
    std::fs::write(&config, "heartbeat_interval: 5s\nlease_timeout: 2s\n")?;
    let log = refused_at_start(
        dir.path(),
        "coordinator-2",
        "trainfleet-coordinator",
        &config,
        &[],
    )?;
    assert!(log.contains("`lease_timeout` (2s) must be longer"), "{log}");
    Ok(())
}

#[test]
fn environment_overrides_the_file_and_flags_override_the_environment() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("coordinator.yaml");
    std::fs::write(
        &config,
        "listen: 127.0.0.1:0\nheartbeat_interval: 1s\nlease_timeout: 10s\n",
    )?;
    let config_arg = config.display().to_string();
    let coordinator = binary("trainfleet-coordinator");

    // The environment's lease (500ms) is shorter than the file's interval (1s): refused, which
    // proves TRAINFLEET_LEASE_TIMEOUT was read over the file's 10s.
    let env = [("TRAINFLEET_LEASE_TIMEOUT", "500ms")];
    let log = refused_at_start(dir.path(), "env", "trainfleet-coordinator", &config, &env)?;
    assert!(
        log.contains("`lease_timeout` (500ms) must be longer than heartbeat_interval (1s)"),
        "{log}"
    );
    assert!(log.contains("with flag/environment overrides"), "{log}");

    // A flag beats the environment: the same start succeeds with --lease-timeout 5s.
    let addr_file = dir.path().join("addr").display().to_string();
    let args = [
        "--config",
        &config_arg,
        "--lease-timeout",
        "5s",
        "--addr-file",
        &addr_file,
    ];
    let _ok = Proc::start_with_env("flag", &coordinator, &args, &env, dir.path())?;
    wait_for(Duration::from_secs(20), "the coordinator to listen", || {
        std::fs::read_to_string(&addr_file).ok()
    })?;
    Ok(())
}

#[test]
fn a_worker_facing_a_dead_address_backs_off_without_spinning() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A port that was free a moment ago and has no listener now.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let worker = start_worker(dir.path(), "lonely", &dead)?;
    wait_for(Duration::from_secs(20), "a first reconnect attempt", || {
        worker
            .log_text()
            .contains("lost contact with the coordinator")
            .then_some(())
    })
    .map_err(|e| e.context(worker.log_text()))?;

    let cpu_before = worker.cpu_time();
    let window = Duration::from_secs(3);
    std::thread::sleep(window);
    let cpu_used = worker.cpu_time() - cpu_before;
    assert!(
        cpu_used < window / 4,
        "a waiting worker used {cpu_used:?} of CPU in {window:?}: it is spinning"
    );

    let log = worker.log_text();
    let attempts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("lost contact with the coordinator"))
        .collect();
    assert!(
        attempts.len() >= 3,
        "expected several retries in the log:\n{log}"
    );
    assert!(
        attempts.len() < 40,
        "retries must back off, not hammer:\n{log}"
    );
    let last = attempts.last().unwrap();
    assert!(
        last.contains(&dead) && last.contains("retry_in=") && last.contains("Connection refused"),
        "{last}"
    );
    assert!(log.contains("attempt=3"), "attempts are numbered:\n{log}");
    Ok(())
}

#[test]
fn sigterm_stops_the_coordinator_promptly_despite_open_long_polls() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut coordinator = start_coordinator(dir.path(), "coordinator", "127.0.0.1:0", FAST)?;
    let mut worker = start_worker(dir.path(), "poller", &coordinator.addr)?;
    wait_for_state(
        &coordinator.addr,
        "poller",
        "WORKER_STATE_ALIVE",
        Duration::from_secs(30),
    )?;
    // The worker now holds a PollTask open; shutdown must not wait for it to time out.
    coordinator.proc.signal(libc::SIGTERM);
    assert_eq!(coordinator.proc.wait_exit(Duration::from_secs(5))?, Some(0));
    assert!(coordinator.proc.log_text().contains("coordinator stopped"));
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait_exit(Duration::from_secs(5))?, Some(0));
    assert!(worker.log_text().contains("worker stopped"));
    Ok(())
}

#[test]
fn requests_over_the_limits_are_refused_saying_which_and_change_nothing() -> anyhow::Result<()> {
    use trainfleet_proto::v1;
    use trainfleet_proto::v1::dataset_service_client::DatasetServiceClient;
    let dir = tempfile::tempdir()?;
    let coordinator = start_coordinator(dir.path(), "coordinator", "127.0.0.1:0", FAST)?;
    let addr = format!("http://{}", coordinator.addr);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(addr)?
            .connect()
            .await?;
        let mut datasets = DatasetServiceClient::new(channel);
        // A 2 MiB registration: over DatasetService's 1 MiB, refused before it is decoded.
        let huge = v1::RegisterDatasetRequest {
            name: "x".repeat(2 << 20),
            ..Default::default()
        };
        let status = datasets.register(huge).await.expect_err("over the limit");
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
        assert!(
            status.message().contains("the limit is: 1048576 bytes"),
            "{status:?}"
        );
        // Metadata over the header list limit (16 KiB): the call is refused, not served.
        let mut request = tonic::Request::new(v1::ListDatasetsRequest {});
        request
            .metadata_mut()
            .insert("x-padding", "p".repeat(64 << 10).parse()?);
        let refused = datasets.list(request).await.expect_err("over the limit");
        // hyper ends the connection with ENHANCE_YOUR_CALM ("header_list_way_too_large").
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
        // The coordinator serves on (hyper closes the offending connection), and nothing was
        // registered.
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", coordinator.addr))?
                .connect()
                .await?;
        let listed = DatasetServiceClient::new(channel)
            .list(v1::ListDatasetsRequest {})
            .await?
            .into_inner();
        assert!(listed.datasets.is_empty(), "{listed:?}");
        anyhow::Ok(())
    })
}
