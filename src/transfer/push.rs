//! The push engine: a packed artifact goes to a target, skipping blobs it already has,
//! several uploads at once, then the manifest under every tag.

use futures_util::{stream, StreamExt, TryStreamExt};

use super::{Action, Event, Observer, Target, TransferError};
use crate::digest::Digest;
use crate::oci::media;
use crate::pack::Packed;

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
}

pub async fn push(
    packed: &Packed,
    target: &Target,
    tags: &[String],
    opts: &PushOptions,
    observer: Observer,
) -> Result<PushReport, TransferError> {
    observer(&Event::Start {
        reference: target.describe(),
        files: packed.manifest.layers.len(),
        bytes: packed.manifest.layers.iter().map(|l| l.size).sum(),
    });
    let actions: Vec<(Action, u64)> = stream::iter(&packed.blobs)
        .map(|blob| {
            let observer = observer.clone();
            async move {
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
                if let (
                    Some(store),
                    Target::Remote {
                        client, repository, ..
                    },
                ) = (&opts.remember, target)
                {
                    store.remember_pushed(&desc.digest, client.registry(), repository);
                }
                observer(&Event::Done {
                    name: desc
                        .annotation(media::ANNOTATION_TITLE)
                        .unwrap_or("config")
                        .to_string(),
                    digest: desc.digest.clone(),
                    size: desc.size,
                    action,
                });
                Ok::<_, TransferError>((action, desc.size))
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect()
        .await?;

    let media_type = packed.manifest.media_type().to_string();
    if tags.is_empty() {
        target
            .put_manifest(None, &media_type, &packed.manifest_bytes)
            .await?;
    }
    for tag in tags {
        target
            .put_manifest(Some(tag), &media_type, &packed.manifest_bytes)
            .await?;
    }
    let uploaded: Vec<u64> = actions
        .iter()
        .filter(|(a, _)| *a == Action::Uploaded)
        .map(|(_, s)| *s)
        .collect();
    let count = |action: Action| actions.iter().filter(|(a, _)| *a == action).count();
    Ok(PushReport {
        digest: packed.manifest_digest.clone(),
        blobs: actions.len(),
        uploaded: uploaded.len(),
        mounted: count(Action::Mounted),
        skipped: count(Action::Skipped),
        uploaded_bytes: uploaded.iter().sum(),
        tags: tags.to_vec(),
    })
}

/// Where a missing blob may be mounted from: the repositories given, then those the store
/// remembers pushing it to on this registry.
fn mount_sources(opts: &PushOptions, target: &Target, digest: &Digest) -> Vec<String> {
    let mut from = opts.mount_from.clone();
    if let (Some(store), Target::Remote { client, .. }) = (&opts.remember, target) {
        for repo in store.pushed_to(digest, client.registry()) {
            if !from.contains(&repo) {
                from.push(repo);
            }
        }
    }
    from
}
