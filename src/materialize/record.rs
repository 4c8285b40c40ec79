//! The record of what pulls placed in an output folder (`OUTPUT/.hoist-record.json`): each
//! file's path, its digest (single-file layers) and a stamp of its inode.
//!
//! Two uses: a re-pull (a restarted init container) trusts a file without reading it again
//! only while its stamp still matches, and a pull never replaces a file that no earlier pull
//! placed unless asked to.
//!
//! Why a file beside the model and not an extended attribute on each file: the stamp must
//! include the inode's change time (ctime), which every write, `chmod` or `touch` moves and
//! which no unprivileged call can set back — size and mtime alone are restored by `touch -d`
//! after a same-size edit. Writing an xattr itself moves the ctime, so the stamp cannot live
//! on the file it describes. The record is a hint, never a proof: a stamp that does not match
//! means "hash the file again", and `verify --full` always hashes.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::reserved::RECORD_FILE;
use crate::stamp::coarse_now_ns;
pub use crate::stamp::{wait_past, Stamp};

/// Records larger than this are ignored (and rewritten): a folder does not hold millions of
/// placed files, and the file is read whole.
const MAX_RECORD_BYTES: u64 = 64 << 20;

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub files: BTreeMap<PathBuf, Stamp>,
    /// How the blobs of the placed files are cut into chunks, when the artifact had a chunk
    /// index: the next version's pull then finds its chunks here without reading the files.
    /// A hint like the rest (each chunk is re-hashed when copied).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub chunks: BTreeMap<Digest, crate::chunks::KnownChunks>,
}

impl Record {
    /// The folder's record; an absent, oversized or unreadable one is empty (nothing trusted).
    pub fn load(out: &Path) -> Record {
        let path = out.join(RECORD_FILE);
        let Ok(m) = fs::symlink_metadata(&path) else {
            return Record::default();
        };
        if !m.is_file() || m.len() > MAX_RECORD_BYTES {
            return Record::default();
        }
        let mut record: Record = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        // A record is a file on disk: an entry naming anything but a plain relative path
        // inside the folder (`..`, absolute) is not a file a pull placed, and is dropped.
        record.files.retain(|rel, _| {
            rel.to_str()
                .and_then(|s| crate::oci::files::safe_relative_path(s).ok())
                .is_some_and(|safe| safe == *rel)
        });
        record
    }

    /// Did an earlier pull place a file at `rel`?
    pub fn placed(&self, rel: &Path) -> bool {
        self.files.contains_key(rel)
    }

    /// Is the file at `rel` (under `out`) still exactly what a pull placed with `digest`?
    pub fn vouches(&self, out: &Path, rel: &Path, digest: &Digest) -> bool {
        let Some(recorded) = self.files.get(rel) else {
            return false;
        };
        recorded.digest.as_ref() == Some(digest)
            && Stamp::of(&out.join(rel), Some(digest.clone()))
                .is_some_and(|now| recorded.still_holds(&now))
    }

    /// Is the file at `rel` still exactly as the pull that placed it left it (whatever its
    /// digest), and reached through no link or file? Only such a file may be reused as the
    /// folder's earlier version or removed when a new version lacks it.
    pub fn still_placed(&self, out: &Path, rel: &Path) -> bool {
        let Some(recorded) = self.files.get(rel) else {
            return false;
        };
        super::paths::check_disk_parents(out, rel).is_ok()
            && Stamp::of(&out.join(rel), recorded.digest.clone())
                .is_some_and(|now| recorded.still_holds(&now))
    }

    /// Note the file now at `rel` (after it was placed or re-hashed).
    pub fn note(&mut self, out: &Path, rel: &Path, digest: Option<Digest>) {
        match Stamp::of(&out.join(rel), digest) {
            Some(s) => self.files.insert(rel.to_path_buf(), s),
            None => self.files.remove(rel),
        };
    }

    /// Forget entries whose files are gone, and chunk lists of blobs no file holds.
    pub fn prune(&mut self, out: &Path) {
        self.files
            .retain(|rel, _| fs::symlink_metadata(out.join(rel)).is_ok());
        let held: std::collections::BTreeSet<&Digest> = self
            .files
            .values()
            .filter_map(|s| s.digest.as_ref())
            .collect();
        self.chunks.retain(|d, _| held.contains(d));
    }

    /// Write the record atomically (temporary file in `out`, then rename).
    ///
    /// File times come from the kernel's coarse clock (one tick, up to 10 ms): an edit in the
    /// same tick as the stamp would leave the ctime unchanged. So the record is written only
    /// once the clock has moved past every stamped ctime; any later edit then moves it.
    pub fn save(&mut self, out: &Path) -> std::io::Result<()> {
        wait_past(self.files.values().map(|s| s.ctime_ns).max().unwrap_or(0));
        let now = coarse_now_ns();
        for stamp in self.files.values_mut() {
            stamp.stamped_ns = stamp.stamped_ns.max(now);
        }
        let bytes = serde_json::to_vec(self).expect("record serialises");
        crate::fsutil::write_atomic(&out.join(RECORD_FILE), &bytes, crate::fsutil::Replace::FAST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_outside_the_folder_are_dropped_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(dir.path().join("victim"), b"x").unwrap();
        fs::write(out.join("ok.bin"), b"y").unwrap();
        let mut record = Record::default();
        record.note(&out, Path::new("ok.bin"), None);
        let stamp = Stamp::of(&dir.path().join("victim"), None).unwrap();
        for hostile in ["../victim", "/etc/passwd", "a/../../victim"] {
            record.files.insert(PathBuf::from(hostile), stamp.clone());
        }
        let text = serde_json::to_vec(&record).unwrap();
        fs::write(out.join(RECORD_FILE), text).unwrap();
        let loaded = Record::load(&out);
        let keys: Vec<&PathBuf> = loaded.files.keys().collect();
        assert_eq!(keys, [Path::new("ok.bin")]);
    }

    #[test]
    fn a_same_size_edit_with_the_mtime_restored_is_not_vouched_for() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"abc").unwrap();
        let d = Digest::of_bytes(b"abc");
        let mut r = Record::default();
        r.note(dir.path(), Path::new("f"), Some(d.clone()));
        r.save(dir.path()).unwrap(); // waits out the clock tick of the stamp
        assert!(r.vouches(dir.path(), Path::new("f"), &d));
        assert!(!r.vouches(dir.path(), Path::new("f"), &Digest::of_bytes(b"x")));
        let mtime = fs::metadata(&p).unwrap().modified().unwrap();
        fs::write(&p, b"abd").unwrap();
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(fs::metadata(&p).unwrap().modified().unwrap(), mtime);
        assert!(!r.vouches(dir.path(), Path::new("f"), &d));
        assert!(Record::load(dir.path()).placed(Path::new("f")));
    }
}
