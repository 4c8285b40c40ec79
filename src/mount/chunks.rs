//! The chunk store of a mount. Each blob is a sparse part file filled chunk by chunk as ranges
//! arrive, with a state per chunk. Hashing follows the filled prefix, so a blob is verified
//! the moment its last chunk lands; only a verified blob is promoted into the node cache. A
//! mismatch poisons the blob: every later read is EIO and the part file is deleted.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::digest::{Digest, Hasher};
use crate::oci::Descriptor;
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    Missing,
    Fetching,
    /// On disk but not yet readable: the hash check runs first, so the chunk that completes
    /// a blob is only served once the blob is verified.
    Landed,
    Present,
    /// The last fetch failed after its retries; a new read asks again.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobStatus {
    Filling,
    Verified,
    /// The bytes do not hash to the digest: the blob is never served again.
    Corrupt(String),
}

struct State {
    chunks: Vec<ChunkState>,
    status: BlobStatus,
    last_error: Option<String>,
}

/// One blob of the mounted artifact.
pub struct Blob {
    pub desc: Descriptor,
    /// A file path it is known by, for logs.
    pub name: String,
    pub chunk_size: u64,
    file: File,
    /// The part file while filling; `None` when the blob came verified from the cache.
    part: Option<PathBuf>,
    state: Mutex<State>,
    changed: Condvar,
    /// (next chunk to hash, running hash) — hashing runs over the filled prefix.
    hashing: Mutex<(usize, Hasher)>,
}

/// Why a read could not be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFailure {
    Corrupt(String),
    Fetch(String),
    TimedOut,
}

impl Blob {
    /// A blob already verified in the node cache: every read is a local pread.
    pub fn cached(desc: Descriptor, name: String, file: File, chunk_size: u64) -> Blob {
        let n = chunk_count(desc.size, chunk_size);
        Blob::new(
            desc,
            name,
            file,
            None,
            chunk_size,
            vec![ChunkState::Present; n],
            BlobStatus::Verified,
        )
    }

    /// A blob to fetch into `part` (created sparse at its full size).
    pub fn filling(
        desc: Descriptor,
        name: String,
        part: PathBuf,
        chunk_size: u64,
    ) -> std::io::Result<Blob> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&part)?;
        file.set_len(desc.size)?;
        let n = chunk_count(desc.size, chunk_size);
        Ok(Blob::new(
            desc,
            name,
            file,
            Some(part),
            chunk_size,
            vec![ChunkState::Missing; n],
            BlobStatus::Filling,
        ))
    }

    fn new(
        desc: Descriptor,
        name: String,
        file: File,
        part: Option<PathBuf>,
        chunk_size: u64,
        chunks: Vec<ChunkState>,
        status: BlobStatus,
    ) -> Blob {
        Blob {
            desc,
            name,
            chunk_size,
            file,
            part,
            state: Mutex::new(State {
                chunks,
                status,
                last_error: None,
            }),
            changed: Condvar::new(),
            hashing: Mutex::new((0, Hasher::new())),
        }
    }

    pub fn chunks(&self) -> usize {
        chunk_count(self.desc.size, self.chunk_size)
    }

    /// Byte range `[start, end)` of chunk `index`.
    pub fn bounds(&self, index: usize) -> (u64, u64) {
        let start = index as u64 * self.chunk_size;
        (start, (start + self.chunk_size).min(self.desc.size))
    }

    pub fn status(&self) -> BlobStatus {
        self.state.lock().expect("blob state").status.clone()
    }

    pub fn is_verified(&self) -> bool {
        self.status() == BlobStatus::Verified
    }

    pub fn chunk_state(&self, index: usize) -> ChunkState {
        self.state.lock().expect("blob state").chunks[index]
    }

    /// Take chunk `index` for fetching unless it is present or already being fetched.
    pub fn claim(&self, index: usize) -> bool {
        let mut st = self.state.lock().expect("blob state");
        if matches!(st.status, BlobStatus::Corrupt(_)) {
            return false;
        }
        match st.chunks[index] {
            ChunkState::Missing | ChunkState::Failed => {
                st.chunks[index] = ChunkState::Fetching;
                true
            }
            ChunkState::Fetching | ChunkState::Landed | ChunkState::Present => false,
        }
    }

    /// Write fetched bytes at `offset` (within a claimed chunk).
    pub fn write_at(&self, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(bytes, offset)
    }

    /// A claimed chunk is complete on disk; readers see it after [`Blob::publish`].
    pub fn chunk_landed(&self, index: usize) {
        self.state.lock().expect("blob state").chunks[index] = ChunkState::Landed;
    }

    /// Make a landed chunk readable (after the hash has advanced over it) and wake readers.
    pub fn publish(&self, index: usize) {
        {
            let mut st = self.state.lock().expect("blob state");
            if st.chunks[index] == ChunkState::Landed {
                st.chunks[index] = ChunkState::Present;
            }
        }
        self.changed.notify_all();
    }

    /// A claimed chunk could not be fetched: its waiting readers get EIO.
    pub fn chunk_failed(&self, index: usize, why: String) {
        {
            let mut st = self.state.lock().expect("blob state");
            if st.chunks[index] == ChunkState::Fetching {
                st.chunks[index] = ChunkState::Failed;
            }
            st.last_error = Some(why);
        }
        self.changed.notify_all();
    }

    /// Hash the chunks that are now contiguous from the start; when the last is hashed, compare
    /// with the digest and promote or poison. Returns the new status when it changed.
    pub fn advance_hash(&self, cache: Option<&Store>) -> Option<BlobStatus> {
        let mut hashing = self.hashing.lock().expect("hash lock");
        let total = self.chunks();
        if self.status() != BlobStatus::Filling {
            return None;
        }
        let mut buf = vec![0u8; self.chunk_size as usize];
        while hashing.0 < total
            && matches!(
                self.chunk_state(hashing.0),
                ChunkState::Landed | ChunkState::Present
            )
        {
            let (start, end) = self.bounds(hashing.0);
            let slice = &mut buf[..(end - start) as usize];
            if let Err(e) = self.file.read_exact_at(slice, start) {
                tracing::error!("mount: reading back {} failed: {e}", self.name);
                return None;
            }
            hashing.1.update(slice);
            hashing.0 += 1;
        }
        if hashing.0 < total {
            return None;
        }
        let actual = std::mem::take(&mut hashing.1).finish();
        let status = if actual == self.desc.digest {
            if let (Some(store), Some(part)) = (cache, &self.part) {
                if let Err(e) = store.commit_verified(part, &self.desc.digest) {
                    tracing::warn!("mount: could not keep {} in the cache: {e}", self.name);
                }
            }
            BlobStatus::Verified
        } else {
            tracing::error!(
                "mount: VERIFICATION FAILED for {} ({}): the registry sent bytes hashing to {actual}; every further read of it fails with EIO",
                self.name,
                self.desc.digest
            );
            if let Some(part) = &self.part {
                let _ = std::fs::remove_file(part);
            }
            BlobStatus::Corrupt(format!("{} does not match its digest", self.name))
        };
        self.state.lock().expect("blob state").status = status.clone();
        self.changed.notify_all();
        Some(status)
    }

    /// Block until chunk `index` can be read, or it fails, or `timeout` passes. `ask` is called
    /// (with the lock released) when the chunk needs a fetch.
    pub fn wait_chunk(
        &self,
        index: usize,
        wait_verified: bool,
        timeout: Duration,
        mut ask: impl FnMut(),
    ) -> Result<bool, ReadFailure> {
        let deadline = std::time::Instant::now() + timeout;
        let mut asked = false;
        let mut waited = false;
        let mut st = self.state.lock().expect("blob state");
        loop {
            if let BlobStatus::Corrupt(why) = &st.status {
                return Err(ReadFailure::Corrupt(why.clone()));
            }
            let ready = if wait_verified {
                st.status == BlobStatus::Verified
            } else {
                st.chunks[index] == ChunkState::Present
            };
            if ready {
                return Ok(waited);
            }
            match st.chunks[index] {
                ChunkState::Failed if asked => {
                    return Err(ReadFailure::Fetch(
                        st.last_error
                            .clone()
                            .unwrap_or_else(|| "fetch failed".into()),
                    ))
                }
                ChunkState::Missing | ChunkState::Failed if !asked => {
                    asked = true;
                    drop(st);
                    ask();
                    st = self.state.lock().expect("blob state");
                    continue;
                }
                _ => {}
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(ReadFailure::TimedOut);
            }
            waited = true;
            st = self
                .changed
                .wait_timeout(st, (deadline - now).min(Duration::from_millis(500)))
                .expect("blob state")
                .0;
        }
    }

    /// Read up to `len` bytes at `offset` from the file (the chunks must be present).
    pub fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let end = (offset + len as u64).min(self.desc.size);
        let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Remove the part file of a blob that never completed (the mount is going away).
    pub fn discard_partial(&self) {
        if self.status() != BlobStatus::Verified {
            if let Some(part) = &self.part {
                let _ = std::fs::remove_file(part);
            }
        }
    }
}

pub fn chunk_count(size: u64, chunk: u64) -> usize {
    size.div_ceil(chunk).max(1) as usize
}

/// Where a mount keeps a blob while it fills: beside the store's ingest files, named per
/// process so a concurrent pull's resumable part file is never touched.
pub fn part_path(store: &Store, digest: &Digest) -> PathBuf {
    let mut p = store.part_path(digest).into_os_string();
    p.push(format!(".mount-{}", std::process::id()));
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob_of(bytes: &[u8], chunk: u64) -> (tempfile::TempDir, Blob) {
        let dir = tempfile::tempdir().unwrap();
        let desc = Descriptor::new(
            "application/octet-stream",
            Digest::of_bytes(bytes),
            bytes.len() as u64,
        );
        let blob = Blob::filling(desc, "f".into(), dir.path().join("p"), chunk).unwrap();
        (dir, blob)
    }

    #[test]
    fn verifies_when_chunks_arrive_out_of_order() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let (_d, blob) = blob_of(&data, 4096);
        for i in [2usize, 0, 1] {
            assert!(blob.claim(i));
            let (s, e) = blob.bounds(i);
            blob.write_at(&data[s as usize..e as usize], s).unwrap();
            blob.chunk_landed(i);
            let status = blob.advance_hash(None);
            blob.publish(i);
            assert_eq!(
                status.is_some(),
                i == 1,
                "verified only when the prefix is complete"
            );
        }
        assert!(blob.is_verified());
        assert_eq!(blob.read_at(4000, 200).unwrap(), &data[4000..4200]);
    }

    #[test]
    fn corrupt_blob_fails_every_read() {
        let data = vec![7u8; 5000];
        let (_d, blob) = blob_of(&data, 4096);
        for i in 0..2 {
            assert!(blob.claim(i));
            let (s, e) = blob.bounds(i);
            blob.write_at(&vec![8u8; (e - s) as usize], s).unwrap();
            blob.chunk_landed(i);
        }
        assert!(matches!(
            blob.advance_hash(None),
            Some(BlobStatus::Corrupt(_))
        ));
        let r = blob.wait_chunk(0, false, Duration::from_secs(1), || {});
        assert!(matches!(r, Err(ReadFailure::Corrupt(_))));
        assert!(!blob.claim(0));
    }

    #[test]
    fn failed_fetch_ends_the_wait() {
        let (_d, blob) = blob_of(&[1u8; 100], 64);
        let r = blob.wait_chunk(0, false, Duration::from_secs(5), || {
            assert!(blob.claim(0));
            blob.chunk_failed(0, "registry down".into());
        });
        assert_eq!(r, Err(ReadFailure::Fetch("registry down".into())));
    }
}
