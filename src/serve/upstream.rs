//! Pull-through caching: a miss is fetched from an upstream registry once, streamed to every
//! client that asks meanwhile and into the store at the same time, and verified before it
//! joins the store. Manifests by tag are revalidated after a TTL (and served stale if the
//! upstream is down); by digest they are immutable and cached for good.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;

use super::ApiError;
use crate::digest::{Digest, Hasher};
use crate::oci::Descriptor;
use crate::registry::{RegistryClient, RegistryError};
use crate::store::Store;

/// Upstream registries: a default one and ones chosen by the `ns` query parameter that
/// containerd sends to mirrors.
pub struct Upstreams {
    pub default: Option<RegistryClient>,
    pub by_namespace: HashMap<String, RegistryClient>,
    pub manifest_ttl: Duration,
    /// Evict least-recently-used blobs past this many bytes.
    pub cache_size: Option<u64>,
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
        default: Option<RegistryClient>,
        by_namespace: HashMap<String, RegistryClient>,
        manifest_ttl: Duration,
        cache_size: Option<u64>,
    ) -> Self {
        Upstreams {
            default,
            by_namespace,
            manifest_ttl,
            cache_size,
            fetched: Mutex::default(),
            inflight: Mutex::default(),
            starting: Mutex::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.by_namespace.is_empty()
    }

    pub fn pick(&self, namespace: Option<&str>) -> Option<&RegistryClient> {
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
        client: &RegistryClient,
        store: &Store,
        name: &str,
        reference: &str,
    ) -> Result<(), RegistryError> {
        let (media_type, bytes, digest) = client.get_manifest(name, reference).await?;
        if let Ok(expected) = reference.parse::<Digest>() {
            if expected != digest {
                return Err(RegistryError::Transfer {
                    registry: client.registry().to_string(),
                    context: format!("manifest {name}@{reference}"),
                    detail: format!("upstream sent bytes hashing to {digest}"),
                });
            }
        }
        let media_type = crate::transfer::manifest_media_type(&media_type, &bytes);
        let desc = Descriptor::new(media_type, digest, bytes.len() as u64);
        let store_err = |e: crate::store::StoreError| RegistryError::Transfer {
            registry: "local store".into(),
            context: "caching a manifest".into(),
            detail: e.to_string(),
        };
        if store.blob_size(&desc.digest).is_none() {
            store.put_bytes(&desc, &bytes).map_err(store_err)?;
        }
        store
            .link(name, crate::store::LinkKind::Manifest, &desc.digest)
            .map_err(store_err)?;
        if reference.parse::<Digest>().is_err() {
            store.tag(name, reference, &desc).map_err(store_err)?;
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
        client: &RegistryClient,
        store: &Store,
        name: &str,
        digest: &Digest,
    ) -> Result<(u64, Body), ApiError> {
        let part = store.part_path(digest);
        let starter = self
            .starting
            .lock()
            .expect("upstream lock")
            .entry(digest.clone())
            .or_default()
            .clone();
        let _starting = starter.lock().await;
        let existing = self
            .inflight
            .lock()
            .expect("upstream lock")
            .get(digest)
            .cloned();
        if let Some((size, rx)) = existing {
            // Join the running fetch; if it just finished, the blob is in the store.
            let file = match tokio::fs::File::open(&part).await {
                Ok(f) => Some(f),
                Err(_) => tokio::fs::File::open(store.blob_path(digest)).await.ok(),
            };
            if let Some(file) = file {
                return Ok((size, follow(file, size, rx)));
            }
        }
        // Checked after the running fetches: a fetch commits its blob before it leaves them,
        // so a blob fetched since the caller looked is found here.
        if let Ok(file) = tokio::fs::File::open(store.blob_path(digest)).await {
            let size = file.metadata().await?.len();
            return Ok((size, follow(file, size, watch::channel(Progress::Done).1)));
        }
        let resp = client
            .get_blob(name, digest, None)
            .await
            .map_err(upstream_error)?;
        let size = resp
            .response
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
        let (me, store, digest_owned) = (self.clone(), store.clone(), digest.clone());
        let part_for_task = part.clone();
        // The fetch runs on its own: a client that goes away does not stop it.
        tokio::spawn(async move {
            let ok = pump(resp.response, file, &tx, &digest_owned, size).await;
            let result = match ok {
                Ok(()) => {
                    // Off the async workers: the stamp waits for the file clock's next tick,
                    // and eviction walks the store.
                    let (store, part, digest, cap) = (
                        store.clone(),
                        part_for_task.clone(),
                        digest_owned.clone(),
                        me.cache_size,
                    );
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
                Err(e) => {
                    tracing::warn!("pull-through of {digest_owned} failed: {e}");
                    let _ = std::fs::remove_file(&part_for_task);
                    Progress::Failed
                }
            };
            me.inflight
                .lock()
                .expect("upstream lock")
                .remove(&digest_owned);
            // The blob is in the store (or the fetch failed): no starter lock is needed now.
            me.starting
                .lock()
                .expect("upstream lock")
                .remove(&digest_owned);
            let _ = tx.send(result);
        });
        Ok((size, follow(reader, size, rx)))
    }
}

fn upstream_error(e: RegistryError) -> ApiError {
    match e {
        RegistryError::NotFound { what, .. } => ApiError::blob_unknown(&what),
        other => ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "UNKNOWN",
            format!("upstream: {other}"),
        ),
    }
}

/// Copy the upstream body into the part file, hashing it, announcing progress.
async fn pump(
    resp: reqwest::Response,
    mut file: tokio::fs::File,
    tx: &watch::Sender<Progress>,
    digest: &Digest,
    size: u64,
) -> Result<(), String> {
    let mut hasher = Hasher::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(|e| e.to_string())?;
        let _ = tx.send(Progress::Running(hasher.len()));
    }
    file.flush().await.map_err(|e| e.to_string())?;
    let len = hasher.len();
    let actual = hasher.finish();
    if len != size || actual != *digest {
        return Err(format!("upstream sent {len} bytes hashing to {actual}"));
    }
    Ok(())
}

/// A body that reads a part file as it grows, waiting for the fetch to bring more bytes. The
/// file is already open, so it stays readable after the fetch renames it into the store.
fn follow(mut file: tokio::fs::File, size: u64, mut progress: watch::Receiver<Progress>) -> Body {
    let (tx, mut chunks) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let result: Result<(), String> = async {
            let mut pos = 0u64;
            let mut buf = vec![0u8; 256 * 1024];
            while pos < size {
                let available = match *progress.borrow_and_update() {
                    Progress::Running(n) => n,
                    Progress::Done => size,
                    Progress::Failed => return Err("the upstream fetch failed".into()),
                };
                if available <= pos {
                    if progress.changed().await.is_err() && *progress.borrow() != Progress::Done {
                        return Err("the upstream fetch ended early".into());
                    }
                    continue;
                }
                file.seek(std::io::SeekFrom::Start(pos))
                    .await
                    .map_err(|e| e.to_string())?;
                let want = buf.len().min((available - pos) as usize);
                let n = file
                    .read(&mut buf[..want])
                    .await
                    .map_err(|e| e.to_string())?;
                pos += n as u64;
                if n > 0
                    && tx
                        .send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                {
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
