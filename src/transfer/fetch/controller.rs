//! How many connections a pull holds: the controller that opens more while they pay (a link
//! that caps each connection gets many, a local registry stays at the start), and the budget
//! per registry host that every pull of one process shares.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::DEFAULT_MAX_CONNECTIONS;

/// Connections to one registry (or mirror) host across every download of this process that
/// goes through a `Fetcher` (the CSI plugin's volumes, a Python program's concurrent pulls and
/// `open_safetensors`): they share one node's link to a registry, so each grows within its
/// own ceiling and all of them within this one. (`hoist serve`'s pull-through fetches a blob
/// on one connection of its own and is not counted here.)
pub const REGISTRY_BUDGET: usize = DEFAULT_MAX_CONNECTIONS;

pub(super) fn registry_budget(host: &str) -> Arc<Semaphore> {
    budget_with(host, REGISTRY_BUDGET)
}

/// The budget of `host`, made with `size` places the first time it is asked for.
pub(super) fn budget_with(host: &str, size: usize) -> Arc<Semaphore> {
    static BUDGETS: std::sync::OnceLock<Mutex<HashMap<String, Arc<Semaphore>>>> =
        std::sync::OnceLock::new();
    let mut budgets = BUDGETS
        .get_or_init(Mutex::default)
        .lock()
        .expect("budget lock");
    budgets
        .entry(host.to_string())
        .or_insert_with(|| Arc::new(Semaphore::new(size)))
        .clone()
}

/// What one connection carries, at most, on a link that caps connections: cloud blob stores
/// and their CDNs give 5–50 MB/s each. A pull whose connections go faster at the start is on
/// a link where more connections do not pay.
const FAST_CONNECTION: f64 = 100e6;

/// Open more connections while each step up raises the aggregate rate by more than 15% and
/// the machine has idle CPU: a link that caps every connection (cloud blob storage) gets
/// many, a local or CPU-bound one stays near the start, where extra connections only cost
/// CPU and split blobs into interleaved ranges (slower to write, see `range`).
pub(super) async fn grow_connections(
    permits: Arc<Semaphore>,
    received: Arc<AtomicU64>,
    initial: usize,
    max: usize,
) {
    // Short enough to reach 64 connections in about a second and a half, long enough that
    // a 20 ms first byte and TCP's slow start do not hide what the last step brought.
    const TICK: Duration = Duration::from_millis(250);
    let (mut granted, mut best, mut last_step) = (initial, 0.0f64, 0);
    let mut last = received.load(Ordering::Relaxed);
    let mut cpu = CpuTimes::read();
    // The first tick holds the connection set-up, the manifest and the small files: its
    // rate is low on any link and would make the first step look like it paid.
    tokio::time::sleep(TICK).await;
    last = received.load(Ordering::Relaxed).max(last);
    cpu = CpuTimes::read().or(cpu);
    while granted < max {
        tokio::time::sleep(TICK).await;
        let now_cpu = CpuTimes::read();
        let busy = cpu.zip(now_cpu).map(|(a, b)| b.busy_since(&a));
        cpu = now_cpu;
        if busy.is_some_and(|b| b > 0.85) {
            // More connections cannot go faster than the processors; stay here.
            tracing::debug!(
                "CPU {:.0}% busy: staying at {granted} connections",
                busy.unwrap_or(0.0) * 100.0
            );
            return;
        }
        let now = received.load(Ordering::Relaxed);
        let rate = (now - last) as f64 / TICK.as_secs_f64();
        last = now;
        if rate == 0.0 {
            continue; // nothing downloading right now
        }
        if best == 0.0 && rate / granted as f64 > FAST_CONNECTION {
            // Each connection already carries more than a capped link gives one (a local
            // registry): more would only split the blobs and cost CPU.
            tracing::debug!(
                "{:.0} MB/s on {granted} connections: staying there",
                rate / 1e6
            );
            return;
        }
        if rate <= best * 1.15 {
            // The last step did not pay: take it back (permits in use return first) and stop.
            permits.forget_permits(last_step);
            tracing::debug!(
                "{:.0} MB/s: staying at {} connections",
                rate / 1e6,
                granted - last_step
            );
            return;
        }
        // Double while it pays: under per-connection caps the useful count is reached in a
        // second or so, not after many small steps. (Quadrupling was tried: 24 connections
        // opened at once are not all streaming a tick later, so the step looked as if it did
        // not pay and was taken back — 14 s instead of 7.8 s at 5 MB/s a connection.)
        best = rate;
        last_step = granted.min(max - granted);
        permits.add_permits(last_step);
        granted += last_step;
        tracing::debug!(
            "{:.0} MB/s: opening up to {granted} connections",
            rate / 1e6
        );
    }
}

/// The machine's CPU time from `/proc/stat` (all cores), to tell a CPU-bound pull from a
/// network-bound one. `None` where it cannot be read (then only the rate decides).
#[derive(Clone, Copy)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    fn read() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal …
        let idle = fields.get(3)? + fields.get(4).unwrap_or(&0);
        let total: u64 = fields.iter().take(8).sum();
        Some(CpuTimes {
            busy: total.saturating_sub(idle),
            total,
        })
    }

    /// The share of CPU time spent busy between `earlier` and `self`.
    fn busy_since(&self, earlier: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}
