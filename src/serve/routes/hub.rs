//! The Hub routes' work (see `serve::hub` for the names, revisions and views): the caller
//! authorized first, then the revision resolved through the same manifest path as the OCI
//! routes (a pull-through cache brings it from upstream), then the answer. A file's bytes
//! come from the same blob path as `GET /v2/…/blobs/…`: ranges, pull-through misses
//! streamed and verified, the node cache's counters.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::*;
use crate::serve::hub::{self, HubError, HubRoute, Kind, Revision, Snapshot};

/// The answer to a Hub request: success, or the Hub's error headers.
pub(super) async fn handle_hub(
    state: &Shared,
    route: HubRoute,
    method: &Method,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Response {
    serve(state, route, method, headers, params)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn serve(
    state: &Shared,
    route: HubRoute,
    method: &Method,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> std::result::Result<Response, HubError> {
    let head = match *method {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            return Err(HubError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: "MethodNotAllowed",
                message: "hoist serve answers the Hub's read API: GET and HEAD".into(),
            })
        }
    };
    let name = state
        .hub
        .repository(route.repo())
        .ok_or_else(HubError::repo_not_found)?;
    // Before anything is looked up: a repository the caller may not read is the same answer
    // as one that does not exist.
    if let Some(access) = &state.access {
        if !access.may_read(headers, &name).await {
            return Err(HubError::repo_not_found());
        }
    }
    let caller = Caller {
        state,
        headers,
        name,
    };
    match route {
        HubRoute::Info {
            kind,
            repo,
            revision,
        } => {
            let revision = revision.as_deref().unwrap_or("main");
            let snap = resolve(state, kind, &caller.name, revision).await?;
            Ok(json(&hub::info_json(kind, &repo, &snap)))
        }
        HubRoute::Tree {
            kind,
            repo,
            revision,
            path,
        } => caller.tree(kind, &repo, &revision, &path, params).await,
        HubRoute::XetToken { kind, revision, .. } => {
            // The revision must be one the caller can see; the token then reads the repository.
            resolve(state, kind, &caller.name, &revision).await?;
            Ok(xet_token(state, headers, &caller.name))
        }
        HubRoute::Resolve {
            kind,
            repo,
            revision,
            path,
        } => caller.file(kind, &repo, &revision, &path, head).await,
    }
}

/// A request to the Hub routes, once its caller may read the OCI repository `name`.
struct Caller<'a> {
    state: &'a Shared,
    headers: &'a HeaderMap,
    name: String,
}

impl Caller<'_> {
    /// A page of the tree listing, linked to the next.
    async fn tree(
        &self,
        kind: Kind,
        repo: &str,
        revision: &str,
        path: &str,
        params: &[(String, String)],
    ) -> std::result::Result<Response, HubError> {
        let snap = resolve(self.state, kind, &self.name, revision).await?;
        let recursive = param(params, "recursive").is_some_and(|v| v == "true" || v == "1");
        let cursor = match param(params, "cursor") {
            None => 0,
            Some(c) => c
                .parse::<usize>()
                .map_err(|_| HubError::bad_request("cursor is not a page of this tree"))?,
        };
        // Off the async workers: a page asks the store about each of its (up to 1,000) files.
        let (state, name, dir) = (self.state.clone(), self.name.clone(), path.to_string());
        let (page, next) = tokio::task::spawn_blocking(move || {
            hub::tree_page(&snap, &dir, recursive, cursor, |f| {
                xet_ready(&state, &name, f)
            })
        })
        .await
        .map_err(HubError::internal)??;
        let mut response = json(&serde_json::Value::Array(page));
        if let Some(next) = next {
            let base = base_url(self.state, self.headers);
            let link = hub::next_link(&base, kind, repo, revision, path, recursive, next);
            if let Ok(v) = HeaderValue::from_str(&link) {
                response.headers_mut().insert("Link", v);
            }
        }
        Ok(response)
    }

    /// A file's bytes (or, for `HEAD`, its headers), through the blob path of `/v2/`.
    async fn file(
        &self,
        kind: Kind,
        repo: &str,
        revision: &str,
        path: &str,
        head: bool,
    ) -> std::result::Result<Response, HubError> {
        let snap = resolve(self.state, kind, &self.name, revision).await?;
        let file = snap
            .files
            .iter()
            .find(|f| f.path == path)
            .ok_or_else(|| HubError::entry_not_found(path, revision))?;
        let digest = file.digest.as_str();
        // Judged as the request arrives: a HEAD that makes a pull-through cache fetch the
        // blob is still a miss, answered the `/resolve` way (whether the fetch of a small
        // file ends before the answer is a race the client must not see).
        let over_xet = head && xet_ready(self.state, &self.name, file);
        let mut response = get_blob(self.state, &self.name, digest, self.headers, head, None)
            .await
            .map_err(|e| HubError::internal(format!("{}: {}", file.path, e.message)))?;
        let mut add = hub::file_headers(file, &snap.commit).to_vec();
        if over_xet {
            let base = base_url(self.state, self.headers);
            add.push(("X-Xet-Hash", file.digest.hex().to_string()));
            add.push(("Link", hub::xet_auth_link(&base, kind, repo, &snap.commit)));
        }
        let out = response.headers_mut();
        for (k, v) in add {
            if let Ok(v) = HeaderValue::from_str(&v) {
                out.insert(k, v);
            }
        }
        out.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        out.remove("Docker-Content-Digest");
        Ok(response)
    }
}

/// `scheme://host` as the client reached this server: links it is handed lead back here.
pub(super) fn base_url(state: &Shared, headers: &HeaderMap) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = if state.tls { "https" } else { "http" };
    format!("{scheme}://{host}")
}

/// Is `file` served over Xet (`serve::hub::xet`)? Only a blob this repository holds whole
/// here: a pull-through miss goes the `/resolve` way, streamed as it arrives.
fn xet_ready(state: &Shared, name: &str, file: &hub::HubFile) -> bool {
    file.size > 0
        && state
            .store
            .is_linked(name, crate::store::LinkKind::Blob, &file.digest)
        && state.store.blob_size(&file.digest) == Some(file.size)
}

/// A Xet read token for `name`, as the Hub answers `xet-read-token`: in headers (what
/// `huggingface_hub` reads) and in the body.
fn xet_token(state: &Shared, headers: &HeaderMap, name: &str) -> Response {
    let (token, exp) = state.xet.token(name, unix_now());
    let cas = format!("{}{}", base_url(state, headers), hub::xet::CAS_PREFIX);
    let body = serde_json::json!({ "casUrl": cas, "accessToken": token, "exp": exp });
    let mut response = json(&body);
    let out = response.headers_mut();
    for (k, v) in [
        ("X-Xet-Cas-Url", cas),
        ("X-Xet-Access-Token", token),
        ("X-Xet-Token-Expiration", exp.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            out.insert(k, v);
        }
    }
    response
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn json(v: &serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// The files a revision of `name` holds, as the Hub view shows them.
async fn resolve(
    state: &Shared,
    kind: Kind,
    name: &str,
    revision: &str,
) -> std::result::Result<Snapshot, HubError> {
    let rev = hub::revision(revision, &state.hub, |t| {
        state.store.resolve(name, t).is_ok()
    })
    .ok_or_else(|| HubError::revision_not_found(revision))?;
    let mut candidates =
        match rev {
            Revision::Tag(t) => vec![t],
            Revision::Digest(d) => vec![d.to_string()],
            Revision::Commit(c) => vec![find_commit(state, name, &c)
                .ok_or_else(|| HubError::revision_not_found(revision))?],
        };
    // `main` on a cache that holds neither tag yet: upstream's `main`, else its `latest`.
    if revision == "main" && state.hub.main_tag.is_none() && candidates[0] == "latest" {
        candidates.insert(0, "main".into());
    }
    for reference in &candidates {
        if let Err(e) = refresh_manifest(state, name, reference, None).await {
            if e.status == StatusCode::TOO_MANY_REQUESTS || e.status.is_server_error() {
                return Err(HubError {
                    status: e.status,
                    code: "Upstream",
                    message: e.message,
                });
            }
        }
        if let Ok((desc, bytes)) = find_manifest(state, name, reference) {
            return hub::snapshot(kind, &desc.media_type, &bytes, &desc.digest);
        }
    }
    Err(if state.store.tags(name).is_ok_and(|t| !t.is_empty()) {
        HubError::revision_not_found(revision)
    } else {
        HubError::repo_not_found()
    })
}

/// The digest of the manifest whose commit id is `commit`: remembered from an earlier
/// request (a client pins every file of a revision by its commit), else found among the
/// repository's tags (the first [`hub::MAX_TAGS_SCANNED`] are looked through).
fn find_commit(state: &Shared, name: &str, commit: &str) -> Option<String> {
    if let Some(digest) = state.hub_commits.get(name, commit) {
        if find_manifest(state, name, digest.as_str()).is_ok() {
            return Some(digest.to_string());
        }
    }
    let tags = state.store.tags(name).ok()?;
    let digest = tags
        .into_iter()
        .take(hub::MAX_TAGS_SCANNED)
        .find_map(|tag| {
            let (desc, bytes) = find_manifest(state, name, &tag).ok()?;
            match crate::oci::ManifestKind::parse(Some(&desc.media_type), &bytes) {
                Ok(crate::oci::ManifestKind::Image(m))
                    if hub::commit_id(&m, &desc.digest) == commit =>
                {
                    Some(desc.digest)
                }
                _ => None,
            }
        })?;
    state.hub_commits.put(name, commit, &digest);
    Some(digest.to_string())
}
