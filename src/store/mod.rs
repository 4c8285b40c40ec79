//! The local store: an OCI image layout folder (`oci-layout`, `index.json`, `blobs/sha256/…`)
//! that any OCI tool can read (`skopeo copy oci:DIR:ref`), plus `ingest/` for blobs being
//! written. It is hoist's embedded default and, later, the node cache.
//!
//! Hand-written because it is the product's core: blobs become visible only by a rename after
//! their digest and size are checked, and tag updates are serialised by a file lock so that
//! concurrent `hoist` processes on one node cannot lose each other's tags.

mod gc;
mod manage;
mod manifests;
pub mod owner;
mod pushed;
#[cfg(test)]
mod suite;
mod tags;

pub use gc::{GcReport, VerifyReport};
pub use manage::{Keep, Pruned, Removed};
pub use manifests::{manifest_media_type, Holding, ManifestRejected, PutManifest};

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hasher};
use crate::oci::{Descriptor, Index};

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

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
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

    /// Where a blob's stamp lives: the inode, size and change time seen when its bytes were
    /// last verified. A blob whose stamp still matches needs no re-hash before use.
    pub(crate) fn stamp_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("stamps").join(digest.hex())
    }

    /// Where a blob's chunk list is remembered (for delta pulls of other versions; see
    /// [`crate::chunks`]). A hint, never trusted: every chunk copied from it is re-hashed.
    fn chunks_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("chunks").join(digest.hex())
    }

    /// Remember how blob `digest` is cut into chunks.
    pub fn remember_chunks(&self, digest: &Digest, known: &crate::chunks::KnownChunks) {
        let _ = fs::create_dir_all(self.root.join("chunks"));
        let bytes = serde_json::to_vec(known).expect("chunk list serialises");
        let _ = write_atomic(&self.chunks_path(digest), &bytes);
    }

    /// The chunk lists remembered for blobs still in the store, with each blob's size (at most
    /// [`MAX_CHUNK_LISTS`], each at most [`crate::chunks::MAX_INDEX_BYTES`]; unreadable
    /// ones are skipped).
    pub fn known_chunks(&self) -> Vec<(Digest, u64, crate::chunks::KnownChunks)> {
        let Ok(entries) = fs::read_dir(self.root.join("chunks")) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .take(MAX_CHUNK_LISTS)
            .filter_map(|e| {
                let digest: Digest = format!("sha256:{}", e.file_name().to_str()?).parse().ok()?;
                let m = fs::symlink_metadata(e.path()).ok()?;
                if !m.is_file() || m.len() > crate::chunks::MAX_INDEX_BYTES {
                    return None;
                }
                let size = self.blob_size(&digest)?;
                let known = serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
                Some((digest, size, known))
            })
            .collect()
    }

    /// Stamp a blob just verified. The stamp is taken once the file clock has passed the
    /// blob's last change (at most one tick, a few ms): a stamp taken in the same tick is
    /// "racy", never trusted, and would cost a full re-hash at the blob's next use.
    fn write_stamp(&self, digest: &Digest) {
        use crate::materialize::record::{wait_past, Stamp};
        let path = self.blob_path(digest);
        if let Some(before) = Stamp::of(&path, None) {
            wait_past(before.ctime_ns);
        }
        if let Some(stamp) = Stamp::of(&path, Some(digest.clone())) {
            let _ = fs::create_dir_all(self.root.join("stamps"));
            let _ = write_atomic(
                &self.stamp_path(digest),
                &serde_json::to_vec(&stamp).expect("stamp serialises"),
            );
        }
    }

    /// The stamp written when the blob was last verified, if any (and readable).
    fn saved_stamp(&self, digest: &Digest) -> Option<crate::materialize::record::Stamp> {
        let bytes = read_small(&self.stamp_path(digest)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn stamp_matches(&self, digest: &Digest) -> bool {
        let Some(saved) = self.saved_stamp(digest) else {
            return false;
        };
        crate::materialize::record::Stamp::of(&self.blob_path(digest), Some(digest.clone()))
            .is_some_and(|now| saved.still_holds(&now))
    }

    /// Renew a blob's stamp after it was hard-linked (which moves its change time), but only
    /// if nothing else about the file changed since it was stamped (same inode, size and
    /// modification time).
    pub fn restamp_after_link(&self, digest: &Digest) {
        use crate::materialize::record::Stamp;
        let saved = self.saved_stamp(digest);
        let now = Stamp::of(&self.blob_path(digest), Some(digest.clone()));
        if let (Some(saved), Some(now)) = (saved, now) {
            if (saved.dev, saved.ino, saved.size, saved.mtime_ns)
                == (now.dev, now.ino, now.size, now.mtime_ns)
            {
                // Past the link's clock tick (usually already so), or the stamp is racy.
                crate::materialize::record::wait_past(now.ctime_ns);
                self.write_stamp(digest);
            }
        }
    }

    /// Is the blob there with `size` bytes that are still `digest`? Trusted from its stamp;
    /// otherwise re-hashed (and re-stamped). A corrupt blob is removed and reported, so the
    /// caller can fetch it again or tell the user.
    pub fn check_blob(&self, digest: &Digest, size: u64) -> Result<BlobCheck, StoreError> {
        let path = self.blob_path(digest);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.len() == size => {}
            Ok(m) if m.is_file() => return Ok(BlobCheck::Missing),
            Ok(_) => {
                let _ = fs::remove_file(&path); // a link or a folder is not a blob
                return Ok(BlobCheck::Missing);
            }
            Err(_) => return Ok(BlobCheck::Missing),
        }
        if self.stamp_matches(digest) {
            return Ok(BlobCheck::Good(path));
        }
        let actual = Digest::of_file(&path).map_err(io_err(&path))?;
        if actual == *digest {
            self.write_stamp(digest);
            return Ok(BlobCheck::Good(path));
        }
        let _ = self.delete_blob(digest);
        Err(StoreError::Corrupt {
            digest: digest.clone(),
            actual,
            root: self.root.clone(),
        })
    }

    /// The size of a blob that is present and good (checked as [`Store::check_blob`] does);
    /// a corrupt one is removed, logged, and reported absent.
    pub fn good_blob_size(&self, digest: &Digest) -> Option<u64> {
        let size = fs::symlink_metadata(self.blob_path(digest))
            .ok()
            .filter(|m| m.is_file())?
            .len();
        match self.check_blob(digest, size) {
            Ok(BlobCheck::Good(_)) => Some(size),
            Ok(BlobCheck::Missing) => None,
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }

    /// Size of a verified blob, if present.
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(digest))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// A fresh file in `ingest/` to write a blob into; pass it to [`Store::commit`].
    pub fn ingest_file(&self) -> Result<tempfile::NamedTempFile, StoreError> {
        let dir = self.root.join("ingest");
        tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&dir)
            .map_err(io_err(&dir))
    }

    /// Promote an ingested file into the store if its digest and size are the expected ones.
    /// The caller hashed the bytes while writing them (`actual`).
    pub fn commit(
        &self,
        ingest: tempfile::NamedTempFile,
        expected: &Descriptor,
        actual: Digest,
        size: u64,
    ) -> Result<PathBuf, StoreError> {
        if actual != expected.digest || size != expected.size {
            return Err(StoreError::DigestMismatch {
                expected: expected.digest.clone(),
                actual,
                size,
                expected_size: expected.size,
            });
        }
        let target = self.blob_path(&expected.digest);
        let path = ingest.path().to_path_buf();
        ingest.as_file().sync_data().map_err(io_err(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).map_err(io_err(&path))?;
        ingest.persist(&target).map_err(|e| StoreError::Io {
            path: target.clone(),
            source: e.error,
        })?;
        self.write_stamp(&expected.digest);
        Ok(target)
    }

    /// Where a download of `digest` into the store keeps its bytes until verified. The name
    /// is stable so an interrupted download resumes; [`Store::lock_blob`] guards it.
    pub fn part_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("ingest")
            .join(format!("{}.part", digest.hex()))
    }

    /// Wait for exclusive use of one blob's ingest, so concurrent pulls on a node download
    /// each blob once: the first holds the lock, the others wait and then find the blob.
    pub async fn lock_blob(&self, digest: &Digest) -> Result<File, StoreError> {
        let path = self
            .root
            .join("ingest")
            .join(format!("{}.lock", digest.hex()));
        let file = File::create(&path).map_err(io_err(&path))?;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(StoreError::Io { path, source: e })
                }
            }
        }
    }

    /// Promote a part file whose bytes were already verified against `digest`.
    pub fn commit_verified(&self, part: &Path, digest: &Digest) -> Result<PathBuf, StoreError> {
        let target = self.blob_path(digest);
        fs::set_permissions(part, fs::Permissions::from_mode(0o444)).map_err(io_err(part))?;
        fs::rename(part, &target).map_err(io_err(&target))?;
        self.write_stamp(digest);
        Ok(target)
    }

    /// Copy a local file into the store, hashing as it goes.
    pub fn put_file(&self, expected: &Descriptor, source: &Path) -> Result<PathBuf, StoreError> {
        let mut ingest = self.ingest_file()?;
        let mut reader = File::open(source).map_err(io_err(source))?;
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = io::Read::read(&mut reader, &mut buf).map_err(io_err(source))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            ingest.write_all(&buf[..n]).map_err(io_err(source))?;
        }
        let size = hasher.len();
        self.commit(ingest, expected, hasher.finish(), size)
    }

    pub fn put_bytes(&self, expected: &Descriptor, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let mut ingest = self.ingest_file()?;
        ingest.write_all(bytes).map_err(io_err(&self.root))?;
        self.commit(
            ingest,
            expected,
            Digest::of_bytes(bytes),
            bytes.len() as u64,
        )
    }

    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let size = fs::metadata(&path).map_err(io_err(&path))?.len();
        if size > limit {
            return Err(StoreError::Io {
                path,
                source: io::Error::other(format!("{size} bytes is over the {limit}-byte limit")),
            });
        }
        fs::read(&path).map_err(io_err(&path))
    }

    /// The manifest `repo:tag` points at.
    pub fn resolve(&self, repository: &str, tag: &str) -> Result<Descriptor, StoreError> {
        tags::resolve(self, repository, tag)
    }

    /// Point `repo:tag` at a manifest already stored as a blob.
    pub fn tag(
        &self,
        repository: &str,
        tag: &str,
        manifest: &Descriptor,
    ) -> Result<(), StoreError> {
        tags::set(self, repository, tag, Some(manifest)).map(drop)
    }

    /// Remove `repo:tag`; whether it existed.
    pub fn untag(&self, repository: &str, tag: &str) -> Result<bool, StoreError> {
        tags::set(self, repository, tag, None)
    }

    /// Remove every tag of `repo` that points at `digest`; how many there were.
    pub fn untag_digest(&self, repository: &str, digest: &Digest) -> Result<usize, StoreError> {
        let mut removed = 0;
        for (tag, desc) in tags::of_repository(self, repository)? {
            if desc.digest == *digest && self.untag(repository, &tag)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The tags of one repository, sorted.
    pub fn tags(&self, repository: &str) -> Result<Vec<String>, StoreError> {
        Ok(tags::of_repository(self, repository)?
            .into_iter()
            .map(|(t, _)| t)
            .collect())
    }

    /// Write tag changes to `index.json` in batches (a long-running server): see `tags`.
    pub fn defer_index_writes(mut self) -> Store {
        self.deferred = Some(std::sync::Arc::new(std::sync::Mutex::new(Vec::new())));
        self
    }

    /// Apply the deferred tag changes to `index.json` now.
    pub fn flush_index(&self) -> Result<(), StoreError> {
        tags::flush(self)
    }

    /// Delete a blob; whether it existed. (No reference check: that is the caller's call.)
    pub fn delete_blob(&self, digest: &Digest) -> Result<bool, StoreError> {
        let path = self.blob_path(digest);
        let _ = fs::remove_file(self.stamp_path(digest));
        let _ = fs::remove_file(self.chunks_path(digest));
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
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

    /// Serialises changes to the index and referrer lists across processes (released on drop).
    fn lock_index(&self) -> Result<File, StoreError> {
        let lock_path = self.root.join("index.json.lock");
        let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        Ok(lock)
    }

    /// Every verified blob with its size and last use (mtime; readers touch it), oldest first.
    pub fn blobs_by_age(&self) -> Vec<(Digest, u64, std::time::SystemTime)> {
        let mut blobs: Vec<_> = fs::read_dir(self.root.join("blobs/sha256"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let digest = format!("sha256:{}", e.file_name().to_string_lossy())
                    .parse()
                    .ok()?;
                let meta = e.metadata().ok()?;
                Some((digest, meta.len(), meta.modified().ok()?))
            })
            .collect();
        blobs.sort_by_key(|(_, _, t)| *t);
        blobs
    }

    pub fn total_blob_bytes(&self) -> u64 {
        self.blobs_by_age().iter().map(|(_, n, _)| n).sum()
    }

    /// Mark a blob as just used (for least-recently-used eviction). Its stamp is renewed only
    /// if it matched before: touching never blesses changed bytes.
    pub fn touch(&self, digest: &Digest) {
        let was_good = self.stamp_matches(digest);
        if let Ok(f) = File::options()
            .write(true)
            .open(self.blob_path(digest))
            .or_else(|_| File::open(self.blob_path(digest)))
        {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        if was_good {
            self.write_stamp(digest);
        }
    }

    /// Read-modify-write `index.json` under the lock.
    pub(crate) fn update_index<T>(
        &self,
        change: impl FnOnce(&mut Index) -> T,
    ) -> Result<T, StoreError> {
        let _lock = self.lock_index()?;
        let mut index = self.read_index()?;
        let result = change(&mut index);
        let bytes = serde_json::to_vec_pretty(&index).expect("index serialises");
        write_atomic(&self.root.join("index.json"), &bytes)?;
        Ok(result)
    }

    /// Every tagged manifest: (`repo:tag`, descriptor).
    pub fn list(&self) -> Result<Vec<(String, Descriptor)>, StoreError> {
        tags::all(self)
    }

    pub(crate) fn read_index(&self) -> Result<Index, StoreError> {
        let path = self.root.join("index.json");
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::CorruptIndex { path, source })
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
}
