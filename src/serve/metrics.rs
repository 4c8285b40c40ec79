//! `/metrics` of the server, in the Prometheus text format: requests by route and status,
//! bytes served, pull-through cache hits and misses, upstream latency, store size.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::metrics::text::{Exposition, Kind};
use crate::store::Store;

#[derive(Default)]
pub struct ServeMetrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub bytes_served: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    upstream_micros: AtomicU64,
    upstream_requests: AtomicU64,
}

impl ServeMetrics {
    pub fn request(&self, route: &'static str, status: u16) {
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry((route, status))
            .or_default() += 1;
    }

    pub fn upstream(&self, took: std::time::Duration) {
        self.upstream_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.upstream_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, store: &Store) -> String {
        let mut e = Exposition::new();
        let name = "hoist_serve_requests_total";
        e.family(name, Kind::Counter, "Requests by route and status.");
        for ((route, status), n) in self.requests.lock().expect("metrics lock").iter() {
            let code = status.to_string();
            e.sample(name, &[("route", route), ("code", &code)], n);
        }
        let counters = [
            (
                "hoist_serve_bytes_served_total",
                "Blob bytes sent to clients.",
                &self.bytes_served,
            ),
            (
                "hoist_serve_cache_hits_total",
                "Pull-through requests served from the store.",
                &self.cache_hits,
            ),
            (
                "hoist_serve_cache_misses_total",
                "Pull-through requests fetched from upstream.",
                &self.cache_misses,
            ),
        ];
        for (name, help, value) in counters {
            e.single(
                name,
                Kind::Counter,
                help,
                &[],
                value.load(Ordering::Relaxed),
            );
        }
        let name = "hoist_serve_upstream_seconds";
        e.family(
            name,
            Kind::Summary,
            "Time to first byte of upstream requests.",
        )
        .sample(
            &format!("{name}_sum"),
            &[],
            self.upstream_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
        .sample(
            &format!("{name}_count"),
            &[],
            self.upstream_requests.load(Ordering::Relaxed),
        );
        e.single(
            "hoist_serve_store_bytes",
            Kind::Gauge,
            "Bytes of blobs in the store.",
            &[],
            store.total_blob_bytes(),
        );
        e.finish()
    }
}
