//! The gRPC Identity and Node services over the unix socket, and how hoist's errors become
//! gRPC codes: the class of the exit code the CLI would give, with its one-line message.
//!
//! | exit code               | gRPC code             |
//! |-------------------------|-----------------------|
//! | 2 usage                 | INVALID_ARGUMENT      |
//! | 3 auth                  | UNAUTHENTICATED       |
//! | 4 not found             | NOT_FOUND             |
//! | 5 network               | UNAVAILABLE           |
//! | 6 verification          | DATA_LOSS             |
//! | 7 disk                  | RESOURCE_EXHAUSTED    |
//! | 8 invalid content       | FAILED_PRECONDITION   |
//! | 9 signature             | PERMISSION_DENIED     |
//! | 130 interrupted         | ABORTED               |
//! | 1 other                 | INTERNAL              |

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Request, Response, Status};

use super::proto::identity_server::{Identity, IdentityServer};
use super::proto::node_server::{Node, NodeServer};
use super::proto::{self as csi};
use super::request::{self, Volume};
use super::volumes::{Failure, Refused, Volumes};
use super::{bind, CsiError, DRIVER_NAME};
use crate::fsutil::is_mount_point;
use crate::ExitCode;

pub(super) async fn serve(
    listener: tokio::net::UnixListener,
    volumes: Arc<Volumes>,
    node_id: String,
    kubelet_dir: PathBuf,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), crate::Error> {
    let node = NodePlugin {
        volumes,
        node_id,
        kubelet_dir,
    };
    tonic::transport::Server::builder()
        .add_service(IdentityServer::new(IdentityPlugin))
        .add_service(NodeServer::new(node))
        // Through the authority front: stock gRPC clients name the socket's path there.
        .serve_with_incoming_shutdown(super::authority::front(listener), shutdown)
        .await
        .map_err(|e| CsiError::Server(crate::registry::error_chain(&e)).into())
}

struct IdentityPlugin;

#[tonic::async_trait]
impl Identity for IdentityPlugin {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        // A node plugin only: no controller service, no topology.
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn probe(
        &self,
        _: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}

struct NodePlugin {
    volumes: Arc<Volumes>,
    node_id: String,
    kubelet_dir: PathBuf,
}

#[tonic::async_trait]
impl Node for NodePlugin {
    async fn node_publish_volume(
        &self,
        req: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let wait = deadline(req.metadata()).map(answer_within);
        let volume = request::publish(req.get_ref(), &self.kubelet_dir)
            .map_err(|e| Status::invalid_argument(e.0))?;
        let mode = if volume.lazy { "lazy" } else { "copy" };
        let result = self.publish(&volume, wait).await;
        let outcome = match &result {
            Ok(()) => "ok".to_string(),
            Err(status) => format!("{:?}", status.code()),
        };
        self.volumes
            .counters
            .lock()
            .expect("counters lock")
            .published(mode, &outcome);
        result.map(|()| Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let (id, target) = request::unpublish(req.get_ref(), &self.kubelet_dir)
            .map_err(|e| Status::invalid_argument(e.0))?;
        self.volumes
            .unpublish(&id, &target)
            .await
            .map_err(refused)?;
        tracing::info!("volume {id}: unpublished from {}", target.display());
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        // No staging: each publish mounts its own folder.
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }

    async fn node_stage_volume(
        &self,
        _: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        Err(not_offered("NodeStageVolume"))
    }

    async fn node_unstage_volume(
        &self,
        _: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        Err(not_offered("NodeUnstageVolume"))
    }

    async fn node_get_volume_stats(
        &self,
        _: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        Err(not_offered("NodeGetVolumeStats"))
    }

    async fn node_expand_volume(
        &self,
        _: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        Err(not_offered("NodeExpandVolume"))
    }
}

impl NodePlugin {
    async fn publish(&self, volume: &Volume, wait: Option<Duration>) -> Result<(), Status> {
        if volume.lazy {
            return self.publish_lazy(volume).await;
        }
        self.volumes.publish(volume, wait).await.map_err(refused)
    }

    #[cfg(feature = "mount")]
    async fn publish_lazy(&self, volume: &Volume) -> Result<(), Status> {
        // Opened (and made) without links first; the FUSE mount then goes on that path.
        let target = self
            .volumes
            .open_target(&volume.target, true)
            .map_err(refused)?
            .expect("a created target exists");
        let mounted = is_mount_point(&volume.target).map_err(|e| {
            status(
                ExitCode::Failure,
                format!("cannot read the mount table: {e}"),
            )
        })?;
        if mounted && self.volumes.serves_lazy(&volume.id) {
            return Ok(());
        }
        if mounted {
            // A FUSE mount whose server (an earlier run of this plugin) is gone.
            bind::detach(&target).map_err(|e| {
                status(
                    ExitCode::Failure,
                    format!(
                        "cannot clear a dead mount at {}: {e}",
                        volume.target.display()
                    ),
                )
            })?;
        }
        self.volumes
            .mount_lazy(volume)
            .await
            .map_err(|e| status(e.exit_code(), e.to_string()))
    }

    #[cfg(not(feature = "mount"))]
    async fn publish_lazy(&self, _: &Volume) -> Result<(), Status> {
        Err(Status::invalid_argument(
            "mode lazy needs hoist built with the mount feature",
        ))
    }
}

/// The gRPC status of a refused publish or unpublish.
fn refused(r: Refused) -> Status {
    match r {
        Refused::Conflict(m) => Status::already_exists(m),
        Refused::Denied(m) => Status::permission_denied(m),
        Refused::Invalid(m) => Status::invalid_argument(m),
        Refused::Unknown(m) => Status::not_found(m),
        Refused::Pending(m) => Status::deadline_exceeded(m),
        Refused::Failed(Failure { code, message }) => status(code, message),
    }
}

fn not_offered(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is not offered: hoist's volumes need no staging"
    ))
}

/// The gRPC status for a failure of this exit-code class (see the table above).
pub fn status(code: ExitCode, message: String) -> Status {
    let code = match code {
        ExitCode::Usage => Code::InvalidArgument,
        ExitCode::Auth => Code::Unauthenticated,
        ExitCode::NotFound => Code::NotFound,
        ExitCode::Network => Code::Unavailable,
        ExitCode::Verification => Code::DataLoss,
        ExitCode::Disk => Code::ResourceExhausted,
        ExitCode::InvalidContent => Code::FailedPrecondition,
        ExitCode::Signature => Code::PermissionDenied,
        ExitCode::Interrupted => Code::Aborted,
        ExitCode::Ok | ExitCode::Failure => Code::Internal,
    };
    Status::new(code, message)
}

/// The caller's deadline, from the `grpc-timeout` header (`2S`, `1999m`, `120000000u`).
fn deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How long to wait for a pull within a caller's deadline: answered a little before it, so
/// the caller reads DEADLINE_EXCEEDED from us, with its message, not a cut connection.
fn answer_within(deadline: Duration) -> Duration {
    let margin = (deadline / 10).clamp(Duration::from_millis(50), Duration::from_secs(2));
    deadline.saturating_sub(margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        let mut m = tonic::metadata::MetadataMap::new();
        for (text, want) in [
            ("2S", Duration::from_secs(2)),
            ("1999m", Duration::from_millis(1999)),
            ("2M", Duration::from_secs(120)),
            ("5u", Duration::from_micros(5)),
        ] {
            m.insert("grpc-timeout", text.parse().unwrap());
            assert_eq!(deadline(&m), Some(want), "{text}");
        }
        m.insert("grpc-timeout", "S".parse().unwrap());
        assert_eq!(deadline(&m), None);
        assert_eq!(
            answer_within(Duration::from_secs(120)),
            Duration::from_secs(118)
        );
        assert_eq!(
            answer_within(Duration::from_secs(2)),
            Duration::from_millis(1800)
        );
    }

    #[test]
    fn every_exit_code_has_its_grpc_code() {
        assert_eq!(
            status(ExitCode::NotFound, "x".into()).code(),
            Code::NotFound
        );
        assert_eq!(
            status(ExitCode::Auth, "x".into()).code(),
            Code::Unauthenticated
        );
        assert_eq!(
            status(ExitCode::Network, "x".into()).code(),
            Code::Unavailable
        );
        assert_eq!(
            status(ExitCode::Disk, "x".into()).code(),
            Code::ResourceExhausted
        );
    }
}
