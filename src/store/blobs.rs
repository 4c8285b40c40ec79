//! The store's blobs: where each lives, how one arrives (verified before it is committed;
//! one writer per digest across processes), how it is read, aged and deleted, and the chunk
//! lists remembered for delta pulls.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{io_err, Store, StoreError, MAX_CHUNK_LISTS};
use crate::digest::{Digest, Hasher};
use crate::oci::Descriptor;

impl Store {
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Where a blob's chunk list is remembered (for delta pulls of other versions; see
    /// [`crate::chunks`]). A hint, never trusted: every chunk copied from it is re-hashed.
    pub(super) fn chunks_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("chunks").join(digest.hex())
    }

    /// Remember how blob `digest` is cut into chunks.
    pub fn remember_chunks(&self, digest: &Digest, known: &crate::chunks::KnownChunks) {
        let _ = fs::create_dir_all(self.root.join("chunks"));
        let bytes = serde_json::to_vec(known).expect("chunk list serialises");
        // A hint like a stamp (each chunk is re-hashed when used): not synced.
        let _ = crate::fsutil::write_atomic(
            &self.chunks_path(digest),
            &bytes,
            crate::fsutil::Replace::FAST,
        );
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
        let reader = File::open(source).map_err(io_err(source))?;
        self.put_reader(expected, reader, source)
    }

    /// Copy what `reader` gives into the store, hashing as it goes; kept only if it is the
    /// expected blob. `source` names it in errors.
    pub fn put_reader(
        &self,
        expected: &Descriptor,
        mut reader: impl io::Read,
        source: &Path,
    ) -> Result<PathBuf, StoreError> {
        let mut ingest = self.ingest_file()?;
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(io_err(source))?;
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

    /// Delete a blob; whether it existed. (No reference check: that is the caller's call.)
    pub fn delete_blob(&self, digest: &Digest) -> Result<bool, StoreError> {
        let path = self.blob_path(digest);
        let _ = fs::remove_file(self.stamp_path(digest));
        let _ = fs::remove_file(self.chunks_path(digest));
        let _ = fs::remove_file(self.used_path(digest));
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    /// Every verified blob with its size and last use (its arrival, or the last [`touch`]),
    /// oldest first.
    ///
    /// [`touch`]: Store::touch
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
                let arrived = meta.modified().ok()?;
                let used = fs::metadata(self.used_path(&digest)).and_then(|m| m.modified());
                Some((digest, meta.len(), used.map_or(arrived, |u| u.max(arrived))))
            })
            .collect();
        blobs.sort_by_key(|(_, _, t)| *t);
        blobs
    }

    pub fn total_blob_bytes(&self) -> u64 {
        self.blobs_by_age().iter().map(|(_, n, _)| n).sum()
    }

    /// Where a blob's last use is kept: the modification time of an empty file beside it.
    pub(super) fn used_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("used").join(digest.hex())
    }

    /// Mark a blob as just used (for least-recently-used eviction). The blob itself is left
    /// alone: changing its times would invalidate its stamp, and every reader checking it
    /// meanwhile (a cache serving many clients at once) would hash it again.
    pub fn touch(&self, digest: &Digest) {
        use rustix::fs::{utimensat, AtFlags, Timestamps, CWD};
        let path = self.used_path(digest);
        let now = rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        };
        let times = Timestamps {
            last_access: now,
            last_modification: now,
        };
        if utimensat(CWD, &path, &times, AtFlags::empty()).is_err() {
            let _ = fs::create_dir_all(self.root.join("used"));
            let _ = File::create(&path);
        }
    }
}
