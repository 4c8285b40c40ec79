//! `hoist csi`: a CSI node plugin (spec v1.9) that gives any Pod a model as a read-only
//! volume, from the node cache.
//!
//! A Pod names the model in an inline volume (`csi: {driver: csi.hoist.dev, volumeAttributes:
//! {reference: REF}}`) or a PersistentVolume whose handle or attributes name it. On
//! NodePublishVolume the plugin pulls the model into the node's store (verified, resumable,
//! mirrors honoured: `pull --cache`), places its files in a folder of their own by hard links
//! to the store's blobs, and bind-mounts that folder read-only at kubelet's target path. The
//! second volume of a model on the node is placed from the store alone.
//!
//! Kubelet gives NodePublishVolume two minutes and then retries. A pull here is a task of the
//! plugin, not of the call: when the call's deadline comes first, the call answers
//! DEADLINE_EXCEEDED and the pull goes on; the retry joins it and returns once the model is
//! placed. No byte is fetched twice, and a plugin killed mid-pull resumes from the store's
//! part files when kubelet retries.
//!
//! | file          | owns                                                              |
//! |---------------|-------------------------------------------------------------------|
//! | `request.rs`  | a publish request → a checked [`request::Volume`] (or INVALID_ARGUMENT) |
//! | `target.rs`   | kubelet's target paths, opened beneath `pods/` without links       |
//! | `access.rs`   | whether a volume's credentials may have a model from the cache     |
//! | `volumes.rs`  | the volumes: pulls as tasks, joined by retries; targets per folder; lazy FUSE volumes |
//! | `mounts.rs`   | publish and unpublish at a target; the targets recorded per folder  |
//! | `bind.rs`     | the read-only bind mount on an opened target, and its removal      |
//! | `authority.rs`| the socket's HTTP/2 front: any `:authority` a gRPC client sends     |
//! | `service.rs`  | the gRPC Identity and Node services, errors → gRPC codes           |
//! | `metrics.rs`  | `/metrics`: pulls by repository, publishes, cache hits             |
//!
//! The gRPC code is generated at build time from `proto/csi.proto` (the spec's own file).

mod access;
mod authority;
mod bind;
mod metrics;
mod mounts;
mod request;
mod service;
mod target;
mod volumes;

/// The CSI v1.9 messages, servers and clients, generated from `proto/csi.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod proto {
    tonic::include_proto!("csi.v1");
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::transfer::PullOptions;
use crate::Context;

pub use volumes::Volumes;

/// The driver's name: the `driver` of a Pod's volume and the CSIDriver object's name.
pub const DRIVER_NAME: &str = "csi.hoist.dev";

/// What `hoist csi` is told.
#[derive(Clone)]
pub struct CsiOptions {
    /// `unix:///csi/csi.sock` (kubelet and the node-driver-registrar speak to it).
    pub endpoint: String,
    /// This node's name (NodeGetInfo).
    pub node_id: String,
    /// Kubelet's folder: target paths outside `<kubelet_dir>/pods/` are refused.
    pub kubelet_dir: PathBuf,
    /// Where each volume's folder of hard links is made; on the store's filesystem.
    pub volumes_dir: PathBuf,
    /// Serve `/metrics` here.
    pub metrics_addr: Option<SocketAddr>,
    /// How a volume's pull runs (its cache and link mode are set by the plugin).
    pub pull: PullOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    #[error("the endpoint {0:?} is not a unix socket address: use unix:///PATH")]
    Endpoint(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the volumes folder {volumes} is not on the store's filesystem ({store}): a volume's files are hard links to the store's blobs; give --volumes-dir on the same filesystem as --store")]
    OtherFilesystem { volumes: PathBuf, store: PathBuf },
    #[error("the gRPC server stopped: {0}")]
    Server(String),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl crate::error::Classified for CsiError {
    fn exit_code(&self) -> crate::ExitCode {
        match self {
            CsiError::Endpoint(_) | CsiError::OtherFilesystem { .. } => crate::ExitCode::Usage,
            CsiError::Io { .. } => crate::ExitCode::Disk,
            CsiError::Server(_) | CsiError::Metrics { .. } => crate::ExitCode::Failure,
        }
    }
}

impl From<CsiError> for crate::Error {
    fn from(e: CsiError) -> crate::Error {
        crate::Error::Feature(Box::new(e))
    }
}

/// Serve the Identity and Node services on `opts.endpoint` until `shutdown` completes.
pub async fn serve(
    ctx: Context,
    opts: CsiOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), crate::Error> {
    let store = ctx.store()?;
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| CsiError::Io { what, path, source }
    };
    std::fs::create_dir_all(&opts.volumes_dir)
        .map_err(io("cannot create the volumes folder", &opts.volumes_dir))?;
    same_filesystem(&opts.volumes_dir, store.root())?;
    let socket = socket_path(&opts.endpoint)?;
    let listener = bind_socket(&socket)?;
    let volumes = Arc::new(Volumes::new(ctx, store, &opts));
    if let Some(addr) = opts.metrics_addr {
        let volumes = volumes.clone();
        metrics::serve(addr, move || volumes.render_metrics()).await?;
    }
    tracing::info!(
        "hoist csi: {DRIVER_NAME} on node {} listening on {}",
        opts.node_id,
        socket.display()
    );
    let result = service::serve(
        listener,
        volumes,
        opts.node_id.clone(),
        opts.kubelet_dir.clone(),
        shutdown,
    )
    .await;
    let _ = std::fs::remove_file(&socket);
    result
}

/// `unix:///csi/csi.sock` or `unix:/csi/csi.sock` → `/csi/csi.sock`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, CsiError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| CsiError::Endpoint(endpoint.to_string()))?;
    Ok(PathBuf::from(path))
}

/// Listen on `path`, replacing a socket a previous run left (kubelet keeps the address).
fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, CsiError> {
    let err = |what| {
        let path = path.to_path_buf();
        move |source| CsiError::Io { what, path, source }
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err("cannot create the socket's folder"))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("cannot remove the old socket")(e)),
    }
    tokio::net::UnixListener::bind(path).map_err(err("cannot listen on"))
}

fn same_filesystem(volumes: &Path, store: &Path) -> Result<(), CsiError> {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.dev())
            .map_err(|source| CsiError::Io {
                what: "cannot read",
                path: p.to_path_buf(),
                source,
            })
    };
    if dev(volumes)? != dev(store)? {
        return Err(CsiError::OtherFilesystem {
            volumes: volumes.to_path_buf(),
            store: store.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_unix_socket_paths() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        for bad in ["tcp://127.0.0.1:9000", "/csi/csi.sock", "unix://relative"] {
            assert!(socket_path(bad).is_err(), "{bad}");
        }
    }
}
