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

mod hash;
mod range;
mod retry;
mod state;

pub use retry::RetryPolicy;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::{Event, Observer, TransferError};
use crate::oci::Descriptor;
use crate::registry::RegistryClient;

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
            max_connections: 16,
            range_size: None,
            retry: RetryPolicy::default(),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

impl FetchOptions {
    /// Range size for a blob: large enough to amortise a request, small enough that every
    /// connection gets several ranges and a slow one does not hold up the end.
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

/// Shared by every download of one pull: the connection budget and the retry budget.
pub struct Fetcher {
    pub(crate) opts: FetchOptions,
    connections: Arc<Semaphore>,
    retries_left: AtomicU32,
    observer: Observer,
}

impl Fetcher {
    pub fn new(opts: FetchOptions, observer: Observer) -> Fetcher {
        Fetcher {
            connections: Arc::new(Semaphore::new(opts.max_connections.max(1))),
            retries_left: AtomicU32::new(opts.retry.total),
            opts,
            observer,
        }
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
        let mut last = None;
        for source in sources {
            match self.download_from(source, desc, part, name).await {
                Ok(()) => return Ok(()),
                // A mirror that serves other bytes is skipped; the next source may be honest.
                Err(e @ TransferError::DigestMismatch { .. }) => last = Some(e),
                Err(TransferError::Registry(e)) if sources.len() > 1 => {
                    tracing::warn!(
                        "{name}: {} failed ({e}); trying the next source",
                        source.client.registry()
                    );
                    last = Some(TransferError::Registry(e));
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
        part: &Path,
        name: &str,
    ) -> Result<(), TransferError> {
        let state_path = state::path_for(part);
        let range_size = self.opts.range_size_for(desc.size);
        let mut state = state::RangeState::load_or_new(&state_path, part, desc, range_size)
            .map_err(TransferError::io(part))?;
        let resumed = state.done_bytes();
        if resumed > 0 {
            tracing::info!(
                "{name}: resuming, {resumed} of {} bytes already here",
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

/// The state file that belongs to a part file.
pub fn state_path(part: &Path) -> PathBuf {
    state::path_for(part)
}
