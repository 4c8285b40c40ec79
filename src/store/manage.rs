//! `hoist rm`, `hoist tag` and `hoist prune`: removing a model from the local store (its tag,
//! the repository's links and the blobs nothing else uses), giving one another name, and
//! keeping only the newest versions of each repository.

use std::collections::BTreeSet;

use super::{LinkKind, Store, StoreError};
use crate::digest::Digest;
use crate::oci::Descriptor;

/// What [`Store::remove`] did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Removed {
    pub manifest: Option<Digest>,
    /// `repo:tag` names removed.
    pub tags: Vec<String>,
    /// Blobs deleted because no remaining tag reaches them.
    pub freed_blobs: usize,
    pub freed_bytes: u64,
}

/// Which versions [`Store::prune`] keeps.
#[derive(Debug, Clone, Copy, Default)]
pub struct Keep {
    /// The newest N versions of each repository (a version: a manifest, with all its tags).
    pub newest: Option<usize>,
    /// Versions tagged within this long.
    pub younger_than: Option<std::time::Duration>,
}

/// What [`Store::prune`] did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Pruned {
    /// `repo@digest` of every version removed, with its tags.
    pub versions: Vec<Removed>,
    pub freed_blobs: usize,
    pub freed_bytes: u64,
}

impl Store {
    /// Remove every version that `keep` does not keep: those past the newest N of their
    /// repository, and those last tagged longer ago than the age given. A version is as new
    /// as its newest tag. Blobs another kept version uses stay.
    pub fn prune(&self, keep: Keep) -> Result<Pruned, StoreError> {
        let now = std::time::SystemTime::now();
        let mut by_repo: std::collections::BTreeMap<String, Vec<(Digest, std::time::SystemTime)>> =
            Default::default();
        for (name, desc) in self.list()? {
            let Some((repo, tag)) = name.rsplit_once(':') else {
                continue;
            };
            let at = super::tags::set_at(self, repo, tag).unwrap_or(std::time::UNIX_EPOCH);
            let versions = by_repo.entry(repo.to_string()).or_default();
            match versions.iter_mut().find(|(d, _)| *d == desc.digest) {
                Some((_, newest)) => *newest = (*newest).max(at),
                None => versions.push((desc.digest, at)),
            }
        }
        let mut pruned = Pruned::default();
        for (repo, mut versions) in by_repo {
            versions.sort_by_key(|v| std::cmp::Reverse(v.1));
            for (rank, (digest, at)) in versions.into_iter().enumerate() {
                let too_many = keep.newest.is_some_and(|n| rank >= n);
                let too_old = keep
                    .younger_than
                    .is_some_and(|age| now.duration_since(at).unwrap_or_default() > age);
                if too_many || too_old {
                    let removed = self.remove(&repo, None, Some(&digest))?;
                    pruned.freed_blobs += removed.freed_blobs;
                    pruned.freed_bytes += removed.freed_bytes;
                    pruned.versions.push(removed);
                }
            }
        }
        Ok(pruned)
    }

    /// The manifest `repository` names by `tag` or `digest` (a digest must be linked there).
    pub fn find(
        &self,
        repository: &str,
        tag: Option<&str>,
        digest: Option<&Digest>,
    ) -> Result<Descriptor, StoreError> {
        let missing = || StoreError::NotFound {
            reference: match (tag, digest) {
                (_, Some(d)) => format!("{repository}@{d}"),
                (Some(t), None) => format!("{repository}:{t}"),
                (None, None) => format!("{repository}:latest"),
            },
            root: self.root.clone(),
        };
        match digest {
            Some(d) => {
                if !self.is_linked(repository, LinkKind::Manifest, d) {
                    return Err(missing());
                }
                let bytes = self
                    .read_blob(d, crate::oci::MAX_MANIFEST_BYTES)
                    .map_err(|_| missing())?;
                use crate::oci::{media, ManifestKind};
                let media_type = match ManifestKind::parse(None, &bytes) {
                    Ok(ManifestKind::Index(i)) => {
                        i.media_type.unwrap_or_else(|| media::OCI_INDEX.to_string())
                    }
                    Ok(ManifestKind::Image(m)) => m.media_type().to_string(),
                    Err(_) => return Err(missing()),
                };
                Ok(Descriptor::new(&media_type, d.clone(), bytes.len() as u64))
            }
            None => self.resolve(repository, tag.unwrap_or("latest")),
        }
    }

    /// Give the manifest `source` names another name `repository:tag`, linking everything it
    /// names into `repository`. No blob is copied.
    pub fn tag_as(
        &self,
        source: &Descriptor,
        repository: &str,
        tag: &str,
    ) -> Result<(), StoreError> {
        self.link_closure(repository, &source.digest)?;
        self.tag(repository, tag, source)
    }

    /// Remove `repository:tag` (or, by digest, every tag of `repository` that points at it).
    /// When nothing in `repository` names that manifest any more, its links there go too, and
    /// the blobs it reached that no remaining tag reaches are deleted: blobs another model
    /// shares stay. Removing is immediate; a push of the same blobs running at that moment
    /// may have to upload them again.
    pub fn remove(
        &self,
        repository: &str,
        tag: Option<&str>,
        digest: Option<&Digest>,
    ) -> Result<Removed, StoreError> {
        let manifest = self.find(repository, tag, digest)?;
        let mut removed = Removed {
            manifest: Some(manifest.digest.clone()),
            ..Default::default()
        };
        match (digest, tag) {
            (Some(d), _) => {
                for t in self.tags(repository)? {
                    if self.resolve(repository, &t)?.digest == *d && self.untag(repository, &t)? {
                        removed.tags.push(format!("{repository}:{t}"));
                    }
                }
            }
            (None, t) => {
                let t = t.unwrap_or("latest");
                if self.untag(repository, t)? {
                    removed.tags.push(format!("{repository}:{t}"));
                }
            }
        }
        let gone = self.closure(vec![manifest.digest.clone()])?;
        let still_here: Vec<Digest> = self
            .tags(repository)?
            .iter()
            .filter_map(|t| self.resolve(repository, t).ok())
            .map(|d| d.digest)
            .collect();
        if !still_here.contains(&manifest.digest) {
            let kept_here = self.closure(still_here)?;
            for d in gone.difference(&kept_here) {
                self.unlink(repository, LinkKind::Manifest, d)?;
                self.unlink(repository, LinkKind::Blob, d)?;
            }
        }
        let roots: Vec<Digest> = self.list()?.into_iter().map(|(_, d)| d.digest).collect();
        let live: BTreeSet<Digest> = self.closure(roots)?;
        for d in gone.difference(&live) {
            let size = self.blob_size(d).unwrap_or(0);
            if self.delete_blob(d)? {
                removed.freed_blobs += 1;
                removed.freed_bytes += size;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prune_keeps_the_newest_versions_of_each_repository() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = model(&store, "m", "v1", &[b"shared", b"v1 only"]);
        // Tag times are file times: make v1 clearly older.
        let tag_file = dir.path().join("repositories/m/_tags/v1");
        let f = std::fs::File::options()
            .write(true)
            .open(&tag_file)
            .unwrap();
        f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
            .unwrap();
        let new = model(&store, "m", "v2", &[b"shared", b"v2 only"]);
        store.tag_as(&new, "m", "latest").unwrap();
        let other = model(&store, "other", "v1", &[b"other"]);
        let pruned = store
            .prune(Keep {
                newest: Some(1),
                younger_than: None,
            })
            .unwrap();
        assert_eq!(pruned.versions.len(), 1, "{pruned:?}");
        assert_eq!(pruned.versions[0].manifest.as_ref(), Some(&old.digest));
        assert!(store.resolve("m", "v1").is_err());
        assert_eq!(store.resolve("m", "v2").unwrap().digest, new.digest);
        assert_eq!(store.resolve("m", "latest").unwrap().digest, new.digest);
        assert_eq!(store.resolve("other", "v1").unwrap().digest, other.digest);
        assert!(store.blob_size(&Digest::of_bytes(b"v1 only")).is_none());
        assert!(store.blob_size(&Digest::of_bytes(b"shared")).is_some());
        // By age: nothing here is a day old; everything is older than zero seconds.
        let day = Keep {
            newest: None,
            younger_than: Some(std::time::Duration::from_secs(86400)),
        };
        assert!(store.prune(day).unwrap().versions.is_empty());
        let none = Keep {
            newest: None,
            younger_than: Some(std::time::Duration::ZERO),
        };
        assert_eq!(store.prune(none).unwrap().versions.len(), 2);
        assert!(store.list().unwrap().is_empty());
    }

    use super::*;
    use crate::oci::{media, Manifest};

    /// A manifest with the given layers stored, tagged `repo:tag`.
    fn model(store: &Store, repo: &str, tag: &str, layers: &[&[u8]]) -> Descriptor {
        let config = Descriptor::new(media::OCI_EMPTY, Digest::of_bytes(b"{}"), 2);
        store.put_bytes(&config, b"{}").unwrap();
        let layers: Vec<Descriptor> = layers
            .iter()
            .map(|bytes| {
                let d = Descriptor::new(
                    "application/octet-stream",
                    Digest::of_bytes(bytes),
                    bytes.len() as u64,
                );
                store.put_bytes(&d, bytes).unwrap();
                d
            })
            .collect();
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.into()),
            artifact_type: None,
            config,
            layers,
            subject: None,
            annotations: Default::default(),
        };
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let desc = Descriptor::new(
            media::OCI_MANIFEST,
            Digest::of_bytes(&bytes),
            bytes.len() as u64,
        );
        store.put_bytes(&desc, &bytes).unwrap();
        store.tag_as(&desc, repo, tag).unwrap();
        desc
    }

    #[test]
    fn remove_frees_only_what_no_other_tag_reaches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let v1 = model(&store, "m", "v1", &[b"shared", b"only-v1"]);
        let v2 = model(&store, "m", "v2", &[b"shared", b"only-v2"]);
        let removed = store.remove("m", Some("v1"), None).unwrap();
        assert_eq!(removed.tags, vec!["m:v1".to_string()]);
        // v1's manifest and its own layer are gone; the shared layer and v2 stay whole.
        assert!(store.blob_size(&v1.digest).is_none());
        assert!(store.blob_size(&Digest::of_bytes(b"only-v1")).is_none());
        assert_eq!(removed.freed_blobs, 2);
        assert!(store.blob_size(&Digest::of_bytes(b"shared")).is_some());
        assert_eq!(store.resolve("m", "v2").unwrap().digest, v2.digest);
        assert!(store.is_linked("m", LinkKind::Blob, &Digest::of_bytes(b"shared")));
        assert!(!store.is_linked("m", LinkKind::Manifest, &v1.digest));
        assert!(matches!(
            store.remove("m", Some("v1"), None),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn a_second_name_keeps_the_blobs_and_removing_by_digest_takes_every_tag() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let v1 = model(&store, "m", "v1", &[b"weights"]);
        store.tag_as(&v1, "m", "latest").unwrap();
        store.tag_as(&v1, "other", "prod").unwrap();
        let removed = store.remove("m", None, Some(&v1.digest)).unwrap();
        let mut tags = removed.tags.clone();
        tags.sort();
        assert_eq!(tags, vec!["m:latest".to_string(), "m:v1".to_string()]);
        // other:prod still reaches everything.
        assert_eq!(removed.freed_blobs, 0);
        assert_eq!(store.resolve("other", "prod").unwrap().digest, v1.digest);
        assert!(store.blob_size(&Digest::of_bytes(b"weights")).is_some());
    }
}
