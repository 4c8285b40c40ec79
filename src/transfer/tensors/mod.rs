//! An artifact's safetensors files straight into memory: no file written, every byte checked
//! against its layer's digest before the caller sees any of it. What the Python package's
//! `hoist.open_safetensors` returns views over.
//!
//! Each file's header is read first (a ranged read of its first bytes) and checked strictly
//! (`header`): a header that lies about offsets or sizes is refused before the memory for the
//! tensors is taken. Then each blob is downloaded by the pull engine's ranged connections
//! (`Fetcher::download_to_memory`) into a `memfd` — anonymous memory the caller maps — and
//! hashed as it arrives; a blob in the local store (or the node cache) is hashed where it is
//! and handed over without a copy. The header is then read again from the verified bytes and
//! must be the one checked before.

pub mod header;

use std::io::Read;
use std::os::unix::fs::FileExt;

use futures_util::{stream, StreamExt, TryStreamExt};

use super::fetch::{FetchOptions, Fetcher};
use super::{Event, Observer, Target, TransferError};
use crate::digest::Digest;
use crate::oci::{Descriptor, LayerFormat, LayerPlan};
use crate::store::Store;
pub use header::{Header, Tensor};

/// One safetensors file of the artifact, in memory, verified.
pub struct InMemory {
    /// The file's path in the artifact.
    pub path: String,
    pub digest: Digest,
    pub size: u64,
    /// Its bytes: a `memfd` (downloaded) or the store's blob (read-only), to be mapped.
    pub file: std::fs::File,
    pub header: Header,
}

/// Where the bytes come from, besides the target itself.
#[derive(Clone, Default)]
pub struct TensorOptions {
    pub fetch: FetchOptions,
    /// Files fetched at once.
    pub concurrency: usize,
    /// A node cache: a blob it holds is used where it is.
    pub cache: Option<Store>,
}

/// Every `.safetensors` file of `reference` on `target`, in memory and verified.
pub async fn open_safetensors(
    target: &Target,
    reference: &str,
    opts: &TensorOptions,
    observer: Observer,
) -> Result<Vec<InMemory>, TransferError> {
    let resolved = target.resolve(reference).await?;
    let plan = LayerPlan::from_manifest(&resolved.manifest, false)?;
    let files: Vec<(String, Descriptor)> = plan
        .layers
        .iter()
        .filter(|l| l.format == LayerFormat::Raw)
        .filter(|l| l.path.extension().is_some_and(|x| x == "safetensors"))
        .map(|l| (l.path.to_string_lossy().into_owned(), l.descriptor.clone()))
        .collect();
    if files.is_empty() {
        let names: Vec<String> = plan
            .layers
            .iter()
            .map(|l| l.path.display().to_string())
            .collect();
        return Err(TransferError::NothingSelected(format!(
            "{} (no raw .safetensors layer)",
            names.join(", ")
        )));
    }
    // Saturating: sizes come from the manifest, and two of 2^63 must not wrap to a small sum.
    let total = files
        .iter()
        .fold(0u64, |sum, (_, d)| sum.saturating_add(d.size));
    if let Some(available) = available_memory() {
        if total > available {
            return Err(TransferError::Tensors(format!(
                "the safetensors files of {reference} are {total} bytes and the machine has {available} available: nothing was downloaded (hoist pull puts them on disk)"
            )));
        }
    }
    // Every header before any blob: a lying one stops the call before memory is taken.
    let mut headers = Vec::with_capacity(files.len());
    for (path, desc) in &files {
        headers.push(read_header(target, path, desc).await?);
    }
    observer(&Event::Start {
        reference: target.name_of(reference),
        files: files.len(),
        bytes: total,
    });
    let fetcher = Fetcher::new(opts.fetch.clone(), observer.clone());
    let (fetcher, opts) = (&fetcher, opts);
    stream::iter(files.into_iter().zip(headers))
        .map(|((path, desc), header)| async move {
            let file = bring(target, fetcher, opts, &path, &desc).await?;
            let again = header_of(&file, &path, desc.size)?;
            if again != header {
                return Err(refused(
                    &path,
                    "its header changed between two reads".into(),
                ));
            }
            Ok(InMemory {
                digest: desc.digest.clone(),
                size: desc.size,
                path,
                file,
                header,
            })
        })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect()
        .await
}

/// The bytes read first from each blob: most headers fit, so one ranged request reads both
/// the length and the header; a longer header is read again to its end.
const FIRST_READ: u64 = 64 << 10;

/// The header at the start of a blob, read with a ranged request and checked.
async fn read_header(
    target: &Target,
    path: &str,
    desc: &Descriptor,
) -> Result<Header, TransferError> {
    let mut prefix = target.read_blob_prefix(desc, FIRST_READ).await?;
    let first8 = prefix.get(..8).unwrap_or(&prefix);
    let len = header::header_len(first8, desc.size).map_err(|e| refused(path, e.to_string()))?;
    if (prefix.len() as u64) < 8 + len {
        prefix = target.read_blob_prefix(desc, 8 + len).await?;
    }
    let json = &prefix[8..(8 + len) as usize];
    header::parse(json, len, desc.size).map_err(|e| refused(path, e.to_string()))
}

/// The header of the verified bytes in `file`.
fn header_of(file: &std::fs::File, path: &str, size: u64) -> Result<Header, TransferError> {
    let io = TransferError::io(path);
    let mut first8 = [0u8; 8];
    file.read_exact_at(&mut first8, 0).map_err(io)?;
    let len = header::header_len(&first8, size).map_err(|e| refused(path, e.to_string()))?;
    let mut json = vec![0u8; len as usize];
    file.read_exact_at(&mut json, 8)
        .map_err(TransferError::io(path))?;
    header::parse(&json, len, size).map_err(|e| refused(path, e.to_string()))
}

/// `MemAvailable` of `/proc/meminfo`, in bytes: the most a call may take in memory (a
/// manifest that claims 2^60 bytes is refused before a byte of it is asked for).
fn available_memory() -> Option<u64> {
    mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn refused(path: &str, why: String) -> TransferError {
    TransferError::Tensors(format!(
        "{path} is not a safetensors file hoist will map: {why}; nothing was downloaded"
    ))
}

/// The verified bytes of one blob: the store's own file when the target is the local store
/// or the node cache holds it (hashed again here), else downloaded into memory.
async fn bring(
    target: &Target,
    fetcher: &Fetcher,
    opts: &TensorOptions,
    path: &str,
    desc: &Descriptor,
) -> Result<std::fs::File, TransferError> {
    let held = target
        .local_store()
        .or(opts.cache.as_ref())
        .filter(|store| store.blob_size(&desc.digest) == Some(desc.size));
    if let Some(store) = held {
        let blob = store.blob_path(&desc.digest);
        let desc = desc.clone();
        let what = path.to_string();
        return tokio::task::spawn_blocking(move || checked_file(&blob, &desc, &what))
            .await
            .expect("the hashing task does not panic");
    }
    if let Some(store) = target.local_store() {
        return Err(crate::store::StoreError::NotFound {
            reference: format!("{path} ({})", desc.digest),
            root: store.root().to_path_buf(),
        }
        .into());
    }
    let file = fetcher
        .download_to_memory(&target.sources(desc.digest.as_str()), desc, path)
        .await?;
    Ok(file)
}

/// `path` opened read-only, when its bytes hash to `desc`'s digest. Hashed through the very
/// descriptor the caller maps (not `Store::check_blob`, which trusts an unchanged stamp): the
/// bytes checked are the bytes mapped.
fn checked_file(
    blob: &std::path::Path,
    desc: &Descriptor,
    what: &str,
) -> Result<std::fs::File, TransferError> {
    let file = std::fs::File::open(blob).map_err(TransferError::io(blob))?;
    let mut hasher = crate::digest::Hasher::new();
    let n = std::io::copy(&mut (&file).take(desc.size + 1), &mut hasher)
        .map_err(TransferError::io(blob))?;
    let actual = hasher.finish();
    if actual != desc.digest || n != desc.size {
        return Err(TransferError::DigestMismatch {
            what: what.to_string(),
            expected: desc.digest.clone(),
            actual,
            size: n,
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    #[test]
    fn available_memory_is_read_from_meminfo() {
        let meminfo = "MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(super::mem_available(meminfo), Some(20_000_000 * 1024));
        assert_eq!(super::mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(super::mem_available("MemAvailable: lots kB\n"), None);
        assert!(super::available_memory().is_some_and(|n| n > 0));
    }
}
