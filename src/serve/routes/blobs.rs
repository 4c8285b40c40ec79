//! Blob reads: whole or by range, from the store (stamped and checked) or followed as the
//! pull-through cache fetches them.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::*;
use crate::digest::Digest;
use crate::serve::ApiError;
use crate::store::LinkKind;
use std::sync::atomic::Ordering::Relaxed;

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` → inclusive (start, end); `None` if unsatisfiable.
pub(super) fn byte_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.checked_sub(n.min(size))?, size.checked_sub(1)?)
        }
        (a, "") => (a.parse().ok()?, size.checked_sub(1)?),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.min(size.saturating_sub(1)),
        ),
    };
    (start <= end && start < size).then_some((start, end))
}

pub(super) async fn get_blob(
    state: &Shared,
    name: &str,
    digest: &str,
    headers: &HeaderMap,
    head: bool,
    ns: Option<&str>,
) -> Result<Response> {
    let digest = parse_digest(digest)?;
    let upstream = state.upstreams.pick(ns);
    let local = local_size(state, name, &digest, upstream, !head).await?;
    let size = match (local, upstream) {
        (Some(size), upstream) => {
            if upstream.is_some() {
                state.metrics.cache_hits.fetch_add(1, Relaxed);
            }
            size
        }
        (None, Some(upstream)) => return miss(state, upstream, name, &digest, head).await,
        (None, None) => return Err(ApiError::blob_unknown(digest.as_str())),
    };
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(h) => match byte_range(h, size) {
            Some(r) => Some(r),
            None => return Ok(unsatisfiable(h, size)),
        },
    };
    serve_file(state, &digest, size, range, head).await
}

/// The size of `digest` as this repository may be served it from the store, checked first (a
/// cache file changed on disk is not served as good); `None` if it is not here for it. A blob
/// about to be read is marked used (`touch`) in the same trip off the async workers.
///
/// A repository serves only what it holds: its own blobs, and its manifests (which the blobs
/// endpoint also serves). Through a pull-through cache, nothing reaches a repository that
/// does not hold the blob before the upstream confirms this repository has it: the cache's
/// blobs, and the fetches running for other repositories, are shared by all.
async fn local_size(
    state: &Shared,
    name: &str,
    digest: &Digest,
    upstream: Option<&crate::serve::Upstream>,
    touch: bool,
) -> Result<Option<u64>> {
    let mut held = state.store.is_linked(name, LinkKind::Blob, digest)
        || state.store.is_linked(name, LinkKind::Manifest, digest);
    if let (false, Some(upstream)) = (held, upstream) {
        if upstream.blob_exists(name, digest).await.is_none() {
            return Err(ApiError::blob_unknown(digest.as_str()));
        }
        if state.store.blob_size(digest).is_some() {
            state.store.link(name, LinkKind::Blob, digest)?;
            held = true;
        }
    }
    if !held {
        return Ok(None);
    }
    let (store, digest) = (state.store.clone(), digest.clone());
    Ok(tokio::task::spawn_blocking(move || {
        let size = store.good_blob_size(&digest);
        if touch && size.is_some() {
            store.touch(&digest);
        }
        size
    })
    .await
    .expect("check task does not panic"))
}

/// A pull-through miss: streamed whole as the bytes arrive from the upstream (Range is for
/// cached blobs).
async fn miss(
    state: &Shared,
    upstream: &crate::serve::Upstream,
    name: &str,
    digest: &Digest,
    head: bool,
) -> Result<Response> {
    state.metrics.cache_misses.fetch_add(1, Relaxed);
    let started = std::time::Instant::now();
    let (size, body) = state
        .upstreams
        .blob(upstream, &state.store, name, digest)
        .await?;
    state.store.link(name, LinkKind::Blob, digest)?;
    state.metrics.upstream(started.elapsed());
    state.metrics.bytes_served.fetch_add(size, Relaxed);
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, size)
        .header("Docker-Content-Digest", digest.as_str());
    Ok(builder
        .body(if head { Body::empty() } else { body })
        .expect("response"))
}

/// 416, with the size a client may ask within.
fn unsatisfiable(range: &str, size: u64) -> Response {
    let body = serde_json::json!({"errors": [{
        "code": "RANGE_INVALID",
        "message": format!("range {range:?} is outside 0-{size}"),
    }]});
    (
        StatusCode::RANGE_NOT_SATISFIABLE,
        [
            (header::CONTENT_RANGE.as_str(), format!("bytes */{size}")),
            ("Content-Type", "application/json".into()),
        ],
        body.to_string(),
    )
        .into_response()
}

/// A stored blob, whole or the inclusive `range`, streamed from its file.
async fn serve_file(
    state: &Shared,
    digest: &Digest,
    size: u64,
    range: Option<(u64, u64)>,
    head: bool,
) -> Result<Response> {
    let (status, start, len) = match range {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        None => (StatusCode::OK, 0, size),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header("Docker-Content-Digest", digest.as_str());
    if range.is_some() {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    if head {
        return Ok(builder.body(Body::empty()).expect("response"));
    }
    let path = state.store.blob_path(digest);
    let file = tokio::task::spawn_blocking(move || std::fs::File::open(path))
        .await
        .map_err(std::io::Error::other)??;
    state.metrics.bytes_served.fetch_add(len, Relaxed);
    let body = crate::serve::file_body::file_body(file, start, len);
    Ok(builder.body(body).expect("response"))
}
