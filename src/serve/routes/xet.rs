//! The Xet CAS routes' work (see `serve::hub::xet` for the protocol and its trust): a
//! reconstruction for a bearer of a token, and xorbs for a signed URL. Both read only blobs
//! whose stamps say they are whole.

use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::blobs::{byte_range, get_blob};
use super::hub::{base_url, unix_now};
use super::*;
use crate::serve::hub::xet::{self, CasRoute, Xorb};
use std::sync::atomic::Ordering::Relaxed;

pub(super) async fn handle_cas(
    state: &Shared,
    route: CasRoute,
    method: &Method,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Response {
    if *method != Method::GET {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "the Xet routes answer GET");
    }
    match route {
        CasRoute::Reconstruction { version, blob } => {
            reconstruction(state, version, &blob, headers).await
        }
        CasRoute::Xorb { blob, index } => xorb(state, &blob, index, headers, params).await,
        CasRoute::Other => refuse(StatusCode::NOT_FOUND, "no such Xet route"),
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The size of `blob` if it is stored whole, checked off the async workers.
async fn whole_blob(state: &Shared, blob: &str) -> Option<(Digest, u64)> {
    let digest: Digest = format!("sha256:{blob}").parse().ok()?;
    let (store, d) = (state.store.clone(), digest.clone());
    let size = tokio::task::spawn_blocking(move || store.good_blob_size(&d))
        .await
        .ok()??;
    Some((digest, size))
}

/// `blob` as repository `name` holds it here, whole. A pull-through cache that named it for
/// Xet and has since let it go (or lost it) brings it back first, the way a `/resolve` miss
/// does (the upstream decides whether `name` has it); the client waits for the whole blob.
async fn held_blob(state: &Shared, name: &str, blob: &str) -> Option<(Digest, u64)> {
    let held = |d: &Digest| state.store.is_linked(name, LinkKind::Blob, d);
    if let Some(found) = whole_blob(state, blob).await.filter(|(d, _)| held(d)) {
        return Some(found);
    }
    state.upstreams.pick(None)?;
    let (digest, no_headers) = (format!("sha256:{blob}"), HeaderMap::new());
    let fetched = get_blob(state, name, &digest, &no_headers, false, None).await;
    let mut body = fetched.ok()?.into_body().into_data_stream();
    while let Some(piece) = futures_util::StreamExt::next(&mut body).await {
        piece.ok()?;
    }
    // The last byte reaches the stream before the fetch has verified the blob and linked it
    // into the store: wait for that (bounded), not for the first look to be lucky.
    let deadline = tokio::time::Instant::now() + COMMIT_WAIT;
    loop {
        if let Some(found) = whole_blob(state, blob).await.filter(|(d, _)| held(d)) {
            return Some(found);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// How long a reconstruction waits for a blob it just brought back to be in the store.
const COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn reconstruction(state: &Shared, version: u8, blob: &str, headers: &HeaderMap) -> Response {
    let now = unix_now();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(name) = bearer.and_then(|t| state.xet.repository(t, now)) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "a Xet token from this server's xet-read-token route is needed (a missing, foreign or ended one is refused)",
        );
    };
    // Only a blob the token's repository holds; any other is the same answer as none.
    let Some((digest, size)) = held_blob(state, &name, blob).await else {
        return refuse(StatusCode::NOT_FOUND, "no such file");
    };
    let (start, end) = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => (0, size),
        Some(h) => match byte_range(h, size) {
            Some((s, e)) => (s, e + 1),
            None => return refuse(StatusCode::RANGE_NOT_SATISFIABLE, "range outside the file"),
        },
    };
    let Some((offset, terms)) = xet::plan(size, start, end) else {
        return refuse(StatusCode::RANGE_NOT_SATISFIABLE, "range outside the file");
    };
    let exp = now + xet::TOKEN_SECONDS;
    let base = format!("{}{}", base_url(state, headers), xet::CAS_PREFIX);
    let hex = digest.hex();
    let url = |index: u64| {
        let sig = state.xet.xorb_sig(hex, index, exp);
        format!("{base}/xorbs/{hex}/{index}?exp={exp}&sig={sig}")
    };
    let body = xet::reconstruction_json(version, hex, offset, &terms, url);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn xorb(
    state: &Shared,
    blob: &str,
    index: u64,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Response {
    let exp = param(params, "exp").and_then(|e| e.parse::<u64>().ok());
    let sig = param(params, "sig").unwrap_or("");
    if !exp.is_some_and(|exp| state.xet.xorb_ok(blob, index, exp, sig, unix_now())) {
        // 403: the client asks for a new reconstruction (new URLs) and tries again.
        return refuse(
            StatusCode::FORBIDDEN,
            "this xorb URL is not signed here, or has ended",
        );
    }
    let Some((digest, size)) = whole_blob(state, blob).await else {
        return refuse(StatusCode::NOT_FOUND, "no such xorb");
    };
    let Some(xorb) = Xorb::of(size, index) else {
        return refuse(StatusCode::NOT_FOUND, "no such xorb");
    };
    let framed = xorb.framed_len();
    let (status, first, last) = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => (StatusCode::OK, 0, framed - 1),
        Some(h) => match byte_range(h, framed) {
            Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e),
            None => return refuse(StatusCode::RANGE_NOT_SATISFIABLE, "range outside the xorb"),
        },
    };
    let path = state.store.blob_path(&digest);
    let file = match tokio::task::spawn_blocking(move || std::fs::File::open(path)).await {
        Ok(Ok(file)) => file,
        _ => return refuse(StatusCode::NOT_FOUND, "no such xorb"),
    };
    let len = last - first + 1;
    state.metrics.bytes_served.fetch_add(len, Relaxed);
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len);
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {first}-{last}/{framed}"),
        );
    }
    let body = crate::serve::file_body::xorb_body(file, xorb, first, last);
    builder.body(body).expect("response")
}
