//! The Hugging Face Hub as a source: `hf://ORG/NAME[@REVISION]` (and `hf://datasets/…`)
//! resolved to a commit, its files listed, each file opened as a resumable stream.
//!
//! Written against the Hub's HTTP API (the one `huggingface_hub` speaks) rather than with a
//! crate: no Rust client streams a file with resume and keeps our credentials off the CDN,
//! and the part hoist needs is three endpoints. The settings follow the Hub's own
//! conventions: `HF_ENDPOINT`, `HF_TOKEN`, the token file under `HF_HOME`.

mod client;
mod stream;

pub use client::{HubClient, HubFile};
pub use stream::FileStream;

use std::path::PathBuf;

/// A repository named `hf://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRepo {
    pub kind: RepoKind,
    /// `ORG/NAME` (or a bare `NAME`, as the Hub's oldest models are).
    pub id: String,
    /// A branch, tag or commit; `main` when not given.
    pub revision: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

/// The longest repository id and revision accepted.
const MAX_NAME: usize = 256;

impl HubRepo {
    /// The tag a copy gets when its destination names none: an explicit revision names it
    /// (`@v1.0` → `:v1.0`); `main`, or a revision that is no tag, gives `latest`.
    pub fn default_tag(&self) -> String {
        if self.revision != "main" && crate::reference::valid_tag(&self.revision) {
            self.revision.clone()
        } else {
            "latest".into()
        }
    }

    /// `true` for a source that names the Hub.
    pub fn is_hub(source: &str) -> bool {
        source.starts_with("hf://")
    }

    /// `hf://[datasets/|models/]ORG/NAME[@REVISION]`.
    pub fn parse(source: &str) -> Result<HubRepo, HubError> {
        let bad = |why: &str| {
            HubError::Spec(format!(
                "{source:?}: {why}; write hf://ORG/NAME, hf://ORG/NAME@REVISION or hf://datasets/ORG/NAME"
            ))
        };
        let rest = source
            .strip_prefix("hf://")
            .ok_or_else(|| bad("not a Hub name"))?;
        let (kind, rest) = match rest.split_once('/') {
            Some(("datasets", r)) => (RepoKind::Dataset, r),
            Some(("models", r)) => (RepoKind::Model, r),
            _ => (RepoKind::Model, rest),
        };
        let (id, revision) = match rest.split_once('@') {
            Some((id, rev)) => (id, rev),
            None => (rest, "main"),
        };
        let parts: Vec<&str> = id.split('/').collect();
        let part_ok = |p: &&str| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if parts.is_empty() || parts.len() > 2 || !parts.iter().all(part_ok) || id.len() > MAX_NAME
        {
            return Err(bad("not a repository id"));
        }
        if revision.is_empty()
            || revision.len() > MAX_NAME
            || revision.chars().any(|c| c.is_control())
        {
            return Err(bad("not a revision"));
        }
        Ok(HubRepo {
            kind,
            id: id.to_string(),
            revision: revision.to_string(),
        })
    }

    /// The path segment of the Hub's API for this kind (`models`, `datasets`).
    pub fn api_kind(&self) -> &'static str {
        match self.kind {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }

    /// Where files are resolved: `ORG/NAME` or `datasets/ORG/NAME`.
    pub fn resolve_prefix(&self) -> String {
        match self.kind {
            RepoKind::Model => self.id.clone(),
            RepoKind::Dataset => format!("datasets/{}", self.id),
        }
    }

    /// The repository's page, as `org.opencontainers.image.source` records it.
    pub fn page(&self, endpoint: &url::Url) -> String {
        format!(
            "{}/{}",
            endpoint.as_str().trim_end_matches('/'),
            self.resolve_prefix()
        )
    }
}

impl std::fmt::Display for HubRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hf://{}@{}", self.resolve_prefix(), self.revision)
    }
}

/// Where the Hub is and who we are to it.
#[derive(Clone)]
pub struct HubSettings {
    pub endpoint: url::Url,
    pub token: Option<String>,
}

impl std::fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSettings")
            .field("endpoint", &self.endpoint.as_str())
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

impl HubSettings {
    /// As `huggingface_hub` finds them: `HF_ENDPOINT` (a mirror) or huggingface.co;
    /// `HF_TOKEN`, else the file at `HF_TOKEN_PATH`, else `$HF_HOME/token` (`HF_HOME`
    /// defaults to `$XDG_CACHE_HOME/huggingface`, then `~/.cache/huggingface`).
    pub fn from_env() -> Result<HubSettings, HubError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let endpoint_text = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        let endpoint = url::Url::parse(endpoint_text.trim_end_matches('/'))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                HubError::Spec(format!(
                    "HF_ENDPOINT {endpoint_text:?} is not an http(s) URL"
                ))
            })?;
        let token = match var("HF_TOKEN") {
            Some(t) => Some(t.trim().to_string()),
            None => read_token_file(&token_path())?,
        };
        Ok(HubSettings { endpoint, token })
    }
}

fn token_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_TOKEN_PATH") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HF_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("huggingface"))
        })
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface")))
        .unwrap_or_else(|| PathBuf::from(".cache/huggingface"));
    home.join("token")
}

/// The token saved by `hf auth login`; none when the file is absent.
fn read_token_file(path: &std::path::Path) -> Result<Option<String>, HubError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HubError::TokenFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{0}")]
    Spec(String),
    #[error("cannot read the Hugging Face token file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Gated, private, or a token the Hub refused (exit 3).
    #[error("the Hub refused access to {what}: {message}")]
    Denied { what: String, message: String },
    /// No such repository, revision or file (exit 4).
    #[error("{what} is not on the Hub: {message}")]
    NotFound { what: String, message: String },
    /// The Hub could not be reached, or kept failing (exit 5).
    #[error("{what}: {message}; check the network (and HF_ENDPOINT) and run the copy again")]
    Unavailable { what: String, message: String },
    #[error("the Hub answered HTTP {status} to {what}: {message}")]
    Status {
        status: u16,
        what: String,
        message: String,
    },
    /// An answer hoist will not use: malformed, or past a bound (exit 8).
    #[error("the Hub's answer to {what} is refused: {message}")]
    Invalid { what: String, message: String },
    /// The bytes that arrived are not those the Hub lists (exit 6).
    #[error("verification failed for {path}: the Hub lists {expected}, the bytes that arrived give {actual}; nothing was published")]
    Mismatch {
        path: String,
        expected: String,
        actual: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let r = HubRepo::parse("hf://sentence-transformers/all-MiniLM-L6-v2").unwrap();
        assert_eq!(
            (r.kind, r.id.as_str(), r.revision.as_str()),
            (
                RepoKind::Model,
                "sentence-transformers/all-MiniLM-L6-v2",
                "main"
            )
        );
        let r = HubRepo::parse("hf://datasets/org/set@refs/pr/1").unwrap();
        assert_eq!(
            (r.kind, r.id.as_str(), r.revision.as_str()),
            (RepoKind::Dataset, "org/set", "refs/pr/1")
        );
        assert_eq!(r.resolve_prefix(), "datasets/org/set");
        assert_eq!(HubRepo::parse("hf://gpt2").unwrap().id, "gpt2");
        for bad in [
            "hf://",
            "hf://a/b/c",
            "hf://../x",
            "hf://a/..",
            "hf://a b/c",
            "hf://a/b@",
            "hf://a/b@x\ny",
            "oci://a/b",
        ] {
            assert!(HubRepo::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        assert_eq!(read_token_file(&p).unwrap(), None);
        std::fs::write(&p, "hf_abc\n").unwrap();
        assert_eq!(read_token_file(&p).unwrap().as_deref(), Some("hf_abc"));
    }
}
