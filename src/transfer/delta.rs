//! Delta pulls: a new version costs the bytes that changed.
//!
//! A chunk index (see [`crate::chunks`]) travels beside the artifact as a referrer (artifact
//! type [`crate::chunks::INDEX_TYPE`]; attached and found by `chunk_index`), so the manifest, its digest and what every other tool reads stay as
//! they are.
//!
//! Before a blob is downloaded, hoist looks for its chunks in what this machine already has
//! ([`Earlier`]): the files an earlier pull placed in the output folder (still exactly as
//! placed) and the blobs of the store a pull runs with (the node cache, any model and any
//! version). Their chunk lists are remembered when they arrive (in the folder's record and in
//! the store), so finding them reads no file; a folder file with no remembered list is cut
//! again. Chunks found are copied into the part file, each re-hashed as it is read; only the
//! rest is fetched, as parallel byte ranges. The whole blob is then hashed against its digest
//! as always; if it does not match (an index that lies, a local file changed under us) the
//! part is thrown away and the blob downloaded in full by the normal engine. Nothing here can
//! place a byte that the blob's digest does not vouch for.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{stream, StreamExt, TryStreamExt};

use crate::chunks::{covers_exactly, ChunkIndex, KnownChunks};

use super::{Event, Observer, Target, TransferError};
use crate::digest::Digest;
use crate::oci::Descriptor;
use crate::store::Store;

/// Byte ranges fetched at once for one blob.
const RANGES_AT_ONCE: usize = 8;
/// A missing stretch longer than this is fetched as several ranges, in parallel.
const RANGE_PIECE: u64 = 8 << 20;

/// Bytes this machine already has that may hold a new version's chunks.
pub struct Earlier {
    sources: Vec<Source>,
}

/// One file of earlier bytes: where it is, its size, and its chunk list when one was
/// remembered. `cut_if_unknown`: a file whose list is unknown (or cut another way) is cut
/// again — the folder's few files, never the whole store.
struct Source {
    path: PathBuf,
    size: u64,
    known: Option<KnownChunks>,
    cut_if_unknown: bool,
}

impl Earlier {
    /// The files an earlier pull placed in `folders` (still exactly as placed) and the
    /// blobs of `store` whose chunk lists it remembers.
    pub fn find(folders: &[PathBuf], store: Option<&Store>) -> Earlier {
        let mut sources: Vec<Source> = folders.iter().flat_map(|f| placed_files(f)).collect();
        if let Some(store) = store {
            for (digest, size, known) in store.known_chunks() {
                sources.push(Source {
                    path: store.blob_path(&digest),
                    size,
                    known: Some(known),
                    cut_if_unknown: false,
                });
            }
        }
        Earlier { sources }
    }

    /// Nothing earlier (a target that is not a registry, or nothing to download).
    pub fn none() -> Earlier {
        Earlier {
            sources: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Where each chunk the new version's `index` lists is on disk: chunk hash (hex) →
    /// (path, offset, length). Only chunks the index names are kept, so the map grows with
    /// the model pulled, not with the node cache. Remembered lists cost no read; unknown
    /// folder files are cut again.
    fn catalogue(self, index: &ChunkIndex) -> HashMap<String, (PathBuf, u64, u64)> {
        let scheme = index.scheme();
        let wanted: std::collections::HashSet<&str> = index
            .blobs
            .values()
            .flatten()
            .map(|(_, hash)| hash.as_str())
            .collect();
        let mut local = HashMap::new();
        for source in self.sources {
            let remembered = source
                .known
                .filter(|k| k.scheme == scheme && covers_exactly(&k.chunks, source.size));
            let chunks: Vec<(u64, u64, String)> = match remembered {
                Some(k) => {
                    let mut at = 0;
                    k.chunks
                        .into_iter()
                        .map(|(len, sha)| {
                            at += len;
                            (at - len, len, sha)
                        })
                        .collect()
                }
                None if source.cut_if_unknown => {
                    crate::chunks::chunks_of(&source.path, &index.chunker, index.hash)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|c| (c.offset, c.len, c.hash))
                        .collect()
                }
                None => continue,
            };
            for (offset, len, hash) in chunks {
                if wanted.contains(hash.as_str()) {
                    local
                        .entry(hash)
                        .or_insert_with(|| (source.path.clone(), offset, len));
                }
            }
        }
        local
    }
}

/// The files an earlier pull placed in `out` that are still exactly as placed, each with the
/// chunk list its record remembers.
fn placed_files(out: &Path) -> Vec<Source> {
    let record = crate::materialize::Record::load(out);
    record
        .files
        .iter()
        .filter(|(rel, _)| record.still_placed(out, rel))
        .filter(|(rel, _)| std::fs::symlink_metadata(out.join(rel)).is_ok_and(|m| m.is_file()))
        .map(|(rel, stamp)| Source {
            path: out.join(rel),
            size: stamp.size,
            known: stamp
                .digest
                .as_ref()
                .and_then(|d| record.chunks.get(d))
                .cloned(),
            cut_if_unknown: true,
        })
        .collect()
}

/// The chunk lists of `index` for the blobs `wanted` lists, as remembered beside them.
pub fn known_chunks<'a>(
    index: &ChunkIndex,
    wanted: impl IntoIterator<Item = &'a Descriptor>,
) -> BTreeMap<Digest, KnownChunks> {
    let scheme = index.scheme();
    wanted
        .into_iter()
        .filter_map(|desc| {
            let chunks = index.chunks(desc)?;
            Some((
                desc.digest.clone(),
                KnownChunks {
                    scheme: scheme.clone(),
                    chunks: chunks.to_vec(),
                },
            ))
        })
        .collect()
}

/// What a pull can reuse: the index and where its chunks are on this machine.
pub struct Delta {
    index: ChunkIndex,
    /// Chunk hash (hex) → where those bytes are on disk.
    local: HashMap<String, (PathBuf, u64, u64)>,
    /// A range that delivers nothing for this long ends the attempt (the normal download
    /// then takes the blob).
    stall: Duration,
}

/// What assembling one blob took.
#[derive(Debug, Default, Clone, Copy)]
pub struct Assembled {
    pub reused: u64,
}

impl Delta {
    /// A delta from `index` over the `earlier` bytes (cut off the async workers).
    pub async fn new(index: ChunkIndex, earlier: Earlier, stall: Duration) -> Option<Delta> {
        let (index, local) = tokio::task::spawn_blocking(move || {
            let local = earlier.catalogue(&index);
            (index, local)
        })
        .await
        .ok()?;
        Some(Delta {
            index,
            local,
            stall,
        })
    }

    pub fn index(&self) -> &ChunkIndex {
        &self.index
    }

    /// Is this blob worth assembling: listed in the index with its exact size, and at least
    /// one of its chunks here? (A blob with nothing to reuse goes to the normal engine.)
    pub fn covers(&self, desc: &Descriptor) -> bool {
        self.index
            .chunks(desc)
            .is_some_and(|chunks| chunks.iter().any(|(_, sha)| self.local.contains_key(sha)))
    }

    /// Build `desc` in `part`: local chunks copied (each re-hashed as read), the rest fetched
    /// by range from `target`, then the whole checked against the digest. On any failure the
    /// part is removed and the caller downloads the blob the normal way.
    pub async fn assemble(
        &self,
        target: &Target,
        desc: &Descriptor,
        part: &Path,
        name: &str,
        observer: &Observer,
    ) -> Result<Assembled, TransferError> {
        // A resume record of an earlier normal download describes another part file.
        let _ = std::fs::remove_file(super::fetch::state_path_for(part));
        let result = self.try_assemble(target, desc, part, name, observer).await;
        if result.is_err() {
            let _ = std::fs::remove_file(part);
        }
        result
    }

    async fn try_assemble(
        &self,
        target: &Target,
        desc: &Descriptor,
        part: &Path,
        name: &str,
        observer: &Observer,
    ) -> Result<Assembled, TransferError> {
        let chunks = self
            .index
            .chunks(desc)
            .ok_or_else(|| delta_failed(name, "not in the index"))?;
        let file = std::fs::File::create(part).map_err(TransferError::io(part))?;
        file.set_len(desc.size).map_err(TransferError::io(part))?;
        let (reused, missing) = self.copy_local(&file, chunks, part)?;
        progress(observer, name, reused);
        let file = std::sync::Arc::new(file);
        let fetched: Vec<u64> = stream::iter(pieces(missing))
            .map(|range| self.fetch_range(target, desc, &file, part, name, observer, range))
            .buffer_unordered(RANGES_AT_ONCE)
            .try_collect()
            .await?;
        let part_owned = part.to_path_buf();
        let actual = tokio::task::spawn_blocking(move || Digest::of_file(&part_owned))
            .await
            .expect("hash task does not panic")
            .map_err(TransferError::io(part))?;
        if actual != desc.digest {
            return Err(delta_failed(
                name,
                "the assembled bytes do not match the digest",
            ));
        }
        let fetched: u64 = fetched.iter().sum();
        tracing::debug!("{name}: {reused} bytes from local chunks, {fetched} fetched");
        Ok(Assembled { reused })
    }

    /// Fetch bytes `start..start + len` of the blob into `file` at the same offset; a
    /// request or a body that stalls past the stall timeout fails the attempt.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_range(
        &self,
        target: &Target,
        desc: &Descriptor,
        file: &std::fs::File,
        part: &Path,
        name: &str,
        observer: &Observer,
        (start, len): (u64, u64),
    ) -> Result<u64, TransferError> {
        let Some((client, repository)) = target.registry() else {
            return Err(delta_failed(name, "not a registry"));
        };
        let stalled = || delta_failed(name, "a range stalled");
        let b = tokio::time::timeout(
            self.stall,
            client.get_blob(repository, &desc.digest, Some((start, start + len - 1))),
        )
        .await
        .map_err(|_| stalled())??;
        if !b.partial {
            return Err(delta_failed(name, "the registry ignored Range"));
        }
        let mut at = start;
        let mut body = b.response.bytes_stream();
        while let Some(bytes) = tokio::time::timeout(self.stall, body.try_next())
            .await
            .map_err(|_| stalled())?
            .map_err(|e| delta_failed(name, &crate::registry::error_chain(&e)))?
        {
            if at + bytes.len() as u64 > start + len {
                return Err(delta_failed(name, "a range sent more than asked"));
            }
            file.write_all_at(&bytes, at)
                .map_err(TransferError::io(part))?;
            at += bytes.len() as u64;
            progress(observer, name, bytes.len() as u64);
        }
        if at != start + len {
            return Err(delta_failed(name, "a range ended early"));
        }
        Ok(len)
    }

    /// Copy the chunks found locally into `file`; the bytes reused and the byte ranges
    /// (start, length) still to fetch, adjacent missing chunks merged.
    fn copy_local(
        &self,
        file: &std::fs::File,
        chunks: &[(u64, String)],
        part: &Path,
    ) -> Result<(u64, Vec<(u64, u64)>), TransferError> {
        let mut reused = 0;
        let mut missing: Vec<(u64, u64)> = Vec::new();
        let mut at = 0u64;
        let mut buf = Vec::new();
        for (len, sha) in chunks {
            let found =
                self.local
                    .get(sha)
                    .filter(|(_, _, l)| l == len)
                    .and_then(|(path, offset, len)| {
                        read_checked(path, *offset, *len, sha, self.index.hash, &mut buf)
                    });
            match found {
                Some(()) => {
                    file.write_all_at(&buf, at)
                        .map_err(TransferError::io(part))?;
                    reused += len;
                }
                None => match missing.last_mut() {
                    Some((start, l)) if *start + *l == at => *l += len,
                    _ => missing.push((at, *len)),
                },
            }
            at += len;
        }
        Ok((reused, missing))
    }
}

/// Long missing stretches cut into pieces fetched in parallel.
fn pieces(missing: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    missing
        .into_iter()
        .flat_map(|(start, len)| {
            (0..len.div_ceil(RANGE_PIECE)).map(move |i| {
                (
                    start + i * RANGE_PIECE,
                    (len - i * RANGE_PIECE).min(RANGE_PIECE),
                )
            })
        })
        .collect()
}

/// Read `len` bytes at `offset` of `path` into `buf` if they still hash to `id` by `hash`. A
/// chunk is at most 1 MiB (a longer "chunk" from a hostile list is not read).
fn read_checked(
    path: &Path,
    offset: u64,
    len: u64,
    id: &str,
    hash: crate::chunks::ChunkHash,
    buf: &mut Vec<u8>,
) -> Option<()> {
    if len > u64::from(crate::chunks::MAX) {
        return None;
    }
    let file = std::fs::File::open(path).ok()?;
    buf.resize(len as usize, 0);
    file.read_exact_at(buf, offset).ok()?;
    (hash.of(&buf[..]) == id).then_some(())
}

fn progress(observer: &Observer, name: &str, bytes: u64) {
    if bytes > 0 {
        observer(&Event::Progress {
            name: name.to_string(),
            bytes,
        });
    }
}

fn delta_failed(name: &str, why: &str) -> TransferError {
    TransferError::Io {
        path: PathBuf::from(name),
        source: std::io::Error::other(format!("not built from local chunks: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local chunk whose bytes changed after it was chunked is not copied: its range is
    /// fetched instead.
    #[test]
    fn a_tampered_local_chunk_is_fetched_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![5u8; 300_000];
        let local_file = dir.path().join("old");
        std::fs::write(&local_file, &data).unwrap();
        let chunks = crate::chunks::chunks_of(
            &local_file,
            crate::chunks::TENSORS,
            crate::chunks::ChunkHash::NEW,
        )
        .unwrap();
        let index = ChunkIndex::of_files(&[(Digest::of_bytes(&data), local_file.clone())]).unwrap();
        let local = chunks
            .iter()
            .map(|c| (c.hash.clone(), (local_file.clone(), c.offset, c.len)))
            .collect();
        let delta = Delta {
            index,
            local,
            stall: Duration::from_secs(5),
        };
        // Tamper with the first chunk's bytes on disk, after chunking.
        let mut tampered = data.clone();
        tampered[10] = 6;
        std::fs::write(&local_file, &tampered).unwrap();
        let part = dir.path().join("part");
        let file = std::fs::File::create(&part).unwrap();
        let listed = delta.index.blobs.values().next().unwrap().clone();
        let (reused, missing) = delta.copy_local(&file, &listed, &part).unwrap();
        assert_eq!(
            missing.first().map(|m| m.0),
            Some(0),
            "the tampered chunk is fetched"
        );
        assert_eq!(
            reused + missing.iter().map(|m| m.1).sum::<u64>(),
            data.len() as u64
        );
        let copied = std::fs::read(&part).unwrap();
        assert!(
            copied.len() < 11 || copied[10] != 6,
            "tampered bytes were copied"
        );
    }

    /// A range whose body stops arriving ends the attempt after the stall timeout (the
    /// normal download then takes the blob), not after the client's long read timeout.
    #[tokio::test]
    async fn a_stalled_range_ends_the_attempt_at_the_stall_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    let head = "HTTP/1.1 206 Partial Content\r\nContent-Length: 1000\r\nContent-Range: bytes 0-999/1000\r\n\r\n";
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(&[7u8; 10]).await;
                    tokio::time::sleep(Duration::from_secs(30)).await; // then nothing
                });
            }
        });
        let opts = crate::registry::TransportOptions::default();
        let target = Target::Remote {
            client: crate::registry::RegistryClient::new(
                &addr.to_string(),
                &opts,
                crate::registry::Credentials::default(),
            )
            .unwrap(),
            repository: "t/stall".into(),
            mirrors: Vec::new(),
        };
        let delta = Delta {
            index: ChunkIndex::default(),
            local: HashMap::new(),
            stall: Duration::from_millis(300),
        };
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("part");
        let file = std::fs::File::create(&part).unwrap();
        let desc = Descriptor::new("application/octet-stream", Digest::of_bytes(b"x"), 1000);
        let observer = super::super::silent();
        let started = std::time::Instant::now();
        let result = delta
            .fetch_range(&target, &desc, &file, &part, "w", &observer, (0, 1000))
            .await;
        assert!(result.is_err(), "a stalled range cannot succeed");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "ended after {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn long_missing_stretches_are_cut_into_pieces() {
        let cut = pieces(vec![(5, 3 * RANGE_PIECE + 1), (100 << 20, 10)]);
        assert_eq!(cut.len(), 5);
        assert_eq!(cut[0], (5, RANGE_PIECE));
        assert_eq!(cut[3], (5 + 3 * RANGE_PIECE, 1));
        assert_eq!(cut.iter().map(|p| p.1).sum::<u64>(), 3 * RANGE_PIECE + 11);
    }
}
