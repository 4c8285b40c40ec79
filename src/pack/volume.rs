//! The image-volume form of a model: an OCI *image* that containerd and CRI-O both mount as
//! the model's folder (Kubernetes image volumes).
//!
//! containerd mounts only images: it unpacks `application/vnd.oci.image.layer.v1.tar*` layers
//! onto a snapshot, checked against the image config's `rootfs.diff_ids`, and picks a manifest
//! by the config's `os`/`architecture`. CRI-O bind-mounts the layers of an *artifact* as files,
//! so this form must not be one (no `artifactType`, an image config): it then unpacks it as an
//! image too. So the form is an index with one small manifest per node architecture, every
//! manifest listing the same layers: one uncompressed tar per file, the file at its path
//! inside. The tars are byte for byte those of `--layer-format tar`, so a ModelPack artifact
//! pushed with tar layers shares every blob with its volume form.
//!
//! The layers carry the file's path as `org.cncf.model.filepath` but no
//! `org.opencontainers.image.title`: ORAS writes a titled layer to that name as it is, and a
//! tar written as `model.safetensors` would be a broken model. Without a title ORAS skips
//! the layers, and `hoist pull` unpacks them.

use bytes::Bytes;

use super::{BlobSource, PackError, Packed, PackedBlob};
use crate::digest::Digest;
use crate::oci::{media, Descriptor, Index, LayerFormat, Manifest, Platform};

/// The node architectures a volume form serves by default: every one Kubernetes ships
/// release binaries for on Linux (an entry costs a manifest and a config, ~1 KiB).
pub const DEFAULT_ARCHITECTURES: &[&str] = &["amd64", "arm64", "ppc64le", "s390x"];

/// A model's image-volume form, ready to push: the blobs first, then each platform's
/// manifest by digest, then the index under the tags.
#[derive(Debug)]
pub struct Volume {
    pub index: Index,
    pub index_bytes: Bytes,
    pub digest: Digest,
    /// Each platform's manifest: its descriptor (as the index lists it) and bytes.
    pub manifests: Vec<(Descriptor, Bytes)>,
    /// The configs (one per platform), then the layers (shared by every platform).
    pub blobs: Vec<PackedBlob>,
    /// The files' layers (for counting and sizes).
    pub layers: Vec<Descriptor>,
    /// Keeps the encoded tars alive until the push is done.
    pub _scratch: Option<tempfile::TempDir>,
}

/// The volume form of a model packed with tar layers (`PackOptions::layer_format = Tar`).
/// `of`: the ModelPack manifest with the same files, named in the index so `hoist inspect`
/// can tell which version a volume form holds.
pub fn volume_of(
    packed: Packed,
    architectures: &[&str],
    of: Option<&Digest>,
    timestamp: Option<i64>,
) -> Result<Volume, PackError> {
    let mut layers = Vec::with_capacity(packed.manifest.layers.len());
    for layer in &packed.manifest.layers {
        if !layer.media_type.ends_with(".tar") {
            return Err(PackError::Encode {
                path: layer
                    .annotation(media::ANNOTATION_FILEPATH)
                    .unwrap_or("?")
                    .into(),
                source: std::io::Error::other("the volume form needs uncompressed tar layers"),
            });
        }
        layers.push(volume_layer(layer)?);
    }
    let diff_ids: Vec<&Digest> = layers.iter().map(|l| &l.digest).collect();
    let mut annotations = packed.manifest.annotations.clone();
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    for arch in architectures {
        let config = image_config(arch, &diff_ids, timestamp);
        let config_desc = Descriptor::new(
            media::OCI_IMAGE_CONFIG,
            Digest::of_bytes(&config),
            config.len() as u64,
        );
        blobs.push(PackedBlob {
            descriptor: config_desc.clone(),
            source: BlobSource::Bytes(config),
        });
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.into()),
            artifact_type: None,
            config: config_desc,
            layers: layers.clone(),
            subject: None,
            annotations: annotations.clone(),
        };
        let bytes = Bytes::from(manifest.to_bytes());
        let mut desc = Descriptor::new(
            media::OCI_MANIFEST,
            Digest::of_bytes(&bytes),
            bytes.len() as u64,
        );
        desc.platform = Some(Platform {
            architecture: (*arch).to_string(),
            os: "linux".into(),
            variant: None,
        });
        manifests.push((desc, bytes));
    }
    for (blob, layer) in packed.blobs.into_iter().skip(1).zip(&layers) {
        blobs.push(PackedBlob {
            descriptor: layer.clone(),
            source: blob.source,
        });
    }
    if let Some(of) = of {
        annotations.insert(media::ANNOTATION_VOLUME_OF.into(), of.to_string());
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(media::OCI_INDEX.into()),
        manifests: manifests.iter().map(|(d, _)| d.clone()).collect(),
        artifact_type: None,
        subject: None,
        annotations,
    };
    let index_bytes = Bytes::from(serde_json::to_vec(&index).expect("index serialises"));
    Ok(Volume {
        digest: Digest::of_bytes(&index_bytes),
        index,
        index_bytes,
        manifests,
        blobs,
        layers,
        _scratch: packed._scratch,
    })
}

/// A file's tar layer as an image layer: the OCI tar media type, the path and the file's
/// metadata kept, no title (see the module comment).
fn volume_layer(layer: &Descriptor) -> Result<Descriptor, PackError> {
    let path = layer
        .annotation(media::ANNOTATION_FILEPATH)
        .or_else(|| layer.annotation(media::ANNOTATION_TITLE))
        .unwrap_or_default()
        .to_string();
    // containerd and CRI-O read `.wh.` names as deletions: such a file would vanish from
    // the volume (only packed with --include-hidden).
    if path.split('/').any(|part| part.starts_with(".wh.")) {
        return Err(PackError::Whiteout(path));
    }
    let mut desc = Descriptor::new(media::OCI_LAYER_TAR, layer.digest.clone(), layer.size);
    desc.annotations = layer
        .annotations
        .iter()
        .filter(|(k, _)| k.as_str() != media::ANNOTATION_TITLE)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    desc.annotations
        .insert(media::ANNOTATION_FILEPATH.into(), path);
    Ok(desc)
}

/// An image config for `arch`: the rootfs containerd checks the layers against. Nothing
/// runs from a volume, so no entrypoint or environment.
fn image_config(arch: &str, diff_ids: &[&Digest], timestamp: Option<i64>) -> Bytes {
    let mut config = serde_json::json!({});
    if let Some(ts) = timestamp {
        config["created"] = super::rfc3339(ts).into();
    }
    config["architecture"] = arch.into();
    config["os"] = "linux".into();
    config["config"] = serde_json::json!({});
    config["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": diff_ids});
    Bytes::from(serde_json::to_vec(&config).expect("config serialises"))
}

/// Is this manifest an image-volume form (an image whose tar layers are named files)?
pub fn is_volume_form(manifest: &Manifest) -> bool {
    crate::oci::files::is_image_config(&manifest.config.media_type)
        && !manifest.layers.is_empty()
        && manifest.layers.iter().all(|l| {
            l.media_type == media::OCI_LAYER_TAR
                && l.annotation(media::ANNOTATION_FILEPATH).is_some()
        })
}

/// Where a file's bytes lie in the single-entry tar hoist writes for it: `(start, blob size)`.
/// The data follows the header (and, for a path past 100 bytes, a GNU long-name entry); the
/// blob ends with the data padded to 512 bytes and the two zero blocks of the end. `hoist
/// mount` serves a volume form's files as these windows of their blobs, and checks the header
/// it finds there before serving a byte.
pub fn tar_window(path: &str, size: u64) -> std::io::Result<(u64, u64)> {
    let mut header = super::encode::tar_header(size, 0o644, None);
    let mut builder = tar::Builder::new(Vec::new());
    // The header alone: no data is copied, so the bytes written are where the data starts.
    builder.append_data(&mut header, path, std::io::empty())?;
    let start = builder.into_inner()?.len() as u64 - 1024;
    let padded = size.div_ceil(512).checked_mul(512);
    let end = padded.and_then(|p| p.checked_add(start + 1024));
    let end = end.ok_or_else(|| std::io::Error::other("file size out of range"))?;
    Ok((start, end))
}

/// The layer format a volume form is made from.
pub const LAYER_FORMAT: LayerFormat = LayerFormat::Tar;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{pack, PackOptions};

    fn model() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub dir/ünï")).unwrap();
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("empty.txt"), b"").unwrap();
        std::fs::write(dir.path().join("sub dir/ünï/t.json"), b"[1]").unwrap();
        dir
    }

    fn tar_opts() -> PackOptions {
        PackOptions {
            layer_format: LAYER_FORMAT,
            chunk_index: false,
            ..Default::default()
        }
    }

    /// Every platform's config lists the layers' digests as diff_ids, the manifests share the
    /// layers, and nothing makes it an artifact.
    #[test]
    fn configs_name_the_layers_they_list() {
        let dir = model();
        let packed = pack(dir.path(), &tar_opts()).unwrap();
        let tar_digests: Vec<Digest> = packed
            .manifest
            .layers
            .iter()
            .map(|l| l.digest.clone())
            .collect();
        let of = packed.manifest_digest.clone();
        let volume = volume_of(packed, DEFAULT_ARCHITECTURES, Some(&of), None).unwrap();
        assert_eq!(volume.manifests.len(), DEFAULT_ARCHITECTURES.len());
        assert_eq!(
            volume.index.annotations[media::ANNOTATION_VOLUME_OF],
            of.to_string()
        );
        for (desc, bytes) in &volume.manifests {
            let manifest: Manifest = serde_json::from_slice(bytes).unwrap();
            assert!(manifest.artifact_type.is_none());
            assert!(is_volume_form(&manifest));
            let layers: Vec<Digest> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
            assert_eq!(layers, tar_digests);
            assert!(manifest
                .layers
                .iter()
                .all(|l| l.annotation(media::ANNOTATION_TITLE).is_none()));
            let config = volume
                .blobs
                .iter()
                .find(|b| b.descriptor == manifest.config)
                .unwrap();
            let BlobSource::Bytes(bytes) = &config.source else {
                panic!("config in memory")
            };
            let config: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            let arch = &desc.platform.as_ref().unwrap().architecture;
            assert_eq!(config["architecture"], arch.as_str());
            assert_eq!(config["os"], "linux");
            let ids: Vec<Digest> =
                serde_json::from_value(config["rootfs"]["diff_ids"].clone()).unwrap();
            assert_eq!(ids, tar_digests);
        }
        let paths: Vec<&str> = volume
            .layers
            .iter()
            .map(|l| l.annotation(media::ANNOTATION_FILEPATH).unwrap())
            .collect();
        assert_eq!(paths, ["config.json", "empty.txt", "sub dir/ünï/t.json"]);
    }

    /// A `.wh.` name would be a deletion on the node: refused.
    #[test]
    fn whiteout_names_are_refused() {
        let dir = model();
        std::fs::write(dir.path().join(".wh.config.json"), b"x").unwrap();
        let mut opts = tar_opts();
        opts.walk.include_hidden = true;
        let packed = pack(dir.path(), &opts).unwrap();
        assert!(matches!(
            volume_of(packed, DEFAULT_ARCHITECTURES, None, None),
            Err(PackError::Whiteout(p)) if p == ".wh.config.json"
        ));
    }

    /// The window of every file is where the tar hoist writes puts it: short and long
    /// paths (past the 100-byte name field), empty files, sizes off the 512 grid.
    #[test]
    fn windows_match_the_tars_written() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}/{}", "d".repeat(70), "é".repeat(30));
        std::fs::create_dir_all(dir.path().join(&long)).unwrap();
        let files = [
            ("a.json".to_string(), 0usize),
            ("b.bin".to_string(), 513),
            (format!("{long}/c.bin"), 1024),
        ];
        for (name, len) in &files {
            std::fs::write(dir.path().join(name), vec![9u8; *len]).unwrap();
        }
        let packed = pack(dir.path(), &tar_opts()).unwrap();
        for (blob, layer) in packed.blobs.iter().skip(1).zip(&packed.manifest.layers) {
            let BlobSource::File(path) = &blob.source else {
                panic!("tar layers are files")
            };
            let bytes = std::fs::read(path).unwrap();
            let name = layer.annotation(media::ANNOTATION_FILEPATH).unwrap();
            let len = files.iter().find(|(n, _)| n == name).unwrap().1 as u64;
            let (start, end) = tar_window(name, len).unwrap();
            assert_eq!(end, bytes.len() as u64, "{name}");
            let mut archive = tar::Archive::new(&bytes[..]);
            let entry = archive.entries().unwrap().next().unwrap().unwrap();
            assert_eq!(entry.raw_file_position(), start, "{name}");
            assert_eq!(entry.path().unwrap().to_str().unwrap(), name);
            assert!(bytes[start as usize..(start + len) as usize]
                .iter()
                .all(|b| *b == 9));
        }
    }

    /// A compressed or raw pack is not a volume form's input.
    #[test]
    fn needs_uncompressed_tar_layers() {
        let dir = model();
        let packed = pack(dir.path(), &PackOptions::default()).unwrap();
        assert!(volume_of(packed, DEFAULT_ARCHITECTURES, None, None).is_err());
    }
}
