//! The plugin's `/metrics`: the pull families every hoist pull exports (download duration,
//! failures by reason, bytes, cache hits), summed over the plugin's life, plus its own
//! publish counters.

use super::CsiError;
use crate::metrics::text::{Exposition, Kind};
use crate::metrics::{PullMetrics, PullTotals};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// What the plugin counts.
#[derive(Debug, Default)]
pub struct Counters {
    pulls: PullTotals,
    /// Publishes answered, by mode and result (`ok`, or a gRPC code's name).
    publishes: BTreeMap<(&'static str, String), u64>,
    /// Volumes placed from the node's store alone: no byte downloaded.
    from_store: u64,
    /// Publishes that joined a pull another call started.
    pub joined: u64,
    /// Publishes refused because the registry did not let the volume's credentials read a
    /// model the node's cache holds.
    pub denied: u64,
}

impl Counters {
    pub fn pulled(&mut self, pull: &PullMetrics) {
        if pull.failure.is_none() && pull.bytes_downloaded == 0 {
            self.from_store += 1;
        }
        self.pulls.add(pull);
    }

    pub fn published(&mut self, mode: &'static str, result: &str) {
        *self
            .publishes
            .entry((mode, result.to_string()))
            .or_default() += 1;
    }

    pub fn render(&self, in_flight: usize) -> String {
        let mut e = Exposition::new();
        self.pulls.render_into(&mut e);
        let name = "hoist_csi_publish_total";
        e.family(
            name,
            Kind::Counter,
            "NodePublishVolume calls answered, by mode and result.",
        );
        for ((mode, result), n) in &self.publishes {
            e.sample(name, &[("mode", mode), ("result", result)], n);
        }
        e.single(
            "hoist_csi_volumes_from_store_total",
            Kind::Counter,
            "Volumes placed from the node's store alone, with no byte downloaded.",
            &[],
            self.from_store,
        );
        e.single(
            "hoist_csi_joined_total",
            Kind::Counter,
            "Publishes that joined a pull already under way (kubelet's retries).",
            &[],
            self.joined,
        );
        e.single(
            "hoist_csi_cache_access_denied_total",
            Kind::Counter,
            "Publishes refused: the registry does not let the volume's credentials read a model the node's cache holds.",
            &[],
            self.denied,
        );
        e.single(
            "hoist_csi_pulls_in_flight",
            Kind::Gauge,
            "Volume pulls running now.",
            &[],
            in_flight,
        );
        e.finish()
    }
}

/// Serve `GET /metrics` on `addr` in the background; `render` writes the text.
pub async fn serve(
    addr: SocketAddr,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
) -> Result<(), CsiError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| CsiError::Metrics { addr, source })?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = render();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    text,
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("hoist csi: the metrics server stopped: {e}");
        }
    });
    Ok(())
}
