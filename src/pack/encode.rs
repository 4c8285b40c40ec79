//! Turning files into layer blobs. Raw layers are hashed in place; tar layers are written
//! once to a scratch folder with fixed metadata (mtime, uid, gid, names) so the same folder
//! always gives the same digests. Files are processed on a few threads at once.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{BlobSource, ModelFile, PackError, PackOptions};
use crate::digest::{Digest, HashingWriter};
use crate::oci::LayerFormat;

pub struct EncodedLayer {
    pub digest: Digest,
    /// Digest of the uncompressed content (`modelfs.diffIds`).
    pub diff_id: Digest,
    pub size: u64,
    pub source: BlobSource,
    /// The blob's chunks (raw layers, when the pack makes a chunk index), cut in the same
    /// read that hashed it.
    pub chunks: Option<crate::chunks::ChunkList>,
}

/// Encode every file, a few at once; `on_done(i, layer)` is called from the worker thread as
/// file `i`'s layer is ready.
pub fn encode_all(
    files: &[ModelFile],
    opts: &PackOptions,
    scratch: Option<&Path>,
    on_done: &(dyn Fn(usize, &EncodedLayer) + Sync),
) -> Result<Vec<EncodedLayer>, PackError> {
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Result<EncodedLayer, PackError>>>> =
        files.iter().map(|_| Mutex::new(None)).collect();
    let threads = opts.threads.clamp(1, files.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(file) = files.get(i) else { break };
                let result = match (opts.layer_format, scratch) {
                    (LayerFormat::Raw, _) | (_, None) => raw(file, opts.chunk_index),
                    (format, Some(dir)) => {
                        tar_layer(file, format, opts, &dir.join(format!("{i}.layer")))
                    }
                };
                if let Ok(layer) = &result {
                    on_done(i, layer);
                }
                *results[i].lock().expect("no poisoned lock") = Some(result);
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .expect("no poisoned lock")
                .expect("every file visited")
        })
        .collect()
}

/// A raw layer is the file itself: hashed in place (and cut into chunks in the same read
/// when `chunk`).
fn raw(file: &ModelFile, chunk: bool) -> Result<EncodedLayer, PackError> {
    let read = |source| PackError::Read {
        path: file.source.clone(),
        source,
    };
    let (digest, chunks) = if chunk {
        let chunker = crate::chunks::default_chunker();
        let (digest, chunks) =
            crate::chunks::digest_and_chunks(&file.source, chunker, crate::chunks::ChunkHash::NEW)
                .map_err(read)?;
        (digest, Some(crate::chunks::listed(chunks)))
    } else {
        (Digest::of_file(&file.source).map_err(read)?, None)
    };
    Ok(EncodedLayer {
        diff_id: digest.clone(),
        digest,
        size: file.size,
        source: BlobSource::File(file.source.clone()),
        chunks,
    })
}

fn tar_layer(
    file: &ModelFile,
    format: LayerFormat,
    opts: &PackOptions,
    out: &Path,
) -> Result<EncodedLayer, PackError> {
    let encode_err = |source| PackError::Encode {
        path: file.source.clone(),
        source,
    };
    let sink = HashingWriter::new(BufWriter::with_capacity(
        1 << 20,
        File::create(out).map_err(encode_err)?,
    ));
    let (sink, diff_id) = match format {
        // Uncompressed, the layer is its own content: one hash gives both digests.
        LayerFormat::Tar | LayerFormat::Raw => {
            let mut sink = sink;
            write_tar(file, opts, &mut sink).map_err(encode_err)?;
            let (buffered, digest, size) = sink.finish();
            let mut buffered = buffered;
            buffered.flush().map_err(encode_err)?;
            return Ok(EncodedLayer {
                diff_id: digest.clone(),
                digest,
                size,
                source: BlobSource::File(out.to_path_buf()),
                chunks: None,
            });
        }
        LayerFormat::TarGzip => {
            let level = opts.compression_level.unwrap_or(6).clamp(0, 9) as u32;
            let mut tar = HashingWriter::new(flate2::write::GzEncoder::new(
                sink,
                flate2::Compression::new(level),
            ));
            write_tar(file, opts, &mut tar).map_err(encode_err)?;
            let (gz, diff_id, _) = tar.finish();
            (gz.finish().map_err(encode_err)?, diff_id)
        }
        LayerFormat::TarZstd => {
            let level = opts.compression_level.unwrap_or(3);
            let mut zstd = zstd::stream::write::Encoder::new(sink, level).map_err(encode_err)?;
            zstd.multithread(opts.threads as u32).map_err(encode_err)?;
            let mut tar = HashingWriter::new(zstd);
            write_tar(file, opts, &mut tar).map_err(encode_err)?;
            let (zstd, diff_id, _) = tar.finish();
            (zstd.finish().map_err(encode_err)?, diff_id)
        }
    };
    let (mut buffered, digest, size) = sink.finish();
    buffered.flush().map_err(encode_err)?;
    Ok(EncodedLayer {
        digest,
        diff_id,
        size,
        source: BlobSource::File(out.to_path_buf()),
        chunks: None,
    })
}

/// One-entry tar named by the file's relative path, as modctl writes ModelPack tar layers.
/// The same tar is an image layer for containerd (`hoist push --image-volume`), so every
/// reader of GNU tar must take it: sizes past the 8 GiB octal field use GNU base-256 (which
/// the tar crate writes on its own), names past 100 bytes a GNU long-name entry.
fn write_tar(file: &ModelFile, opts: &PackOptions, w: &mut impl Write) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(w);
    let mut header = tar_header(file.size, file.mode, opts.timestamp);
    let src = File::open(&file.source)?;
    // At most the size the header declares: a file that grows while it is packed must not
    // make the entry longer than its header says.
    let mut src = std::io::Read::take(src, file.size);
    builder.append_data(&mut header, &file.relative, &mut src)?;
    builder.into_inner()?.flush()
}

/// The header of a file's entry: fixed owner and time, so the same folder gives the same
/// digests. The mode is 0755 for a file anyone may execute, else 0644: runtimes unpack image
/// layers with the modes they carry, and a volume's reader (another uid) must be able to
/// read every file, while nothing may be writable by others or setuid.
pub(crate) fn tar_header(size: u64, mode: u32, timestamp: Option<i64>) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(if mode & 0o111 != 0 { 0o755 } else { 0o644 });
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(timestamp.unwrap_or(0).max(0) as u64);
    header
}

#[cfg(test)]
mod tests {
    /// Past the octal field's 8 GiB the size is written in GNU base-256, and reads back.
    #[test]
    fn sizes_past_8_gib_read_back() {
        for size in [0, (8 << 30) - 1, 8 << 30, 40_000_000_000, 1 << 40] {
            let header = super::tar_header(size, 0o644, None);
            assert_eq!(header.size().unwrap(), size);
            let base256 = header.as_bytes()[124] & 0x80 != 0;
            assert_eq!(base256, size >= 8 << 30, "{size}");
        }
    }

    /// Executable or not is all a tar layer keeps of a file's mode.
    #[test]
    fn modes_are_0644_or_0755() {
        for (mode, want) in [
            (0o600, 0o644),
            (0o644, 0o644),
            (0o666, 0o644),
            (0o700, 0o755),
            (0o4777, 0o755),
        ] {
            assert_eq!(
                super::tar_header(1, mode, None).mode().unwrap(),
                want,
                "{mode:o}"
            );
        }
    }
}
