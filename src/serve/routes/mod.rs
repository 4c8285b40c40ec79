//! The distribution API's routes. Repository names hold slashes, so paths are parsed by hand
//! from the end (`…/manifests/<ref>`, `…/blobs/<digest>`, `…/blobs/uploads/<id>`, …).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use super::{ApiError, AppState};
use crate::digest::Digest;
use crate::store::LinkKind;

mod blobs;
mod hub;
mod manifests;
mod uploads;
mod xet;

use blobs::*;
use manifests::*;
use uploads::*;

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
    let label = if crate::serve::hub::xet::parse(&path).is_some() {
        "xet"
    } else if crate::serve::hub::parse(&path).is_some() {
        "hub"
    } else {
        parse(&path).map_or("unknown", |r| r.label())
    };
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

/// One request: its path parsed and checked, its caller authorized, then handled.
async fn route(state: &Shared, request: Request, path: &str, query: &str) -> Result<Response> {
    let method = request.method().clone();
    if let Some(cas) = crate::serve::hub::xet::parse(path) {
        let params = query_params(query);
        return Ok(xet::handle_cas(state, cas, &method, request.headers(), &params).await);
    }
    if let Some(hub_route) = crate::serve::hub::parse(path) {
        return Ok(match hub_route {
            Ok(r) => {
                let params = query_params(query);
                hub::handle_hub(state, r, &method, request.headers(), &params).await
            }
            Err(e) => e.into_response(),
        });
    }
    let Some(route) = parse(path) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no route {path}"),
        ));
    };
    let name = check_names(&route, &method)?;
    let writes = !matches!(method, Method::GET | Method::HEAD);
    if state.read_only && writes && name.is_some() {
        return Err(ApiError::unsupported(
            "this pull-through cache is read-only to clients: push to its upstream, or start it with --allow-push or --htpasswd",
        ));
    }
    let params = query_params(query);
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    if let Some(answer) =
        authorize(state, &route, &method, name.as_deref(), &headers, &params).await
    {
        return Ok(answer);
    }
    handle(state, route, method, path, headers, params, body).await
}

/// The repository name and reference of a route, checked against the spec's grammar before
/// anything uses them (a tag like `../../x` must never reach a file name or an upstream URL).
fn check_names(route: &Route, method: &Method) -> Result<Option<String>> {
    let name = match route {
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
    match route {
        // A reference outside the grammar names nothing that can exist (404, as the
        // conformance suite expects), and cannot be written (400).
        Route::Manifest(_, r) if !crate::reference::valid_reference(r) => {
            return Err(if *method == Method::PUT {
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
    Ok(name)
}

/// With access control on: the answer for a caller who may not do this (or the token
/// endpoint's answer); `None` to go on.
async fn authorize(
    state: &Shared,
    route: &Route,
    method: &Method,
    name: Option<&str>,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Option<Response> {
    let access = state.access.as_ref()?;
    match route {
        Route::Health => None,
        Route::Metrics => access.authorize_metrics(headers).await,
        Route::Token => {
            let scopes: Vec<String> = params
                .iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.clone())
                .collect();
            Some(access.issue(headers, &scopes).await)
        }
        _ => {
            let action = match *method {
                Method::GET | Method::HEAD => "pull",
                Method::DELETE => "delete",
                _ => "push",
            };
            access.authorize(headers, name, action).await
        }
    }
}

/// The route's work, by resource and method.
async fn handle(
    state: &Shared,
    route: Route,
    method: Method,
    path: &str,
    headers: HeaderMap,
    params: Vec<(String, String)>,
    body: Body,
) -> Result<Response> {
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
        (Route::Blob(n, d), Method::DELETE) => delete_blob(state, &n, &d),
        (Route::UploadStart(n), Method::POST) => {
            start_upload(state, &n, &params, &headers, body).await
        }
        (Route::Upload(n, id), Method::PATCH) => {
            let start = content_range_start(&headers)?;
            let len = state.uploads.append(&id, start, body).await?;
            Ok(upload_status(StatusCode::ACCEPTED, &n, &id, len))
        }
        (Route::Upload(n, id), Method::PUT) => {
            finish_upload(state, (&n, &id), &params, &headers, body).await
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

/// Only this repository's link goes; the content stays for the repositories that still
/// hold it (and `gc` removes what none does).
fn delete_blob(state: &Shared, name: &str, digest: &str) -> Result<Response> {
    if state
        .store
        .unlink(name, LinkKind::Blob, &parse_digest(digest)?)?
    {
        Ok(StatusCode::ACCEPTED.into_response())
    } else {
        Err(ApiError::blob_unknown(digest))
    }
}

/// The upload's last piece (if any) appended, and the whole checked against `?digest=`.
async fn finish_upload(
    state: &Shared,
    (name, id): (&str, &str),
    params: &[(String, String)],
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let digest = parse_digest(
        param(params, "digest").ok_or_else(|| ApiError::digest_invalid("PUT needs ?digest="))?,
    )?;
    let start = content_range_start(headers)?;
    state.uploads.append(id, start, body).await?;
    state
        .uploads
        .finish(id, &digest, &state.store, name)
        .await?;
    Ok(blob_created(name, &digest))
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
