//! Metrics of a pull, in the Prometheus text format (0.0.4), for the node-exporter textfile
//! collector (`--metrics-file`) or a Pushgateway (`--pushgateway`).
//!
//! Written by hand rather than with `prometheus-client`: that crate emits OpenMetrics, whose
//! `_total`/`# EOF` conventions the textfile collector and Pushgateway read differently, and a
//! one-shot process needs no registry, only these few lines.

use std::fmt::Write as _;
use std::path::Path;

/// Upper bounds (seconds) for the download-duration histogram: seconds to an hour.
const BUCKETS: [f64; 11] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// What one pull did.
#[derive(Debug, Clone)]
pub struct PullMetrics {
    pub repository: String,
    pub seconds: f64,
    /// `None` on success, else the failure class (`network`, `auth`, `verification`, ...).
    pub failure: Option<&'static str>,
    pub bytes_total: u64,
    pub bytes_downloaded: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// From the init container's start to the ready marker, when one was written.
    pub ready_seconds: Option<f64>,
}

impl PullMetrics {
    pub fn render(&self) -> String {
        let repo = escape(&self.repository);
        let mut s = String::new();
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            name.to_string()
        };
        let name = family(
            "kaito_model_download_duration_seconds",
            "histogram",
            "Time to pull a model into its folder, verified, in seconds.",
        );
        let mut lines = String::new();
        let ok = self.failure.is_none();
        for le in BUCKETS {
            let n = u64::from(ok && self.seconds <= le);
            let _ = writeln!(
                lines,
                "{name}_bucket{{repository=\"{repo}\",le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            lines,
            "{name}_bucket{{repository=\"{repo}\",le=\"+Inf\"}} {}",
            u64::from(ok)
        );
        let _ = writeln!(
            lines,
            "{name}_sum{{repository=\"{repo}\"}} {}",
            if ok { self.seconds } else { 0.0 }
        );
        let _ = writeln!(
            lines,
            "{name}_count{{repository=\"{repo}\"}} {}",
            u64::from(ok)
        );
        s.push_str(&lines);

        let failures = "kaito_model_download_failures_total";
        let _ = writeln!(
            s,
            "# HELP {failures} Pulls that failed, by reason.\n# TYPE {failures} counter"
        );
        for reason in REASONS {
            let n = u64::from(self.failure == Some(reason));
            let _ = writeln!(
                s,
                "{failures}{{repository=\"{repo}\",reason=\"{reason}\"}} {n}"
            );
        }
        let counters = [
            (
                "hoist_download_bytes_total",
                "Bytes downloaded from registries.",
                self.bytes_downloaded,
            ),
            (
                "hoist_model_bytes_total",
                "Bytes of model files placed in the folder.",
                self.bytes_total,
            ),
            (
                "hoist_cache_hits_total",
                "Blobs taken from the local store instead of the network.",
                self.cache_hits,
            ),
            (
                "hoist_cache_misses_total",
                "Blobs that had to be downloaded.",
                self.cache_misses,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{repository=\"{repo}\"}} {value}");
        }
        if let Some(ready) = self.ready_seconds {
            let name = "kaito_pod_ready_duration_seconds";
            let _ = writeln!(
                s,
                "# HELP {name} From the init container's start to its ready marker.\n# TYPE {name} gauge\n{name}{{repository=\"{repo}\"}} {ready:.3}"
            );
        }
        let throughput = if self.seconds > 0.0 {
            self.bytes_downloaded as f64 / self.seconds
        } else {
            0.0
        };
        let name = "hoist_download_throughput_bytes_per_second";
        let _ = writeln!(
            s,
            "# HELP {name} Download rate of the last pull.\n# TYPE {name} gauge\n{name}{{repository=\"{repo}\"}} {throughput:.0}"
        );
        s
    }

    /// Replace the file atomically, so a collector never reads half of it.
    pub fn write_file(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(path, &self.render())
    }

    /// `PUT` to a Pushgateway under `job/<job>/instance/<instance>`, replacing the group.
    pub async fn push(&self, gateway: &str, job: &str, instance: &str) -> Result<(), String> {
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
            .map_err(|e| {
                format!(
                    "cannot push metrics to {url}: {}",
                    crate::registry::error_chain(&e)
                )
            })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "pushgateway {url} answered HTTP {}",
                resp.status().as_u16()
            ))
        }
    }
}

/// Every failure reason, always exported (0 or 1) so rates and alerts see the series.
pub const REASONS: [&str; 8] = [
    "auth",
    "not_found",
    "network",
    "verification",
    "disk",
    "invalid_content",
    "usage",
    "other",
];

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
