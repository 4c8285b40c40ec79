//! Manifests, tags and referrers: read (from the store or through the pull-through cache),
//! put through the store's one manifest path, delete.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::*;
use crate::digest::Digest;
use crate::oci::{media, Descriptor, MAX_MANIFEST_BYTES};
use crate::serve::ApiError;
use crate::store::{Holding, LinkKind, ManifestRejected, StoreError};

/// Find a manifest by tag or digest: (descriptor, bytes).
pub(super) fn find_manifest(
    state: &Shared,
    name: &str,
    reference: &str,
) -> Result<(Descriptor, Vec<u8>)> {
    let desc = match reference.parse::<Digest>() {
        Ok(digest) => {
            if !state.store.is_linked(name, LinkKind::Manifest, &digest) {
                return Err(ApiError::manifest_unknown(reference));
            }
            let size = state
                .store
                .blob_size(&digest)
                .ok_or_else(|| ApiError::manifest_unknown(reference))?;
            Descriptor::new("", digest, size)
        }
        Err(_) => state
            .store
            .resolve(name, reference)
            .map_err(|_| ApiError::manifest_unknown(reference))?,
    };
    let bytes = state
        .store
        .read_blob(&desc.digest, MAX_MANIFEST_BYTES)
        .map_err(|_| ApiError::manifest_unknown(reference))?;
    let media_type = if desc.media_type.is_empty() {
        crate::store::manifest_media_type("", &bytes)
    } else {
        desc.media_type.clone()
    };
    Ok((Descriptor { media_type, ..desc }, bytes))
}

pub(super) async fn get_manifest(
    state: &Shared,
    name: &str,
    reference: &str,
    head: bool,
    ns: Option<&str>,
) -> Result<Response> {
    refresh_manifest(state, name, reference, ns).await?;
    let (desc, bytes) = find_manifest(state, name, reference)?;
    let headers = [
        (header::CONTENT_TYPE.as_str(), desc.media_type.clone()),
        ("Docker-Content-Digest", desc.digest.to_string()),
        (header::CONTENT_LENGTH.as_str(), bytes.len().to_string()),
    ];
    Ok(if head {
        (StatusCode::OK, headers).into_response()
    } else {
        (StatusCode::OK, headers, bytes).into_response()
    })
}

/// On a pull-through cache, bring the manifest from upstream unless the cached one holds
/// (a digest, or a tag within its TTL); a cached one is served if upstream fails.
pub(super) async fn refresh_manifest(
    state: &Shared,
    name: &str,
    reference: &str,
    ns: Option<&str>,
) -> Result<()> {
    if let Some(upstream) = state.upstreams.pick(ns) {
        let by_digest = reference.parse::<Digest>().is_ok();
        let cached = find_manifest(state, name, reference).is_ok();
        // Digests never change: cached is final. Tags are revalidated after the TTL.
        if !(cached && (by_digest || state.upstreams.fresh(name, reference))) {
            let started = std::time::Instant::now();
            let fetched = state
                .upstreams
                .fetch_manifest(upstream, &state.store, name, reference)
                .await;
            state.metrics.upstream(started.elapsed());
            match fetched {
                Ok(()) => {}
                Err(e) if cached => tracing::warn!(
                    "upstream failed for {name}:{reference} ({e}); serving the cached manifest"
                ),
                Err(crate::registry::RegistryError::NotFound { .. }) => {
                    return Err(ApiError::manifest_unknown(reference))
                }
                Err(crate::registry::RegistryError::Throttled { retry_after, .. }) => {
                    return Err(ApiError::throttled(retry_after))
                }
                Err(e) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "UNKNOWN",
                        format!("upstream: {e}"),
                    ))
                }
            }
        }
    }
    Ok(())
}

pub(super) async fn put_manifest(
    state: &Shared,
    name: &str,
    reference: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let bytes = axum::body::to_bytes(body, MAX_MANIFEST_BYTES as usize)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "MANIFEST_INVALID",
                format!("manifests over {MAX_MANIFEST_BYTES} bytes are refused"),
            )
        })?;
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Storing writes and fsyncs files and the tag index: off the async workers.
    let (state, name, reference, declared) = (
        state.clone(),
        name.to_string(),
        reference.to_string(),
        declared.to_string(),
    );
    tokio::task::spawn_blocking(move || store_manifest(&state, &name, &reference, &declared, bytes))
        .await
        .map_err(ApiError::internal)?
}

/// Check and store a pushed manifest (the store's one manifest path: its digest, the blobs
/// it names held by this repository, the link, the tag, its subject's referrers list).
pub(super) fn store_manifest(
    state: &Shared,
    name: &str,
    reference: &str,
    declared: &str,
    bytes: bytes::Bytes,
) -> Result<Response> {
    let put = state
        .store
        .put_manifest(name, reference, declared, &bytes, Holding::Linked)
        .map_err(|e| match e {
            StoreError::Manifest(ManifestRejected::Digest { .. }) => {
                ApiError::digest_invalid(e.to_string())
            }
            StoreError::Manifest(ManifestRejected::BlobUnknown(_)) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "MANIFEST_BLOB_UNKNOWN",
                e.to_string(),
            ),
            StoreError::Manifest(ManifestRejected::Invalid(_)) => {
                ApiError::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", e.to_string())
            }
            other => other.into(),
        })?;
    let digest = &put.descriptor.digest;
    let mut response = blob_created(name, digest);
    *response
        .headers_mut()
        .get_mut(header::LOCATION)
        .expect("location") =
        HeaderValue::from_str(&format!("/v2/{name}/manifests/{digest}")).expect("ascii");
    if let Some(subject) = &put.subject {
        response.headers_mut().insert(
            "OCI-Subject",
            HeaderValue::from_str(subject.as_str()).expect("ascii"),
        );
    }
    Ok(response)
}

pub(super) fn delete_manifest(state: &Shared, name: &str, reference: &str) -> Result<Response> {
    let removed = match reference.parse::<Digest>() {
        // By digest: the manifest leaves the repository, with every tag pointing at it.
        Ok(digest) => {
            let tags = state.store.untag_digest(name, &digest)?;
            state.store.unlink(name, LinkKind::Manifest, &digest)? || tags > 0
        }
        Err(_) => state.store.untag(name, reference)?,
    };
    if removed {
        Ok(StatusCode::ACCEPTED.into_response())
    } else {
        Err(ApiError::manifest_unknown(reference))
    }
}

pub(super) fn list_tags(
    state: &Shared,
    name: &str,
    params: &[(String, String)],
) -> Result<Response> {
    let mut tags: Vec<String> = state.store.tags(name)?;
    if tags.is_empty() {
        return Err(ApiError::name_unknown(name));
    }
    tags.sort();
    if let Some(last) = param(params, "last") {
        tags.retain(|t| t.as_str() > last);
    }
    let mut link = None;
    if let Some(n) = param(params, "n").and_then(|n| n.parse::<usize>().ok()) {
        if tags.len() > n {
            tags.truncate(n);
            if let Some(last) = tags.last() {
                link = Some(format!(
                    "</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\""
                ));
            }
        }
    }
    let body = serde_json::json!({"name": name, "tags": tags}).to_string();
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if let Some(link) = link {
        response
            .headers_mut()
            .insert(header::LINK, HeaderValue::from_str(&link).expect("ascii"));
    }
    Ok(response)
}

pub(super) fn referrers(
    state: &Shared,
    name: &str,
    digest: &str,
    params: &[(String, String)],
) -> Result<Response> {
    let subject = parse_digest(digest)?;
    let mut list = state.store.referrers(&subject)?;
    // Only what this repository holds.
    list.retain(|d| state.store.is_linked(name, LinkKind::Manifest, &d.digest));
    let filter = param(params, "artifactType");
    if let Some(t) = filter {
        list.retain(|d| d.artifact_type.as_deref() == Some(t));
    }
    let index =
        serde_json::json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": list});
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, media::OCI_INDEX)],
        index.to_string(),
    )
        .into_response();
    if filter.is_some() {
        response.headers_mut().insert(
            "OCI-Filters-Applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(response)
}
