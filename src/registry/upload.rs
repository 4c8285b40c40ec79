//! Blob uploads: a monolithic streaming PUT when the size is known, or chunked PATCHes when
//! asked for or when the registry refuses a large single request (413).

use bytes::Bytes;
use reqwest::{header, Method, StatusCode, Url};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::auth::Action;
use super::{RegistryClient, RegistryError};
use crate::oci::Descriptor;

/// Chunk size used when a monolithic PUT is refused as too large.
const FALLBACK_CHUNK: u64 = 100 * 1024 * 1024;

/// What a `POST …/blobs/uploads/` led to.
enum Started {
    /// The blob was mounted from another repository (201).
    Mounted,
    /// An upload session: its URL and the registry's minimum chunk size.
    Session(Url, u64),
}

/// Where upload bytes come from.
pub enum UploadBody {
    File(std::path::PathBuf),
    Bytes(Bytes),
    /// A one-shot stream (copying from another registry): monolithic only.
    Stream(reqwest::Body),
}

impl RegistryClient {
    /// Mount a blob `from` another repository of this registry (`POST
    /// …/blobs/uploads/?mount=D&from=R`): no byte is sent. `false` when the registry would
    /// not (it opened an upload session instead, which is cancelled): upload it then.
    pub async fn mount_blob(
        &self,
        repository: &str,
        digest: &crate::digest::Digest,
        from: &str,
    ) -> Result<bool, RegistryError> {
        if !crate::reference::valid_repository(from) || from == repository {
            return Ok(false);
        }
        match self.start_upload(repository, Some((digest, from))).await {
            Ok(Started::Mounted) => Ok(true),
            Ok(Started::Session(session, _)) => {
                let cancel = self.request(Method::DELETE, session);
                let _ = self
                    .send(cancel, repository, Action::Push, "cancelling upload")
                    .await;
                Ok(false)
            }
            // Any other answer to the mount: a plain upload follows.
            Err(RegistryError::Status { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Upload one blob. `chunk_size` asks for a chunked upload.
    pub async fn upload_blob(
        &self,
        repository: &str,
        desc: &Descriptor,
        body: UploadBody,
        chunk_size: Option<u64>,
    ) -> Result<(), RegistryError> {
        let (location, min_chunk) = self.open_session(repository).await?;
        match (chunk_size, body) {
            (Some(size), body @ (UploadBody::File(_) | UploadBody::Bytes(_))) => {
                self.upload_chunks(repository, desc, location, &body, size.max(min_chunk))
                    .await
            }
            (_, body) => {
                let retry_source = match &body {
                    UploadBody::File(p) => Some(UploadBody::File(p.clone())),
                    UploadBody::Bytes(b) => Some(UploadBody::Bytes(b.clone())),
                    UploadBody::Stream(_) => None,
                };
                let mut url = location;
                url.query_pairs_mut()
                    .append_pair("digest", desc.digest.as_str());
                let req = self
                    .request(Method::PUT, url)
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_LENGTH, desc.size)
                    .body(whole_body(body).await?);
                let resp = self
                    .send(req, repository, Action::Push, "uploading blob")
                    .await?;
                match (resp.status(), retry_source) {
                    (s, _) if s.is_success() => Ok(()),
                    (StatusCode::PAYLOAD_TOO_LARGE, Some(source)) => {
                        let (location, min_chunk) = self.open_session(repository).await?;
                        self.upload_chunks(
                            repository,
                            desc,
                            location,
                            &source,
                            FALLBACK_CHUNK.max(min_chunk),
                        )
                        .await
                    }
                    _ => Err(self.status_error("PUT", resp).await),
                }
            }
        }
    }

    /// `POST /v2/<name>/blobs/uploads/`: the session URL and the registry's minimum chunk.
    async fn open_session(&self, repository: &str) -> Result<(Url, u64), RegistryError> {
        match self.start_upload(repository, None).await? {
            Started::Session(url, min_chunk) => Ok((url, min_chunk)),
            Started::Mounted => unreachable!("only a mount request answers 201"),
        }
    }

    /// `POST /v2/<name>/blobs/uploads/`, with `?mount=D&from=R` when `mount` is given.
    async fn start_upload(
        &self,
        repository: &str,
        mount: Option<(&crate::digest::Digest, &str)>,
    ) -> Result<Started, RegistryError> {
        let mut url = self.api_url(repository, &["blobs", "uploads", ""])?;
        if let Some((digest, from)) = mount {
            url.query_pairs_mut()
                .append_pair("mount", digest.as_str())
                .append_pair("from", from);
        }
        let req = self
            .request(Method::POST, url)
            .header(header::CONTENT_LENGTH, 0);
        let (action, context) = match mount {
            Some((_, from)) => (Action::Mount { from }, "mounting blob"),
            None => (Action::Push, "upload start"),
        };
        let resp = self.send(req, repository, action, context).await?;
        match resp.status() {
            StatusCode::CREATED if mount.is_some() => Ok(Started::Mounted),
            StatusCode::ACCEPTED => {
                let min_chunk = resp
                    .headers()
                    .get("OCI-Chunk-Min-Length")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(0);
                Ok(Started::Session(self.location(&resp)?, min_chunk))
            }
            _ => Err(self.status_error("POST", resp).await),
        }
    }

    fn location(&self, resp: &reqwest::Response) -> Result<Url, RegistryError> {
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Transfer {
                registry: self.registry.clone(),
                context: "upload".into(),
                detail: "the registry sent no Location for the upload session".into(),
            })?;
        resp.url().join(loc).map_err(|e| RegistryError::Transfer {
            registry: self.registry.clone(),
            context: "upload".into(),
            detail: format!("bad upload Location {loc:?}: {e}"),
        })
    }

    async fn upload_chunks(
        &self,
        repository: &str,
        desc: &Descriptor,
        mut location: Url,
        source: &UploadBody,
        chunk: u64,
    ) -> Result<(), RegistryError> {
        let chunk = chunk.max(1);
        let mut offset = 0;
        while offset < desc.size {
            let len = chunk.min(desc.size - offset);
            let body = match source {
                UploadBody::File(path) => file_range_body(path, offset, len).await?,
                UploadBody::Bytes(b) => {
                    reqwest::Body::from(b.slice(offset as usize..(offset + len) as usize))
                }
                UploadBody::Stream(_) => unreachable!("streams are uploaded monolithically"),
            };
            let req = self
                .request(Method::PATCH, location.clone())
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(
                    header::CONTENT_RANGE,
                    format!("{}-{}", offset, offset + len - 1),
                )
                .header(header::CONTENT_LENGTH, len)
                .body(body);
            let resp = self
                .send(req, repository, Action::Push, "uploading chunk")
                .await?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(self.status_error("PATCH", resp).await);
            }
            location = self.location(&resp)?;
            offset += len;
        }
        location
            .query_pairs_mut()
            .append_pair("digest", desc.digest.as_str());
        let req = self
            .request(Method::PUT, location)
            .header(header::CONTENT_LENGTH, 0);
        let resp = self
            .send(req, repository, Action::Push, "upload finish")
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.status_error("PUT", resp).await)
        }
    }
}

async fn whole_body(body: UploadBody) -> Result<reqwest::Body, RegistryError> {
    Ok(match body {
        UploadBody::File(path) => {
            let file = open(&path).await?;
            reqwest::Body::wrap_stream(ReaderStream::with_capacity(file, 1 << 20))
        }
        UploadBody::Bytes(b) => reqwest::Body::from(b),
        UploadBody::Stream(s) => s,
    })
}

async fn file_range_body(
    path: &std::path::Path,
    offset: u64,
    len: u64,
) -> Result<reqwest::Body, RegistryError> {
    let mut file = open(path).await?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| read_error(path, e))?;
    Ok(reqwest::Body::wrap_stream(ReaderStream::with_capacity(
        file.take(len),
        1 << 20,
    )))
}

async fn open(path: &std::path::Path) -> Result<tokio::fs::File, RegistryError> {
    tokio::fs::File::open(path)
        .await
        .map_err(|e| read_error(path, e))
}

fn read_error(path: &std::path::Path, e: std::io::Error) -> RegistryError {
    RegistryError::Transfer {
        registry: "local disk".into(),
        context: format!("reading {}", path.display()),
        detail: e.to_string(),
    }
}
