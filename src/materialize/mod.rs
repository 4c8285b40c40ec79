//! Materialize: verified blobs become files in the output folder, and only all at once.
//!
//! Every layer is first staged in a hidden folder inside the output folder (same filesystem,
//! so the final step is a rename). Only when every layer has been verified and staged are the
//! files renamed into place; on any failure the staging folder is removed and nothing partial
//! is visible. Paths are checked twice: names when the manifest is read, and every parent
//! folder when a file is placed, so a symlink cannot carry a write outside the output folder.

mod tar_layer;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::digest::Digest;
use crate::oci::LayerFormat;

#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    #[error("layer {layer}: entry {path:?} is refused: {why}")]
    UnsafeEntry {
        layer: String,
        path: String,
        why: String,
    },
    #[error("cannot place {path}: {why}")]
    Blocked { path: PathBuf, why: &'static str },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("layer {layer} is not a valid {format} archive: {source}")]
    BadArchive {
        layer: String,
        format: &'static str,
        source: std::io::Error,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MaterializeError + '_ {
    move |source| MaterializeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One staged item, placed at `relative` by [`Staging::commit`].
#[derive(Debug, Clone)]
pub struct Staged {
    pub staged: PathBuf,
    pub relative: PathBuf,
    pub is_dir: bool,
}

/// A hidden folder inside the output folder where layers are staged before they appear.
pub struct Staging {
    out: PathBuf,
    dir: Option<tempfile::TempDir>,
    created_out: bool,
}

impl Staging {
    pub fn new(out: &Path) -> Result<Staging, MaterializeError> {
        let created_out = !out.exists();
        fs::create_dir_all(out).map_err(io_err(out))?;
        if !fs::metadata(out).map_err(io_err(out))?.is_dir() {
            return Err(MaterializeError::Blocked {
                path: out.to_path_buf(),
                why: "it is not a folder",
            });
        }
        let dir = tempfile::Builder::new()
            .prefix(".hoist-partial-")
            .tempdir_in(out)
            .map_err(io_err(out))?;
        Ok(Staging {
            out: out.to_path_buf(),
            dir: Some(dir),
            created_out,
        })
    }

    pub fn out(&self) -> &Path {
        &self.out
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("staging is live").path()
    }

    /// Where to download a blob before it is staged.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir().join(format!("{}.blob", digest.hex()))
    }

    /// Stage a raw layer whose verified bytes are at `blob`: moved if `consume`, else copied
    /// (the local store's blobs stay where they are; the copy reflinks where the filesystem can).
    pub fn stage_file(
        &self,
        index: usize,
        blob: &Path,
        consume: bool,
        relative: &Path,
        mode: u32,
    ) -> Result<Staged, MaterializeError> {
        let staged = self.dir().join(format!("f-{index}"));
        if consume {
            fs::rename(blob, &staged).map_err(io_err(&staged))?;
        } else {
            fs::copy(blob, &staged).map_err(io_err(&staged))?;
        }
        fs::set_permissions(&staged, fs::Permissions::from_mode((mode & 0o777) | 0o600))
            .map_err(io_err(&staged))?;
        Ok(Staged {
            staged,
            relative: relative.to_path_buf(),
            is_dir: false,
        })
    }

    /// Unpack a verified tar layer into its own staging tree.
    pub fn stage_tar(
        &self,
        index: usize,
        blob: &Path,
        format: LayerFormat,
        layer: &str,
    ) -> Result<Vec<Staged>, MaterializeError> {
        let tree = self.dir().join(format!("t-{index}"));
        fs::create_dir(&tree).map_err(io_err(&tree))?;
        tar_layer::extract(blob, format, &tree, layer)
    }

    /// Move everything staged into place, in the order given, then drop the staging folder.
    pub fn commit(mut self, items: &[Staged]) -> Result<(), MaterializeError> {
        for item in items {
            if item.is_dir {
                ensure_dirs(&self.out, &item.relative)?;
                continue;
            }
            if let Some(parent) = item.relative.parent() {
                ensure_dirs(&self.out, parent)?;
            }
            let target = self.out.join(&item.relative);
            if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                return Err(MaterializeError::Blocked {
                    path: target,
                    why: "a folder is in the way of a file",
                });
            }
            fs::rename(&item.staged, &target).map_err(io_err(&target))?;
        }
        if let Some(dir) = self.dir.take() {
            dir.close().map_err(io_err(&self.out))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    /// A pull that did not commit leaves nothing behind: the staging folder goes, and so does
    /// the output folder if this pull created it.
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
            if self.created_out {
                let _ = fs::remove_dir(&self.out);
            }
        }
    }
}

/// Create `relative` under `root` one folder at a time, refusing to pass through anything that
/// is not a real folder (a symlink planted by an earlier entry, or a file).
pub(crate) fn ensure_dirs(root: &Path, relative: &Path) -> Result<(), MaterializeError> {
    let mut current = root.to_path_buf();
    for component in relative.components() {
        let Component::Normal(part) = component else {
            return Err(MaterializeError::Blocked {
                path: root.join(relative),
                why: "the path is not a plain relative path",
            });
        };
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(MaterializeError::Blocked {
                    path: current,
                    why: "a symlink is in the path (it could lead outside the output folder)",
                })
            }
            Ok(_) => {
                return Err(MaterializeError::Blocked {
                    path: current,
                    why: "a file is in the way of a folder",
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&current).map_err(io_err(&current))?
            }
            Err(e) => {
                return Err(MaterializeError::Io {
                    path: current,
                    source: e,
                })
            }
        }
    }
    Ok(())
}

/// Would a symlink at `relative` pointing to `target` stay inside the root? Checked lexically.
pub(crate) fn symlink_stays_inside(relative: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = relative
        .parent()
        .map_or(0, |p| p.components().count() as i64);
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::CurDir => {}
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_containment() {
        assert!(symlink_stays_inside(Path::new("a/b"), Path::new("../c")));
        assert!(!symlink_stays_inside(
            Path::new("a/b"),
            Path::new("../../c")
        ));
        assert!(!symlink_stays_inside(
            Path::new("a"),
            Path::new("/etc/passwd")
        ));
    }

    #[test]
    fn refuses_to_walk_through_a_symlink() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/tmp", root.path().join("evil")).unwrap();
        assert!(ensure_dirs(root.path(), Path::new("evil/x")).is_err());
        ensure_dirs(root.path(), Path::new("ok/x")).unwrap();
        assert!(root.path().join("ok/x").is_dir());
    }

    #[test]
    fn failed_staging_leaves_nothing() {
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("out");
        {
            let staging = Staging::new(&out).unwrap();
            fs::write(staging.blob_path(&Digest::of_bytes(b"")), b"x").unwrap();
        }
        assert!(!out.exists());
    }
}
