//! Pull metrics summed over many pulls, by repository: what a long-running puller (the CSI
//! plugin) exports on `/metrics`. One pull's file (`--metrics-file`) is the same families
//! with one pull in them, so both read alike in dashboards.

use std::collections::BTreeMap;

use super::text::{Exposition, Kind};
use super::{PullMetrics, BUCKETS, REASONS};

/// Sums of [`PullMetrics`] per repository.
#[derive(Debug, Default, Clone)]
pub struct PullTotals {
    repositories: BTreeMap<String, Sums>,
}

#[derive(Debug, Default, Clone)]
struct Sums {
    /// Successful pulls at or under each of [`BUCKETS`], then all successful ones (+Inf).
    buckets: [u64; BUCKETS.len() + 1],
    seconds: f64,
    failures: [u64; REASONS.len()],
    bytes_downloaded: u64,
    bytes_reused: u64,
    bytes_total: u64,
    cache_hits: u64,
    cache_misses: u64,
}

impl PullTotals {
    pub fn add(&mut self, pull: &PullMetrics) {
        let sums = self
            .repositories
            .entry(pull.repository.clone())
            .or_default();
        match pull.failure {
            None => {
                for (i, le) in BUCKETS.iter().enumerate() {
                    sums.buckets[i] += u64::from(pull.seconds <= *le);
                }
                sums.buckets[BUCKETS.len()] += 1;
                sums.seconds += pull.seconds;
            }
            Some(reason) => {
                let at = |name| REASONS.iter().position(|r| *r == name);
                let i = at(reason)
                    .or_else(|| at("other"))
                    .expect("other is a reason");
                sums.failures[i] += 1;
            }
        }
        sums.bytes_downloaded += pull.bytes_downloaded;
        sums.bytes_reused += pull.bytes_reused;
        sums.bytes_total += pull.bytes_total;
        sums.cache_hits += pull.cache_hits;
        sums.cache_misses += pull.cache_misses;
    }

    /// The download histogram, the failures by reason and the byte and cache counters.
    pub fn render_into(&self, e: &mut Exposition) {
        let name = "kaito_model_download_duration_seconds";
        e.family(
            name,
            Kind::Histogram,
            "Time to pull a model into its folder, verified, in seconds.",
        );
        let bucket = format!("{name}_bucket");
        for (repo, sums) in &self.repositories {
            let les = BUCKETS.iter().map(f64::to_string).chain(["+Inf".into()]);
            for (le, n) in les.zip(sums.buckets) {
                e.sample(&bucket, &[("repository", repo), ("le", &le)], n);
            }
            let count = sums.buckets[BUCKETS.len()];
            e.sample(
                &format!("{name}_sum"),
                &[("repository", repo)],
                sums.seconds,
            );
            e.sample(&format!("{name}_count"), &[("repository", repo)], count);
        }
        let failures = "kaito_model_download_failures_total";
        e.family(failures, Kind::Counter, "Pulls that failed, by reason.");
        for (repo, sums) in &self.repositories {
            for (reason, n) in REASONS.iter().zip(sums.failures) {
                e.sample(failures, &[("repository", repo), ("reason", reason)], n);
            }
        }
        type Field = fn(&Sums) -> u64;
        let counters: [(&str, &str, Field); 5] = [
            (
                "hoist_download_bytes_total",
                "Bytes downloaded from registries.",
                |s| s.bytes_downloaded,
            ),
            (
                "hoist_reused_bytes_total",
                "Bytes of changed files taken from the folder's earlier version instead of the network.",
                |s| s.bytes_reused,
            ),
            (
                "hoist_model_bytes_total",
                "Bytes of model files placed in the folder.",
                |s| s.bytes_total,
            ),
            (
                "hoist_cache_hits_total",
                "Blobs taken from the local store instead of the network.",
                |s| s.cache_hits,
            ),
            (
                "hoist_cache_misses_total",
                "Blobs that had to be downloaded.",
                |s| s.cache_misses,
            ),
        ];
        for (name, help, field) in counters {
            e.family(name, Kind::Counter, help);
            for (repo, sums) in &self.repositories {
                e.sample(name, &[("repository", repo)], field(sums));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull(repo: &str, seconds: f64, failure: Option<&'static str>, hits: u64) -> PullMetrics {
        PullMetrics {
            repository: repo.into(),
            seconds,
            failure,
            bytes_total: 10,
            bytes_downloaded: 4,
            bytes_reused: 0,
            cache_hits: hits,
            cache_misses: 1,
            ready_seconds: None,
        }
    }

    #[test]
    fn pulls_add_up_per_repository() {
        let mut t = PullTotals::default();
        t.add(&pull("a", 3.0, None, 0));
        t.add(&pull("a", 40.0, None, 2));
        t.add(&pull("a", 1.0, Some("network"), 0));
        t.add(&pull("b", 0.5, None, 1));
        let mut e = Exposition::new();
        t.render_into(&mut e);
        let text = e.finish();
        for line in [
            "kaito_model_download_duration_seconds_bucket{repository=\"a\",le=\"5\"} 1",
            "kaito_model_download_duration_seconds_bucket{repository=\"a\",le=\"60\"} 2",
            "kaito_model_download_duration_seconds_bucket{repository=\"a\",le=\"+Inf\"} 2",
            "kaito_model_download_duration_seconds_count{repository=\"a\"} 2",
            "kaito_model_download_duration_seconds_sum{repository=\"a\"} 43",
            "kaito_model_download_failures_total{repository=\"a\",reason=\"network\"} 1",
            "kaito_model_download_failures_total{repository=\"b\",reason=\"network\"} 0",
            "hoist_cache_hits_total{repository=\"a\"} 2",
            "hoist_cache_hits_total{repository=\"b\"} 1",
            "hoist_download_bytes_total{repository=\"a\"} 12",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert_eq!(text.matches("# TYPE hoist_cache_hits_total").count(), 1);
    }
}
