//! Materialize: verified blobs become files in the output folder, and only all at once.
//!
//! Every layer is first staged in a hidden folder inside the output folder (same filesystem,
//! so the final step is a rename). When every layer has been verified and staged, the whole
//! plan is validated (see `plan`: names, file/folder clashes, links resolved through each
//! other, files no pull placed) before the first file moves; then files are renamed into
//! place, and a failure half-way puts back what was there. On any failure the staging folder
//! is removed and nothing partial is visible. Writes never pass through a symlink: every
//! parent folder is checked when it is created or entered.
//!
//! Where each part lives: `staging` (the state folder and the commit), `plan` (the whole
//! placement validated first), `paths` (which names may be placed, walking without passing
//! a link), `record` (what earlier pulls placed), `tar_layer`, `link` (hard link, reflink,
//! copy), `verify` (a folder against a manifest).

mod link;
mod paths;
mod plan;
pub mod record;
mod staging;
mod tar_layer;
pub mod verify;

pub use link::LinkMode;
pub(crate) use paths::{ensure_dirs, symlink_stays_inside};
pub use paths::{safe_mode, NAME_MAX, PATH_MAX};
pub use record::Record;
pub use staging::Staging;

use std::path::{Path, PathBuf};

use crate::digest::Digest;

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
    #[error(
        "the output {path} is a file, not a folder: pass -o a folder (it is created if missing)"
    )]
    NotAFolder { path: PathBuf },
    #[error("cannot create or write the output folder {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
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
    #[error("layer {layer} unpacks to more than {limit} bytes ({why}); refused as a decompression bomb, nothing was kept")]
    UnpackLimit {
        layer: String,
        limit: u64,
        why: &'static str,
    },
    #[error("{} already holds files that no hoist pull placed, and the pull would replace them: {}; move them away or pass --overwrite", out.display(), files.join(", "))]
    WouldOverwrite { out: PathBuf, files: Vec<String> },
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
        /// Permission bits asked for; group and other write bits are always dropped.
        mode: u32,
        placement: Placement,
        /// The file's digest, for raw layers: recorded so a re-pull can trust the file.
        digest: Option<Digest>,
        /// For a symlink: where it points (checked against the whole plan before placing).
        link_target: Option<PathBuf>,
    },
    Dir {
        relative: PathBuf,
    },
    /// An image layer's whiteout: what lower layers of this pull staged at `relative` goes.
    Remove {
        relative: PathBuf,
    },
    /// An image layer's opaque folder: what lower layers staged inside `relative` goes.
    Opaque {
        relative: PathBuf,
    },
}

/// Limits on what a tar layer may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// Unpacked bytes per compressed byte of the layer (with a floor of `min_bytes`).
    pub ratio: u64,
    pub min_bytes: u64,
    /// Entries per layer.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            ratio: 64,
            min_bytes: 256 << 20,
            max_entries: 1_000_000,
        }
    }
}

/// How the files taken from the local store were placed, so a pull can say it (a copy
/// costs disk time and space; links and clones do not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkCounts {
    pub hardlink: usize,
    pub reflink: usize,
    pub copy: usize,
}

impl LinkCounts {
    fn add(&mut self, linked: &link::Linked) {
        match linked {
            link::Linked::Hard => self.hardlink += 1,
            link::Linked::Clone => self.reflink += 1,
            link::Linked::Copy => self.copy += 1,
        }
    }

    /// "hard link", "reflink", "copy", or a mix such as "2 reflink, 1 copy"; `None` when
    /// nothing came from the store.
    pub fn describe(&self) -> Option<String> {
        let parts: Vec<(usize, &str)> = [
            (self.hardlink, "hard link"),
            (self.reflink, "reflink"),
            (self.copy, "copy"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .collect();
        match parts.as_slice() {
            [] => None,
            [(_, how)] => Some(how.to_string()),
            many => Some(
                many.iter()
                    .map(|(n, how)| format!("{n} {how}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        }
    }
}
