//! Clients that ask for a blob while it arrives: each follows the part file as it grows, in
//! batches, and ends with the pump's verdict (a blob that fails its digest ends the
//! response with an error, never with a clean end).

use std::sync::Arc;

use axum::body::Body;
use tokio::sync::watch;

use super::Progress;

/// Bytes a follower waits for before it reads (unless the fetch ended): one read and one
/// chunk per megabyte, not one per network packet.
pub(super) const FOLLOW_BATCH: u64 = 1 << 20;

/// A body that reads a part file as it grows, waiting for the fetch to bring more bytes. The
/// file is already open, so it stays readable after the fetch renames it into the store.
pub(super) fn follow(
    file: std::fs::File,
    size: u64,
    mut progress: watch::Receiver<Progress>,
) -> Body {
    let (tx, mut chunks) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let file = Arc::new(file);
    tokio::spawn(async move {
        let result: Result<(), String> = async {
            let mut pos = 0u64;
            while pos < size {
                let available = match *progress.borrow_and_update() {
                    Progress::Running(n) => n,
                    Progress::Done => size,
                    Progress::Failed => return Err("the upstream fetch failed".into()),
                };
                if available < size && available < pos + FOLLOW_BATCH {
                    if progress.changed().await.is_err() && *progress.borrow() != Progress::Done {
                        return Err("the upstream fetch ended early".into());
                    }
                    continue;
                }
                let want = (available - pos).min(4 * FOLLOW_BATCH) as usize;
                let (file, at) = (file.clone(), pos);
                let chunk = tokio::task::spawn_blocking(move || read_chunk(&file, at, want))
                    .await
                    .expect("read task does not panic")
                    .map_err(|e| e.to_string())?;
                pos += chunk.len() as u64;
                if tx.send(Ok(chunk)).await.is_err() {
                    return Ok(()); // the client went away; the fetch goes on
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = tx.send(Err(std::io::Error::other(e))).await;
        }
    });
    Body::from_stream(futures_util::stream::poll_fn(move |cx| {
        chunks.poll_recv(cx)
    }))
}

/// `len` bytes of `file` from `at` (fewer only at its end), read into a buffer that becomes
/// the chunk without another copy.
pub(super) fn read_chunk(
    file: &std::fs::File,
    at: u64,
    len: usize,
) -> std::io::Result<bytes::Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], at + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    if filled == 0 {
        return Err(std::io::Error::other(
            "the part file is shorter than its progress",
        ));
    }
    buf.truncate(filled);
    Ok(bytes::Bytes::from(buf))
}
