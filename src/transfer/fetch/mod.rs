//! The download engine, the heart of `pull`.
//!
//! A large blob is split into byte ranges fetched over several HTTP/1.1 connections at once
//! and written at their offsets (`pwrite`) into a preallocated part file. A hasher thread
//! reads the file back in order as the contiguous prefix grows (the bytes are still in the
//! page cache), so verification finishes moments after the last byte lands. Finished ranges
//! are recorded in a small state file beside the part file, so a killed pull resumes where
//! it stopped; the digest, not the state file, decides whether the bytes are good.
//!
//! Hand-written rather than taken from a crate: no Rust crate does ranged, resumable,
//! verifying blob downloads, and this is the product's core.

mod controller;
mod hash;
mod range;
mod state;
mod store;
/// Where a download keeps the resume record of a part file.
pub use state::path_for as state_path_for;
pub(crate) use state::trim_parts;
pub(crate) use store::{checked, fetch_into_store, into_store};

use crate::registry::budget::registry_budget;
#[cfg(test)]
pub use crate::registry::budget::REGISTRY_BUDGET;
pub use crate::registry::RetryPolicy;
use controller::{grow_connections, LinkRate};

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One of the pull's connections, held while a request runs: a place in the pull's own
/// (growing) set and one in the registry's budget for this process.
pub(crate) struct Permit {
    _pull: OwnedSemaphorePermit,
    _registry: OwnedSemaphorePermit,
}

use super::{Event, Observer, TransferError};
use crate::oci::Descriptor;
use crate::registry::RegistryClient;

/// Connections a pull may open at once by default: enough to fill a link that caps each
/// connection (cloud blob stores and their CDNs, 5–50 MB/s each); the controller opens them
/// only while they raise the rate, so a fast local link stays near [`INITIAL_CONNECTIONS`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// Knobs of the download engine.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Connections open at once across all blobs.
    pub max_connections: usize,
    /// Fixed range size; `None` adapts it to the blob size.
    pub range_size: Option<u64>,
    pub retry: RetryPolicy,
    /// A connection that delivers no byte for this long is dropped and its range retried.
    pub stall_timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            range_size: None,
            retry: RetryPolicy::default(),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

impl FetchOptions {
    /// The one way a front end makes fetch options from what its user gave: at least one
    /// connection and one attempt per range.
    pub fn new(
        max_connections: usize,
        range_size: Option<u64>,
        attempts: u32,
        stall_timeout: Duration,
    ) -> FetchOptions {
        FetchOptions {
            max_connections: max_connections.max(1),
            range_size,
            retry: RetryPolicy {
                attempts: attempts.max(1),
                ..Default::default()
            },
            stall_timeout,
        }
    }

    /// Range size for a blob: large enough to amortise a request, small enough that every
    /// connection gets several ranges and a slow one does not hold up the end. (2 MiB
    /// ranges were tried for capped links: 0.2 s faster at 5 MB/s a connection, 15% slower
    /// on loopback with a cold page cache, so the floor stays at 8 MiB.)
    pub fn range_size_for(&self, size: u64) -> u64 {
        if let Some(fixed) = self.range_size {
            return fixed.max(64 * 1024);
        }
        let per_connection = size / (self.max_connections.max(1) as u64 * 2);
        per_connection.clamp(8 << 20, 64 << 20)
    }
}

/// One place a blob can be fetched from: a registry (or mirror) and repository.
#[derive(Clone)]
pub struct Source {
    pub client: RegistryClient,
    pub repository: String,
}

/// Connections a pull starts with; more are opened while they raise the throughput.
const INITIAL_CONNECTIONS: usize = 4;

/// Shared by every download of one pull: the connection budget and the retry budget.
pub struct Fetcher {
    pub(crate) opts: FetchOptions,
    connections: Arc<Semaphore>,
    retries_left: AtomicU32,
    observer: Observer,
    /// Bytes received, sampled by the connection controller.
    received: Arc<AtomicU64>,
    /// What one connection carries, as the controller last measured it.
    link: Arc<LinkRate>,
    /// Bytes found already downloaded by an interrupted earlier run.
    resumed: AtomicU64,
    /// Blobs waiting for their first connection: while any does, no blob takes a second.
    starting: AtomicUsize,
    /// Registries that answered 429, and until when nobody asks them again.
    throttled: Mutex<HashMap<String, Instant>>,
    /// Mirrors that failed this pull: the blobs after skip them (the last source, the
    /// registry itself, is never skipped).
    down: Mutex<HashSet<String>>,
    controller: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        if let Some(c) = self.controller.take() {
            c.abort();
        }
    }
}

impl Fetcher {
    /// Must be called inside a tokio runtime (it starts the connection controller).
    pub fn new(opts: FetchOptions, observer: Observer) -> Fetcher {
        let max = opts.max_connections.max(1);
        let initial = INITIAL_CONNECTIONS.min(max);
        let connections = Arc::new(Semaphore::new(initial));
        let received = Arc::new(AtomicU64::new(0));
        let link = Arc::new(LinkRate::default());
        let controller = (max > initial).then(|| {
            tokio::spawn(grow_connections(
                connections.clone(),
                received.clone(),
                link.clone(),
                initial,
                max,
            ))
        });
        Fetcher {
            connections,
            retries_left: AtomicU32::new(opts.retry.total),
            opts,
            observer,
            received,
            link,
            resumed: AtomicU64::new(0),
            starting: AtomicUsize::new(0),
            throttled: Mutex::default(),
            down: Mutex::default(),
            controller,
        }
    }

    /// Bytes this pull did not download again because an earlier run had.
    pub fn resumed_bytes(&self) -> u64 {
        self.resumed.load(Ordering::Relaxed)
    }

    pub(crate) fn count_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    /// A blob's first connection to `host`, waiting in turn for one (the pull's, then the
    /// registry's).
    async fn first_connection(&self, host: &str) -> Permit {
        /// Counts the wait even when the download is cancelled during it.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.starting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.starting);
        let pull = self.connections.clone().acquire_owned().await;
        let registry = registry_budget(host).acquire_owned().await;
        Permit {
            _pull: pull.expect("semaphore open"),
            _registry: registry.expect("semaphore open"),
        }
    }

    /// Another connection to `host` for a blob that has one, if both the pull and the
    /// registry's budget have one free now and no blob waits.
    fn spare_connection(&self, host: &str) -> Option<Permit> {
        if self.starting.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let pull = self.connections.clone().try_acquire_owned().ok()?;
        let registry = registry_budget(host).try_acquire_owned().ok()?;
        Some(Permit {
            _pull: pull,
            _registry: registry,
        })
    }

    /// Hold every request to `host` for `delay` (it answered 429).
    pub(crate) fn throttle(&self, host: &str, delay: Duration) {
        let until = Instant::now() + delay;
        let mut held = self.throttled.lock().expect("throttle lock");
        let entry = held.entry(host.to_string()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Wait while `host` asked to be left alone, plus a little jitter: connections held
    /// together are not released together.
    pub(crate) async fn wait_out_throttle(&self, host: &str) {
        let until = self
            .throttled
            .lock()
            .expect("throttle lock")
            .get(host)
            .copied();
        if let Some(until) = until.filter(|u| *u > Instant::now()) {
            let spread = self.opts.retry.delay(1, None);
            tokio::time::sleep_until((until + spread).into()).await;
        }
    }

    fn is_down(&self, host: &str) -> bool {
        self.down.lock().expect("down lock").contains(host)
    }

    /// Take one retry from the pull's total budget.
    fn take_retry(&self) -> bool {
        self.retries_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Download `desc` into `part`, trying each source in turn, resuming from the state file
    /// beside it. On success the part file holds exactly the verified bytes and the state file
    /// is gone; on a digest mismatch both are removed.
    pub async fn download(
        &self,
        sources: &[Source],
        desc: &Descriptor,
        part: &Path,
        name: &str,
    ) -> Result<(), TransferError> {
        self.download_any(sources, desc, Part::File(part), name)
            .await
    }

    /// Download `desc` into anonymous memory (a `memfd`: no file in any filesystem), over the
    /// same ranged connections and with the same check as [`Fetcher::download`]; the memory
    /// holds exactly the verified bytes when this returns. Nothing is kept for a resume.
    pub async fn download_to_memory(
        &self,
        sources: &[Source],
        desc: &Descriptor,
        name: &str,
    ) -> Result<std::fs::File, TransferError> {
        let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| TransferError::io("memfd")(e.into()))?;
        let file = Arc::new(std::fs::File::from(fd));
        file.set_len(desc.size)
            .map_err(TransferError::io("memfd"))?;
        self.download_any(sources, desc, Part::Memory(&file), name)
            .await?;
        Ok(Arc::try_unwrap(file).expect("the download let its file go"))
    }

    async fn download_any(
        &self,
        sources: &[Source],
        desc: &Descriptor,
        part: Part<'_>,
        name: &str,
    ) -> Result<(), TransferError> {
        let mut last = None;
        for (i, source) in sources.iter().enumerate() {
            let host = source.client.registry();
            let is_last = i + 1 == sources.len();
            if !is_last && self.is_down(host) {
                continue;
            }
            // Ranges a failed source delivered stay; only the first try counts them as resumed.
            let first_try = last.is_none();
            match self
                .download_from(source, desc, part, name, first_try)
                .await
            {
                Ok(()) => return Ok(()),
                // A mirror that serves other bytes is skipped; the next source may be honest.
                Err(e @ TransferError::DigestMismatch { .. }) => last = Some(e),
                Err(e @ (TransferError::Registry(_) | TransferError::GaveUp { .. }))
                    if !is_last =>
                {
                    let unreachable = match &e {
                        TransferError::GaveUp { .. } => true,
                        TransferError::Registry(e) => e.is_unreachable(),
                        _ => false,
                    };
                    if unreachable && source.client.is_fail_fast() {
                        self.down
                            .lock()
                            .expect("down lock")
                            .insert(host.to_string());
                    }
                    tracing::warn!("{name}: {host} failed ({e}); trying the next source");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one source"))
    }

    async fn download_from(
        &self,
        source: &Source,
        desc: &Descriptor,
        part: Part<'_>,
        name: &str,
        first_try: bool,
    ) -> Result<(), TransferError> {
        let part = match part {
            Part::File(path) => path,
            Part::Memory(file) => return self.download_memory(source, desc, file, name).await,
        };
        let state_path = state::path_for(part);
        let range_size = self.opts.range_size_for(desc.size);
        let mut state = state::RangeState::load_or_new(&state_path, part, desc, range_size)
            .map_err(TransferError::io(part))?;
        let resumed = state.done_bytes();
        if first_try && resumed > 0 {
            self.resumed.fetch_add(resumed, Ordering::Relaxed);
            // Said at the default log level: a restarted init container's log should show it.
            tracing::warn!(
                "{name}: resuming an interrupted download, {resumed} of {} bytes already here",
                desc.size
            );
            (self.observer)(&Event::Progress {
                name: name.to_string(),
                bytes: resumed,
            });
        }
        let file = Arc::new(state::open_part(part, desc.size).map_err(TransferError::io(part))?);
        let actual = range::fetch_ranges(self, source, desc, &file, &mut state, name).await?;
        let size = desc.size;
        if actual != desc.digest {
            let _ = std::fs::remove_file(part);
            let _ = std::fs::remove_file(&state_path);
            return Err(TransferError::DigestMismatch {
                what: name.to_string(),
                expected: desc.digest.clone(),
                actual,
                size,
            });
        }
        let _ = std::fs::remove_file(&state_path);
        Ok(())
    }
}

/// Where a download writes.
#[derive(Clone, Copy)]
enum Part<'a> {
    /// A part file, with its resume record beside it.
    File(&'a Path),
    /// A memory file, started over on each try.
    Memory(&'a Arc<std::fs::File>),
}

impl Fetcher {
    async fn download_memory(
        &self,
        source: &Source,
        desc: &Descriptor,
        file: &Arc<std::fs::File>,
        name: &str,
    ) -> Result<(), TransferError> {
        let mut state = state::RangeState::in_memory(desc, self.opts.range_size_for(desc.size));
        let actual = range::fetch_ranges(self, source, desc, file, &mut state, name).await?;
        if actual != desc.digest {
            return Err(TransferError::DigestMismatch {
                what: name.to_string(),
                expected: desc.digest.clone(),
                actual,
                size: desc.size,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::budget::budget_with;

    #[tokio::test]
    async fn pulls_of_one_process_share_a_registrys_budget() {
        let host = "budget.test:5000";
        let budget = budget_with(host, 6);
        assert_eq!(budget.available_permits(), 6);
        let (a, b) = (
            Fetcher::new(FetchOptions::default(), crate::transfer::silent()),
            Fetcher::new(FetchOptions::default(), crate::transfer::silent()),
        );
        // Each pull starts with 4 of its own; together they may hold 6 to this host.
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(a.first_connection(host).await);
        }
        held.push(b.first_connection(host).await);
        held.push(b.spare_connection(host).expect("the budget's sixth"));
        assert!(b.spare_connection(host).is_none(), "a seventh to one host");
        // Another host has its own budget.
        assert!(b.spare_connection("other.test:5000").is_some());
        held.pop();
        assert!(
            b.spare_connection(host).is_some(),
            "a place given back is taken again"
        );
    }

    #[tokio::test]
    async fn a_throttled_registry_holds_every_connection_and_only_its_own() {
        let fetcher = Fetcher::new(FetchOptions::default(), crate::transfer::silent());
        fetcher.throttle("origin:5000", Duration::from_millis(300));
        // A shorter hold never shortens a longer one.
        fetcher.throttle("origin:5000", Duration::from_millis(10));
        let started = Instant::now();
        fetcher.wait_out_throttle("mirror:5000").await;
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "another host waited"
        );
        let waits: Vec<Duration> = futures_util::future::join_all((0..4).map(|_| async {
            fetcher.wait_out_throttle("origin:5000").await;
            started.elapsed()
        }))
        .await;
        for w in &waits {
            // The hold, plus the jitter of one backoff step (100–300 ms).
            assert!(*w >= Duration::from_millis(400), "released early: {w:?}");
            assert!(*w < Duration::from_millis(900), "held too long: {w:?}");
        }
        let spread = waits
            .iter()
            .max()
            .unwrap()
            .saturating_sub(*waits.iter().min().unwrap());
        assert!(
            spread > Duration::ZERO,
            "four connections released at the same instant"
        );
    }
}
