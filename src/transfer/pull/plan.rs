//! The pull's plan: which files, from which blobs, and what is refused before any download
//! (names that leave the folder or reach hoist's own, files of the user's the pull would
//! replace).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::digest::Digest;
use crate::materialize::Staging;
use crate::oci::{Descriptor, FileLayer, LayerFormat, LayerPlan};
use crate::store::Store;
use crate::transfer::{PullOptions, TransferError};

/// One distinct blob and the files that come from it.
pub(super) struct BlobJob<'a> {
    pub(super) descriptor: &'a Descriptor,
    pub(super) layers: Vec<(usize, &'a FileLayer)>,
}

/// The files to pull into `out`: every layer (by name, or by digest with `raw`), narrowed by
/// the filter, with no name that could leave the folder or reach hoist's own state (where
/// versioned pulls run, `current` is theirs too).
pub(super) fn plan_for(
    manifest: &crate::oci::Manifest,
    out: &Path,
    opts: &PullOptions,
) -> Result<LayerPlan, TransferError> {
    let mut plan = if opts.raw {
        LayerPlan::by_digest(manifest)
    } else {
        LayerPlan::from_manifest(manifest, opts.allow_path_traversal)?
    };
    if !opts.filter.is_empty() {
        let all: Vec<String> = plan
            .layers
            .iter()
            .map(|l| l.path.display().to_string())
            .collect();
        plan.layers.retain(|l| opts.filter.keeps(l));
        if plan.layers.is_empty() {
            return Err(TransferError::NothingSelected(all.join(", ")));
        }
    }
    for layer in &plan.layers {
        let leaves = || {
            crate::reserved::refusal(&layer.path).is_some()
                || layer.path.is_absolute()
                || layer
                    .path
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
        };
        let why = match opts.allow_path_traversal && leaves() {
            true => Some(
                "hoist never writes outside the output folder, even with --allow-path-traversal",
            ),
            false => crate::reserved::refusal_in(out, &layer.path),
        };
        if let Some(why) = why {
            return Err(crate::oci::OciError::UnsafePath {
                digest: layer.descriptor.digest.to_string(),
                path: layer.path.display().to_string(),
                why,
            }
            .into());
        }
    }
    Ok(plan)
}

/// A file of the plan that would replace one of the user's (no pull placed it, and it holds
/// other bytes) is refused now, before any download, rather than at the commit. (A tar
/// layer's names are known only once it is downloaded; the commit checks those.)
pub(super) async fn refuse_foreign_files(
    staging: &Arc<Staging>,
    plan: &LayerPlan,
) -> Result<(), TransferError> {
    let raw: Vec<(PathBuf, Digest, u64)> = plan
        .layers
        .iter()
        .filter(|l| l.format == LayerFormat::Raw)
        .map(|l| {
            (
                l.path.clone(),
                l.descriptor.digest.clone(),
                l.descriptor.size,
            )
        })
        .collect();
    let checking = staging.clone();
    let foreign: Vec<String> = tokio::task::spawn_blocking(move || {
        raw.iter()
            .filter(|(rel, digest, size)| checking.would_replace_foreign(rel, digest, *size))
            .map(|(rel, _, _)| rel.display().to_string())
            .collect()
    })
    .await
    .expect("check task does not panic");
    match foreign.is_empty() {
        true => Ok(()),
        false => Err(crate::materialize::MaterializeError::WouldOverwrite {
            out: staging.out().to_path_buf(),
            files: foreign,
        }
        .into()),
    }
}

/// The bytes of the plan's blobs that are neither in the folder (as its record vouches, no
/// hashing) nor in the node cache: what the pull will fetch, at most.
pub(super) async fn bytes_to_fetch(out: &Path, plan: &LayerPlan, cache: Option<&Store>) -> u64 {
    let wanted: Vec<(PathBuf, Descriptor, bool)> = plan
        .layers
        .iter()
        .map(|l| {
            (
                l.path.clone(),
                l.descriptor.clone(),
                l.format == LayerFormat::Raw,
            )
        })
        .collect();
    let (out, cache) = (out.to_path_buf(), cache.cloned());
    tokio::task::spawn_blocking(move || {
        let record = crate::materialize::Record::load(&out);
        let mut seen = BTreeSet::new();
        wanted
            .iter()
            .filter(|(path, desc, raw)| !(*raw && record.vouches(&out, path, &desc.digest)))
            .filter(|(_, desc, _)| seen.insert(desc.digest.clone()))
            .filter(|(_, desc, _)| {
                cache
                    .as_ref()
                    .is_none_or(|c| c.blob_size(&desc.digest).is_none())
            })
            .map(|(_, desc, _)| desc.size)
            .sum()
    })
    .await
    .unwrap_or(u64::MAX)
}

/// One job per distinct blob, with every file that comes from it.
pub(super) fn blob_jobs(plan: &LayerPlan) -> Vec<BlobJob<'_>> {
    let mut jobs: Vec<BlobJob> = Vec::new();
    let mut by_digest: BTreeMap<&Digest, usize> = BTreeMap::new();
    for (index, layer) in plan.layers.iter().enumerate() {
        let slot = *by_digest
            .entry(&layer.descriptor.digest)
            .or_insert_with(|| {
                jobs.push(BlobJob {
                    descriptor: &layer.descriptor,
                    layers: Vec::new(),
                });
                jobs.len() - 1
            });
        jobs[slot].layers.push((index, layer));
    }
    jobs
}
