//! Copy an artifact (or an index and its manifests) between any two targets, blob by blob,
//! streaming, skipping what the destination already has.

use futures_util::{stream, StreamExt, TryStreamExt};

use super::{Action, Event, Observer, Target, TransferError};
use crate::digest::Digest;
use crate::oci::{Descriptor, ManifestKind};
use crate::store::manifest_media_type;

/// Pieces in flight between a registry's GET and another's PUT.
const PIPE: usize = 32;

#[derive(Debug, Clone, serde::Serialize)]
pub struct CopyReport {
    pub digest: Digest,
    pub copied: usize,
    /// Blobs mounted from the source repository (same registry) instead of copied.
    pub mounted: usize,
    pub skipped: usize,
    pub copied_bytes: u64,
}

pub async fn copy(
    src: &Target,
    reference: &str,
    dst: &Target,
    tags: &[String],
    concurrency: usize,
    observer: Observer,
) -> Result<CopyReport, TransferError> {
    let (declared, bytes, digest) = src.fetch_manifest(reference).await?;
    let media_type = manifest_media_type(&declared, &bytes);
    let mut report = CopyReport {
        digest: digest.clone(),
        copied: 0,
        mounted: 0,
        skipped: 0,
        copied_bytes: 0,
    };
    match ManifestKind::parse(Some(&media_type), &bytes)? {
        ManifestKind::Image(manifest) => {
            copy_blobs(
                src,
                dst,
                manifest.blobs().cloned().collect(),
                concurrency,
                &observer,
                &mut report,
            )
            .await?;
        }
        ManifestKind::Index(index) => {
            for child in &index.manifests {
                let (child_declared, child_bytes, child_digest) =
                    src.fetch_manifest(child.digest.as_str()).await?;
                if child_digest != child.digest {
                    return Err(TransferError::DigestMismatch {
                        what: "index child manifest".into(),
                        expected: child.digest.clone(),
                        actual: child_digest,
                        size: child_bytes.len() as u64,
                    });
                }
                let child_type = manifest_media_type(&child_declared, &child_bytes);
                if let ManifestKind::Image(m) =
                    ManifestKind::parse(Some(&child_type), &child_bytes)?
                {
                    copy_blobs(
                        src,
                        dst,
                        m.blobs().cloned().collect(),
                        concurrency,
                        &observer,
                        &mut report,
                    )
                    .await?;
                }
                dst.put_manifest(None, &child_type, &child_bytes).await?;
            }
        }
    }
    if tags.is_empty() {
        dst.put_manifest(None, &media_type, &bytes).await?;
    }
    for tag in tags {
        dst.put_manifest(Some(tag), &media_type, &bytes).await?;
    }
    Ok(report)
}

async fn copy_blobs(
    src: &Target,
    dst: &Target,
    blobs: Vec<Descriptor>,
    concurrency: usize,
    observer: &Observer,
    report: &mut CopyReport,
) -> Result<(), TransferError> {
    let actions: Vec<(Action, u64)> = stream::iter(blobs)
        .map(|desc| async move {
            let action = if dst.has_blob(&desc).await? {
                Action::Skipped
            } else {
                copy_blob(src, dst, &desc).await?
            };
            observer(&Event::Done {
                name: desc
                    .annotation(crate::oci::media::ANNOTATION_TITLE)
                    .unwrap_or("blob")
                    .to_string(),
                digest: desc.digest.clone(),
                size: desc.size,
                action,
            });
            Ok::<_, TransferError>((action, desc.size))
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    for (action, size) in actions {
        match action {
            Action::Skipped => report.skipped += 1,
            Action::Mounted => report.mounted += 1,
            _ => {
                report.copied += 1;
                report.copied_bytes += size;
            }
        }
    }
    Ok(())
}

/// Copy one blob the destination lacks: mounted within one registry, else sent.
async fn copy_blob(src: &Target, dst: &Target, desc: &Descriptor) -> Result<Action, TransferError> {
    if let Some(store) = src.local_store() {
        let source = crate::pack::BlobSource::File(store.blob_path(&desc.digest));
        dst.put_blob(desc, &source, None).await?;
        return Ok(Action::Uploaded);
    }
    if let Some(store) = dst.local_store() {
        let fetcher = super::fetch::Fetcher::new(Default::default(), super::silent());
        let name = desc
            .annotation(crate::oci::media::ANNOTATION_TITLE)
            .unwrap_or("blob")
            .to_string();
        let sources = src.sources(desc.digest.as_str());
        super::fetch::fetch_into_store(&fetcher, &sources, store, desc, &name).await?;
        return Ok(Action::Downloaded);
    }
    // Within one registry: mount it from the source repository, sending nothing.
    if let Some(from) = dst.same_registry_as(src) {
        if dst.mount_from_any(desc, &[from.to_string()]).await? {
            return Ok(Action::Mounted);
        }
    }
    // Registry to registry: the GET body streams straight into the PUT; the destination
    // registry checks the digest before accepting it.
    let mut blob = src.open_blob(desc).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(PIPE);
    let sending = async move {
        loop {
            match blob.next().await {
                Ok(Some(piece)) => {
                    if tx.send(Ok(piece)).await.is_err() {
                        return Ok(()); // the upload stopped: its error says why
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    // The upload ends in an error, not short.
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return Err(e);
                }
            }
        }
    };
    let (sent, uploaded) = tokio::join!(sending, dst.put_blob_stream(desc, rx));
    sent?;
    uploaded?;
    Ok(Action::Uploaded)
}

/// Copy everything attached to `subject` (recursively) from `src` to `dst`, indexing it there
/// as `dst` needs (its referrers API, the tag fallback, or the local store). Returns how many
/// referrers were copied.
pub async fn copy_referrers(
    src: &Target,
    dst: &Target,
    subject: &Digest,
    concurrency: usize,
) -> Result<usize, TransferError> {
    let tree = super::referrers::discover(src, subject, None, 8).await?;
    let mut copied = 0;
    let mut todo: Vec<(Digest, super::Referrer)> =
        tree.into_iter().map(|r| (subject.clone(), r)).collect();
    while let Some((parent, node)) = todo.pop() {
        let digest = node.descriptor.digest.clone();
        copy(src, digest.as_str(), dst, &[], concurrency, super::silent()).await?;
        super::referrers::register(dst, &parent, node.descriptor.clone()).await?;
        copied += 1;
        todo.extend(node.referrers.into_iter().map(|r| (digest.clone(), r)));
    }
    Ok(copied)
}
