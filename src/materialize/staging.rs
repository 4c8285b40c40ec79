//! The staging folder of one pull, and its commit: every verified file placed in one checked
//! plan, or nothing (see the module above for the whole story).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::paths::{ensure_dirs, safe_mode};
use super::{
    io_err, link, plan, tar_layer, LinkCounts, MaterializeError, Placement, Record, Staged,
    UnpackLimits,
};
use crate::digest::Digest;
use crate::oci::LayerFormat;
use crate::reserved::STAGING_DIR;

/// The state folder inside the output folder: downloads in progress (`<hex>.part` and their
/// `.state`), verified blobs (`<hex>.blob`) and unpacked tar trees. It survives a failed pull
/// so the next one resumes. Two pulls into one folder take turns: the lock is held on the
/// output folder itself, which outlives the state folder.
pub struct Staging {
    out: PathBuf,
    dir: PathBuf,
    /// Held (flock) for the life of the staging; released when it is dropped.
    _lock: fs::File,
    created_out: bool,
    record: Mutex<Record>,
    /// Committed or aborted: nothing left for `Drop` to do.
    done: std::sync::atomic::AtomicBool,
}

impl Staging {
    /// Open the state folder, waiting for any other pull into the same folder to finish.
    pub fn open(out: &Path) -> Result<Staging, MaterializeError> {
        let created_out = fs::symlink_metadata(out).is_err();
        if fs::metadata(out).is_ok_and(|m| !m.is_dir()) {
            return Err(MaterializeError::NotAFolder {
                path: out.to_path_buf(),
            });
        }
        let output = |source| MaterializeError::Output {
            path: out.to_path_buf(),
            source,
        };
        fs::create_dir_all(out).map_err(output)?;
        let lock = fs::File::open(out).map_err(io_err(out))?;
        lock.lock().map_err(io_err(out))?;
        let dir = out.join(STAGING_DIR);
        ensure_dirs(out, Path::new(STAGING_DIR))?;
        Ok(Staging {
            out: out.to_path_buf(),
            dir,
            _lock: lock,
            created_out,
            record: Mutex::new(Record::load(out)),
            done: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Would placing `rel` replace something no pull placed, that is not already these bytes?
    /// Asked before any download, so that a pull into a folder of the user's own files is
    /// refused before it costs the network anything.
    pub fn would_replace_foreign(&self, rel: &Path, digest: &Digest, size: u64) -> bool {
        // A folder in the way is no file of the user's to name: the commit refuses it.
        match fs::symlink_metadata(self.out.join(rel)) {
            Ok(m) if !m.is_dir() => {}
            _ => return false,
        }
        if self.record.lock().expect("record").placed(rel) {
            return false;
        }
        !self.holds(rel, digest, size)
    }

    /// Is the file at `rel` already there with exactly `digest`'s bytes? Trusted from the
    /// record while its stamp matches; otherwise hashed (and the record refreshed).
    pub fn holds(&self, rel: &Path, digest: &Digest, size: u64) -> bool {
        let path = self.out.join(rel);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            return false;
        };
        if !meta.is_file() || meta.len() != size {
            return false;
        }
        let (vouched, placed) = {
            let record = self.record.lock().expect("record");
            (record.vouches(&self.out, rel, digest), record.placed(rel))
        };
        if vouched {
            return true;
        }
        // Hashed without holding the record: other blobs' checks run meanwhile.
        let same = Digest::of_file(&path).is_ok_and(|d| d == *digest);
        if same && placed {
            self.record
                .lock()
                .expect("record")
                .note(&self.out, rel, Some(digest.clone()));
        }
        same
    }

    /// Remember the chunk lists of blobs this pull places (written with the record).
    pub fn remember_chunks(
        &self,
        chunks: std::collections::BTreeMap<Digest, crate::chunks::KnownChunks>,
    ) {
        self.record.lock().expect("record").chunks.extend(chunks);
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
    /// `image`: the layer belongs to a container image, whose whiteouts are honoured.
    pub fn stage_tar(
        &self,
        index: usize,
        blob: &Path,
        format: LayerFormat,
        layer: &str,
        image: bool,
        limits: UnpackLimits,
    ) -> Result<Vec<Staged>, MaterializeError> {
        let tree = self.dir.join(format!("t-{index}"));
        if fs::symlink_metadata(&tree).is_ok() {
            fs::remove_dir_all(&tree).map_err(io_err(&tree))?;
        }
        fs::create_dir(&tree).map_err(io_err(&tree))?;
        let compressed = fs::metadata(blob).map_err(io_err(blob))?.len();
        let by_ratio = compressed
            .saturating_mul(limits.ratio)
            .max(limits.min_bytes);
        let free = free_bytes(&tree).map_err(io_err(&tree))?;
        let budget = tar_layer::Budget {
            bytes: by_ratio.min(free),
            bytes_why: if by_ratio <= free {
                "the limit for its compressed size; raise it with --max-unpack-ratio"
            } else {
                "the free space left on the output filesystem"
            },
            entries: limits.max_entries,
        };
        let result = tar_layer::extract(blob, format, &tree, layer, image, budget);
        if result.is_err() {
            let _ = fs::remove_dir_all(&tree);
        }
        result
    }

    /// Validate the whole plan, place everything in order, record what was placed, then
    /// remove the state folder. `overwrite`: files no earlier pull placed may be replaced.
    /// Place everything staged as one checked plan. `version`: every file of the version
    /// being pulled, when the pull is of a whole version: files an earlier pull placed that it
    /// lacks are then removed (see [`Staging::drop_superseded`]).
    pub fn commit(
        &self,
        items: &[Staged],
        overwrite: bool,
        version: Option<&std::collections::BTreeSet<PathBuf>>,
    ) -> Result<LinkCounts, MaterializeError> {
        let items = plan::apply_whiteouts(items);
        {
            let record = self.record.lock().expect("record");
            plan::validate(&self.out, &items, &record, overwrite)?;
        }
        let mut undo = Undo::default();
        let counts = match self.place_all(&items, &mut undo) {
            Ok(counts) => counts,
            Err(e) => {
                undo.roll_back();
                return Err(e);
            }
        };
        let mut record = std::mem::take(&mut *self.record.lock().expect("record"));
        for item in &items {
            if let Staged::File {
                relative, digest, ..
            } = item
            {
                record.note(&self.out, relative, digest.clone());
            }
        }
        if let Some(version) = version {
            self.drop_superseded(&mut record, version);
        }
        record.prune(&self.out);
        record.save(&self.out).map_err(io_err(&self.out))?;
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        fs::remove_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        Ok(counts)
    }

    /// Remove the files an earlier pull placed that the new version lacks (a shard dropped by
    /// re-sharding, an old tokenizer file), so the folder holds exactly the new version and a
    /// loader globbing `*.safetensors` finds no stale shard. Only files still exactly as that
    /// pull left them go: one the user changed since is the user's, kept and no longer
    /// recorded; files no pull placed are never touched. Folders emptied by this go too.
    fn drop_superseded(&self, record: &mut Record, version: &std::collections::BTreeSet<PathBuf>) {
        let stale: Vec<PathBuf> = record
            .files
            .keys()
            .filter(|rel| !version.contains(*rel))
            .cloned()
            .collect();
        for rel in stale {
            let placed = record.still_placed(&self.out, &rel);
            record.files.remove(&rel);
            if !placed {
                continue;
            }
            if fs::remove_file(self.out.join(&rel)).is_ok() {
                let mut dir = rel.parent();
                while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
                    if fs::remove_dir(self.out.join(d)).is_err() {
                        break;
                    }
                    dir = d.parent();
                }
            }
        }
    }

    /// The state folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn place_all(&self, items: &[Staged], undo: &mut Undo) -> Result<LinkCounts, MaterializeError> {
        let mut counts = LinkCounts::default();
        for (n, item) in items.iter().enumerate() {
            match item {
                Staged::Dir { relative } => undo.dirs(ensure_dirs(&self.out, relative)?),
                Staged::Remove { .. } | Staged::Opaque { .. } => {} // applied to the plan
                Staged::File {
                    from,
                    relative,
                    mode,
                    placement,
                    link_target,
                    ..
                } => {
                    if let Some(parent) = relative.parent() {
                        undo.dirs(ensure_dirs(&self.out, parent)?);
                    }
                    let target = self.out.join(relative);
                    // A hard link shares the store's inode: its mode is the store's.
                    let (source, hard) = match placement {
                        Placement::Move => (from.clone(), false),
                        Placement::Link(how) => {
                            let tmp = self.dir.join(format!("link-{n}"));
                            let _ = fs::remove_file(&tmp);
                            let linked = link::place(from, &tmp, *how)?;
                            counts.add(&linked);
                            (tmp, linked == link::Linked::Hard)
                        }
                    };
                    if link_target.is_none() && !hard {
                        fs::set_permissions(&source, fs::Permissions::from_mode(safe_mode(*mode)))
                            .map_err(io_err(&source))?;
                    }
                    if fs::symlink_metadata(&target).is_ok() {
                        let old = self.dir.join(format!("old-{n}"));
                        fs::rename(&target, &old).map_err(io_err(&target))?;
                        undo.replaced.push((old, target.clone()));
                    }
                    fs::rename(&source, &target).map_err(io_err(&target))?;
                    undo.placed.push(target);
                }
            }
        }
        Ok(counts)
    }

    /// Give up. Unpacked trees go; downloads stay for the next run to resume, unless `wipe`
    /// (the source sent bad bytes), which removes the state folder and, if this pull created
    /// the output folder, that too. Takes `&self`: a failed pull may still have unpacking
    /// tasks holding the staging when it gives up; only the first call acts.
    pub fn abort(&self, wipe: bool) {
        if self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if !wipe {
            if let Ok(entries) = fs::read_dir(&self.dir) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with("t-") || name.starts_with("link-") {
                        let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
                    }
                }
            }
        }
        let keeps_something = !wipe
            && fs::read_dir(&self.dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false);
        if !keeps_something {
            let _ = fs::remove_dir_all(&self.dir);
            if self.created_out {
                let _ = fs::remove_dir(&self.out);
            }
        }
    }

    /// What a failed pull keeps for its resume: the state folder and its size in bytes.
    pub fn kept(&self) -> Option<(PathBuf, u64)> {
        let mut entries = fs::read_dir(&self.dir).ok()?.peekable();
        entries.peek()?;
        let bytes = entries
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .sum();
        Some((self.dir.clone(), bytes))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        self.abort(false);
    }
}

/// What a commit changed, to put back if it fails half-way.
#[derive(Default)]
struct Undo {
    created_dirs: Vec<PathBuf>,
    placed: Vec<PathBuf>,
    /// (where the old file waits, where it was)
    replaced: Vec<(PathBuf, PathBuf)>,
}

impl Undo {
    fn dirs(&mut self, created: Vec<PathBuf>) {
        self.created_dirs.extend(created);
    }

    fn roll_back(self) {
        for p in self.placed.iter().rev() {
            let _ = fs::remove_file(p);
        }
        for (old, at) in self.replaced.iter().rev() {
            let _ = fs::rename(old, at);
        }
        for d in self.created_dirs.iter().rev() {
            let _ = fs::remove_dir(d); // only if still empty
        }
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

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
