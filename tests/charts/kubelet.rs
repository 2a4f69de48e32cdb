//! A small kubelet for the rendered chart: it runs the pods of rendered Deployments,
//! StatefulSets and Pods as podman containers on a private network the test creates, doing what
//! a kubelet and the cluster around it would do with the spec as rendered:
//!
//! - the image, `command` (the entrypoint) and `args`, with `$(VAR)` expanded from the env;
//! - env from values, Secrets (`secretKeyRef`, from the Secrets the test adds, as a user would
//!   `kubectl create secret`) and the downward API (`metadata.name`, `status.podIP`);
//! - volumes: ConfigMaps and Secrets as read-only files, emptyDirs (memory-backed ones as tmpfs,
//!   `/dev/shm` with its size limit), a StatefulSet's claims as per-pod directories;
//! - the security context: the user and group, `runAsNonRoot` checked against the image, a
//!   read-only root filesystem (no tmpfs added), no privilege escalation, dropped capabilities;
//! - memory limits;
//! - DNS: each Service that selects a pod gives it the Service's names (`svc`, `svc.ns`,
//!   `svc.ns.svc`, `svc.ns.svc.cluster.local`), so a Service name resolves to its pods (all of
//!   them: the network's DNS answers every address, a client balancing round robin spreads over
//!   them as kube-proxy spreads connections); a StatefulSet pod also gets
//!   `pod.service.ns.svc` from its governing Service;
//! - probes (gRPC health, HTTP GET) run from the host against the pod's address.
//!
//! What it does not do, it refuses (a second container, init containers, `subPath`, GPUs, a
//! runtime class), so a chart feature is never silently skipped. Images are never pulled.
//! Containers are removed by id, and the network with them, when the kubelet is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_yaml::{Mapping, Value};

use super::spec::{self, bytes, expand, resources, sha256_hex, text, write_files};
use crate::support::wait_for;

/// Runs podman with the project's settings (`k8s/images/containers.conf`).
pub fn podman(args: &[String]) -> anyhow::Result<std::process::Output> {
    std::process::Command::new("podman")
        .args(args)
        .env(
            "CONTAINERS_CONF",
            crate::support::repo_root().join("k8s/images/containers.conf"),
        )
        .output()
        .context("running podman (scripts/setup.sh installs it)")
}

/// Runs podman; its stdout, or an error with its output.
pub fn podman_ok(args: &[String]) -> anyhow::Result<String> {
    let out = podman(args)?;
    ensure!(
        out.status.success(),
        "podman {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// One running pod.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    /// The container's id (what every podman command is given).
    pub id: String,
    pub ip: String,
    /// The pod's one container, as rendered.
    pub container: Value,
}

pub struct Kubelet {
    pub network: String,
    pub namespace: String,
    prefix: String,
    subnet: String,
    next_host: u32,
    docs: Vec<Value>,
    secrets: BTreeMap<String, BTreeMap<String, String>>,
    started: Vec<String>,
    dir: tempfile::TempDir,
}

impl Kubelet {
    /// A kubelet for the rendered `docs` of a release in `namespace`, with a network of its own.
    pub fn new(docs: Vec<Value>, namespace: &str) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let prefix = format!("tf{pid}k");
        let network = format!("{prefix}-net");
        // A private /24 of its own, apart from the container cluster tests' 10.89.x ranges.
        let subnet = format!("10.91.{}", pid % 250);
        podman_ok(&strings(&[
            "network",
            "create",
            "--subnet",
            &format!("{subnet}.0/24"),
            &network,
        ]))?;
        Ok(Self {
            network,
            namespace: namespace.to_owned(),
            prefix,
            subnet,
            next_host: 10,
            docs,
            secrets: BTreeMap::new(),
            started: Vec::new(),
            dir: tempfile::tempdir()?,
        })
    }

    /// A Secret in the release's namespace, as `kubectl create secret generic` would make it.
    pub fn add_secret(&mut self, name: &str, data: &[(&str, &str)]) {
        let data = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.secrets.insert(name.to_owned(), data);
    }

    /// The rendered document of `kind` named `name`.
    pub fn doc(&self, kind: &str, name: &str) -> anyhow::Result<&Value> {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .with_context(|| format!("no {kind} {name} in the rendered chart"))
    }

    /// Starts every replica of the Deployment or StatefulSet `name`.
    pub fn start(&mut self, kind: &str, name: &str) -> anyhow::Result<Vec<Pod>> {
        let workload = self.doc(kind, name)?.clone();
        let replicas = workload["spec"]["replicas"].as_u64().unwrap_or(1);
        let template = &workload["spec"]["template"];
        // A Deployment's pods are named after the ReplicaSet (a hash of the template) and a
        // random suffix; a StatefulSet's by ordinal.
        let hash = sha256_hex(serde_yaml::to_string(template)?.as_bytes());
        (0..replicas)
            .map(|i| {
                let pod = match kind {
                    "StatefulSet" => format!("{name}-{i}"),
                    "Deployment" => {
                        format!("{name}-{}-{}", &hash[..10], &sha256_hex(&[i as u8])[..5])
                    }
                    other => {
                        bail!("{other} {name}: only Deployments and StatefulSets have replicas")
                    }
                };
                self.run_pod(&pod, template, Some(&workload))
            })
            .collect()
    }

    /// Starts the rendered Pod `name` (a `helm test` hook, say).
    pub fn start_pod(&mut self, name: &str) -> anyhow::Result<Pod> {
        let pod = self.doc("Pod", name)?.clone();
        self.run_pod(name, &pod, None)
    }

    /// Starts a container that is not part of the chart (what the cluster around it provides,
    /// or a client), answering to `aliases` on the network.
    pub fn start_other(
        &mut self,
        name: &str,
        image: &str,
        aliases: &[&str],
        extra: &[&str],
        args: &[&str],
    ) -> anyhow::Result<Pod> {
        let ip = self.next_ip();
        let mut all = strings(&["run", "--detach", "--pull=never", "--no-healthcheck"]);
        all.extend(self.placement(name, &ip, aliases.iter().map(|a| a.to_string())));
        all.extend(strings(extra));
        all.push(image.to_owned());
        all.extend(strings(args));
        let id = podman_ok(&all)?;
        self.started.push(id.clone());
        Ok(Pod {
            name: name.to_owned(),
            id,
            ip,
            container: Value::Null,
        })
    }

    fn next_ip(&mut self) -> String {
        self.next_host += 1;
        format!("{}.{}", self.subnet, self.next_host)
    }

    fn placement(&self, pod: &str, ip: &str, aliases: impl Iterator<Item = String>) -> Vec<String> {
        let mut args = strings(&[
            "--name",
            &format!("{}-{pod}", self.prefix),
            "--hostname",
            pod,
            "--network",
            &self.network,
            "--ip",
            ip,
        ]);
        for alias in aliases {
            args.push("--network-alias".into());
            args.push(alias);
        }
        args
    }

    /// The DNS names a pod with `labels` gets from the Services that select it.
    fn service_names(&self, pod: &str, labels: &Mapping, workload: Option<&Value>) -> Vec<String> {
        let ns = &self.namespace;
        let mut names = Vec::new();
        for service in self.docs.iter().filter(|d| d["kind"] == "Service") {
            let Some(selector) = service["spec"]["selector"].as_mapping() else {
                continue;
            };
            if selector.is_empty() || selector.iter().any(|(k, v)| labels.get(k) != Some(v)) {
                continue;
            }
            let svc = service["metadata"]["name"].as_str().unwrap_or_default();
            for name in [
                svc.to_owned(),
                format!("{svc}.{ns}"),
                format!("{svc}.{ns}.svc"),
                format!("{svc}.{ns}.svc.cluster.local"),
            ] {
                names.push(name);
            }
            let governs = workload.is_some_and(|w| {
                w["kind"] == "StatefulSet" && w["spec"]["serviceName"].as_str() == Some(svc)
            });
            if governs {
                names.push(format!("{pod}.{svc}.{ns}.svc"));
                names.push(format!("{pod}.{svc}.{ns}.svc.cluster.local"));
            }
        }
        names
    }

    fn run_pod(
        &mut self,
        pod: &str,
        template: &Value,
        workload: Option<&Value>,
    ) -> anyhow::Result<Pod> {
        let spec = &template["spec"];
        let containers = spec["containers"].as_sequence().context("no containers")?;
        ensure!(
            containers.len() == 1,
            "{pod}: one container per pod is supported"
        );
        ensure!(
            spec["initContainers"].is_null(),
            "{pod}: init containers are not supported"
        );
        let runtime = spec["runtimeClassName"].as_str().unwrap_or_default();
        ensure!(
            runtime.is_empty(),
            "{pod}: runtime class {runtime:?} is not available here"
        );
        let container = containers[0].clone();
        let labels = template["metadata"]["labels"]
            .as_mapping()
            .cloned()
            .unwrap_or_default();
        let image = container["image"].as_str().context("no image")?.to_owned();
        let ip = self.next_ip();

        let aliases = self.service_names(pod, &labels, workload);
        let mut args = strings(&["run", "--detach", "--pull=never", "--no-healthcheck"]);
        args.extend(self.placement(pod, &ip, aliases.into_iter()));
        for (k, v) in &labels {
            args.push("--label".into());
            args.push(format!("{}={}", text(k), text(v)));
        }
        if let Some(grace) = spec["terminationGracePeriodSeconds"].as_u64() {
            args.push(format!("--stop-timeout={grace}"));
        }
        args.extend(self.security(pod, spec, &container, &image)?);
        args.extend(resources(pod, &container["resources"])?);

        let env = self.env(pod, &ip, &container)?;
        for (k, v) in &env {
            args.push("--env".into());
            args.push(format!("{k}={v}"));
        }
        args.extend(self.volumes(pod, spec, &container, workload)?);
        if let Some(dir) = container["workingDir"].as_str() {
            args.push(format!("--workdir={dir}"));
        }
        let expand_all = |list: &Value| -> Vec<String> {
            list.as_sequence()
                .map(|s| s.iter().map(|a| expand(&text(a), &env)).collect())
                .unwrap_or_default()
        };
        let command = expand_all(&container["command"]);
        if !command.is_empty() {
            args.push(format!("--entrypoint={}", serde_json::to_string(&command)?));
        }
        args.push(image);
        args.extend(expand_all(&container["args"]));
        let id = podman_ok(&args)?;
        self.started.push(id.clone());
        Ok(Pod {
            name: pod.to_owned(),
            id,
            ip,
            container,
        })
    }

    /// What the pod and container security contexts ask, as podman flags.
    fn security(
        &self,
        pod: &str,
        spec: &Value,
        container: &Value,
        image: &str,
    ) -> anyhow::Result<Vec<String>> {
        let (pod_sc, sc) = (&spec["securityContext"], &container["securityContext"]);
        let pick = |key: &str| {
            if sc[key].is_null() {
                pod_sc[key].clone()
            } else {
                sc[key].clone()
            }
        };
        let mut args = Vec::new();
        let user = match pick("runAsUser").as_u64() {
            Some(uid) => Some(uid),
            // As the kubelet does: the image's USER must be a numeric uid to be checked.
            None => podman_ok(&strings(&[
                "image",
                "inspect",
                "--format",
                "{{.Config.User}}",
                image,
            ]))?
            .split(':')
            .next()
            .and_then(|u| u.parse().ok()),
        };
        if pick("runAsNonRoot") == true {
            ensure!(
                user.is_some_and(|u| u != 0),
                "{pod}: runAsNonRoot, but the user would be {user:?} (image {image})"
            );
        }
        if let Some(uid) = pick("runAsUser").as_u64() {
            let gid = pick("runAsGroup").as_u64().unwrap_or(uid);
            args.push(format!("--user={uid}:{gid}"));
        }
        if let Some(group) = pod_sc["fsGroup"].as_u64() {
            args.push(format!("--group-add={group}"));
        }
        if sc["readOnlyRootFilesystem"] == true {
            // Kubernetes adds no writable /tmp: nor does this.
            args.extend(strings(&["--read-only", "--read-only-tmpfs=false"]));
        }
        if sc["allowPrivilegeEscalation"] == false {
            args.push("--security-opt=no-new-privileges".into());
        }
        for cap in sc["capabilities"]["drop"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            args.push(format!("--cap-drop={}", text(cap)));
        }
        for cap in sc["capabilities"]["add"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            args.push(format!("--cap-add={}", text(cap)));
        }
        ensure!(
            sc["privileged"] != true,
            "{pod}: privileged containers are not run here"
        );
        Ok(args)
    }

    /// The container's environment, in order, each value with earlier ones expanded.
    fn env(&self, pod: &str, ip: &str, container: &Value) -> anyhow::Result<Vec<(String, String)>> {
        let mut env: Vec<(String, String)> = Vec::new();
        for entry in container["env"].as_sequence().into_iter().flatten() {
            let name = text(&entry["name"]);
            let from = &entry["valueFrom"];
            let value = if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
                match path {
                    "metadata.name" => pod.to_owned(),
                    "metadata.namespace" => self.namespace.clone(),
                    "status.podIP" => ip.to_owned(),
                    other => bail!("{pod}: env {name}: fieldRef {other} is not supported"),
                }
            } else if !from["secretKeyRef"].is_null() {
                let (secret, key) = (
                    text(&from["secretKeyRef"]["name"]),
                    text(&from["secretKeyRef"]["key"]),
                );
                self.secrets
                    .get(&secret)
                    .and_then(|s| s.get(&key))
                    .cloned()
                    .with_context(|| {
                        format!("{pod}: env {name}: secret {secret:?} has no key {key:?} (CreateContainerConfigError)")
                    })?
            } else if from.is_null() {
                expand(&text(&entry["value"]), &env)
            } else {
                bail!("{pod}: env {name}: {from:?} is not supported")
            };
            env.push((name, value));
        }
        Ok(env)
    }

    /// The container's volume mounts, as podman flags, with their contents written.
    fn volumes(
        &self,
        pod: &str,
        spec: &Value,
        container: &Value,
        workload: Option<&Value>,
    ) -> anyhow::Result<Vec<String>> {
        let mut args = Vec::new();
        let claims: Vec<String> = workload
            .and_then(|w| w["spec"]["volumeClaimTemplates"].as_sequence())
            .into_iter()
            .flatten()
            .map(|c| text(&c["metadata"]["name"]))
            .collect();
        for mount in container["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            let (name, path) = (text(&mount["name"]), text(&mount["mountPath"]));
            ensure!(
                mount["subPath"].is_null(),
                "{pod}: volume {name}: subPath is not supported"
            );
            let read_only = mount["readOnly"] == true;
            let dir = self.dir.path().join(pod).join(&name);
            let volume = spec["volumes"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == name.as_str());
            let bind = |dir: &Path, read_only: bool| {
                let mode = if read_only { "ro" } else { "U" };
                format!("--volume={}:{path}:{mode}", dir.display())
            };
            match volume {
                None if claims.contains(&name) => {
                    // The claim's volume, provisioned for this pod (a directory that outlives
                    // the container, as a PersistentVolume outlives the pod).
                    std::fs::create_dir_all(&dir)?;
                    args.push(bind(&dir, read_only));
                }
                None => bail!("{pod}: volume mount {name} names no volume"),
                Some(v) if !v["configMap"].is_null() => {
                    let map = text(&v["configMap"]["name"]);
                    let data = self.doc("ConfigMap", &map)?["data"].clone();
                    let files = data
                        .as_mapping()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (text(k), text(v)))
                        .collect();
                    write_files(&dir, &files, &v["configMap"]["items"])?;
                    args.push(bind(&dir, true));
                }
                Some(v) if !v["secret"].is_null() => {
                    let secret = text(&v["secret"]["secretName"]);
                    let files = self
                        .secrets
                        .get(&secret)
                        .with_context(|| format!("{pod}: volume {name}: no secret {secret:?}"))?;
                    write_files(&dir, files, &v["secret"]["items"])?;
                    args.push(bind(&dir, true));
                }
                Some(v) if !v["emptyDir"].is_null() => {
                    let size = v["emptyDir"]["sizeLimit"].as_str().map(bytes).transpose()?;
                    if v["emptyDir"]["medium"] == "Memory" {
                        let size = size.unwrap_or(64 << 20);
                        if path == "/dev/shm" {
                            args.push(format!("--shm-size={size}"));
                        } else {
                            args.push(format!(
                                "--mount=type=tmpfs,destination={path},tmpfs-size={size}"
                            ));
                        }
                    } else {
                        std::fs::create_dir_all(&dir)?;
                        args.push(bind(&dir, read_only));
                    }
                }
                Some(v) => bail!("{pod}: volume {name}: {v:?} is not supported here"),
            }
        }
        Ok(args)
    }

    /// Waits until the pod's startup probe, then its readiness probe, succeed.
    pub fn wait_ready(&self, pod: &Pod, timeout: Duration) -> anyhow::Result<()> {
        for kind in ["startupProbe", "readinessProbe"] {
            let probe = &pod.container[kind];
            if probe.is_null() {
                continue;
            }
            let waited = wait_for(timeout, &format!("{} {kind}", pod.name), || {
                spec::probe(&pod.ip, &pod.container, probe).then_some(())
            });
            if let Err(e) = waited {
                bail!("{e}\n--- {} log:\n{}", pod.name, self.logs(pod));
            }
        }
        Ok(())
    }

    /// Waits for the pod's container to exit; its exit code.
    pub fn wait_exit(&self, pod: &Pod, timeout: Duration) -> anyhow::Result<i64> {
        wait_for(timeout, &format!("{} to exit", pod.name), || {
            let state = podman_ok(&strings(&[
                "inspect",
                "--format",
                "{{.State.Status}} {{.State.ExitCode}}",
                &pod.id,
            ]))
            .ok()?;
            let (status, code) = state.split_once(' ')?;
            (status == "exited").then(|| code.parse().ok())?
        })
    }

    /// Runs `program` inside the pod's container.
    pub fn exec(&self, pod: &Pod, program: &[&str]) -> anyhow::Result<std::process::Output> {
        let mut args = strings(&["exec", &pod.id]);
        args.extend(strings(program));
        podman(&args)
    }

    /// The container's log, stdout and stderr.
    pub fn logs(&self, pod: &Pod) -> String {
        podman(&strings(&["logs", &pod.id]))
            .map(|o| {
                let all = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                let lines: Vec<&str> = all.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            })
            .unwrap_or_default()
    }

    /// The directory the kubelet keeps volumes in.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        for id in self.started.iter().rev() {
            let _ = podman(&strings(&["rm", "--force", "--volumes", "--time", "0", id]));
        }
        let _ = podman(&strings(&["network", "rm", &self.network]));
    }
}
