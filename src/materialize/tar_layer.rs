//! Unpacking tar, tar+gzip and tar+zstd layers into a staging tree, refusing entries that
//! could escape it: absolute names, `..`, symlinks pointing out, hard links and devices.
//! What a layer may unpack to is bounded (bytes and entries): a small compressed layer must
//! not fill the disk.

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::Path;

use super::paths::check_name;
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
    let (reader, format_name) = decoder(blob, format)?;
    let mut unpack = Unpack {
        tree,
        layer,
        format: format_name,
        image,
        budget,
        written: 0,
        entries: 0,
    };
    let mut archive = tar::Archive::new(reader);
    let mut staged = Vec::new();
    let mut removals = Vec::new();
    for entry in archive.entries().map_err(|e| unpack.bad_archive(e))? {
        let mut entry = entry.map_err(|e| unpack.bad_archive(e))?;
        match unpack.entry(&mut entry)? {
            Some(remove @ (Staged::Remove { .. } | Staged::Opaque { .. })) => removals.push(remove),
            Some(other) => staged.push(other),
            None => {}
        }
    }
    // A layer's removals apply to the layers below it, so before its own files.
    removals.extend(staged);
    Ok(removals)
}

/// The layer's bytes as a tar stream, and the format's name for errors.
fn decoder(
    blob: &Path,
    format: LayerFormat,
) -> Result<(Box<dyn Read>, &'static str), MaterializeError> {
    let file = BufReader::with_capacity(1 << 20, File::open(blob).map_err(io_err(blob))?);
    Ok(match format {
        LayerFormat::Raw | LayerFormat::Tar => (Box::new(file), "tar"),
        LayerFormat::TarGzip => (
            Box::new(flate2::read::MultiGzDecoder::new(file)),
            "tar+gzip",
        ),
        LayerFormat::TarZstd => (
            Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(io_err(blob))?),
            "tar+zstd",
        ),
    })
}

/// One layer being unpacked into `tree`, within its budget.
struct Unpack<'a> {
    tree: &'a Path,
    layer: &'a str,
    format: &'static str,
    image: bool,
    budget: Budget,
    written: u64,
    entries: u64,
}

impl Unpack<'_> {
    fn bad_archive(&self, source: std::io::Error) -> MaterializeError {
        MaterializeError::BadArchive {
            layer: self.layer.to_string(),
            format: self.format,
            source,
        }
    }

    fn refuse(&self, path: &str, why: &str) -> MaterializeError {
        MaterializeError::UnsafeEntry {
            layer: self.layer.to_string(),
            path: path.to_string(),
            why: why.to_string(),
        }
    }

    fn over(&self, why: &'static str, limit: u64) -> MaterializeError {
        MaterializeError::UnpackLimit {
            layer: self.layer.to_string(),
            limit,
            why,
        }
    }

    /// Check and unpack one entry: what it stages, if anything.
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<Option<Staged>, MaterializeError> {
        self.entries += 1;
        if self.entries > self.budget.entries {
            return Err(self.over("too many entries", self.budget.entries));
        }
        let raw_path = entry
            .path()
            .map_err(|e| self.bad_archive(e))?
            .to_string_lossy()
            .into_owned();
        let entry_type = entry.header().entry_type();
        if matches!(
            entry_type,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(None);
        }
        let relative = safe_relative_path(raw_path.trim_end_matches('/'))
            .map_err(|why| self.refuse(&raw_path, why))?;
        check_name(self.tree, &relative).map_err(|e| self.refuse(&raw_path, &e.to_string()))?;
        if let Some(removal) = self.whiteout(&relative, &raw_path)? {
            return Ok(Some(removal));
        }
        match entry_type {
            tar::EntryType::Directory => {
                ensure_dirs(self.tree, &relative)?;
                Ok(Some(Staged::Dir { relative }))
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.file(entry, relative, &raw_path).map(Some)
            }
            tar::EntryType::Symlink => self.symlink(entry, relative, &raw_path).map(Some),
            tar::EntryType::Link => {
                Err(self.refuse(&raw_path, "hard links are not supported in model layers"))
            }
            other => Err(self.refuse(
                &raw_path,
                &format!("entry type {other:?} (devices, fifos) is not allowed"),
            )),
        }
    }

    /// Image whiteouts (`.wh.<name>`, `.wh..wh..opq`) drop what lower layers of this pull
    /// staged; in any other layer such a name is an ordinary file.
    fn whiteout(
        &self,
        relative: &Path,
        raw_path: &str,
    ) -> Result<Option<Staged>, MaterializeError> {
        let Some(name) = relative
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(".wh."))
            .filter(|_| self.image)
        else {
            return Ok(None);
        };
        let parent = relative.parent().map(Path::to_path_buf).unwrap_or_default();
        if name == ".wh..opq" {
            return Ok(Some(Staged::Opaque { relative: parent }));
        }
        let target = safe_relative_path(name)
            .ok()
            .filter(|t| t.components().count() == 1 && t.as_os_str() == name)
            .ok_or_else(|| self.refuse(raw_path, "a whiteout must name one file"))?;
        Ok(Some(Staged::Remove {
            relative: parent.join(target),
        }))
    }

    /// A regular file, written within what is left of the byte budget.
    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        relative: std::path::PathBuf,
        raw_path: &str,
    ) -> Result<Staged, MaterializeError> {
        let dest = self.tree.join(&relative);
        if let Some(parent) = relative.parent() {
            ensure_dirs(self.tree, parent)?;
        }
        remove_if_symlink(&dest)?;
        if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
            return Err(self.refuse(raw_path, "a file where the layer already has a folder"));
        }
        let (limit, why) = (self.budget.bytes, self.budget.bytes_why);
        if self.written.saturating_add(entry.size()) > limit {
            return Err(self.over(why, limit));
        }
        let mut out = File::create(&dest).map_err(io_err(&dest))?;
        // The declared size may lie: the copy itself stops one byte past the budget.
        let mut bounded = (&mut *entry).take(limit - self.written + 1);
        self.written += std::io::copy(&mut bounded, &mut out).map_err(|e| self.bad_archive(e))?;
        if self.written > limit {
            return Err(self.over(why, limit));
        }
        Ok(Staged::File {
            from: dest,
            relative,
            mode: entry.header().mode().unwrap_or(0o644),
            placement: Placement::Move,
            digest: None,
            link_target: None,
        })
    }

    /// A symlink whose target stays inside the output folder.
    fn symlink<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        relative: std::path::PathBuf,
        raw_path: &str,
    ) -> Result<Staged, MaterializeError> {
        let target = entry
            .link_name()
            .map_err(|e| self.bad_archive(e))?
            .ok_or_else(|| self.refuse(raw_path, "symlink without a target"))?
            .into_owned();
        if !symlink_stays_inside(&relative, &target) {
            return Err(self.refuse(
                raw_path,
                &format!("symlink to {} leaves the output folder", target.display()),
            ));
        }
        if let Some(parent) = relative.parent() {
            ensure_dirs(self.tree, parent)?;
        }
        let dest = self.tree.join(&relative);
        remove_if_symlink(&dest)?;
        std::os::unix::fs::symlink(&target, &dest).map_err(io_err(&dest))?;
        Ok(Staged::File {
            from: dest,
            relative,
            mode: 0o777,
            placement: Placement::Move,
            digest: None,
            link_target: Some(target),
        })
    }
}

fn remove_if_symlink(path: &Path) -> Result<(), MaterializeError> {
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(path).map_err(io_err(path))?;
    }
    Ok(())
}
