//! Real etcd members on loopback ports, for tests and benchmarks: each member runs the `etcd`
//! binary (Debian's `etcd-server`) with its data in a directory the caller owns, and is stopped
//! by its PID (never by name) when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// One member.
#[derive(Debug)]
pub struct EtcdMember {
    /// Its name in the cluster.
    pub name: String,
    /// `http://127.0.0.1:<port>`.
    pub client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl EtcdMember {
    /// Its PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILLs it (by PID) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of members on loopback.
#[derive(Debug)]
pub struct EtcdCluster {
    /// The members, in start order.
    pub members: Vec<EtcdMember>,
    initial_cluster: String,
    tls: Option<TestCerts>,
}

/// A throwaway CA with a server certificate (for 127.0.0.1 and localhost) and a client
/// certificate, made with the `openssl` command, for TLS tests.
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// CA certificate (PEM).
    pub ca: PathBuf,
    /// Server certificate and key.
    pub server_cert: PathBuf,
    /// See `server_cert`.
    pub server_key: PathBuf,
    /// Client certificate and key, signed by the CA.
    pub client_cert: PathBuf,
    /// See `client_cert`.
    pub client_key: PathBuf,
}

impl TestCerts {
    /// Makes them under `dir`.
    pub fn generate(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Store(format!("certs dir: {e}")))?;
        let run = |args: &[&str]| -> Result<()> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .map_err(|e| Error::Store(format!("cannot run openssl: {e}")))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(Error::Store(format!(
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )))
            }
        };
        let ext = dir.join("san.ext");
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
            .map_err(|e| Error::Store(format!("certs: {e}")))?;
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=trainfleet test CA",
        ])?;
        for who in ["server", "client"] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN={who}"),
            ])?;
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.pem"),
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ])?;
        }
        Ok(Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        })
    }
}

fn free_ports(n: usize) -> Result<Vec<u16>> {
    // Hold every listener until all ports are known, so that no two are the same.
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::Store(format!("no free loopback port: {e}")))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::Store(format!("no free loopback port: {e}")))
}

fn healthy(client_url: &str) -> bool {
    use std::io::{Read, Write};
    let addr = client_url.trim_start_matches("http://");
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let request = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}

impl EtcdCluster {
    /// Starts `n` members with their data under `dir`, and waits until every one reports
    /// healthy (a leader is elected).
    pub fn start(dir: &Path, n: usize) -> Result<Self> {
        Self::start_with(dir, n, None)
    }

    /// Like [`EtcdCluster::start`], serving clients over TLS with `certs` and requiring client
    /// certificates.
    pub fn start_with(dir: &Path, n: usize, certs: Option<TestCerts>) -> Result<Self> {
        let scheme = if certs.is_some() { "https" } else { "http" };
        let ports = free_ports(2 * n)?;
        let mut members: Vec<EtcdMember> = (0..n)
            .map(|i| EtcdMember {
                name: format!("etcd{i}"),
                client_url: format!("{scheme}://127.0.0.1:{}", ports[2 * i]),
                peer_url: format!("http://127.0.0.1:{}", ports[2 * i + 1]),
                data_dir: dir.join(format!("etcd{i}")),
                log: dir.join(format!("etcd{i}.log")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members: Vec::new(),
            initial_cluster,
            tls: certs,
        };
        for member in &mut members {
            cluster.spawn(member, "new")?;
        }
        cluster.members = members;
        cluster.wait_healthy(&(0..n).collect::<Vec<_>>(), Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn spawn(&self, member: &mut EtcdMember, state: &str) -> Result<()> {
        std::fs::create_dir_all(&member.data_dir)
            .map_err(|e| Error::Store(format!("etcd data dir: {e}")))?;
        let log = std::fs::File::create(&member.log)
            .map_err(|e| Error::Store(format!("etcd log: {e}")))?;
        let mut command = Command::new("etcd");
        if let Some(certs) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&certs.server_cert)
                .arg("--key-file")
                .arg(&certs.server_key)
                .arg("--trusted-ca-file")
                .arg(&certs.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &member.client_url])
            .args(["--advertise-client-urls", &member.client_url])
            .args(["--listen-peer-urls", &member.peer_url])
            .args(["--initial-advertise-peer-urls", &member.peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "trainfleet-test"])
            // Fast elections on loopback; an idle test cluster stays quiet.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                Error::Store(format!(
                    "cannot start etcd (Debian package etcd-server; scripts/setup.sh installs \
                     it): {e}"
                ))
            })?;
        member.child = Some(child);
        Ok(())
    }

    /// Waits until each member in `which` reports healthy.
    pub fn wait_healthy(&self, which: &[usize], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let members = if self.members.is_empty() {
            return Ok(());
        } else {
            &self.members
        };
        for &i in which {
            // Over TLS, /health needs a client certificate: a TCP connect has to do (callers
            // retry their first call while the members elect a leader).
            let ready = |url: &str| {
                if self.tls.is_some() {
                    TcpStream::connect(url.trim_start_matches("https://")).is_ok()
                } else {
                    healthy(url)
                }
            };
            while !ready(&members[i].client_url) {
                if Instant::now() > deadline {
                    return Err(Error::Store(format!(
                        "etcd member {} not healthy after {timeout:?}: {}",
                        members[i].name,
                        members[i].log_text()
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Starts member `i` again (after [`EtcdMember::kill`]) on its old data, and waits until it
    /// is healthy.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let mut member = std::mem::replace(
            &mut self.members[i],
            EtcdMember {
                name: String::new(),
                client_url: String::new(),
                peer_url: String::new(),
                data_dir: PathBuf::new(),
                log: PathBuf::new(),
                child: None,
            },
        );
        let spawned = self.spawn(&mut member, "existing");
        self.members[i] = member;
        spawned?;
        self.wait_healthy(&[i], Duration::from_secs(30))
    }
}
