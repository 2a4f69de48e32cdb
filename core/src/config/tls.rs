//! TLS settings: the coordinator's certificate (and the CA of its workers' certificates), and
//! what a worker dials with. PEM files, so that a Kubernetes TLS Secret mounts them as they are.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// TLS on the coordinator's gRPC port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The certificate chain (PEM), leaf first. Its names must cover the address clients dial:
    /// each replica's advertise address, for replicas forwarding to the leader.
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// The cluster's CA (PEM). With it, clients may present a certificate it signed: a worker's
    /// (URI SAN `spiffe://trainfleet/worker/<worker_id>`) binds the connection to that worker,
    /// which may then act only as itself. Replicas also trust it when they forward a call to
    /// the leader (without it, the system's roots).
    pub ca_file: Option<PathBuf>,
    /// The name replicas verify each other's certificate as when forwarding (a Service name
    /// the certificate carries); by default the host of the leader's advertise address.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// How a worker (or another client) dials a coordinator that serves TLS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsFiles {
    /// The CA that signed the coordinator's certificate (PEM).
    pub ca_file: PathBuf,
    /// This worker's certificate (PEM), naming it with the URI SAN
    /// `spiffe://trainfleet/worker/<worker_id>`.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The name to verify the coordinators' certificate as (a Service name it carries),
    /// whichever replica is dialed; by default the dialed host.
    #[serde(default)]
    pub server_name: Option<String>,
}
