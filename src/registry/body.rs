//! Bounded response bodies: the one way the registry client and its token fetcher read a
//! body they keep in memory (and the Hub client, `hub::client`). It sits below both (`client` and `auth` each use it; neither
//! reaches into the other for it).

use futures_util::StreamExt;

/// Error bodies read for their message: at most this much.
pub(crate) const MAX_ERROR_BODY: u64 = 64 << 10;
/// JSON answers (token responses, referrers lists): at most this much.
pub(crate) const MAX_JSON_BODY: u64 = 4 << 20;

/// Why a bounded body was not read.
#[derive(Debug)]
pub(crate) enum Unread {
    /// It is (or says it is) longer than the bound.
    TooLong,
    /// The connection failed while reading it.
    Failed(reqwest::Error),
}

/// Read a body, but never more than `limit` bytes (a hostile server may send gigabytes where
/// a few hundred are expected). `None` when it is longer or the read fails.
pub(crate) async fn read_capped(resp: reqwest::Response, limit: u64) -> Option<Vec<u8>> {
    read_bounded(resp, limit).await.ok()
}

/// [`read_capped`], saying why a body was not read (the Hub client tells a refused answer
/// from a broken connection).
pub(crate) async fn read_bounded(resp: reqwest::Response, limit: u64) -> Result<Vec<u8>, Unread> {
    if resp.content_length().is_some_and(|l| l > limit) {
        return Err(Unread::TooLong);
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Unread::Failed)?;
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(Unread::TooLong);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
