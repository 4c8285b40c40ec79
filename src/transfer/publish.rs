//! `hoist push` whole, for the CLI and the Python package alike: options checked and the
//! signing key read before anything is sent, the folder packed and pushed, its image-volume
//! form beside it when asked, the signature attached last (it signs the manifest pushed).

use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::pack::PackOptions;
use crate::reference::valid_repository;

use super::push::{push_folder, PushOptions, PushReport};
use super::volume::{push_volume_beside, volume_tag};
use super::{Observer, Target, TransferError};

#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    pub pack: PackOptions,
    pub push: PushOptions,
    /// Also publish the image-volume form under `TAG-volume` for each tag.
    pub image_volume: bool,
    /// Sign the pushed model with this EC private key (PEM).
    pub sign_key: Option<PathBuf>,
    /// The signing key's certificate (PEM), to sign with a certificate chain.
    pub sign_cert: Option<PathBuf>,
    /// Intermediate certificates (PEM) after it in the bundle.
    pub sign_cert_chain: Vec<PathBuf>,
}

#[derive(Debug, serde::Serialize)]
pub struct Published {
    #[serde(flatten)]
    pub report: PushReport,
    pub files: usize,
    pub bytes: u64,
    /// The image-volume form, when asked for.
    pub image_volume: Option<PushReport>,
    /// The signature referrer attached, when a key was given.
    pub signature: Option<Digest>,
}

/// Publish `dir` to `target` under `tags`. A local store target packs its tar layers in the
/// store's ingest area (same filesystem) unless `opts.pack.temp_dir` says otherwise.
pub async fn publish(
    dir: &Path,
    target: &Target,
    tags: &[String],
    opts: &PublishOptions,
    observer: Observer,
) -> Result<Published, TransferError> {
    if let Some(bad) = opts.push.mount_from.iter().find(|r| !valid_repository(r)) {
        return Err(TransferError::Refused(format!(
            "--mount-from {bad:?} is not a repository name (e.g. team/model)"
        )));
    }
    if opts.image_volume && tags.is_empty() {
        return Err(TransferError::Refused(
            "--image-volume names its form after the tag: push with a tag".into(),
        ));
    }
    // Read first: a bad key stops the push before anything is uploaded.
    let signing_key = match &opts.sign_key {
        Some(path) => Some(crate::sign::SigningKey::load(
            path,
            opts.sign_cert.as_deref(),
            &opts.sign_cert_chain,
        )?),
        None => None,
    };
    let mut pack = opts.pack.clone();
    if let (None, Some(store)) = (&pack.temp_dir, target.local_store()) {
        pack.temp_dir = Some(store.root().join("ingest"));
    }
    let (packed, report) =
        push_folder(dir, &pack, target, tags, &opts.push, observer.clone()).await?;
    let files = packed.manifest.layers.len();
    let bytes = packed.manifest.layers.iter().map(|l| l.size).sum();
    let image_volume = match opts.image_volume {
        true => {
            let vtags: Vec<String> = tags.iter().map(|t| volume_tag(t)).collect();
            let (_, vreport) =
                push_volume_beside(packed, dir, &pack, target, &vtags, &opts.push, observer)
                    .await?;
            Some(vreport)
        }
        false => None,
    };
    let signature = match &signing_key {
        Some(key) => Some(
            super::signature::sign(target, report.digest.as_str(), key, &folder_name(dir)).await?,
        ),
        None => None,
    };
    Ok(Published {
        report,
        files,
        bytes,
        image_volume,
        signature,
    })
}

/// The folder's own name (what a signature calls the model), `model` when it has none.
pub fn folder_name(dir: &Path) -> String {
    std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into())
}
