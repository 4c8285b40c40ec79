//! A file's stamp: what its inode says now (size, device, inode, modification and change
//! times, link count) and when that was read. Two owners trust a file without reading it
//! again while its stamp holds — the local store (`store::stamps`, for its blobs) and a
//! pull's record of the files it placed (`materialize::record`) — so the stamp lives below
//! both.
//!
//! The change time is what makes it hold: every write, `chmod` or `touch` moves it and no
//! unprivileged call sets it back (size and mtime alone are restored by `touch -d` after a
//! same-size edit).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::digest::Digest;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub digest: Option<Digest>,
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    /// Hard links to the inode: creating or removing one moves the change time, so a change
    /// time that moved together with the link count (and nothing else) is explained.
    #[serde(default)]
    pub nlink: u64,
    /// The file clock when the stamp was taken: a stamp taken in the same clock tick as the
    /// file's last change is "racy" (a change in that tick would not show) and not trusted.
    #[serde(default)]
    pub stamped_ns: i128,
}

impl Stamp {
    /// The stamp of a regular file as it is now (`None` for anything else).
    pub fn of(path: &Path, digest: Option<Digest>) -> Option<Stamp> {
        let m = fs::symlink_metadata(path).ok()?;
        (m.is_file() || m.file_type().is_symlink()).then(|| Stamp {
            digest,
            size: m.len(),
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            nlink: m.nlink(),
            stamped_ns: coarse_now_ns(),
        })
    }

    /// Does `now` (a fresh stamp of the file) show the same, unchanged file, and was this
    /// stamp taken after the clock had moved past the file's last change?
    ///
    /// A change time that moved is accepted only when the link count moved too (a hard link
    /// placed from the node cache, or removed with a pulled folder): an edit in place, even
    /// with the modification time put back, keeps the link count and is caught.
    pub fn still_holds(&self, now: &Stamp) -> bool {
        let same_content = (&self.digest, self.size, self.dev, self.ino, self.mtime_ns)
            == (&now.digest, now.size, now.dev, now.ino, now.mtime_ns);
        let ctime_explained = self.ctime_ns == now.ctime_ns || self.nlink != now.nlink;
        self.stamped_ns > self.ctime_ns && same_content && ctime_explained
    }
}

/// Wait (at most 100 ms) until the kernel's file clock has moved past `ctime_ns`, so that
/// any later change to a stamped file moves its ctime.
pub fn wait_past(ctime_ns: i128) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(100);
    while coarse_now_ns() <= ctime_ns && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// The kernel's coarse wall clock, the one it stamps file times with.
pub fn coarse_now_ns() -> i128 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}
