//! The Hub's API: a revision resolved to its commit, the file tree (paginated), and a file
//! opened at an offset. Redirects are followed here, one hop at a time, so the token goes to
//! the Hub's own host only and never to the CDN a large file is sent from.

use std::time::Duration;

use reqwest::{header, StatusCode};
use url::Url;

use super::{HubError, HubRepo, HubSettings};
use crate::registry::{
    error_chain, parse_retry_after, read_bounded, RetryPolicy, TransportOptions, Unread,
    MAX_ERROR_BODY,
};

/// The most bytes of one API answer read (a page of the tree, a revision's info).
const MAX_API_BODY: u64 = 16 << 20;
/// The most files a repository may list, and pages followed to list them.
const MAX_FILES: usize = 100_000;
const MAX_PAGES: usize = 1_000;
const MAX_REDIRECTS: usize = 5;
/// How long a throttling Hub is waited out in all, per request.
const MAX_THROTTLED: Duration = Duration::from_secs(300);
const MAX_MESSAGE: usize = 400;

/// One file of a repository at a commit, as its tree lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    /// `/`-separated, relative, checked.
    pub path: String,
    pub size: u64,
    /// The git blob id (SHA-1 of `blob <size>\0` and the content).
    pub oid: String,
    /// The SHA-256 of an LFS file's content (the Hub's ETag for it).
    pub lfs_sha256: Option<String>,
}

/// A response to a GET, after redirects, with what the first hop said about the file.
pub struct Opened {
    pub response: reqwest::Response,
    /// `X-Linked-Etag` (an LFS file's SHA-256) or the ETag.
    pub etag: Option<String>,
}

#[derive(Clone)]
pub struct HubClient {
    http: reqwest::Client,
    pub settings: HubSettings,
    retry: RetryPolicy,
}

/// How one attempt at a request ended.
enum Attempt {
    Answered(Opened),
    /// The connection failed: worth another try.
    Failed(String),
}

impl HubClient {
    pub fn new(settings: HubSettings, transport: &TransportOptions) -> Result<HubClient, HubError> {
        let http = transport
            .client_builder()
            .and_then(|b| {
                b.redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| crate::registry::RegistryError::Tls(error_chain(&e)))
            })
            .map_err(|e| HubError::Unavailable {
                what: "the Hub client".into(),
                message: e.to_string(),
            })?;
        Ok(HubClient {
            http,
            settings,
            retry: RetryPolicy::default(),
        })
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> HubClient {
        self.retry = retry;
        self
    }

    pub(super) fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    fn api_url(&self, segments: &[&str]) -> Url {
        let mut url = self.settings.endpoint.clone();
        url.path_segments_mut()
            .expect("the endpoint is an http(s) URL")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// `/api/{models,datasets}/ORG/NAME/{verb}/{revision}`.
    fn repo_api_url(&self, repo: &HubRepo, verb: &str, revision: &str) -> Url {
        let mut segments = vec!["api", repo.api_kind()];
        segments.extend(repo.id.split('/'));
        segments.extend([verb, revision]);
        self.api_url(&segments)
    }

    /// The commit a branch, tag or commit names.
    pub async fn commit(&self, repo: &HubRepo) -> Result<String, HubError> {
        let what = format!("{repo}");
        let url = self.repo_api_url(repo, "revision", &repo.revision);
        let body = self.get_json(&what, url).await?;
        let sha = body
            .get("sha")
            .and_then(|s| s.as_str())
            .filter(|s| is_hex(s, 40))
            .ok_or_else(|| HubError::Invalid {
                what: what.clone(),
                message: "no commit (`sha`) in the revision's info".into(),
            })?;
        if is_hex(&repo.revision, 40) && !sha.eq_ignore_ascii_case(&repo.revision) {
            return Err(HubError::Invalid {
                what,
                message: format!("asked for commit {}, answered {sha}", repo.revision),
            });
        }
        Ok(sha.to_ascii_lowercase())
    }

    /// Every file of the repository at `commit`, following the tree's pages.
    pub async fn files(&self, repo: &HubRepo, commit: &str) -> Result<Vec<HubFile>, HubError> {
        let mut first = self.repo_api_url(repo, "tree", commit);
        first
            .query_pairs_mut()
            .append_pair("recursive", "true")
            .append_pair("expand", "false");
        let mut next = Some(first);
        let what = format!("the file list of {repo}");
        let mut files = Vec::new();
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(invalid(&what, format!("more than {MAX_PAGES} pages")));
            }
            let opened = self.get(&what, url, None).await?;
            next = next_page(&opened.response, &self.settings.endpoint)
                .map_err(|m| invalid(&what, m))?;
            let page = read_json(&what, opened.response, MAX_API_BODY).await?;
            let entries = page
                .as_array()
                .ok_or_else(|| invalid(&what, "not a list of entries".into()))?;
            for entry in entries {
                if entry.get("type").and_then(|t| t.as_str()) != Some("file") {
                    continue;
                }
                files.push(file_entry(entry).map_err(|m| invalid(&what, m))?);
                if files.len() > MAX_FILES {
                    return Err(invalid(&what, format!("more than {MAX_FILES} files")));
                }
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files.dedup_by(|a, b| a.path == b.path);
        Ok(files)
    }

    /// Where `file` is read from at `commit`.
    pub fn file_url(&self, repo: &HubRepo, commit: &str, path: &str) -> Url {
        let prefix = repo.resolve_prefix();
        let mut segments: Vec<&str> = prefix.split('/').collect();
        segments.extend(["resolve", commit]);
        segments.extend(path.split('/'));
        self.api_url(&segments)
    }

    async fn get_json(&self, what: &str, url: Url) -> Result<serde_json::Value, HubError> {
        let opened = self.get(what, url, None).await?;
        read_json(what, opened.response, MAX_API_BODY).await
    }

    /// GET `url` (from byte `offset`), through redirects, waiting out 429s and retrying
    /// failed connections and 5xx answers; an answer that is no success is the Hub's error.
    pub async fn get(&self, what: &str, url: Url, offset: Option<u64>) -> Result<Opened, HubError> {
        let (mut failures, mut throttled) = (0u32, Duration::ZERO);
        loop {
            let last = match self.follow(what, url.clone(), offset).await? {
                Attempt::Answered(opened) => {
                    let status = opened.response.status();
                    if status.is_success() {
                        return Ok(opened);
                    }
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        let after = opened
                            .response
                            .headers()
                            .get(header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(parse_retry_after);
                        let wait = self.retry.delay(1, Some(after.unwrap_or(1)));
                        throttled += wait;
                        if throttled > MAX_THROTTLED {
                            return Err(HubError::Unavailable {
                                what: what.into(),
                                message: format!(
                                    "the Hub kept answering 429 (too many requests) for {}s",
                                    MAX_THROTTLED.as_secs()
                                ),
                            });
                        }
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    if !status.is_server_error() {
                        return Err(self.refusal(what, opened.response).await);
                    }
                    format!("HTTP {status}")
                }
                Attempt::Failed(message) => message,
            };
            failures += 1;
            if failures >= self.retry.attempts {
                return Err(HubError::Unavailable {
                    what: what.into(),
                    message: format!("{last} ({failures} attempts)"),
                });
            }
            tokio::time::sleep(self.retry.delay(failures, None)).await;
        }
    }

    /// One attempt: the request and each redirect hop, the token only on the Hub's host.
    async fn follow(
        &self,
        what: &str,
        mut url: Url,
        offset: Option<u64>,
    ) -> Result<Attempt, HubError> {
        let mut etag = None;
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self
                .http
                .get(url.clone())
                .header(header::ACCEPT_ENCODING, "identity");
            if same_origin(&url, &self.settings.endpoint) {
                if let Some(token) = &self.settings.token {
                    req = req.bearer_auth(token);
                }
            }
            if let Some(offset) = offset.filter(|o| *o > 0) {
                req = req.header(header::RANGE, format!("bytes={offset}-"));
            }
            let response = match req.send().await {
                Ok(r) => r,
                Err(e) => return Ok(Attempt::Failed(error_chain(&e))),
            };
            let headers = response.headers();
            let text = |k: &str| {
                headers
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            etag = etag
                .or_else(|| text("x-linked-etag"))
                .or_else(|| text("etag"));
            if response.status().is_redirection() {
                if let Some(location) = text("location") {
                    url = url
                        .join(&location)
                        .ok()
                        .filter(|u| matches!(u.scheme(), "http" | "https"))
                        .ok_or_else(|| invalid(what, format!("a redirect to {location:?}")))?;
                    continue;
                }
            }
            return Ok(Attempt::Answered(Opened { response, etag }));
        }
        Err(invalid(
            what,
            format!("more than {MAX_REDIRECTS} redirects"),
        ))
    }

    /// The Hub's error as one line: its `X-Error-Message` (or the body's `error`), sorted by
    /// its `X-Error-Code` into denied and not found.
    async fn refusal(&self, what: &str, response: reqwest::Response) -> HubError {
        let status = response.status();
        let header = |k: &str| {
            response
                .headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let code = header("x-error-code").unwrap_or_default();
        let mut message = header("x-error-message");
        if message.is_none() {
            message = read_json(what, response, MAX_ERROR_BODY)
                .await
                .ok()
                .and_then(|b| b.get("error")?.as_str().map(str::to_string));
        }
        let mut message = one_line(
            &message.unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string()),
        );
        let what = what.to_string();
        match (status.as_u16(), code.as_str()) {
            (_, "RevisionNotFound" | "EntryNotFound") | (404, _) => {
                HubError::NotFound { what, message }
            }
            (_, "GatedRepo" | "RepoNotFound") | (401 | 403, _) => {
                if self.settings.token.is_none() {
                    message.push_str(" (no token was sent: set HF_TOKEN or run `hf auth login`)");
                }
                HubError::Denied { what, message }
            }
            (status, _) => HubError::Status {
                status,
                what,
                message,
            },
        }
    }
}

fn invalid(what: &str, message: String) -> HubError {
    HubError::Invalid {
        what: what.into(),
        message,
    }
}

/// Printable, on one line, and short: the Hub's words reach a terminal and a log.
fn one_line(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let clean = clean.trim();
    match clean.char_indices().nth(MAX_MESSAGE) {
        Some((at, _)) => format!("{}…", &clean[..at]),
        None => clean.to_string(),
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// At most `limit` bytes of JSON.
async fn read_json(
    what: &str,
    response: reqwest::Response,
    limit: u64,
) -> Result<serde_json::Value, HubError> {
    let body = read_bounded(response, limit).await.map_err(|e| match e {
        Unread::TooLong => invalid(what, format!("larger than {limit} bytes")),
        Unread::Failed(e) => HubError::Unavailable {
            what: what.into(),
            message: error_chain(&e),
        },
    })?;
    serde_json::from_slice(&body).map_err(|e| invalid(what, format!("not JSON: {e}")))
}

/// The `Link: <…>; rel="next"` page, which must be on the Hub's own host (the token is
/// sent there).
fn next_page(response: &reqwest::Response, endpoint: &Url) -> Result<Option<Url>, String> {
    let Some(link) = response
        .headers()
        .get(header::LINK)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(None);
    };
    for part in link.split(',') {
        let mut fields = part.split(';');
        let target = fields.next().unwrap_or("").trim();
        let is_next = fields.any(|f| {
            let f = f.trim().replace(' ', "");
            f == "rel=\"next\"" || f == "rel=next"
        });
        if !is_next {
            continue;
        }
        let target = target
            .strip_prefix('<')
            .and_then(|t| t.strip_suffix('>'))
            .ok_or_else(|| format!("a Link header that is not <url>: {target:?}"))?;
        let url = endpoint
            .join(target)
            .map_err(|_| format!("a next page that is not a URL: {target:?}"))?;
        if !same_origin(&url, endpoint) {
            return Err(format!(
                "a next page on another host ({})",
                url.origin().ascii_serialization()
            ));
        }
        return Ok(Some(url));
    }
    Ok(None)
}

/// One `"type": "file"` entry of the tree, checked.
fn file_entry(entry: &serde_json::Value) -> Result<HubFile, String> {
    let path = entry
        .get("path")
        .and_then(|p| p.as_str())
        .ok_or("a file without a path")?;
    match crate::oci::files::safe_relative_path(path) {
        Ok(clean) if clean.to_str() == Some(path) => {}
        Ok(_) => return Err(format!("file path {path:?} is not in plain form")),
        Err(why) => return Err(format!("file path {path:?} {why}")),
    }
    let size = entry
        .get("size")
        .and_then(|s| s.as_u64())
        .ok_or_else(|| format!("{path}: no size"))?;
    let oid = entry
        .get("oid")
        .and_then(|s| s.as_str())
        .filter(|s| is_hex(s, 40))
        .ok_or_else(|| format!("{path}: no git object id"))?
        .to_ascii_lowercase();
    let lfs_sha256 = match entry.get("lfs").filter(|l| !l.is_null()) {
        None => None,
        Some(lfs) => {
            let sha = lfs
                .get("oid")
                .and_then(|s| s.as_str())
                .filter(|s| is_hex(s, 64))
                .ok_or_else(|| format!("{path}: an LFS entry without a SHA-256"))?;
            if lfs.get("size").and_then(|s| s.as_u64()) != Some(size) {
                return Err(format!("{path}: the LFS size is not the file's size"));
            }
            Some(sha.to_ascii_lowercase())
        }
    };
    Ok(HubFile {
        path: path.to_string(),
        size,
        oid,
        lfs_sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_checked() {
        let ok = serde_json::json!({"type": "file", "path": "a/b.json", "size": 3, "oid": "a".repeat(40)});
        assert_eq!(file_entry(&ok).unwrap().path, "a/b.json");
        for path in ["../x", "/etc/passwd", "a/./b", "a//b", ""] {
            let bad =
                serde_json::json!({"type": "file", "path": path, "size": 3, "oid": "a".repeat(40)});
            assert!(file_entry(&bad).is_err(), "{path}");
        }
        let lfs = serde_json::json!({"type": "file", "path": "m", "size": 3, "oid": "a".repeat(40),
            "lfs": {"oid": "b".repeat(64), "size": 4, "pointerSize": 1}});
        assert!(file_entry(&lfs).is_err(), "an LFS size that differs");
    }

    #[test]
    fn messages_are_one_short_line() {
        assert_eq!(one_line("a\nb\x1b[31m"), "a b [31m");
        assert_eq!(one_line(&"x".repeat(1000)).chars().count(), MAX_MESSAGE + 1);
    }
}
