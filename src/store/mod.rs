//! The local store: an OCI image layout folder (`oci-layout`, `index.json`, `blobs/sha256/…`)
//! that any OCI tool can read (`skopeo copy oci:DIR:ref`), plus `ingest/` for blobs being
//! written. It is hoist's embedded default and, later, the node cache.
//!
//! Hand-written because it is the product's core: blobs become visible only by a rename after
//! their digest and size are checked, and tag updates are serialised by a file lock so that
//! concurrent `hoist` processes on one node cannot lose each other's tags.
//!
//! Where each part lives: this file holds the store's type, its opening and the repository
//! links (which blobs a repository may serve) and referrer lists; `blobs` how blobs arrive,
//! are read, aged and deleted; `stamps` when a blob is trusted without hashing it again;
//! `tags` the tags and `index.json`; `manifests` what a manifest must be to be stored;
//! `gc`, `manage` (rm, prune, list) and `pushed` build on those.

mod blobs;
mod gc;
mod manage;
mod manifests;
pub mod owner;
mod pushed;
mod stamps;
#[cfg(test)]
mod suite;
mod tags;
pub use tags::Listed;

pub use gc::{GcReport, VerifyReport};
pub use manage::{Keep, Pruned, Removed};
pub use manifests::{manifest_media_type, Holding, ManifestRejected, PutManifest};

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::oci::Descriptor;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("local store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{reference} is not in the local store {root} (see `hoist list`){}",
        registry_hint(reference)
    )]
    NotFound { reference: String, root: PathBuf },
    #[error("there is no hoist store at {root} (check --store or HOIST_HOME)")]
    Missing { root: PathBuf },
    #[error(transparent)]
    Manifest(#[from] ManifestRejected),
    #[error("blob {expected} failed verification: got {actual} ({size} bytes, expected {expected_size}); the source is corrupt or was tampered with")]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
        expected_size: u64,
    },
    #[error("local store index {path} is corrupt: {source}")]
    CorruptIndex {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("blob {digest} in the local store is corrupt: its bytes hash to {actual} (a file placed with --link-mode hardlink may have been edited); it was removed from {root}, pull or push it again (`hoist gc --verify` checks every blob)")]
    Corrupt {
        digest: Digest,
        actual: Digest,
        root: PathBuf,
    },
}

/// What a repository link points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Blob,
    Manifest,
}

/// What [`Store::check_blob`] found.
#[derive(Debug)]
pub enum BlobCheck {
    /// Present with the expected size and bytes known to be good.
    Good(PathBuf),
    Missing,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Tag changes not yet in `index.json` (see `tags`); `None`: written at once.
    deferred: Option<tags::Pending>,
}

impl Store {
    /// `$HOIST_HOME`, else `$XDG_DATA_HOME/hoist`, else `~/.local/share/hoist`.
    pub fn default_root() -> PathBuf {
        if let Some(home) = std::env::var_os("HOIST_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(home);
        }
        if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(data).join("hoist");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        home.join(".local/share/hoist")
    }

    /// Open (creating if needed) a store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        let linked = root.join("repositories").is_dir();
        for dir in [root.join("blobs/sha256"), root.join("ingest")] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        if !linked {
            // A store from before per-repository links: link what its tags reach.
            fs::create_dir_all(root.join("repositories")).map_err(io_err(&root))?;
            let store = Store {
                root: root.clone(),
                deferred: None,
            };
            if let Ok(tags) = store.list() {
                let mut linked = std::collections::HashSet::new();
                for (name, desc) in tags {
                    if let Some((repo, tag)) = name.rsplit_once(':') {
                        if linked.insert((repo.to_string(), desc.digest.clone())) {
                            let _ = store.link_closure(repo, &desc.digest);
                        }
                        let _ = tags::write_file(&store, repo, tag, &desc, false);
                    }
                }
                // One sync for the whole migration instead of one per file.
                if let Ok(dir) = File::open(&root) {
                    let _ = rustix::fs::syncfs(&dir);
                }
            }
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = root.join("index.json");
        if !index.exists() {
            write_atomic(&index, br#"{"schemaVersion":2,"manifests":[]}"#)?;
        }
        let store = Store {
            root,
            deferred: None,
        };
        tags::recover(&store)?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The link that says `repository` holds blob or manifest `digest`. Content is stored
    /// once (deduplicated); what a repository may read, mount or delete is its own links.
    fn link_path(&self, repository: &str, kind: LinkKind, digest: &Digest) -> PathBuf {
        let kind = match kind {
            LinkKind::Blob => "_blobs",
            LinkKind::Manifest => "_manifests",
        };
        let mut p = self.root.join("repositories");
        p.extend(repository.split('/'));
        p.join(kind).join(digest.hex())
    }

    /// Record that `repository` holds `digest`.
    pub fn link(
        &self,
        repository: &str,
        kind: LinkKind,
        digest: &Digest,
    ) -> Result<(), StoreError> {
        if !crate::reference::valid_repository(repository) {
            return Err(StoreError::Io {
                path: self.root.join("repositories"),
                source: io::Error::other(format!("{repository:?} is not a repository name")),
            });
        }
        let path = self.link_path(repository, kind, digest);
        let dir = path.parent().expect("link has a folder");
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        File::create(&path).map_err(io_err(&path))?;
        Ok(())
    }

    /// Does `repository` hold `digest`?
    pub fn is_linked(&self, repository: &str, kind: LinkKind, digest: &Digest) -> bool {
        crate::reference::valid_repository(repository)
            && self.link_path(repository, kind, digest).is_file()
    }

    /// Remove `repository`'s link to `digest`; whether there was one.
    pub fn unlink(
        &self,
        repository: &str,
        kind: LinkKind,
        digest: &Digest,
    ) -> Result<bool, StoreError> {
        if !crate::reference::valid_repository(repository) {
            return Ok(false);
        }
        let path = self.link_path(repository, kind, digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    /// Link a manifest and everything it names (children of an index, config and layers)
    /// into `repository`: what a local push or a migration needs.
    pub fn link_closure(&self, repository: &str, manifest: &Digest) -> Result<(), StoreError> {
        let mut todo = vec![manifest.clone()];
        let mut seen = std::collections::HashSet::new();
        while let Some(d) = todo.pop() {
            if !seen.insert(d.clone()) || seen.len() > 100_000 {
                continue;
            }
            let Ok(bytes) = self.read_blob(&d, crate::oci::MAX_MANIFEST_BYTES) else {
                continue;
            };
            match crate::oci::ManifestKind::parse(None, &bytes) {
                Ok(crate::oci::ManifestKind::Image(m)) => {
                    self.link(repository, LinkKind::Manifest, &d)?;
                    for b in m.blobs() {
                        self.link(repository, LinkKind::Blob, &b.digest)?;
                    }
                }
                Ok(crate::oci::ManifestKind::Index(i)) => {
                    self.link(repository, LinkKind::Manifest, &d)?;
                    todo.extend(i.manifests.iter().map(|c| c.digest.clone()));
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Record that `referrer` (a manifest descriptor) has `subject` as its subject.
    pub fn add_referrer(&self, subject: &Digest, referrer: &Descriptor) -> Result<(), StoreError> {
        let dir = self.root.join("referrers");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let _lock = self.lock_index()?;
        let mut list = self.referrers(subject)?;
        if !list.iter().any(|d| d.digest == referrer.digest) {
            list.push(referrer.clone());
        }
        let bytes = serde_json::to_vec_pretty(&list).expect("descriptors serialise");
        write_atomic(&dir.join(format!("{}.json", subject.hex())), &bytes)
    }

    /// The manifests that name `subject` as their subject.
    pub fn referrers(&self, subject: &Digest) -> Result<Vec<Descriptor>, StoreError> {
        let path = self
            .root
            .join("referrers")
            .join(format!("{}.json", subject.hex()));
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::CorruptIndex { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }
}

/// Write a small file by temp name + fsync + rename, so readers never see half of it.
/// The most a small file of the store's own (a stamp, a tag) may hold: they are a few
/// hundred bytes, and a file on disk is read as if hostile.
const SMALL_FILE_LIMIT: u64 = 64 << 10;
/// Chunk lists read from a store for one pull at most (each describes one blob).
pub const MAX_CHUNK_LISTS: usize = 100_000;

/// Read a small file of the store's own whole, refusing one over [`SMALL_FILE_LIMIT`].
pub(crate) fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io::Read::read_to_end(
        &mut io::Read::take(File::open(path)?, SMALL_FILE_LIMIT + 1),
        &mut bytes,
    )?;
    if bytes.len() as u64 > SMALL_FILE_LIMIT {
        return Err(io::Error::other(format!(
            "{} is over the {SMALL_FILE_LIMIT} bytes a store file of this kind may hold",
            path.display()
        )));
    }
    Ok(bytes)
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    crate::fsutil::write_atomic(path, bytes, crate::fsutil::Replace::DURABLE).map_err(io_err(path))
}

/// A reference without a registry host names the local store; one like `team/tiny:v1` may
/// be a registry reference whose host was left out.
fn registry_hint(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if !first.contains(['.', ':']) && first != "localhost" => format!(
            "; a registry reference starts with its host (e.g. registry.example.com/{reference})"
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_verifies_and_tags_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let desc = Descriptor::new(crate::oci::media::OCI_MANIFEST, Digest::of_bytes(b"{}"), 2);
        let bad = Descriptor::new(crate::oci::media::OCI_MANIFEST, Digest::of_bytes(b"x"), 2);
        assert!(matches!(
            store.put_bytes(&bad, b"{}"),
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(store.blob_size(&bad.digest).is_none());
        store.put_bytes(&desc, b"{}").unwrap();
        store.tag("m", "v1", &desc).unwrap();
        store.tag("m", "v1", &desc).unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        assert_eq!(store.resolve("m", "v1").unwrap().digest, desc.digest);
        assert!(store.resolve("m", "v2").is_err());
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }

    /// A cache serving one blob to many clients marked it used on every read by moving the
    /// blob's own times: its stamp then failed for every reader checking it meanwhile, who
    /// hashed the whole blob again (30% of the server's CPU under 64 clients). A use is kept
    /// beside the blob: the blob and its stamp stay as they are, and the use still orders
    /// eviction.
    #[test]
    fn a_use_leaves_the_blob_and_its_stamp_alone_and_orders_eviction() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let blob = |bytes: &'static [u8]| {
            let desc = Descriptor::new(
                "application/octet-stream",
                Digest::of_bytes(bytes),
                bytes.len() as u64,
            );
            store.put_bytes(&desc, bytes).unwrap();
            desc.digest
        };
        let (old, new) = (blob(b"older"), blob(b"newer"));
        // The older blob arrived a minute before the newer one.
        let minute_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        File::options()
            .write(true)
            .open(store.blob_path(&old))
            .unwrap()
            .set_modified(minute_ago)
            .unwrap();
        store.check_blob(&old, 5).unwrap(); // re-hashed once, stamped
        let order = |s: &Store| {
            s.blobs_by_age()
                .into_iter()
                .map(|(d, _, _)| d)
                .collect::<Vec<_>>()
        };
        assert_eq!(order(&store), vec![old.clone(), new.clone()]);
        let before = fs::metadata(store.blob_path(&old)).unwrap();
        assert!(store.stamp_matches(&old));
        store.touch(&old);
        let after = fs::metadata(store.blob_path(&old)).unwrap();
        assert_eq!(
            (before.mtime_nsec(), before.ctime_nsec(), before.ctime()),
            (after.mtime_nsec(), after.ctime_nsec(), after.ctime()),
            "the blob's times did not move"
        );
        assert!(store.stamp_matches(&old), "its stamp still holds");
        assert_eq!(
            order(&store),
            vec![new.clone(), old.clone()],
            "the used one is newest"
        );
        store.delete_blob(&old).unwrap();
        assert!(!store.used_path(&old).exists(), "its use goes with it");
    }
}
