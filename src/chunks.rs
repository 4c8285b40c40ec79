//! Content-defined chunks of a blob, and the chunk index that lists them (the data behind
//! delta pulls, see `transfer::delta`).
//!
//! Files are cut into chunks (FastCDC, 64 KiB–1 MiB, 256 KiB on average: an entry per
//! 256 KiB keeps an index near 0.04% of the model), each named by its length and hash
//! (BLAKE3 for new indexes: a chunk's hash only finds candidate bytes, the blob's SHA-256
//! digest is what vouches for them, and BLAKE3 costs push a fraction of a second SHA-256
//! pass over the model; SHA-256 indexes from earlier builds are still read).
//! Content-defined boundaries make an unchanged stretch of a file give the same chunks
//! wherever it moved. A safetensors file is first cut at its header and at every tensor's
//! start and end, so a changed tensor costs its own bytes, not the chunks around it.
//!
//! Chunk lists are hints, never proofs: whoever copies a chunk re-hashes its bytes as they
//! are read, and every assembled blob is checked against its digest. So a list remembered
//! on disk (in a folder's record or the store) may be stale or hostile and cost only a fetch.
//!
//! FastCDC is the `fastcdc` crate's (a well-kept implementation of the published algorithm);
//! the index format and the single-read cutting (digest and chunks in one pass) are hoist's.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::{Digest, Hasher};
use crate::oci::Descriptor;

/// The artifact type (and layer media type) of a chunk index.
pub const INDEX_TYPE: &str = "application/vnd.hoist.chunk-index.v1+json";
/// Chunk boundaries found by content alone.
pub const PLAIN: &str = "fastcdc-2020";
/// The same, but a safetensors file is first cut at its header and at every tensor's bounds
/// (a small tensor in the middle of a 256 KiB chunk would otherwise cost the chunk). The
/// default.
pub const TENSORS: &str = "fastcdc-2020-safetensors";
pub const MIN: u32 = 64 << 10;
pub const AVG: u32 = 256 << 10;
pub const MAX: u32 = 1 << 20;
/// An index larger than this is not read (a 64 MiB index describes about 160 GiB).
pub const MAX_INDEX_BYTES: u64 = 64 << 20;
/// A safetensors header larger than this is not parsed (the file is chunked by content).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// One blob's chunks, in order: (length, hash hex).
pub type ChunkList = Vec<(u64, String)>;

/// Each raw layer's chunks, as attached beside an artifact.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkIndex {
    pub chunker: String,
    pub min: u32,
    pub avg: u32,
    pub max: u32,
    /// How chunks are named (absent in indexes of earlier builds: SHA-256).
    #[serde(default)]
    pub hash: ChunkHash,
    pub blobs: BTreeMap<Digest, ChunkList>,
}

/// The hash that names a chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkHash {
    #[default]
    Sha256,
    Blake3,
}

impl ChunkHash {
    /// The hash new indexes use.
    pub const NEW: ChunkHash = ChunkHash::Blake3;

    /// `data`'s name (lowercase hex).
    pub fn of(self, data: &[u8]) -> String {
        match self {
            ChunkHash::Sha256 => hex::encode(Sha256::digest(data)),
            ChunkHash::Blake3 => blake3::hash(data).to_hex().to_string(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            ChunkHash::Sha256 => "sha256",
            ChunkHash::Blake3 => "blake3",
        }
    }
}

/// The chunks a folder's record or the store remembers for one blob, and how they were cut
/// (only chunks cut the same way can match).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KnownChunks {
    pub scheme: String,
    pub chunks: ChunkList,
}

/// One chunk of a local file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub len: u64,
    /// The chunk's hash (hex), by the [`ChunkHash`] it was cut with.
    pub hash: String,
}

/// The chunker this build uses for new indexes. `HOIST_CHUNKER=fastcdc-2020` picks
/// content-only chunking (to compare the two in benchmarks).
pub fn default_chunker() -> &'static str {
    match std::env::var("HOIST_CHUNKER").as_deref() {
        Ok(PLAIN) => PLAIN,
        _ => TENSORS,
    }
}

/// How `chunker` cuts with this build's sizes and names chunks with `hash`, as remembered
/// beside chunk lists.
pub fn scheme_of(chunker: &str, hash: ChunkHash) -> String {
    format!("{chunker}/{MIN}/{AVG}/{MAX}/{}", hash.name())
}

/// The chunks of a file, by the named chunker (one sequential read).
pub fn chunks_of(path: &Path, chunker: &str, hash: ChunkHash) -> std::io::Result<Vec<Chunk>> {
    cut(path, chunker, hash, None)
}

/// The file's digest and its chunks, from one sequential read of its bytes (what `push`
/// does, so that indexing costs no second read of the model).
pub fn digest_and_chunks(
    path: &Path,
    chunker: &str,
    hash: ChunkHash,
) -> std::io::Result<(Digest, Vec<Chunk>)> {
    let mut hasher = Hasher::new();
    let chunks = cut(path, chunker, hash, Some(&mut hasher))?;
    Ok((hasher.finish(), chunks))
}

/// Cut `path` into chunks; every byte read also goes to `whole` when given.
fn cut(
    path: &Path,
    chunker: &str,
    hash: ChunkHash,
    whole: Option<&mut Hasher>,
) -> std::io::Result<Vec<Chunk>> {
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    cut_reader(
        std::io::BufReader::with_capacity(1 << 20, file),
        size,
        chunker,
        hash,
        whole,
    )
}

/// The chunks of `size` bytes read once from `reader` (a download as it arrives, hashed
/// whole elsewhere at the same time).
pub fn chunks_of_reader(
    reader: impl Read,
    size: u64,
    chunker: &str,
    hash: ChunkHash,
) -> std::io::Result<Vec<Chunk>> {
    cut_reader(reader, size, chunker, hash, None)
}

/// Cut what `reader` gives (`size` bytes expected) into chunks, in one sequential read; every
/// byte read also goes to `whole` when given. A safetensors header is read first, from the
/// same stream, to find the tensors' bounds.
fn cut_reader(
    reader: impl Read,
    size: u64,
    chunker: &str,
    hash: ChunkHash,
    whole: Option<&mut Hasher>,
) -> std::io::Result<Vec<Chunk>> {
    let mut reader = Tee {
        inner: reader,
        whole,
    };
    let mut head = Vec::new();
    let segments = match chunker {
        TENSORS => safetensors_segments(&mut reader, size, &mut head),
        _ => None,
    }
    .unwrap_or_else(|| vec![(0, size)]);
    let mut reader = std::io::Cursor::new(head).chain(reader);
    let mut out = Vec::new();
    for (start, len) in segments {
        // Segments are in order and cover the file: one reader goes through them all.
        let segment = (&mut reader).take(len);
        for chunk in fastcdc::v2020::StreamCDC::new(segment, MIN, AVG, MAX) {
            let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()))?;
            out.push(Chunk {
                offset: start + chunk.offset,
                len: chunk.length as u64,
                hash: hash.of(&chunk.data),
            });
        }
    }
    // Whatever the file grew by since `size` was read still reaches the whole-file digest
    // (which must describe every byte pushed), though it is in no chunk.
    let (_, mut rest) = reader.into_inner();
    if rest.whole.is_some() {
        std::io::copy(&mut rest, &mut std::io::sink())?;
    }
    Ok(out)
}

/// A reader that also hashes what it reads.
struct Tee<'h, R> {
    inner: R,
    whole: Option<&'h mut Hasher>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = self.whole.as_deref_mut() {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// A safetensors file cut into its header and each tensor's bytes (and any gap between), in
/// order and covering the whole file; `None` if it is not one. The bytes read to find out
/// are left in `head`, for the caller to read again.
fn safetensors_segments(
    reader: &mut impl Read,
    size: u64,
    head: &mut Vec<u8>,
) -> Option<Vec<(u64, u64)>> {
    reader.take(8).read_to_end(head).ok()?;
    let header_len = u64::from_le_bytes(head.as_slice().try_into().ok()?);
    if header_len > MAX_HEADER_BYTES || 8 + header_len > size {
        return None;
    }
    reader.take(header_len).read_to_end(head).ok()?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(head.get(8..)?).ok()?;
    let base = 8 + header_len;
    let mut cuts: Vec<u64> = vec![0, base, size];
    for (name, tensor) in &header {
        if name == "__metadata__" {
            continue;
        }
        for o in tensor.get("data_offsets")?.as_array()? {
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

/// Chunks as an index lists them.
pub fn listed(chunks: Vec<Chunk>) -> ChunkList {
    chunks.into_iter().map(|c| (c.len, c.hash)).collect()
}

impl ChunkIndex {
    /// An index of blobs already cut with this build's `chunker`.
    pub fn new(chunker: &str, blobs: BTreeMap<Digest, ChunkList>) -> ChunkIndex {
        ChunkIndex {
            chunker: chunker.into(),
            min: MIN,
            avg: AVG,
            max: MAX,
            hash: ChunkHash::NEW,
            blobs,
        }
    }

    /// The index of raw-layer files: each blob's digest and the file holding its bytes.
    pub fn of_files(files: &[(Digest, PathBuf)]) -> std::io::Result<ChunkIndex> {
        let chunker = default_chunker();
        let mut blobs = BTreeMap::new();
        for (digest, path) in files {
            blobs.insert(
                digest.clone(),
                listed(chunks_of(path, chunker, ChunkHash::NEW)?),
            );
        }
        Ok(ChunkIndex::new(chunker, blobs))
    }

    /// Chunked the way this build chunks (otherwise no local chunk can match).
    pub fn compatible(&self) -> bool {
        [PLAIN, TENSORS].contains(&self.chunker.as_str())
            && (self.min, self.avg, self.max) == (MIN, AVG, MAX)
    }

    pub fn scheme(&self) -> String {
        scheme_of(&self.chunker, self.hash)
    }

    /// The chunks of `desc` if the index describes exactly its bytes' length.
    pub fn chunks(&self, desc: &Descriptor) -> Option<&[(u64, String)]> {
        let chunks = self.blobs.get(&desc.digest)?;
        covers_exactly(chunks, desc.size).then_some(chunks.as_slice())
    }
}

/// Do `chunks` add up to exactly `size` bytes (no overflow, at least one chunk)?
pub fn covers_exactly(chunks: &[(u64, String)], size: u64) -> bool {
    !chunks.is_empty()
        && chunks
            .iter()
            .try_fold(0u64, |sum, (len, _)| sum.checked_add(*len))
            == Some(size)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let cut = |p: &Path| chunks_of(p, PLAIN, ChunkHash::NEW).unwrap();
        let (ca, cb) = (cut(&a), cut(&b));
        let known: std::collections::HashSet<&str> = ca.iter().map(|c| c.hash.as_str()).collect();
        let new: u64 = cb
            .iter()
            .filter(|c| !known.contains(c.hash.as_str()))
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

    /// The one-read path gives the same chunks as chunking alone and the file's real digest,
    /// for a safetensors file (cut at tensor bounds) and for plain bytes.
    #[test]
    fn one_read_gives_the_digest_and_the_same_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let header = br#"{"a":{"dtype":"U8","shape":[300000],"data_offsets":[0,300000]},"b":{"dtype":"U8","shape":[700000],"data_offsets":[300000,1000000]}}"#;
        let mut st = (header.len() as u64).to_le_bytes().to_vec();
        st.extend_from_slice(header);
        st.extend(crate::testkit::noise(1_000_000, 3));
        let plain = crate::testkit::noise(3 << 20, 4);
        for (name, bytes) in [("m.safetensors", &st), ("blob", &plain)] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let (digest, chunks) = digest_and_chunks(&path, TENSORS, ChunkHash::NEW).unwrap();
            assert_eq!(digest, Digest::of_bytes(bytes));
            assert_eq!(chunks, chunks_of(&path, TENSORS, ChunkHash::NEW).unwrap());
            assert_eq!(
                chunks.iter().map(|c| c.len).sum::<u64>(),
                bytes.len() as u64
            );
            for c in &chunks {
                let slice = &bytes[c.offset as usize..(c.offset + c.len) as usize];
                assert_eq!(blake3::hash(slice).to_hex().to_string(), c.hash);
            }
        }
        // The safetensors file is cut at the header's end and at the tensors' bounds.
        let offsets: Vec<u64> =
            chunks_of(&dir.path().join("m.safetensors"), TENSORS, ChunkHash::NEW)
                .unwrap()
                .iter()
                .map(|c| c.offset)
                .collect();
        let base = 8 + header.len() as u64;
        assert!(offsets.contains(&base) && offsets.contains(&(base + 300_000)));
    }

    /// An index from an earlier build (no `hash` field) names chunks by SHA-256, and a list
    /// cut one way is never taken for the other (their schemes differ).
    #[test]
    fn indexes_without_a_hash_field_are_sha256() {
        let old = r#"{"chunker":"fastcdc-2020","min":65536,"avg":262144,"max":1048576,"blobs":{}}"#;
        let index: ChunkIndex = serde_json::from_str(old).unwrap();
        assert_eq!(index.hash, ChunkHash::Sha256);
        assert!(index.compatible());
        assert_ne!(
            index.scheme(),
            ChunkIndex::new(PLAIN, BTreeMap::new()).scheme()
        );
        assert_eq!(
            ChunkHash::Sha256.of(b"abc"),
            hex::encode(Sha256::digest(b"abc"))
        );
    }

    #[test]
    fn chunk_lists_that_do_not_add_up_are_not_used() {
        let c = |n| (n, "x".to_string());
        assert!(covers_exactly(&[c(3), c(4)], 7));
        assert!(!covers_exactly(&[c(3), c(4)], 8));
        assert!(!covers_exactly(&[], 0));
        assert!(!covers_exactly(&[c(u64::MAX), c(2)], 1));
    }
}
