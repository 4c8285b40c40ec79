//! Publishing a model's image-volume form (see [`crate::pack::volume`]): its tar layers and
//! configs, then each platform's manifest by digest, then the index under the tags, so a
//! node never finds a tag whose content is not all there.

use std::path::Path;

use futures_util::{stream, StreamExt, TryStreamExt};

use super::push::{finish_with, push_blob, start_event};
use super::{Action, Observer, PushOptions, PushReport, Target, TransferError};
use crate::digest::Digest;
use crate::oci::media;
use crate::pack::volume::{self, Volume};
use crate::pack::{self, PackOptions, Packed};

/// The tag of a model's volume form beside the ModelPack tag `tag` (`v1` → `v1-volume`).
pub fn volume_tag(tag: &str) -> String {
    format!("{tag}-volume")
}

/// Pack `dir` as tar layers and push its volume form under `tags`. `of` names the ModelPack
/// manifest of the same files, when one was pushed. Blobs the target has are not sent (a
/// ModelPack artifact pushed with `--layer-format tar` already holds every layer).
pub async fn push_image_volume(
    dir: &Path,
    pack_opts: &PackOptions,
    target: &Target,
    tags: &[String],
    of: Option<&Digest>,
    opts: &PushOptions,
    observer: Observer,
) -> Result<(Volume, PushReport), TransferError> {
    let mut tar_opts = pack_opts.clone();
    tar_opts.layer_format = volume::LAYER_FORMAT;
    tar_opts.chunk_index = false;
    let (dir, of_owned) = (dir.to_path_buf(), of.cloned());
    let volume = tokio::task::spawn_blocking(move || {
        let packed = pack::pack(&dir, &tar_opts)?;
        volume::volume_of(
            packed,
            volume::DEFAULT_ARCHITECTURES,
            of_owned.as_ref(),
            tar_opts.timestamp,
        )
    })
    .await
    .expect("pack task does not panic")?;
    let report = push_volume(&volume, target, tags, opts, observer).await?;
    Ok((volume, report))
}

/// Publish the volume form beside a ModelPack artifact just pushed from `dir` (`packed`):
/// built from `packed` itself when its layers are already uncompressed tars (no file is read
/// again), else packed from `dir` as tars.
pub async fn push_volume_beside(
    packed: Packed,
    dir: &Path,
    pack_opts: &PackOptions,
    target: &Target,
    tags: &[String],
    opts: &PushOptions,
    observer: Observer,
) -> Result<(Volume, PushReport), TransferError> {
    let of = packed.manifest_digest.clone();
    if pack_opts.layer_format != volume::LAYER_FORMAT {
        drop(packed);
        return push_image_volume(dir, pack_opts, target, tags, Some(&of), opts, observer).await;
    }
    let volume = volume::volume_of(
        packed,
        volume::DEFAULT_ARCHITECTURES,
        Some(&of),
        pack_opts.timestamp,
    )?;
    let report = push_volume(&volume, target, tags, opts, observer).await?;
    Ok((volume, report))
}

/// Push a packed volume form.
pub async fn push_volume(
    volume: &Volume,
    target: &Target,
    tags: &[String],
    opts: &PushOptions,
    observer: Observer,
) -> Result<PushReport, TransferError> {
    start_event(&observer, target, &volume.layers);
    let actions: Vec<(Action, u64)> = stream::iter(volume.blobs.iter().cloned())
        .map(|blob| push_blob(target, blob, opts, &observer))
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect()
        .await?;
    for (_, bytes) in &volume.manifests {
        target
            .put_manifest(None, media::OCI_MANIFEST, bytes)
            .await?;
    }
    let index = (media::OCI_INDEX, &volume.index_bytes, &volume.digest);
    finish_with(index, target, tags, actions).await
}

/// Where a model's volume form is, as `hoist inspect` reports it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeForm {
    /// The tag that holds it.
    pub tag: String,
    pub digest: Digest,
    /// The ModelPack manifest it was made from, as its index says.
    pub of: Option<Digest>,
    /// The platforms its index lists (`linux/amd64`, …), in its order.
    pub platforms: Vec<String>,
    /// Every platform's manifest lists the same layers (a node of any architecture mounts
    /// the same files).
    pub platforms_agree: bool,
    /// It holds the files of the manifest inspected: its `of` names that manifest and its
    /// platforms agree (an annotation alone proves nothing of the layers).
    pub current: bool,
}

/// Most platforms of a volume form compared; an index listing more is not taken as agreeing.
const MAX_PLATFORMS: usize = 64;

/// The volume form published beside `tag` (at [`volume_tag`]), if there is one.
pub async fn find_volume_form(
    target: &Target,
    tag: &str,
    manifest_digest: &Digest,
) -> Result<Option<VolumeForm>, TransferError> {
    let vtag = volume_tag(tag);
    let (media_type, bytes, digest) = match target.fetch_manifest(&vtag).await {
        Ok(found) => found,
        Err(TransferError::Registry(crate::registry::RegistryError::NotFound { .. }))
        | Err(TransferError::Store(crate::store::StoreError::NotFound { .. })) => return Ok(None),
        Err(e) => return Err(e),
    };
    let (of, platforms, platforms_agree) =
        match crate::oci::ManifestKind::parse(Some(&media_type), &bytes)? {
            crate::oci::ManifestKind::Index(index) => {
                let of = index
                    .annotations
                    .get(media::ANNOTATION_VOLUME_OF)
                    .and_then(|d| d.parse::<Digest>().ok());
                let platforms = index
                    .manifests
                    .iter()
                    .map(|d| {
                        d.platform
                            .as_ref()
                            .map_or("unknown".into(), |p| p.to_string())
                    })
                    .collect();
                (of, platforms, platforms_agree(target, &index).await?)
            }
            crate::oci::ManifestKind::Image(m) => (
                m.annotations
                    .get(media::ANNOTATION_VOLUME_OF)
                    .and_then(|d| d.parse::<Digest>().ok()),
                Vec::new(),
                true,
            ),
        };
    Ok(Some(VolumeForm {
        tag: vtag,
        digest,
        current: of.as_ref() == Some(manifest_digest) && platforms_agree,
        of,
        platforms,
        platforms_agree,
    }))
}

/// Do all of the index's manifests list the same layers (each fetched and checked against
/// its digest), each platform once?
async fn platforms_agree(
    target: &Target,
    index: &crate::oci::Index,
) -> Result<bool, TransferError> {
    if index.manifests.len() > MAX_PLATFORMS {
        return Ok(false);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut first: Option<Vec<Digest>> = None;
    for child in &index.manifests {
        let name = child.platform.as_ref().map(|p| p.to_string());
        if !seen.insert(name) {
            return Ok(false);
        }
        let (media_type, bytes, digest) = target.fetch_manifest(child.digest.as_str()).await?;
        if digest != child.digest {
            return Ok(false);
        }
        let crate::oci::ManifestKind::Image(m) =
            crate::oci::ManifestKind::parse(Some(&media_type), &bytes)?
        else {
            return Ok(false);
        };
        let layers: Vec<Digest> = m.layers.iter().map(|l| l.digest.clone()).collect();
        match &first {
            None => first = Some(layers),
            Some(f) if *f != layers => return Ok(false),
            Some(_) => {}
        }
    }
    Ok(true)
}

/// An image's layers must be what its config's `rootfs.diff_ids` says, as containerd checks
/// before it mounts: as many, and each uncompressed tar layer's digest equal to its diff_id
/// (a compressed layer's diff_id names its content, verified only by its own digest here).
/// The check fails closed: a config that is missing, is not its digest's bytes, is over
/// 1 MiB or is not JSON fails it (a form whose config cannot be read is not mountable by
/// containerd either). A config without `rootfs` (not an image containerd could mount) is
/// not checked.
pub(crate) async fn check_diff_ids(
    target: &Target,
    manifest: &crate::oci::Manifest,
) -> Result<(), TransferError> {
    const MAX_CONFIG: u64 = 1 << 20;
    let unreadable = |why: &str| {
        Err(TransferError::DiffIds(format!(
            "the image config {} {why}, so its rootfs.diff_ids cannot be checked",
            manifest.config.digest
        )))
    };
    if manifest.config.size > MAX_CONFIG {
        return unreadable("is over 1 MiB");
    }
    let Some(bytes) = target.small_blob(&manifest.config, MAX_CONFIG).await else {
        return unreadable("is missing or is not the bytes of its digest");
    };
    let Ok(config) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return unreadable("is not JSON");
    };
    let Some(ids) = config.get("rootfs").and_then(|r| r.get("diff_ids")) else {
        return Ok(());
    };
    let mismatch = |detail: String| Err(TransferError::DiffIds(detail));
    let Ok(ids) = serde_json::from_value::<Vec<Digest>>(ids.clone()) else {
        return mismatch("rootfs.diff_ids is not a list of digests".into());
    };
    if ids.len() != manifest.layers.len() {
        return mismatch(format!(
            "rootfs.diff_ids names {} layers, the manifest lists {}",
            ids.len(),
            manifest.layers.len()
        ));
    }
    let uncompressed = |mt: &str| {
        mt == media::OCI_LAYER_TAR || mt == "application/vnd.docker.image.rootfs.diff.tar"
    };
    for (i, (layer, id)) in manifest.layers.iter().zip(&ids).enumerate() {
        if uncompressed(&layer.media_type) && layer.digest != *id {
            return mismatch(format!(
                "layer {i} is {} but rootfs.diff_ids[{i}] says {id}",
                layer.digest
            ));
        }
    }
    Ok(())
}
