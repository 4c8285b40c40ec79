//! Checking a pulled folder against what it should hold: every expected file present as a
//! regular file (never reached through a symlink), with its size and digest, and no file
//! that is not expected. The record of the pull that placed the files lets an unchanged file
//! pass without hashing unless `full`.

use std::fs;
use std::path::{Path, PathBuf};

use super::record::Record;
use crate::digest::Digest;

/// One file the folder should hold.
pub struct Expected {
    pub path: PathBuf,
    pub size: u64,
    /// `None` for files unpacked from tar layers (no digest of their own).
    pub digest: Option<Digest>,
}

#[derive(Debug, Default)]
pub struct FolderCheck {
    pub checked: usize,
    /// "path (why)" for every expected file that is missing or differs.
    pub differ: Vec<String>,
    /// Files present that nothing expects (hoist's own state aside).
    pub extra: Vec<String>,
}

impl FolderCheck {
    pub fn is_clean(&self) -> bool {
        self.differ.is_empty() && self.extra.is_empty()
    }
}

/// Names in the folder's top level that are hoist's, not the model's (see
/// [`crate::reserved`]: a pull refuses to place a model file under them, so none is skipped
/// here that a pull placed), and the paths the caller names.
fn is_own_state(rel: &Path, ignore: &[PathBuf]) -> bool {
    let first = rel.components().next().map(|c| c.as_os_str());
    first.is_some_and(crate::reserved::is_own) || ignore.iter().any(|i| rel.starts_with(i))
}

/// Check `dir` against `expected`. `extras`: also list files nobody expects (skip it when the
/// artifact has tar layers whose file lists are not known). `ignore`: relative paths that are
/// not the model's (a ready marker kept inside the folder, a signature's ignored paths), with
/// everything under them.
pub fn check_folder(
    dir: &Path,
    expected: &[Expected],
    full: bool,
    extras: bool,
    ignore: &[PathBuf],
) -> FolderCheck {
    let record = Record::load(dir);
    let mut check = FolderCheck::default();
    for want in expected {
        let name = want.path.display();
        check.checked += 1;
        if let Some(why) = reached_through_link(dir, &want.path) {
            check.differ.push(format!("{name} ({why})"));
            continue;
        }
        let path = dir.join(&want.path);
        let meta = match fs::symlink_metadata(&path) {
            Err(_) => {
                check.differ.push(format!("{name} (missing)"));
                continue;
            }
            Ok(m) => m,
        };
        if !meta.is_file() {
            check.differ.push(format!(
                "{name} (not a regular file: a symlink or a folder)"
            ));
            continue;
        }
        if meta.len() != want.size {
            check.differ.push(format!(
                "{name} ({} bytes, expected {})",
                meta.len(),
                want.size
            ));
            continue;
        }
        let Some(digest) = &want.digest else { continue };
        if !full && record.vouches(dir, &want.path, digest) {
            continue;
        }
        match Digest::of_file(&path) {
            Ok(d) if d == *digest => {}
            Ok(d) => check
                .differ
                .push(format!("{name} (digest {d}, expected {digest})")),
            Err(e) => check.differ.push(format!("{name} (unreadable: {e})")),
        }
    }
    if extras {
        let known: std::collections::BTreeSet<&Path> =
            expected.iter().map(|e| e.path.as_path()).collect();
        let mut found = Vec::new();
        walk(dir, Path::new(""), &mut found);
        check.extra = found
            .into_iter()
            .filter(|rel| !known.contains(rel.as_path()) && !is_own_state(rel, ignore))
            .map(|rel| rel.display().to_string())
            .collect();
    }
    check
}

/// Why `rel` cannot be reached without passing a symlink or a file, if so.
fn reached_through_link(dir: &Path, rel: &Path) -> Option<&'static str> {
    match super::paths::check_disk_parents(dir, rel) {
        Err(super::MaterializeError::Blocked { why, .. }) => Some(why),
        _ => None, // an unreadable parent shows as the file missing or unreadable
    }
}

/// Every non-folder entry below `dir` (links are listed, never followed). Depth and count
/// are bounded by what the filesystem holds; folders that cannot be read are skipped.
fn walk(root: &Path, rel: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(root.join(rel)) else {
        return;
    };
    for e in entries.flatten() {
        let child = rel.join(e.file_name());
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(root, &child, found),
            Ok(_) => found.push(child),
            Err(_) => {}
        }
    }
}
