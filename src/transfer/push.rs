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
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            concurrency: 4,
            chunk_size: None,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PushReport {
    pub digest: Digest,
    pub blobs: usize,
    pub uploaded: usize,
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
                } else {
                    target.put_blob(desc, &blob.source, opts.chunk_size).await?;
                    Action::Uploaded
                };
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
    Ok(PushReport {
        digest: packed.manifest_digest.clone(),
        blobs: actions.len(),
        uploaded: uploaded.len(),
        skipped: actions.len() - uploaded.len(),
        uploaded_bytes: uploaded.iter().sum(),
        tags: tags.to_vec(),
    })
}
