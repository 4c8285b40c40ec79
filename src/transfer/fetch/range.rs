//! Fetching one blob's ranges. Each connection streams a *run* of ranges in order with one
//! request (`Range: bytes=a-b` over the whole run), marking each range done as it passes, so
//! the registry serves a few long requests rather than one per range. A blob starts on one
//! connection; a connection that is spare (free, and no other blob waiting for its first)
//! joins it at the middle of the longest run still ahead of another connection, and that
//! connection stops where the joiner began. Several blobs at once therefore each stream in
//! order: the hasher takes the bytes straight from the network (nothing read back), and the
//! page cache writes them at a fifth of the cost of ranges interleaved inside one file
//! (measured in #14). A lone blob, the tail of a pull, or a link that caps each connection
//! still gets every connection the budget allows. The first request learns whether the
//! server honours `Range` (206) and where redirects lead; a server that answers 200 gets
//! one stream of the whole blob.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use reqwest::Url;

use super::hash::InOrderHasher;
use super::state::RangeState;
use super::{Fetcher, Permit, Source};
use crate::digest::Digest;
use crate::oci::Descriptor;
use crate::registry::RegistryError;
use crate::transfer::{Event, TransferError};

/// Why an attempt failed: the network (maybe worth a retry), a source that went quiet for
/// the stall timeout, or the local disk (never worth a retry).
enum Failure {
    Net(RegistryError),
    Stalled(RegistryError),
    Disk(std::io::Error),
}

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Self {
        Failure::Net(e)
    }
}

/// What the first response taught us.
#[derive(Clone, Debug)]
struct Probe {
    ranged: bool,
    url: Url,
}

/// Which ranges a connection has taken, and which are done.
struct Claims {
    taken: Vec<bool>,
    done: Vec<bool>,
}

impl Claims {
    fn new(done: &[bool]) -> Claims {
        Claims {
            taken: done.to_vec(),
            done: done.to_vec(),
        }
    }

    fn any_free(&self) -> bool {
        self.taken.iter().any(|t| !t)
    }

    /// Take the range where a free connection should start, with the end of the run of free
    /// ranges after it: the first run no connection is streaming into, else the middle of
    /// the longest run one is (splitting what is left of it in two). A single range ahead of
    /// a connection is left to it unless `take_last` (a range takes long on this link: two
    /// connections bring the last two ranges in half the time, worth a new request).
    fn claim(&mut self, take_last: bool) -> Option<(usize, usize)> {
        let shortest = if take_last { 1 } else { 2 };
        let mut best: Option<(usize, usize)> = None;
        let mut best_len = 0;
        let mut i = 0;
        while i < self.taken.len() {
            if self.taken[i] {
                i += 1;
                continue;
            }
            let start = i;
            while i < self.taken.len() && !self.taken[i] {
                i += 1;
            }
            let fed = start > 0 && !self.done[start - 1];
            if !fed {
                best = Some((start, i));
                break;
            }
            let len = i - start;
            if len >= shortest && len > best_len {
                best = Some((start + len / 2, i));
                best_len = len;
            }
        }
        let (index, end) = best?;
        self.taken[index] = true;
        Some((index, end))
    }

    /// Range `index` is done; take the next one if no connection has.
    fn finish(&mut self, index: usize) -> Option<usize> {
        self.done[index] = true;
        let next = index + 1;
        (next < self.taken.len() && !self.taken[next]).then(|| {
            self.taken[next] = true;
            next
        })
    }

    /// The end of the free run after range `index`.
    fn run_end(&self, index: usize) -> usize {
        (index + 1..self.taken.len())
            .find(|&i| self.taken[i])
            .unwrap_or(self.taken.len())
    }
}

struct Job<'a> {
    fetcher: &'a Fetcher,
    source: &'a Source,
    desc: &'a Descriptor,
    file: &'a Arc<File>,
    state: Mutex<&'a mut RangeState>,
    claims: Mutex<Claims>,
    bounds: Vec<(u64, u64)>,
    hasher: InOrderHasher,
    name: &'a str,
    probe: OnceLock<Probe>,
}

pub async fn fetch_ranges(
    fetcher: &Fetcher,
    source: &Source,
    desc: &Descriptor,
    file: &Arc<File>,
    state: &mut RangeState,
    name: &str,
) -> Result<Digest, TransferError> {
    let bounds: Vec<(u64, u64)> = (0..state.ranges()).map(|i| state.bounds(i)).collect();
    let done: Vec<bool> = (0..state.ranges()).map(|i| state.is_done(i)).collect();
    let hasher = InOrderHasher::start(file.clone(), bounds.clone(), &done);
    let job = Job {
        fetcher,
        source,
        desc,
        file,
        state: Mutex::new(state),
        claims: Mutex::new(Claims::new(&done)),
        bounds,
        hasher,
        name,
        probe: OnceLock::new(),
    };
    if desc.size > 0 && job.claims().any_free() {
        job.fetch_all().await?;
    }
    let Job { hasher, .. } = job;
    let digest = hasher
        .finish()
        .await
        .map_err(TransferError::io("part file"))?;
    Ok(digest.expect("every range was written"))
}

/// How often a blob looks for a spare connection while its ranges download.
const SPARE_CHECK: Duration = Duration::from_millis(100);

/// Where a connection is in its run: the range it writes, and the end of what it asked for.
struct Run {
    index: usize,
    end: usize,
}

impl Job<'_> {
    fn claims(&self) -> std::sync::MutexGuard<'_, Claims> {
        self.claims.lock().expect("claims lock")
    }

    /// Whether a spare connection may take the last free range ahead of another: when one
    /// range takes over half a second on this link (a capped one), the tail of the pull would
    /// otherwise wait on one connection bringing two ranges in turn.
    fn take_last(&self) -> bool {
        let (start, end) = self.bounds[0];
        self.fetcher
            .link
            .seconds_for(end - start)
            .is_some_and(|s| s > 0.5)
    }

    fn registry_error(&self, detail: String) -> RegistryError {
        RegistryError::Transfer {
            registry: self.source.client.registry().to_string(),
            context: format!("downloading {}", self.name),
            detail,
        }
    }

    /// Start on one connection, add spare ones while free ranges are left, end when every
    /// connection has run out of ranges (or one fails).
    async fn fetch_all(&self) -> Result<(), TransferError> {
        let first = self.claims().claim(false).expect("a free range");
        let host = self.source.client.registry();
        let permit = self.fetcher.first_connection(host).await;
        let mut running = FuturesUnordered::new();
        running.push(self.connection(permit, first));
        loop {
            if self.probe.get().is_some_and(|p| p.ranged) {
                while self.claims().any_free() {
                    let Some(spare) = self.fetcher.spare_connection(host) else {
                        break;
                    };
                    let Some(run) = self.claims().claim(self.take_last()) else {
                        break;
                    };
                    running.push(self.connection(spare, run));
                }
            }
            let wait_for_spare = self.claims().any_free();
            tokio::select! {
                finished = running.next() => match finished {
                    Some(result) => result?,
                    None => return Ok(()),
                },
                () = tokio::time::sleep(SPARE_CHECK), if wait_for_spare => {}
            }
        }
    }

    /// One connection: stream its run, then the next it can claim, until none is left.
    async fn connection(
        &self,
        _permit: Permit,
        (index, end): (usize, usize),
    ) -> Result<(), TransferError> {
        let mut run = Run { index, end };
        loop {
            let next = self.fetch_run(&mut run).await?;
            let claimed = match next {
                Some(index) => Some((index, self.claims().run_end(index))),
                None => self.claims().claim(self.take_last()),
            };
            match claimed {
                Some((index, end)) => run = Run { index, end },
                None => return Ok(()),
            }
        }
    }

    /// Fetch a run, retrying transient failures from the byte where it stopped. Returns the
    /// range this connection claimed next if its request did not cover it.
    async fn fetch_run(&self, run: &mut Run) -> Result<Option<usize>, TransferError> {
        let mut attempt = 1;
        loop {
            self.fetcher.wait_out_throttle(self.host()).await;
            // Where the first answer came from (a redirect's target), else the registry.
            let url = match self.probe.get() {
                Some(probe) => probe.url.clone(),
                None => self
                    .source
                    .client
                    .blob_url(&self.source.repository, &self.desc.digest)
                    .map_err(TransferError::from)?,
            };
            match self.try_run(url, run).await {
                Ok(next) => return Ok(next),
                Err(failure) => {
                    // A 429 says "later", not "broken": it does not use up the range's
                    // attempts (the pull's total budget still bounds it).
                    let throttled =
                        matches!(failure, Failure::Net(RegistryError::Throttled { .. }));
                    let delay = self.after_failure(failure, attempt, Some(run.index))?;
                    tokio::time::sleep(delay).await;
                    if !throttled {
                        attempt += 1;
                    }
                }
            }
        }
    }

    fn host(&self) -> &str {
        self.source.client.registry()
    }

    /// Decide what a failed attempt means: `Ok(delay)` to retry after it, or the final error.
    /// A mirror with a source behind it (`fail_fast`) is left at once when it cannot be
    /// reached or stalls, so a dead cache tier costs a node no more than one stall timeout.
    fn after_failure(
        &self,
        failure: Failure,
        attempt: u32,
        index: Option<usize>,
    ) -> Result<Duration, TransferError> {
        let fail_fast = self.source.client.is_fail_fast();
        let give_up = |e: RegistryError| TransferError::GaveUp {
            what: self.name.to_string(),
            attempts: attempt,
            last: e.to_string(),
        };
        let e = match failure {
            Failure::Disk(source) => {
                return Err(TransferError::Io {
                    path: self.part_name(),
                    source,
                })
            }
            Failure::Stalled(e) if fail_fast => return Err(give_up(e)),
            Failure::Net(e) if fail_fast && e.is_unreachable() => return Err(give_up(e)),
            Failure::Net(e) | Failure::Stalled(e) => e,
        };
        if !e.is_transient() {
            return Err(TransferError::Registry(e));
        }
        let (throttled, retry_after) = match &e {
            RegistryError::Throttled { retry_after, .. } => (true, *retry_after),
            _ => (false, None),
        };
        let out_of_attempts =
            !throttled && attempt >= self.fetcher.opts.retry.attempts_for(fail_fast);
        if out_of_attempts || !self.fetcher.take_retry() {
            return Err(give_up(e));
        }
        let delay = self.fetcher.opts.retry.delay(attempt, retry_after);
        if throttled {
            // Every connection to this registry waits, not just the one that was told.
            self.fetcher.throttle(self.host(), delay);
        }
        let part = index.map_or_else(|| "download".to_string(), |i| format!("range {i}"));
        tracing::warn!(
            "{}: {part} attempt {attempt} failed ({e}); retrying in {delay:?}",
            self.name
        );
        Ok(delay)
    }

    fn part_name(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("part file of {}", self.name))
    }

    /// One request for the rest of `run`. The blob's first answer is its probe: whether the
    /// server honours `Range`, and the URL it finally came from.
    async fn try_run(&self, url: Url, run: &mut Run) -> Result<Option<usize>, Failure> {
        let from = self.bounds[run.index].0 + self.hasher.written(run.index);
        let to = self.bounds[run.end - 1].1;
        tracing::debug!(
            "{}: ranges {}..{} from byte {from}",
            self.name,
            run.index,
            run.end
        );
        let stall = self.fetcher.opts.stall_timeout;
        let request = self.source.client.get_blob_at(
            url,
            &self.source.repository,
            &self.desc.digest,
            Some((from, to - 1)),
        );
        // A server that accepts the connection and never answers is a stall too.
        let blob = tokio::time::timeout(stall, request).await.map_err(|_| {
            Failure::Stalled(self.registry_error(format!("no answer for {stall:?} (stalled)")))
        })??;
        let first_answer = self.probe.get().is_none();
        if first_answer {
            let probe = Probe {
                ranged: blob.partial,
                url: blob.response.url().clone(),
            };
            let _ = self.probe.set(probe);
        }
        if !blob.partial {
            if !first_answer && self.probe.get().is_some_and(|p| p.ranged) {
                return Err(self
                    .registry_error("the server stopped honouring Range requests".into())
                    .into());
            }
            // The server ignored Range and is sending everything: take it as one stream.
            self.claims().taken.fill(true);
            *run = Run {
                index: 0,
                end: self.bounds.len(),
            };
            self.stream(blob.response, run, 0, true).await?;
            return Ok(None);
        }
        if content_range_start(&blob.response).is_some_and(|start| start != from) {
            return Err(self
                .registry_error(format!(
                    "the server answered a Range from byte {from} with other bytes"
                ))
                .into());
        }
        self.stream(blob.response, run, from, false).await
    }

    /// Write a response body holding the file's bytes from `pos` on, range by range, as
    /// long as this connection holds the next range (every range, for a `whole` blob).
    /// Returns the range claimed next that the request did not cover.
    async fn stream(
        &self,
        resp: reqwest::Response,
        run: &mut Run,
        mut pos: u64,
        whole: bool,
    ) -> Result<Option<usize>, Failure> {
        let mut body = resp.bytes_stream();
        let mut chunk = Bytes::new();
        loop {
            let (_, end) = self.bounds[run.index];
            if pos == end {
                self.mark_done(run.index)?;
                let next = if whole {
                    (run.index + 1 < self.bounds.len()).then_some(run.index + 1)
                } else {
                    self.claims().finish(run.index)
                };
                match next {
                    Some(index) if index < run.end => run.index = index,
                    other => return Ok(other), // a new request, or this connection is done
                }
                continue;
            }
            if chunk.is_empty() {
                chunk = self.next_chunk(&mut body, pos).await?;
                self.fetcher.count_received(chunk.len() as u64);
            }
            let piece = chunk.split_to(chunk.len().min((end - pos) as usize));
            let len = piece.len() as u64;
            let fresh = self.write_piece(run.index, piece, pos).await?;
            pos += len;
            (self.fetcher.observer)(&Event::Progress {
                name: self.name.to_string(),
                bytes: fresh,
            });
        }
    }

    async fn next_chunk(
        &self,
        body: &mut (impl futures_util::Stream<Item = reqwest::Result<Bytes>> + Unpin),
        pos: u64,
    ) -> Result<Bytes, Failure> {
        let stall = self.fetcher.opts.stall_timeout;
        match tokio::time::timeout(stall, body.next()).await {
            Err(_) => Err(Failure::Stalled(
                self.registry_error(format!("no data for {stall:?} (stalled)")),
            )),
            Ok(None) => Err(self
                .registry_error(format!(
                    "connection closed at byte {pos} of {}",
                    self.desc.size
                ))
                .into()),
            // A mirror's read timeout is the stall timeout: the same stall, seen first.
            Ok(Some(Err(e))) if e.is_timeout() => Err(Failure::Stalled(
                self.registry_error(crate::registry::error_chain(&e)),
            )),
            Ok(Some(Err(e))) => Err(self.registry_error(crate::registry::error_chain(&e)).into()),
            Ok(Some(Ok(chunk))) => Ok(chunk),
        }
    }

    /// Write `piece` (inside range `index`) at `pos` and hand it to the hasher. Bytes the
    /// range already holds (a whole-blob stream that started again from byte 0, or ranges
    /// an earlier run finished) are skipped. Returns the bytes newly written.
    async fn write_piece(&self, index: usize, piece: Bytes, pos: u64) -> Result<u64, Failure> {
        let have = self.bounds[index].0 + self.hasher.written(index);
        debug_assert!(pos <= have, "a range is written from its start, in order");
        let skip = have.saturating_sub(pos).min(piece.len() as u64) as usize;
        let new = piece.slice(skip..);
        if new.is_empty() {
            return Ok(0);
        }
        self.file.write_all_at(&new, have).map_err(Failure::Disk)?;
        let fresh = new.len() as u64;
        self.hasher.wrote(index, new).await.map_err(Failure::Disk)?;
        Ok(fresh)
    }

    fn mark_done(&self, index: usize) -> Result<(), Failure> {
        let mut state = self.state.lock().expect("state lock");
        if state.is_done(index) {
            return Ok(());
        }
        state.mark_done(index).map_err(Failure::Disk)
    }
}

/// The first byte a 206 answer says it holds (`Content-Range: bytes a-b/n`); a missing
/// header is let through (the digest still decides), a different start is not.
fn content_range_start(resp: &reqwest::Response) -> Option<u64> {
    let value = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let range = value.trim().strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::Claims;

    #[test]
    fn a_blob_starts_at_its_first_free_range_and_spares_split_the_longest_run() {
        let mut c = Claims::new(&[false; 8]);
        assert_eq!(
            c.claim(false),
            Some((0, 8)),
            "the first connection takes the whole run"
        );
        assert_eq!(
            c.claim(false),
            Some((4, 8)),
            "a spare starts half way through what is left"
        );
        assert_eq!(
            c.claim(false),
            Some((2, 4)),
            "then splits the longest run (the first of equals)"
        );
        assert_eq!(c.claim(false), Some((6, 8)));
        // The first connection finishes range 0 and goes on; it stops before 2.
        assert_eq!(c.finish(0), Some(1));
        assert_eq!(c.run_end(1), 2);
        assert_eq!(c.finish(1), None, "range 2 belongs to another connection");
        assert_eq!(c.finish(2), Some(3));
        assert_eq!(c.finish(4), Some(5));
        assert_eq!(c.finish(6), Some(7));
        assert_eq!(c.claim(false), None);
        assert!(!c.any_free());
    }

    #[test]
    fn resumed_ranges_are_never_claimed_and_a_run_nobody_feeds_is_taken_whole() {
        // Ranges 0, 1 and 4 were finished by an earlier run.
        let mut c = Claims::new(&[true, true, false, false, true, false]);
        assert_eq!(c.claim(false), Some((2, 4)));
        assert_eq!(
            c.claim(false),
            Some((5, 6)),
            "range 5 follows a finished range: nobody feeds it"
        );
        assert_eq!(
            c.claim(false),
            None,
            "a run of one that a connection will reach is left to it"
        );
        assert_eq!(c.finish(2), Some(3));
        assert_eq!(c.finish(3), None);
    }

    #[test]
    fn on_a_slow_link_a_spare_takes_the_last_range_ahead_of_another() {
        let mut c = Claims::new(&[false; 2]);
        assert_eq!(c.claim(true), Some((0, 2)));
        assert_eq!(c.claim(false), None, "left to the connection ahead of it");
        assert_eq!(c.claim(true), Some((1, 2)), "taken: both ranges at once");
        assert_eq!(
            c.finish(0),
            None,
            "the first connection stops where it began"
        );
    }
}
