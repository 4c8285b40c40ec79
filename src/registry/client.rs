//! Requests of the distribution API: ping, manifests, blob existence and download.

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{header, Method, StatusCode, Url};

use super::auth::Action;
use super::body::{read_capped, MAX_ERROR_BODY};
use super::error::chain;
use super::retry::{RetryPolicy, MAX_THROTTLED};
use super::{Credentials, RegistryError, TransportOptions};
use crate::digest::Digest;
use crate::oci::{media, MAX_MANIFEST_BYTES};

/// A client for one registry host.
#[derive(Clone)]
pub struct RegistryClient {
    pub(crate) http: reqwest::Client,
    pub(crate) base: Url,
    /// The name users know (`docker.io`, `localhost:5000`), for messages.
    pub(crate) registry: String,
    pub(crate) credentials: std::sync::Arc<Credentials>,
    /// A mirror with another source behind it: an unreachable host is left at once and
    /// other failures get one retry (see `RetryPolicy::attempts_for`).
    pub(crate) fail_fast: bool,
    /// Wait out a 429 (`false`: return it at once, for a cache that passes it on).
    pub(crate) wait_when_throttled: bool,
}

/// A blob download in progress.
pub struct BlobResponse {
    pub response: reqwest::Response,
    /// Whether the server honoured a `Range` request with 206.
    pub partial: bool,
}

impl RegistryClient {
    pub fn new(
        registry: &str,
        opts: &TransportOptions,
        credentials: Credentials,
    ) -> Result<Self, RegistryError> {
        let host = if registry == crate::reference::DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            registry
        };
        let base = Url::parse(&format!("{}://{host}/", opts.scheme_for(host)))
            .map_err(|e| RegistryError::Tls(format!("bad registry address {registry}: {e}")))?;
        Ok(RegistryClient {
            http: opts.build_client()?,
            base,
            registry: registry.to_string(),
            credentials: std::sync::Arc::new(credentials),
            fail_fast: false,
            wait_when_throttled: true,
        })
    }

    /// This client returns a 429 at once instead of waiting it out: `hoist serve` passes it
    /// on to its clients, who wait, rather than holding their requests open meanwhile.
    pub fn pass_throttling(mut self) -> Self {
        self.wait_when_throttled = false;
        self
    }

    /// This client as a mirror: failures send the caller to its next source quickly.
    pub fn fail_fast(mut self) -> Self {
        self.fail_fast = true;
        self
    }

    pub fn is_fail_fast(&self) -> bool {
        self.fail_fast
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub(crate) fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("registry paths are valid URLs")
    }

    /// `/v2/<repository>/<parts…>`, built segment by segment from a repository name that
    /// matches the spec's grammar and parts that are plain segments: no name or tag can
    /// steer a request to another path (`..`, `/`, `?`, `#`).
    pub(crate) fn api_url(&self, repository: &str, parts: &[&str]) -> Result<Url, RegistryError> {
        if !crate::reference::valid_repository(repository) {
            return Err(RegistryError::InvalidName(repository.to_string()));
        }
        let plain = |p: &&str| !matches!(*p, "." | "..") && !p.contains(['/', '?', '#', '\\', '%']);
        if let Some(bad) = parts.iter().find(|p| !plain(p)) {
            return Err(RegistryError::InvalidName(bad.to_string()));
        }
        let mut url = self.base.clone();
        url.set_query(None);
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|()| RegistryError::InvalidName(self.base.to_string()))?;
            segments.clear().push("v2");
            segments.extend(repository.split('/'));
            segments.extend(parts);
        }
        Ok(url)
    }

    /// The manifest URL of `reference`, which must be a tag or a digest.
    fn manifest_url(&self, repository: &str, reference: &str) -> Result<Url, RegistryError> {
        if !crate::reference::valid_reference(reference) {
            return Err(RegistryError::InvalidName(reference.to_string()));
        }
        self.api_url(repository, &["manifests", reference])
    }

    pub(crate) fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        self.http.request(method, url)
    }

    /// Send with whatever authorization the registry wants, answering one 401 challenge
    /// (Basic credentials, or a bearer token for the scope) and retrying once; then map
    /// transport failures and auth statuses to errors users can act on. Requests to another
    /// host (blob storage after a redirect) never carry our credentials.
    pub(crate) async fn send(
        &self,
        req: reqwest::RequestBuilder,
        repository: &str,
        action: Action<'_>,
        context: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let request = req.build().map_err(|e| self.transport_error(&e, context))?;
        let retry = request.try_clone();
        let (mut resp, authorized) = self.send_once(request, repository, action, context).await?;
        // A challenge counts only when the registry itself sent it: a redirect target (blob
        // storage) that answers 401 never learns where our credentials go.
        if resp.status() == StatusCode::UNAUTHORIZED && self.is_registry_url(resp.url()) {
            let challenge = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok());
            if self
                .credentials
                .on_unauthorized(challenge, repository, action, authorized)
            {
                if let Some(retry) = retry {
                    resp = self.send_once(retry, repository, action, context).await?.0;
                }
            }
        }
        match resp.status() {
            StatusCode::UNAUTHORIZED => Err(RegistryError::Unauthorized {
                registry: self.registry.clone(),
                repository: if repository.is_empty() {
                    "the registry".into()
                } else {
                    repository.to_string()
                },
                credential_source: self.credentials.source.clone(),
            }),
            StatusCode::FORBIDDEN => Err(RegistryError::Denied {
                registry: self.registry.clone(),
                repository: repository.to_string(),
                action: match action {
                    Action::Push | Action::Mount { .. } => "push to",
                    Action::Pull => "read",
                },
            }),
            _ => Ok(resp),
        }
    }

    /// Is `url` on the registry's own scheme, host and port?
    fn is_registry_url(&self, url: &Url) -> bool {
        url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
    }

    async fn send_once(
        &self,
        mut request: reqwest::Request,
        repository: &str,
        action: Action<'_>,
        context: &str,
    ) -> Result<(reqwest::Response, bool), RegistryError> {
        let same_host = self.is_registry_url(request.url());
        let mut authorized = false;
        if same_host {
            if let Some(value) = self
                .credentials
                .header(&self.http, &self.registry, &self.base, repository, action)
                .await?
            {
                request.headers_mut().insert(header::AUTHORIZATION, value);
                authorized = true;
            }
        }
        let resp = self
            .http
            .execute(request)
            .await
            .map_err(|e| self.transport_error(&e, context))?;
        Ok((resp, authorized))
    }

    pub(crate) fn transport_error(&self, e: &reqwest::Error, context: &str) -> RegistryError {
        let detail = chain(e);
        if detail.contains("certificate") {
            return RegistryError::Tls(format!(
                "{} presented a certificate we do not trust ({detail}); pass --ca-file with its CA, or --insecure",
                self.registry
            ));
        }
        if e.is_connect() && detail.contains("dns error") && detail.contains("no records found") {
            RegistryError::Unresolved {
                host: self.base.host_str().unwrap_or(&self.registry).to_string(),
            }
        } else if e.is_connect() {
            RegistryError::Connect {
                registry: self.registry.clone(),
                detail: chain(e),
                refused: io_kind(e) == Some(std::io::ErrorKind::ConnectionRefused),
                tls: self.base.scheme() == "https",
            }
        } else if e.is_timeout() {
            RegistryError::TimedOut {
                registry: self.registry.clone(),
                context: context.to_string(),
                detail: chain(e),
            }
        } else {
            RegistryError::Transfer {
                registry: self.registry.clone(),
                context: context.to_string(),
                detail: chain(e),
            }
        }
    }

    /// Turn an unexpected status into an error carrying the registry's own message.
    /// A 429 answer, with the wait it asked for.
    fn throttled(&self, resp: &reqwest::Response) -> RegistryError {
        RegistryError::Throttled {
            registry: self.registry.clone(),
            retry_after: resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| super::retry::parse_retry_after(v.to_str().ok()?)),
        }
    }

    pub(crate) async fn status_error(
        &self,
        method: &'static str,
        resp: reqwest::Response,
    ) -> RegistryError {
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            return self.throttled(&resp);
        }
        let status = resp.status().as_u16();
        let mut url = resp.url().clone();
        url.set_query(None);
        let body = read_capped(resp, MAX_ERROR_BODY)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let message = registry_message(&body)
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        RegistryError::Status {
            method,
            url: url.to_string(),
            status,
            message,
        }
    }

    /// `GET /v2/`: is this a registry we can talk to?
    pub async fn ping(&self) -> Result<(), RegistryError> {
        let resp = self
            .send(
                self.request(Method::GET, self.url("v2/")),
                "",
                Action::Pull,
                "ping",
            )
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.status_error("GET", resp).await)
        }
    }

    /// Fetch a manifest by tag or digest: (media type, bytes, digest of the bytes).
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<(String, Bytes, Digest), RegistryError> {
        self.with_retries(|| self.get_manifest_once(repository, reference))
            .await
    }

    async fn get_manifest_once(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<(String, Bytes, Digest), RegistryError> {
        let url = self.manifest_url(repository, reference)?;
        let req = self
            .request(Method::GET, url)
            .header(header::ACCEPT, media::MANIFEST_ACCEPT);
        let resp = self
            .send(req, repository, Action::Pull, "fetching manifest")
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                registry: self.registry.clone(),
                what: format!("manifest {repository}:{reference}"),
            });
        }
        if !resp.status().is_success() {
            return Err(self.status_error("GET", resp).await);
        }
        let what = format!("{repository}:{reference}");
        if let Some(len) = resp.content_length().filter(|l| *l > MAX_MANIFEST_BYTES) {
            return Err(RegistryError::ManifestTooLarge {
                what,
                size: len,
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
            .unwrap_or_default();
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.transport_error(&e, "reading manifest"))?;
            body.extend_from_slice(&chunk);
            if body.len() as u64 > MAX_MANIFEST_BYTES {
                return Err(RegistryError::ManifestTooLarge {
                    what,
                    size: body.len() as u64,
                    limit: MAX_MANIFEST_BYTES,
                });
            }
        }
        let digest = Digest::of_bytes(&body);
        // Fetched by digest: the bytes must be that digest, whoever serves them.
        if let Ok(expected) = reference.parse::<Digest>() {
            if expected != digest {
                return Err(RegistryError::ManifestDigest {
                    registry: self.registry.clone(),
                    what: format!("{repository}@{expected}"),
                    expected: expected.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        Ok((media_type, Bytes::from(body), digest))
    }

    /// `HEAD` a blob: its size if the registry has it.
    pub async fn blob_exists(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        self.with_retries(|| self.blob_exists_once(repository, digest))
            .await
    }

    async fn blob_exists_once(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        let url = self.blob_url(repository, digest)?;
        let resp = self
            .send(
                self.request(Method::HEAD, url),
                repository,
                Action::Pull,
                "checking blob",
            )
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(Some(resp.content_length().unwrap_or(0))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.status_error("HEAD", resp).await),
        }
    }

    /// Start a blob download, optionally of `range` (inclusive end).
    pub async fn get_blob(
        &self,
        repository: &str,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<BlobResponse, RegistryError> {
        let url = self.blob_url(repository, digest)?;
        self.get_blob_at(url, repository, digest, range).await
    }

    pub fn blob_url(&self, repository: &str, digest: &Digest) -> Result<Url, RegistryError> {
        self.api_url(repository, &["blobs", digest.as_str()])
    }

    /// Download from a known URL: the registry's, or the blob-storage URL a first request was
    /// redirected to (then without our credentials, which are for the registry only).
    pub async fn get_blob_at(
        &self,
        url: Url,
        repository: &str,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<BlobResponse, RegistryError> {
        let mut req = self.request(Method::GET, url);
        if let Some((start, end)) = range {
            req = req.header(header::RANGE, format!("bytes={start}-{end}"));
        }
        let resp = self
            .send(req, repository, Action::Pull, "downloading blob")
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(BlobResponse {
                response: resp,
                partial: false,
            }),
            StatusCode::PARTIAL_CONTENT => Ok(BlobResponse {
                response: resp,
                partial: true,
            }),
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound {
                registry: self.registry.clone(),
                what: format!("blob {digest} in {repository}"),
            }),
            _ => Err(self.status_error("GET", resp).await),
        }
    }

    /// A small blob's body, read up to its declared size and no further (`None` if longer).
    pub async fn read_content(&self, resp: reqwest::Response, size: u64) -> Option<Vec<u8>> {
        read_capped(resp, size).await
    }

    /// `PUT` a manifest under a tag or its digest.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), RegistryError> {
        let url = self.manifest_url(repository, reference)?;
        let req = self
            .request(Method::PUT, url)
            .header(header::CONTENT_TYPE, media_type)
            .body(bytes);
        let resp = self
            .send(req, repository, Action::Push, "pushing manifest")
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.status_error("PUT", resp).await)
        }
    }
}

impl RegistryClient {
    /// Run an idempotent request again on transient failures (resets, 429, 5xx).
    pub(crate) async fn with_retries<T, F, Fut>(&self, mut request: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let policy = RetryPolicy::default();
        let mut attempt = 1;
        let mut throttled_for = std::time::Duration::ZERO;
        loop {
            match request().await {
                // A mirror that cannot be reached is left at once: the next source is there.
                Err(e) if e.is_unreachable() && self.fail_fast => return Err(e),
                // Nothing listens at the address: one clear error now, not after the schedule.
                Err(e) if e.is_refused() => return Err(e),
                // A cache passing 429s on to its clients returns them at once.
                Err(e @ RegistryError::Throttled { .. }) if !self.wait_when_throttled => {
                    return Err(e)
                }
                // A 429 says "later", not "broken": waited out (Retry-After plus jitter)
                // without using up attempts, for up to MAX_THROTTLED in all.
                Err(RegistryError::Throttled { retry_after, .. })
                    if throttled_for < MAX_THROTTLED =>
                {
                    let delay = policy.delay(attempt, retry_after);
                    tracing::warn!(
                        "{} is throttling requests (HTTP 429); asking again in {delay:?}",
                        self.registry
                    );
                    tokio::time::sleep(delay).await;
                    throttled_for += delay;
                }
                Err(e) if e.is_transient() && attempt < policy.attempts_for(self.fail_fast) => {
                    let delay = policy.delay(attempt, None);
                    tracing::warn!("{e}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}

/// The first message of a distribution error envelope, or a short raw body.
fn registry_message(body: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(env) = serde_json::from_str::<Envelope>(body) {
        let e = env.errors.into_iter().next()?;
        return Some(
            format!(
                "{} {}",
                e.code.unwrap_or_default(),
                e.message.unwrap_or_default()
            )
            .trim()
            .to_string(),
        );
    }
    let trimmed = body.trim();
    (!trimmed.is_empty() && trimmed.len() < 200).then(|| trimmed.to_string())
}

/// The kind of the I/O error beneath a transport error, if there is one.
fn io_kind(e: &reqwest::Error) -> Option<std::io::ErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = err.source();
    }
    None
}
