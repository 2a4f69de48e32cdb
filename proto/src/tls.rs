//! Dialing a coordinator: plaintext on loopback, or TLS with the CA that signed the
//! coordinator's certificate and, for a worker, the client certificate that names it.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// How a worker is named in its client certificate: a URI subject alternative name
/// `spiffe://trainfleet/worker/<worker_id>` (SPIFFE's form). A coordinator that verifies client
/// certificates binds the connection to that worker id.
pub const WORKER_URI_PREFIX: &str = "spiffe://trainfleet/worker/";

/// The worker id a certificate's URI SAN names, if it is a worker's.
pub fn worker_of_uri(uri: &str) -> Option<&str> {
    uri.strip_prefix(WORKER_URI_PREFIX)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// How to dial: plaintext (`http://`) or TLS (`https://`) with a CA and maybe a client identity.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    config: Option<ClientTlsConfig>,
    server_name: Option<String>,
}

impl ClientTls {
    /// Plaintext, unless an address says `https://` (then the system's roots are trusted).
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// From PEM files: `ca` (the CA of the coordinator's certificate) turns TLS on; `cert` and
    /// `key` (together) are a client certificate, presented to a coordinator that asks for one.
    /// `what` prefixes the names of the settings in errors (`--ca-cert`, `tls.`).
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        what: &TlsSettingNames,
    ) -> Result<Self, String> {
        let read = |name: &str, path: &Path| {
            std::fs::read(path).map_err(|e| format!("{name} {}: {e}", path.display()))
        };
        let Some(ca) = ca else {
            if cert.is_some() || key.is_some() {
                return Err(format!(
                    "{} and {} need {} (the CA of the coordinator's certificate)",
                    what.cert, what.key, what.ca
                ));
            }
            return Ok(Self::plaintext());
        };
        let ca_pem = read(what.ca, ca)?;
        if !String::from_utf8_lossy(&ca_pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!(
                "{} {}: no PEM certificate in it",
                what.ca,
                ca.display()
            ));
        }
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        match (cert, key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read(what.cert, cert)?,
                    read(what.key, key)?,
                ));
            }
            (None, None) => {}
            _ => return Err(format!("{} and {} go together", what.cert, what.key)),
        }
        Ok(Self {
            config: Some(config),
            server_name: None,
        })
    }

    /// Verifies the coordinator's certificate as `name` whatever address is dialed: replicas
    /// advertise pod IPs, which a certificate made for a Service name does not carry.
    pub fn with_server_name(mut self, name: Option<String>) -> Self {
        self.server_name = name.filter(|n| !n.is_empty());
        self
    }

    /// Whether addresses without a scheme are dialed with TLS.
    pub fn enabled(&self) -> bool {
        self.config.is_some()
    }

    /// An endpoint for `address`: `host:port` (https with TLS on, else http) or a URL.
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, String> {
        let uri = if address.contains("://") {
            address.to_owned()
        } else if self.enabled() {
            format!("https://{address}")
        } else {
            format!("http://{address}")
        };
        let endpoint = Endpoint::from_shared(uri).map_err(|e| {
            format!("coordinator address {address:?} is not valid ({e}); use host:port")
        })?;
        if !address.starts_with("https://") && (address.contains("://") || !self.enabled()) {
            return Ok(endpoint);
        }
        let mut config = match &self.config {
            Some(config) => config.clone(),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        endpoint
            .tls_config(config)
            .map_err(|e| format!("TLS settings for {address}: {e}"))
    }
}

/// The names of the TLS settings, as the program that reads them spells them (flags or keys).
#[derive(Debug, Clone, Copy)]
pub struct TlsSettingNames {
    /// The CA's.
    pub ca: &'static str,
    /// The client certificate's.
    pub cert: &'static str,
    /// Its key's.
    pub key: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_come_only_from_the_worker_uri_form() {
        assert_eq!(worker_of_uri("spiffe://trainfleet/worker/w1"), Some("w1"));
        assert_eq!(worker_of_uri("spiffe://trainfleet/worker/"), None);
        assert_eq!(worker_of_uri("spiffe://trainfleet/worker/a/b"), None);
        assert_eq!(worker_of_uri("spiffe://other/worker/w1"), None);
        assert_eq!(worker_of_uri("https://trainfleet/worker/w1"), None);
    }

    #[test]
    fn plaintext_unless_tls_is_configured_or_asked_for() {
        let plain = ClientTls::plaintext();
        assert_eq!(
            plain.endpoint("127.0.0.1:1").unwrap().uri().scheme_str(),
            Some("http")
        );
        assert_eq!(
            plain.endpoint("https://h:1").unwrap().uri().scheme_str(),
            Some("https")
        );
        let names = TlsSettingNames {
            ca: "--ca-cert",
            cert: "--cert",
            key: "--key",
        };
        let err = ClientTls::from_files(None, Some(Path::new("c.pem")), None, &names).unwrap_err();
        assert!(err.contains("--ca-cert"), "{err}");
        let dir = std::env::temp_dir().join(format!("tf-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let err = ClientTls::from_files(Some(&not_pem), None, None, &names).unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
