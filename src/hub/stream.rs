//! One file of a repository as a stream of byte pieces that survives broken connections: a
//! read that fails (or ends early) is taken up again with `Range: bytes=N-` from the Hub's
//! own URL (the CDN's signed one may have expired), so a copy never starts a file over.

use bytes::Bytes;
use reqwest::StatusCode;

use super::client::Opened;
use super::{HubClient, HubError, HubFile};
use crate::registry::error_chain;

pub struct FileStream {
    client: HubClient,
    url: url::Url,
    file: HubFile,
    /// Bytes handed out so far.
    offset: u64,
    response: Option<reqwest::Response>,
    /// Bytes still to drop from a response that ignored the range and started over.
    skip: u64,
    /// Failed reads since the last byte arrived.
    failures: u32,
    /// Reads taken up again after a failure, over the whole file.
    pub resumed: u32,
}

impl FileStream {
    pub fn new(client: HubClient, url: url::Url, file: HubFile) -> FileStream {
        FileStream {
            client,
            url,
            file,
            offset: 0,
            response: None,
            skip: 0,
            failures: 0,
            resumed: 0,
        }
    }

    /// The next piece of the file, `None` at its end (exactly its listed size).
    pub async fn next(&mut self) -> Result<Option<Bytes>, HubError> {
        loop {
            let response = match &mut self.response {
                Some(r) => r,
                None if self.offset == self.file.size => return Ok(None),
                None => {
                    let opened = self
                        .client
                        .get(&self.file.path, self.url.clone(), Some(self.offset))
                        .await?;
                    self.start(opened)?
                }
            };
            let failure = match response.chunk().await {
                Ok(Some(piece)) => match self.take(piece)? {
                    Some(piece) => return Ok(Some(piece)),
                    None => continue,
                },
                Ok(None) if self.offset == self.file.size => {
                    self.response = None;
                    return Ok(None);
                }
                Ok(None) => format!(
                    "the connection ended at byte {} of {}",
                    self.offset, self.file.size
                ),
                Err(e) => error_chain(&e),
            };
            self.response = None;
            self.failures += 1;
            if self.failures >= self.client.retry().attempts {
                return Err(HubError::Unavailable {
                    what: self.file.path.clone(),
                    message: format!("{failure} ({} attempts)", self.failures),
                });
            }
            self.resumed += 1;
            tracing::debug!(file = %self.file.path, offset = self.offset, %failure, "resuming");
            tokio::time::sleep(self.client.retry().delay(self.failures, None)).await;
        }
    }

    /// Check an answer before reading it: the range asked for, and the Hub's SHA-256 of an
    /// LFS file where it says one.
    fn start(&mut self, opened: Opened) -> Result<&mut reqwest::Response, HubError> {
        if let (Some(etag), Some(expected)) = (&opened.etag, &self.file.lfs_sha256) {
            let etag = etag.trim_start_matches("W/").trim_matches('"');
            if etag.len() == 64 && !etag.eq_ignore_ascii_case(expected) {
                return Err(HubError::Mismatch {
                    path: self.file.path.clone(),
                    expected: format!("sha256:{expected}"),
                    actual: format!("an ETag of sha256:{etag}"),
                });
            }
        }
        let response = opened.response;
        self.skip = 0;
        if self.offset > 0 {
            match response.status() {
                StatusCode::PARTIAL_CONTENT => {
                    let start = response
                        .headers()
                        .get(reqwest::header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("bytes "))
                        .and_then(|v| v.split('-').next())
                        .and_then(|v| v.parse::<u64>().ok());
                    if start != Some(self.offset) {
                        return Err(HubError::Invalid {
                            what: self.file.path.clone(),
                            message: format!(
                                "asked for bytes from {}, answered a range starting at {start:?}",
                                self.offset
                            ),
                        });
                    }
                }
                // The whole file again: what came before is dropped as it arrives.
                _ => self.skip = self.offset,
            }
        }
        Ok(self.response.insert(response))
    }

    /// Account for a piece that arrived; `None` when it was all dropped (a restarted body).
    fn take(&mut self, mut piece: Bytes) -> Result<Option<Bytes>, HubError> {
        if self.skip > 0 {
            let drop = self.skip.min(piece.len() as u64);
            self.skip -= drop;
            piece = piece.slice(drop as usize..);
            if piece.is_empty() {
                return Ok(None);
            }
        }
        if self.offset + piece.len() as u64 > self.file.size {
            return Err(HubError::Invalid {
                what: self.file.path.clone(),
                message: format!("more bytes than the {} the file list gives", self.file.size),
            });
        }
        self.offset += piece.len() as u64;
        self.failures = 0;
        Ok(Some(piece))
    }
}
