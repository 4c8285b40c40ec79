//! A stored blob as a response body: read in 512 KiB pieces straight into the buffers handed
//! to the connection, buffers that are used again once the connection has sent them.
//!
//! Why not `tokio::fs::File` with `ReaderStream` (what this replaced): that reads into the
//! file's own buffer on the blocking pool and then copies into the stream's, 256 KiB at a
//! time, so each byte was copied twice in the process and each 256 KiB cost two thread
//! switches. Here:
//! - a piece is read into the buffer that becomes the body chunk (no copy in the process);
//! - it is read on the async worker when its bytes are in the page cache (`preadv2` with
//!   `RWF_NOWAIT`, which never waits for the disk), and only otherwise on the blocking pool;
//! - the buffer goes back to a small pool when hyper drops the chunk: a fresh allocation of
//!   this size each time cost page faults and zeroing in the kernel for every piece.
//!
//! `sendfile` would also save the kernel's copy into the process, but the response goes out
//! through hyper, which owns the socket until the body ends.
//!
//! A Xet xorb (`serve::hub::xet`) is sent the same way: each chunk's 8-byte header is written
//! into the piece's buffer and the chunks' data read behind them in one vectored read, so the
//! framing costs no copy either.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use bytes::Bytes;

use super::hub::xet::{self, Xorb};

/// Bytes read at once.
const PIECE: usize = 512 << 10;
/// Buffers kept for reuse (16 MiB at most stays allocated between bursts).
const POOLED: usize = 32;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A piece: the first `len` bytes of a pooled buffer, which goes back to the pool when the
/// body chunk holding it is dropped.
struct Piece {
    buf: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOLED {
            pool.push(buf);
        }
    }
}

/// Room past `PIECE` for the chunk headers of a framed piece.
const FRAMING: usize = 64;

/// A buffer of `PIECE + FRAMING` bytes (zeroed once, when first made).
fn buffer() -> Vec<u8> {
    let pooled = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
    pooled.unwrap_or_else(|| vec![0; PIECE + FRAMING])
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
            let want = left.min(PIECE as u64) as usize;
            let piece = read_piece(&file, at, want).await?;
            Ok::<_, std::io::Error>(Some((piece, (file, at + want as u64, left - want as u64))))
        });
    Body::from_stream(pieces)
}

/// `want` bytes at `at`: what the page cache holds now, the rest from the blocking pool.
async fn read_piece(file: &Arc<std::fs::File>, at: u64, want: usize) -> std::io::Result<Bytes> {
    let mut buf = buffer();
    let cached = {
        let mut slices = [std::io::IoSliceMut::new(&mut buf[..want])];
        rustix::io::preadv2(&**file, &mut slices, at, rustix::io::ReadWriteFlags::NOWAIT)
    };
    // EAGAIN (not in memory) or a filesystem without RWF_NOWAIT: all from the blocking pool.
    let filled = cached.unwrap_or(0);
    if filled < want {
        // The rest, waiting for the disk; a file shorter than its size is `UnexpectedEof`.
        use std::os::unix::fs::FileExt;
        let file = file.clone();
        buf = tokio::task::spawn_blocking(move || {
            file.read_exact_at(&mut buf[filled..want], at + filled as u64)
                .map(|()| buf)
        })
        .await
        .map_err(std::io::Error::other)??;
    }
    Ok(Bytes::from_owner(Piece { buf, len: want }))
}

/// Chunks read at once into a framed piece: `PIECE` bytes of data.
const CHUNKS_PER_PIECE: u64 = PIECE as u64 / xet::CHUNK;

/// Bytes `[first, last]` of a Xet xorb's served form (`serve::hub::xet`): each chunk's header
/// written into the piece, its data read from the blob right behind it.
pub fn xorb_body(file: std::fs::File, xorb: Xorb, first: u64, last: u64) -> Body {
    let file = Arc::new(file);
    let stride = xet::CHUNK + xet::HEADER;
    let (c0, c1) = (first / stride, last / stride + 1);
    let pieces = futures_util::stream::try_unfold((file, c0), move |(file, c)| async move {
        if c >= c1 {
            return Ok(None);
        }
        let n = CHUNKS_PER_PIECE.min(c1 - c);
        let piece = read_framed(&file, xorb, c, n).await?;
        // Trim the first and last piece to the range asked for.
        let at = xorb.framed_offset(c);
        let from = first.saturating_sub(at) as usize;
        let to = (last + 1 - at).min(piece.len() as u64) as usize;
        Ok::<_, std::io::Error>(Some((piece.slice(from..to), (file, c + n))))
    });
    Body::from_stream(pieces)
}

/// Chunks `[c, c + n)` of `xorb` framed: headers in place, the data read in one `preadv2`
/// (from the page cache on the worker when it is all there, else on the blocking pool).
async fn read_framed(
    file: &Arc<std::fs::File>,
    xorb: Xorb,
    c: u64,
    n: u64,
) -> std::io::Result<Bytes> {
    let mut buf = buffer();
    let mut slots = Vec::with_capacity(n as usize);
    let mut pos = 0;
    for i in c..c + n {
        let len = xorb.chunk_len(i) as usize;
        buf[pos..pos + xet::HEADER as usize].copy_from_slice(&xet::chunk_header(len as u64));
        pos += xet::HEADER as usize;
        slots.push((pos, len));
        pos += len;
    }
    let at = xorb.start + c * xet::CHUNK;
    let want: usize = slots.iter().map(|s| s.1).sum();
    let cached = {
        let mut slices = data_slices(&mut buf, &slots);
        rustix::io::preadv2(&**file, &mut slices, at, rustix::io::ReadWriteFlags::NOWAIT)
    };
    let filled = cached.unwrap_or(0);
    if filled < want {
        // The rest, from where the cached read stopped, waiting for the disk.
        use std::os::unix::fs::FileExt;
        let file = file.clone();
        buf = tokio::task::spawn_blocking(move || {
            let (mut offset, mut skip) = (at, filled);
            for &(slot, len) in &slots {
                let done = skip.min(len);
                skip -= done;
                file.read_exact_at(&mut buf[slot + done..slot + len], offset + done as u64)?;
                offset += len as u64;
            }
            Ok::<_, std::io::Error>(buf)
        })
        .await
        .map_err(std::io::Error::other)??;
    }
    Ok(Bytes::from_owner(Piece { buf, len: pos }))
}

/// The `(start, len)` slots of `buf` as slices for one vectored read.
fn data_slices<'a>(buf: &'a mut [u8], slots: &[(usize, usize)]) -> Vec<std::io::IoSliceMut<'a>> {
    let mut out = Vec::with_capacity(slots.len());
    let (mut rest, mut consumed) = (buf, 0);
    for &(start, len) in slots {
        let (_, tail) = rest.split_at_mut(start - consumed);
        let (slot, tail) = tail.split_at_mut(len);
        out.push(std::io::IoSliceMut::new(slot));
        rest = tail;
        consumed = start + len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ranges_of_a_file_come_back_whole_and_a_short_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let piece = PIECE as u64;
        let bytes: Vec<u8> = (0..(3 * piece + 17)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let ranges = [
            (0, bytes.len() as u64),
            (5, piece),
            (piece - 1, piece + 2),
            (9, 0),
        ];
        // From the page cache (read on the worker), then with the file's pages dropped (read
        // on the blocking pool: `RWF_NOWAIT` finds nothing in memory).
        for cold in [false, true] {
            for (start, len) in ranges {
                let file = std::fs::File::open(&path).unwrap();
                if cold {
                    file.sync_all().unwrap();
                    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
                }
                let got = axum::body::to_bytes(file_body(file, start, len), usize::MAX)
                    .await
                    .unwrap();
                assert_eq!(&got[..], &bytes[start as usize..(start + len) as usize]);
            }
        }
        let body = file_body(std::fs::File::open(&path).unwrap(), 10, bytes.len() as u64);
        assert!(
            axum::body::to_bytes(body, usize::MAX).await.is_err(),
            "a short file is not a clean end"
        );
    }

    #[tokio::test]
    async fn every_range_of_a_xorb_is_its_chunks_behind_their_headers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let size = 2 * xet::XORB + 9 * xet::CHUNK + 5;
        let bytes: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        for index in [0, 2] {
            let xorb = Xorb::of(size, index).unwrap();
            // The served form, made the slow way.
            let mut framed = Vec::new();
            for c in 0..xorb.chunks() {
                let at = (xorb.start + c * xet::CHUNK) as usize;
                let len = xorb.chunk_len(c) as usize;
                framed.extend_from_slice(&xet::chunk_header(len as u64));
                framed.extend_from_slice(&bytes[at..at + len]);
            }
            let n = framed.len() as u64;
            let stride = xet::CHUNK + xet::HEADER;
            for (first, last) in [
                (0, n - 1),
                (3, stride + 2),
                (stride * 4 - 1, n - 2),
                (n - 1, n - 1),
            ] {
                for cold in [false, true] {
                    let file = std::fs::File::open(&path).unwrap();
                    if cold {
                        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
                    }
                    let body = xorb_body(file, xorb, first, last);
                    let got = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                    assert!(
                        got[..] == framed[first as usize..=last as usize],
                        "xorb {index} {first}-{last}"
                    );
                }
            }
        }
    }
}
