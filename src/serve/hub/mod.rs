//! The Hugging Face Hub's read API over the artifacts `hoist serve` holds, so that
//! `HF_ENDPOINT=http://SERVE` is all a workload needs: `huggingface_hub`, `transformers` and
//! every framework built on them load from the OCI registry, unchanged.
//!
//! - **Names.** Hub repository `ORG/NAME` (or `NAME`) is the OCI repository
//!   `PREFIX` + `org/name`, folded to lower case as OCI names must be. An artifact that came
//!   from a Hub dataset (`copy hf://datasets/…`: its `org.opencontainers.image.source` names
//!   `/datasets/`) is served under the datasets routes only, every other under the models
//!   routes only.
//! - **Revisions.** A revision is a tag; `main` is the operator's tag (`--hub-main-tag`,
//!   else `main` when it exists, else `latest`). Each manifest has a commit id: the Hub's own
//!   when the artifact came from it (`org.opencontainers.image.revision`), else the first 40
//!   hex digits of its digest; either is accepted back as a revision, as is the digest.
//! - **Files** are the artifact's raw layers by title, the tree `hoist pull` writes (never
//!   the config or the manifest). Every file is described as the Hub describes an LFS file:
//!   its SHA-256 as `X-Linked-Etag` and in `lfs.oid`, its size as `X-Linked-Size`, with the
//!   git id of its pointer as `oid` — all known from the manifest, no byte read. Artifacts
//!   with tar layers (`--layer-format tar`, the image-volume form) and indexes are refused
//!   with a line saying so: their files are known only after unpacking.
//! - **Errors** carry the Hub's `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`,
//!   `EntryNotFound`) so the client raises its own exceptions. A repository that is missing
//!   and one the caller may not read are the same answer, 401 `RepoNotFound`.
//!
//! Paths are parsed by hand: each segment is percent-decoded on its own, so an encoded
//! slash or `..` never becomes a path step, and a segment that decodes to `.`, `..`, an
//! empty name or one holding `/` or `\` is refused.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::digest::Digest;
use crate::oci::{media, Manifest};

mod view;
pub mod xet;
pub use view::{
    file_headers, info_json, next_link, snapshot, tree_page, xet_auth_link, HubFile, Snapshot,
};

/// Longest repository id and revision taken (the Hub's limit on names is 96 per part).
const MAX_NAME: usize = 256;
/// Tags looked through to find a commit id that is not a tag.
pub const MAX_TAGS_SCANNED: usize = 10_000;

/// Models or datasets: which routes, and which artifacts they serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Model,
    Dataset,
}

impl Kind {
    pub(super) fn api(self) -> &'static str {
        match self {
            Kind::Model => "models",
            Kind::Dataset => "datasets",
        }
    }
}

/// A Hub request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubRoute {
    /// `GET /api/{models,datasets}/{repo}[/revision/{rev}]`.
    Info {
        kind: Kind,
        repo: String,
        revision: Option<String>,
    },
    /// `GET /api/{…}/{repo}/tree/{rev}[/{path}]`.
    Tree {
        kind: Kind,
        repo: String,
        revision: String,
        path: String,
    },
    /// `GET /api/{…}/{repo}/xet-read-token/{rev}`: a token for the Xet routes (`xet`).
    XetToken {
        kind: Kind,
        repo: String,
        revision: String,
    },
    /// `HEAD|GET /[datasets/]{repo}/resolve/{rev}/{path}`.
    Resolve {
        kind: Kind,
        repo: String,
        revision: String,
        path: String,
    },
}

impl HubRoute {
    pub fn kind(&self) -> Kind {
        match self {
            HubRoute::Info { kind, .. }
            | HubRoute::Tree { kind, .. }
            | HubRoute::XetToken { kind, .. }
            | HubRoute::Resolve { kind, .. } => *kind,
        }
    }

    pub fn repo(&self) -> &str {
        match self {
            HubRoute::Info { repo, .. }
            | HubRoute::Tree { repo, .. }
            | HubRoute::XetToken { repo, .. }
            | HubRoute::Resolve { repo, .. } => repo,
        }
    }
}

/// A Hub answer that is not a success: its status, `X-Error-Code` and message.
#[derive(Debug, Clone)]
pub struct HubError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl HubError {
    /// Missing, or not the caller's to read: one answer for both.
    pub fn repo_not_found() -> HubError {
        HubError {
            status: StatusCode::UNAUTHORIZED,
            code: "RepoNotFound",
            message: "Repository Not Found for url. Please make sure you specified the correct `repo_id` and `repo_type`. If you are trying to access a private repository, make sure you are authenticated.".into(),
        }
    }

    pub fn revision_not_found(revision: &str) -> HubError {
        HubError {
            status: StatusCode::NOT_FOUND,
            code: "RevisionNotFound",
            message: format!("Invalid rev id: {}", printable(revision)),
        }
    }

    pub fn entry_not_found(path: &str, revision: &str) -> HubError {
        HubError {
            status: StatusCode::NOT_FOUND,
            code: "EntryNotFound",
            message: format!(
                "{} does not exist on \"{}\"",
                printable(path),
                printable(revision)
            ),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> HubError {
        HubError {
            status: StatusCode::BAD_REQUEST,
            code: "BadRequest",
            message: message.into(),
        }
    }

    /// An artifact the Hub view cannot show as files.
    pub fn not_files(message: impl Into<String>) -> HubError {
        HubError {
            status: StatusCode::BAD_REQUEST,
            code: "UnsupportedArtifact",
            message: message.into(),
        }
    }

    pub fn internal(message: impl std::fmt::Display) -> HubError {
        HubError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "InternalError",
            message: message.to_string(),
        }
    }
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert("X-Error-Code", HeaderValue::from_static(self.code));
        if let Ok(v) = HeaderValue::from_str(&one_header_line(&self.message)) {
            headers.insert("X-Error-Message", v);
        }
        response
    }
}

/// Text from a request, safe to echo: printable ASCII, at most 200 characters.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect()
}

fn one_header_line(s: &str) -> String {
    printable(s)
}

/// Is `path` (raw, percent-encoded) a Hub route? `None`: not one (the OCI routes answer);
/// `Some(Err)`: a Hub route that is malformed or hostile.
pub fn parse(path: &str) -> Option<Result<HubRoute, HubError>> {
    // The distribution API's own paths come first: an OCI repository may well have a
    // component named `resolve` (`/v2/team/resolve/manifests/v1`).
    if path == "/v2" || path.starts_with("/v2/") {
        return None;
    }
    if let Some(rest) = path.strip_prefix("/api/") {
        let (kind, rest) = match rest.split_once('/') {
            Some(("models", r)) => (Kind::Model, r),
            Some(("datasets", r)) => (Kind::Dataset, r),
            _ => return None,
        };
        return Some(api_route(kind, rest));
    }
    let (kind, rest) = match path.strip_prefix("/datasets/") {
        Some(r) => (Kind::Dataset, r),
        None => (Kind::Model, path.strip_prefix('/')?),
    };
    if !rest.contains("/resolve/") {
        return None;
    }
    Some(resolve_route(kind, rest))
}

/// A path segment percent-decoded on its own: a plain name (no `/`, `\\`, NUL, not `.`
/// or `..`, not empty, at most 256 bytes), as repository and file path parts must be.
fn decode_segment(raw: &str) -> Result<String, HubError> {
    let text = decode_text(raw)?;
    if text.is_empty() || text == "." || text == ".." || text.contains(['/', '\\']) {
        return Err(HubError::bad_request(format!(
            "the path segment {:?} is not a plain name",
            printable(raw)
        )));
    }
    Ok(text)
}

/// A revision segment: the Hub's revisions may hold an encoded `/` (`refs%2Fpr%2F1`). It
/// is only ever compared with tags and commit ids, never used as a path.
fn decode_revision(raw: &str) -> Result<String, HubError> {
    let text = decode_text(raw)?;
    if text.is_empty() {
        return Err(HubError::bad_request("an empty revision"));
    }
    Ok(text)
}

fn decode_text(raw: &str) -> Result<String, HubError> {
    let text = String::from_utf8(percent_decode(raw.as_bytes()))
        .map_err(|_| HubError::bad_request("a path segment is not UTF-8"))?;
    if text.contains('\0') || text.chars().any(char::is_control) {
        return Err(HubError::bad_request(
            "a path segment holds a control character",
        ));
    }
    if text.len() > MAX_NAME {
        return Err(HubError::bad_request("a path segment over 256 bytes"));
    }
    Ok(text)
}

/// RFC 3986 percent-decoding (a `%` not followed by two hex digits stays as it is).
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Decoded plain names joined with `/` (a repository id, a file path).
fn join_decoded(raw: &[&str]) -> Result<String, HubError> {
    Ok(raw
        .iter()
        .map(|s| decode_segment(s))
        .collect::<Result<Vec<_>, _>>()?
        .join("/"))
}

/// The repository id (one or two raw segments) before `keyword`, and the raw segments after.
fn split_at_keyword<'a>(
    segs: &'a [&'a str],
    keyword: &str,
) -> Result<Option<(String, &'a [&'a str])>, HubError> {
    // `ORG/NAME/keyword/…` first, then `NAME/keyword/…`.
    for n in [2, 1] {
        if segs.len() > n && segs[n] == keyword {
            return Ok(Some((join_decoded(&segs[..n])?, &segs[n + 1..])));
        }
    }
    Ok(None)
}

/// The one revision segment after `/keyword/`, decoded.
fn one_revision(tail: &[&str], keyword: &str) -> Result<String, HubError> {
    let [revision] = tail else {
        let expected = format!("expected /{keyword}/{{revision}}");
        return Err(HubError::bad_request(expected));
    };
    decode_revision(revision)
}

fn api_route(kind: Kind, rest: &str) -> Result<HubRoute, HubError> {
    let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    if let Some((repo, tail)) = split_at_keyword(&segs, "revision")? {
        return Ok(HubRoute::Info {
            kind,
            repo,
            revision: Some(one_revision(tail, "revision")?),
        });
    }
    if let Some((repo, tail)) = split_at_keyword(&segs, "tree")? {
        let Some((revision, path)) = tail.split_first() else {
            return Err(HubError::bad_request("expected /tree/{revision}[/{path}]"));
        };
        return Ok(HubRoute::Tree {
            kind,
            repo,
            revision: decode_revision(revision)?,
            path: join_decoded(path)?,
        });
    }
    if let Some((repo, tail)) = split_at_keyword(&segs, "xet-read-token")? {
        return Ok(HubRoute::XetToken {
            kind,
            repo,
            revision: one_revision(tail, "xet-read-token")?,
        });
    }
    match segs.len() {
        1 | 2 => Ok(HubRoute::Info {
            kind,
            repo: join_decoded(&segs)?,
            revision: None,
        }),
        _ => Err(HubError::repo_not_found()),
    }
}

fn resolve_route(kind: Kind, rest: &str) -> Result<HubRoute, HubError> {
    let segs: Vec<&str> = rest.split('/').collect();
    let Some((repo, tail)) = split_at_keyword(&segs, "resolve")? else {
        return Err(HubError::repo_not_found());
    };
    let Some((revision, path)) = tail.split_first() else {
        return Err(HubError::bad_request("expected /resolve/{revision}/{path}"));
    };
    let revision = decode_revision(revision)?;
    if path.is_empty() {
        return Err(HubError::entry_not_found("", &revision));
    }
    Ok(HubRoute::Resolve {
        kind,
        repo,
        revision,
        path: join_decoded(path)?,
    })
}

/// How the Hub's names map onto the store.
#[derive(Debug, Clone, Default)]
pub struct HubNames {
    /// Put before every Hub repository id (`models/`).
    pub prefix: String,
    /// The tag `main` means; `None`: `main` when it exists, else `latest`.
    pub main_tag: Option<String>,
}

impl HubNames {
    /// The OCI repository of a Hub repository id, `None` when it could not be one.
    pub fn repository(&self, repo: &str) -> Option<String> {
        let name = format!("{}{}", self.prefix, repo.to_ascii_lowercase());
        (repo.len() <= MAX_NAME && crate::reference::valid_repository(&name)).then_some(name)
    }
}

/// Commit ids already found: (repository, commit) → manifest digest. A client pins every
/// file of a revision by its commit id (`snapshot_download` does), which would otherwise
/// look through the repository's tags once per file. Digests never change, so an entry is
/// only dropped when the memo is full (or its manifest is gone, which the caller checks).
#[derive(Default)]
pub struct CommitMemo(std::sync::Mutex<std::collections::HashMap<(String, String), Digest>>);

/// Most commit ids remembered; past it the memo starts over.
const MAX_COMMITS_REMEMBERED: usize = 4096;

impl CommitMemo {
    pub fn get(&self, repository: &str, commit: &str) -> Option<Digest> {
        let memo = self.0.lock().expect("commit memo lock");
        memo.get(&(repository.to_string(), commit.to_string()))
            .cloned()
    }

    pub fn put(&self, repository: &str, commit: &str, digest: &Digest) {
        let mut memo = self.0.lock().expect("commit memo lock");
        if memo.len() >= MAX_COMMITS_REMEMBERED {
            memo.clear();
        }
        memo.insert((repository.to_string(), commit.to_string()), digest.clone());
    }
}

/// A revision as the store names it: a tag, or a manifest digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revision {
    Tag(String),
    Digest(Digest),
    /// 40 hex digits: a commit id, found among the repository's tags.
    Commit(String),
}

/// What a revision asks for; `None` when it can name nothing.
pub fn revision(text: &str, names: &HubNames, has_tag: impl Fn(&str) -> bool) -> Option<Revision> {
    if text == "main" {
        let tag = match &names.main_tag {
            Some(t) => t.clone(),
            None if has_tag("main") => "main".into(),
            None => "latest".into(),
        };
        return Some(Revision::Tag(tag));
    }
    if text.len() == 40
        && text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Some(Revision::Commit(text.to_string()));
    }
    if let Ok(d) = text.parse::<Digest>() {
        return Some(Revision::Digest(d));
    }
    crate::reference::valid_tag(text).then(|| Revision::Tag(text.to_string()))
}

/// The commit id of a manifest: the Hub's own when it came from there, else its digest's
/// first 40 hex digits.
pub fn commit_id(manifest: &Manifest, digest: &Digest) -> String {
    match manifest.annotations.get(media::ANNOTATION_REVISION) {
        Some(r) if r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()) => {
            r.to_ascii_lowercase()
        }
        _ => digest.hex()[..40].to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_as_huggingface_hub_speaks_them() {
        let r = |p: &str| parse(p).unwrap().unwrap();
        assert_eq!(
            r("/api/models/org/name/revision/main"),
            HubRoute::Info {
                kind: Kind::Model,
                repo: "org/name".into(),
                revision: Some("main".into())
            }
        );
        assert_eq!(
            r("/api/models/gpt2"),
            HubRoute::Info {
                kind: Kind::Model,
                repo: "gpt2".into(),
                revision: None
            }
        );
        assert_eq!(
            r("/api/models/o/n/xet-read-token/abc"),
            HubRoute::XetToken {
                kind: Kind::Model,
                repo: "o/n".into(),
                revision: "abc".into()
            }
        );
        assert_eq!(
            r("/api/datasets/o/d/tree/v1/sub/dir"),
            HubRoute::Tree {
                kind: Kind::Dataset,
                repo: "o/d".into(),
                revision: "v1".into(),
                path: "sub/dir".into()
            }
        );
        assert_eq!(
            r("/org/name/resolve/refs%2Fpr%2F1/1_Pooling/config.json"),
            HubRoute::Resolve {
                kind: Kind::Model,
                repo: "org/name".into(),
                revision: "refs/pr/1".into(),
                path: "1_Pooling/config.json".into()
            }
        );
        assert_eq!(
            r("/datasets/o/d/resolve/main/a.parquet"),
            HubRoute::Resolve {
                kind: Kind::Dataset,
                repo: "o/d".into(),
                revision: "main".into(),
                path: "a.parquet".into()
            }
        );
        assert!(parse("/v2/x/manifests/v1").is_none());
        assert!(parse("/v2/team/resolve/manifests/v1").is_none());
        assert!(parse("/v2/team/resolve/blobs/uploads/").is_none());
        assert!(parse("/healthz").is_none());
    }

    #[test]
    fn hostile_paths_are_refused_before_anything_is_looked_up() {
        for p in [
            "/org/name/resolve/main/../../etc/passwd",
            "/org/name/resolve/main/%2e%2e/%2e%2e/etc/passwd",
            "/org/name/resolve/main/a%2Fb",
            "/org/name/resolve/main/a%5Cb",
            "/org/name/resolve/main//etc/passwd",
            "/org/name/resolve/main/x%00",
            "/api/models/org/%2e%2e/revision/main",
            "/api/models/org/name/tree/main/%2E%2E",
        ] {
            match parse(p) {
                Some(Err(e)) => assert!(e.status.is_client_error(), "{p}: {e:?}"),
                other => panic!("{p}: {other:?}"),
            }
        }
        let long = format!("/org/{}/resolve/main/x", "a".repeat(300));
        assert!(matches!(parse(&long), Some(Err(_))));
    }

    #[test]
    fn the_commit_memo_is_bounded() {
        let memo = CommitMemo::default();
        let d = Digest::of_bytes(b"m");
        for i in 0..=MAX_COMMITS_REMEMBERED {
            memo.put("r", &i.to_string(), &d);
        }
        assert!(memo.0.lock().unwrap().len() <= MAX_COMMITS_REMEMBERED);
        assert_eq!(memo.get("r", &MAX_COMMITS_REMEMBERED.to_string()), Some(d));
        assert_eq!(memo.get("other", "0"), None);
    }

    #[test]
    fn revisions_are_tags_commits_or_digests() {
        let names = HubNames::default();
        assert_eq!(
            revision("main", &names, |t| t == "main"),
            Some(Revision::Tag("main".into()))
        );
        assert_eq!(
            revision("main", &names, |_| false),
            Some(Revision::Tag("latest".into()))
        );
        let pinned = HubNames {
            main_tag: Some("stable".into()),
            ..Default::default()
        };
        assert_eq!(
            revision("main", &pinned, |_| true),
            Some(Revision::Tag("stable".into()))
        );
        let c = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            revision(c, &names, |_| false),
            Some(Revision::Commit(c.into()))
        );
        assert_eq!(
            revision("v1.0", &names, |_| false),
            Some(Revision::Tag("v1.0".into()))
        );
        assert_eq!(revision("refs/pr/1", &names, |_| false), None);
        assert_eq!(revision(&"x".repeat(200), &names, |_| false), None);
        assert_eq!(
            HubNames {
                prefix: "models/".into(),
                ..Default::default()
            }
            .repository("Org/All-MiniLM"),
            Some("models/org/all-minilm".into())
        );
        assert_eq!(names.repository("a/../b"), None);
    }
}
