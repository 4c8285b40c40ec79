//! Building the HTTP client: TLS roots, plain HTTP for loopback, pool sizing, timeouts.

use std::path::PathBuf;
use std::time::Duration;

use super::RegistryError;

#[derive(Debug, Clone, Default)]
pub struct TransportOptions {
    /// `Some(true)` forces http://; `None` picks it for loopback hosts, as ORAS does, unless
    /// `insecure` or `ca_file` ask for TLS.
    pub plain_http: Option<bool>,
    /// Accept any TLS certificate.
    pub insecure: bool,
    /// An extra PEM root certificate.
    pub ca_file: Option<PathBuf>,
    /// Idle connections kept per host; bulk transfers use one connection each.
    pub max_connections: usize,
    /// How long a TCP (and TLS) connect may take; `None`: 15 s. Mirrors in the cluster
    /// answer in milliseconds or not at all, so they get a short one (`MIRROR_CONNECT`).
    pub connect_timeout: Option<Duration>,
    /// How long a read may wait for a byte; `None`: 120 s. Mirrors get the stall timeout,
    /// so one that accepts and never answers is left as fast as one that is down.
    pub read_timeout: Option<Duration>,
}

/// The connect timeout of a mirror with another source behind it.
pub const MIRROR_CONNECT: Duration = Duration::from_secs(2);

impl TransportOptions {
    pub fn scheme_for(&self, host: &str) -> &'static str {
        // Loopback registries speak plain HTTP unless TLS options say otherwise.
        let tls_asked = self.insecure || self.ca_file.is_some();
        let plain = self
            .plain_http
            .unwrap_or_else(|| is_loopback(host) && !tls_asked);
        if plain {
            "http"
        } else {
            "https"
        }
    }

    pub(crate) fn build_client(&self) -> Result<reqwest::Client, RegistryError> {
        self.client_builder()?
            .redirect(reqwest::redirect::Policy::limited(10))
            .build()
            .map_err(|e| RegistryError::Tls(super::error::chain(&e)))
    }

    /// The client's settings (TLS roots, timeouts, resolver, pool) before its redirect
    /// policy: the Hub client follows redirects itself, to keep its token off other hosts.
    pub(crate) fn client_builder(&self) -> Result<reqwest::ClientBuilder, RegistryError> {
        // reqwest is built without a crypto provider of its own (its default, aws-lc-rs, needs a
        // C toolchain and cmake): ring, the one the server uses too, is the process default.
        // Installing it again is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("hoist/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.connect_timeout.unwrap_or(Duration::from_secs(15)))
            .read_timeout(self.read_timeout.unwrap_or(Duration::from_secs(120)))
            .tcp_nodelay(true)
            // A resolver of our own (reads /etc/resolv.conf and /etc/hosts), so a static
            // binary in a scratch image resolves names without glibc NSS.
            .hickory_dns(true)
            .pool_max_idle_per_host(self.max_connections.max(8));
        if self.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        } else if !system_roots_found() {
            // A scratch image with no CA bundle: plain HTTP needs none, and TLS is checked
            // against the Mozilla roots built in (as uv does) rather than failing to start.
            builder = builder.tls_certs_merge(bundled_roots());
        }
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                RegistryError::Tls(format!("cannot read --ca-file {}: {e}", path.display()))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                RegistryError::Tls(format!(
                    "--ca-file {} is not a PEM certificate: {e}",
                    path.display()
                ))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(builder)
    }
}

/// Whether the system has CA certificates (the platform verifier refuses to start without
/// any). Read once per process.
fn system_roots_found() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        let found = !rustls_native_certs::load_native_certs().certs.is_empty();
        if !found {
            tracing::debug!("no CA certificates on this system: using the bundled roots");
        }
        found
    })
}

/// The Mozilla root certificates compiled in (`webpki-root-certs`).
fn bundled_roots() -> Vec<reqwest::Certificate> {
    webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der).ok())
        .collect()
}

/// `localhost`, `127.x.x.x` and `[::1]`, with or without a port, in any of their spellings
/// (`LOCALHOST`, `127.1`): the host as the URL parser reads it.
pub fn is_loopback(host: &str) -> bool {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    let canonical = crate::reference::canonical_registry(host);
    let name = match canonical.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => canonical.split(':').next().unwrap_or_default(),
    };
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[test]
fn loopback_hosts() {
    assert!(is_loopback("localhost:5000"));
    assert!(is_loopback("127.0.0.1"));
    assert!(is_loopback("[::1]:5000"));
    assert!(!is_loopback("registry.example.com"));
    assert!(is_loopback("LOCALHOST:5000"));
    assert!(is_loopback("127.1:5000"));
    assert!(!is_loopback("127.example.com"));
}
