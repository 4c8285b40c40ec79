//! From a manifest to the files it holds: which layers are files, where each one goes, and how
//! its bytes are encoded. Every path is checked here, before any byte is downloaded.

use std::path::{Component, Path, PathBuf};

use super::{media, Descriptor, LayerFormat, Manifest, OciError};

/// One layer that becomes one file (raw) or a tree of files (tar formats).
#[derive(Debug, Clone)]
pub struct FileLayer {
    pub descriptor: Descriptor,
    /// Relative path of the file (raw) or the name the layer is known by (tar).
    pub path: PathBuf,
    pub format: LayerFormat,
}

/// The files a manifest yields, in manifest order.
#[derive(Debug, Clone)]
pub struct LayerPlan {
    pub layers: Vec<FileLayer>,
}

impl LayerPlan {
    /// Map layers to files. Layers without a name are skipped, as ORAS does; a manifest with
    /// no named layer at all is an error that lists what it did contain.
    pub fn from_manifest(manifest: &Manifest, allow_unsafe: bool) -> Result<LayerPlan, OciError> {
        let mut layers = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let is_image = IMAGE_CONFIGS.contains(&manifest.config.media_type.as_str());
        for (index, desc) in manifest.layers.iter().enumerate() {
            let title = desc
                .annotation(media::ANNOTATION_TITLE)
                .or_else(|| desc.annotation(media::ANNOTATION_FILEPATH))
                .or_else(|| known_file_name(&desc.media_type, &manifest.layers));
            let Some(name) = title else {
                // A container image's layers, and a KitOps ModelKit's (tars that hold the
                // Kitfile's paths), are unpacked in order at the root.
                let format = image_layer_format(&desc.media_type)
                    .filter(|_| is_image)
                    .or_else(|| kitops_layer_format(&desc.media_type));
                if let Some(format) = format {
                    layers.push(FileLayer {
                        descriptor: desc.clone(),
                        path: PathBuf::from(format!("layer-{index}")),
                        format,
                    });
                }
                continue;
            };
            let path = if allow_unsafe {
                PathBuf::from(name)
            } else {
                safe_relative_path(name).map_err(|why| OciError::UnsafePath {
                    digest: desc.digest.to_string(),
                    path: name.to_string(),
                    why,
                })?
            };
            // An image's tar layers are unpacked whatever they are named (hoist's image-volume
            // form names each by the file it holds); elsewhere a titled layer is a file.
            let format = image_layer_format(&desc.media_type)
                .filter(|_| is_image)
                .unwrap_or_else(|| layer_format(desc));
            if format == LayerFormat::Raw && !seen.insert(path.clone()) {
                return Err(OciError::DuplicatePath(name.to_string()));
            }
            layers.push(FileLayer {
                descriptor: desc.clone(),
                path,
                format,
            });
        }
        if layers.is_empty() {
            // Each media type once, in manifest order (`dedup` alone misses non-adjacent ones).
            let mut types: Vec<&str> = Vec::new();
            for d in &manifest.layers {
                if !types.contains(&d.media_type.as_str()) {
                    types.push(&d.media_type);
                }
            }
            let found = if types.is_empty() {
                "none".to_string()
            } else {
                types.join(", ")
            };
            return Err(OciError::NoFiles(found));
        }
        Ok(LayerPlan { layers })
    }

    /// Every distinct layer as a file named by its digest (`blobs/sha256/<hex>`), for
    /// artifacts whose layers are not files hoist knows how to name.
    pub fn by_digest(manifest: &Manifest) -> LayerPlan {
        let mut seen = std::collections::BTreeSet::new();
        let layers = manifest
            .layers
            .iter()
            .filter(|d| seen.insert(d.digest.clone()))
            .map(|d| FileLayer {
                descriptor: d.clone(),
                path: Path::new("blobs").join("sha256").join(d.digest.hex()),
                format: LayerFormat::Raw,
            })
            .collect();
        LayerPlan { layers }
    }

    pub fn total_size(&self) -> u64 {
        self.layers.iter().map(|l| l.descriptor.size).sum()
    }
}

/// Is a manifest with this config media type a container image?
pub fn is_image_config(media_type: &str) -> bool {
    IMAGE_CONFIGS.contains(&media_type)
}

/// Config media types that make a manifest a container image.
const IMAGE_CONFIGS: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// How an image layer is encoded, by media type.
fn image_layer_format(media_type: &str) -> Option<LayerFormat> {
    Some(match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => LayerFormat::Tar,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => LayerFormat::TarGzip,
        "application/vnd.oci.image.layer.v1.tar+zstd" => LayerFormat::TarZstd,
        _ => return None,
    })
}

/// KitOps ModelKit layers (`application/vnd.kitops.modelkit.<kind>.v1.tar[+gzip|+zstd]`):
/// each is a tar of the Kitfile path it packs (the model, a part, code, a dataset, docs), so
/// unpacking at the root puts every file where the Kitfile says.
fn kitops_layer_format(media_type: &str) -> Option<LayerFormat> {
    let rest = media_type.strip_prefix("application/vnd.kitops.modelkit.")?;
    let (kind, format) = rest.split_once(".v1.")?;
    if !matches!(
        kind,
        "model" | "modelpart" | "code" | "dataset" | "docs" | "prompts"
    ) {
        return None;
    }
    match LayerFormat::parse(format)? {
        LayerFormat::Raw => None,
        f => Some(f),
    }
}

/// File names for formats whose layers carry no name: Ollama models and Docker Model Runner
/// (config v0.1) name their layers by media type only. `None` for anything else (skipped).
fn known_file_name(media_type: &str, layers: &[Descriptor]) -> Option<&'static str> {
    // Several weight layers of one kind cannot share a name: leave those to an error later.
    let only_one = layers.iter().filter(|d| d.media_type == media_type).count() == 1;
    let name = match media_type {
        "application/vnd.ollama.image.model" => "model.gguf",
        "application/vnd.ollama.image.adapter" => "adapter.gguf",
        "application/vnd.ollama.image.projector" => "projector.gguf",
        "application/vnd.ollama.image.template" => "template",
        "application/vnd.ollama.image.system" => "system",
        "application/vnd.ollama.image.params" => "params.json",
        "application/vnd.ollama.image.license" => "LICENSE",
        "application/vnd.ollama.image.messages" => "messages.json",
        "application/vnd.docker.ai.gguf.v3" => "model.gguf",
        "application/vnd.docker.ai.safetensors" => "model.safetensors",
        "application/vnd.docker.ai.license" => "LICENSE",
        "application/vnd.docker.ai.chat.template.jinja" => "template.jinja",
        "application/vnd.docker.ai.mmproj" => "mmproj.gguf",
        _ => return None,
    };
    only_one.then_some(name)
}

fn layer_format(desc: &Descriptor) -> LayerFormat {
    let mt = desc.media_type.as_str();
    if super::modelpack::kind_of_media_type(mt).is_some() {
        return LayerFormat::of_modelpack(mt).unwrap_or(LayerFormat::Raw);
    }
    // ORAS marks directories packed as tar+gzip with an unpack annotation; any other titled
    // layer is the file's own bytes whatever its media type says.
    if desc.annotation(media::ANNOTATION_ORAS_UNPACK) == Some("true") {
        return if mt.ends_with("zstd") {
            LayerFormat::TarZstd
        } else if mt.ends_with("gzip") {
            LayerFormat::TarGzip
        } else {
            LayerFormat::Tar
        };
    }
    LayerFormat::Raw
}

/// Accept only plain relative paths: no root, no `..`, no empty or NUL names.
pub fn safe_relative_path(name: &str) -> Result<PathBuf, &'static str> {
    if name.is_empty() {
        return Err("empty path");
    }
    if name.contains('\0') {
        return Err("contains a NUL byte");
    }
    let path = Path::new(name);
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains '..'"),
            Component::RootDir | Component::Prefix(_) => return Err("is absolute"),
        }
    }
    if clean.as_os_str().is_empty() {
        return Err("names no file");
    }
    match crate::reserved::refusal(&clean) {
        Some(why) => Err(why),
        None => Ok(clean),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_paths() {
        assert_eq!(
            safe_relative_path("a/./b.json").unwrap(),
            PathBuf::from("a/b.json")
        );
        assert!(safe_relative_path("../escape").is_err());
        assert!(safe_relative_path("a/../../x").is_err());
        assert!(safe_relative_path("/etc/x").is_err());
        assert!(safe_relative_path(".").is_err());
        assert!(safe_relative_path("").is_err());
    }

    #[test]
    fn modelpack_formats_from_media_type() {
        let d = Descriptor::new(
            "application/vnd.cncf.model.weight.v1.tar+zstd",
            crate::digest::Digest::of_bytes(b""),
            0,
        );
        assert_eq!(layer_format(&d), LayerFormat::TarZstd);
        let d = Descriptor::new(
            "application/vnd.cncf.model.weight.config.v1.raw",
            d.digest,
            0,
        );
        assert_eq!(layer_format(&d), LayerFormat::Raw);
    }
}
