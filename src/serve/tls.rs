//! TLS for `hoist serve` (`--tls-cert`, `--tls-key`): the acceptor each connection's task
//! uses for its handshake (see `conn`). Uses the rustls already in the
//! build for the client side (ring provider, no C toolchain beyond what `ring` needs).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A TLS acceptor for the certificate chain and key (PEM files).
pub fn acceptor(cert: &Path, key: &Path) -> std::io::Result<TlsAcceptor> {
    let bad = |what: &str, e: &dyn std::fmt::Display| std::io::Error::other(format!("{what}: {e}"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(&format!("cannot read certificate {}", cert.display()), &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&format!("bad certificate {}", cert.display()), &e))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| bad(&format!("cannot read key {}", key.display()), &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad("TLS setup", &e))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| bad("certificate and key do not match", &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
