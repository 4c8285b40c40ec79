//! Placing a copy of a stored blob: reflink (copy-on-write clone, instant and free on btrfs
//! and XFS), hard link (instant, shares the read-only store file), or a plain copy.

use std::fs;
use std::path::Path;

use super::{io_err, MaterializeError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Reflink where the filesystem can, else copy.
    Auto,
    Reflink,
    /// Opt-in: the file shares the store's inode and stays read-only.
    Hardlink,
    Copy,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Linked {
    Hard,
    Clone,
    Copy,
}

impl LinkMode {
    pub fn parse(s: &str) -> Option<LinkMode> {
        Some(match s {
            "auto" => LinkMode::Auto,
            "reflink" => LinkMode::Reflink,
            "hardlink" => LinkMode::Hardlink,
            "copy" => LinkMode::Copy,
            _ => return None,
        })
    }
}

pub fn place(from: &Path, to: &Path, mode: LinkMode) -> Result<Linked, MaterializeError> {
    match mode {
        LinkMode::Hardlink => {
            fs::hard_link(from, to).map_err(io_err(to))?;
            Ok(Linked::Hard)
        }
        LinkMode::Copy => {
            fs::copy(from, to).map_err(io_err(to))?;
            Ok(Linked::Copy)
        }
        LinkMode::Reflink => {
            reflink(from, to)
                .map(|()| Linked::Clone)
                .map_err(|source| MaterializeError::Io {
                    path: to.to_path_buf(),
                    source: std::io::Error::new(
                        source.kind(),
                        format!("reflink is not supported here ({source}); use --link-mode copy"),
                    ),
                })
        }
        LinkMode::Auto => match reflink(from, to) {
            Ok(()) => Ok(Linked::Clone),
            Err(_) => {
                let _ = fs::remove_file(to);
                fs::copy(from, to).map_err(io_err(to))?;
                Ok(Linked::Copy)
            }
        },
    }
}

/// `ioctl(FICLONE)`: the destination shares the source's extents until either is written.
fn reflink(from: &Path, to: &Path) -> std::io::Result<()> {
    let src = fs::File::open(from)?;
    let dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    match rustix::fs::ioctl_ficlone(&dst, &src) {
        Ok(()) => Ok(()),
        Err(errno) => {
            drop(dst);
            let _ = fs::remove_file(to);
            Err(errno.into())
        }
    }
}
