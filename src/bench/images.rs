//! The model packed inside a container image, the way `docker build` with `COPY` ships it:
//! one tar layer of the whole folder, or one layer per weight file plus one for the rest;
//! uncompressed, gzip (level 6, one thread, as Docker does) or zstd (level 3, all cores, as
//! BuildKit does). The result is an ordinary OCI image that any runtime unpacks in order.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::digest::{Digest, HashingWriter};
use crate::oci::{Descriptor, LayerFormat, Manifest};
use crate::pack::{BlobSource, ModelFile, Packed, PackedBlob};

const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Pack `files` (from [`crate::pack::walk`]) as an image. `per_weight` gives each weight file
/// its own layer.
pub fn pack_image(
    files: &[ModelFile],
    format: LayerFormat,
    per_weight: bool,
    scratch: &Path,
) -> std::io::Result<Packed> {
    let mut groups: Vec<Vec<&ModelFile>> = Vec::new();
    if per_weight {
        let (weights, rest): (Vec<&ModelFile>, Vec<&ModelFile>) = files
            .iter()
            .partition(|f| f.kind == crate::oci::modelpack::LayerKind::Weight);
        if !rest.is_empty() {
            groups.push(rest);
        }
        groups.extend(weights.into_iter().map(|f| vec![f]));
    } else {
        groups.push(files.iter().collect());
    }
    let media_type = match format {
        LayerFormat::Tar | LayerFormat::Raw => "application/vnd.oci.image.layer.v1.tar",
        LayerFormat::TarGzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        LayerFormat::TarZstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    };
    let mut blobs = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let path = scratch.join(format!("layer-{i}"));
        let (digest, diff_id, size) = write_layer(group, format, &path)?;
        diff_ids.push(diff_id.to_string());
        blobs.push(PackedBlob {
            descriptor: Descriptor::new(media_type, digest, size),
            source: BlobSource::File(path),
        });
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))?;
    let config_desc = Descriptor::new(IMAGE_CONFIG, Digest::of_bytes(&config), config.len() as u64);
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(crate::oci::media::OCI_MANIFEST.into()),
        artifact_type: None,
        config: config_desc.clone(),
        layers: blobs.iter().map(|b| b.descriptor.clone()).collect(),
        subject: None,
        annotations: Default::default(),
    };
    let manifest_bytes = bytes::Bytes::from(manifest.to_bytes());
    blobs.insert(
        0,
        PackedBlob {
            descriptor: config_desc,
            source: BlobSource::Bytes(config.into()),
        },
    );
    Ok(Packed {
        manifest_digest: Digest::of_bytes(&manifest_bytes),
        manifest,
        manifest_bytes,
        blobs,
        chunks: None,
        _scratch: None,
    })
}

/// One tar layer of `files` at their relative paths: (digest, diff id, size).
fn write_layer(
    files: &[&ModelFile],
    format: LayerFormat,
    out: &Path,
) -> std::io::Result<(Digest, Digest, u64)> {
    let sink = HashingWriter::new(BufWriter::with_capacity(1 << 20, File::create(out)?));
    let (sink, diff_id) = match format {
        LayerFormat::Tar | LayerFormat::Raw => {
            let mut tar = HashingWriter::new(sink);
            write_tar(files, &mut tar)?;
            let (sink, diff, _) = tar.finish();
            (sink, diff)
        }
        LayerFormat::TarGzip => {
            let mut tar = HashingWriter::new(flate2::write::GzEncoder::new(
                sink,
                flate2::Compression::new(6),
            ));
            write_tar(files, &mut tar)?;
            let (gz, diff, _) = tar.finish();
            (gz.finish()?, diff)
        }
        LayerFormat::TarZstd => {
            let mut zstd = zstd::stream::write::Encoder::new(sink, 3)?;
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            zstd.multithread(threads as u32)?;
            let mut tar = HashingWriter::new(zstd);
            write_tar(files, &mut tar)?;
            let (zstd, diff, _) = tar.finish();
            (zstd.finish()?, diff)
        }
    };
    let (mut buffered, digest, size) = sink.finish();
    buffered.flush()?;
    Ok((digest, diff_id, size))
}

fn write_tar(files: &[&ModelFile], w: &mut impl Write) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(w);
    builder.mode(tar::HeaderMode::Deterministic);
    for file in files {
        builder.append_path_with_name(&file.source, &file.relative)?;
    }
    builder.into_inner()?.flush()
}
