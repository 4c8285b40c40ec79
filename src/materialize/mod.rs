//! Materialize: verified blobs become files in the output folder, and only all at once.
//!
//! Every layer is first staged in a hidden folder inside the output folder (same filesystem,
//! so the final step is a rename). Only when every layer has been verified and staged are the
//! files renamed into place; on any failure the staging folder is removed and nothing partial
//! is visible. Paths are checked twice: names when the manifest is read, and every parent
//! folder when a file is placed, so a symlink cannot carry a write outside the output folder.

mod link;
pub mod marker;
mod tar_layer;

pub use link::LinkMode;

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

/// How a staged file reaches its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Rename the source (a verified download we own).
    Move,
    /// Link or copy the source, which stays (a store blob, or a blob another file also uses).
    Link(LinkMode),
}

/// One item to place at `relative` by [`Staging::commit`].
#[derive(Debug, Clone)]
pub enum Staged {
    File {
        from: PathBuf,
        relative: PathBuf,
        /// Permission bits to set (not for hard links, which share the store's inode).
        mode: u32,
        placement: Placement,
        /// The file's digest, for raw layers: recorded in the verified mark.
        digest: Option<Digest>,
    },
    Dir {
        relative: PathBuf,
    },
    /// An image layer's whiteout: what lower layers put at `relative` goes.
    Remove {
        relative: PathBuf,
    },
    /// An image layer's opaque folder: what lower layers put inside `relative` goes.
    Opaque {
        relative: PathBuf,
    },
}

/// The state folder inside the output folder: downloads in progress (`<hex>.part` and their
/// `.state`), verified blobs (`<hex>.blob`), unpacked tar trees, and a lock so two pulls into
/// one folder take turns. It survives a failed pull so the next one resumes.
pub struct Staging {
    out: PathBuf,
    dir: PathBuf,
    lock: Option<fs::File>,
    created_out: bool,
    /// Committed or aborted: nothing left for `Drop` to do.
    done: std::sync::atomic::AtomicBool,
}

pub const STAGING_DIR: &str = ".hoist-partial";

impl Staging {
    /// Open the state folder, waiting for any other pull into the same folder to finish.
    pub fn open(out: &Path) -> Result<Staging, MaterializeError> {
        let created_out = !out.exists();
        fs::create_dir_all(out).map_err(io_err(out))?;
        if !fs::metadata(out).map_err(io_err(out))?.is_dir() {
            return Err(MaterializeError::Blocked {
                path: out.to_path_buf(),
                why: "it is not a folder",
            });
        }
        let dir = out.join(STAGING_DIR);
        ensure_dirs(out, Path::new(STAGING_DIR))?;
        let lock_path = dir.join("lock");
        let lock = fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        Ok(Staging {
            out: out.to_path_buf(),
            dir,
            lock: Some(lock),
            created_out,
            done: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Where a download of `digest` keeps its bytes until verified.
    pub fn part_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.part", digest.hex()))
    }

    /// Where a verified download waits for the commit.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}.blob", digest.hex()))
    }

    /// Unpack a verified tar layer into its own tree; the returned items move into place.
    pub fn stage_tar(
        &self,
        index: usize,
        blob: &Path,
        format: LayerFormat,
        layer: &str,
    ) -> Result<Vec<Staged>, MaterializeError> {
        let tree = self.dir.join(format!("t-{index}"));
        if tree.exists() {
            fs::remove_dir_all(&tree).map_err(io_err(&tree))?;
        }
        fs::create_dir(&tree).map_err(io_err(&tree))?;
        tar_layer::extract(blob, format, &tree, layer)
    }

    /// Place everything, in order, then remove the state folder.
    pub fn commit(mut self, items: &[Staged]) -> Result<(), MaterializeError> {
        for (n, item) in items.iter().enumerate() {
            match item {
                Staged::Dir { relative } => ensure_dirs(&self.out, relative)?,
                Staged::Remove { relative } => remove_below(&self.out, relative)?,
                Staged::Opaque { relative } => {
                    let dir = self.out.join(relative);
                    if !relative.as_os_str().is_empty()
                        && fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir())
                    {
                        for entry in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
                            remove_below(&self.out, &relative.join(entry.file_name()))?;
                        }
                    }
                }
                Staged::File {
                    from,
                    relative,
                    mode,
                    placement,
                    digest,
                } => {
                    if let Some(parent) = relative.parent() {
                        ensure_dirs(&self.out, parent)?;
                    }
                    let target = self.out.join(relative);
                    if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                        return Err(MaterializeError::Blocked {
                            path: target,
                            why: "a folder is in the way of a file",
                        });
                    }
                    let source = match placement {
                        Placement::Move => from.clone(),
                        Placement::Link(how) => {
                            let tmp = self.dir.join(format!("link-{n}"));
                            let _ = fs::remove_file(&tmp);
                            if link::place(from, &tmp, *how)? == link::Linked::Hard {
                                fs::rename(&tmp, &target).map_err(io_err(&target))?;
                                if let Some(d) = digest {
                                    marker::mark(&target, d);
                                }
                                continue;
                            }
                            tmp
                        }
                    };
                    let is_symlink =
                        fs::symlink_metadata(&source).is_ok_and(|m| m.file_type().is_symlink());
                    if !is_symlink {
                        fs::set_permissions(
                            &source,
                            fs::Permissions::from_mode((mode & 0o777) | 0o600),
                        )
                        .map_err(io_err(&source))?;
                    }
                    fs::rename(&source, &target).map_err(io_err(&target))?;
                    if let Some(d) = digest {
                        marker::mark(&target, d);
                    }
                }
            }
        }
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(self.lock.take());
        fs::remove_dir_all(&self.dir).map_err(io_err(&self.dir))
    }

    /// Give up. Unpacked trees go; downloads stay for the next run to resume, unless `wipe`
    /// (the source sent bad bytes), which removes the state folder and, if this pull created
    /// the output folder, that too. Takes `&self`: a failed pull may still have unpacking
    /// tasks holding the staging when it gives up; only the first call acts.
    pub fn abort(&self, wipe: bool) {
        if self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if wipe {
            let _ = fs::remove_dir_all(&self.dir);
            if self.created_out {
                let _ = fs::remove_dir(&self.out);
            }
            return;
        }
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("t-") || name.starts_with("link-") {
                    let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
                }
            }
        }
        let keeps_something = fs::read_dir(&self.dir)
            .map(|d| d.flatten().any(|e| e.file_name() != "lock"))
            .unwrap_or(false);
        if !keeps_something {
            let _ = fs::remove_dir_all(&self.dir);
            if self.created_out {
                let _ = fs::remove_dir(&self.out);
            }
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        self.abort(false);
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

/// Remove `relative` under `root` (a file, a symlink itself, or a whole folder), never going
/// through a symlink on the way.
fn remove_below(root: &Path, relative: &Path) -> Result<(), MaterializeError> {
    if let Some(parent) = relative.parent() {
        let mut current = root.to_path_buf();
        for part in parent.components() {
            current.push(part);
            if !fs::symlink_metadata(&current).is_ok_and(|m| m.is_dir()) {
                return Ok(()); // nothing of that path exists as folders: nothing to remove
            }
        }
    }
    let target = root.join(relative);
    match fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&target).map_err(io_err(&target)),
        Ok(_) => fs::remove_file(&target).map_err(io_err(&target)),
        Err(_) => Ok(()),
    }
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
        let staging = Staging::open(&out).unwrap();
        fs::write(staging.part_path(&Digest::of_bytes(b"")), b"x").unwrap();
        staging.abort(true);
        assert!(!out.exists());
        // Without wipe, downloads stay for a resume; an empty state folder does not.
        let staging = Staging::open(&out).unwrap();
        fs::write(staging.part_path(&Digest::of_bytes(b"")), b"x").unwrap();
        drop(staging);
        assert!(out.join(STAGING_DIR).exists());
        let staging = Staging::open(&out).unwrap();
        fs::remove_file(staging.part_path(&Digest::of_bytes(b""))).unwrap();
        drop(staging);
        assert!(!out.join(STAGING_DIR).exists());
    }
}
