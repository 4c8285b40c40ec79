//! Delta pulls: a new version costs the bytes that changed.
//!
//! A chunk index travels beside the artifact as a referrer (artifact type [`INDEX_TYPE`]), so
//! the manifest, its digest and what every other tool reads stay as they are. It lists each
//! raw layer's content-defined chunks (FastCDC, 64 KiB–1 MiB, 256 KiB on average: an entry
//! per 256 KiB keeps the index near 0.04% of the model), each as its length and SHA-256.
//!
//! A pull into a folder that an earlier pull filled chunks the files that pull placed (still
//! exactly as placed) with the same parameters: content-defined boundaries make an unchanged
//! stretch of a file give the same chunks wherever it moved. For each blob to download,
//! chunks found locally are copied into the part file (each re-hashed as it is read), and only
//! the rest is fetched, in byte ranges. The whole blob is then hashed against its digest as
//! always; if it does not match (an index that lies, a local file changed under us) the part
//! is thrown away and the blob downloaded in full. Nothing here can place a byte that the
//! blob's digest does not vouch for.
//!
//! FastCDC is the `fastcdc` crate's (a well-kept implementation of the published algorithm);
//! the index format and the assembly are hoist's.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use futures_util::{stream, StreamExt, TryStreamExt};
use sha2::{Digest as _, Sha256};

use super::{Event, Observer, Target, TransferError};
use crate::digest::Digest;
use crate::oci::Descriptor;

/// The artifact type (and layer media type) of a chunk index.
pub const INDEX_TYPE: &str = "application/vnd.hoist.chunk-index.v1+json";
/// Chunk boundaries found by content alone.
const PLAIN: &str = "fastcdc-2020";
/// The same, but a safetensors file is first cut at its header and at every tensor's start
/// and end: a changed tensor then costs its own bytes, not the content-defined chunks around
/// it (a small tensor in the middle of a 256 KiB chunk would cost the chunk). The default.
const TENSORS: &str = "fastcdc-2020-safetensors";
const MIN: u32 = 64 << 10;
const AVG: u32 = 256 << 10;
const MAX: u32 = 1 << 20;
/// An index larger than this is not read (a 64 MiB index describes about 160 GiB).
const MAX_INDEX_BYTES: u64 = 64 << 20;
/// How long finding and reading an index may take before the pull goes on without it.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Byte ranges fetched at once for one blob.
const RANGES_AT_ONCE: usize = 8;
/// A missing stretch longer than this is fetched as several ranges, in parallel.
const RANGE_PIECE: u64 = 8 << 20;

/// Each raw layer's chunks, in order: (length, SHA-256 hex).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkIndex {
    pub chunker: String,
    pub min: u32,
    pub avg: u32,
    pub max: u32,
    pub blobs: BTreeMap<Digest, Vec<(u64, String)>>,
}

/// One chunk of a local file.
#[derive(Debug, Clone)]
struct Chunk {
    offset: u64,
    len: u64,
    sha256: String,
}

/// The chunks of a file, by the named chunker.
fn chunks_of(path: &Path, chunker: &str) -> std::io::Result<Vec<Chunk>> {
    let size = std::fs::metadata(path)?.len();
    let segments = match chunker {
        TENSORS => safetensors_segments(path, size).unwrap_or_else(|| vec![(0, size)]),
        _ => vec![(0, size)],
    };
    let mut out = Vec::new();
    for (start, len) in segments {
        let mut file = std::fs::File::open(path)?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start))?;
        let reader = std::io::BufReader::with_capacity(1 << 20, file.take(len));
        for chunk in fastcdc::v2020::StreamCDC::new(reader, MIN, AVG, MAX) {
            let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()))?;
            out.push(Chunk {
                offset: start + chunk.offset,
                len: chunk.length as u64,
                sha256: hex::encode(Sha256::digest(&chunk.data)),
            });
        }
    }
    Ok(out)
}

/// A safetensors file cut into its header and each tensor's bytes (and any gap between), in
/// order and covering the whole file; `None` if it is not one.
fn safetensors_segments(path: &Path, size: u64) -> Option<Vec<(u64, u64)>> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let header_len = u64::from_le_bytes(len);
    if header_len > (100 << 20) || 8 + header_len > size {
        return None;
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).ok()?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).ok()?;
    let base = 8 + header_len;
    let mut cuts: Vec<u64> = vec![0, base, size];
    for (name, tensor) in &header {
        if name == "__metadata__" {
            continue;
        }
        let offsets = tensor.get("data_offsets")?.as_array()?;
        for o in offsets {
            let at = base.checked_add(o.as_u64()?)?;
            if at > size {
                return None;
            }
            cuts.push(at);
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    Some(
        cuts.windows(2)
            .filter(|w| w[1] > w[0])
            .map(|w| (w[0], w[1] - w[0]))
            .collect(),
    )
}

impl ChunkIndex {
    /// The index of raw-layer files: each blob's digest and the file holding its bytes.
    pub fn of_files(files: &[(Digest, PathBuf)]) -> std::io::Result<ChunkIndex> {
        // HOIST_CHUNKER=fastcdc-2020 picks content-only chunking (to compare, in benchmarks).
        let chunker = match std::env::var("HOIST_CHUNKER").as_deref() {
            Ok(PLAIN) => PLAIN,
            _ => TENSORS,
        };
        let mut blobs = BTreeMap::new();
        for (digest, path) in files {
            let chunks = chunks_of(path, chunker)?;
            blobs.insert(
                digest.clone(),
                chunks.into_iter().map(|c| (c.len, c.sha256)).collect(),
            );
        }
        Ok(ChunkIndex {
            chunker: chunker.into(),
            min: MIN,
            avg: AVG,
            max: MAX,
            blobs,
        })
    }

    /// Chunked the way this build chunks (otherwise no local chunk can match).
    fn compatible(&self) -> bool {
        [PLAIN, TENSORS].contains(&self.chunker.as_str())
            && (self.min, self.avg, self.max) == (MIN, AVG, MAX)
    }

    /// The chunks of `desc` if the index describes exactly its bytes' length.
    fn chunks(&self, desc: &Descriptor) -> Option<&[(u64, String)]> {
        let chunks = self.blobs.get(&desc.digest)?;
        let total = chunks
            .iter()
            .try_fold(0u64, |sum, (len, _)| sum.checked_add(*len))?;
        (total == desc.size && !chunks.is_empty()).then_some(chunks.as_slice())
    }
}

/// Attach `index` to the manifest `subject` as a referrer; its digest.
pub async fn attach_index(
    target: &Target,
    subject: &Digest,
    index: &ChunkIndex,
    scratch: &Path,
) -> Result<Digest, TransferError> {
    let path = scratch.join("chunk-index.json");
    let bytes = serde_json::to_vec(index).expect("index serialises");
    std::fs::write(&path, bytes).map_err(TransferError::io(&path))?;
    super::attach(
        target,
        subject.as_str(),
        &[path],
        INDEX_TYPE,
        BTreeMap::new(),
    )
    .await
}

/// The chunk index attached to `manifest`, if there is a readable one.
pub async fn find_index(target: &Target, manifest: &Digest) -> Option<ChunkIndex> {
    let referrers = super::discover(target, manifest, Some(INDEX_TYPE), 1)
        .await
        .ok()?;
    for referrer in referrers {
        let (_, bytes, _) = target
            .fetch_manifest(referrer.descriptor.digest.as_str())
            .await
            .ok()?;
        let Ok(crate::oci::ManifestKind::Image(m)) = crate::oci::ManifestKind::parse(None, &bytes)
        else {
            continue;
        };
        let Some(layer) = m.layers.first().filter(|l| l.size <= MAX_INDEX_BYTES) else {
            continue;
        };
        let Some(bytes) = read_small_blob(target, layer).await else {
            continue;
        };
        match serde_json::from_slice::<ChunkIndex>(&bytes) {
            Ok(index) if index.compatible() => return Some(index),
            _ => continue,
        }
    }
    None
}

/// A small blob's bytes, checked against its digest.
async fn read_small_blob(target: &Target, desc: &Descriptor) -> Option<Vec<u8>> {
    let bytes = match target {
        Target::Local { store, .. } => store.read_blob(&desc.digest, desc.size).ok()?,
        Target::Remote {
            client, repository, ..
        } => {
            let b = client.get_blob(repository, &desc.digest, None).await.ok()?;
            client.read_content(b.response, desc.size).await?
        }
    };
    (Digest::of_bytes(&bytes) == desc.digest).then_some(bytes)
}

/// What a pull can reuse: the index and the chunks of the files an earlier pull left.
pub struct Delta {
    index: ChunkIndex,
    /// SHA-256 hex → where those bytes are on disk.
    local: HashMap<String, (PathBuf, u64, u64)>,
}

/// What assembling one blob took.
#[derive(Debug, Default, Clone, Copy)]
pub struct Assembled {
    pub reused: u64,
    pub fetched: u64,
}

impl Delta {
    /// A delta for pulling into `out`: only when an earlier pull left files there (otherwise
    /// no request is made) and the artifact has a chunk index.
    pub async fn prepare(target: &Target, manifest: &Digest, out: &Path) -> Option<Delta> {
        if !matches!(target, Target::Remote { .. }) {
            return None;
        }
        let out_owned = out.to_path_buf();
        let files: Vec<PathBuf> = tokio::task::spawn_blocking(move || previous_files(&out_owned))
            .await
            .ok()?;
        if files.is_empty() {
            return None;
        }
        // Looking is optional: a registry slow to answer costs the pull at most this.
        let index = tokio::time::timeout(LOOKUP_TIMEOUT, find_index(target, manifest))
            .await
            .ok()??;
        let chunker = index.chunker.clone();
        let local = tokio::task::spawn_blocking(move || {
            let mut local = HashMap::new();
            for path in files {
                for c in chunks_of(&path, &chunker).unwrap_or_default() {
                    local
                        .entry(c.sha256)
                        .or_insert((path.clone(), c.offset, c.len));
                }
            }
            local
        })
        .await
        .ok()?;
        Some(Delta { index, local })
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
        let Target::Remote {
            client, repository, ..
        } = target
        else {
            return Err(delta_failed(name, "not a registry"));
        };
        let chunks = self
            .index
            .chunks(desc)
            .ok_or_else(|| delta_failed(name, "not in the index"))?;
        let file = std::fs::File::create(part).map_err(TransferError::io(part))?;
        file.set_len(desc.size).map_err(TransferError::io(part))?;
        let (reused, missing) = self.copy_local(&file, chunks, part)?;
        progress(observer, name, reused);
        let missing = pieces(missing);
        let file = std::sync::Arc::new(file);
        let fetched: Vec<u64> = stream::iter(missing)
            .map(|(start, len)| {
                let file = file.clone();
                async move {
                    let b = client
                        .get_blob(repository, &desc.digest, Some((start, start + len - 1)))
                        .await?;
                    if !b.partial {
                        return Err(delta_failed(name, "the registry ignored Range"));
                    }
                    let mut at = start;
                    let mut body = b.response.bytes_stream();
                    while let Some(bytes) = body
                        .try_next()
                        .await
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
            })
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
        Ok(Assembled {
            reused,
            fetched: fetched.iter().sum(),
        })
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
            let found = self
                .local
                .get(sha)
                .filter(|(_, _, l)| l == len)
                .and_then(|(path, offset, len)| read_checked(path, *offset, *len, sha, &mut buf));
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

/// Read `len` bytes at `offset` of `path` into `buf` if they still hash to `sha`.
fn read_checked(path: &Path, offset: u64, len: u64, sha: &str, buf: &mut Vec<u8>) -> Option<()> {
    let mut file = std::fs::File::open(path).ok()?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset)).ok()?;
    buf.clear();
    file.take(len).read_to_end(buf).ok()?;
    (buf.len() as u64 == len && hex::encode(Sha256::digest(&buf[..])) == sha).then_some(())
}

/// The files an earlier pull placed in `out` and that are still exactly as placed.
fn previous_files(out: &Path) -> Vec<PathBuf> {
    let record = crate::materialize::Record::load(out);
    record
        .files
        .keys()
        .filter(|rel| record.still_placed(out, rel))
        .map(|rel| out.join(rel))
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .collect()
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

/// Index the raw layers of what `reference` names in `target` (their bytes pulled, verified,
/// into `scratch`) and attach the index; its digest and the index.
pub async fn index_artifact(
    target: &Target,
    reference: &str,
    scratch: &Path,
) -> Result<(Digest, ChunkIndex), TransferError> {
    let resolved = target.resolve(reference).await?;
    let blobs = scratch.join("blobs");
    let opts = super::PullOptions {
        raw: true,
        ..Default::default()
    };
    super::pull(target, reference, &blobs, &opts, super::silent()).await?;
    let files: Vec<(Digest, PathBuf)> = resolved
        .manifest
        .layers
        .iter()
        .map(|l| {
            (
                l.digest.clone(),
                blobs.join("blobs/sha256").join(l.digest.hex()),
            )
        })
        .filter(|(_, p)| p.is_file())
        .collect();
    let index = tokio::task::spawn_blocking(move || ChunkIndex::of_files(&files))
        .await
        .expect("index task does not panic")
        .map_err(TransferError::io(scratch))?;
    let digest = attach_index(target, &resolved.manifest_digest, &index, scratch).await?;
    Ok((digest, index))
}

/// Index the raw layers of a folder just pushed as `packed` and attach the index.
pub async fn index_pushed(
    target: &Target,
    packed: &crate::pack::Packed,
    scratch: &Path,
) -> Result<Digest, TransferError> {
    let files: Vec<(Digest, PathBuf)> = packed
        .blobs
        .iter()
        .skip(1) // the config
        .filter_map(|b| match &b.source {
            crate::pack::BlobSource::File(path) => {
                Some((b.descriptor.digest.clone(), path.clone()))
            }
            crate::pack::BlobSource::Bytes(_) => None,
        })
        .collect();
    let index = tokio::task::spawn_blocking(move || ChunkIndex::of_files(&files))
        .await
        .expect("index task does not panic")
        .map_err(TransferError::io(scratch))?;
    attach_index(target, &packed.manifest_digest, &index, scratch).await
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
        let chunks = chunks_of(&local_file, TENSORS).unwrap();
        let index = ChunkIndex::of_files(&[(Digest::of_bytes(&data), local_file.clone())]).unwrap();
        let local = chunks
            .iter()
            .map(|c| (c.sha256.clone(), (local_file.clone(), c.offset, c.len)))
            .collect();
        let delta = Delta { index, local };
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

    #[test]
    fn long_missing_stretches_are_cut_into_pieces() {
        let cut = pieces(vec![(5, 3 * RANGE_PIECE + 1), (100 << 20, 10)]);
        assert_eq!(cut.len(), 5);
        assert_eq!(cut[0], (5, RANGE_PIECE));
        assert_eq!(cut[3], (5 + 3 * RANGE_PIECE, 1));
        assert_eq!(cut.iter().map(|p| p.1).sum::<u64>(), 3 * RANGE_PIECE + 11);
    }

    #[test]
    fn an_edit_moves_only_the_chunks_around_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = crate::testkit::noise(4 << 20, 7);
        let a = dir.path().join("a");
        std::fs::write(&a, &data).unwrap();
        // Insert 100 bytes in the middle: content-defined boundaries resynchronise.
        data.splice(2 << 20..2 << 20, [9u8; 100]);
        let b = dir.path().join("b");
        std::fs::write(&b, &data).unwrap();
        let (ca, cb) = (chunks_of(&a, PLAIN).unwrap(), chunks_of(&b, PLAIN).unwrap());
        let known: std::collections::HashSet<&str> = ca.iter().map(|c| c.sha256.as_str()).collect();
        let new: u64 = cb
            .iter()
            .filter(|c| !known.contains(c.sha256.as_str()))
            .map(|c| c.len)
            .sum();
        assert!(
            new < 3 * u64::from(MAX),
            "{new} new bytes for a 100-byte insert"
        );
        let index = ChunkIndex::of_files(&[(Digest::of_bytes(&data), b.clone())]).unwrap();
        let size: u64 = index
            .blobs
            .values()
            .next()
            .unwrap()
            .iter()
            .map(|c| c.0)
            .sum();
        assert_eq!(size, data.len() as u64);
        assert!(serde_json::to_vec(&index).unwrap().len() < data.len() / 1000);
    }
}
