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
//!
//! Where each part lives: `sources` (an upstream, its mirrors, which are down or throttling),
//! `pump` (one miss fetched into the store, resumed, verified), `follow` (clients streaming a
//! blob while it arrives); this file ties them together per request and bounds the cache.

mod follow;
mod pump;
mod sources;

pub use sources::Upstream;

use follow::follow;
use pump::Pump;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use tokio::sync::watch;

use super::ApiError;
use crate::digest::Digest;
use crate::registry::{RegistryClient, RegistryError};
use crate::store::{Holding, Store};

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
        // One place of the origin's per-host budget, shared with this process's other
        // downloads from it, held until the fetch ends (a mirror's fetch counts against the
        // origin too: it is the same model's link).
        let place = crate::registry::budget::registry_budget(upstream.origin.registry())
            .acquire_owned()
            .await
            .expect("the budget is never closed");
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
            let _place = place;
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
