//! The in-order hasher: follows the contiguous prefix of completed ranges and hashes it by
//! reading the part file back, on its own thread, while later ranges still download.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::sync::Arc;

use crate::digest::{Digest, Hasher};

/// Tells the hasher thread which ranges are complete.
pub struct InOrderHasher {
    tx: Option<mpsc::Sender<usize>>,
    handle: Option<std::thread::JoinHandle<std::io::Result<Option<Digest>>>>,
}

impl InOrderHasher {
    /// `bounds[i]` is range i's `[start, end)`; ranges must tile the file in order.
    pub fn start(file: Arc<File>, bounds: Vec<(u64, u64)>) -> InOrderHasher {
        let (tx, rx) = mpsc::channel::<usize>();
        let handle = std::thread::Builder::new()
            .name("hoist-hash".into())
            .spawn(move || {
                let mut done = vec![false; bounds.len()];
                let mut next = 0;
                let mut hasher = Hasher::new();
                let mut buf = vec![0u8; 4 << 20];
                while next < bounds.len() {
                    let Ok(index) = rx.recv() else {
                        return Ok(None); // the download gave up
                    };
                    done[index] = true;
                    while next < bounds.len() && done[next] {
                        let (mut pos, end) = bounds[next];
                        while pos < end {
                            let want = buf.len().min((end - pos) as usize);
                            file.read_exact_at(&mut buf[..want], pos)?;
                            hasher.update(&buf[..want]);
                            pos += want as u64;
                        }
                        next += 1;
                    }
                }
                Ok(Some(hasher.finish()))
            })
            .expect("spawn hasher thread");
        InOrderHasher {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn range_done(&self, index: usize) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(index);
        }
    }

    /// Wait for the digest of the whole file (`None` if not every range was reported).
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
