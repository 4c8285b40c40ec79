//! Convert an artifact from any shape hoist reads (ORAS, ModelPack in any layer format,
//! KitOps, Docker Model Runner, Ollama, a plain image) into a ModelPack artifact or an ORAS
//! one. The files are materialized once through the pull engine (verified), then packed and
//! pushed; a raw layer's blob is the file's own bytes in every shape, so unchanged files keep
//! their digests and the destination skips blobs it already has.

use std::path::{Path, PathBuf};

use super::{Observer, PullOptions, PushOptions, PushReport, Target, TransferError};
use crate::chunks::ChunkIndex;
use crate::digest::Digest;
use crate::oci::{media, Descriptor};
use crate::pack::{self, BlobSource, PackOptions, Packed, PackedBlob};

/// The shape to convert to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvertTo {
    /// A CNCF ModelPack artifact, in the layer format of the pack options.
    ModelPack,
    /// ORAS files: raw layers titled by path, empty config, `application/vnd.unknown.artifact.v1`.
    Oras,
    /// The image-volume form ([`crate::pack::volume`]): an image index that containerd and
    /// CRI-O mount as the model's folder.
    ImageVolume,
}

/// Pull `source_ref` from `source` into `scratch`, repack it and push it to `dest` under `tags`.
#[allow(clippy::too_many_arguments)]
pub async fn convert(
    source: &Target,
    source_ref: &str,
    dest: &Target,
    tags: &[String],
    to: ConvertTo,
    pack_opts: &PackOptions,
    scratch: &Path,
    observer: Observer,
) -> Result<PushReport, TransferError> {
    let folder = scratch.join("files");
    // A volume form made from a ModelPack artifact names it, for `hoist inspect`.
    let of = match to {
        ConvertTo::ImageVolume => {
            let resolved = source.resolve(source_ref).await?;
            (resolved.manifest.artifact_type.as_deref() == Some(media::MODELPACK_ARTIFACT))
                .then_some(resolved.manifest_digest)
        }
        _ => None,
    };
    super::pull(
        source,
        source_ref,
        &folder,
        &PullOptions::default(),
        super::silent(),
    )
    .await?;
    // Into the source's registry: unchanged files (raw layers keep their digests) are
    // mounted from the source repository instead of uploaded again.
    let mount_from: Vec<String> = dest
        .same_registry_as(source)
        .into_iter()
        .map(str::to_string)
        .collect();
    let push_opts = PushOptions {
        mount_from,
        ..PushOptions::default()
    };
    let mut opts = pack_opts.clone();
    opts.temp_dir = Some(scratch.join("encoded"));
    if to == ConvertTo::ImageVolume {
        return super::push_image_volume(
            &folder,
            &opts,
            dest,
            tags,
            of.as_ref(),
            &push_opts,
            observer,
        )
        .await
        .map(|(_, report)| report);
    }
    if to == ConvertTo::Oras {
        opts.layer_format = crate::oci::LayerFormat::Raw;
    }
    let folder_for_pack = folder.clone();
    let packed = tokio::task::spawn_blocking(move || pack::pack(&folder_for_pack, &opts))
        .await
        .expect("pack task")?;
    let packed = match to {
        ConvertTo::ModelPack | ConvertTo::ImageVolume => packed,
        ConvertTo::Oras => as_oras(packed),
    };
    let mut report = super::push(&packed, dest, tags, &push_opts, observer).await?;
    report.chunk_index = super::push::attach_chunk_index(&packed, dest).await?;
    Ok(report)
}

/// The same files as ORAS writes them: titled `application/vnd.oci.image.layer.v1.tar` layers
/// (ORAS's default type for files) and the empty config.
fn as_oras(packed: Packed) -> Packed {
    let empty = bytes::Bytes::from_static(b"{}");
    let config = Descriptor::new(media::OCI_EMPTY, Digest::of_bytes(&empty), 2);
    let mut manifest = packed.manifest;
    manifest.artifact_type = Some(media::ORAS_UNKNOWN_ARTIFACT.into());
    manifest.config = config.clone();
    for layer in &mut manifest.layers {
        layer.media_type = "application/vnd.oci.image.layer.v1.tar".into();
        layer
            .annotations
            .retain(|k, _| k == media::ANNOTATION_TITLE);
    }
    let mut blobs: Vec<PackedBlob> = packed
        .blobs
        .into_iter()
        .skip(1) // the ModelPack config
        .zip(&manifest.layers)
        .map(|(blob, layer)| PackedBlob {
            descriptor: layer.clone(),
            source: blob.source,
        })
        .collect();
    blobs.insert(
        0,
        PackedBlob {
            descriptor: config,
            source: BlobSource::Bytes(empty),
        },
    );
    let manifest_bytes = bytes::Bytes::from(manifest.to_bytes());
    Packed {
        manifest_digest: Digest::of_bytes(&manifest_bytes),
        manifest,
        manifest_bytes,
        blobs,
        // The same blobs under other media types: the same chunks.
        chunks: packed.chunks,
        _scratch: packed._scratch,
    }
}

/// Index the raw layers of what `reference` names in `target` (their bytes pulled, verified,
/// into `scratch`) and attach the index; its digest and the index.
pub async fn index_artifact(
    target: &Target,
    reference: &str,
    scratch: &Path,
) -> Result<(Digest, ChunkIndex), TransferError> {
    let resolved = target.resolve(reference).await?;
    let blobs = scratch.join("blobs");
    let opts = super::PullOptions {
        raw: true,
        ..Default::default()
    };
    super::pull(target, reference, &blobs, &opts, super::silent()).await?;
    let files: Vec<(Digest, PathBuf)> = resolved
        .manifest
        .layers
        .iter()
        .map(|l| {
            (
                l.digest.clone(),
                blobs.join("blobs/sha256").join(l.digest.hex()),
            )
        })
        .filter(|(_, p)| p.is_file())
        .collect();
    let index = tokio::task::spawn_blocking(move || ChunkIndex::of_files(&files))
        .await
        .expect("index task does not panic")
        .map_err(TransferError::io(scratch))?;
    let digest =
        super::chunk_index::attach_index(target, &resolved.manifest_digest, &index, scratch)
            .await?;
    Ok((digest, index))
}
