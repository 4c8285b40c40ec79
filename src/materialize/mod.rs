//! Materialize: verified blobs become files in the output folder, and only all at once.
//!
//! Every layer is first staged in a hidden folder inside the output folder (same filesystem,
//! so the final step is a rename). When every layer has been verified and staged, the whole
//! plan is validated (see `plan`: names, file/folder clashes, links resolved through each
//! other, files no pull placed) before the first file moves; then files are renamed into
//! place, and a failure half-way puts back what was there. On any failure the staging folder
//! is removed and nothing partial is visible. Writes never pass through a symlink: every
//! parent folder is checked when it is created or entered.

mod link;
mod plan;
pub mod record;
mod tar_layer;
pub mod verify;

pub use link::LinkMode;
pub use plan::{NAME_MAX, PATH_MAX};
pub use record::Record;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use crate::digest::Digest;
use crate::oci::LayerFormat;
use crate::reserved::STAGING_DIR;

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

/// Permission bits as placed: what the artifact asks, minus group/other write and the
/// setuid/setgid/sticky bits, plus owner read/write (hoist must be able to replace it).
pub fn safe_mode(mode: u32) -> u32 {
    (mode & 0o755) | 0o600
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
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
