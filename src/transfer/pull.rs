//! The pull engine: a reference becomes verified files in a folder.
//!
//! Layers are fetched several at a time; each blob is hashed as it is written, staged, and
//! nothing appears in the output folder until every layer is verified (see `materialize`).
//! A file already in place with the right digest is not downloaded again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{stream, StreamExt, TryStreamExt};

use super::{fetch, Action, Event, Observer, Target, TransferError};
use crate::digest::Digest;
use crate::materialize::{Staged, Staging};
use crate::oci::modelpack::FileMetadata;
use crate::oci::{media, FileLayer, LayerFormat, LayerPlan};

#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Layers fetched at once.
    pub concurrency: usize,
    /// Accept layer names with `..` or absolute paths (as ORAS's flag of the same name).
    pub allow_path_traversal: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            concurrency: 8,
            allow_path_traversal: false,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PullReport {
    pub digest: Digest,
    pub files: usize,
    pub bytes: u64,
    pub downloaded_bytes: u64,
    pub skipped: usize,
}

pub async fn pull(
    source: &Target,
    reference: &str,
    out: &Path,
    opts: &PullOptions,
    observer: Observer,
) -> Result<PullReport, TransferError> {
    let resolved = source.resolve(reference).await?;
    let plan = LayerPlan::from_manifest(&resolved.manifest, opts.allow_path_traversal)?;
    observer(&Event::Start {
        reference: format!("{}:{reference}", source.describe()),
        files: plan.layers.len(),
        bytes: plan.total_size(),
    });
    if opts.allow_path_traversal {
        // Names were accepted as given; they are placed relative to the output folder, and
        // `..` still cannot climb out through the staging rename.
        for layer in &plan.layers {
            if layer.path.is_absolute()
                || layer
                    .path
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(crate::oci::OciError::UnsafePath {
                    digest: layer.descriptor.digest.to_string(),
                    path: layer.path.display().to_string(),
                    why: "hoist never writes outside the output folder, even with --allow-path-traversal",
                }
                .into());
            }
        }
    }
    let staging = Arc::new(Staging::new(out)?);
    let results: Vec<(Vec<Staged>, Action)> = stream::iter(plan.layers.iter().enumerate())
        .map(|(index, layer)| {
            let staging = staging.clone();
            let observer = observer.clone();
            async move {
                let result = pull_layer(source, &staging, index, layer).await?;
                observer(&Event::Done {
                    name: layer.path.display().to_string(),
                    digest: layer.descriptor.digest.clone(),
                    size: layer.descriptor.size,
                    action: result.1,
                });
                Ok::<_, TransferError>(result)
            }
        })
        .buffered(opts.concurrency.max(1))
        .try_collect()
        .await?;

    let staging = Arc::into_inner(staging).expect("all layer tasks finished");
    let items: Vec<Staged> = results
        .iter()
        .flat_map(|(s, _)| s.iter().cloned())
        .collect();
    tokio::task::spawn_blocking(move || staging.commit(&items))
        .await
        .expect("commit task does not panic")?;

    let downloaded_bytes = plan
        .layers
        .iter()
        .zip(&results)
        .filter(|(_, (_, a))| *a == Action::Downloaded)
        .map(|(l, _)| l.descriptor.size)
        .sum();
    Ok(PullReport {
        digest: resolved.digest,
        files: plan.layers.len(),
        bytes: plan.total_size(),
        downloaded_bytes,
        skipped: results
            .iter()
            .filter(|(_, a)| *a == Action::Skipped)
            .count(),
    })
}

async fn pull_layer(
    source: &Target,
    staging: &Arc<Staging>,
    index: usize,
    layer: &FileLayer,
) -> Result<(Vec<Staged>, Action), TransferError> {
    let desc = &layer.descriptor;
    let name = layer.path.display().to_string();
    if layer.format == LayerFormat::Raw
        && already_in_place(&staging.out().join(&layer.path), &desc.digest, desc.size).await
    {
        return Ok((Vec::new(), Action::Skipped));
    }
    let (blob, consume, action): (PathBuf, bool, Action) = match source {
        Target::Local { store, repository } => match store.blob_size(&desc.digest) {
            Some(size) if size == desc.size => {
                (store.blob_path(&desc.digest), false, Action::Linked)
            }
            _ => {
                return Err(crate::store::StoreError::NotFound {
                    reference: format!("{repository} blob {} ({name})", desc.digest),
                    root: store.root().to_path_buf(),
                }
                .into())
            }
        },
        Target::Remote { client, repository } => {
            let path = staging.blob_path(&desc.digest);
            fetch::download_verified(client, repository, desc, &path, &name).await?;
            (path, true, Action::Downloaded)
        }
    };
    let (staging, layer_path, format, mode) = (
        staging.clone(),
        layer.path.clone(),
        layer.format,
        file_mode(layer),
    );
    let staged = tokio::task::spawn_blocking(move || match format {
        LayerFormat::Raw => staging
            .stage_file(index, &blob, consume, &layer_path, mode)
            .map(|s| vec![s]),
        _ => {
            let staged = staging.stage_tar(index, &blob, format, &name);
            if consume {
                let _ = std::fs::remove_file(&blob);
            }
            staged
        }
    })
    .await
    .expect("staging task does not panic")?;
    Ok((staged, action))
}

/// The permission bits recorded by the packer, else 0644.
fn file_mode(layer: &FileLayer) -> u32 {
    layer
        .descriptor
        .annotation(media::ANNOTATION_FILE_METADATA)
        .and_then(|m| serde_json::from_str::<FileMetadata>(m).ok())
        .map_or(0o644, |m| m.mode)
}

/// Is the file already there, a regular file with these exact bytes?
async fn already_in_place(path: &Path, digest: &Digest, size: u64) -> bool {
    let Ok(meta) = tokio::fs::symlink_metadata(path).await else {
        return false;
    };
    if !meta.is_file() || meta.len() != size {
        return false;
    }
    let path = path.to_path_buf();
    let digest = digest.clone();
    tokio::task::spawn_blocking(move || Digest::of_file(&path).is_ok_and(|d| d == digest))
        .await
        .unwrap_or(false)
}
