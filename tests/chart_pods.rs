//! The rendered chart runs. A release (`prod` in namespace `ml`, from `ci/pods-values.yaml`) is
//! rendered with Helm's engine and validated as in `tests/chart.rs`; then its etcd StatefulSet,
//! coordinator Deployment, CPU worker group and `helm test` Pod are started from the rendered
//! specs, as written (image, command, args, env, mounted config and Secrets, security context),
//! by the small kubelet of `charts/kubelet.rs`, on a podman network where the Services' names
//! resolve to their pods. The object store the values name (`s3.storage.svc`) is the test's S3
//! API server, and the Secret they name is added as a user would add it.
//!
//! The release serves TLS and wants tokens, from Secrets the test adds (a certificate for the
//! Service's name from the test's CA; the bootstrap, worker and viewer tokens): replicas forward
//! to the leader's pod IP verifying the Service's name, workers join with the CA and the
//! workers' token, the helm test checks with the viewer's.
//!
//! Through the client Service's name only, from a client pod (grpcio with server reflection, as
//! grpcurl would call, with the CA and a token): the helm test hook passes, a training job
//! completes, and a client balancing over the Service's pods is answered by a follower, which
//! forwarded to the leader.

mod charts;
mod support;

use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};

const SERVICE: &str = "prod-trainfleet.ml.svc:50051";
const BUCKET: &str = "trainfleet";
/// The first admin's secret, in the tokens Secret.
const BOOTSTRAP: &str = "pods-test-bootstrap-token-0123456789abcdef";

/// Calls `method` through the Service name from the client pod; the JSON answer.
fn call(
    kubelet: &charts::kubelet::Kubelet,
    client: &charts::kubelet::Pod,
    verb: &[&str],
) -> anyhow::Result<Value> {
    let mut program = vec![
        "python3",
        "-W",
        "ignore",
        "/opt/clients/reflect.py",
        SERVICE,
    ];
    program.extend(verb);
    let out = kubelet.exec(client, &program)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{verb:?} through {SERVICE}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).with_context(|| format!("{verb:?}: {stdout}"))
}

fn etcd_version() -> anyhow::Result<String> {
    let out = std::process::Command::new("etcd")
        .arg("--version")
        .output()?;
    String::from_utf8(out.stdout)?
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version: "))
        .map(str::to_owned)
        .context("etcd --version")
}

#[test]
fn the_rendered_pods_complete_a_job_through_the_service_and_a_follower_answers()
-> anyhow::Result<()> {
    let images =
        std::process::Command::new(support::repo_root().join("tests/containers/images.sh"))
            .output()?;
    ensure!(
        images.status.success(),
        "tests/containers/images.sh: {}",
        String::from_utf8_lossy(&images.stderr)
    );
    let values = charts::ci("pods-values.yaml");
    let tag = format!("etcd.image.tag={}", etcd_version()?);
    let docs = charts::install_with(&[
        "-f",
        values.to_str().unwrap_or_default(),
        "--set",
        &tag,
        "--name",
        "prod",
        "--namespace",
        "ml",
    ]);
    let mut kubelet = charts::kubelet::Kubelet::new(docs, "ml")?;

    // What the cluster around the release provides: the object store and the Secret the values
    // name.
    let s3 = kubelet.start_other(
        "s3",
        "trainfleet-e2e-s3:5.2.5",
        &["s3.storage.svc"],
        // moto takes the first label of a dotted host for a bucket unless told the endpoint.
        &["--env=MOTO_S3_CUSTOM_ENDPOINTS=http://s3.storage.svc:5000"],
        &[],
    )?;
    support::wait_for(Duration::from_secs(30), "the S3 server's bucket", || {
        let put = format!(
            "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:5000/{BUCKET}', method='PUT'))"
        );
        kubelet
            .exec(&s3, &["python3", "-c", &put])
            .ok()
            .filter(|o| o.status.success())
    })?;
    kubelet.add_secret(
        "s3-keys",
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ],
    );
    // TLS for the Service's name, from a CA the test makes; the tokens.
    let keys = tempfile::tempdir()?;
    let pki = support::tls::Pki::for_names(keys.path(), "pods", &["prod-trainfleet.ml.svc"])?;
    let read = |p: &std::path::Path| std::fs::read_to_string(p);
    let (cert, key, ca) = (
        read(&pki.server_cert)?,
        read(&pki.server_key)?,
        read(&pki.ca_file)?,
    );
    kubelet.add_secret(
        "prod-tls",
        &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &ca)],
    );
    kubelet.add_secret(
        "prod-tokens",
        &[
            ("bootstrap", BOOTSTRAP),
            ("worker", "pods-test-worker-token-0123456789abcdef"),
            ("viewer", "pods-test-viewer-token-0123456789abcdef"),
        ],
    );

    // The workloads in the order their probes allow (a kubelet would start all at once and
    // restart what fails; starting in order keeps the logs readable).
    let etcd = kubelet.start("StatefulSet", "prod-trainfleet-etcd")?;
    ensure!(etcd.len() == 3, "three etcd members: {}", etcd.len());
    for member in &etcd {
        kubelet.wait_ready(member, Duration::from_secs(60))?;
    }
    let coordinators = kubelet.start("Deployment", "prod-trainfleet-coordinator")?;
    ensure!(coordinators.len() == 3, "three coordinators");
    for replica in &coordinators {
        kubelet.wait_ready(replica, Duration::from_secs(90))?;
    }
    let workers = kubelet.start("Deployment", "prod-trainfleet-worker-cpu")?;
    ensure!(workers.len() == 2, "two workers");

    // A client pod: grpcio with reflection, calling the Service by name only.
    // It dials with TLS (the CA) and the bootstrap admin's token, as grpcurl -cacert -H would.
    let clients = support::repo_root().join("tests/clients");
    let mount = format!("--volume={}:/opt/clients:ro", clients.display());
    let ca_dir = pki
        .ca_file
        .parent()
        .unwrap_or(keys.path())
        .display()
        .to_string();
    let ca_mount = format!("--volume={ca_dir}:/opt/tls:ro");
    let token = format!("--env=TRAINFLEET_TOKEN={BOOTSTRAP}");
    let client = kubelet.start_other(
        "client",
        "trainfleet-e2e-client:1.85.1",
        &[],
        &[
            &mount,
            &ca_mount,
            "--env=TRAINFLEET_CA_CERT=/opt/tls/ca.pem",
            &token,
            "--entrypoint=sleep",
        ],
        &["infinity"],
    )?;
    // What `helm install --wait` and a user's patience give: the workers have registered.
    support::wait_for(Duration::from_secs(60), "both workers to register", || {
        let listed = call(
            &kubelet,
            &client,
            &["call", "trainfleet.v1.ClusterService/ListWorkers", "{}"],
        )
        .ok()?;
        (listed["workers"].as_array()?.len() >= 2).then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&kubelet, &workers)))?;

    // `helm test`: the rendered hook Pod asks, through the Service, for both workers.
    let hook = kubelet.start_pod("prod-trainfleet-test")?;
    let code = kubelet.wait_exit(&hook, Duration::from_secs(120))?;
    let said = kubelet.logs(&hook);
    ensure!(
        code == 0,
        "helm test failed ({code}): {said}\n{}",
        logs(&kubelet, &workers)
    );
    eprintln!("helm test: {said}");

    let yaml = support::synth_job("through-the-service", 2, 1);
    let submitted = call(
        &kubelet,
        &client,
        &[
            "call",
            "trainfleet.v1.JobService/Submit",
            &json!({ "yaml": yaml }).to_string(),
        ],
    )?;
    let id = submitted["job"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(!id.is_empty(), "submitted: {submitted}");
    let get = json!({ "id": id }).to_string();
    let job = support::wait_for(Duration::from_secs(240), "the job to end", || {
        let job = call(
            &kubelet,
            &client,
            &["call", "trainfleet.v1.JobService/Get", &get],
        )
        .ok()?;
        let state = job["state"].as_str().unwrap_or_default();
        [
            "JOB_STATE_SUCCEEDED",
            "JOB_STATE_FAILED",
            "JOB_STATE_CANCELLED",
        ]
        .contains(&state)
        .then_some(job)
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}\n{}{}",
            logs(&kubelet, &coordinators),
            logs(&kubelet, &workers)
        )
    })?;
    ensure!(
        job["state"] == "JOB_STATE_SUCCEEDED",
        "{job}\n{}",
        logs(&kubelet, &workers)
    );
    // Trained by a rendered worker: its id is its pod's name (the downward API).
    let trained_by: Vec<&str> = job["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["task"] == "train")
        .filter_map(|a| a["workerId"].as_str())
        .collect();
    ensure!(
        !trained_by.is_empty()
            && trained_by
                .iter()
                .all(|w| workers.iter().any(|p| p.name == *w)),
        "trained by the chart's workers {:?}: {trained_by:?}",
        workers.iter().map(|p| &p.name).collect::<Vec<_>>()
    );

    // Balanced over the Service's pods, as kube-proxy spreads connections: every replica answers
    // GetLeader itself and names the same leader, at the pod address it advertises ($(POD_IP));
    // the job is read through the followers, which forward to it.
    let (leaders, reads) = support::wait_for(
        Duration::from_secs(30),
        "answers from every replica",
        || {
            let leaders = call(
                &kubelet,
                &client,
                &[
                    "spread",
                    "9",
                    "trainfleet.v1.ClusterService/GetLeader",
                    "{}",
                ],
            )
            .ok()?;
            let reads = call(
                &kubelet,
                &client,
                &["spread", "9", "trainfleet.v1.JobService/Get", &get],
            )
            .ok()?;
            let followers = leaders
                .as_array()?
                .iter()
                .filter(|a| a["response"]["isSelf"] != true)
                .count();
            let forwarded = reads
                .as_array()?
                .iter()
                .filter(|a| a["metadata"]["trainfleet-forwarded-to"].is_string())
                .count();
            (followers > 0 && forwarded > 0).then_some((leaders, reads))
        },
    )?;
    let addresses: Vec<&str> = leaders
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["response"]["address"].as_str())
        .collect();
    let leader = addresses.first().copied().unwrap_or_default();
    ensure!(
        addresses.iter().all(|a| *a == leader)
            && coordinators
                .iter()
                .any(|c| leader == format!("{}:50051", c.ip)),
        "one leader, at a coordinator pod's address: {leaders}"
    );
    for read in reads.as_array().into_iter().flatten() {
        ensure!(read["response"]["state"] == "JOB_STATE_SUCCEEDED", "{read}");
        if let Some(to) = read["metadata"]["trainfleet-forwarded-to"].as_str() {
            ensure!(to == leader, "forwarded to the leader {leader}: {read}");
        }
    }
    eprintln!(
        "through {SERVICE}: job {id} done by {trained_by:?}; the leader is {leader}; \
         {} of 9 reads answered by followers",
        reads
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["metadata"]["trainfleet-forwarded-to"].is_string())
            .count()
    );
    Ok(())
}

fn logs(kubelet: &charts::kubelet::Kubelet, pods: &[charts::kubelet::Pod]) -> String {
    pods.iter()
        .map(|p| format!("--- {}\n{}\n", p.name, kubelet.logs(p)))
        .collect()
}
