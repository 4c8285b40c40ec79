//! `hoist serve`: an OCI distribution-spec v1.1 registry over the local store, so what
//! `hoist push ./m my-model:v1` stores is what `localhost:5000/my-model:v1` serves.
//!
//! Hand-written because it is the product's core: the Rust registries that exist buffer
//! whole blobs in memory or skip Range and chunked uploads. Here every blob streams from
//! disk (with Range), uploads stream to disk and are verified before they become visible,
//! and upload sessions live on disk so they survive a restart.
//!
//! With `--upstream` it is also a pull-through cache (see `upstream`), the node-local
//! cache a DaemonSet runs.
//!
//! Content is stored once (the OCI layout's blob pool), but each repository holds links to
//! the blobs and manifests it has (`Store::link`): reads, mounts and deletes go through those
//! links, so one repository's rights never reach another's blobs. Connections are served by
//! `conn` (timeouts and limits), access by `access` (policy, off-worker password checks).

mod access;
mod conn;
mod error;
mod file_body;
pub mod hub;
mod metrics;
mod routes;
mod tls;
mod uploads;
mod upstream;

pub use error::ApiError;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::store::Store;

pub use access::{Access, Mode as AccessMode};
pub use conn::ConnLimits;
pub use upstream::{Upstream, Upstreams};

/// What the server needs to run.
pub struct ServeOptions {
    pub addr: SocketAddr,
    pub store: Store,
    /// Pull-through: where misses are fetched from.
    pub upstreams: Upstreams,
    /// Users and how they authenticate; `None` serves everyone.
    pub access: Option<Access>,
    /// Refuse every write (push, delete) from clients: a pull-through cache without
    /// `--htpasswd` is read-only unless `--allow-push` says otherwise.
    pub read_only: bool,
    /// Certificate and key (PEM) to serve HTTPS.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub limits: ConnLimits,
    /// How the Hub API's repository names and `main` map onto the store.
    pub hub: hub::HubNames,
}

pub(crate) struct AppState {
    pub store: Store,
    pub uploads: uploads::Uploads,
    pub upstreams: Arc<Upstreams>,
    pub metrics: metrics::ServeMetrics,
    pub access: Option<Access>,
    pub read_only: bool,
    pub hub: hub::HubNames,
    /// Commit ids the Hub routes found (`serve::hub::CommitMemo`).
    pub hub_commits: hub::CommitMemo,
    /// Signs the Hub's Xet tokens and xorb URLs (`serve::hub::xet`).
    pub xet: hub::xet::XetKeys,
    /// Served over TLS: links the server hands out say `https`.
    pub tls: bool,
}

/// Bind and serve until the process ends. Prints nothing; the caller reports the address.
pub async fn bind(
    opts: ServeOptions,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(opts.addr).await?;
    let addr = listener.local_addr()?;
    let uploads = uploads::Uploads::open(&opts.store)?;
    // Tag writes queue for index.json, flushed once a second (see `store::tags`).
    let store = opts.store.defer_index_writes();
    let flushing = store.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let store = flushing.clone();
            let flushed = tokio::task::spawn_blocking(move || store.flush_index()).await;
            if let Ok(Err(e)) = flushed {
                tracing::warn!("writing tag changes to index.json failed: {e}; retrying");
            }
        }
    });
    let state = Arc::new(AppState {
        store,
        uploads,
        upstreams: Arc::new(opts.upstreams),
        metrics: metrics::ServeMetrics::default(),
        access: opts.access,
        read_only: opts.read_only,
        hub: opts.hub,
        hub_commits: Default::default(),
        xet: Default::default(),
        tls: opts.tls.is_some(),
    });
    let app = routes::router(state);
    let tls = match &opts.tls {
        Some((cert, key)) => Some(tls::acceptor(cert, key)?),
        None => None,
    };
    let mut limits = opts.limits;
    let (fit, files) = conn::fit_to_open_files(limits.max_connections);
    if let Some(files) = files {
        tracing::warn!(
            "serving at most {fit} connections at once, not {}: this process may open {files} files (ulimit -n); raise the limit for more",
            limits.max_connections
        );
        limits.max_connections = fit;
    }
    let server = conn::serve(listener, tls, app, limits);
    Ok((addr, server))
}
