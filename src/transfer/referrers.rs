//! The artifact graph: attach an artifact (signature, SBOM, evaluation report) to a model by
//! its `subject`, and discover what is attached. Registries with the referrers API index
//! attachments themselves; for the others (distribution 2.8) we keep the spec's tag fallback,
//! an OCI index tagged `sha256-<hex of the subject>`, as ORAS does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;

use super::{Target, TransferError};
use crate::digest::Digest;
use crate::oci::{media, Descriptor, Index, Manifest, ManifestKind};
use crate::pack::BlobSource;

/// A referrer and what refers to it in turn.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Referrer {
    #[serde(flatten)]
    pub descriptor: Descriptor,
    pub referrers: Vec<Referrer>,
}

/// Push `files` as an artifact whose subject is the manifest `subject_ref` names.
pub async fn attach(
    target: &Target,
    subject_ref: &str,
    files: &[PathBuf],
    artifact_type: &str,
    annotations: BTreeMap<String, String>,
) -> Result<Digest, TransferError> {
    let (subject_type, subject_bytes, subject_digest) = target.fetch_manifest(subject_ref).await?;
    let subject = Descriptor::new(
        crate::store::manifest_media_type(&subject_type, &subject_bytes),
        subject_digest.clone(),
        subject_bytes.len() as u64,
    );
    let empty = Bytes::from_static(b"{}");
    let config = Descriptor::new(media::OCI_EMPTY, Digest::of_bytes(&empty), 2);
    if !target.has_blob(&config).await? {
        target
            .put_blob(&config, &BlobSource::Bytes(empty), None)
            .await?;
    }
    let mut layers = Vec::new();
    for file in files {
        let digest = Digest::of_file(file).map_err(TransferError::io(file))?;
        let size = std::fs::metadata(file)
            .map_err(TransferError::io(file))?
            .len();
        let mut layer = Descriptor::new("application/octet-stream", digest, size);
        let title = file
            .file_name()
            .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
        layer
            .annotations
            .insert(media::ANNOTATION_TITLE.into(), title);
        if !target.has_blob(&layer).await? {
            target
                .put_blob(&layer, &BlobSource::File(file.clone()), None)
                .await?;
        }
        layers.push(layer);
    }
    if layers.is_empty() {
        // The spec's empty layer, so the manifest stays valid for every registry.
        layers.push(config.clone());
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        artifact_type: Some(artifact_type.to_string()),
        config,
        layers,
        subject: Some(subject),
        annotations,
    };
    let bytes = Bytes::from(manifest.to_bytes());
    let digest = Digest::of_bytes(&bytes);
    target
        .put_manifest(None, media::OCI_MANIFEST, &bytes)
        .await?;
    let mut entry = Descriptor::new(media::OCI_MANIFEST, digest.clone(), bytes.len() as u64);
    entry.artifact_type = manifest.artifact_type.clone();
    entry.annotations = manifest.annotations.clone();
    register(target, &subject_digest, entry).await?;
    Ok(digest)
}

/// The tag fallback of registries without the referrers API: add `entry` to the index.
async fn update_fallback_tag(
    target: &Target,
    subject: &Digest,
    entry: Descriptor,
) -> Result<(), TransferError> {
    let tag = format!("sha256-{}", subject.hex());
    let mut index = match target.fetch_manifest(&tag).await {
        Ok((mt, bytes, _)) => match ManifestKind::parse(Some(&mt), &bytes)? {
            ManifestKind::Index(i) => *i,
            ManifestKind::Image(_) => empty_index(),
        },
        Err(TransferError::Registry(crate::registry::RegistryError::NotFound { .. })) => {
            empty_index()
        }
        Err(e) => return Err(e),
    };
    index.manifests.retain(|d| d.digest != entry.digest);
    index.manifests.push(entry);
    let bytes = Bytes::from(serde_json::to_vec(&index).expect("index serialises"));
    target
        .put_manifest(Some(&tag), media::OCI_INDEX, &bytes)
        .await
}

fn empty_index() -> Index {
    Index {
        schema_version: 2,
        media_type: Some(media::OCI_INDEX.into()),
        manifests: Vec::new(),
        artifact_type: None,
        subject: None,
        annotations: Default::default(),
    }
}

/// Most referrers one walk of the graph visits: a hostile registry can make the graph as
/// large (or as cyclic) as it likes.
pub const MAX_REFERRER_NODES: usize = 10_000;

/// What refers to `subject`, through the API or the tag fallback, recursively up to `depth`.
/// Each manifest is visited once (a cycle A→B→A ends at the second A) and the walk stops
/// with an error past [`MAX_REFERRER_NODES`].
pub async fn discover(
    target: &Target,
    subject: &Digest,
    artifact_type: Option<&str>,
    depth: usize,
) -> Result<Vec<Referrer>, TransferError> {
    let mut seen = std::collections::HashSet::from([subject.clone()]);
    walk(target, subject, artifact_type, depth, &mut seen).await
}

async fn walk(
    target: &Target,
    subject: &Digest,
    artifact_type: Option<&str>,
    depth: usize,
    seen: &mut std::collections::HashSet<Digest>,
) -> Result<Vec<Referrer>, TransferError> {
    let direct = list(target, subject, artifact_type).await?;
    let mut out = Vec::with_capacity(direct.len().min(MAX_REFERRER_NODES));
    for descriptor in direct {
        if !seen.insert(descriptor.digest.clone()) {
            continue; // already in the tree: a cycle or a repeat
        }
        if seen.len() > MAX_REFERRER_NODES {
            return Err(crate::oci::OciError::TooManyReferrers(MAX_REFERRER_NODES).into());
        }
        let referrers = if depth > 1 {
            Box::pin(walk(target, &descriptor.digest, None, depth - 1, seen)).await?
        } else {
            Vec::new()
        };
        out.push(Referrer {
            descriptor,
            referrers,
        });
    }
    Ok(out)
}

/// The direct referrers of `subject` (one level, of `artifact_type` if given): bounded by the
/// size of the listing the registry may send, not by the walk's node count.
pub(super) async fn list(
    target: &Target,
    subject: &Digest,
    artifact_type: Option<&str>,
) -> Result<Vec<Descriptor>, TransferError> {
    let mut list = match target.indexed_referrers(subject, artifact_type).await? {
        Some(list) => list,
        None => match target
            .fetch_manifest(&format!("sha256-{}", subject.hex()))
            .await
        {
            Ok((mt, bytes, _)) => match ManifestKind::parse(Some(&mt), &bytes)? {
                ManifestKind::Index(i) => i.manifests,
                ManifestKind::Image(_) => Vec::new(),
            },
            Err(TransferError::Registry(crate::registry::RegistryError::NotFound { .. })) => {
                Vec::new()
            }
            Err(e) => return Err(e),
        },
    };
    if let Some(t) = artifact_type {
        list.retain(|d| d.artifact_type.as_deref() == Some(t));
    }
    Ok(list)
}

/// Make `dst` list `entry` as a referrer of `subject`, if it does not index subjects itself.
pub(super) async fn register(
    dst: &Target,
    subject: &Digest,
    entry: Descriptor,
) -> Result<(), TransferError> {
    // The store indexed it when its manifest was put; a registry with the referrers API
    // indexes it itself.
    if dst.indexed_referrers(subject, None).await?.is_none() {
        update_fallback_tag(dst, subject, entry).await?;
    }
    Ok(())
}
