//! Trusting a blob without hashing it again: the stamp written when it was verified (size,
//! inode, times, link count) still holds, or the blob is hashed again and re-stamped; a
//! corrupt blob is removed.

use std::fs;
use std::path::PathBuf;

use super::{io_err, read_small, BlobCheck, Store, StoreError};
use crate::digest::Digest;

impl Store {
    /// Where a blob's stamp lives: the inode, size and change time seen when its bytes were
    /// last verified. A blob whose stamp still matches needs no re-hash before use.
    pub(crate) fn stamp_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("stamps").join(digest.hex())
    }

    /// Stamp a blob just verified. The stamp is taken once the file clock has passed the
    /// blob's last change (at most one tick, a few ms): a stamp taken in the same tick is
    /// "racy", never trusted, and would cost a full re-hash at the blob's next use.
    pub(super) fn write_stamp(&self, digest: &Digest) {
        use crate::stamp::{wait_past, Stamp};
        let path = self.blob_path(digest);
        if let Some(before) = Stamp::of(&path, None) {
            wait_past(before.ctime_ns);
        }
        if let Some(stamp) = Stamp::of(&path, Some(digest.clone())) {
            let _ = fs::create_dir_all(self.root.join("stamps"));
            // Not synced: a stamp is a hint checked against the file at every use (a lost or
            // torn one costs a re-hash, never a wrong byte), and every hard-linked pull
            // renews one per blob, where a sync each would wait on the node's other writes.
            let _ = crate::fsutil::write_atomic(
                &self.stamp_path(digest),
                &serde_json::to_vec(&stamp).expect("stamp serialises"),
                crate::fsutil::Replace::FAST,
            );
        }
    }

    /// The stamp written when the blob was last verified, if any (and readable).
    pub(super) fn saved_stamp(&self, digest: &Digest) -> Option<crate::stamp::Stamp> {
        let bytes = read_small(&self.stamp_path(digest)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub(super) fn stamp_matches(&self, digest: &Digest) -> bool {
        let Some(saved) = self.saved_stamp(digest) else {
            return false;
        };
        crate::stamp::Stamp::of(&self.blob_path(digest), Some(digest.clone()))
            .is_some_and(|now| saved.still_holds(&now))
    }

    /// Renew a blob's stamp after it was hard-linked (which moves its change time), but only
    /// if nothing else about the file changed since it was stamped (same inode, size and
    /// modification time).
    pub fn restamp_after_link(&self, digest: &Digest) {
        use crate::stamp::Stamp;
        let saved = self.saved_stamp(digest);
        let now = Stamp::of(&self.blob_path(digest), Some(digest.clone()));
        if let (Some(saved), Some(now)) = (saved, now) {
            if (saved.dev, saved.ino, saved.size, saved.mtime_ns)
                == (now.dev, now.ino, now.size, now.mtime_ns)
            {
                // Past the link's clock tick (usually already so), or the stamp is racy.
                crate::stamp::wait_past(now.ctime_ns);
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
}
