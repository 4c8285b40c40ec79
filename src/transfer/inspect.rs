//! What an artifact is: its manifest and model config, its files, whether it has an
//! image-volume form, and which signatures claim to cover it. `hoist inspect` prints it;
//! `hoist.inspect()` returns it as a dict (the JSON of [`Inspection`]).

use crate::digest::Digest;
use crate::oci::{media, LayerPlan, Manifest};
use crate::reference::Reference;

use super::signature::{self, SignatureClaim};
use super::volume::{find_volume_form, VolumeForm};
use super::{Target, TransferError};

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inspection {
    /// What the reference names (an index, if it was one).
    pub digest: Digest,
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    /// The config blob as JSON (`null` when it is not JSON or cannot be read).
    pub config: serde_json::Value,
    /// A layer per entry, named as a pull would place it.
    pub files: Vec<InspectedFile>,
    /// This manifest is itself an image-volume form.
    pub is_image_volume: bool,
    /// The image-volume form published beside the tag, if any.
    pub image_volume: Option<VolumeForm>,
    /// Why whether a volume form exists is unknown (the registry would not say).
    #[serde(skip)]
    pub image_volume_unknown: Option<String>,
    pub signatures: Signatures,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InspectedFile {
    /// The path a pull gives it; `<digest prefix>` for a layer without a name.
    pub path: String,
    pub size: u64,
    pub digest: Digest,
    pub media_type: String,
}

/// Signatures are claims here (no keys): the newest ones, with how many there are.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum Signatures {
    Found {
        total: usize,
        claims: Vec<SignatureClaim>,
    },
    Unknown {
        unknown: String,
    },
}

impl Inspection {
    pub fn is_modelpack(&self) -> bool {
        self.manifest.artifact_type.as_deref() == Some(media::MODELPACK_ARTIFACT)
    }
}

/// Describe what `reference` names in `source`. Only the manifest must be readable: the
/// volume form and the signatures are side notes, unknown when the registry will not say.
pub async fn inspect(
    source: &Target,
    reference: &Reference,
    verification: Option<&crate::sign::Verification>,
) -> Result<Inspection, TransferError> {
    let resolved = source.resolve(&reference.target()).await?;
    let manifest = &resolved.manifest;
    let modelpack = manifest.artifact_type.as_deref() == Some(media::MODELPACK_ARTIFACT);
    let (image_volume, image_volume_unknown) = match (&reference.tag, modelpack) {
        (Some(tag), true) => match find_volume_form(source, tag, &resolved.manifest_digest).await {
            Ok(found) => (found, None),
            Err(e) => (None, Some(e.to_string())),
        },
        _ => (None, None),
    };
    let requirement = match verification {
        Some(v) => v.for_repository(&source.policy_name())?,
        None => None,
    };
    let trust = requirement.as_ref().map(|r| &*r.trust);
    let signatures = match signature::claims(source, &resolved, trust).await {
        Ok((claims, total)) => Signatures::Found { total, claims },
        Err(e) => Signatures::Unknown {
            unknown: e.to_string(),
        },
    };
    Ok(Inspection {
        config: source.config_json(manifest).await,
        files: files_of(manifest),
        is_image_volume: crate::pack::volume::is_volume_form(manifest),
        image_volume,
        image_volume_unknown,
        signatures,
        digest: resolved.digest.clone(),
        manifest_digest: resolved.manifest_digest.clone(),
        manifest: resolved.manifest,
    })
}

fn files_of(manifest: &Manifest) -> Vec<InspectedFile> {
    let plan = LayerPlan::from_manifest(manifest, true).ok();
    manifest
        .layers
        .iter()
        .map(|layer| InspectedFile {
            path: plan
                .as_ref()
                .and_then(|p| p.layers.iter().find(|l| l.descriptor == *layer))
                .map_or_else(
                    || format!("<{}>", &layer.digest.hex()[..12]),
                    |l| l.path.display().to_string(),
                ),
            size: layer.size,
            digest: layer.digest.clone(),
            media_type: layer.media_type.clone(),
        })
        .collect()
}
