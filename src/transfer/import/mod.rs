//! `hoist copy hf://ORG/NAME[@REVISION] DEST`: a repository of another kind of source (the
//! Hugging Face Hub first) streamed into a target as the artifact `push` would make of it,
//! with no local copy of the model.
//!
//! A source is an [`ImportSource`] (`source.rs`: the interface and a worked example); the
//! Hub's is `hub.rs`. The revision is resolved to its commit first, so every file comes from
//! one commit and the artifact records it (`org.opencontainers.image.revision`). Each file
//! streams from the source straight into the destination's upload while a blocking task
//! hashes it, cuts its chunks and reads its header (`file`); the bytes are checked against
//! what the source listed (a SHA-256, or a git blob id) before the upload may complete.
//! The config, manifest and chunk index are then those `pack::assemble` gives, so one
//! commit always gives one manifest digest.

mod file;
mod hub;
mod look;
mod source;

pub use hub::HubSource;
pub use source::{Check, FileReader, ImportError, ImportSource, SourceFile};

use std::collections::BTreeMap;

use futures_util::{stream, StreamExt, TryStreamExt};

use super::{push, Action, Event, LayerFilter, Observer, Target, TransferError};
use crate::digest::Digest;
use crate::oci::media;
use crate::oci::modelpack::LayerKind;
use crate::pack::{self, ModelFile, ModelSource, PackOptions, WeightFacts};

/// Pieces in flight between the download, each reader of the bytes and the upload, each
/// way: with the pieces hyper hands over (≤ 64 KiB or so), a few MiB per file at most.
const PIPE: usize = 32;

#[derive(Clone)]
pub struct ImportOptions {
    /// Files streamed at once.
    pub concurrency: usize,
    /// `--include` / `--exclude` over the repository's paths (kinds are not used).
    pub filter: LayerFilter,
    /// Cut the files into chunks for a chunk index (delta pulls of the next revision).
    pub chunk_index: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            concurrency: 4,
            filter: LayerFilter::default(),
            chunk_index: true,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    /// The source as asked (`hf://…@REVISION`).
    pub source: String,
    pub commit: String,
    pub digest: Digest,
    pub files: usize,
    pub bytes: u64,
    /// Files streamed from the source into the destination.
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    /// Files the destination had already (read back from it, not from the source).
    pub skipped: usize,
    /// Reads from the source taken up again after a broken connection.
    pub resumed: u32,
    pub tags: Vec<String>,
    pub chunk_index: Option<Digest>,
}

/// Stream `source` into `dst` under `tags`.
pub async fn import(
    source: &dyn ImportSource,
    dst: &Target,
    tags: &[String],
    opts: &ImportOptions,
    observer: Observer,
) -> Result<ImportReport, TransferError> {
    let commit = source.commit().await?;
    let files = select(source, &commit, &opts.filter).await?;
    let model_files: Vec<ModelFile> = files.iter().map(|f| model_file(source, f)).collect();
    let bytes = files.iter().map(|f| f.size).sum();
    observer(&Event::Start {
        reference: dst.describe(),
        files: files.len(),
        bytes,
    });
    let brought = bring_all(source, &commit, &files, &model_files, dst, opts, &observer).await?;
    let (kept, layers) = Kept::split(brought);
    let pack_opts = PackOptions {
        annotations: annotations(source, &commit),
        chunk_index: opts.chunk_index,
        ..Default::default()
    };
    let packed = pack::assemble(&model_files, &layers, source.name(), &pack_opts, &kept)?;
    let config = push::push_blob(
        dst,
        packed.blobs[0].clone(),
        &push::PushOptions::default(),
        &observer,
    )
    .await?;
    let document = (
        packed.manifest.media_type(),
        &packed.manifest_bytes,
        &packed.manifest_digest,
    );
    let pushed = push::finish_with(document, dst, tags, vec![config]).await?;
    let chunk_index = push::attach_chunk_index(&packed, dst).await?;
    Ok(ImportReport {
        source: source.describe(),
        commit,
        digest: pushed.digest,
        files: files.len(),
        bytes,
        uploaded: kept.uploaded.len(),
        uploaded_bytes: kept.uploaded.iter().sum(),
        skipped: files.len() - kept.uploaded.len(),
        resumed: kept.resumed,
        tags: tags.to_vec(),
        chunk_index,
    })
}

/// The files at `commit` the filter keeps. Checked before any file is sent: what would
/// only fail later (nothing selected, a git-kept file too big to hold) stops the copy here.
async fn select(
    source: &dyn ImportSource,
    commit: &str,
    filter: &LayerFilter,
) -> Result<Vec<SourceFile>, TransferError> {
    let listed = source.files(commit).await?;
    let files: Vec<SourceFile> = listed
        .iter()
        .filter(|f| !hidden(&f.path) && filter.keeps_path(&f.path))
        .cloned()
        .collect();
    if files.is_empty() {
        let names: Vec<&str> = listed.iter().take(20).map(|f| f.path.as_str()).collect();
        return Err(TransferError::NothingSelected(names.join(", ")));
    }
    if let Some(f) = files.iter().find(|f| file::too_big_to_hold(f)) {
        return Err(file::held_whole(source, f).into());
    }
    Ok(files)
}

/// Every file streamed into `dst`, `opts.concurrency` at once; what each kept, in file order.
async fn bring_all(
    source: &dyn ImportSource,
    commit: &str,
    files: &[SourceFile],
    models: &[ModelFile],
    dst: &Target,
    opts: &ImportOptions,
    observer: &Observer,
) -> Result<Vec<file::Brought>, TransferError> {
    let ctx = file::Ctx {
        source,
        commit,
        dst,
        observer,
        chunker: opts.chunk_index.then(crate::chunks::default_chunker),
    };
    let ctx = &ctx;
    let mut brought: Vec<(usize, file::Brought)> =
        stream::iter(files.iter().enumerate())
            .map(|(i, f)| async move {
                Ok::<_, TransferError>((i, file::bring(ctx, f, &models[i]).await?))
            })
            .buffer_unordered(opts.concurrency.max(1))
            .try_collect()
            .await?;
    brought.sort_by_key(|(i, _)| *i);
    Ok(brought.into_iter().map(|(_, b)| b).collect())
}

/// Where the artifact came from: the source's page and the commit.
fn annotations(source: &dyn ImportSource, commit: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (media::ANNOTATION_SOURCE.to_string(), source.page()),
        (media::ANNOTATION_REVISION.to_string(), commit.to_string()),
    ])
}

/// Dot-files and dot-folders (`.gitattributes`, `.cache/`) stay out, as `push` leaves them
/// out of a folder: the Hub's copy and a pushed download give the same artifact.
fn hidden(path: &str) -> bool {
    path.split('/').any(|part| part.starts_with('.'))
}

/// The file as `push` would describe it from a download: its kind from its name and size
/// (a dataset's files are `dataset` layers, its card a `doc`), mode 0644 as the Hub's files
/// are checked out.
fn model_file(source: &dyn ImportSource, f: &SourceFile) -> ModelFile {
    let (mut kind, mut untested) = pack::classify(&f.path, f.size);
    if source.is_dataset() && kind != LayerKind::Doc {
        (kind, untested) = (LayerKind::Dataset, false);
    }
    ModelFile {
        source: f.path.clone().into(),
        relative: f.path.clone(),
        size: f.size,
        mode: 0o644,
        kind,
        kind_untested: untested,
    }
}

/// What the streams kept to describe the model: header facts and the small root files.
#[derive(Default)]
struct Kept {
    facts: BTreeMap<String, WeightFacts>,
    small: BTreeMap<String, bytes::Bytes>,
    uploaded: Vec<u64>,
    resumed: u32,
}

impl Kept {
    /// What each file's stream kept, and its layer, in file order.
    fn split(brought: Vec<file::Brought>) -> (Kept, Vec<pack::EncodedLayer>) {
        let mut kept = Kept::default();
        let mut layers = Vec::with_capacity(brought.len());
        for b in brought {
            kept.resumed += b.resumed;
            if b.action == Action::Uploaded {
                kept.uploaded.push(b.layer.size);
            }
            if let Some(small) = b.small {
                kept.small.insert(b.path.clone(), small);
            }
            if let Some(facts) = b.facts {
                kept.facts.insert(b.path, facts);
            }
            layers.push(b.layer);
        }
        (kept, layers)
    }
}

impl ModelSource for Kept {
    fn weight_facts(&self, file: &ModelFile) -> Option<WeightFacts> {
        self.facts.get(&file.relative).cloned()
    }

    fn small_file(&self, file: &ModelFile) -> Option<Vec<u8>> {
        self.small.get(&file.relative).map(|b| b.to_vec())
    }
}
