//! Fetching one blob's ranges: a first request learns whether the server honours `Range`
//! (206) and where redirects lead; the other ranges then go straight there, several at a
//! time within the pull's connection budget. A server that answers 200 gets one stream.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{stream, StreamExt, TryStreamExt};
use reqwest::Url;
use tokio::sync::watch;

use super::hash::InOrderHasher;
use super::state::RangeState;
use super::{Fetcher, Source};
use crate::digest::Digest;
use crate::oci::Descriptor;
use crate::registry::RegistryError;
use crate::transfer::{Event, TransferError};

/// Why an attempt failed: the network (maybe worth a retry) or the local disk (never).
enum Failure {
    Net(RegistryError),
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

struct Job<'a> {
    fetcher: &'a Fetcher,
    source: &'a Source,
    desc: &'a Descriptor,
    file: &'a Arc<File>,
    state: Mutex<&'a mut RangeState>,
    bounds: Vec<(u64, u64)>,
    hasher: InOrderHasher,
    name: &'a str,
    probe: watch::Sender<Option<Probe>>,
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
    let pending: Vec<usize> = (0..state.ranges()).filter(|i| !state.is_done(*i)).collect();
    let hasher = InOrderHasher::start(file.clone(), bounds.clone());
    for i in (0..state.ranges()).filter(|i| state.is_done(*i)) {
        hasher.range_done(i);
    }
    let job = Job {
        fetcher,
        source,
        desc,
        file,
        state: Mutex::new(state),
        bounds,
        hasher,
        name,
        probe: watch::channel(None).0,
    };
    if desc.size == 0 {
        job.hasher.range_done(0);
    } else if job.bounds.len() == 1 {
        job.fetch_whole().await?;
    } else if let Some((&first, rest)) = pending.split_first() {
        let first_range = job.fetch_range(first, true);
        let others = stream::iter(rest.iter().copied())
            .map(|i| job.fetch_range(i, false))
            .buffered(fetcher.opts.max_connections.max(1))
            .try_collect::<Vec<()>>();
        tokio::try_join!(first_range, others)?;
    }
    let Job { hasher, .. } = job;
    let digest = hasher
        .finish()
        .await
        .map_err(TransferError::io("part file"))?;
    Ok(digest.expect("every range was reported to the hasher"))
}

impl Job<'_> {
    fn registry_error(&self, detail: String) -> RegistryError {
        RegistryError::Transfer {
            registry: self.source.client.registry().to_string(),
            context: format!("downloading {}", self.name),
            detail,
        }
    }

    /// One of the pull's connections, held for the duration of a request.
    async fn connection(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.fetcher
            .connections
            .acquire()
            .await
            .expect("semaphore open")
    }

    fn mark_done(&self, index: usize) -> Result<(), Failure> {
        self.state
            .lock()
            .expect("state lock")
            .mark_done(index)
            .map_err(Failure::Disk)?;
        self.hasher.range_done(index);
        Ok(())
    }

    /// Fetch range `index`, retrying transient failures from the byte where it stopped.
    async fn fetch_range(&self, index: usize, is_probe: bool) -> Result<(), TransferError> {
        let (start, end) = self.bounds[index];
        let mut written = 0u64;
        let mut attempt = 1;
        loop {
            let url = if is_probe {
                self.source
                    .client
                    .blob_url(&self.source.repository, &self.desc.digest)
                    .map_err(TransferError::from)?
            } else {
                let mut rx = self.probe.subscribe();
                let probe = match rx.wait_for(|p| p.is_some()).await {
                    Ok(p) => p.clone().expect("probe set"),
                    Err(_) => return Ok(()), // the probe failed; its error is reported
                };
                if !probe.ranged {
                    return Ok(()); // the probe is streaming the whole blob
                }
                probe.url
            };
            let result = self
                .try_range(url, index, start + written, end, is_probe, &mut written)
                .await;
            match result {
                Ok(()) => return Ok(()),
                Err(failure) => {
                    let delay = self.after_failure(failure, attempt, Some(index))?;
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Decide what a failed attempt means: `Ok(delay)` to retry after it, or the final error.
    fn after_failure(
        &self,
        failure: Failure,
        attempt: u32,
        index: Option<usize>,
    ) -> Result<Duration, TransferError> {
        let e = match failure {
            Failure::Disk(source) => {
                return Err(TransferError::Io {
                    path: self.part_name(),
                    source,
                })
            }
            Failure::Net(e) => e,
        };
        if !e.is_transient() {
            return Err(TransferError::Registry(e));
        }
        if attempt >= self.fetcher.opts.retry.attempts || !self.fetcher.take_retry() {
            return Err(TransferError::GaveUp {
                what: self.name.to_string(),
                attempts: attempt,
                last: e.to_string(),
            });
        }
        let retry_after = match &e {
            RegistryError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        };
        let delay = self.fetcher.opts.retry.delay(attempt, retry_after);
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

    async fn try_range(
        &self,
        url: Url,
        index: usize,
        from: u64,
        end: u64,
        is_probe: bool,
        written: &mut u64,
    ) -> Result<(), Failure> {
        let _permit = self.connection().await;
        let client = &self.source.client;
        let blob = client
            .get_blob_at(
                url,
                &self.source.repository,
                &self.desc.digest,
                Some((from, end - 1)),
            )
            .await?;
        if is_probe {
            let probe = Probe {
                ranged: blob.partial,
                url: blob.response.url().clone(),
            };
            self.probe.send_replace(Some(probe));
            if !blob.partial {
                // The server ignored Range and is sending everything: take it as one stream.
                drop(_permit);
                return self.stream_whole(blob.response).await;
            }
        } else if !blob.partial {
            return Err(self
                .registry_error("the server stopped honouring Range requests".into())
                .into());
        }
        self.stream_into(blob.response, from, end, written).await?;
        self.mark_done(index)
    }

    /// Write a response body at `from`, counting into `written`; error if it ends early.
    async fn stream_into(
        &self,
        resp: reqwest::Response,
        from: u64,
        end: u64,
        written: &mut u64,
    ) -> Result<(), Failure> {
        let mut body = resp.bytes_stream();
        let mut pos = from;
        while pos < end {
            let chunk =
                match tokio::time::timeout(self.fetcher.opts.stall_timeout, body.next()).await {
                    Err(_) => {
                        return Err(self
                            .registry_error(format!(
                                "no data for {:?} (stalled)",
                                self.fetcher.opts.stall_timeout
                            ))
                            .into())
                    }
                    Ok(None) => {
                        return Err(self
                            .registry_error(format!(
                                "connection closed after {} of {} bytes",
                                pos - from,
                                end - from
                            ))
                            .into())
                    }
                    Ok(Some(Err(e))) => {
                        return Err(self.registry_error(crate::registry::error_chain(&e)).into())
                    }
                    Ok(Some(Ok(chunk))) => chunk,
                };
            let take = chunk.len().min((end - pos) as usize);
            self.file
                .write_all_at(&chunk[..take], pos)
                .map_err(Failure::Disk)?;
            pos += take as u64;
            *written += take as u64;
            self.fetcher.count_received(take as u64);
            (self.fetcher.observer)(&Event::Progress {
                name: self.name.to_string(),
                bytes: take as u64,
            });
        }
        Ok(())
    }

    /// One plain GET of the whole blob (small blobs, or servers without Range).
    async fn fetch_whole(&self) -> Result<(), TransferError> {
        let mut attempt = 1;
        loop {
            let result = async {
                let _permit = self.connection().await;
                let blob = self
                    .source
                    .client
                    .get_blob(&self.source.repository, &self.desc.digest, None)
                    .await?;
                self.stream_whole(blob.response).await
            }
            .await;
            match result {
                Ok(()) => return Ok(()),
                Err(failure) => {
                    let delay = self.after_failure(failure, attempt, None)?;
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Write a full body from offset 0, telling the hasher as each range fills.
    async fn stream_whole(&self, resp: reqwest::Response) -> Result<(), Failure> {
        let mut written = 0;
        let size = self.desc.size;
        self.stream_into(resp, 0, size, &mut written).await?;
        for index in 0..self.bounds.len() {
            self.mark_done(index)?;
        }
        Ok(())
    }
}
