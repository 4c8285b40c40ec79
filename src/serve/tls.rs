//! TLS for `hoist serve` (`--tls-cert`, `--tls-key`): a listener that completes the
//! handshake before handing the stream to the HTTP server. Uses the rustls already in the
//! build for the client side (ring provider, no C toolchain beyond what `ring` needs).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, cert: &Path, key: &Path) -> std::io::Result<TlsListener> {
        let bad =
            |what: &str, e: &dyn std::fmt::Display| std::io::Error::other(format!("{what}: {e}"));
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
        Ok(TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            match self.acceptor.accept(stream).await {
                Ok(tls) => return (tls, addr),
                Err(e) => tracing::debug!("TLS handshake with {addr} failed: {e}"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
