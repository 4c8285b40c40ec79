//! How many connections a pull holds: the controller that opens more while they pay (a link
//! that caps each connection gets many, a local registry stays at the start). The budget per
//! registry host that every pull of one process shares is `registry::budget`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// What one connection carries, at most, on a link that caps connections: cloud blob stores
/// and their CDNs give 5–50 MB/s each. A pull whose connections go faster at the start is on
/// a link where more connections do not pay.
const FAST_CONNECTION: f64 = 100e6;

/// Below this a connection is plainly capped by the link (no disk or CPU is that slow): the
/// controller steps by four, not two, and a spare connection may take the last range ahead of
/// another (see `range`).
const SLOW_CONNECTION: f64 = 25e6;

/// What the controller measured, for the connections to read: bytes a second one
/// connection carried over the last tick (0 before the first measurement).
#[derive(Default)]
pub(super) struct LinkRate(AtomicU64);

impl LinkRate {
    fn set(&self, per_connection: f64) {
        self.0.store(per_connection as u64, Ordering::Relaxed);
    }

    /// Seconds one connection takes to bring `bytes`, if a rate was measured.
    pub(super) fn seconds_for(&self, bytes: u64) -> Option<f64> {
        let rate = self.0.load(Ordering::Relaxed);
        (rate > 0).then(|| bytes as f64 / rate as f64)
    }
}

/// Open more connections while each step up raises the aggregate rate by more than 15% and
/// the machine has idle CPU: a link that caps every connection (cloud blob storage) gets
/// many, a local or CPU-bound one stays near the start, where extra connections only cost
/// CPU and split blobs into interleaved ranges (slower to write, see `range`).
pub(super) async fn grow_connections(
    permits: Arc<Semaphore>,
    received: Arc<AtomicU64>,
    link: Arc<LinkRate>,
    initial: usize,
    max: usize,
) {
    // Short enough to reach 64 connections in about a second and a half, long enough that
    // a 20 ms first byte and TCP's slow start do not hide what the last step brought.
    const TICK: Duration = Duration::from_millis(250);
    let (mut granted, mut best, mut last_step) = (initial, 0.0f64, 0);
    // The first step that seems not to pay is judged again a tick later: connections opened
    // together are not all streaming the tick after (TCP's slow start, a first byte 20 ms
    // away).
    let mut grace = true;
    let mut last = received.load(Ordering::Relaxed);
    let mut cpu = CpuTimes::read();
    // Measure from the first bytes of a blob: the connection set-up, the manifest and the
    // small files before them would make any link look slow and the first step look paid.
    let waited = tokio::time::Instant::now();
    while received.load(Ordering::Relaxed) == last && waited.elapsed() < 4 * TICK {
        tokio::time::sleep(TICK / 25).await;
    }
    last = received.load(Ordering::Relaxed);
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
        link.set(rate / granted as f64);
        if best == 0.0 && rate / granted as f64 > FAST_CONNECTION {
            // Each connection already carries more than a capped link gives one (a local
            // registry): more would only split the blobs and cost CPU.
            tracing::debug!(
                "{:.0} MB/s on {granted} connections: staying there",
                rate / 1e6
            );
            return;
        }
        if rate <= best * 1.15 && std::mem::take(&mut grace) {
            tracing::debug!("{:.0} MB/s: judging the step again next tick", rate / 1e6);
            continue;
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
        // Double while it pays, quadruple while each connection is plainly capped: the
        // useful count is reached in a second or less, not after many small steps (each
        // tick at 4 connections of 5 MB/s where 64 would stream costs 75 MB not brought).
        best = rate;
        let factor = if rate / (granted as f64) < SLOW_CONNECTION {
            3
        } else {
            1
        };
        last_step = (granted * factor).min(max - granted);
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
