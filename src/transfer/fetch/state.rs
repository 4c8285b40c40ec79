//! The resume record of one blob download: which ranges of the part file are complete.
//! Written by temp file + rename after each range, so a crash leaves either the old or the
//! new record, never a torn one.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::oci::Descriptor;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RangeState {
    pub digest: Digest,
    pub size: u64,
    pub range_size: u64,
    /// One char per range: `1` done, `0` not.
    pub done: String,
    #[serde(skip)]
    path: PathBuf,
}

pub fn path_for(part: &Path) -> PathBuf {
    let mut name = part.file_name().unwrap_or_default().to_os_string();
    name.push(".state");
    part.with_file_name(name)
}

/// Open (creating) the part file at its full size, so ranges can be written anywhere.
pub fn open_part(part: &Path, size: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(part)?;
    if file.metadata()?.len() != size {
        reserve(&file, size)?;
    }
    Ok(file)
}

const MIN_SAVED_RANGE: u64 = 4096;

impl RangeState {
    /// The saved record if it describes this blob with this range size and its part file is
    /// there; otherwise a fresh one (and any stale part file is discarded).
    /// A record with smaller ranges than this is not hoist's (it would be one character per
    /// few bytes of the blob): it is started over.
    pub fn load_or_new(
        path: &Path,
        part: &Path,
        desc: &Descriptor,
        range_size: u64,
    ) -> io::Result<RangeState> {
        // A saved record keeps its own range size: a resume run with another --range-size
        // (or another default) still reuses every range the first run finished.
        let saved = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<RangeState>(&b).ok())
            .filter(|s| {
                s.digest == desc.digest
                    && s.size == desc.size
                    && s.range_size >= MIN_SAVED_RANGE
                    && s.done.len() as u64 == desc.size.div_ceil(s.range_size).max(1)
                    && s.done.bytes().all(|b| b == b'0' || b == b'1')
            })
            .filter(|_| part.exists());
        match saved {
            Some(mut s) => {
                s.path = path.to_path_buf();
                Ok(s)
            }
            None => {
                let _ = std::fs::remove_file(part);
                let ranges = desc.size.div_ceil(range_size).max(1) as usize;
                Ok(RangeState {
                    digest: desc.digest.clone(),
                    size: desc.size,
                    range_size,
                    done: "0".repeat(ranges),
                    path: path.to_path_buf(),
                })
            }
        }
    }

    /// A record kept in memory only, for a download into memory: nothing to resume from.
    pub fn in_memory(desc: &Descriptor, range_size: u64) -> RangeState {
        let ranges = desc.size.div_ceil(range_size).max(1) as usize;
        RangeState {
            digest: desc.digest.clone(),
            size: desc.size,
            range_size,
            done: "0".repeat(ranges),
            path: PathBuf::new(),
        }
    }

    pub fn ranges(&self) -> usize {
        self.done.len()
    }

    pub fn bounds(&self, index: usize) -> (u64, u64) {
        let start = index as u64 * self.range_size;
        (start, (start + self.range_size).min(self.size))
    }

    pub fn is_done(&self, index: usize) -> bool {
        self.done.as_bytes()[index] == b'1'
    }

    pub fn done_bytes(&self) -> u64 {
        (0..self.ranges())
            .filter(|i| self.is_done(*i))
            .map(|i| self.bounds(i))
            .map(|(s, e)| e - s)
            .sum()
    }

    /// Mark a range complete and persist the record.
    pub fn mark_done(&mut self, index: usize) -> io::Result<()> {
        let mut bytes = std::mem::take(&mut self.done).into_bytes();
        bytes[index] = b'1';
        self.done = String::from_utf8(bytes).expect("ascii");
        if self.path.as_os_str().is_empty() {
            return Ok(()); // in memory: nothing is kept past this download
        }
        let bytes = serde_json::to_vec(self).expect("state serialises");
        crate::fsutil::write_atomic(&self.path, &bytes, crate::fsutil::Replace::FAST)
    }
}

/// After a failed download: free the blocks of every range not yet done (the part file was
/// reserved at full size), and remove parts with nothing done at all, so what is kept for a
/// resume is what was downloaded. Returns the bytes kept.
pub fn trim_parts(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut kept = 0;
    for e in entries.flatten() {
        let part = e.path();
        if part.extension().is_none_or(|x| x != "part") {
            continue;
        }
        let state_path = path_for(&part);
        let state = std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<RangeState>(&b).ok())
            .filter(|s| s.range_size > 0);
        let done = state.as_ref().map_or(0, RangeState::done_bytes);
        if done == 0 {
            let _ = std::fs::remove_file(&part);
            let _ = std::fs::remove_file(&state_path);
            continue;
        }
        let state = state.expect("done > 0 implies a state");
        if let Ok(file) = OpenOptions::new().write(true).open(&part) {
            for i in (0..state.ranges()).filter(|i| !state.is_done(*i)) {
                let (start, end) = state.bounds(i);
                use rustix::fs::FallocateFlags;
                let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
                let _ = rustix::fs::fallocate(&file, punch, start, end - start);
            }
        }
        kept += done;
    }
    kept
}

/// Reserve the blocks up front (`posix_fallocate`), so a full disk is reported before the
/// download rather than in the middle of it; filesystems without it get a sparse file.
fn reserve(file: &File, size: u64) -> io::Result<()> {
    file.set_len(size)?;
    if size == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size) {
        // A filesystem without fallocate gets the sparse file: writes will tell.
        Ok(()) | Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INVAL) => Ok(()),
        Err(rustix::io::Errno::NOSPC) => {
            let available = rustix::fs::fstatvfs(file)
                .map(|st| st.f_bavail.saturating_mul(st.f_frsize))
                .unwrap_or(0);
            Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "No space left on device: the blob needs {size} bytes and {available} are available"
                ),
            ))
        }
        Err(errno) => Err(errno.into()),
    }
}
