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
use super::metrics::Counters;
use super::request::Volume;
use super::target::TargetError;
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
pub(super) struct Job {
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
    pub(super) fn failed(code: ExitCode, message: String) -> Refused {
        Refused::Failed(Failure { code, message })
    }

    pub(super) fn io(what: &str, path: &Path, e: std::io::Error) -> Refused {
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
    pub(super) pods: PathBuf,
    access: Access,
    /// Held while a target is mounted and recorded, or unmounted and forgotten: a volume's
    /// folder is removed only when no target of it is left, and never under a mount being
    /// made.
    pub(super) mounts: Mutex<()>,
    pull: PullOptions,
    pub(super) jobs: Mutex<HashMap<String, Job>>,
    generation: std::sync::atomic::AtomicU64,
    #[cfg(feature = "mount")]
    pub(super) lazy: Mutex<HashMap<String, crate::mount::Mounted>>,
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
    pub(super) fn folder(&self, id: &str) -> PathBuf {
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

    /// Stop the volume's pull, if one runs (its last target is gone).
    pub(super) async fn stop_pull(&self, id: &str) {
        let job = self.jobs.lock().expect("jobs lock").remove(id);
        if let Some(job) = job {
            job.task.abort();
            let _ = job.task.await;
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
        let target = self.remote(volume).map_err(|e| fail(&e))?.without_mirrors();
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
}

fn conflict(volume: &Volume, content: &str) -> Refused {
    Refused::Conflict(format!(
        "volume {} is already published with other content ({content})",
        volume.id
    ))
}

/// What a placed folder holds (its `volume.json`).
pub(super) struct Placed {
    pub(super) content: String,
    digest: Digest,
}

/// The folder's `volume.json`, `None` if it is not placed.
pub(super) fn placed(folder: &Path) -> Option<Placed> {
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
