//! TLS on the gRPC port, with the certificate reloaded when its files change and client
//! certificates that bind a connection to a worker.
//!
//! The listener is ours rather than tonic's, for three reasons tonic's own TLS does not cover:
//! - **Reload.** [`ServerTls::watch`] looks at the files every second; a changed, valid set
//!   replaces the configuration for new connections (open ones keep theirs). A broken set is
//!   logged and the last good one kept, so a half-copied Secret never takes the port down.
//! - **Worker identity.** A client certificate signed by `tls.ca_file` whose URI SAN is
//!   `spiffe://trainfleet/worker/<id>` makes the connection that worker's ([`Peer::worker`]);
//!   the access layer and `WorkerService` then let it act only as itself. A certificate is
//!   optional: users come with bearer tokens.
//! - **Plaintext on the TLS port.** A connection whose first byte is not a TLS handshake is
//!   served in plaintext with [`Peer::encrypted`] false, and the access layer answers every
//!   call but health with UNAUTHENTICATED saying the port needs TLS: a clear error instead of a
//!   reset connection, and kubelet's gRPC probes (which cannot speak TLS) still work.
//!
//! Handshakes run in their own tasks, bounded by [`HANDSHAKE_TIMEOUT`], so a slow or silent
//! client never holds up the accept loop.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use trainfleet_core::config::ServerTls as TlsSettings;

/// How often the certificate files are looked at.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// Longest a client may take to send its first byte and finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

/// Who is at the other end of a connection to a TLS port (a request extension).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub remote: SocketAddr,
    /// Whether the connection is TLS; false for a plaintext client on the TLS port.
    pub encrypted: bool,
    /// The worker id its verified client certificate names, if any.
    pub worker: Option<String>,
}

/// The client address of a request, over TLS or not.
pub fn remote_addr<T>(request: &tonic::Request<T>) -> Option<SocketAddr> {
    request
        .remote_addr()
        .or_else(|| request.extensions().get::<Peer>().map(|p| p.remote))
}

/// The TLS configuration in force, and the files it comes from.
#[derive(Debug)]
pub struct ServerTls {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads the files; an unreadable or mismatched set stops the start, naming the setting.
    pub fn load(settings: &TlsSettings) -> Result<Arc<Self>, String> {
        let config = build(settings)?;
        Ok(Arc::new(Self {
            settings: settings.clone(),
            current: RwLock::new(Arc::new(config)),
        }))
    }

    /// The configuration new connections get.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether clients may present certificates (a CA is configured).
    pub fn verifies_clients(&self) -> bool {
        self.settings.ca_file.is_some()
    }

    /// Reloads the files when they change, until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut seen = stamp(&self.settings);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RELOAD_CHECK) => {}
                _ = shutdown.cancelled() => return,
            }
            let now = stamp(&self.settings);
            if now == seen {
                continue;
            }
            seen = now;
            match build(&self.settings) {
                Ok(config) => {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
                    tracing::info!(cert = %self.settings.cert_file.display(), "TLS certificate reloaded; new connections use it");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the TLS files changed but cannot be used; keeping the previous certificate")
                }
            }
        }
    }
}

/// Modification time and length of each file: what changes when a file is replaced (a
/// Kubernetes Secret swaps a symlink; metadata follows it).
fn stamp(settings: &TlsSettings) -> Vec<Option<(SystemTime, u64)>> {
    [
        Some(&settings.cert_file),
        Some(&settings.key_file),
        settings.ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
    .collect()
}

fn certificates(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls.{field} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.{field} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// A server configuration from the files.
fn build(settings: &TlsSettings) -> Result<ServerConfig, String> {
    let provider = Arc::new(provider());
    let chain = certificates(&settings.cert_file, "cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&settings.key_file)
        .map_err(|e| format!("tls.key_file {}: {e}", settings.key_file.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &settings.ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca, "ca_file")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("tls.ca_file {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("tls.ca_file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "tls.cert_file {} with tls.key_file {}: {e}",
            settings.cert_file.display(),
            settings.key_file.display()
        )
    })?;
    // gRPC is HTTP/2 only; grpc-go clients insist on ALPN saying so.
    config.alpn_protocols = vec![b"h2".to_vec()];
    // The server's preference decides the cipher suite (clients, rustls' and grpc-go's
    // among them, list AES-256-GCM first).
    config.ignore_client_order = true;
    Ok(config)
}

/// ring's suites with AES-128-GCM first, as Go's crypto/tls orders them: as safe in practice
/// as AES-256-GCM and cheaper per record (10 AES rounds instead of 14), which a server that
/// spends most of its TLS time sealing small gRPC frames feels.
fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            CipherSuite::TLS13_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    provider
}

/// The worker a verified client certificate names (its URI SAN), if it is a worker's.
fn worker_of(cert: &CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    cert.valid_uri_names()
        .find_map(trainfleet_proto::tls::worker_of_uri)
        .map(str::to_owned)
}

/// An accepted connection: TLS, or plaintext on the TLS port.
pub enum Conn {
    /// A TLS session.
    Tls(Box<TlsStream<TcpStream>>, Peer),
    /// A client that did not start with a TLS handshake.
    Plain(TcpStream, Peer),
}

impl Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        match self {
            Conn::Tls(_, peer) | Conn::Plain(_, peer) => peer.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
        }
    }

    // Forwarded, not left to the defaults: h2 writes a frame's header and its payload as one
    // vectored write when the stream says it can, and as separate writes otherwise, each of
    // which becomes its own TLS record and system call.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Conn::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tls(s, _) => s.is_write_vectored(),
            Conn::Plain(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Plain(s, _) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Accepts on `listener` until `shutdown`, yielding connections whose handshakes finished.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    shutdown: CancellationToken,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.cancelled() => return,
            };
            match accepted {
                Ok((tcp, remote)) => {
                    // Without it a small response written right after another waits for the
                    // peer's delayed ACK (see server.rs).
                    let _ = tcp.set_nodelay(true);
                    let (tx, config) = (tx.clone(), tls.config());
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, open(tcp, remote, config))
                            .await
                        {
                            Ok(Ok(Some(conn))) => {
                                let _ = tx.send(Ok(conn)).await;
                            }
                            Ok(Ok(None)) => {}
                            Ok(Err(e)) => {
                                tracing::debug!(%remote, error = %e, "TLS handshake failed")
                            }
                            Err(_) => {
                                tracing::debug!(%remote, "no TLS handshake within 10 s; closed")
                            }
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Looks at the first byte: a TLS handshake is completed, anything else is served plaintext
/// (and refused by the access layer). `None`: the client left first.
async fn open(
    tcp: TcpStream,
    remote: SocketAddr,
    config: Arc<ServerConfig>,
) -> io::Result<Option<Conn>> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 {
        return Ok(None);
    }
    if first[0] != TLS_HANDSHAKE {
        let peer = Peer {
            remote,
            encrypted: false,
            worker: None,
        };
        return Ok(Some(Conn::Plain(tcp, peer)));
    }
    let stream = TlsAcceptor::from(config).accept(tcp).await?;
    let worker = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(worker_of);
    let peer = Peer {
        remote,
        encrypted: true,
        worker,
    };
    Ok(Some(Conn::Tls(Box::new(stream), peer)))
}

/// Paths named in the settings, for messages.
pub fn describe(settings: &TlsSettings) -> String {
    let show = |p: &PathBuf| p.display().to_string();
    match &settings.ca_file {
        Some(ca) => format!("cert {}, client CA {}", show(&settings.cert_file), show(ca)),
        None => format!("cert {}", show(&settings.cert_file)),
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, ServerConnection};

    use super::*;

    /// Moves the TLS bytes either side has to send to the other until neither has any.
    fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) {
        while client.is_handshaking() || server.is_handshaking() {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut wire = Vec::new();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
    }

    #[test]
    fn the_server_picks_aes_128_gcm_over_a_client_that_lists_aes_256_first() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let settings = TlsSettings {
            cert_file: dir.path().join("cert.pem"),
            key_file: dir.path().join("key.pem"),
            ca_file: None,
            server_name: None,
        };
        std::fs::write(&settings.cert_file, cert.pem()).unwrap();
        std::fs::write(&settings.key_file, key.serialize_pem()).unwrap();

        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        // rustls' own default order, as tonic's clients use it: AES-256-GCM first.
        let client_provider = rustls::crypto::ring::default_provider();
        assert_eq!(
            client_provider.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        );
        for versions in [&[&rustls::version::TLS13], &[&rustls::version::TLS12]] {
            let client_config =
                ClientConfig::builder_with_provider(Arc::new(client_provider.clone()))
                    .with_protocol_versions(versions)
                    .unwrap()
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth();
            let mut client = ClientConnection::new(
                Arc::new(client_config),
                ServerName::try_from("localhost").unwrap(),
            )
            .unwrap();
            let mut server = ServerConnection::new(Arc::new(build(&settings).unwrap())).unwrap();
            handshake(&mut client, &mut server);
            let suite = format!("{:?}", client.negotiated_cipher_suite().unwrap().suite());
            assert!(suite.contains("AES_128_GCM"), "{suite}");
        }
    }
}
