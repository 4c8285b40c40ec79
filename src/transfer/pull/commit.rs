//! The end of a pull: every staged file placed in one checked step (or the staging given up),
//! the chunk lists remembered for the next version, and the cache's stamps renewed.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use super::obtain::JobResult;
use crate::digest::Digest;
use crate::materialize::{LinkMode, Staged, Staging};
use crate::oci::{LayerFormat, LayerPlan};
use crate::store::Store;
use crate::transfer::{Action, PullOptions, Target, TransferError};

/// Remember how this version's blobs are cut (from its index) beside them: in the folder's
/// record for the files placed, and in the node cache for the blobs it holds. The next
/// version's pull then finds its chunks without reading any file.
pub(super) async fn remember_chunks(
    index: &crate::chunks::ChunkIndex,
    plan: &LayerPlan,
    staging: &Arc<Staging>,
    cache: Option<&Store>,
) {
    let raw = plan.layers.iter().filter(|l| l.format == LayerFormat::Raw);
    let known = super::super::delta::known_chunks(index, raw.map(|l| &l.descriptor));
    if let Some(store) = cache.cloned() {
        let known = known.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (digest, chunks) in &known {
                if store.blob_size(digest).is_some() {
                    store.remember_chunks(digest, chunks);
                }
            }
        })
        .await;
    }
    staging.remember_chunks(known);
}

/// Place everything staged, in the manifest's layer order, as one checked plan.
pub(super) async fn commit(
    staging: Arc<Staging>,
    results: &[JobResult],
    overwrite: bool,
    version: Option<BTreeSet<PathBuf>>,
) -> Result<crate::materialize::LinkCounts, TransferError> {
    // Every blob task finished (each awaited its unpacking), so this is the last handle.
    let staging = Arc::into_inner(staging).expect("all blob tasks finished");
    let mut items: Vec<(usize, Vec<Staged>)> = results
        .iter()
        .flat_map(|r| r.items.iter().cloned())
        .collect();
    items.sort_by_key(|(index, _)| *index);
    let items: Vec<Staged> = items.into_iter().flat_map(|(_, s)| s).collect();
    // The version's files: its raw layers (placed now or already in place) and what its tar
    // layers unpacked.
    let version = version.map(|mut files| {
        files.extend(items.iter().filter_map(|i| match i {
            Staged::File { relative, .. } => Some(relative.clone()),
            _ => None,
        }));
        files
    });
    let staging = Arc::new(staging);
    let committing = staging.clone();
    let committed =
        tokio::task::spawn_blocking(move || committing.commit(&items, overwrite, version.as_ref()))
            .await
            .expect("commit task does not panic");
    match committed {
        Ok(counts) => Ok(counts),
        Err(e) => Err(give_up(staging, e.into()).await),
    }
}

/// A hard link moves the store blob's change time; its bytes were checked just before, so
/// its stamp is renewed.
pub(super) async fn restamp_links(source: &Target, opts: &PullOptions, results: &[JobResult]) {
    if opts.link_mode != LinkMode::Hardlink {
        return;
    }
    let store = match (source.local_store(), &opts.cache) {
        (Some(store), _) | (_, Some(store)) => store.clone(),
        _ => return,
    };
    let linked: Vec<Digest> = results
        .iter()
        .filter(|r| r.action != Action::Skipped)
        .map(|r| r.digest.clone())
        .collect();
    tokio::task::spawn_blocking(move || linked.iter().for_each(|d| store.restamp_after_link(d)))
        .await
        .expect("restamp task does not panic");
}

/// End a failed pull: bad content wipes the state folder (and `-o` if this pull made it);
/// other failures keep what was downloaded, trimmed to the finished ranges, and say where.
pub(super) async fn give_up(staging: Arc<Staging>, e: TransferError) -> TransferError {
    let wipe = !e.is_resumable();
    tokio::task::spawn_blocking(move || {
        if !wipe {
            super::super::fetch::trim_parts(staging.dir());
        }
        staging.abort(wipe);
        match staging.kept() {
            Some((kept, kept_bytes)) if !wipe => TransferError::Interrupted {
                source: Box::new(e),
                kept,
                kept_bytes,
            },
            _ => e,
        }
    })
    .await
    .expect("abort task does not panic")
}
