//! The plugin's volumes: each published volume has a folder of its own under the volumes
//! folder (named by a hash of its id, since a PersistentVolume's id may be a reference), with
//! the model's files in `model/`, hard links to the store's verified blobs, and `volume.json`
//! written once they are all in place.
//!
//! A pull is a task of the plugin, not of the gRPC call that asked for it: a call whose
//! deadline comes first answers DEADLINE_EXCEEDED and leaves the task running; a repeated
//! call for the volume joins it. Two volumes of one model pull side by side and fetch each
//! blob once (the store locks a blob while it is fetched). A tag the node already resolved
//! is taken from the store (`IfNotPresent`): the second volume of a model on a node asks the
//! registry nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::access::{Access, Model, Verdict};
use super::bind;
use super::metrics::Counters;
use super::request::Volume;
use super::target::{Target as TargetDir, TargetError};
use super::CsiOptions;
use crate::digest::Digest;
use crate::materialize::LinkMode;
use crate::metrics::PullMetrics;
use crate::reference::{valid_repository, valid_tag, Reference};
use crate::store::{Holding, Store};
use crate::transfer::{self, LayerFilter, PullOptions, PullReport, Target};
use crate::{Context, Error, ExitCode};

/// Why a volume could not be placed: the exit-code class and the one-line message.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: ExitCode,
    pub message: String,
}

impl From<&Error> for Failure {
    fn from(e: &Error) -> Failure {
        Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

/// What a publish waits on: `None` while the pull runs.
type Outcome = Option<Result<(), Failure>>;

/// A pull under way for one volume.
struct Job {
    content: String,
    generation: u64,
    done: watch::Receiver<Outcome>,
    task: JoinHandle<()>,
}

/// A publish or unpublish that cannot go on, by the gRPC code it answers.
#[derive(Debug)]
pub enum Refused {
    /// The volume id is published (or being pulled) with other content, or something else
    /// is mounted at the target: ALREADY_EXISTS.
    Conflict(String),
    /// The registry does not let this volume's credentials read the model: PERMISSION_DENIED.
    Denied(String),
    /// A link on the way to the target: INVALID_ARGUMENT.
    Invalid(String),
    /// An unpublish of a volume this plugin does not know, at a target holding something
    /// else: NOT_FOUND, and nothing is touched.
    Unknown(String),
    /// The pull goes on past the caller's deadline: DEADLINE_EXCEEDED.
    Pending(String),
    Failed(Failure),
}

impl Refused {
    fn failed(code: ExitCode, message: String) -> Refused {
        Refused::Failed(Failure { code, message })
    }

    fn io(what: &str, path: &Path, e: std::io::Error) -> Refused {
        Refused::failed(ExitCode::Failure, format!("{what} {}: {e}", path.display()))
    }
}

impl From<TargetError> for Refused {
    fn from(e: TargetError) -> Refused {
        match e {
            TargetError::Refused { .. } => Refused::Invalid(e.to_string()),
            TargetError::Io { .. } => Refused::failed(ExitCode::Failure, e.to_string()),
        }
    }
}

pub struct Volumes {
    ctx: Context,
    store: Store,
    root: PathBuf,
    /// Kubelet's pods folder: every target is opened beneath it.
    pods: PathBuf,
    access: Access,
    /// Held while a target is mounted and recorded, or unmounted and forgotten: a volume's
    /// folder is removed only when no target of it is left, and never under a mount being
    /// made.
    mounts: Mutex<()>,
    pull: PullOptions,
    jobs: Mutex<HashMap<String, Job>>,
    generation: std::sync::atomic::AtomicU64,
    #[cfg(feature = "mount")]
    lazy: Mutex<HashMap<String, crate::mount::Mounted>>,
    pub(super) counters: Mutex<Counters>,
}

impl Volumes {
    pub fn new(ctx: Context, store: Store, opts: &CsiOptions) -> Volumes {
        Volumes {
            ctx,
            pull: PullOptions {
                cache: Some(store.clone()),
                // The folder's files share the store's inodes: no copy, and the blobs stay
                // in the cache for the next volume.
                link_mode: LinkMode::Hardlink,
                // The folder is the plugin's own.
                overwrite: true,
                ..opts.pull.clone()
            },
            store,
            root: opts.volumes_dir.clone(),
            pods: opts.kubelet_dir.join("pods"),
            access: Access::default(),
            mounts: Mutex::new(()),
            jobs: Mutex::new(HashMap::new()),
            generation: Default::default(),
            #[cfg(feature = "mount")]
            lazy: Mutex::new(HashMap::new()),
            counters: Mutex::new(Counters::default()),
        }
    }

    /// The volume's own folder.
    fn folder(&self, id: &str) -> PathBuf {
        let hex = Digest::of_bytes(id.as_bytes()).hex().to_string();
        self.root.join(&hex[..32])
    }

    /// The plugin's metrics text.
    pub fn render_metrics(&self) -> String {
        // Never both locks at once: a publish takes the jobs' lock, then the counters'.
        let in_flight = self.jobs.lock().expect("jobs lock").len();
        self.counters
            .lock()
            .expect("counters lock")
            .render(in_flight)
    }

    /// The folder to mount for `volume` once its model is in place, pulling it first if it
    /// is not. Waits at most `wait` (`None`: until done); `Ok(None)` when the pull is still
    /// running then.
    pub async fn place(
        self: &Arc<Self>,
        volume: &Volume,
        wait: Option<Duration>,
    ) -> Result<Option<PathBuf>, Refused> {
        let folder = self.folder(&volume.id);
        let model = folder.join("model");
        match placed(&folder) {
            Some(p) if p.content == volume.content_key() => {
                self.authorize(volume, &p.digest).await?;
                return Ok(Some(model));
            }
            Some(p) => return Err(conflict(volume, &p.content)),
            None => {}
        }
        if let Some(digest) = self.cached_digest(volume) {
            // Before anything is placed from the cache.
            self.authorize(volume, &digest).await?;
        }
        let mut done = self.join_or_start(volume)?;
        let finished = done.wait_for(Option::is_some);
        let outcome = match wait {
            Some(wait) => match tokio::time::timeout(wait, finished).await {
                Ok(r) => r.map(|o| o.clone()),
                Err(_) => return Ok(None),
            },
            None => finished.await.map(|o| o.clone()),
        };
        match outcome {
            Ok(Some(Ok(()))) => match placed(&folder) {
                Some(p) => {
                    self.authorize(volume, &p.digest).await?;
                    Ok(Some(model))
                }
                None => Err(Refused::failed(
                    ExitCode::Interrupted,
                    format!(
                        "volume {} was unpublished as its model was placed",
                        volume.id
                    ),
                )),
            },
            Ok(Some(Err(failure))) => Err(Refused::Failed(failure)),
            // The task ended without a word: the volume was unpublished while it ran.
            Ok(None) | Err(_) => Err(Refused::Failed(Failure {
                code: ExitCode::Interrupted,
                message: format!(
                    "volume {} was unpublished while its model was pulled",
                    volume.id
                ),
            })),
        }
    }

    /// The digest the node's store holds for the volume's reference, when a publish would
    /// be served from it (`IfNotPresent`).
    fn cached_digest(&self, volume: &Volume) -> Option<Digest> {
        if volume.always {
            return None;
        }
        if let Some(digest) = &volume.reference.digest {
            return Some(digest.clone());
        }
        let (repository, tag) = local_name(&volume.reference)?;
        self.store.resolve(&repository, &tag).ok().map(|d| d.digest)
    }

    /// Is `volume` let read `digest` by its registry, with its own credentials? See
    /// `access.rs`: free models and fresh verdicts need no request.
    async fn authorize(&self, volume: &Volume, digest: &Digest) -> Result<(), Refused> {
        let model = Model::of(volume, digest);
        let verdict = match self.access.known(volume, &model) {
            Some(v) => v,
            None => {
                let v = self.ask_registry(volume, digest).await?;
                self.access.remember(volume, &model, v);
                v
            }
        };
        match verdict {
            Verdict::Allowed => Ok(()),
            Verdict::Denied => {
                self.counters.lock().expect("counters lock").denied += 1;
                Err(Refused::Denied(format!(
                    "the registry does not let this volume's credentials read {}@{digest}: a model pulled with other credentials is not served from the node's cache",
                    volume.reference.repository
                )))
            }
        }
    }

    /// One manifest request by digest, to the registry itself (a mirror may hold what the
    /// registry would refuse), with the volume's credentials.
    async fn ask_registry(&self, volume: &Volume, digest: &Digest) -> Result<Verdict, Refused> {
        let fail = |e: &Error| Refused::Failed(Failure::from(e));
        let target = match self.remote(volume).map_err(|e| fail(&e))? {
            Target::Remote {
                client, repository, ..
            } => Target::Remote {
                client,
                repository,
                mirrors: Vec::new(),
            },
            local => local,
        };
        match target.resolve(digest.as_str()).await {
            Ok(_) => Ok(Verdict::Allowed),
            Err(e) => {
                let e = Error::from(e);
                match e.exit_code() {
                    ExitCode::Auth | ExitCode::NotFound => {
                        tracing::info!(
                            "volume {}: the registry refuses its credentials for {}@{digest}: {e}",
                            volume.id,
                            volume.reference.repository
                        );
                        Ok(Verdict::Denied)
                    }
                    _ => Err(fail(&e)),
                }
            }
        }
    }

    /// The running pull of this volume, or a new one.
    fn join_or_start(
        self: &Arc<Self>,
        volume: &Volume,
    ) -> Result<watch::Receiver<Outcome>, Refused> {
        let mut jobs = self.jobs.lock().expect("jobs lock");
        if let Some(job) = jobs.get(&volume.id) {
            if job.content != volume.content_key() {
                return Err(conflict(volume, &job.content));
            }
            self.counters.lock().expect("counters lock").joined += 1;
            tracing::info!("volume {}: joining the pull under way", volume.id);
            return Ok(job.done.clone());
        }
        let (tx, rx) = watch::channel(None);
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let this = self.clone();
        let v = volume.clone();
        let task = tokio::spawn(async move {
            let result = this.pull_into_folder(&v).await;
            let outcome = result.as_ref().map(|_| ()).map_err(Failure::from);
            if let Err(f) = &outcome {
                tracing::warn!("volume {}: {}", v.id, f.message);
            }
            let mut jobs = this.jobs.lock().expect("jobs lock");
            let _ = tx.send(Some(outcome));
            if jobs.get(&v.id).is_some_and(|j| j.generation == generation) {
                jobs.remove(&v.id);
            }
        });
        jobs.insert(
            volume.id.clone(),
            Job {
                content: volume.content_key(),
                generation,
                done: rx.clone(),
                task,
            },
        );
        Ok(rx)
    }

    /// Pull the volume's model into its folder and mark the folder placed.
    async fn pull_into_folder(&self, volume: &Volume) -> Result<PullReport, Error> {
        let started = Instant::now();
        let folder = self.folder(&volume.id);
        let model = folder.join("model");
        let result = self.pull_model(volume, &model).await;
        let result = match result {
            Ok(report) => write_placed(&folder, volume, &report).map(|()| report),
            Err(e) => Err(e),
        };
        let metrics = PullMetrics::of(
            volume.reference.repository.clone(),
            started,
            result.as_ref(),
            false,
        );
        self.counters
            .lock()
            .expect("counters lock")
            .pulled(&metrics);
        result
    }

    async fn pull_model(&self, volume: &Volume, model: &Path) -> Result<PullReport, Error> {
        let opts = PullOptions {
            filter: LayerFilter {
                include: LayerFilter::globs(&volume.include)
                    .map_err(|e| Error::Usage(format!("include: {e}")))?,
                ..LayerFilter::default()
            },
            ..self.pull.clone()
        };
        let local = local_name(&volume.reference);
        if let (false, Some((repository, reference))) = (volume.always, &local) {
            let target = Target::Local {
                store: self.store.clone(),
                repository: repository.clone(),
            };
            match transfer::pull(&target, reference, model, &opts, transfer::silent()).await {
                Ok(report) => {
                    tracing::info!(
                        "volume {}: {} placed from the node's store",
                        volume.id,
                        volume.reference
                    );
                    return Ok(report);
                }
                Err(e) => tracing::debug!(
                    "volume {}: not in the node's store as a whole ({e}); asking the registry",
                    volume.id
                ),
            }
        }
        let target = self.remote(volume)?;
        let resolved = target.resolve(&volume.reference.target()).await?;
        let digest = resolved.manifest_digest.to_string();
        let report = transfer::pull(&target, &digest, model, &opts, transfer::silent()).await?;
        self.access
            .pulled(volume, &Model::of(volume, &report.digest));
        if let Some((repository, reference)) = &local {
            self.remember(repository, reference, &resolved);
        }
        tracing::info!(
            "volume {}: {} pulled ({} bytes downloaded)",
            volume.id,
            volume.reference,
            report.downloaded_bytes
        );
        Ok(report)
    }

    /// The registry target, with the volume's secret for its registry when it has one.
    fn remote(&self, volume: &Volume) -> Result<Target, Error> {
        let registry = volume.reference.registry.as_deref().unwrap_or_default();
        let credentials = match &volume.secret {
            Some(secret) => secret.credentials(registry)?,
            None => None,
        };
        self.ctx.target_with(&volume.reference, credentials)
    }

    /// Keep the resolved manifest in the store under the reference's local name, so the next
    /// volume of this tag is placed without the registry. A failure only costs that.
    fn remember(&self, repository: &str, reference: &str, resolved: &transfer::Resolved) {
        let bytes = &resolved.manifest_bytes;
        let digest = resolved.manifest_digest.to_string();
        for name in [reference, digest.as_str()] {
            // A digest reference names the index when there is one; only the image manifest
            // is kept, under its own digest.
            if name.parse::<Digest>().is_ok() && name != digest {
                continue;
            }
            if let Err(e) = self
                .store
                .put_manifest(repository, name, "", bytes, Holding::Later)
            {
                tracing::warn!("cannot keep {repository}:{name} in the node's store: {e}");
            }
        }
    }

    /// Mount a lazy volume: `hoist mount`'s FUSE view at the target, readable by the Pod's
    /// user, its blobs verified into the store as they complete.
    #[cfg(feature = "mount")]
    pub async fn mount_lazy(&self, volume: &Volume) -> Result<(), Error> {
        let target = self.remote(volume)?;
        std::fs::create_dir_all(&volume.target).map_err(|source| Error::Write {
            what: "the volume's target folder",
            path: volume.target.clone(),
            source,
        })?;
        let mut reference = volume.reference.target();
        if let Some(verification) = &self.pull.verify {
            // Checked before anything is served, and the checked manifest is what is mounted.
            let resolved = target.resolve(&reference).await?;
            transfer::signature::check(&target, &resolved, verification).await?;
            reference = resolved.manifest_digest.to_string();
        }
        let mut opts = crate::mount::MountOptions::new(self.store.clone());
        opts.allow_other = true;
        let mounted = crate::mount::mount(&target, &reference, &volume.target, opts).await?;
        self.lazy
            .lock()
            .expect("lazy lock")
            .insert(volume.id.clone(), mounted);
        Ok(())
    }

    /// Is this volume's lazy mount served by this process?
    #[cfg(feature = "mount")]
    pub fn serves_lazy(&self, id: &str) -> bool {
        self.lazy.lock().expect("lazy lock").contains_key(id)
    }

    /// Open a target beneath kubelet's pods folder, never through a link.
    pub fn open_target(&self, path: &Path, create: bool) -> Result<Option<TargetDir>, Refused> {
        Ok(TargetDir::open(&self.pods, path, create)?)
    }

    /// Publish a copied volume: its model placed (pulled first if need be), its folder bind
    /// mounted read-only at the target, and the target recorded in the folder, so the folder
    /// lives while any target uses it.
    pub async fn publish(
        self: &Arc<Self>,
        volume: &Volume,
        wait: Option<Duration>,
    ) -> Result<(), Refused> {
        // A link on the way is refused before anything is pulled.
        self.open_target(&volume.target, false)?;
        // Twice at most: the folder may be removed by the unpublish of its last other target
        // between its placing and the mount.
        for _ in 0..2 {
            let Some(model) = self.place(volume, wait).await? else {
                return Err(Refused::Pending(format!(
                    "{} is still being pulled; the pull goes on, and a retry of this call joins it",
                    volume.reference
                )));
            };
            let _mounts = self.mounts.lock().expect("mounts lock");
            let folder = self.folder(&volume.id);
            if placed(&folder).is_none_or(|p| p.content != volume.content_key()) {
                continue;
            }
            let mut target = self
                .open_target(&volume.target, true)?
                .expect("a created target exists");
            if !bind::holds(&target, &model) {
                if is_mount_point(&volume.target) {
                    return Err(Refused::Conflict(format!(
                        "something other than volume {} is mounted at {}",
                        volume.id,
                        volume.target.display()
                    )));
                }
                bind::mount_read_only(&model, &mut target)
                    .map_err(|e| Refused::io("cannot mount the volume at", &volume.target, e))?;
                tracing::info!(
                    "volume {}: {} mounted read-only at {}",
                    volume.id,
                    volume.reference,
                    volume.target.display()
                );
            }
            record_target(&folder, &volume.target)
                .map_err(|e| Refused::io("cannot record the target in", &folder, e))?;
            return Ok(());
        }
        Err(Refused::failed(
            ExitCode::Interrupted,
            format!(
                "volume {} was unpublished while it was published",
                volume.id
            ),
        ))
    }

    /// Unpublish `id` at `path`: the plugin's own mount there is removed, and the empty
    /// target folder; anything else is left as it is. The volume's folder (and a pull of it
    /// still running) goes with its last target. The store keeps the blobs.
    pub async fn unpublish(&self, id: &str, path: &Path) -> Result<(), Refused> {
        let target = self.open_target(path, false)?;
        let mut known = false;
        #[cfg(feature = "mount")]
        {
            let mounted = self.lazy.lock().expect("lazy lock").remove(id);
            if let Some(mounted) = mounted {
                known = true;
                let _ = tokio::task::spawn_blocking(move || mounted.unmount()).await;
            }
        }
        let folder = self.folder(id);
        let model = folder.join("model");
        known |= folder.exists() || self.jobs.lock().expect("jobs lock").contains_key(id);
        let mounts = self.mounts.lock().expect("mounts lock");
        if let Some(mut target) = target {
            let unmounted = bind::unmount_own(&model, &mut target)
                .map_err(|e| Refused::io("cannot unmount the volume at", path, e))?;
            if is_mount_point(path) && is_dead_lazy_mount(path) {
                // A lazy volume of an earlier run of the plugin, its FUSE server gone.
                bind::detach(&target)
                    .map_err(|e| Refused::io("cannot unmount the dead volume at", path, e))?;
                known = true;
                target.reopen()?;
            }
            known |= unmounted > 0;
            let foreign = is_mount_point(path);
            let removed = !foreign
                && target
                    .remove_if_empty()
                    .map_err(|e| Refused::io("cannot remove", path, e))?;
            if !known && !removed {
                return Err(Refused::Unknown(format!(
                    "volume {id} is not published at {}, which holds something else: left as it is",
                    path.display()
                )));
            }
        }
        if !known {
            return Ok(()); // unpublished already: the spec's idempotent answer
        }
        forget_target(&folder, path);
        if self.live_targets(&folder, &model) > 0 {
            tracing::info!("volume {id}: other targets still use its folder");
            return Ok(());
        }
        drop(mounts);
        let job = self.jobs.lock().expect("jobs lock").remove(id);
        if let Some(job) = job {
            job.task.abort();
            let _ = job.task.await;
        }
        let _mounts = self.mounts.lock().expect("mounts lock");
        if self.live_targets(&folder, &model) > 0 {
            return Ok(()); // published again meanwhile
        }
        match std::fs::remove_dir_all(&folder) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Refused::io("cannot remove the volume's folder", &folder, e)),
        }
    }

    /// How many recorded targets still hold the volume's bind mount; the records of those
    /// that no longer do (kubelet tore them down while the plugin was away) are dropped.
    fn live_targets(&self, folder: &Path, model: &Path) -> usize {
        recorded_targets(folder)
            .into_iter()
            .filter(|(record, path)| {
                let live = matches!(
                    TargetDir::open(&self.pods, path, false),
                    Ok(Some(t)) if bind::holds(&t, model)
                );
                if !live {
                    let _ = std::fs::remove_file(record);
                }
                live
            })
            .count()
    }
}

/// Is there a mount at `path` (read from the mount table, never by touching it)?
fn is_mount_point(path: &Path) -> bool {
    crate::fsutil::is_mount_point(path).unwrap_or(false)
}

/// A FUSE mount of `hoist mount` at `path` (its source is `hoist:REFERENCE`).
fn is_dead_lazy_mount(path: &Path) -> bool {
    crate::fsutil::mount_table()
        .unwrap_or_default()
        .iter()
        .any(|m| m.point == path && m.fstype.starts_with("fuse") && m.source.starts_with("hoist:"))
}

/// The folder keeps one file per target it is mounted at, so it outlives each but the last,
/// across restarts of the plugin.
fn target_record(folder: &Path, target: &Path) -> PathBuf {
    let hex = Digest::of_bytes(target.as_os_str().as_encoded_bytes())
        .hex()
        .to_string();
    folder.join("targets").join(&hex[..32])
}

fn record_target(folder: &Path, target: &Path) -> std::io::Result<()> {
    let record = target_record(folder, target);
    std::fs::create_dir_all(record.parent().expect("in targets/"))?;
    crate::fsutil::write_atomic(
        &record,
        target.as_os_str().as_encoded_bytes(),
        crate::fsutil::Replace::DURABLE,
    )
}

fn forget_target(folder: &Path, target: &Path) {
    let _ = std::fs::remove_file(target_record(folder, target));
}

/// The recorded targets: (record file, target path).
fn recorded_targets(folder: &Path) -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(folder.join("targets")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let bytes = std::fs::read(e.path()).ok()?;
            let path = PathBuf::from(std::ffi::OsString::from(
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&bytes),
            ));
            Some((e.path(), path))
        })
        .collect()
}

fn conflict(volume: &Volume, content: &str) -> Refused {
    Refused::Conflict(format!(
        "volume {} is already published with other content ({content})",
        volume.id
    ))
}

/// What a placed folder holds (its `volume.json`).
struct Placed {
    content: String,
    digest: Digest,
}

/// The folder's `volume.json`, `None` if it is not placed.
fn placed(folder: &Path) -> Option<Placed> {
    let bytes = std::fs::read(folder.join("volume.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(Placed {
        content: v["content"].as_str()?.to_string(),
        digest: v["digest"].as_str()?.parse().ok()?,
    })
}

fn write_placed(folder: &Path, volume: &Volume, report: &PullReport) -> Result<(), Error> {
    let path = folder.join("volume.json");
    let text = serde_json::json!({
        "volume_id": volume.id,
        "content": volume.content_key(),
        "digest": report.digest.to_string(),
        "files": report.files,
        "bytes": report.bytes,
    });
    crate::fsutil::write_atomic(
        &path,
        text.to_string().as_bytes(),
        crate::fsutil::Replace::DURABLE,
    )
    .map_err(|source| Error::Write {
        what: "the volume's record",
        path,
        source,
    })
}

/// Where the node's store keeps a registry reference: `csi/<host>/<repository>`, and the tag
/// (or digest) to look up there. `None` when the name would not be a valid repository.
fn local_name(reference: &Reference) -> Option<(String, String)> {
    let host = reference
        .registry
        .as_deref()?
        .to_ascii_lowercase()
        .replace([':', '[', ']'], "-");
    let repository = format!("csi/{}/{}", host.trim_matches('-'), reference.repository);
    let name = reference.target();
    (valid_repository(&repository) && (valid_tag(&name) || name.parse::<Digest>().is_ok()))
        .then_some((repository, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_references_get_a_local_name() {
        let r = Reference::parse("127.0.0.1:5000/team/m:v1").unwrap();
        assert_eq!(
            local_name(&r),
            Some(("csi/127.0.0.1-5000/team/m".into(), "v1".into()))
        );
        let r = Reference::parse("Registry.IO/m").unwrap();
        assert_eq!(
            local_name(&r),
            Some(("csi/registry.io/m".into(), "latest".into()))
        );
    }
}
