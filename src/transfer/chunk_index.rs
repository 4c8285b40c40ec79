//! The chunk index as a referrer: attached beside an artifact when it is pushed, looked up
//! when a version is pulled. Publishing and finding the index live here, below both the push
//! and the delta step of a pull that reads it (see `delta`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::chunks::MAX_INDEX_BYTES;
pub use crate::chunks::{ChunkIndex, INDEX_TYPE};

use super::{Target, TransferError};
use crate::digest::Digest;

/// Attach `index` to the manifest `subject` as a referrer; its digest.
pub async fn attach_index(
    target: &Target,
    subject: &Digest,
    index: &ChunkIndex,
    scratch: &Path,
) -> Result<Digest, TransferError> {
    let path = scratch.join("chunk-index.json");
    let bytes = serde_json::to_vec(index).expect("index serialises");
    std::fs::write(&path, bytes).map_err(TransferError::io(&path))?;
    super::attach(
        target,
        subject.as_str(),
        &[path],
        INDEX_TYPE,
        BTreeMap::new(),
    )
    .await
}

/// The chunk index attached to `manifest`, if there is a readable one.
pub async fn find_index(target: &Target, manifest: &Digest) -> Option<ChunkIndex> {
    let referrers = super::discover(target, manifest, Some(INDEX_TYPE), 1)
        .await
        .ok()?;
    for referrer in referrers {
        let (_, bytes, _) = target
            .fetch_manifest(referrer.descriptor.digest.as_str())
            .await
            .ok()?;
        let Ok(crate::oci::ManifestKind::Image(m)) = crate::oci::ManifestKind::parse(None, &bytes)
        else {
            continue;
        };
        let Some(layer) = m.layers.first().filter(|l| l.size <= MAX_INDEX_BYTES) else {
            continue;
        };
        let Some(bytes) = target.small_blob(layer, MAX_INDEX_BYTES).await else {
            continue;
        };
        match serde_json::from_slice::<ChunkIndex>(&bytes) {
            Ok(index) if index.compatible() => return Some(index),
            _ => continue,
        }
    }
    None
}

/// The artifact's chunk index, looked up for at most [`LOOKUP_TIMEOUT`]; `None` when the
/// target is not a registry or has none.
pub async fn lookup(target: &Target, manifest: &Digest) -> Option<ChunkIndex> {
    if !target.is_remote() {
        return None;
    }
    tokio::time::timeout(LOOKUP_TIMEOUT, find_index(target, manifest))
        .await
        .ok()?
}

/// How long finding and reading an index may take before the pull goes on without it.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
