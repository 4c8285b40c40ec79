//! Blob uploads: start (or mount from another repository), append, finish, status, cancel.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::*;
use crate::digest::Digest;
use crate::serve::ApiError;
use crate::store::LinkKind;

pub(super) fn content_range_start(headers: &HeaderMap) -> Result<Option<u64>> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("");
    let text = text.strip_prefix("bytes ").unwrap_or(text);
    let start = text
        .split(['-', '/'])
        .next()
        .and_then(|s| s.trim().parse().ok());
    start.map(Some).ok_or_else(|| {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
            format!("bad Content-Range {text:?}"),
        )
    })
}

pub(super) fn upload_status(status: StatusCode, name: &str, id: &str, len: u64) -> Response {
    let range = format!("0-{}", len.saturating_sub(1));
    (
        status,
        [
            (
                header::LOCATION.as_str(),
                format!("/v2/{name}/blobs/uploads/{id}"),
            ),
            ("Range", range),
            ("Docker-Upload-UUID", id.to_string()),
            ("OCI-Chunk-Min-Length", CHUNK_MIN.to_string()),
            (header::CONTENT_LENGTH.as_str(), "0".to_string()),
        ],
    )
        .into_response()
}

pub(super) fn blob_created(name: &str, digest: &Digest) -> Response {
    (
        StatusCode::CREATED,
        [
            (
                header::LOCATION.as_str(),
                format!("/v2/{name}/blobs/{digest}"),
            ),
            ("Docker-Content-Digest", digest.to_string()),
            (header::CONTENT_LENGTH.as_str(), "0".to_string()),
        ],
    )
        .into_response()
}

pub(super) async fn start_upload(
    state: &Shared,
    name: &str,
    params: &[(String, String)],
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    if let Some(mount) = param(params, "mount") {
        let digest = parse_digest(mount)?;
        if may_mount(state, headers, param(params, "from"), &digest).await {
            state.store.link(name, LinkKind::Blob, &digest)?;
            return Ok(blob_created(name, &digest));
        }
        // Not mountable: fall back to a normal upload session, as the spec allows.
    }
    let id = state.uploads.create()?;
    if let Some(d) = param(params, "digest") {
        let digest = parse_digest(d)?;
        state.uploads.append(&id, None, body).await?;
        state
            .uploads
            .finish(&id, &digest, &state.store, name)
            .await?;
        return Ok(blob_created(name, &digest));
    }
    Ok(upload_status(StatusCode::ACCEPTED, name, &id, 0))
}

/// A cross-repository mount: `from` holds the blob and the client may read `from`.
pub(super) async fn may_mount(
    state: &Shared,
    headers: &HeaderMap,
    from: Option<&str>,
    digest: &Digest,
) -> bool {
    let Some(from) = from.filter(|f| crate::reference::valid_repository(f)) else {
        return false;
    };
    if !state.store.is_linked(from, LinkKind::Blob, digest)
        || state.store.blob_size(digest).is_none()
    {
        return false;
    }
    match &state.access {
        Some(access) => access
            .authorize(headers, Some(from), "pull")
            .await
            .is_none(),
        None => true,
    }
}
