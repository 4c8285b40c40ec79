//! Paths inside the output folder: which names may be placed, and walking to them without
//! passing through a link or a file. The plan, the record, tar unpacking and the staging all
//! check paths here, so each rule is written once.

use std::fs;
use std::path::{Component, Path, PathBuf};

use super::{io_err, MaterializeError};

/// Longest file name component Linux filesystems accept.
pub const NAME_MAX: usize = 255;
/// Longest path the kernel accepts (including the terminating NUL).
pub const PATH_MAX: usize = 4096;

/// Permission bits as placed: what the artifact asks, minus group/other write and the
/// setuid/setgid/sticky bits, plus owner read/write (hoist must be able to replace it).
pub fn safe_mode(mode: u32) -> u32 {
    (mode & 0o755) | 0o600
}

/// Create `relative` under `root` one folder at a time, refusing to pass through anything that
/// is not a real folder (a symlink planted by an earlier entry, or a file). Returns the
/// folders it created.
pub(crate) fn ensure_dirs(root: &Path, relative: &Path) -> Result<Vec<PathBuf>, MaterializeError> {
    let mut created = Vec::new();
    let mut current = root.to_path_buf();
    for component in relative.components() {
        let Component::Normal(part) = component else {
            return Err(MaterializeError::Blocked {
                path: root.join(relative),
                why: "the path is not a plain relative path",
            });
        };
        current.push(part);
        if !is_real_folder(&current)? {
            fs::create_dir(&current).map_err(io_err(&current))?;
            created.push(current.clone());
        }
    }
    Ok(created)
}

/// Is `path` a real folder (`true`) or absent (`false`)? A symlink or a file there is an
/// error: nothing may be created or entered through it.
pub(crate) fn is_real_folder(path: &Path) -> Result<bool, MaterializeError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(m) if m.file_type().is_symlink() => Err(MaterializeError::Blocked {
            path: path.to_path_buf(),
            why: "a symlink is in the path (it could lead outside the output folder)",
        }),
        Ok(_) => Err(MaterializeError::Blocked {
            path: path.to_path_buf(),
            why: "a file is in the way of a folder",
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(MaterializeError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// A first, lexical check of one symlink on its own (the whole plan is checked again with
/// every link resolved through the others before anything is placed).
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

/// A name that fits (the plan's rule 2): each component at most `NAME_MAX` bytes, the
/// whole path under `PATH_MAX`, none reaching hoist's own state.
pub(crate) fn check_name(out: &Path, rel: &Path) -> Result<(), MaterializeError> {
    let refuse = |why: &'static str| MaterializeError::Blocked {
        path: out.join(rel),
        why,
    };
    if let Some(why) = crate::reserved::refusal_in(out, rel) {
        return Err(refuse(why));
    }
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(refuse("the path is not a plain relative path"));
        };
        if name.len() > NAME_MAX {
            return Err(refuse(
                "a name is longer than the filesystem allows (255 bytes)",
            ));
        }
    }
    if out.join(rel).as_os_str().len() >= PATH_MAX {
        return Err(refuse(
            "the path is longer than the system allows (4096 bytes)",
        ));
    }
    Ok(())
}

/// Every parent of `rel` that exists on disk must be a real folder (not a symlink, not a
/// file). Also what `verify` asks of each file it checks.
pub(crate) fn check_disk_parents(out: &Path, rel: &Path) -> Result<(), MaterializeError> {
    let mut current = out.to_path_buf();
    for part in rel.parent().into_iter().flat_map(Path::components) {
        current.push(part);
        if !is_real_folder(&current)? {
            return Ok(()); // nothing deeper exists yet
        }
    }
    Ok(())
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
}
