//! A stored blob as a response body: read in 512 KiB pieces straight into the buffers handed
//! to the connection, buffers that are used again once the connection has sent them.
//!
//! Why not `tokio::fs::File` with `ReaderStream` (what this replaced): that reads into the
//! file's own buffer on the blocking pool and then copies into the stream's, 256 KiB at a
//! time, so each byte was copied twice in the process and each 256 KiB cost a thread hop.
//! Here `pread` writes into the spare capacity of the buffer that becomes the body chunk (no
//! copy in the process, no zeroing) and one hop moves 512 KiB. A piece's buffer goes back to a
//! small pool when hyper drops it: a fresh allocation of this size each time cost page faults
//! and zeroing in the kernel for every piece. (`sendfile` would also save the kernel's copy
//! into the process, but the response goes out through hyper, which owns the socket until the
//! body ends.)

use std::sync::{Arc, Mutex};

use axum::body::Body;
use bytes::Bytes;

/// Bytes read per trip to the blocking pool.
const PIECE: u64 = 512 << 10;
/// Buffers kept for reuse (16 MiB at most stays allocated between bursts).
const POOLED: usize = 32;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A piece's buffer; back to the pool when the body chunk holding it is dropped.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        if buf.capacity() == PIECE as usize {
            buf.clear();
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < POOLED {
                pool.push(buf);
            }
        }
    }
}

fn buffer() -> Vec<u8> {
    let pooled = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
    pooled.unwrap_or_else(|| Vec::with_capacity(PIECE as usize))
}

/// `len` bytes of `file` from `start`, as a body; a file shorter than that ends the body with
/// an error (the connection is cut, never a clean short response).
pub fn file_body(file: std::fs::File, start: u64, len: u64) -> Body {
    let file = Arc::new(file);
    let pieces =
        futures_util::stream::try_unfold((file, start, len), |(file, at, left)| async move {
            if left == 0 {
                return Ok(None);
            }
            let want = left.min(PIECE) as usize;
            let reader = file.clone();
            let piece = tokio::task::spawn_blocking(move || read_at(&reader, at, want))
                .await
                .map_err(std::io::Error::other)??;
            let got = piece.len() as u64;
            Ok::<_, std::io::Error>(Some((piece, (file, at + got, left - got))))
        });
    Body::from_stream(pieces)
}

/// Exactly `want` bytes at `at` (fewer only at the end of the file, which is an error here).
fn read_at(file: &std::fs::File, at: u64, want: usize) -> std::io::Result<Bytes> {
    let mut buf = buffer();
    while buf.len() < want {
        let offset = at + buf.len() as u64;
        let room = want - buf.len();
        let spare = &mut buf.spare_capacity_mut()[..room];
        let (read, _) = rustix::io::pread(file, spare, offset)?;
        let n = read.len();
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the blob file is shorter than its size",
            ));
        }
        // SAFETY: `pread` initialised the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + n) };
    }
    Ok(Bytes::from_owner(Pooled(buf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ranges_of_a_file_come_back_whole_and_a_short_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let bytes: Vec<u8> = (0..(3 * PIECE + 17)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        for (start, len) in [
            (0, bytes.len() as u64),
            (5, PIECE),
            (PIECE - 1, PIECE + 2),
            (9, 0),
        ] {
            let body = file_body(std::fs::File::open(&path).unwrap(), start, len);
            let got = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            assert_eq!(&got[..], &bytes[start as usize..(start + len) as usize]);
        }
        let body = file_body(std::fs::File::open(&path).unwrap(), 10, bytes.len() as u64);
        assert!(
            axum::body::to_bytes(body, usize::MAX).await.is_err(),
            "a short file is not a clean end"
        );
    }
}
