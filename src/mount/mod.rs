//! `hoist mount`: a read-only FUSE view of an artifact that a server can start reading before
//! the download ends. The tree comes from the manifest at once; reads are served from the node
//! cache, or fetched with `Range` requests in aligned chunks (a miss jumps the queue), while
//! the whole artifact is prefetched in loader order. Every blob is hashed as it completes and
//! only verified blobs enter the cache; a mismatch makes every later read of it EIO.
//!
//! | file          | owns                                                       |
//! |---------------|------------------------------------------------------------|
//! | `tree.rs`     | inodes, folders and files from the manifest                |
//! | `chunks.rs`   | per-blob chunk states, the part file, hashing, promotion   |
//! | `prefetch.rs` | the ordered fetch queue and its connection pool            |
//! | `fs.rs`       | the FUSE callbacks                                         |
//! | `stats.rs`    | what the mount counts (log line, Prometheus text)          |

mod chunks;
mod fs;
mod prefetch;
mod stats;
mod tree;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use chunks::BlobStatus;
pub use prefetch::SchedulerOptions;
pub use stats::Stats;

use crate::oci::{media, LayerFormat, LayerPlan};
use crate::registry::RetryPolicy;
use crate::store::Store;
use crate::transfer::{Target, TransferError};
use chunks::Blob;
use prefetch::Scheduler;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("cannot mount {layer}: it is a {format} layer; hoist mount serves one file per raw layer (hoist's default push) or per tar layer of hoist's image-volume form; use `hoist pull` for this artifact")]
    NotRaw { layer: String, format: String },
    #[error("{0} appears twice or runs through a file; the manifest's paths do not form a tree")]
    PathClash(String),
    #[error("mounting at {path} failed: {source}; the mount point must be an existing empty folder and /dev/fuse usable (in a container: the device and CAP_SYS_ADMIN)")]
    Fuse {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unmounting {path} failed: {detail}")]
    Unmount { path: PathBuf, detail: String },
    #[error("{path} is not a live hoist mount{why}")]
    NotMounted { path: PathBuf, why: String },
    #[error("verification failed: {} did not match their digests and were never served after the check: {}", files.len(), files.join(", "))]
    Corrupt { files: Vec<String> },
}

impl crate::error::Classified for MountError {
    fn exit_code(&self) -> crate::ExitCode {
        use crate::ExitCode;
        match self {
            MountError::Transfer(e) => crate::error::transfer_code(e),
            MountError::NotRaw { .. } | MountError::PathClash(_) => ExitCode::InvalidContent,
            MountError::Fuse { .. } | MountError::Unmount { .. } => ExitCode::Failure,
            MountError::Io { .. } => ExitCode::Disk,
            MountError::Corrupt { .. } => ExitCode::Verification,
            MountError::NotMounted { .. } => ExitCode::NotFound,
        }
    }
}

impl From<MountError> for crate::Error {
    fn from(e: MountError) -> crate::Error {
        crate::Error::Feature(Box::new(e))
    }
}

#[derive(Debug, Clone)]
pub struct MountOptions {
    /// The node cache (a hoist store): verified blobs are read from and kept in it.
    pub cache: Store,
    /// Reads wait until their blob is verified.
    pub verify_before_read: bool,
    /// Chunk size of the chunk store (and of a read's fetch).
    pub chunk_size: u64,
    pub scheduler: SchedulerOptions,
    /// A read waits this long for its chunks before failing with EIO.
    pub read_timeout: Duration,
    /// Let other users (the inference server's uid) read the mount.
    pub allow_other: bool,
}

impl MountOptions {
    pub fn new(cache: Store) -> MountOptions {
        MountOptions {
            cache,
            verify_before_read: false,
            chunk_size: 4 << 20,
            scheduler: SchedulerOptions {
                connections: 16,
                span: 4,
                retry: RetryPolicy::default(),
                stall_timeout: Duration::from_secs(30),
                prefetch: true,
            },
            read_timeout: Duration::from_secs(300),
            allow_other: false,
        }
    }
}

/// A live mount. Dropping it unmounts.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    scheduler: Arc<Scheduler>,
    pub mountpoint: PathBuf,
    pub files: usize,
    pub total_bytes: u64,
}

/// Resolve `reference` on `target` and mount its files at `mountpoint` (must be called in a
/// tokio runtime: the fetch workers run on it).
pub async fn mount(
    target: &Target,
    reference: &str,
    mountpoint: &Path,
    opts: MountOptions,
) -> Result<Mounted, MountError> {
    let resolved = target.resolve(reference).await?;
    let plan = LayerPlan::from_manifest(&resolved.manifest, false).map_err(TransferError::from)?;
    // An image (the volume form) is mounted only as containerd would: its layers must be
    // what its config's diff_ids say, as `pull` checks.
    if crate::oci::files::is_image_config(&resolved.manifest.config.media_type) {
        crate::transfer::check_diff_ids(target, &resolved.manifest).await?;
    }
    let local_store = target.local_store().cloned();
    // The tree first, from the manifest alone: nothing is created on disk for a manifest
    // that cannot be mounted.
    let volume = crate::pack::volume::is_volume_form(&resolved.manifest);
    let (tree, unique) = build_tree(&plan, volume)?;
    let blobs = open_blobs(&unique, local_store.as_ref(), &opts)?;
    let kinds: Vec<_> = unique
        .iter()
        .map(|(d, _)| crate::oci::modelpack::kind_of_media_type(&d.media_type))
        .collect();
    let stats = Arc::new(Stats::new());
    let order = prefetch::loader_order(&blobs, &kinds);
    let scheduler = Arc::new(Scheduler::new(
        blobs,
        // One order for the whole mount (it fetches pieces of every file at once): the
        // manifest's home replica first.
        target.sources(resolved.manifest_digest.as_str()),
        Some(opts.cache.clone()),
        stats,
        opts.scheduler.clone(),
    ));
    scheduler.start();
    scheduler.queue_background(order);

    let fs = fs::ModelFs::new(
        tree,
        scheduler.clone(),
        opts.verify_before_read,
        opts.read_timeout,
    );
    let config = fuse_config(&target.name_of(reference), opts.allow_other);
    let session = match fuser::spawn_mount(fs, mountpoint, &config) {
        Ok(session) => session,
        Err(source) => {
            scheduler.stop();
            for blob in &scheduler.blobs {
                blob.discard_partial();
            }
            return Err(MountError::Fuse {
                path: mountpoint.to_path_buf(),
                source,
            });
        }
    };
    Ok(Mounted {
        session: Some(session),
        files: plan.layers.len(),
        total_bytes: scheduler.blobs.iter().map(|b| b.desc.size).sum(),
        scheduler,
        mountpoint: mountpoint.to_path_buf(),
    })
}

/// Each distinct blob of a mount, with the name of its first file.
type UniqueBlobs<'a> = Vec<(&'a crate::oci::Descriptor, String)>;

/// The file tree of a plan of raw layers (or of an image-volume form's tar layers), and its
/// distinct blobs.
fn build_tree(plan: &LayerPlan, volume: bool) -> Result<(tree::Tree, UniqueBlobs<'_>), MountError> {
    let mut tree = tree::Tree::new();
    let mut unique: UniqueBlobs = Vec::new();
    let mut by_digest: HashMap<String, usize> = HashMap::new();
    for layer in &plan.layers {
        let not_raw = || MountError::NotRaw {
            layer: layer.path.display().to_string(),
            format: layer.format.suffix().into(),
        };
        let desc = &layer.descriptor;
        let (start, size) = match layer.format {
            LayerFormat::Raw => (0, desc.size),
            LayerFormat::Tar if volume => volume_window(layer).ok_or_else(not_raw)?,
            _ => return Err(not_raw()),
        };
        let index = *by_digest.entry(desc.digest.to_string()).or_insert_with(|| {
            unique.push((desc, layer.path.display().to_string()));
            unique.len() - 1
        });
        if !tree.add_file(&layer.path, index, size, file_mode(desc), start) {
            return Err(MountError::PathClash(layer.path.display().to_string()));
        }
    }
    Ok((tree, unique))
}

/// Each blob from the cache or as a part file to fill; on failure none is left half-made.
fn open_blobs(
    unique: &[(&crate::oci::Descriptor, String)],
    local_store: Option<&Store>,
    opts: &MountOptions,
) -> Result<Vec<Arc<Blob>>, MountError> {
    let mut blobs: Vec<Arc<Blob>> = Vec::with_capacity(unique.len());
    for (desc, name) in unique {
        match open_blob(desc, name.clone(), local_store, opts) {
            Ok(blob) => blobs.push(Arc::new(blob)),
            Err(e) => {
                blobs.iter().for_each(|b| b.discard_partial());
                return Err(e);
            }
        }
    }
    Ok(blobs)
}

/// A read-only mount, named after the reference, with several kernel requests served at
/// once (one blocked read must not hold up the others).
fn fuse_config(reference: &str, allow_other: bool) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName(format!("hoist:{reference}")),
        fuser::MountOption::Subtype("hoist".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    if allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(4);
    config
}

/// A blob from the cache (verified earlier) or a fresh part file to fill.
fn open_blob(
    desc: &crate::oci::Descriptor,
    name: String,
    local: Option<&Store>,
    opts: &MountOptions,
) -> Result<Blob, MountError> {
    for store in local.into_iter().chain(std::iter::once(&opts.cache)) {
        if store.good_blob_size(&desc.digest) == Some(desc.size) {
            let path = store.blob_path(&desc.digest);
            let file = std::fs::File::open(&path).map_err(|source| MountError::Io {
                path: path.clone(),
                source,
            })?;
            store.touch(&desc.digest);
            return Ok(Blob::cached(desc.clone(), name, file, opts.chunk_size));
        }
    }
    let part = chunks::part_path(&opts.cache, &desc.digest);
    Blob::filling(desc.clone(), name, part.clone(), opts.chunk_size)
        .map_err(|source| MountError::Io { path: part, source })
}

/// The file's mode from its ModelPack metadata annotation, else read-only for all.
/// Where an image-volume layer's file lies in its blob, `(start, size)`: from the size its
/// metadata annotation gives, only if the blob is exactly as long as hoist's tar of such a
/// file (the header found there is checked before the first read).
fn volume_window(layer: &crate::oci::FileLayer) -> Option<(u64, u64)> {
    let desc = &layer.descriptor;
    let meta: crate::oci::modelpack::FileMetadata =
        serde_json::from_str(desc.annotation(media::ANNOTATION_FILE_METADATA)?).ok()?;
    let path = layer.path.to_str()?;
    let (start, end) = crate::pack::volume::tar_window(path, meta.size).ok()?;
    (end == desc.size).then_some((start, meta.size))
}

fn file_mode(desc: &crate::oci::Descriptor) -> u32 {
    desc.annotation(media::ANNOTATION_FILE_METADATA)
        .and_then(|m| serde_json::from_str::<crate::oci::modelpack::FileMetadata>(m).ok())
        .map(|m| (m.mode & 0o777) | 0o444)
        .unwrap_or(0o444)
}

impl Mounted {
    pub fn stats(&self) -> &Stats {
        &self.scheduler.stats
    }

    /// Every blob is verified or poisoned: nothing is left to fetch.
    pub fn settled(&self) -> bool {
        self.scheduler.settled()
    }

    /// Status of each blob (by the name it is known by).
    pub fn blob_statuses(&self) -> Vec<(String, BlobStatus)> {
        self.scheduler
            .blobs
            .iter()
            .map(|b| (b.name.clone(), b.status()))
            .collect()
    }

    /// The session ended without us (someone ran `hoist umount` or `fusermount -u`).
    pub fn is_finished(&self) -> bool {
        self.session
            .as_ref()
            .map(|s| s.guard.is_finished())
            .unwrap_or(true)
    }

    /// Unmount (lazily when busy, so readers never leave a stuck mount) and drop unverified
    /// part files.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), MountError> {
        let result = match self.session.take() {
            Some(session) if session.guard.is_finished() => {
                let _ = session.join();
                Ok(())
            }
            Some(session) => self.detach(session),
            None => Ok(()),
        };
        self.scheduler.stop();
        for blob in &self.scheduler.blobs {
            blob.discard_partial();
        }
        result
    }

    /// Unmount even while readers hold files open: detach the mount lazily (no new opens),
    /// then end the FUSE connection so blocked readers get an error instead of waiting.
    fn detach(&self, session: fuser::BackgroundSession) -> Result<(), MountError> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(&self.mountpoint).map(|m| m.dev()).ok();
        unmount(&self.mountpoint)?;
        let wait = |secs: u64| {
            let deadline = std::time::Instant::now() + Duration::from_secs(secs);
            while !session.guard.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            session.guard.is_finished()
        };
        if !wait(1) {
            // fusectl's abort file ends the connection at once where it is mounted.
            if let Some(dev) = dev {
                let minor = libc::minor(dev);
                let abort = format!("/sys/fs/fuse/connections/{minor}/abort");
                let _ = std::fs::write(abort, b"1");
            }
        }
        if wait(2) {
            let _ = session.join();
        } else {
            // Still in use: the connection ends when this process exits and closes
            // /dev/fuse; the mount point is already gone from the namespace.
            tracing::debug!("mount: FUSE session still busy after the detach");
            std::mem::forget(session);
        }
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Is `path` a hoist mount that answers (`hoist mounted`, a Pod's probe)? Its reference when
/// it is: the mount table names it (`hoist:REF`, a FUSE filesystem) and its root can be
/// read, which a mount whose process died cannot (ENOTCONN).
pub fn mounted(path: &Path) -> Result<String, MountError> {
    let not = |why: String| MountError::NotMounted {
        path: path.to_path_buf(),
        why,
    };
    let want = std::fs::canonicalize(path).map_err(|e| not(format!(" ({e})")))?;
    let table = crate::fsutil::mount_table()
        .map_err(|e| not(format!(" (cannot read the mount table: {e})")))?;
    let reference = table.iter().rev().find_map(|m| {
        (m.point == want && m.fstype.starts_with("fuse"))
            .then(|| m.source.strip_prefix("hoist:").map(str::to_string))
            .flatten()
    });
    let reference = reference.ok_or_else(|| not(String::new()))?;
    std::fs::read_dir(&want).map_err(|e| not(format!(" (its root does not answer: {e})")))?;
    Ok(reference)
}

/// Unmount a hoist mount from outside (`hoist umount`): a lazy detach, so open files do not
/// keep it busy; the serving process then sees its session end and exits.
pub fn unmount(path: &Path) -> Result<(), MountError> {
    let direct = match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) => return Ok(()),
        Err(errno) => std::io::Error::from(errno),
    };
    // Without CAP_SYS_ADMIN, the setuid helper unmounts what this user mounted.
    for helper in ["fusermount3", "fusermount"] {
        if let Ok(out) = std::process::Command::new(helper)
            .args(["-u", "-z"])
            .arg(path)
            .output()
        {
            if out.status.success() {
                return Ok(());
            }
        }
    }
    Err(MountError::Unmount {
        path: path.to_path_buf(),
        detail: format!("{direct}; is it a mount point?"),
    })
}
