//! Certificates for the TLS tests, made with rcgen into a test's directory: a CA, the
//! coordinator's certificate (127.0.0.1 and localhost) and workers' client certificates naming
//! them as `spiffe://trainfleet/worker/<id>`; and calls made with them, as grpcurl would.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::Value;

use super::{CallResult, reflect_with};

/// A CA and the files it signed, under one directory.
pub struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM).
    pub ca_file: PathBuf,
    /// The coordinator's certificate and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    server_names: Vec<String>,
}

/// A client's certificate and key files.
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new CA named `name`, and a server certificate for 127.0.0.1 and localhost.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Self> {
        Self::for_names(dir, name, &["localhost", "127.0.0.1"])
    }

    /// A new CA named `name`, and a server certificate for `names` (DNS names or IPs).
    pub fn for_names(dir: &Path, name: &str, names: &[&str]) -> anyhow::Result<Self> {
        let dir = dir.join(format!("pki-{name}"));
        std::fs::create_dir_all(&dir)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem())?;
        let pki = Self {
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            server_names: names.iter().map(|n| n.to_string()).collect(),
            dir,
            ca,
            ca_file,
        };
        pki.issue_server()?;
        Ok(pki)
    }

    /// (Re)writes the server certificate with a fresh key: what a rotation does. Returns the
    /// certificate's PEM.
    pub fn issue_server(&self) -> anyhow::Result<String> {
        let mut params = CertificateParams::new(self.server_names.clone())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "trainfleet coordinator");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &*self.ca)?;
        // Key first, then certificate, each replaced whole (as a Secret update does).
        write_replacing(&self.server_key, &key.serialize_pem())?;
        write_replacing(&self.server_cert, &cert.pem())?;
        Ok(cert.pem())
    }

    /// A client certificate for worker `id` (URI SAN spiffe://trainfleet/worker/<id>).
    pub fn worker(&self, id: &str) -> anyhow::Result<ClientCert> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("worker {id}"));
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://trainfleet/worker/{id}").try_into()?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &*self.ca)?;
        let files = ClientCert {
            cert: self.dir.join(format!("worker-{id}.pem")),
            key: self.dir.join(format!("worker-{id}-key.pem")),
        };
        std::fs::write(&files.cert, cert.pem())?;
        std::fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }
}

fn write_replacing(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// How a test client dials: TLS trusting `ca`, maybe with a client certificate and a token.
#[derive(Default, Clone, Copy)]
pub struct Dial<'a> {
    pub ca: Option<&'a Path>,
    pub client: Option<&'a ClientCert>,
    pub token: Option<&'a str>,
}

impl Dial<'_> {
    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(ca) = self.ca {
            env.push(("TRAINFLEET_CA_CERT", ca.display().to_string()));
        }
        if let Some(c) = self.client {
            env.push(("TRAINFLEET_TLS_CERT", c.cert.display().to_string()));
            env.push(("TRAINFLEET_TLS_KEY", c.key.display().to_string()));
        }
        if let Some(t) = self.token {
            env.push(("TRAINFLEET_TOKEN", t.to_owned()));
        }
        env
    }

    /// Runs reflect.py `args`: its output (exit 0, or 3 for an RPC error).
    pub fn reflect(&self, addr: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        reflect_with(addr, &env, args)
    }

    /// Calls `method` with a JSON body: the answer or (code, message).
    pub fn call(&self, addr: &str, method: &str, body: Value) -> anyhow::Result<CallResult> {
        let output = self.reflect(addr, &["call", method, &body.to_string()])?;
        let json: Value = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "reflect.py printed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
        Ok(if output.status.code() == Some(3) {
            Err((
                json["code"].as_str().unwrap_or_default().to_owned(),
                json["message"].as_str().unwrap_or_default().to_owned(),
            ))
        } else {
            Ok(json)
        })
    }
}

/// The PEM of the certificate the server at `addr` presents now (a new TLS connection).
pub fn served_certificate(addr: &str) -> anyhow::Result<String> {
    let (host, port) = addr.rsplit_once(':').context("host:port")?;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import ssl, sys; print(ssl.get_server_certificate((sys.argv[1], int(sys.argv[2]))))",
            host,
            port,
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The base64 body of a PEM certificate, for comparing two PEM texts.
pub fn pem_body(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect()
}
