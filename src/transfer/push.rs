//! The push engine: a packed artifact goes to a target, skipping blobs it already has,
//! several uploads at once, then the manifest under every tag.

use futures_util::{stream, StreamExt, TryStreamExt};

use super::{Action, Event, Observer, Target, TransferError};
use crate::digest::Digest;
use crate::oci::media;
use crate::pack::{self, PackOptions, Packed, PackedBlob};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct PushOptions {
    pub concurrency: usize,
    /// Upload in chunks of this size (PATCH) instead of one streaming PUT.
    pub chunk_size: Option<u64>,
    /// Repositories of the destination registry that may hold the blobs already: a blob
    /// the destination lacks is mounted from the first that has it, and only uploaded when
    /// none does.
    pub mount_from: Vec<String>,
    /// A store that remembers which repositories each blob was pushed to, and offers those
    /// of the destination registry as mount sources next time.
    pub remember: Option<crate::store::Store>,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            concurrency: 4,
            chunk_size: None,
            mount_from: Vec::new(),
            remember: None,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PushReport {
    pub digest: Digest,
    pub blobs: usize,
    pub uploaded: usize,
    /// Blobs mounted from another repository of the registry instead of uploaded.
    pub mounted: usize,
    pub skipped: usize,
    pub uploaded_bytes: u64,
    pub tags: Vec<String>,
    /// The chunk index attached beside the manifest (a referrer), for delta pulls.
    pub chunk_index: Option<Digest>,
}

pub async fn push(
    packed: &Packed,
    target: &Target,
    tags: &[String],
    opts: &PushOptions,
    observer: Observer,
) -> Result<PushReport, TransferError> {
    start_event(&observer, target, &packed.manifest.layers);
    let actions: Vec<(Action, u64)> = stream::iter(packed.blobs.iter().cloned())
        .map(|blob| push_blob(target, blob, opts, &observer))
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect()
        .await?;
    finish(packed, target, tags, actions).await
}

/// Pack `dir` and push it, sending each file's blob as soon as it is hashed instead of
/// after every file is: reading and hashing the later files overlaps the uploads of the
/// earlier ones. The manifest goes last, as always, so a reader never sees a manifest whose
/// blobs are not there.
pub async fn push_folder(
    dir: &Path,
    pack_opts: &PackOptions,
    target: &Target,
    tags: &[String],
    opts: &PushOptions,
    observer: Observer,
) -> Result<(Packed, PushReport), TransferError> {
    // The totals for progress, from a walk of the folder (names and sizes only).
    let (walk_dir, walk_opts) = (dir.to_path_buf(), pack_opts.walk.clone());
    let files = tokio::task::spawn_blocking(move || pack::walk(&walk_dir, &walk_opts))
        .await
        .expect("walk task does not panic")?;
    observer(&Event::Start {
        reference: target.describe(),
        files: files.len(),
        bytes: files.iter().map(|f| f.size).sum(),
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PackedBlob>();
    let (dir, pack_opts) = (dir.to_path_buf(), pack_opts.clone());
    let packing = tokio::task::spawn_blocking(move || {
        pack::pack_with(&dir, &pack_opts, &|blob| {
            let _ = tx.send(blob.clone());
        })
    });
    let layers = stream::poll_fn(|cx| rx.poll_recv(cx))
        .map(|blob| push_blob(target, blob, opts, &observer))
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect::<Vec<(Action, u64)>>();
    let (layers, packed) = tokio::join!(layers, packing);
    let packed = packed.expect("pack task does not panic")?;
    let mut actions = layers?;
    let config = packed.blobs[0].clone();
    actions.push(push_blob(target, config, opts, &observer).await?);
    let mut report = finish(&packed, target, tags, actions).await?;
    report.chunk_index = attach_chunk_index(&packed, target).await?;
    Ok((packed, report))
}

/// Attach the chunk index the pack cut (if it did) beside the manifest just pushed.
pub(crate) async fn attach_chunk_index(
    packed: &Packed,
    target: &Target,
) -> Result<Option<Digest>, TransferError> {
    let Some(index) = &packed.chunks else {
        return Ok(None);
    };
    let parent = target.scratch_parent();
    let scratch = tempfile::Builder::new()
        .prefix(".hoist-index-")
        .tempdir_in(&parent)
        .map_err(TransferError::io(&parent))?;
    let digest =
        super::chunk_index::attach_index(target, &packed.manifest_digest, index, scratch.path())
            .await?;
    Ok(Some(digest))
}

pub(super) fn start_event(observer: &Observer, target: &Target, layers: &[crate::oci::Descriptor]) {
    observer(&Event::Start {
        reference: target.describe(),
        files: layers.len(),
        bytes: layers.iter().map(|l| l.size).sum(),
    });
}

/// Send one blob unless the destination has it, mounting it where it can.
pub(super) async fn push_blob(
    target: &Target,
    blob: PackedBlob,
    opts: &PushOptions,
    observer: &Observer,
) -> Result<(Action, u64), TransferError> {
    let desc = &blob.descriptor;
    let action = if target.has_blob(desc).await? {
        Action::Skipped
    } else if target
        .mount_from_any(desc, &mount_sources(opts, target, &desc.digest))
        .await?
    {
        Action::Mounted
    } else {
        target.put_blob(desc, &blob.source, opts.chunk_size).await?;
        Action::Uploaded
    };
    if let (Some(store), Some((client, repository))) = (&opts.remember, target.registry()) {
        store.remember_pushed(&desc.digest, client.registry(), repository);
    }
    observer(&Event::Done {
        name: desc
            .annotation(media::ANNOTATION_TITLE)
            .or_else(|| desc.annotation(media::ANNOTATION_FILEPATH))
            .unwrap_or("config")
            .to_string(),
        digest: desc.digest.clone(),
        size: desc.size,
        action,
    });
    Ok((action, desc.size))
}

/// Every blob is there: the manifest, under each tag (or by digest alone).
async fn finish(
    packed: &Packed,
    target: &Target,
    tags: &[String],
    actions: Vec<(Action, u64)>,
) -> Result<PushReport, TransferError> {
    let media_type = packed.manifest.media_type();
    let document = (media_type, &packed.manifest_bytes, &packed.manifest_digest);
    finish_with(document, target, tags, actions).await
}

/// Put a manifest or index document `(media type, bytes, digest)` under each tag (or by
/// digest alone), and report what its blobs' uploads did.
pub(super) async fn finish_with(
    (media_type, bytes, digest): (&str, &bytes::Bytes, &Digest),
    target: &Target,
    tags: &[String],
    actions: Vec<(Action, u64)>,
) -> Result<PushReport, TransferError> {
    if tags.is_empty() {
        target.put_manifest(None, media_type, bytes).await?;
    }
    for tag in tags {
        target.put_manifest(Some(tag), media_type, bytes).await?;
    }
    let uploaded: Vec<u64> = actions
        .iter()
        .filter(|(a, _)| *a == Action::Uploaded)
        .map(|(_, s)| *s)
        .collect();
    let count = |action: Action| actions.iter().filter(|(a, _)| *a == action).count();
    Ok(PushReport {
        digest: digest.clone(),
        blobs: actions.len(),
        uploaded: uploaded.len(),
        mounted: count(Action::Mounted),
        skipped: count(Action::Skipped),
        uploaded_bytes: uploaded.iter().sum(),
        tags: tags.to_vec(),
        chunk_index: None,
    })
}

/// Where a missing blob may be mounted from: the repositories given, then those the store
/// remembers pushing it to on this registry.
fn mount_sources(opts: &PushOptions, target: &Target, digest: &Digest) -> Vec<String> {
    let mut from = opts.mount_from.clone();
    if let (Some(store), Some((client, _))) = (&opts.remember, target.registry()) {
        for repo in store.pushed_to(digest, client.registry()) {
            if !from.contains(&repo) {
                from.push(repo);
            }
        }
    }
    from
}
