//! Pull-through caching: a miss is fetched from an upstream registry once, streamed to every
//! client that asks meanwhile and into the store at the same time, and verified before it
//! joins the store. Manifests by tag are revalidated after a TTL (and served stale if the
//! upstream is down); by digest they are immutable and cached for good.
//!
//! An upstream may have mirrors in front of it (a node cache reads through the cluster
//! cache, which reads from the origin). They are tried in order; one that cannot be reached,
//! stalls or breaks mid-blob is left for the next, and a blob fetch that broke resumes at
//! the byte it reached (`Range`) rather than starting again. A 429 from the upstream is
//! passed on with its `Retry-After`, so the clients wait instead of hammering.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::ApiError;
use crate::digest::{Digest, Hasher};
use crate::registry::mirrors::Mirror;
use crate::registry::{RegistryClient, RegistryError};
use crate::store::{Holding, Store};

/// One upstream registry and the mirrors to read it through first.
#[derive(Clone)]
pub struct Upstream {
    pub origin: RegistryClient,
    /// Their clients fail fast (`RegistryClient::fail_fast`): the origin is behind them.
    pub mirrors: Vec<Mirror>,
    /// Mirrors that could not be reached, and since when: skipped for `DOWN_FOR`, so each
    /// new miss does not wait out the same dead host again.
    down: Arc<Mutex<HashMap<String, Instant>>>,
    /// Sources that answered 429, and until when: every miss meanwhile is answered 429 here
    /// without asking them again, so N clients waiting on one cache cost the throttling
    /// registry one request per `Retry-After`, not N.
    throttled: Arc<Mutex<HashMap<String, Instant>>>,
}

/// How long a mirror that could not be reached is skipped before it is tried again.
const DOWN_FOR: Duration = Duration::from_secs(30);

impl Upstream {
    pub fn new(origin: RegistryClient, mirrors: Vec<Mirror>) -> Upstream {
        Upstream {
            origin,
            mirrors,
            down: Arc::default(),
            throttled: Arc::default(),
        }
    }

    /// `Err(Throttled)` while `source` asked to be left alone.
    fn check_hold(&self, source: &RegistryClient) -> Result<(), RegistryError> {
        let held = self.throttled.lock().expect("throttle lock");
        match held.get(source.registry()) {
            Some(until) if *until > Instant::now() => Err(RegistryError::Throttled {
                registry: source.registry().to_string(),
                retry_after: Some((*until - Instant::now()).as_secs_f64().ceil() as u64),
            }),
            _ => Ok(()),
        }
    }

    /// Remember a 429 from `source` for as long as it asked (1 s if it did not say).
    fn hold(&self, source: &RegistryClient, e: &RegistryError) {
        if let RegistryError::Throttled { retry_after, .. } = e {
            let secs = retry_after
                .unwrap_or(1)
                .min(crate::registry::MAX_RETRY_AFTER);
            self.throttled.lock().expect("throttle lock").insert(
                source.registry().to_string(),
                Instant::now() + Duration::from_secs(secs),
            );
        }
    }

    /// Where `key` (a digest or reference) is read from, in order: each mirror's replicas,
    /// the key's home first, then the origin. Mirrors recently found down are left out.
    fn sources(&self, key: &str) -> Vec<&RegistryClient> {
        let down = self.down.lock().expect("down lock");
        let up = |c: &&RegistryClient| {
            down.get(c.registry())
                .is_none_or(|since| since.elapsed() > DOWN_FOR)
        };
        self.mirrors
            .iter()
            .flat_map(|m| m.order_for(key))
            .filter(up)
            .chain(std::iter::once(&self.origin))
            .collect()
    }

    /// Remember that `source` did not answer, if it is a mirror.
    fn mark_down(&self, source: &RegistryClient, e: &RegistryError) {
        if e.is_unreachable() {
            self.skip_mirror(source.registry());
        }
    }

    /// Leave the mirror `host` out for a while (never the origin: it is the last resort).
    fn skip_mirror(&self, host: &str) {
        if host != self.origin.registry() {
            self.down
                .lock()
                .expect("down lock")
                .insert(host.to_string(), Instant::now());
        }
    }

    /// Does `name` hold `digest` upstream? The first source that answers decides.
    pub async fn blob_exists(&self, name: &str, digest: &Digest) -> Option<u64> {
        for source in self.sources(digest.as_str()) {
            match source.blob_exists(name, digest).await {
                Ok(found) => return found,
                Err(e) => tracing::debug!("{}: {e}; asking the next source", source.registry()),
            }
        }
        None
    }

    /// Ask the sources of `key` in turn until one answers. A source that fails is left for
    /// the next (and marked down when it did not answer at all); a 429 ends the search and
    /// is held for its `Retry-After`, so it is passed on rather than gone around. Returns
    /// the answer and the source that gave it.
    async fn first_answer<T, F, Fut>(
        &self,
        key: &str,
        what: &str,
        mut ask: F,
    ) -> Result<(T, String), RegistryError>
    where
        F: FnMut(RegistryClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let sources: Vec<RegistryClient> = self.sources(key).into_iter().cloned().collect();
        let last = sources.len() - 1;
        for (i, source) in sources.into_iter().enumerate() {
            self.check_hold(&source)?;
            match ask(source.clone()).await {
                Ok(answer) => return Ok((answer, source.registry().to_string())),
                Err(e @ RegistryError::Throttled { .. }) => {
                    self.hold(&source, &e);
                    return Err(e);
                }
                Err(e) if i < last => {
                    self.mark_down(&source, &e);
                    tracing::warn!(
                        "{what}: {} failed ({e}); trying the next source",
                        source.registry()
                    );
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the origin is always the last source")
    }

    /// Open `digest` (its `range`, or whole) on the first source that answers. Returns the
    /// response, whether it is the range (206) or the whole blob (200), and the source.
    async fn open_blob(
        &self,
        name: &str,
        digest: &Digest,
        range: Option<(u64, u64)>,
        stall: Duration,
    ) -> Result<(reqwest::Response, bool, String), RegistryError> {
        let what = format!("pull-through of {digest}");
        let ((response, partial), source) = self
            .first_answer(digest.as_str(), &what, |source| async move {
                // A source that accepts and never answers is left after the stall timeout.
                match tokio::time::timeout(stall, source.get_blob(name, digest, range)).await {
                    Ok(opened) => opened.map(|blob| (blob.response, blob.partial)),
                    Err(_) => Err(RegistryError::TimedOut {
                        registry: source.registry().to_string(),
                        context: format!("blob {digest}"),
                        detail: format!("no answer for {stall:?}"),
                    }),
                }
            })
            .await?;
        Ok((response, partial, source))
    }
}

/// Upstream registries: a default one and ones chosen by the `ns` query parameter that
/// containerd sends to mirrors.
pub struct Upstreams {
    pub default: Option<Upstream>,
    pub by_namespace: HashMap<String, Upstream>,
    pub manifest_ttl: Duration,
    /// Evict least-recently-used blobs past this many bytes.
    pub cache_size: Option<u64>,
    /// An upstream that sends no byte for this long is left for the next source.
    pub stall_timeout: Duration,
    fetched: Mutex<HashMap<String, Instant>>,
    /// Fetches under way: the blob's size and its progress.
    inflight: Mutex<HashMap<Digest, (u64, watch::Receiver<Progress>)>>,
    /// One lock per digest while a fetch is being started, so two misses cannot both start one.
    starting: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

/// How far the shared fetch of one blob has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Running(u64),
    Done,
    Failed,
}

impl Upstreams {
    pub fn new(
        default: Option<Upstream>,
        by_namespace: HashMap<String, Upstream>,
        manifest_ttl: Duration,
        cache_size: Option<u64>,
    ) -> Self {
        Upstreams {
            default,
            by_namespace,
            manifest_ttl,
            cache_size,
            stall_timeout: Duration::from_secs(30),
            fetched: Mutex::default(),
            inflight: Mutex::default(),
            starting: Mutex::default(),
        }
    }

    /// Upstreams from `[NS=]HOST` specs (a bare HOST is the default), each reached with the
    /// context's credentials, transport and mirrors. 429s are passed on to the clients, who
    /// wait, instead of being waited out here while a client's request hangs.
    pub fn from_specs(
        ctx: &crate::context::Context,
        specs: &[String],
        manifest_ttl: Duration,
        cache_size: Option<u64>,
    ) -> Result<Upstreams, crate::Error> {
        let mut default = None;
        let mut by_namespace = HashMap::new();
        for spec in specs {
            let (ns, host) = match spec.split_once('=') {
                Some((ns, host)) => (Some(ns.to_string()), host),
                None => (None, spec.as_str()),
            };
            let host = crate::registry::auth::config::normalize(host);
            let origin = ctx.client(&host)?.pass_throttling();
            let mirrors = ctx
                .mirrors(&host)?
                .into_iter()
                .map(|m| m.map(RegistryClient::pass_throttling))
                .collect();
            let upstream = Upstream::new(origin, mirrors);
            match ns {
                Some(ns) => {
                    by_namespace.insert(ns, upstream);
                }
                None => default = Some(upstream),
            }
        }
        let mut upstreams = Upstreams::new(default, by_namespace, manifest_ttl, cache_size);
        upstreams.stall_timeout = ctx.settings().stall_timeout;
        Ok(upstreams)
    }

    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.by_namespace.is_empty()
    }

    pub fn pick(&self, namespace: Option<&str>) -> Option<&Upstream> {
        namespace
            .and_then(|ns| self.by_namespace.get(ns))
            .or(self.default.as_ref())
    }

    /// Is the cached `repo:tag` younger than the TTL?
    pub fn fresh(&self, name: &str, tag: &str) -> bool {
        self.fetched
            .lock()
            .expect("upstream lock")
            .get(&format!("{name}:{tag}"))
            .is_some_and(|t| t.elapsed() < self.manifest_ttl)
    }

    /// Fetch a manifest from upstream into the store (and tag it locally when by tag).
    pub async fn fetch_manifest(
        &self,
        upstream: &Upstream,
        store: &Store,
        name: &str,
        reference: &str,
    ) -> Result<(), RegistryError> {
        let what = format!("manifest {name}:{reference}");
        let ((media_type, bytes, digest), registry) = upstream
            .first_answer(reference, &what, |source| async move {
                source.get_manifest(name, reference).await
            })
            .await?;
        if let Ok(expected) = reference.parse::<Digest>() {
            if expected != digest {
                return Err(RegistryError::Transfer {
                    registry: registry.to_string(),
                    context: format!("manifest {name}@{reference}"),
                    detail: format!("upstream sent bytes hashing to {digest}"),
                });
            }
        }
        let store_err = |e: crate::store::StoreError| RegistryError::Transfer {
            registry: "local store".into(),
            context: "caching a manifest".into(),
            detail: e.to_string(),
        };
        // Its blobs come from the upstream when they are asked for.
        store
            .put_manifest(name, reference, &media_type, &bytes, Holding::Later)
            .map_err(store_err)?;
        if reference.parse::<Digest>().is_err() {
            self.fetched
                .lock()
                .expect("upstream lock")
                .insert(format!("{name}:{reference}"), Instant::now());
        }
        Ok(())
    }

    /// Serve a blob that is not here: join the running fetch of it, or start one. Returns the
    /// size and a body that follows the bytes as they land.
    pub async fn blob(
        self: &Arc<Self>,
        upstream: &Upstream,
        store: &Store,
        name: &str,
        digest: &Digest,
    ) -> Result<(u64, Body), ApiError> {
        let starter = self
            .starting
            .lock()
            .expect("upstream lock")
            .entry(digest.clone())
            .or_default()
            .clone();
        let _starting = starter.lock().await;
        if let Some(joined) = self.join(store, digest).await? {
            return Ok(joined);
        }
        self.start(upstream, store, name, digest).await
    }

    /// Follow the running fetch of `digest`, or the blob it just committed.
    async fn join(&self, store: &Store, digest: &Digest) -> Result<Option<(u64, Body)>, ApiError> {
        let existing = self
            .inflight
            .lock()
            .expect("upstream lock")
            .get(digest)
            .cloned();
        if let Some((size, rx)) = existing {
            // Join the running fetch; if it just finished, the blob is in the store.
            let file = match tokio::fs::File::open(store.part_path(digest)).await {
                Ok(f) => Some(f),
                Err(_) => tokio::fs::File::open(store.blob_path(digest)).await.ok(),
            };
            if let Some(file) = file {
                return Ok(Some((size, follow(file.into_std().await, size, rx))));
            }
        }
        // Checked after the running fetches: a fetch commits its blob before it leaves them,
        // so a blob fetched since the caller looked is found here.
        if let Ok(file) = tokio::fs::File::open(store.blob_path(digest)).await {
            let size = file.metadata().await?.len();
            let done = watch::channel(Progress::Done).1;
            return Ok(Some((size, follow(file.into_std().await, size, done))));
        }
        Ok(None)
    }

    /// Start the one fetch of `digest` from the upstream; it runs on its own (a client that
    /// goes away does not stop it) and every client follows its part file.
    async fn start(
        self: &Arc<Self>,
        upstream: &Upstream,
        store: &Store,
        name: &str,
        digest: &Digest,
    ) -> Result<(u64, Body), ApiError> {
        let part = store.part_path(digest);
        let (resp, _, source) = upstream
            .open_blob(name, digest, None, self.stall_timeout)
            .await
            .map_err(upstream_error)?;
        let size = resp
            .content_length()
            .ok_or_else(|| ApiError::internal("upstream sent no Content-Length"))?;
        let file = tokio::fs::File::create(&part).await?;
        // Open the reader now: the fetch may finish and rename the file before it runs.
        let reader = tokio::fs::File::open(&part).await?;
        let (tx, rx) = watch::channel(Progress::Running(0));
        self.inflight
            .lock()
            .expect("upstream lock")
            .insert(digest.clone(), (size, rx.clone()));
        let pump = Pump {
            upstream: upstream.clone(),
            name: name.to_string(),
            digest: digest.clone(),
            size,
            stall: self.stall_timeout,
        };
        let (me, store, digest) = (self.clone(), store.clone(), digest.clone());
        tokio::spawn(async move {
            let result = match pump.run(resp, source, file, &tx).await {
                Ok(()) => me.keep(store, part, digest.clone()).await,
                Err(e) => {
                    tracing::warn!("pull-through of {digest} failed: {e}");
                    let _ = std::fs::remove_file(&part);
                    Progress::Failed
                }
            };
            me.inflight.lock().expect("upstream lock").remove(&digest);
            // The blob is in the store (or the fetch failed): no starter lock is needed now.
            me.starting.lock().expect("upstream lock").remove(&digest);
            let _ = tx.send(result);
        });
        Ok((size, follow(reader.into_std().await, size, rx)))
    }

    /// Commit a fetched blob (verified) and evict past the cache size, off the async
    /// workers: the stamp waits for the file clock's next tick, and eviction walks the store.
    async fn keep(&self, store: Store, part: std::path::PathBuf, digest: Digest) -> Progress {
        let cap = self.cache_size;
        let kept = tokio::task::spawn_blocking(move || {
            let kept = store.commit_verified(&part, &digest).is_ok();
            if let (true, Some(cap)) = (kept, cap) {
                evict(&store, cap, &digest);
            }
            kept
        })
        .await
        .expect("commit task does not panic");
        if kept {
            Progress::Done
        } else {
            Progress::Failed
        }
    }
}

fn upstream_error(e: RegistryError) -> ApiError {
    match e {
        RegistryError::NotFound { what, .. } => ApiError::blob_unknown(&what),
        RegistryError::Throttled { retry_after, .. } => ApiError::throttled(retry_after),
        other => ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "UNKNOWN",
            format!("upstream: {other}"),
        ),
    }
}

/// One blob's fetch from the upstream into the part file.
struct Pump {
    upstream: Upstream,
    name: String,
    digest: Digest,
    size: u64,
    stall: Duration,
}

/// Times one fetch may move on to a source (or back to the same one) after a failure.
const MAX_RESUMES: usize = 8;

impl Pump {
    /// Copy the upstream body into the part file, hashing it, announcing progress. A body
    /// that breaks is resumed from the byte it reached: on the same source once (a blip),
    /// and a mirror that stalls or breaks again is left for the next source.
    async fn run(
        &self,
        mut resp: reqwest::Response,
        mut source: String,
        mut file: tokio::fs::File,
        tx: &watch::Sender<Progress>,
    ) -> Result<(), String> {
        let mut hasher = Hasher::new();
        let mut skip = 0; // bytes of a 200 answer that are already here
        let mut failed: Vec<String> = Vec::new();
        loop {
            match self.copy(resp, skip, &mut hasher, &mut file, tx).await {
                Ok(()) => break,
                Err(e) if failed.len() < MAX_RESUMES && hasher.len() < self.size => {
                    let from = hasher.len();
                    tracing::warn!(
                        "pull-through of {} from {source}: {} at byte {from}; resuming",
                        self.digest,
                        e.detail
                    );
                    if e.stalled || failed.contains(&source) {
                        self.upstream.skip_mirror(&source);
                    }
                    failed.push(source);
                    let opened = self
                        .upstream
                        .open_blob(
                            &self.name,
                            &self.digest,
                            Some((from, self.size - 1)),
                            self.stall,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    let partial;
                    (resp, partial, source) = opened;
                    skip = if partial { 0 } else { from };
                }
                Err(e) => return Err(e.detail),
            }
        }
        file.flush().await.map_err(|e| e.to_string())?;
        let len = hasher.len();
        let actual = hasher.finish();
        if len != self.size || actual != self.digest {
            return Err(format!("upstream sent {len} bytes hashing to {actual}"));
        }
        Ok(())
    }

    /// One response's body, its first `skip` bytes dropped, up to the blob's size. Bytes
    /// are written and announced a megabyte at a time; what arrived before a failure is
    /// written before the failure is returned, so the file always ends where the hash does.
    async fn copy(
        &self,
        resp: reqwest::Response,
        mut skip: u64,
        hasher: &mut Hasher,
        file: &mut tokio::fs::File,
        tx: &watch::Sender<Progress>,
    ) -> Result<(), CopyError> {
        let mut body = resp.bytes_stream();
        let mut pending = bytes::BytesMut::new();
        let result = loop {
            let next = match tokio::time::timeout(self.stall, body.next()).await {
                Err(_) => {
                    break Err(CopyError {
                        stalled: true,
                        detail: format!("no data for {:?} (stalled)", self.stall),
                    })
                }
                Ok(None) => break Ok(()),
                Ok(Some(Err(e))) => {
                    break Err(CopyError {
                        // The client's read timeout is the stall timeout for mirrors.
                        stalled: e.is_timeout(),
                        detail: crate::registry::error_chain(&e),
                    });
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            let mut chunk = next;
            let dropped = skip.min(chunk.len() as u64);
            skip -= dropped;
            let _ = chunk.split_to(dropped as usize);
            let room = self.size.saturating_sub(hasher.len());
            if chunk.len() as u64 > room {
                break Err(CopyError::other(format!(
                    "upstream sent more than the {} bytes",
                    self.size
                )));
            }
            hasher.update(&chunk);
            pending.extend_from_slice(&chunk);
            if pending.len() as u64 >= FOLLOW_BATCH {
                write_out(file, &mut pending, hasher.len(), tx).await?;
            }
        };
        write_out(file, &mut pending, hasher.len(), tx).await?;
        result
    }
}

/// Write what is pending and tell the followers the file now holds `total` bytes.
async fn write_out(
    file: &mut tokio::fs::File,
    pending: &mut bytes::BytesMut,
    total: u64,
    tx: &watch::Sender<Progress>,
) -> Result<(), CopyError> {
    if pending.is_empty() {
        return Ok(());
    }
    file.write_all(pending)
        .await
        .map_err(|e| CopyError::other(e.to_string()))?;
    pending.clear();
    // Flushed to the file (tokio's File writes in the background) before it is announced.
    file.flush()
        .await
        .map_err(|e| CopyError::other(e.to_string()))?;
    let _ = tx.send(Progress::Running(total));
    Ok(())
}

/// Why a response's body stopped short.
struct CopyError {
    stalled: bool,
    detail: String,
}

impl CopyError {
    fn other(detail: String) -> CopyError {
        CopyError {
            stalled: false,
            detail,
        }
    }
}

/// Bytes a follower waits for before it reads (unless the fetch ended): one read and one
/// chunk per megabyte, not one per network packet.
const FOLLOW_BATCH: u64 = 1 << 20;

/// A body that reads a part file as it grows, waiting for the fetch to bring more bytes. The
/// file is already open, so it stays readable after the fetch renames it into the store.
fn follow(file: std::fs::File, size: u64, mut progress: watch::Receiver<Progress>) -> Body {
    let (tx, mut chunks) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let file = Arc::new(file);
    tokio::spawn(async move {
        let result: Result<(), String> = async {
            let mut pos = 0u64;
            while pos < size {
                let available = match *progress.borrow_and_update() {
                    Progress::Running(n) => n,
                    Progress::Done => size,
                    Progress::Failed => return Err("the upstream fetch failed".into()),
                };
                if available < size && available < pos + FOLLOW_BATCH {
                    if progress.changed().await.is_err() && *progress.borrow() != Progress::Done {
                        return Err("the upstream fetch ended early".into());
                    }
                    continue;
                }
                let want = (available - pos).min(4 * FOLLOW_BATCH) as usize;
                let (file, at) = (file.clone(), pos);
                let chunk = tokio::task::spawn_blocking(move || read_chunk(&file, at, want))
                    .await
                    .expect("read task does not panic")
                    .map_err(|e| e.to_string())?;
                pos += chunk.len() as u64;
                if tx.send(Ok(chunk)).await.is_err() {
                    return Ok(()); // the client went away; the fetch goes on
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = tx.send(Err(std::io::Error::other(e))).await;
        }
    });
    Body::from_stream(futures_util::stream::poll_fn(move |cx| {
        chunks.poll_recv(cx)
    }))
}

/// `len` bytes of `file` from `at` (fewer only at its end), read into a buffer that becomes
/// the chunk without another copy.
fn read_chunk(file: &std::fs::File, at: u64, len: usize) -> std::io::Result<bytes::Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], at + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    if filled == 0 {
        return Err(std::io::Error::other(
            "the part file is shorter than its progress",
        ));
    }
    buf.truncate(filled);
    Ok(bytes::Bytes::from(buf))
}

/// Delete the least recently used blobs until the store fits in `cap` bytes (never `keep`,
/// the blob just fetched).
fn evict(store: &Store, cap: u64, keep: &Digest) {
    let blobs = store.blobs_by_age();
    let mut total: u64 = blobs.iter().map(|(_, n, _)| n).sum();
    for (digest, size, _) in blobs {
        if total <= cap {
            break;
        }
        if digest != *keep && store.delete_blob(&digest).unwrap_or(false) {
            tracing::info!("evicted {digest} ({size} bytes) to stay under {cap} bytes");
            total -= size;
        }
    }
}
