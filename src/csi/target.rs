//! Kubelet's target paths, opened beneath its pods folder one component at a time and never
//! through a link.
//!
//! A target path is written by kubelet, but the folders on its way are not all kubelet's: a
//! Pod's own volumes live under `pods/<uid>/`, and a link there would lead a bind mount (or an
//! unmount, or a removal) anywhere on the node. Checking the path as text cannot see that, and
//! resolving it first and mounting later leaves a window to swap a folder for a link. So each
//! component is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from the folder
//! before it, the mount is made on the opened folder itself (`/proc/self/fd/N`, the kernel's
//! own handle on it, as runc mounts into containers), and a link anywhere on the way is
//! refused as INVALID_ARGUMENT with nothing mounted.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{openat2, AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Why a target path cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A link (or a file where a folder belongs) on the way: INVALID_ARGUMENT.
    #[error("target_path {path}: {why}")]
    Refused { path: PathBuf, why: String },
    #[error("target_path {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// A target folder, opened: its handle, and its parent's (to remove it by name).
pub struct Target {
    pub path: PathBuf,
    parent: OwnedFd,
    name: OsString,
    dir: OwnedFd,
}

/// `O_PATH` handles: nothing is read through them, they only name the folder.
fn flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC
}

fn beneath(dir: impl AsFd, name: &OsString) -> Result<OwnedFd, Errno> {
    openat2(
        dir,
        name.as_os_str(),
        flags(),
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

impl Target {
    /// Open `path` (under `pods`, without `..`, as `request.rs` checked) component by
    /// component. With `create`, missing folders are made (mode 0750, as kubelet makes its
    /// own); without it, `Ok(None)` when something on the way is missing.
    pub fn open(pods: &Path, path: &Path, create: bool) -> Result<Option<Target>, TargetError> {
        let io_err = |source: io::Error| TargetError::Io {
            path: path.to_path_buf(),
            source,
        };
        let relative = path.strip_prefix(pods).map_err(|_| TargetError::Refused {
            path: path.to_path_buf(),
            why: format!("not under kubelet's pods folder {}", pods.display()),
        })?;
        let names: Vec<OsString> = relative
            .components()
            .map(|c| match c {
                Component::Normal(n) => Ok(n.to_os_string()),
                _ => Err(TargetError::Refused {
                    path: path.to_path_buf(),
                    why: "only plain names may follow the pods folder".into(),
                }),
            })
            .collect::<Result<_, _>>()?;
        let Some((last, _)) = names.split_last() else {
            return Err(TargetError::Refused {
                path: path.to_path_buf(),
                why: "the pods folder itself is no target".into(),
            });
        };
        let mut dir: OwnedFd =
            rustix::fs::open(pods, flags(), Mode::empty()).map_err(|e| io_err(e.into()))?;
        let mut parent = None;
        for name in &names {
            let next = match beneath(&dir, name) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&dir, name.as_os_str(), Mode::from_raw_mode(0o750)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(io_err(e.into())),
                    }
                    beneath(&dir, name).map_err(|e| refused_or_io(path, name, e))?
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(refused_or_io(path, name, e)),
            };
            parent = Some(std::mem::replace(&mut dir, next));
        }
        Ok(Some(Target {
            path: path.to_path_buf(),
            parent: parent.expect("at least one component"),
            name: last.clone(),
            dir,
        }))
    }

    /// Open the target's name again (after a mount on it or an unmount): the folder that is
    /// now on top there.
    pub fn reopen(&mut self) -> Result<(), TargetError> {
        self.dir = beneath(&self.parent, &self.name)
            .map_err(|e| refused_or_io(&self.path, &self.name, e))?;
        Ok(())
    }

    /// The kernel's path for the opened folder, for mount(2) and umount2(2): it names the
    /// very folder opened, whatever has happened to the path since.
    pub fn handle(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd()))
    }

    /// Device and inode of the folder on top at the target: the volume's own folder when
    /// the plugin's bind mount is there.
    pub fn identity(&self) -> io::Result<(u64, u64)> {
        let st = rustix::fs::fstat(&self.dir)?;
        Ok((st.st_dev, st.st_ino))
    }

    /// Remove the target folder if it is empty; a folder with something in it is left (it
    /// is not the plugin's). Returns whether it was removed.
    pub fn remove_if_empty(&self) -> io::Result<bool> {
        match rustix::fs::unlinkat(&self.parent, self.name.as_os_str(), AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => Ok(true),
            Err(Errno::NOTEMPTY | Errno::EXIST | Errno::BUSY | Errno::NOTDIR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Device and inode of a folder of the plugin's own.
pub fn identity_of(path: &Path) -> io::Result<(u64, u64)> {
    let st = rustix::fs::stat(path)?;
    Ok((st.st_dev, st.st_ino))
}

fn refused_or_io(path: &Path, name: &OsString, e: Errno) -> TargetError {
    let name = String::from_utf8_lossy(name.as_bytes()).into_owned();
    match e {
        // ELOOP: a link; EXDEV: the way leaves the pods folder; ENOTDIR: a file where a
        // folder belongs.
        Errno::LOOP | Errno::XDEV => TargetError::Refused {
            path: path.to_path_buf(),
            why: format!("{name:?} on the way is a link: a target is reached without links"),
        },
        Errno::NOTDIR => TargetError::Refused {
            path: path.to_path_buf(),
            why: format!("{name:?} on the way is not a folder"),
        },
        e => TargetError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_anywhere_on_the_way_is_refused_and_nothing_is_made_beyond_it() {
        let root = tempfile::tempdir().unwrap();
        let pods = root.path().join("pods");
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir_all(pods.join("u1/volumes")).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, pods.join("u2")).unwrap();
        std::fs::create_dir_all(pods.join("u3")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, pods.join("u3/mount")).unwrap();

        let ok = Target::open(&pods, &pods.join("u1/volumes/x/mount"), true)
            .unwrap()
            .unwrap();
        assert!(pods.join("u1/volumes/x/mount").is_dir());
        assert_eq!(
            ok.identity().unwrap(),
            identity_of(&pods.join("u1/volumes/x/mount")).unwrap()
        );

        for (path, why) in [
            (
                pods.join("u2/volumes/x/mount"),
                "\"u2\" on the way is a link",
            ),
            (pods.join("u3/mount"), "\"mount\" on the way is a link"),
        ] {
            for create in [true, false] {
                let err = Target::open(&pods, &path, create).err().unwrap();
                assert!(matches!(err, TargetError::Refused { .. }), "{err}");
                assert!(err.to_string().contains(why), "{err}");
            }
        }
        assert!(
            std::fs::read_dir(&elsewhere).unwrap().next().is_none(),
            "nothing was made through the link"
        );
        assert!(Target::open(&pods, &pods.join("u9/m"), false)
            .unwrap()
            .is_none());
        std::fs::write(pods.join("u1/file"), b"x").unwrap();
        let err = Target::open(&pods, &pods.join("u1/file/m"), true)
            .err()
            .unwrap();
        assert!(err.to_string().contains("not a folder"), "{err}");
    }

    #[test]
    fn only_an_empty_folder_is_removed() {
        let root = tempfile::tempdir().unwrap();
        let pods = root.path().join("pods");
        std::fs::create_dir_all(pods.join("u1/a")).unwrap();
        std::fs::create_dir_all(pods.join("u1/b")).unwrap();
        std::fs::write(pods.join("u1/b/kept"), b"x").unwrap();
        let a = Target::open(&pods, &pods.join("u1/a"), false)
            .unwrap()
            .unwrap();
        assert!(a.remove_if_empty().unwrap());
        assert!(!pods.join("u1/a").exists());
        let b = Target::open(&pods, &pods.join("u1/b"), false)
            .unwrap()
            .unwrap();
        assert!(!b.remove_if_empty().unwrap());
        assert!(pods.join("u1/b/kept").exists());
    }
}
