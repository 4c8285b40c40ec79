//! Pack: a model directory becomes an OCI artifact (ModelPack manifest, config, one layer per
//! file). Raw layers are the files themselves, hashed in place and never copied; tar layers are
//! encoded once into a temporary folder. Nothing here knows about registries.

mod classify;
mod describe;
mod encode;
pub mod gguf;
pub mod volume;
mod walk;

pub use classify::classify;
pub use describe::{
    front_matter_licenses, weight_facts, ModelSource, OnDisk, WeightFacts, MAX_HEADER_READ,
    MAX_SMALL_FILE,
};
pub use encode::EncodedLayer;
pub use walk::{walk, ModelFile, WalkOptions};

use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::oci::modelpack::{
    layer_media_type, FileMetadata, ModelConfig, ModelDescriptor, ModelProperties,
};
use crate::oci::{media, Descriptor, LayerFormat, Manifest};

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("model folder {0} does not exist")]
    Missing(PathBuf),
    #[error("{0} is not a folder: pass the model's folder")]
    NotADirectory(PathBuf),
    #[error("model folder {0} holds no files to pack (hidden files and .git are skipped)")]
    Empty(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("symlink {link} points outside the model folder (to {target}); copy the file in or pass --follow-external-symlinks")]
    SymlinkEscape { link: PathBuf, target: PathBuf },
    #[error("cannot encode layer for {path}: {source}")]
    Encode {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("file name {0:?} is not valid UTF-8; rename it")]
    NonUtf8(PathBuf),
    #[error("{0:?} would be read as a whiteout (a deletion) by containerd and CRI-O; rename it to make an image volume")]
    Whiteout(String),
    #[error("the config override does not give a valid ModelPack config: {0}")]
    BadConfigOverride(String),
}

/// Choices that change the packed bytes.
#[derive(Debug, Clone)]
pub struct PackOptions {
    pub walk: WalkOptions,
    pub layer_format: LayerFormat,
    /// zstd or gzip level for compressed tar layers.
    pub compression_level: Option<i32>,
    /// `descriptor.name` in the config; defaults to the folder's name.
    pub name: Option<String>,
    /// Unix seconds used for `createdAt` and file mtimes; `None` keeps them out (reproducible).
    pub timestamp: Option<i64>,
    /// Where tar layers are encoded; the system temp dir when `None`.
    pub temp_dir: Option<PathBuf>,
    pub threads: usize,
    /// Manifest annotations (`--annotation k=v`).
    pub annotations: std::collections::BTreeMap<String, String>,
    /// A partial ModelPack config merged over the computed one (`--config-file`).
    pub config_override: Option<serde_json::Value>,
    /// Cut raw layers into chunks while hashing them, for a chunk index (delta pulls).
    pub chunk_index: bool,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            walk: WalkOptions::default(),
            layer_format: LayerFormat::Raw,
            compression_level: None,
            name: None,
            timestamp: None,
            temp_dir: None,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            annotations: Default::default(),
            config_override: None,
            chunk_index: true,
        }
    }
}

/// `createdAt` for a push: `$SOURCE_DATE_EPOCH` when set (reproducible builds), else now when
/// `created` asks for it, else none (the same folder always gives the same digest).
pub fn creation_time(created: bool) -> Result<Option<i64>, String> {
    match std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .filter(|v| !v.is_empty())
    {
        Some(v) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        None if created => Ok(Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        )),
        None => Ok(None),
    }
}

/// Where a blob's bytes come from when it is sent somewhere.
#[derive(Debug, Clone)]
pub enum BlobSource {
    File(PathBuf),
    Bytes(bytes::Bytes),
}

#[derive(Debug, Clone)]
pub struct PackedBlob {
    pub descriptor: Descriptor,
    pub source: BlobSource,
}

/// A packed artifact, ready to be sent to a store or registry.
#[derive(Debug)]
pub struct Packed {
    pub manifest: Manifest,
    pub manifest_bytes: bytes::Bytes,
    pub manifest_digest: Digest,
    /// The config blob first, then one blob per layer.
    pub blobs: Vec<PackedBlob>,
    /// The chunk index of the raw layers, when the pack made one.
    pub chunks: Option<crate::chunks::ChunkIndex>,
    /// Keeps encoded tar layers alive until the push is done.
    pub _scratch: Option<tempfile::TempDir>,
}

/// Pack a model directory.
pub fn pack(dir: &Path, opts: &PackOptions) -> Result<Packed, PackError> {
    pack_with(dir, opts, &|_| {})
}

/// Pack a model directory, calling `on_layer` (from the packing threads) with each file's
/// blob as soon as it is hashed, before the manifest exists: a push sends those blobs while
/// later files are still being read.
pub fn pack_with(
    dir: &Path,
    opts: &PackOptions,
    on_layer: &(dyn Fn(&PackedBlob) + Sync),
) -> Result<Packed, PackError> {
    let files = walk(dir, &opts.walk)?;
    if files.is_empty() {
        return Err(PackError::Empty(dir.to_path_buf()));
    }
    let scratch = match opts.layer_format {
        LayerFormat::Raw => None,
        _ => Some(
            match &opts.temp_dir {
                Some(d) => {
                    std::fs::create_dir_all(d).map_err(|source| PackError::Read {
                        path: d.clone(),
                        source,
                    })?;
                    tempfile::Builder::new().prefix("hoist-pack-").tempdir_in(d)
                }
                None => tempfile::Builder::new().prefix("hoist-pack-").tempdir(),
            }
            .map_err(|source| PackError::Read {
                path: std::env::temp_dir(),
                source,
            })?,
        ),
    };
    let mtime = rfc3339(opts.timestamp.unwrap_or(0));
    let layers = encode::encode_all(
        &files,
        opts,
        scratch.as_ref().map(|t| t.path()),
        &|i, layer| on_layer(&layer_blob(&files[i], layer, opts, &mtime)),
    )?;
    let name = opts.name.clone().unwrap_or_else(|| folder_name(dir));
    let mut packed = assemble(&files, &layers, name, opts, &OnDisk)?;
    packed._scratch = scratch;
    Ok(packed)
}

/// The config and manifest over layers already made, one per file in `files`' order (by
/// [`pack_with`] from a folder, or by `hoist copy hf://…` as it streams the files): the same
/// files, names and options give the same digests either way. `source` reads what describes
/// the model.
pub fn assemble(
    files: &[ModelFile],
    layers: &[EncodedLayer],
    name: String,
    opts: &PackOptions,
    source: &dyn ModelSource,
) -> Result<Packed, PackError> {
    let mtime = rfc3339(opts.timestamp.unwrap_or(0));
    let mut descriptor = ModelDescriptor {
        name: Some(name),
        created_at: opts.timestamp.map(rfc3339),
        ..Default::default()
    };
    let mut properties = ModelProperties::default();
    describe::describe_model(files, source, &mut properties, &mut descriptor);
    let config = ModelConfig {
        descriptor,
        config: properties,
        modelfs: crate::oci::modelpack::ModelFs {
            diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
            ..Default::default()
        },
    };
    let config = match &opts.config_override {
        Some(over) => apply_override(&config, over)?,
        None => config,
    };
    let config_bytes = bytes::Bytes::from(serde_json::to_vec(&config).expect("config serialises"));
    let config_desc = Descriptor::new(
        media::MODELPACK_CONFIG,
        Digest::of_bytes(&config_bytes),
        config_bytes.len() as u64,
    );

    let mut blobs = vec![PackedBlob {
        descriptor: config_desc.clone(),
        source: BlobSource::Bytes(config_bytes),
    }];
    let mut layer_descs = Vec::with_capacity(layers.len());
    for (file, layer) in files.iter().zip(layers) {
        let blob = layer_blob(file, layer, opts, &mtime);
        layer_descs.push(blob.descriptor.clone());
        blobs.push(blob);
    }
    let mut manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        artifact_type: Some(media::MODELPACK_ARTIFACT.into()),
        config: config_desc,
        layers: layer_descs,
        subject: None,
        annotations: Default::default(),
    };
    if let Some(ts) = opts.timestamp {
        manifest
            .annotations
            .insert(media::ANNOTATION_CREATED.into(), rfc3339(ts));
    }
    manifest.annotations.extend(opts.annotations.clone());
    let manifest_bytes = bytes::Bytes::from(manifest.to_bytes());
    let chunked: std::collections::BTreeMap<_, _> = layers
        .iter()
        .filter_map(|l| Some((l.digest.clone(), l.chunks.clone()?)))
        .collect();
    let chunks = (!chunked.is_empty())
        .then(|| crate::chunks::ChunkIndex::new(crate::chunks::default_chunker(), chunked));
    Ok(Packed {
        chunks,
        manifest_digest: Digest::of_bytes(&manifest_bytes),
        manifest,
        manifest_bytes,
        blobs,
        _scratch: None,
    })
}

/// A file's layer: its blob and the descriptor the manifest lists (title, file path and the
/// file's metadata as annotations).
fn layer_blob(
    file: &ModelFile,
    layer: &encode::EncodedLayer,
    opts: &PackOptions,
    mtime: &str,
) -> PackedBlob {
    let mut desc = Descriptor::new(
        layer_media_type(file.kind, opts.layer_format),
        layer.digest.clone(),
        layer.size,
    );
    let meta = FileMetadata {
        name: file
            .relative
            .rsplit('/')
            .next()
            .unwrap_or(&file.relative)
            .to_string(),
        mode: file.mode,
        uid: 0,
        gid: 0,
        size: file.size,
        mtime: mtime.to_string(),
        typeflag: b'0',
    };
    desc.annotations
        .insert(media::ANNOTATION_TITLE.into(), file.relative.clone());
    desc.annotations
        .insert(media::ANNOTATION_FILEPATH.into(), file.relative.clone());
    desc.annotations.insert(
        media::ANNOTATION_FILE_METADATA.into(),
        serde_json::to_string(&meta).expect("metadata serialises"),
    );
    if file.kind_untested {
        desc.annotations
            .insert(media::ANNOTATION_MEDIATYPE_UNTESTED.into(), "true".into());
    }
    PackedBlob {
        descriptor: desc,
        source: layer.source.clone(),
    }
}

/// Merge a partial config over the computed one, object by object (the override wins); the
/// result must still be a ModelPack config.
fn apply_override(
    config: &ModelConfig,
    over: &serde_json::Value,
) -> Result<ModelConfig, PackError> {
    fn merge(base: &mut serde_json::Value, over: &serde_json::Value) {
        match (base, over) {
            (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
                for (k, v) in o {
                    merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, o) => *b = o.clone(),
        }
    }
    /// The first path of `over` that `kept` lost (a field the config does not have).
    fn dropped(kept: &serde_json::Value, over: &serde_json::Value, at: &str) -> Option<String> {
        let serde_json::Value::Object(o) = over else {
            return None;
        };
        o.iter().find_map(|(k, v)| match kept.get(k) {
            None if !v.is_null() => Some(format!("{at}{k}")),
            None => None,
            Some(inner) => dropped(inner, v, &format!("{at}{k}.")),
        })
    }
    let mut value = serde_json::to_value(config).expect("config serialises");
    merge(&mut value, over);
    let merged: ModelConfig =
        serde_json::from_value(value).map_err(|e| PackError::BadConfigOverride(e.to_string()))?;
    let kept = serde_json::to_value(&merged).expect("config serialises");
    if let Some(path) = dropped(&kept, over, "") {
        return Err(PackError::BadConfigOverride(format!(
            "unknown field {path} (see the ModelPack config spec)"
        )));
    }
    Ok(merged)
}

/// The model's name from its folder: the folder's own name, except for a Hugging Face cache
/// snapshot (`models--ORG--NAME/snapshots/REVISION`), named after its repository `ORG/NAME`
/// rather than the revision hash.
fn folder_name(dir: &Path) -> String {
    let Ok(path) = std::fs::canonicalize(dir) else {
        return "model".into();
    };
    let name = |p: Option<&Path>| {
        p.and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
    };
    let parent = path.parent();
    if name(parent).as_deref() == Some("snapshots") {
        if let Some(repo) = name(parent.and_then(Path::parent))
            .as_deref()
            .and_then(|n| n.strip_prefix("models--"))
        {
            return repo.replace("--", "/");
        }
    }
    name(Some(&path)).unwrap_or_else(|| "model".into())
}

/// RFC 3339 UTC time from Unix seconds (days-to-civil after Howard Hinnant), to avoid a
/// date-time dependency for one format.
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_points() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn a_hugging_face_snapshot_is_named_after_its_repository() {
        let cache = tempfile::tempdir().unwrap();
        let snap = cache
            .path()
            .join("models--sentence-transformers--all-MiniLM-L6-v2/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), b"{}").unwrap();
        assert_eq!(folder_name(&snap), "sentence-transformers/all-MiniLM-L6-v2");
        let plain = cache.path().join("my-model");
        std::fs::create_dir(&plain).unwrap();
        assert_eq!(folder_name(&plain), "my-model");
        let packed = pack(&snap, &PackOptions::default()).unwrap();
        let config: serde_json::Value = match &packed.blobs[0].source {
            BlobSource::Bytes(b) => serde_json::from_slice(b).unwrap(),
            BlobSource::File(_) => panic!("the config is in memory"),
        };
        assert_eq!(
            config["descriptor"]["name"],
            "sentence-transformers/all-MiniLM-L6-v2"
        );
    }

    /// What a push starts sending early is exactly what the manifest lists, in every layer
    /// format, and each layer is announced once, before the pack returns.
    #[test]
    fn layers_announced_early_are_the_manifest_layers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("model.safetensors"), vec![7u8; 300_000]).unwrap();
        std::fs::write(dir.path().join("sub/tokenizer.json"), b"{\"a\":1}").unwrap();
        for format in [LayerFormat::Raw, LayerFormat::Tar, LayerFormat::TarZstd] {
            let opts = PackOptions {
                layer_format: format,
                ..Default::default()
            };
            let seen = std::sync::Mutex::new(Vec::new());
            let packed = pack_with(dir.path(), &opts, &|blob| {
                seen.lock().unwrap().push(blob.clone());
            })
            .unwrap();
            let mut seen: Vec<Descriptor> = seen
                .into_inner()
                .unwrap()
                .into_iter()
                .map(|b| b.descriptor)
                .collect();
            seen.sort_by(|a, b| {
                a.annotations
                    .get(media::ANNOTATION_TITLE)
                    .cmp(&b.annotations.get(media::ANNOTATION_TITLE))
            });
            assert_eq!(seen, packed.manifest.layers, "{format:?}");
        }
    }
}
