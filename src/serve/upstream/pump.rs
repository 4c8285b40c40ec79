//! Fetching a missed blob into the store: streamed from the first source that answers,
//! resumed by `Range` at the byte reached when a source breaks (at most `MAX_RESUMES`
//! times), hashed on the way and verified before it joins the store.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::follow::FOLLOW_BATCH;
use super::{Progress, Upstream};
use crate::digest::{Digest, Hasher};

/// One blob's fetch from the upstream into the part file.
pub(super) struct Pump {
    pub(super) upstream: Upstream,
    pub(super) name: String,
    pub(super) digest: Digest,
    pub(super) size: u64,
    pub(super) stall: Duration,
}

/// Times one fetch may move on to a source (or back to the same one) after a failure.
pub(super) const MAX_RESUMES: usize = 8;

impl Pump {
    /// Copy the upstream body into the part file, hashing it, announcing progress. A body
    /// that breaks is resumed from the byte it reached: on the same source once (a blip),
    /// and a mirror that stalls or breaks again is left for the next source.
    pub(super) async fn run(
        &self,
        mut resp: reqwest::Response,
        mut source: String,
        mut file: tokio::fs::File,
        tx: &watch::Sender<Progress>,
    ) -> Result<(), String> {
        let mut hasher = Hasher::new();
        let mut skip = 0; // bytes of a 200 answer that are already here
        let mut failed: Vec<String> = Vec::new();
        loop {
            match self.copy(resp, skip, &mut hasher, &mut file, tx).await {
                Ok(()) => break,
                Err(e) if failed.len() < MAX_RESUMES && hasher.len() < self.size => {
                    let from = hasher.len();
                    tracing::warn!(
                        "pull-through of {} from {source}: {} at byte {from}; resuming",
                        self.digest,
                        e.detail
                    );
                    if e.stalled || failed.contains(&source) {
                        self.upstream.skip_mirror(&source);
                    }
                    failed.push(source);
                    let opened = self
                        .upstream
                        .open_blob(
                            &self.name,
                            &self.digest,
                            Some((from, self.size - 1)),
                            self.stall,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    let partial;
                    (resp, partial, source) = opened;
                    skip = if partial { 0 } else { from };
                }
                Err(e) => return Err(e.detail),
            }
        }
        file.flush().await.map_err(|e| e.to_string())?;
        let len = hasher.len();
        let actual = hasher.finish();
        if len != self.size || actual != self.digest {
            return Err(format!("upstream sent {len} bytes hashing to {actual}"));
        }
        Ok(())
    }

    /// One response's body, its first `skip` bytes dropped, up to the blob's size. Bytes
    /// are written and announced a megabyte at a time; what arrived before a failure is
    /// written before the failure is returned, so the file always ends where the hash does.
    pub(super) async fn copy(
        &self,
        resp: reqwest::Response,
        mut skip: u64,
        hasher: &mut Hasher,
        file: &mut tokio::fs::File,
        tx: &watch::Sender<Progress>,
    ) -> Result<(), CopyError> {
        let mut body = resp.bytes_stream();
        let mut pending = bytes::BytesMut::new();
        let result = loop {
            let next = match tokio::time::timeout(self.stall, body.next()).await {
                Err(_) => {
                    break Err(CopyError {
                        stalled: true,
                        detail: format!("no data for {:?} (stalled)", self.stall),
                    })
                }
                Ok(None) => break Ok(()),
                Ok(Some(Err(e))) => {
                    break Err(CopyError {
                        // The client's read timeout is the stall timeout for mirrors.
                        stalled: e.is_timeout(),
                        detail: crate::registry::error_chain(&e),
                    });
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            let mut chunk = next;
            let dropped = skip.min(chunk.len() as u64);
            skip -= dropped;
            let _ = chunk.split_to(dropped as usize);
            let room = self.size.saturating_sub(hasher.len());
            if chunk.len() as u64 > room {
                break Err(CopyError::other(format!(
                    "upstream sent more than the {} bytes",
                    self.size
                )));
            }
            hasher.update(&chunk);
            pending.extend_from_slice(&chunk);
            if pending.len() as u64 >= FOLLOW_BATCH {
                write_out(file, &mut pending, hasher.len(), tx).await?;
            }
        };
        write_out(file, &mut pending, hasher.len(), tx).await?;
        result
    }
}

/// Write what is pending and tell the followers the file now holds `total` bytes.
pub(super) async fn write_out(
    file: &mut tokio::fs::File,
    pending: &mut bytes::BytesMut,
    total: u64,
    tx: &watch::Sender<Progress>,
) -> Result<(), CopyError> {
    if pending.is_empty() {
        return Ok(());
    }
    file.write_all(pending)
        .await
        .map_err(|e| CopyError::other(e.to_string()))?;
    pending.clear();
    // Flushed to the file (tokio's File writes in the background) before it is announced.
    file.flush()
        .await
        .map_err(|e| CopyError::other(e.to_string()))?;
    let _ = tx.send(Progress::Running(total));
    Ok(())
}

/// Why a response's body stopped short.
pub(super) struct CopyError {
    stalled: bool,
    detail: String,
}

impl CopyError {
    pub(super) fn other(detail: String) -> CopyError {
        CopyError {
            stalled: false,
            detail,
        }
    }
}
