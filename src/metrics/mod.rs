//! Metrics of a pull, in the Prometheus text format (0.0.4), for the node-exporter textfile
//! collector (`--metrics-file`) or a Pushgateway (`--pushgateway`). [`text`] writes them, and
//! the server's and the mount's metrics too.

pub mod text;
mod totals;

pub use totals::PullTotals;

use std::path::Path;

use text::{Exposition, Kind};

/// Upper bounds (seconds) for the download-duration histogram: seconds to an hour.
const BUCKETS: [f64; 11] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// A Pushgateway that could not take the metrics (a warning: the pull itself succeeded).
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot push metrics to {url}: {detail}")]
    Send { url: String, detail: String },
    #[error("pushgateway {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
}

/// What one pull did.
#[derive(Debug, Clone)]
pub struct PullMetrics {
    pub repository: String,
    pub seconds: f64,
    /// `None` on success, else the failure class (`network`, `auth`, `verification`, ...).
    pub failure: Option<&'static str>,
    pub bytes_total: u64,
    pub bytes_downloaded: u64,
    /// Bytes taken from the folder's earlier version (chunk index) instead of the network.
    pub bytes_reused: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// From the init container's start to the ready marker, when one was written.
    pub ready_seconds: Option<f64>,
}

impl PullMetrics {
    /// What a pull that started at `started` and ended with `result` did. `ready`: it wrote a
    /// ready marker, so the time from the process's start to now is the pod's time to ready.
    pub fn of(
        repository: String,
        started: std::time::Instant,
        result: Result<&crate::transfer::PullReport, &crate::Error>,
        ready: bool,
    ) -> PullMetrics {
        let (report, failure) = match result {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e.exit_code().reason())),
        };
        PullMetrics {
            repository,
            seconds: started.elapsed().as_secs_f64(),
            failure,
            bytes_total: report.map_or(0, |r| r.bytes),
            bytes_downloaded: report.map_or(0, |r| r.downloaded_bytes),
            bytes_reused: report.map_or(0, |r| r.reused_bytes),
            cache_hits: report.map_or(0, |r| r.cache_hits as u64),
            cache_misses: report.map_or(0, |r| r.cache_misses as u64),
            ready_seconds: (report.is_some() && ready).then(|| process_age(started)),
        }
    }

    pub fn render(&self) -> String {
        let repo = [("repository", self.repository.as_str())];
        let mut e = Exposition::new();
        let mut one = PullTotals::default();
        one.add(self);
        one.render_into(&mut e);
        if let Some(ready) = self.ready_seconds {
            e.single(
                "kaito_pod_ready_duration_seconds",
                Kind::Gauge,
                "From the init container's start to its ready marker.",
                &repo,
                format!("{ready:.3}"),
            );
        }
        let throughput = if self.seconds > 0.0 {
            self.bytes_downloaded as f64 / self.seconds
        } else {
            0.0
        };
        e.single(
            "hoist_download_throughput_bytes_per_second",
            Kind::Gauge,
            "Download rate of the last pull.",
            &repo,
            format!("{throughput:.0}"),
        );
        e.finish()
    }

    /// Replace the file atomically, so a collector never reads half of it.
    pub fn write_file(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(path, &self.render())
    }

    /// `PUT` to a Pushgateway under `job/<job>/instance/<instance>`, replacing the group.
    pub async fn push(&self, gateway: &str, job: &str, instance: &str) -> Result<(), PushError> {
        let url = format!(
            "{}/metrics/job/{job}/instance/{instance}",
            gateway.trim_end_matches('/')
        );
        let resp = reqwest::Client::new()
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(self.render())
            .send()
            .await
            .map_err(|e| PushError::Send {
                url: url.clone(),
                detail: crate::registry::error_chain(&e),
            })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(PushError::Status {
                url,
                status: resp.status().as_u16(),
            })
        }
    }
}

/// Every failure reason, always exported (0 or 1) so rates and alerts see the series.
pub const REASONS: [&str; 10] = [
    "auth",
    "not_found",
    "network",
    "verification",
    "disk",
    "invalid_content",
    "usage",
    "other",
    "interrupted",
    "signature",
];

/// Seconds since this process started (the init container's start, for
/// `kaito_pod_ready_duration_seconds`), from /proc, falling back to the pull's own time.
fn process_age(pull_started: std::time::Instant) -> f64 {
    let from_proc = || -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let start_ticks: f64 = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .nth(19)?
            .parse()
            .ok()?;
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let hz = rustix::param::clock_ticks_per_second() as f64;
        Some(uptime - start_ticks / hz)
    };
    from_proc()
        .filter(|s| *s >= 0.0)
        .unwrap_or_else(|| pull_started.elapsed().as_secs_f64())
}

/// Replace a metrics file atomically, so a collector never reads half of it.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    crate::fsutil::write_atomic(path, text.as_bytes(), crate::fsutil::Replace::FAST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_fills_buckets_from_its_duration() {
        let m = PullMetrics {
            repository: "r".into(),
            seconds: 7.0,
            failure: None,
            bytes_total: 10,
            bytes_downloaded: 10,
            bytes_reused: 0,
            cache_hits: 0,
            cache_misses: 1,
            ready_seconds: None,
        };
        let text = m.render();
        assert!(text
            .contains("kaito_model_download_duration_seconds_bucket{repository=\"r\",le=\"5\"} 0"));
        assert!(text.contains(
            "kaito_model_download_duration_seconds_bucket{repository=\"r\",le=\"10\"} 1"
        ));
        assert!(text.contains(
            "kaito_model_download_failures_total{repository=\"r\",reason=\"network\"} 0"
        ));
    }
}
