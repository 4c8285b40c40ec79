//! The mount's fetch scheduler: one ordered queue of chunks, worked by a pool of connections.
//! Written here rather than reusing the pull engine's fetcher because a mount needs what a
//! pull does not: an order chosen for loaders (config and tokenizer files, then each
//! safetensors header, then tensor data in file order), a head that a blocked read can jump,
//! and per-chunk completion so a reader wakes as soon as its bytes land.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;

use super::chunks::{Blob, BlobStatus, ChunkState};
use super::stats::Stats;
use crate::oci::modelpack::LayerKind;
use crate::registry::RetryPolicy;
use crate::store::Store;
use crate::transfer::fetch::Source;

#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Requests in flight at once.
    pub connections: usize,
    /// Chunks one background request covers (a read that misses asks for fewer).
    pub span: usize,
    pub retry: RetryPolicy,
    /// A request that delivers nothing for this long is dropped and retried.
    pub stall_timeout: Duration,
    /// Fetch the whole artifact in the background, not only what is read.
    pub prefetch: bool,
}

type Work = (usize, usize); // (blob, chunk)

#[derive(Default)]
struct Queues {
    urgent: VecDeque<Work>,
    background: VecDeque<Work>,
}

pub struct Scheduler {
    pub blobs: Vec<Arc<Blob>>,
    queues: Mutex<Queues>,
    wake: tokio::sync::Notify,
    sources: Vec<Source>,
    pub stats: Arc<Stats>,
    cache: Option<Store>,
    opts: SchedulerOptions,
    stopped: std::sync::atomic::AtomicBool,
}

/// The background order: small non-weight files, then every weight's first chunk (a
/// safetensors header sits there), then the rest of each weight in file order.
pub fn loader_order(blobs: &[Arc<Blob>], kinds: &[Option<LayerKind>]) -> Vec<Work> {
    let is_weight = |b: usize| matches!(kinds[b], Some(LayerKind::Weight) | None);
    let mut order = Vec::new();
    let mut small: Vec<usize> = (0..blobs.len()).filter(|&b| !is_weight(b)).collect();
    small.sort_by_key(|&b| blobs[b].desc.size);
    for b in small {
        order.extend((0..blobs[b].chunks()).map(|c| (b, c)));
    }
    let weights: Vec<usize> = (0..blobs.len()).filter(|&b| is_weight(b)).collect();
    order.extend(weights.iter().map(|&b| (b, 0)));
    for &b in &weights {
        order.extend((1..blobs[b].chunks()).map(|c| (b, c)));
    }
    order
}

impl Scheduler {
    pub fn new(
        blobs: Vec<Arc<Blob>>,
        sources: Vec<Source>,
        cache: Option<Store>,
        stats: Arc<Stats>,
        opts: SchedulerOptions,
    ) -> Scheduler {
        Scheduler {
            blobs,
            queues: Mutex::new(Queues::default()),
            wake: tokio::sync::Notify::new(),
            sources,
            stats,
            cache,
            opts,
            stopped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Queue the whole artifact in loader order (only what is not local yet).
    pub fn queue_background(&self, order: Vec<Work>) {
        let mut q = self.queues.lock().expect("queues");
        q.background.extend(
            order
                .into_iter()
                .filter(|&(b, c)| self.blobs[b].chunk_state(c) != ChunkState::Present),
        );
        drop(q);
        self.wake.notify_waiters();
        for _ in 0..self.opts.connections {
            self.wake.notify_one();
        }
    }

    /// A read is blocked on this chunk: put it ahead of everything else.
    pub fn urgent(&self, blob: usize, chunk: usize) {
        self.queues
            .lock()
            .expect("queues")
            .urgent
            .push_back((blob, chunk));
        self.wake.notify_one();
    }

    /// Run the connection pool until the runtime shuts down.
    pub fn start(self: &Arc<Self>) {
        for _ in 0..self.opts.connections.max(1) {
            let me = self.clone();
            tokio::spawn(async move { me.worker().await });
        }
    }

    /// Next work: urgent first; a claimed chunk plus the following missing chunks of the same
    /// blob, up to the span (urgent requests take a little read-ahead too).
    fn next(&self) -> Option<(usize, usize, usize)> {
        let mut q = self.queues.lock().expect("queues");
        loop {
            let (work, span) = if let Some(w) = q.urgent.pop_front() {
                (w, 2)
            } else if let (true, Some(w)) = (self.opts.prefetch, q.background.pop_front()) {
                (w, self.opts.span.max(1))
            } else {
                return None;
            };
            let (b, first) = work;
            let blob = &self.blobs[b];
            if !blob.claim(first) {
                continue;
            }
            let mut last = first;
            while last + 1 < blob.chunks() && last + 1 - first < span && blob.claim(last + 1) {
                last += 1;
            }
            return Some((b, first, last));
        }
    }

    /// End the workers (the mount is going away); requests in flight finish first.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.wake.notify_waiters();
    }

    async fn worker(self: Arc<Self>) {
        while !self.stopped.load(Ordering::Relaxed) {
            let notified = self.wake.notified();
            match self.next() {
                Some((b, first, last)) => self.fetch(b, first, last).await,
                None => notified.await,
            }
        }
    }

    /// Fetch chunks `first..=last` of blob `b`, retrying from the first chunk not yet on disk.
    async fn fetch(&self, b: usize, first: usize, last: usize) {
        let blob = self.blobs[b].clone();
        let mut next = first;
        let mut attempt = 0u32;
        let mut source = 0usize;
        while next <= last {
            match self.fetch_once(&blob, next, last, source).await {
                Ok(()) => return,
                Err((done_upto, why)) => {
                    if done_upto > next {
                        attempt = 0; // progress: the budget is per stretch without progress
                    }
                    next = done_upto;
                    if next > last {
                        return;
                    }
                    attempt += 1;
                    if attempt >= self.opts.retry.attempts {
                        tracing::warn!(
                            "mount: giving up on {} bytes {}.. after {attempt} attempts: {why}",
                            blob.name,
                            blob.bounds(next).0
                        );
                        for c in next..=last {
                            blob.chunk_failed(c, why.clone());
                        }
                        return;
                    }
                    self.stats.fetch_retries.fetch_add(1, Ordering::Relaxed);
                    source = (source + 1) % self.sources.len().max(1);
                    tracing::debug!("mount: retrying {} ({why})", blob.name);
                    tokio::time::sleep(self.opts.retry.delay(attempt, None)).await;
                }
            }
        }
    }

    /// One request. On failure, returns the first chunk not completed and why.
    async fn fetch_once(
        &self,
        blob: &Arc<Blob>,
        first: usize,
        last: usize,
        source: usize,
    ) -> Result<(), (usize, String)> {
        let start = blob.bounds(first).0;
        let end = blob.bounds(last).1;
        if end == start {
            for c in first..=last {
                self.chunk_complete(blob, c);
            }
            return Ok(());
        }
        let Some(src) = self.sources.get(source) else {
            return Err((first, "no registry to fetch from".into()));
        };
        let resp = src
            .client
            .get_blob(&src.repository, &blob.desc.digest, Some((start, end - 1)))
            .await
            .map_err(|e| (first, e.to_string()))?;
        // A server that ignores Range sends the whole blob: skip to our start.
        let mut skip = if resp.partial { 0 } else { start };
        let mut offset = start;
        let mut chunk = first;
        let mut stream = resp.response.bytes_stream();
        while offset < end {
            let item = tokio::time::timeout(self.opts.stall_timeout, stream.next())
                .await
                .map_err(|_| (chunk, "the connection stalled".to_string()))?;
            let mut bytes = match item {
                Some(Ok(b)) => b,
                Some(Err(e)) => return Err((chunk, format!("connection broke: {e}"))),
                None => return Err((chunk, "the response ended early".into())),
            };
            if skip > 0 {
                let n = skip.min(bytes.len() as u64);
                skip -= n;
                let _ = bytes.split_to(n as usize);
            }
            let take = bytes.len().min((end - offset) as usize);
            let bytes = bytes.slice(..take);
            blob.write_at(&bytes, offset)
                .map_err(|e| (chunk, format!("writing the chunk store failed: {e}")))?;
            self.stats
                .fetched_bytes
                .fetch_add(take as u64, Ordering::Relaxed);
            offset += take as u64;
            while chunk <= last && blob.bounds(chunk).1 <= offset {
                self.chunk_complete(blob, chunk);
                chunk += 1;
            }
        }
        Ok(())
    }

    /// A chunk is on disk: hash and publish it on a blocking thread, so the runtime's few
    /// worker threads keep reading sockets (hashing is the heaviest work of a mount).
    fn chunk_complete(&self, blob: &Arc<Blob>, chunk: usize) {
        blob.chunk_landed(chunk);
        let (blob, cache, stats) = (blob.clone(), self.cache.clone(), self.stats.clone());
        tokio::task::spawn_blocking(move || {
            let status = blob.advance_hash(cache.as_ref());
            blob.publish(chunk);
            match status {
                Some(BlobStatus::Verified) => {
                    stats.verified_blobs.fetch_add(1, Ordering::Relaxed);
                }
                Some(BlobStatus::Corrupt(_)) => {
                    stats.corrupt_blobs.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        });
    }

    /// Every blob verified (or poisoned): the background work is over.
    pub fn settled(&self) -> bool {
        self.blobs
            .iter()
            .all(|b| !matches!(b.status(), BlobStatus::Filling))
    }
}
