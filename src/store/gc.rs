//! Garbage collection: delete blobs that no tag reaches (through manifests, indexes and
//! referrers), sparing blobs younger than a grace period so that a push in progress — whose
//! blobs arrive before the manifest that names them — loses nothing.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use super::{Store, StoreError};
use crate::digest::Digest;
use crate::oci::{ManifestKind, MAX_MANIFEST_BYTES};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    pub kept: usize,
    pub removed: usize,
    pub removed_bytes: u64,
    /// Unreferenced, but younger than the grace period.
    pub spared: usize,
}

/// What `hoist gc --verify` found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub checked: usize,
    /// Blobs whose bytes no longer matched their digest (removed).
    pub corrupt: Vec<Digest>,
}

impl Store {
    /// Hash every blob (stamps are not trusted here) and remove those that are corrupt.
    pub fn verify_all(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        for (digest, _, _) in self.blobs_by_age() {
            let _ = std::fs::remove_file(self.stamp_path(&digest));
            let size = std::fs::symlink_metadata(self.blob_path(&digest))
                .map(|m| m.len())
                .unwrap_or(0);
            report.checked += 1;
            match self.check_blob(&digest, size) {
                Err(StoreError::Corrupt { .. }) => report.corrupt.push(digest),
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
        Ok(report)
    }

    pub fn gc(&self, grace: Duration) -> Result<GcReport, StoreError> {
        let roots: Vec<Digest> = self.list()?.into_iter().map(|(_, d)| d.digest).collect();
        let live = self.closure(roots)?;
        let now = SystemTime::now();
        let mut report = GcReport::default();
        for (digest, size, modified) in self.blobs_by_age() {
            if live.contains(&digest) {
                report.kept += 1;
            } else if now.duration_since(modified).unwrap_or_default() < grace {
                report.spared += 1;
            } else if self.delete_blob(&digest)? {
                report.removed += 1;
                report.removed_bytes += size;
            }
        }
        Ok(report)
    }

    /// Every blob the `roots` reach: what manifests and indexes name, and their referrers.
    pub(crate) fn closure(&self, roots: Vec<Digest>) -> Result<BTreeSet<Digest>, StoreError> {
        let mut live = BTreeSet::new();
        let mut todo = roots;
        while let Some(digest) = todo.pop() {
            if !live.insert(digest.clone()) {
                continue;
            }
            // Manifests keep what they name; referrers of a live manifest stay live too.
            for referrer in self.referrers(&digest)? {
                todo.push(referrer.digest);
            }
            let Ok(bytes) = self.read_blob(&digest, MAX_MANIFEST_BYTES) else {
                continue;
            };
            match ManifestKind::parse(None, &bytes) {
                Ok(ManifestKind::Image(m)) => todo.extend(m.blobs().map(|d| d.digest.clone())),
                Ok(ManifestKind::Index(i)) => {
                    todo.extend(i.manifests.iter().map(|d| d.digest.clone()))
                }
                Err(_) => {}
            }
        }
        Ok(live)
    }
}
