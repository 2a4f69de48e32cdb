//! Rendering and checking the Helm chart, shared by `tests/chart.rs` (assertions on what renders)
//! and `tests/chart_pods.rs` (the rendered pods run). `kubelet.rs` runs rendered pods in podman.
#![allow(dead_code)]

pub mod kubelet;
mod spec;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_yaml::Value;
use trainfleet_core::config::CoordinatorConfig;

use crate::support::repo_root;

pub const KUBE_VERSIONS: [&str; 2] = ["1.29.0", "1.33.0"];

pub fn chart() -> PathBuf {
    repo_root().join("k8s/charts/trainfleet")
}

/// The renderer, built once per test run into the target directory.
pub fn renderer() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = Path::new(env!("CARGO_BIN_EXE_trainfleet"))
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .join("chart-render");
        let out = target.join("render");
        let built = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(repo_root().join("k8s/charts/render"))
            .env("GOPATH", "/usr/share/gocode")
            .env("GO111MODULE", "off")
            .env("GOENV", "off")
            .env("GOCACHE", target.join("go-cache"))
            .output()
            .expect("go (Debian's golang-go; scripts/setup.sh installs it)");
        assert!(
            built.status.success(),
            "building the chart renderer: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        out
    })
}

/// Renders the chart with `args` (`-f FILE`, `--set k=v`, `--print-values`, `--notes`): its
/// output, or the renderer's error.
pub fn render(args: &[&str]) -> Result<String, String> {
    let out = Command::new(renderer())
        .args(args)
        .arg(chart())
        .output()
        .expect("run the renderer");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("utf-8"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn python() -> PathBuf {
    repo_root().join(".venv/bin/python")
}

/// What `helm install` checks first: the merged values against `values.schema.json`.
pub fn check_values(args: &[&str]) -> Result<(), String> {
    let mut all = args.to_vec();
    all.push("--print-values");
    let values = render(&all)?;
    let mut child = Command::new(python())
        .arg(repo_root().join("k8s/charts/validate_values.py"))
        .arg(chart().join("values.schema.json"))
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the .venv's python");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), values.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Checks the values, renders, validates every document for each Kubernetes version; returns
/// the documents.
pub fn install(values_file: &Path) -> Vec<Value> {
    install_with(&["-f", values_file.to_str().unwrap()])
}

/// [`install`] with the renderer's arguments (`-f FILE`, `--set k=v`, `--name`, `--namespace`).
pub fn install_with(args: &[&str]) -> Vec<Value> {
    let what = args.join(" ");
    check_values(args).unwrap_or_else(|e| panic!("{what}: {e}"));
    let rendered = render(args).unwrap_or_else(|e| panic!("{what}: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("rendered.yaml");
    std::fs::write(&manifest, &rendered).unwrap();
    for version in KUBE_VERSIONS {
        let out = Command::new(repo_root().join(".venv/bin/kubernetes-validate"))
            .args(["--strict", "--quiet", "-k", version])
            .arg(&manifest)
            .output()
            .expect("kubernetes-validate (scripts/setup.sh installs it in .venv)");
        assert!(
            out.status.success(),
            "{what} against Kubernetes {version}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Documents are separated by `---` lines, as helm prints them.
    format!("\n{rendered}")
        .split("\n---\n")
        .map(|doc| serde_yaml::from_str::<Value>(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

pub fn ci(name: &str) -> PathBuf {
    chart().join("ci").join(name)
}

pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered chart"))
}

pub fn container(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]["containers"][0]
}

/// The env entry `name` of a container.
pub fn env<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"].as_sequence()?.iter().find(|e| e["name"] == name)
}

/// The coordinator config a ConfigMap carries, as the binary reads it: the file, then what the
/// pod's environment adds (the etcd password, from its Secret), then validation.
pub fn coordinator_config(path: &Path, c: &Value) -> trainfleet_core::Result<CoordinatorConfig> {
    let mut config: CoordinatorConfig = trainfleet_core::config::load_yaml_file(path)?;
    if env(c, "TRAINFLEET_ETCD_PASSWORD").is_some() {
        config.etcd.password = Some("from the Secret".into());
    }
    config.validate(&path.display().to_string())?;
    Ok(config)
}

/// Writes the config a ConfigMap carries under `key`, for the binary's loader.
pub fn config_file(docs: &[Value], map: &str, key: &str) -> (tempfile::TempDir, PathBuf) {
    let text = find(docs, "ConfigMap", map)["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{map} has no {key}"))
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(key);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}
