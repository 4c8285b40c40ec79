//! What a file's bytes say, read as they pass on their way to the destination: the SHA-256
//! (the blob's digest, checked against the listing), the header of a weight file, and the
//! chunks of the chunk index.
//!
//! Hashing and cutting run on two blocking threads fed the same pieces (a `Bytes` is shared,
//! not copied): SHA-256 and FastCDC + BLAKE3 cost about the same per byte, so one large file
//! keeps two cores busy instead of one. Each thread reads a bounded channel; a piece is
//! handed to the next one only when both have room, so memory stays at a few MiB a file.

use std::io::Read;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::PIPE;
use crate::chunks::{self, ChunkHash, ChunkList};
use crate::digest::{Digest, Hasher};
use crate::oci::modelpack::LayerKind;
use crate::pack::{self, ModelFile, WeightFacts};
use crate::transfer::target::ChannelReader;
use crate::transfer::TransferError;

/// What the bytes of one file were found to be.
pub struct Seen {
    pub digest: Digest,
    pub size: u64,
    pub chunks: Option<ChunkList>,
    pub facts: Option<WeightFacts>,
}

type Pipe = mpsc::Sender<std::io::Result<Bytes>>;

/// The two readers of one file's pieces, started before the first piece is sent.
pub struct Lookers {
    path: String,
    hash_tx: Pipe,
    hashing: JoinHandle<std::io::Result<(Digest, u64, Option<WeightFacts>)>>,
    cut: Option<(Pipe, JoinHandle<std::io::Result<ChunkList>>)>,
}

impl Lookers {
    /// Start hashing `model`'s bytes, and cutting them with `chunker` when one is given.
    pub fn start(model: &ModelFile, chunker: Option<&'static str>) -> Lookers {
        let (hash_tx, hash_rx) = mpsc::channel(PIPE);
        let hashed = model.clone();
        let hashing = tokio::task::spawn_blocking(move || hash(hash_rx, &hashed));
        let cut = chunker.map(|chunker| {
            let (tx, rx) = mpsc::channel(PIPE);
            let size = model.size;
            let task = tokio::task::spawn_blocking(move || {
                let chunks = chunks::chunks_of_reader(
                    ChannelReader::new(rx),
                    size,
                    chunker,
                    ChunkHash::NEW,
                )?;
                Ok(chunks::listed(chunks))
            });
            (tx, task)
        });
        Lookers {
            path: model.relative.clone(),
            hash_tx,
            hashing,
            cut,
        }
    }

    /// Hand both readers `piece`; `false` when one has stopped (its error is `finish`'s).
    pub async fn send(&self, piece: &Bytes) -> bool {
        if self.hash_tx.send(Ok(piece.clone())).await.is_err() {
            return false;
        }
        match &self.cut {
            Some((tx, _)) => tx.send(Ok(piece.clone())).await.is_ok(),
            None => true,
        }
    }

    /// The end of the file: what both readers found.
    pub async fn finish(self) -> Result<Seen, TransferError> {
        let Lookers {
            path,
            hash_tx,
            hashing,
            cut,
        } = self;
        drop(hash_tx);
        let io = |source| TransferError::Io {
            path: path.clone().into(),
            source,
        };
        let chunks = match cut {
            Some((tx, task)) => {
                drop(tx);
                Some(
                    task.await
                        .expect("the cutting task does not panic")
                        .map_err(io)?,
                )
            }
            None => None,
        };
        let (digest, size, facts) = hashing
            .await
            .expect("the hashing task does not panic")
            .map_err(io)?;
        Ok(Seen {
            digest,
            size,
            chunks,
            facts,
        })
    }
}

/// The SHA-256 and length of what `rx` brings, and a weight file's header facts (the header
/// is read first, kept, and hashed with the rest).
fn hash(
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    model: &ModelFile,
) -> std::io::Result<(Digest, u64, Option<WeightFacts>)> {
    let mut reader = ChannelReader::new(rx);
    let (head, facts) = match model.kind {
        LayerKind::Weight => {
            let mut head = Recording::new(&mut reader, pack::MAX_HEADER_READ);
            let facts = pack::weight_facts(&model.relative, &mut head, model.size);
            (head.seen, facts)
        }
        _ => (Vec::new(), None),
    };
    let mut hasher = Hasher::new();
    let n = std::io::copy(&mut std::io::Cursor::new(head).chain(reader), &mut hasher)?;
    Ok((hasher.finish(), n, facts))
}

/// A reader that keeps what it reads (a header, read again for hashing), up to a bound.
struct Recording<'r, R> {
    inner: &'r mut R,
    seen: Vec<u8>,
    limit: u64,
}

impl<'r, R: Read> Recording<'r, R> {
    fn new(inner: &'r mut R, limit: u64) -> Self {
        Recording {
            inner,
            seen: Vec::new(),
            limit,
        }
    }
}

impl<R: Read> Read for Recording<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let room = self.limit.saturating_sub(self.seen.len() as u64) as usize;
        if room == 0 {
            return Err(std::io::Error::other("header larger than the bound read"));
        }
        let want = buf.len().min(room);
        let n = self.inner.read(&mut buf[..want])?;
        self.seen.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}
