//! The distribution API's routes. Repository names hold slashes, so paths are parsed by hand
//! from the end (`…/manifests/<ref>`, `…/blobs/<digest>`, `…/blobs/uploads/<id>`, …).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{ApiError, AppState};
use crate::digest::Digest;
use crate::oci::{media, Descriptor, MAX_MANIFEST_BYTES};
use crate::store::{Holding, LinkKind, ManifestRejected, StoreError};

type Shared = Arc<AppState>;
type Result<T> = std::result::Result<T, ApiError>;

/// Chunks smaller than this (but the last) are accepted; clients are told to prefer more.
const CHUNK_MIN: u64 = 64 * 1024;

pub fn router(state: Shared) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

enum Route {
    Base,
    Manifest(String, String),
    Blob(String, String),
    UploadStart(String),
    Upload(String, String),
    Tags(String),
    Referrers(String, String),
    Health,
    Metrics,
    Token,
}

impl Route {
    /// The `route` label of `/metrics`.
    fn label(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Manifest(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) | Route::Upload(..) => "upload",
            Route::Tags(_) => "tags",
            Route::Referrers(..) => "referrers",
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::Token => "token",
        }
    }
}

fn parse(path: &str) -> Option<Route> {
    if path == "/healthz" || path == "/readyz" {
        return Some(Route::Health);
    }
    if path == "/metrics" {
        return Some(Route::Metrics);
    }
    if path == "/token" {
        return Some(Route::Token);
    }
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::Base);
    }
    let rest = rest.strip_prefix('/')?;
    let owned = |a: &str, b: &str| (a.to_string(), b.to_string());
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return Some(Route::Manifest(
            owned(name, reference).0,
            reference.to_string(),
        ));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Some(Route::UploadStart(name.to_string()));
    }
    if let Some((name, id)) = rest.rsplit_once("/blobs/uploads/") {
        return Some(Route::Upload(name.to_string(), id.to_string()));
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        return Some(Route::Blob(name.to_string(), digest.to_string()));
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name.to_string()));
    }
    if let Some((name, digest)) = rest.rsplit_once("/referrers/") {
        return Some(Route::Referrers(name.to_string(), digest.to_string()));
    }
    None
}

/// Request bodies a handler left unread are read and dropped, up to this much, so the
/// connection can carry the client's next request.
const MAX_DRAIN_BYTES: usize = 64 << 20;
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

type SharedBody = Arc<tokio::sync::Mutex<axum::body::BodyDataStream>>;

async fn dispatch(State(state): State<Shared>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let started = std::time::Instant::now();
    // The handler reads the body through a shared handle, so what it leaves unread (an
    // early 416, 401, 413 or a blob that exists) can be drained after it answers.
    let (parts, body) = request.into_parts();
    let shared: SharedBody = Arc::new(tokio::sync::Mutex::new(body.into_data_stream()));
    let stream = futures_util::stream::unfold(shared.clone(), |s| async move {
        let next = futures_util::StreamExt::next(&mut *s.lock().await).await;
        next.map(|item| (item, s))
    });
    let request = Request::from_parts(parts, Body::from_stream(stream));
    let result = route(&state, request, &path, &query).await;
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    if !drain(&shared).await {
        // Unread bytes are still on the way: this connection cannot carry another request.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        tracing::warn!(
            target: "hoist::serve::access",
            "{method} {path}: closing the connection (request body left unread: over {MAX_DRAIN_BYTES} bytes, too slow, or broken)"
        );
    }
    let label = parse(&path).map_or("unknown", |r| r.label());
    state.metrics.request(label, response.status().as_u16());
    tracing::info!(
        target: "hoist::serve::access",
        "{method} {path} {} {:.1}ms",
        response.status().as_u16(),
        started.elapsed().as_secs_f64() * 1e3
    );
    response
}

/// Read what is left of a request body; `false` if it is too large, too slow or broken.
async fn drain(body: &SharedBody) -> bool {
    let read_rest = async {
        let mut stream = body.lock().await;
        let mut drained = 0usize;
        while let Some(chunk) = futures_util::StreamExt::next(&mut *stream).await {
            match chunk {
                Ok(bytes) => {
                    drained += bytes.len();
                    if drained > MAX_DRAIN_BYTES {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIMEOUT, read_rest)
        .await
        .unwrap_or(false)
}

async fn route(state: &Shared, request: Request, path: &str, query: &str) -> Result<Response> {
    let method = request.method().clone();
    let Some(route) = parse(path) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no route {path}"),
        ));
    };
    let name = match &route {
        Route::Manifest(n, _)
        | Route::Blob(n, _)
        | Route::UploadStart(n)
        | Route::Upload(n, _)
        | Route::Tags(n)
        | Route::Referrers(n, _) => Some(n.clone()),
        Route::Base | Route::Health | Route::Metrics | Route::Token => None,
    };
    if let Some(name) = &name {
        if !crate::reference::valid_repository(name) {
            return Err(ApiError::name_invalid(name));
        }
    }
    // Every reference in a path must match the spec's grammar before anything uses it (a
    // tag like `../../x` must never reach a file name or an upstream URL).
    match &route {
        // A reference outside the grammar names nothing that can exist (404, as the
        // conformance suite expects), and cannot be written (400).
        Route::Manifest(_, r) if !crate::reference::valid_reference(r) => {
            return Err(if method == Method::PUT {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "TAG_INVALID",
                    format!("{r:?} is not a valid tag or digest"),
                )
            } else {
                ApiError::manifest_unknown(r)
            });
        }
        Route::Blob(_, d) | Route::Referrers(_, d) if d.parse::<Digest>().is_err() => {
            return Err(ApiError::digest_invalid(format!(
                "{d:?} is not a valid digest"
            )));
        }
        _ => {}
    }
    let params = query_params(query);
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    if let Some(access) = &state.access {
        match &route {
            Route::Health => {}
            Route::Metrics => {
                if let Some(denied) = access.authorize_metrics(&headers).await {
                    return Ok(denied);
                }
            }
            Route::Token => {
                let scopes: Vec<String> = params
                    .iter()
                    .filter(|(k, _)| k == "scope")
                    .map(|(_, v)| v.clone())
                    .collect();
                return Ok(access.issue(&headers, &scopes).await);
            }
            _ => {
                let action = match method {
                    Method::GET | Method::HEAD => "pull",
                    Method::DELETE => "delete",
                    _ => "push",
                };
                if let Some(denied) = access.authorize(&headers, name.as_deref(), action).await {
                    return Ok(denied);
                }
            }
        }
    }
    match (route, method) {
        (Route::Health, _) => Ok((StatusCode::OK, "ok\n").into_response()),
        (Route::Metrics, Method::GET) => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            state.metrics.render(&state.store),
        )
            .into_response()),
        (Route::Base, Method::GET | Method::HEAD) => Ok((
            StatusCode::OK,
            [
                ("Docker-Distribution-API-Version", "registry/2.0"),
                ("Content-Type", "application/json"),
            ],
            "{}",
        )
            .into_response()),
        (Route::Manifest(n, r), m @ (Method::GET | Method::HEAD)) => {
            get_manifest(state, &n, &r, m == Method::HEAD, param(&params, "ns")).await
        }
        (Route::Manifest(n, r), Method::PUT) => put_manifest(state, &n, &r, &headers, body).await,
        (Route::Manifest(n, r), Method::DELETE) => {
            let state = state.clone();
            tokio::task::spawn_blocking(move || delete_manifest(&state, &n, &r))
                .await
                .map_err(ApiError::internal)?
        }
        (Route::Blob(n, d), m @ (Method::GET | Method::HEAD)) => {
            get_blob(
                state,
                &n,
                &d,
                &headers,
                m == Method::HEAD,
                param(&params, "ns"),
            )
            .await
        }
        (Route::Blob(n, d), Method::DELETE) => {
            // Only this repository's link goes; the content stays for the repositories that
            // still hold it (and `gc` removes what none does).
            let digest = parse_digest(&d)?;
            if state.store.unlink(&n, LinkKind::Blob, &digest)? {
                Ok(StatusCode::ACCEPTED.into_response())
            } else {
                Err(ApiError::blob_unknown(&d))
            }
        }
        (Route::UploadStart(n), Method::POST) => {
            start_upload(state, &n, &params, &headers, body).await
        }
        (Route::Upload(n, id), Method::PATCH) => {
            let start = content_range_start(&headers)?;
            let len = state.uploads.append(&id, start, body).await?;
            Ok(upload_status(StatusCode::ACCEPTED, &n, &id, len))
        }
        (Route::Upload(n, id), Method::PUT) => {
            let digest = parse_digest(
                param(&params, "digest")
                    .ok_or_else(|| ApiError::digest_invalid("PUT needs ?digest="))?,
            )?;
            let start = content_range_start(&headers)?;
            state.uploads.append(&id, start, body).await?;
            state.uploads.finish(&id, &digest, &state.store, &n).await?;
            Ok(blob_created(&n, &digest))
        }
        (Route::Upload(n, id), Method::GET) => {
            let len = state.uploads.len(&id)?;
            Ok(upload_status(StatusCode::NO_CONTENT, &n, &id, len))
        }
        (Route::Upload(_, id), Method::DELETE) => {
            state.uploads.cancel(&id)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Route::Tags(n), Method::GET) => list_tags(state, &n, &params),
        (Route::Referrers(n, d), Method::GET) => referrers(state, &n, &d, &params),
        (_, m) => Err(ApiError::unsupported(format!(
            "{m} is not supported on {path}"
        ))),
    }
}

fn query_params(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn parse_digest(s: &str) -> Result<Digest> {
    s.parse()
        .map_err(|e: crate::digest::DigestError| ApiError::digest_invalid(e.to_string()))
}

fn content_range_start(headers: &HeaderMap) -> Result<Option<u64>> {
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

fn upload_status(status: StatusCode, name: &str, id: &str, len: u64) -> Response {
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

fn blob_created(name: &str, digest: &Digest) -> Response {
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

async fn start_upload(
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
async fn may_mount(
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

/// Find a manifest by tag or digest: (descriptor, bytes).
fn find_manifest(state: &Shared, name: &str, reference: &str) -> Result<(Descriptor, Vec<u8>)> {
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

async fn get_manifest(
    state: &Shared,
    name: &str,
    reference: &str,
    head: bool,
    ns: Option<&str>,
) -> Result<Response> {
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

async fn put_manifest(
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
fn store_manifest(
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

fn delete_manifest(state: &Shared, name: &str, reference: &str) -> Result<Response> {
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

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` → inclusive (start, end); `None` if unsatisfiable.
fn byte_range(header: &str, size: u64) -> Option<(u64, u64)> {
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

async fn get_blob(
    state: &Shared,
    name: &str,
    digest: &str,
    headers: &HeaderMap,
    head: bool,
    ns: Option<&str>,
) -> Result<Response> {
    let digest = parse_digest(digest)?;
    let upstream = state.upstreams.pick(ns);
    // A repository serves only what it holds: its own blobs, and its manifests (which the
    // blobs endpoint also serves). Through a pull-through cache, nothing reaches a repository
    // that does not hold the blob before the upstream confirms this repository has it: the
    // cache's blobs, and the fetches running for other repositories, are shared by all.
    let mut held = state.store.is_linked(name, LinkKind::Blob, &digest)
        || state.store.is_linked(name, LinkKind::Manifest, &digest);
    if let (false, Some(upstream)) = (held, upstream) {
        if upstream.blob_exists(name, &digest).await.is_none() {
            return Err(ApiError::blob_unknown(digest.as_str()));
        }
        if state.store.blob_size(&digest).is_some() {
            state.store.link(name, LinkKind::Blob, &digest)?;
            held = true;
        }
    }
    // Checked before it is served: a cache file changed on disk is not served as good.
    let local = if held {
        let (store, digest) = (state.store.clone(), digest.clone());
        tokio::task::spawn_blocking(move || store.good_blob_size(&digest))
            .await
            .expect("check task does not panic")
    } else {
        None
    };
    let size = match (local, upstream) {
        (Some(size), upstream) => {
            if upstream.is_some() {
                state
                    .metrics
                    .cache_hits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            size
        }
        (None, Some(upstream)) => {
            state
                .metrics
                .cache_misses
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let started = std::time::Instant::now();
            let (size, body) = state
                .upstreams
                .blob(upstream, &state.store, name, &digest)
                .await?;
            state.store.link(name, LinkKind::Blob, &digest)?;
            state.metrics.upstream(started.elapsed());
            state
                .metrics
                .bytes_served
                .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
            // A miss is streamed whole, as the bytes arrive (Range is for cached blobs).
            let builder = Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::CONTENT_LENGTH, size)
                .header("Docker-Content-Digest", digest.as_str());
            return Ok(builder
                .body(if head { Body::empty() } else { body })
                .expect("response"));
        }
        (None, None) => return Err(ApiError::blob_unknown(digest.as_str())),
    };
    if !head {
        state.store.touch(&digest);
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(h) => match byte_range(h, size) {
            Some(r) => Some(r),
            None => {
                return Ok((
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE.as_str(), format!("bytes */{size}")), ("Content-Type", "application/json".into())],
                    serde_json::json!({"errors": [{"code": "RANGE_INVALID", "message": format!("range {h:?} is outside 0-{size}")}]}).to_string(),
                )
                    .into_response())
            }
        },
    };
    let (status, start, len) = match range {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        None => (StatusCode::OK, 0, size),
    };
    let mut response_headers = vec![
        (
            header::CONTENT_TYPE.as_str(),
            "application/octet-stream".to_string(),
        ),
        (header::CONTENT_LENGTH.as_str(), len.to_string()),
        (header::ACCEPT_RANGES.as_str(), "bytes".to_string()),
        ("Docker-Content-Digest", digest.to_string()),
    ];
    if range.is_some() {
        response_headers.push((
            header::CONTENT_RANGE.as_str(),
            format!("bytes {start}-{}/{size}", start + len - 1),
        ));
    }
    let mut builder = Response::builder().status(status);
    for (k, v) in response_headers {
        builder = builder.header(k, v);
    }
    if head {
        return Ok(builder.body(Body::empty()).expect("response"));
    }
    let mut file = tokio::fs::File::open(state.store.blob_path(&digest)).await?;
    file.seek(std::io::SeekFrom::Start(start)).await?;
    state
        .metrics
        .bytes_served
        .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
    let body = Body::from_stream(ReaderStream::with_capacity(file.take(len), 256 * 1024));
    Ok(builder.body(body).expect("response"))
}

fn list_tags(state: &Shared, name: &str, params: &[(String, String)]) -> Result<Response> {
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

fn referrers(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(byte_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(byte_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(byte_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(byte_range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(byte_range("bytes=100-", 100), None);
        assert_eq!(byte_range("bytes=5-1", 100), None);
    }

    /// The Range header against a plain model of RFC 9110 byte ranges (single range).
    fn model(a: Option<u64>, b: Option<u64>, size: u64) -> Option<(u64, u64)> {
        if size == 0 {
            return None;
        }
        match (a, b) {
            (None, Some(n)) => (n > 0).then(|| (size - n.min(size), size - 1)),
            (Some(a), None) => (a < size).then_some((a, size - 1)),
            (Some(a), Some(b)) => (a <= b && a < size).then_some((a, b.min(size - 1))),
            (None, None) => None,
        }
    }

    proptest::proptest! {
        #[test]
        fn ranges_match_the_model(a in proptest::option::of(0u64..300), b in proptest::option::of(0u64..300), size in 0u64..256) {
            let header = format!(
                "bytes={}-{}",
                a.map(|x| x.to_string()).unwrap_or_default(),
                b.map(|x| x.to_string()).unwrap_or_default()
            );
            proptest::prop_assert_eq!(byte_range(&header, size), model(a, b, size), "{}", header);
        }

        #[test]
        fn ranges_on_arbitrary_text(header in ".{0,40}", size in 0u64..u64::MAX) {
            if let Some((start, end)) = byte_range(&header, size) {
                proptest::prop_assert!(start <= end && end < size);
            }
        }

        /// Routing never panics, and what it extracts is what the path holds.
        #[test]
        fn routes_on_arbitrary_paths(path in "/[a-z0-9/._:%-]{0,60}") {
            if let Some(Route::Manifest(n, r)) = parse(&path) {
                let manifests = format!("/manifests/{r}");
                let tail = path.ends_with(&manifests);
                proptest::prop_assert!(tail && path.contains(&n));
            }
        }
    }

    #[test]
    fn routes_with_slashes_in_names() {
        assert!(
            matches!(parse("/v2/a/b/manifests/v1"), Some(Route::Manifest(n, r)) if n == "a/b" && r == "v1")
        );
        assert!(matches!(parse("/v2/a/blobs/uploads/"), Some(Route::UploadStart(n)) if n == "a"));
        assert!(
            matches!(parse("/v2/a/blobs/uploads/x"), Some(Route::Upload(n, id)) if n == "a" && id == "x")
        );
        assert!(matches!(parse("/v2/"), Some(Route::Base)));
    }
}
