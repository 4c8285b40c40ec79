//! `hoist csi`: flags → [`hoist::csi::CsiOptions`], then the plugin runs until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use hoist::csi::{self, CsiOptions};
use hoist::{Error, PullOptions};

use super::global::Env;
use super::parse;

#[derive(Args)]
pub struct CsiArgs {
    /// The socket kubelet and the node-driver-registrar speak to.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// This node's name (NodeGetInfo): `$(NODE_NAME)` from the Pod's spec.nodeName.
    #[arg(long, env = "NODE_NAME")]
    node_id: String,
    /// Kubelet's folder: a target path outside its pods/ folder is refused.
    #[arg(long, env = "HOIST_KUBELET_DIR", default_value = "/var/lib/kubelet")]
    kubelet_dir: PathBuf,
    /// Where each volume's folder is made (hard links to the store's blobs, so on the
    /// store's filesystem: --store / $HOIST_HOME).
    #[arg(
        long,
        env = "HOIST_VOLUMES_DIR",
        default_value = "/var/lib/hoist-csi/volumes"
    )]
    volumes_dir: PathBuf,
    /// Serve Prometheus metrics on `IP:PORT` at /metrics.
    #[arg(long, env = "HOIST_METRICS_ADDR", value_parser = parse::listen_addr)]
    metrics_addr: Option<SocketAddr>,
    /// How each volume's pull fetches (a pull that gives up is resumed by kubelet's retry).
    #[command(flatten)]
    fetch: super::pull::FetchArgs,
    /// Volumes only of models signed by these keys; PERMISSION_DENIED otherwise.
    #[command(flatten)]
    verify: super::pull::VerifyKeyArgs,
}

pub async fn csi(args: CsiArgs, env: &Env) -> Result<(), Error> {
    let opts = CsiOptions {
        endpoint: args.endpoint,
        node_id: args.node_id,
        kubelet_dir: args.kubelet_dir,
        volumes_dir: args.volumes_dir,
        metrics_addr: args.metrics_addr,
        pull: PullOptions {
            concurrency: args.fetch.concurrency(),
            fetch: args.fetch.options(env.ctx.settings().stall_timeout),
            verify: args.verify.verification()?,
            ..Default::default()
        },
    };
    csi::serve(env.ctx.clone(), opts, terminated()).await
}

/// SIGTERM (the DaemonSet's Pod stopping) or Ctrl-C. A pull under way stops where it is;
/// the store keeps what it fetched, and kubelet's next call resumes it.
async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
