//! Unpacking tar, tar+gzip and tar+zstd layers into a staging tree, refusing entries that
//! could escape it: absolute names, `..`, symlinks pointing out, hard links and devices.
//! What a layer may unpack to is bounded (bytes and entries): a small compressed layer must
//! not fill the disk.

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::Path;

use super::plan::check_name;
use super::{ensure_dirs, io_err, symlink_stays_inside, MaterializeError, Placement, Staged};
use crate::oci::files::safe_relative_path;
use crate::oci::LayerFormat;

/// What one layer may unpack to.
pub struct Budget {
    pub bytes: u64,
    pub bytes_why: &'static str,
    pub entries: u64,
}

pub fn extract(
    blob: &Path,
    format: LayerFormat,
    tree: &Path,
    layer: &str,
    image: bool,
    budget: Budget,
) -> Result<Vec<Staged>, MaterializeError> {
    let file = BufReader::with_capacity(1 << 20, File::open(blob).map_err(io_err(blob))?);
    let (reader, format_name): (Box<dyn Read>, &'static str) = match format {
        LayerFormat::Raw | LayerFormat::Tar => (Box::new(file), "tar"),
        LayerFormat::TarGzip => (
            Box::new(flate2::read::MultiGzDecoder::new(file)),
            "tar+gzip",
        ),
        LayerFormat::TarZstd => (
            Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(io_err(blob))?),
            "tar+zstd",
        ),
    };
    let bad_archive = |source| MaterializeError::BadArchive {
        layer: layer.to_string(),
        format: format_name,
        source,
    };
    let refuse = |path: &str, why: &str| MaterializeError::UnsafeEntry {
        layer: layer.to_string(),
        path: path.to_string(),
        why: why.to_string(),
    };
    let over = |why: &'static str, limit: u64| MaterializeError::UnpackLimit {
        layer: layer.to_string(),
        limit,
        why,
    };
    let mut archive = tar::Archive::new(reader);
    let mut staged = Vec::new();
    let mut removals = Vec::new();
    let (mut written, mut entries) = (0u64, 0u64);
    for entry in archive.entries().map_err(bad_archive)? {
        let mut entry = entry.map_err(bad_archive)?;
        entries += 1;
        if entries > budget.entries {
            return Err(over("too many entries", budget.entries));
        }
        let raw_path = entry
            .path()
            .map_err(bad_archive)?
            .to_string_lossy()
            .into_owned();
        let entry_type = entry.header().entry_type();
        if matches!(
            entry_type,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }
        let relative = safe_relative_path(raw_path.trim_end_matches('/'))
            .map_err(|why| refuse(&raw_path, why))?;
        check_name(tree, &relative).map_err(|e| refuse(&raw_path, &e.to_string()))?;
        // Image whiteouts (`.wh.<name>`, `.wh..wh..opq`) drop what lower layers of this pull
        // staged; in any other layer such a name is an ordinary file.
        if let Some(name) = relative
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(".wh."))
            .filter(|_| image)
        {
            let parent = relative.parent().map(Path::to_path_buf).unwrap_or_default();
            removals.push(if name == ".wh..opq" {
                Staged::Opaque { relative: parent }
            } else {
                let target = safe_relative_path(name)
                    .ok()
                    .filter(|t| t.components().count() == 1 && t.as_os_str() == name)
                    .ok_or_else(|| refuse(&raw_path, "a whiteout must name one file"))?;
                Staged::Remove {
                    relative: parent.join(target),
                }
            });
            continue;
        }
        let dest = tree.join(&relative);
        match entry_type {
            tar::EntryType::Directory => {
                ensure_dirs(tree, &relative)?;
                staged.push(Staged::Dir { relative });
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = relative.parent() {
                    ensure_dirs(tree, parent)?;
                }
                remove_if_symlink(&dest)?;
                if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
                    return Err(refuse(
                        &raw_path,
                        "a file where the layer already has a folder",
                    ));
                }
                let declared = entry.size();
                if written.saturating_add(declared) > budget.bytes {
                    return Err(over(budget.bytes_why, budget.bytes));
                }
                let mut out = File::create(&dest).map_err(io_err(&dest))?;
                let mut bounded = (&mut entry).take(budget.bytes - written + 1);
                written += std::io::copy(&mut bounded, &mut out).map_err(bad_archive)?;
                if written > budget.bytes {
                    return Err(over(budget.bytes_why, budget.bytes));
                }
                let mode = entry.header().mode().unwrap_or(0o644);
                staged.push(Staged::File {
                    from: dest,
                    relative,
                    mode,
                    placement: Placement::Move,
                    digest: None,
                    link_target: None,
                });
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(bad_archive)?
                    .ok_or_else(|| refuse(&raw_path, "symlink without a target"))?
                    .into_owned();
                if !symlink_stays_inside(&relative, &target) {
                    return Err(refuse(
                        &raw_path,
                        &format!("symlink to {} leaves the output folder", target.display()),
                    ));
                }
                if let Some(parent) = relative.parent() {
                    ensure_dirs(tree, parent)?;
                }
                remove_if_symlink(&dest)?;
                std::os::unix::fs::symlink(&target, &dest).map_err(io_err(&dest))?;
                staged.push(Staged::File {
                    from: dest,
                    relative,
                    mode: 0o777,
                    placement: Placement::Move,
                    digest: None,
                    link_target: Some(target),
                });
            }
            tar::EntryType::Link => {
                return Err(refuse(
                    &raw_path,
                    "hard links are not supported in model layers",
                ))
            }
            other => {
                return Err(refuse(
                    &raw_path,
                    &format!("entry type {other:?} (devices, fifos) is not allowed"),
                ))
            }
        }
    }
    // A layer's removals apply to the layers below it, so before its own files.
    removals.extend(staged);
    Ok(removals)
}

fn remove_if_symlink(path: &Path) -> Result<(), MaterializeError> {
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(path).map_err(io_err(path))?;
    }
    Ok(())
}
