//! Walking a model folder: relative paths in a stable order, hidden files skipped, symlinks
//! followed only while they stay inside the folder — or, in a Hugging Face cache snapshot
//! (`models--ORG--NAME/snapshots/REVISION`), inside that repository's `blobs/`, where the
//! Hub's client keeps the files its links name. `hf download --local-dir` leaves its
//! bookkeeping in `.cache/huggingface/`, never packed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::PackError;
use crate::oci::modelpack::LayerKind;

#[derive(Debug, Clone, Default)]
pub struct WalkOptions {
    /// Include dot-files (`.git` is skipped regardless).
    pub include_hidden: bool,
    /// Follow symlinks that leave the folder (Hugging Face cache snapshots do this).
    pub follow_external_symlinks: bool,
}

/// One regular file to pack.
#[derive(Debug, Clone)]
pub struct ModelFile {
    /// Where to read the bytes (symlinks resolved).
    pub source: PathBuf,
    /// Path inside the artifact, `/`-separated.
    pub relative: String,
    pub size: u64,
    pub mode: u32,
    pub kind: LayerKind,
    /// The kind was guessed from size alone.
    pub kind_untested: bool,
}

/// All files under `dir`, sorted by relative path so the manifest is reproducible.
pub fn walk(dir: &Path, opts: &WalkOptions) -> Result<Vec<ModelFile>, PackError> {
    let meta = std::fs::metadata(dir).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => PackError::Missing(dir.to_path_buf()),
        _ => PackError::Read {
            path: dir.to_path_buf(),
            source,
        },
    })?;
    if !meta.is_dir() {
        return Err(PackError::NotADirectory(dir.to_path_buf()));
    }
    let root = std::fs::canonicalize(dir).map_err(|source| PackError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    let blobs = hub_cache_blobs(&root);
    visit(&root, &root, "", blobs.as_deref(), opts, &mut files)?;
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(files)
}

/// The `blobs/` folder a Hugging Face cache snapshot's links point into, when `root` is one.
fn hub_cache_blobs(root: &Path) -> Option<PathBuf> {
    let snapshots = root.parent()?;
    let repo = snapshots.parent()?;
    let repo_name = repo.file_name()?.to_str()?;
    let is_cache_repo = ["models--", "datasets--", "spaces--"]
        .iter()
        .any(|p| repo_name.starts_with(p));
    (snapshots.file_name()? == "snapshots" && is_cache_repo)
        .then(|| std::fs::canonicalize(repo.join("blobs")).ok())
        .flatten()
}

fn visit(
    root: &Path,
    dir: &Path,
    prefix: &str,
    blobs: Option<&Path>,
    opts: &WalkOptions,
    out: &mut Vec<ModelFile>,
) -> Result<(), PackError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackError::Read { path, source }
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(read_err(dir))?
        .collect::<Result<_, _>>()
        .map_err(read_err(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| PackError::NonUtf8(entry.path()))?;
        if name == ".git" || (name.starts_with('.') && !opts.include_hidden) {
            continue;
        }
        let path = entry.path();
        let relative = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        if relative == ".cache/huggingface" {
            continue;
        }
        let link_meta = std::fs::symlink_metadata(&path).map_err(read_err(&path))?;
        let (source, meta) = if link_meta.file_type().is_symlink() {
            let target = std::fs::canonicalize(&path).map_err(read_err(&path))?;
            let in_cache = blobs.is_some_and(|b| target.starts_with(b));
            if !target.starts_with(root) && !in_cache && !opts.follow_external_symlinks {
                return Err(PackError::SymlinkEscape { link: path, target });
            }
            let meta = std::fs::metadata(&target).map_err(read_err(&target))?;
            if meta.is_dir() && target.starts_with(root) {
                // A link to a folder inside the model would pack its files twice.
                continue;
            }
            (target, meta)
        } else {
            (path.clone(), link_meta)
        };
        if meta.is_dir() {
            visit(root, &source, &relative, blobs, opts, out)?;
        } else if meta.is_file() {
            // Open once now so an unreadable file fails the walk, not the upload.
            std::fs::File::open(&source).map_err(read_err(&source))?;
            let (kind, kind_untested) = super::classify(&relative, meta.len());
            out.push(ModelFile {
                source,
                relative,
                size: meta.len(),
                mode: meta.permissions().mode() & 0o7777,
                kind,
                kind_untested,
            });
        }
        // Sockets, fifos and devices are not model files: skipped.
    }
    Ok(())
}
