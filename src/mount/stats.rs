//! What a mount counts, for its log and its Prometheus text: where reads were served from,
//! how long the first one took, how often a read had to wait for the network, and how many
//! bytes reached a reader before their blob was verified (the trade-off of lazy loading).

use crate::metrics::text::{Exposition, Kind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Stats {
    started: Instant,
    /// Bytes of reads whose chunks were already local (node cache or prefetched).
    pub read_local: AtomicU64,
    /// Bytes of reads that waited for the network.
    pub read_network: AtomicU64,
    /// Bytes served while their blob was not yet verified.
    pub read_unverified: AtomicU64,
    /// Nanoseconds from mount to the first byte served (0 = none yet).
    first_byte_ns: AtomicU64,
    pub stalls: AtomicU64,
    stall_ns: AtomicU64,
    pub read_errors: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub fetch_retries: AtomicU64,
    pub verified_blobs: AtomicU64,
    pub corrupt_blobs: AtomicU64,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            started: Instant::now(),
            read_local: AtomicU64::new(0),
            read_network: AtomicU64::new(0),
            read_unverified: AtomicU64::new(0),
            first_byte_ns: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            stall_ns: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            fetch_retries: AtomicU64::new(0),
            verified_blobs: AtomicU64::new(0),
            corrupt_blobs: AtomicU64::new(0),
        }
    }

    pub fn served(&self, bytes: u64, waited: Option<Duration>, verified: bool) {
        let since = self.started.elapsed().as_nanos().max(1) as u64;
        let _ = self
            .first_byte_ns
            .compare_exchange(0, since, Ordering::Relaxed, Ordering::Relaxed);
        match waited {
            Some(d) => {
                self.read_network.fetch_add(bytes, Ordering::Relaxed);
                self.stalls.fetch_add(1, Ordering::Relaxed);
                self.stall_ns
                    .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
            }
            None => {
                self.read_local.fetch_add(bytes, Ordering::Relaxed);
            }
        }
        if !verified {
            self.read_unverified.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    pub fn time_to_first_byte(&self) -> Option<Duration> {
        match self.first_byte_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    pub fn stall_time(&self) -> Duration {
        Duration::from_nanos(self.stall_ns.load(Ordering::Relaxed))
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        let mib = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / (1 << 20) as f64;
        format!(
            "served {:.1} MiB local, {:.1} MiB after waiting for the network ({} stalls, {:.2} s), {:.1} MiB before verification; fetched {:.1} MiB; first byte after {}; {} blobs verified, {} corrupt, {} read errors",
            mib(&self.read_local),
            mib(&self.read_network),
            self.stalls.load(Ordering::Relaxed),
            self.stall_time().as_secs_f64(),
            mib(&self.read_unverified),
            mib(&self.fetched_bytes),
            self.time_to_first_byte()
                .map(|d| format!("{:.3} s", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            self.verified_blobs.load(Ordering::Relaxed),
            self.corrupt_blobs.load(Ordering::Relaxed),
            self.read_errors.load(Ordering::Relaxed),
        )
    }

    /// Prometheus text exposition.
    pub fn render(&self, reference: &str) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = Exposition::new();
        let mut metric = |name: &str, kind: Kind, help: &str, lines: &[(&str, f64)]| {
            out.family(name, kind, help);
            for (source, value) in lines {
                match source.is_empty() {
                    true => out.sample(name, &[("reference", reference)], value),
                    false => {
                        out.sample(name, &[("reference", reference), ("source", source)], value)
                    }
                };
            }
        };
        metric(
            "hoist_mount_read_bytes_total",
            Kind::Counter,
            "Bytes served to readers, by whether the chunk was local or had to be fetched first.",
            &[
                ("cache", get(&self.read_local) as f64),
                ("network", get(&self.read_network) as f64),
            ],
        );
        metric(
            "hoist_mount_unverified_read_bytes_total",
            Kind::Counter,
            "Bytes served before their blob's digest was verified.",
            &[("", get(&self.read_unverified) as f64)],
        );
        metric(
            "hoist_mount_time_to_first_byte_seconds",
            Kind::Gauge,
            "Seconds from mount to the first byte served.",
            &[(
                "",
                self.time_to_first_byte()
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
            )],
        );
        metric(
            "hoist_mount_read_stalls_total",
            Kind::Counter,
            "Reads that waited for the network.",
            &[("", get(&self.stalls) as f64)],
        );
        metric(
            "hoist_mount_read_stall_seconds_total",
            Kind::Counter,
            "Seconds readers spent waiting for the network.",
            &[("", self.stall_time().as_secs_f64())],
        );
        metric(
            "hoist_mount_read_errors_total",
            Kind::Counter,
            "Reads answered with EIO.",
            &[("", get(&self.read_errors) as f64)],
        );
        metric(
            "hoist_mount_fetched_bytes_total",
            Kind::Counter,
            "Bytes downloaded from the registry.",
            &[("", get(&self.fetched_bytes) as f64)],
        );
        metric(
            "hoist_mount_blobs_verified_total",
            Kind::Counter,
            "Blobs whose digest matched.",
            &[("", get(&self.verified_blobs) as f64)],
        );
        metric(
            "hoist_mount_blobs_corrupt_total",
            Kind::Counter,
            "Blobs whose digest did not match (their reads fail with EIO).",
            &[("", get(&self.corrupt_blobs) as f64)],
        );
        out.finish()
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}
