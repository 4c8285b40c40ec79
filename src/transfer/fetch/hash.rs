//! The in-order hasher: SHA-256 is sequential, ranges arrive out of order, so one thread per
//! blob follows the ranges in file order. The range at that frontier is "live": the
//! connection writing it hands each chunk (a reference-counted `Bytes`, no copy) to the
//! hasher right after writing it. Only what was written before a range went live is read
//! back from the part file (`pread`). A blob fetched by one connection in order is therefore
//! hashed straight from the network buffers, with no second copy out of the page cache
//! (the profile of #14: the read-back was 7% of a loopback pull). The hashed bytes are the
//! bytes written: each chunk goes to the hasher only after `pwrite` returned, and the record
//! of which ranges are done, not the hasher, decides what a resume trusts.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::digest::{Digest, Hasher};

/// Chunks in flight between the live connection and the hasher: bounds the memory a slow
/// hasher can make the network hold (a few MiB), and slows that connection to its pace.
const QUEUE: usize = 8;

/// What the connections and the hasher share about one range.
#[derive(Default)]
struct Feed {
    /// Bytes of the range written so far (always a prefix: retries resume where it stopped).
    written: u64,
    /// The hasher reached this range: new chunks go to it instead of being read back.
    live: bool,
}

/// Tells the hasher thread what was written.
pub struct InOrderHasher {
    feeds: Arc<Vec<Mutex<Feed>>>,
    tx: Option<mpsc::Sender<(usize, Bytes)>>,
    handle: Option<std::thread::JoinHandle<std::io::Result<Option<Digest>>>>,
}

impl InOrderHasher {
    /// `bounds[i]` is range i's `[start, end)`; ranges must tile the file in order. Ranges
    /// in `done` were written by an earlier run and are read back whole.
    pub fn start(file: Arc<File>, bounds: Vec<(u64, u64)>, done: &[bool]) -> InOrderHasher {
        let feeds: Arc<Vec<Mutex<Feed>>> = Arc::new(
            bounds
                .iter()
                .zip(done)
                .map(|(&(start, end), &done)| {
                    Mutex::new(Feed {
                        written: if done { end - start } else { 0 },
                        live: false,
                    })
                })
                .collect(),
        );
        let (tx, rx) = mpsc::channel(QUEUE);
        let shared = feeds.clone();
        let handle = std::thread::Builder::new()
            .name("hoist-hash".into())
            .spawn(move || hash_in_order(&file, &bounds, &shared, rx))
            .expect("spawn hasher thread");
        InOrderHasher {
            feeds,
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    /// Bytes of range `index` already written (where a retry resumes).
    pub fn written(&self, index: usize) -> u64 {
        self.feeds[index].lock().expect("feed lock").written
    }

    /// Report `chunk`, just written at the end of range `index`'s prefix. Errors only if
    /// the hasher stopped (it failed to read the part file).
    pub async fn wrote(&self, index: usize, chunk: Bytes) -> Result<(), std::io::Error> {
        let live = {
            let mut feed = self.feeds[index].lock().expect("feed lock");
            feed.written += chunk.len() as u64;
            feed.live
        };
        if !live {
            return Ok(()); // read back from the file when the hasher gets here
        }
        let tx = self.tx.as_ref().expect("not finished");
        tx.send((index, chunk))
            .await
            .map_err(|_| std::io::Error::other("the hasher stopped"))
    }

    /// Wait for the digest of the whole file (`None` if the ranges were not all written).
    pub async fn finish(mut self) -> std::io::Result<Option<Digest>> {
        drop(self.tx.take());
        let handle = self.handle.take().expect("finish once");
        tokio::task::spawn_blocking(move || handle.join().expect("hasher does not panic"))
            .await
            .expect("join hasher")
    }
}

impl Drop for InOrderHasher {
    fn drop(&mut self) {
        // Closing the channel ends the thread; it is not joined on error paths.
        drop(self.tx.take());
    }
}

/// The hasher thread: for each range in order, read back what was written before it went
/// live, then hash its chunks as they come. Ends with `None` when the senders are gone
/// before every byte arrived (the download gave up).
fn hash_in_order(
    file: &File,
    bounds: &[(u64, u64)],
    feeds: &[Mutex<Feed>],
    mut rx: mpsc::Receiver<(usize, Bytes)>,
) -> std::io::Result<Option<Digest>> {
    let mut hasher = Hasher::new();
    let mut buf = Vec::new();
    for (index, &(start, end)) in bounds.iter().enumerate() {
        let prefix = {
            let mut feed = feeds[index].lock().expect("feed lock");
            feed.live = true;
            feed.written
        };
        read_back(file, start, start + prefix, &mut buf, &mut hasher)?;
        let mut hashed = prefix;
        while hashed < end - start {
            let Some((from, chunk)) = rx.blocking_recv() else {
                return Ok(None);
            };
            // Only the live range sends; anything else would be a bug in the engine.
            assert_eq!(from, index, "a chunk from a range that is not live");
            hasher.update(&chunk);
            hashed += chunk.len() as u64;
        }
    }
    Ok(Some(hasher.finish()))
}

/// Hash `[from, to)` of the part file (bytes written before their range went live).
fn read_back(
    file: &File,
    mut pos: u64,
    to: u64,
    buf: &mut Vec<u8>,
    hasher: &mut Hasher,
) -> std::io::Result<()> {
    if pos < to && buf.is_empty() {
        buf.resize(1 << 20, 0);
    }
    while pos < to {
        let want = buf.len().min((to - pos) as usize);
        file.read_exact_at(&mut buf[..want], pos)?;
        hasher.update(&buf[..want]);
        pos += want as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file of `len` bytes, and its chunks as a connection would deliver them.
    fn part(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![0; len]).unwrap();
        (f, data)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streamed_read_back_and_resumed_ranges_hash_to_the_file_digest() {
        let (f, data) = part(3000);
        let file = Arc::new(f.reopen().unwrap());
        let bounds = vec![(0, 1000), (1000, 2000), (2000, 3000)];
        // Range 1 was done by an earlier run: its bytes are on disk already.
        file.write_all_at(&data[1000..2000], 1000).unwrap();
        let hasher = InOrderHasher::start(file.clone(), bounds, &[false, true, false]);
        // Range 2 is written before the hasher reaches it (read back), in two pieces.
        for (from, to) in [(2000, 2500), (2500, 3000)] {
            file.write_all_at(&data[from..to], from as u64).unwrap();
            hasher
                .wrote(2, Bytes::copy_from_slice(&data[from..to]))
                .await
                .unwrap();
        }
        // Range 0 streams, in small chunks, part of it perhaps live.
        for from in (0..1000).step_by(100) {
            file.write_all_at(&data[from..from + 100], from as u64)
                .unwrap();
            hasher
                .wrote(0, Bytes::copy_from_slice(&data[from..from + 100]))
                .await
                .unwrap();
        }
        assert_eq!(hasher.written(0), 1000);
        let digest = hasher.finish().await.unwrap();
        assert_eq!(digest, Some(Digest::of_bytes(&data)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_download_that_stops_early_yields_no_digest() {
        let (f, data) = part(2000);
        let file = Arc::new(f.reopen().unwrap());
        let hasher = InOrderHasher::start(file.clone(), vec![(0, 1000), (1000, 2000)], &[false; 2]);
        file.write_all_at(&data[..1000], 0).unwrap();
        hasher
            .wrote(0, Bytes::copy_from_slice(&data[..1000]))
            .await
            .unwrap();
        assert_eq!(hasher.finish().await.unwrap(), None);
    }
}
