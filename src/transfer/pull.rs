//! The pull engine: a reference becomes verified files in a folder.
//!
//! Each distinct blob is obtained once, from the first place that has it: the output folder
//! itself (a file already there with the right digest), the node cache (the local store,
//! with `--cache`), a download resumed from the state folder, or a fresh ranged download.
//! Nothing appears in the output folder until every blob is verified (see `materialize`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{stream, StreamExt, TryStreamExt};

use super::fetch::{FetchOptions, Fetcher, Source};
use super::{Action, Event, Observer, Target, TransferError};
use crate::digest::Digest;
use crate::materialize::{LinkMode, Placement, Staged, Staging, UnpackLimits};
use crate::oci::modelpack::{kind_of_media_type, FileMetadata, LayerKind};
use crate::oci::{media, Descriptor, FileLayer, LayerFormat, LayerPlan};
use crate::store::{BlobCheck, Store};

/// Below this many bytes to download, no chunk index is looked up: the lookup's requests
/// would cost about what reuse could save.
const MIN_DELTA_BYTES: u64 = 1 << 20;

/// How long a pull whose downloads are done still waits for the chunk index it looks up
/// only to remember.
const LATE_LOOKUP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone)]
pub struct PullOptions {
    /// Blobs fetched at once.
    pub concurrency: usize,
    /// Accept layer names with `..` or absolute paths (as ORAS's flag of the same name).
    pub allow_path_traversal: bool,
    pub fetch: FetchOptions,
    /// Keep blobs in this store and take them from it: the node cache.
    pub cache: Option<Store>,
    /// How files are made from cached blobs.
    pub link_mode: LinkMode,
    pub filter: LayerFilter,
    /// Save every layer blob as `blobs/sha256/<hex>` instead of mapping layers to files.
    pub raw: bool,
    /// Replace files in the output folder that no earlier pull placed.
    pub overwrite: bool,
    /// What a tar layer may unpack to.
    pub unpack: UnpackLimits,
    /// Other folders an earlier pull filled whose files may give a new version's chunks
    /// (the output folder's own earlier files always may).
    pub reuse_from: Vec<PathBuf>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            concurrency: 4,
            allow_path_traversal: false,
            fetch: FetchOptions::default(),
            cache: None,
            link_mode: LinkMode::Auto,
            filter: LayerFilter::default(),
            raw: false,
            overwrite: false,
            unpack: UnpackLimits::default(),
            reuse_from: Vec::new(),
        }
    }
}

/// Which layers to pull: path globs and ModelPack kinds.
#[derive(Clone, Default)]
pub struct LayerFilter {
    pub include: Option<globset::GlobSet>,
    pub exclude: Option<globset::GlobSet>,
    pub kinds: Option<Vec<LayerKind>>,
}

impl LayerFilter {
    pub fn is_empty(&self) -> bool {
        self.include.is_none() && self.exclude.is_none() && self.kinds.is_none()
    }

    pub fn keeps(&self, layer: &FileLayer) -> bool {
        let path = &layer.path;
        self.include.as_ref().is_none_or(|g| g.is_match(path))
            && !self.exclude.as_ref().is_some_and(|g| g.is_match(path))
            && self.kinds.as_ref().is_none_or(|kinds| {
                kind_of_media_type(&layer.descriptor.media_type).is_some_and(|k| kinds.contains(&k))
            })
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PullReport {
    pub digest: Digest,
    pub files: usize,
    pub bytes: u64,
    /// Bytes downloaded by this pull (not those an interrupted earlier pull had kept).
    pub downloaded_bytes: u64,
    /// Files already in place with the right bytes.
    pub skipped: usize,
    /// Blobs taken from the local store instead of the network.
    pub cache_hits: usize,
    pub cache_misses: usize,
    /// Bytes an interrupted earlier pull had already downloaded and this one reused.
    pub resumed_bytes: u64,
    /// Bytes of changed blobs taken from the files an earlier pull left in the folder (chunk
    /// index), instead of the network.
    pub reused_bytes: u64,
    /// How files from the local store were placed (hard link, reflink or copy).
    pub linked_by: crate::materialize::LinkCounts,
    /// Every file placed: its path and, for single-file layers, its digest.
    pub placed: Vec<PlacedFile>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PlacedFile {
    pub path: PathBuf,
    pub size: u64,
    /// The file's own digest (raw layers); `None` for files unpacked from tar layers.
    pub digest: Option<Digest>,
}

/// One distinct blob and the files that come from it.
struct BlobJob<'a> {
    descriptor: &'a Descriptor,
    layers: Vec<(usize, &'a FileLayer)>,
}

pub async fn pull(
    source: &Target,
    reference: &str,
    out: &Path,
    opts: &PullOptions,
    observer: Observer,
) -> Result<PullReport, TransferError> {
    let resolved = source.resolve(reference).await?;
    let plan = plan_for(&resolved.manifest, opts)?;
    refuse_reserved_in(out, &plan)?;
    let image = crate::oci::files::is_image_config(&resolved.manifest.config.media_type);
    if image {
        super::volume::check_diff_ids(source, &resolved.manifest).await?;
    }
    observer(&Event::Start {
        reference: format!("{}:{reference}", source.describe()),
        files: plan.layers.len(),
        bytes: plan.total_size(),
    });
    let out_owned = out.to_path_buf();
    let staging = tokio::task::spawn_blocking(move || Staging::open(&out_owned))
        .await
        .expect("staging task does not panic")?;
    let staging = Arc::new(staging);
    if !opts.overwrite {
        if let Err(e) = refuse_foreign_files(&staging, &plan).await {
            return Err(give_up(staging, e).await);
        }
    }
    let fetcher = Fetcher::new(opts.fetch.clone(), observer.clone());
    let jobs = blob_jobs(&plan);
    // Enough to download that reuse could pay for the index lookup: look for the index, and
    // for the chunks this machine has.
    let to_fetch = bytes_to_fetch(out, &plan, opts.cache.as_ref()).await;
    let worth_it = to_fetch >= MIN_DELTA_BYTES;
    let earlier = match (source, worth_it) {
        (Target::Remote { .. }, true) => {
            let mut folders = vec![out.to_path_buf()];
            folders.extend(opts.reuse_from.iter().cloned());
            let cache = opts.cache.clone();
            tokio::task::spawn_blocking(move || {
                super::delta::Earlier::find(&folders, cache.as_ref())
            })
            .await
            .expect("earlier-bytes task does not panic")
        }
        _ => super::delta::Earlier::none(),
    };
    let manifest_digest = &resolved.manifest_digest;
    // With earlier bytes the index is needed before the first blob; without, it is only
    // remembered for the next version, and looked up while the download runs.
    let delta = match earlier.is_empty() {
        false => match super::delta::lookup(source, manifest_digest).await {
            Some(index) => super::delta::Delta::new(index, earlier, opts.fetch.stall_timeout).await,
            None => None,
        },
        true => None,
    };
    // Not through mirrors: the cache tiers do not pass referrers on, and N nodes asking the
    // origin around them for an index they only remember would undo what the tiers save.
    // Nor for a filtered pull (small files, usually).
    let direct = matches!(source, Target::Remote { mirrors, .. } if mirrors.is_empty());
    let remember = direct && opts.filter.is_empty() && worth_it;
    let late_lookup = async {
        match (remember, &delta) {
            (true, None) => super::delta::lookup(source, manifest_digest).await,
            _ => None,
        }
    };
    let reused = std::sync::atomic::AtomicU64::new(0);
    let ctx = Ctx {
        image,
        source,
        staging: &staging,
        fetcher: &fetcher,
        opts,
        observer: &observer,
        delta: delta.as_ref(),
        reused: &reused,
    };
    let downloads = stream::iter(jobs.iter())
        .map(|job| ctx.obtain(job))
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect::<Vec<JobResult>>();
    // The late lookup may not hold up a pull whose downloads are done: a short grace, then
    // the pull goes on without remembering.
    let (result, late_index) =
        match futures_util::future::select(std::pin::pin!(downloads), std::pin::pin!(late_lookup))
            .await
        {
            futures_util::future::Either::Left((result, late)) => (
                result,
                tokio::time::timeout(LATE_LOOKUP_GRACE, late)
                    .await
                    .ok()
                    .flatten(),
            ),
            futures_util::future::Either::Right((index, downloads)) => (downloads.await, index),
        };
    let results = match result {
        Ok(r) => r,
        // Unpacking tasks of other layers may still hold the staging: abort through the
        // shared handle rather than waiting for them.
        Err(e) => return Err(give_up(staging, e).await),
    };
    let index = delta.as_ref().map(|d| d.index()).or(late_index.as_ref());
    if let Some(index) = index {
        remember_chunks(index, &plan, &staging, opts.cache.as_ref()).await;
    }
    // A whole version (no filter) replaces what an earlier pull placed: its files the new
    // version lacks go.
    let version = opts.filter.is_empty().then(|| {
        plan.layers
            .iter()
            .filter(|l| l.format == LayerFormat::Raw)
            .map(|l| l.path.clone())
            .collect::<BTreeSet<PathBuf>>()
    });
    let linked_by = commit(staging, &results, opts.overwrite, version).await?;
    restamp_links(source, opts, &results).await;
    let count = |a: Action| results.iter().filter(|r| r.action == a).count();
    let reused = reused.into_inner();
    Ok(PullReport {
        digest: resolved.digest,
        files: plan.layers.len(),
        bytes: plan.total_size(),
        // What came over the network this time: an earlier run's bytes are counted apart.
        downloaded_bytes: results
            .iter()
            .filter(|r| r.action == Action::Downloaded)
            .map(|r| r.size)
            .sum::<u64>()
            .saturating_sub(fetcher.resumed_bytes())
            .saturating_sub(reused),
        reused_bytes: reused,
        skipped: results.iter().map(|r| r.skipped_files).sum(),
        cache_hits: count(Action::Linked),
        cache_misses: count(Action::Downloaded),
        resumed_bytes: fetcher.resumed_bytes(),
        linked_by,
        placed: plan
            .layers
            .iter()
            .map(|l| PlacedFile {
                path: l.path.clone(),
                size: l.descriptor.size,
                digest: (l.format == LayerFormat::Raw).then(|| l.descriptor.digest.clone()),
            })
            .collect(),
    })
}

/// The files to pull: every layer (by name, or by digest with `raw`), narrowed by the
/// filter, with no name that could leave the folder or reach hoist's own state.
fn plan_for(
    manifest: &crate::oci::Manifest,
    opts: &PullOptions,
) -> Result<LayerPlan, TransferError> {
    let mut plan = if opts.raw {
        LayerPlan::by_digest(manifest)
    } else {
        LayerPlan::from_manifest(manifest, opts.allow_path_traversal)?
    };
    if !opts.filter.is_empty() {
        let all: Vec<String> = plan
            .layers
            .iter()
            .map(|l| l.path.display().to_string())
            .collect();
        plan.layers.retain(|l| opts.filter.keeps(l));
        if plan.layers.is_empty() {
            return Err(TransferError::NothingSelected(all.join(", ")));
        }
    }
    if opts.allow_path_traversal {
        for layer in &plan.layers {
            if crate::reserved::refusal(&layer.path).is_some()
                || layer.path.is_absolute()
                || layer
                    .path
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(crate::oci::OciError::UnsafePath {
                    digest: layer.descriptor.digest.to_string(),
                    path: layer.path.display().to_string(),
                    why: "hoist never writes outside the output folder, even with --allow-path-traversal",
                }
                .into());
            }
        }
    }
    Ok(plan)
}

/// Where versioned pulls run, `current` is theirs: a plain pull may not place a file there
/// (the names reserved in every folder were refused with the plan).
fn refuse_reserved_in(out: &Path, plan: &LayerPlan) -> Result<(), TransferError> {
    for layer in &plan.layers {
        if let Some(why) = crate::reserved::refusal_in(out, &layer.path) {
            return Err(crate::oci::OciError::UnsafePath {
                digest: layer.descriptor.digest.to_string(),
                path: layer.path.display().to_string(),
                why,
            }
            .into());
        }
    }
    Ok(())
}

/// A file of the plan that would replace one of the user's (no pull placed it, and it holds
/// other bytes) is refused now, before any download, rather than at the commit. (A tar
/// layer's names are known only once it is downloaded; the commit checks those.)
async fn refuse_foreign_files(
    staging: &Arc<Staging>,
    plan: &LayerPlan,
) -> Result<(), TransferError> {
    let raw: Vec<(PathBuf, Digest, u64)> = plan
        .layers
        .iter()
        .filter(|l| l.format == LayerFormat::Raw)
        .map(|l| {
            (
                l.path.clone(),
                l.descriptor.digest.clone(),
                l.descriptor.size,
            )
        })
        .collect();
    let checking = staging.clone();
    let foreign: Vec<String> = tokio::task::spawn_blocking(move || {
        raw.iter()
            .filter(|(rel, digest, size)| checking.would_replace_foreign(rel, digest, *size))
            .map(|(rel, _, _)| rel.display().to_string())
            .collect()
    })
    .await
    .expect("check task does not panic");
    match foreign.is_empty() {
        true => Ok(()),
        false => Err(crate::materialize::MaterializeError::WouldOverwrite {
            out: staging.out().to_path_buf(),
            files: foreign,
        }
        .into()),
    }
}

/// Remember how this version's blobs are cut (from its index) beside them: in the folder's
/// record for the files placed, and in the node cache for the blobs it holds. The next
/// version's pull then finds its chunks without reading any file.
async fn remember_chunks(
    index: &super::delta::ChunkIndex,
    plan: &LayerPlan,
    staging: &Arc<Staging>,
    cache: Option<&Store>,
) {
    let raw = plan.layers.iter().filter(|l| l.format == LayerFormat::Raw);
    let known = super::delta::known_chunks(index, raw.map(|l| &l.descriptor));
    if let Some(store) = cache.cloned() {
        let known = known.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (digest, chunks) in &known {
                if store.blob_size(digest).is_some() {
                    store.remember_chunks(digest, chunks);
                }
            }
        })
        .await;
    }
    staging.remember_chunks(known);
}

/// The bytes of the plan's blobs that are neither in the folder (as its record vouches, no
/// hashing) nor in the node cache: what the pull will fetch, at most.
async fn bytes_to_fetch(out: &Path, plan: &LayerPlan, cache: Option<&Store>) -> u64 {
    let wanted: Vec<(PathBuf, Descriptor, bool)> = plan
        .layers
        .iter()
        .map(|l| {
            (
                l.path.clone(),
                l.descriptor.clone(),
                l.format == LayerFormat::Raw,
            )
        })
        .collect();
    let (out, cache) = (out.to_path_buf(), cache.cloned());
    tokio::task::spawn_blocking(move || {
        let record = crate::materialize::Record::load(&out);
        let mut seen = BTreeSet::new();
        wanted
            .iter()
            .filter(|(path, desc, raw)| !(*raw && record.vouches(&out, path, &desc.digest)))
            .filter(|(_, desc, _)| seen.insert(desc.digest.clone()))
            .filter(|(_, desc, _)| {
                cache
                    .as_ref()
                    .is_none_or(|c| c.blob_size(&desc.digest).is_none())
            })
            .map(|(_, desc, _)| desc.size)
            .sum()
    })
    .await
    .unwrap_or(u64::MAX)
}

/// One job per distinct blob, with every file that comes from it.
fn blob_jobs(plan: &LayerPlan) -> Vec<BlobJob<'_>> {
    let mut jobs: Vec<BlobJob> = Vec::new();
    let mut by_digest: BTreeMap<&Digest, usize> = BTreeMap::new();
    for (index, layer) in plan.layers.iter().enumerate() {
        let slot = *by_digest
            .entry(&layer.descriptor.digest)
            .or_insert_with(|| {
                jobs.push(BlobJob {
                    descriptor: &layer.descriptor,
                    layers: Vec::new(),
                });
                jobs.len() - 1
            });
        jobs[slot].layers.push((index, layer));
    }
    jobs
}

/// Place everything staged, in the manifest's layer order, as one checked plan.
async fn commit(
    staging: Arc<Staging>,
    results: &[JobResult],
    overwrite: bool,
    version: Option<BTreeSet<PathBuf>>,
) -> Result<crate::materialize::LinkCounts, TransferError> {
    // Every blob task finished (each awaited its unpacking), so this is the last handle.
    let staging = Arc::into_inner(staging).expect("all blob tasks finished");
    let mut items: Vec<(usize, Vec<Staged>)> = results
        .iter()
        .flat_map(|r| r.items.iter().cloned())
        .collect();
    items.sort_by_key(|(index, _)| *index);
    let items: Vec<Staged> = items.into_iter().flat_map(|(_, s)| s).collect();
    // The version's files: its raw layers (placed now or already in place) and what its tar
    // layers unpacked.
    let version = version.map(|mut files| {
        files.extend(items.iter().filter_map(|i| match i {
            Staged::File { relative, .. } => Some(relative.clone()),
            _ => None,
        }));
        files
    });
    let staging = Arc::new(staging);
    let committing = staging.clone();
    let committed =
        tokio::task::spawn_blocking(move || committing.commit(&items, overwrite, version.as_ref()))
            .await
            .expect("commit task does not panic");
    match committed {
        Ok(counts) => Ok(counts),
        Err(e) => Err(give_up(staging, e.into()).await),
    }
}

/// A hard link moves the store blob's change time; its bytes were checked just before, so
/// its stamp is renewed.
async fn restamp_links(source: &Target, opts: &PullOptions, results: &[JobResult]) {
    if opts.link_mode != LinkMode::Hardlink {
        return;
    }
    let store = match (source, &opts.cache) {
        (Target::Local { store, .. }, _) | (_, Some(store)) => store.clone(),
        _ => return,
    };
    let linked: Vec<Digest> = results
        .iter()
        .filter(|r| r.action != Action::Skipped)
        .map(|r| r.digest.clone())
        .collect();
    tokio::task::spawn_blocking(move || linked.iter().for_each(|d| store.restamp_after_link(d)))
        .await
        .expect("restamp task does not panic");
}

/// End a failed pull: bad content wipes the state folder (and `-o` if this pull made it);
/// other failures keep what was downloaded, trimmed to the finished ranges, and say where.
async fn give_up(staging: Arc<Staging>, e: TransferError) -> TransferError {
    let wipe = !e.is_resumable();
    tokio::task::spawn_blocking(move || {
        if !wipe {
            super::fetch::trim_parts(staging.dir());
        }
        staging.abort(wipe);
        match staging.kept() {
            Some((kept, kept_bytes)) if !wipe => TransferError::Interrupted {
                source: Box::new(e),
                kept,
                kept_bytes,
            },
            _ => e,
        }
    })
    .await
    .expect("abort task does not panic")
}

struct JobResult {
    digest: Digest,
    action: Action,
    size: u64,
    skipped_files: usize,
    items: Vec<(usize, Vec<Staged>)>,
}

struct Ctx<'a> {
    /// The artifact is a container image (whiteouts in its layers are honoured).
    image: bool,
    source: &'a Target,
    staging: &'a Arc<Staging>,
    fetcher: &'a Fetcher,
    opts: &'a PullOptions,
    observer: &'a Observer,
    /// Chunks an earlier pull left in the folder, when the artifact has a chunk index.
    delta: Option<&'a super::delta::Delta>,
    /// Bytes taken from those chunks instead of the network.
    reused: &'a std::sync::atomic::AtomicU64,
}

impl Ctx<'_> {
    /// One blob: skip the files already in place, get the verified bytes (store, cache or
    /// network), and stage every file that comes from it.
    async fn obtain(&self, job: &BlobJob<'_>) -> Result<JobResult, TransferError> {
        let desc = job.descriptor;
        let name = job.layers[0].1.path.display().to_string();
        let (needed, skipped_files) = self.not_in_place(job).await;
        if needed.is_empty() {
            return Ok(JobResult {
                digest: desc.digest.clone(),
                action: Action::Skipped,
                size: desc.size,
                skipped_files,
                items: Vec::new(),
            });
        }
        let (blob, owned, action) = self.verified_blob(desc, &name).await?;
        let items = self.stage(&needed, &blob, owned, action).await?;
        Ok(JobResult {
            digest: desc.digest.clone(),
            action,
            size: desc.size,
            skipped_files,
            items,
        })
    }

    /// The files of a blob that are not already in the folder with the right bytes, and how
    /// many are.
    async fn not_in_place<'j>(&self, job: &BlobJob<'j>) -> (Vec<(usize, &'j FileLayer)>, usize) {
        let desc = job.descriptor;
        let mut needed = Vec::new();
        let mut skipped = 0;
        for &(index, layer) in &job.layers {
            if layer.format == LayerFormat::Raw
                && already_in_place(self.staging, &layer.path, &desc.digest, desc.size).await
            {
                skipped += 1;
                self.done(layer, Action::Skipped);
            } else {
                needed.push((index, layer));
            }
        }
        (needed, skipped)
    }

    /// Where the verified bytes are, whether this pull owns that file, and how it got them.
    async fn verified_blob(
        &self,
        desc: &Descriptor,
        name: &str,
    ) -> Result<(PathBuf, bool, Action), TransferError> {
        match (self.source, &self.opts.cache) {
            (Target::Local { store, repository }, _) => match checked(store, desc).await? {
                BlobCheck::Good(path) => Ok((path, false, Action::Linked)),
                BlobCheck::Missing => Err(crate::store::StoreError::NotFound {
                    reference: format!("{repository} blob {} ({name})", desc.digest),
                    root: store.root().to_path_buf(),
                }
                .into()),
            },
            (Target::Remote { .. }, Some(cache)) => {
                let sources = self.source.sources(desc.digest.as_str());
                let (path, fresh) = into_store(cache, desc, |part| async move {
                    self.download(&sources, desc, &part, name).await
                })
                .await?;
                let action = if fresh {
                    Action::Downloaded
                } else {
                    Action::Linked
                };
                Ok((path, false, action))
            }
            (Target::Remote { .. }, None) => {
                let verified = self.staging.blob_path(&desc.digest);
                // A blob verified by an interrupted earlier run is a file on disk like any
                // other: checked again before it is used.
                if !staged_blob_is_good(&verified, &desc.digest).await {
                    let part = self.staging.part_path(&desc.digest);
                    let sources = self.source.sources(desc.digest.as_str());
                    self.download(&sources, desc, &part, name).await?;
                    std::fs::rename(&part, &verified).map_err(TransferError::io(&verified))?;
                }
                Ok((verified, true, Action::Downloaded))
            }
        }
    }

    /// Download `desc` into `part`, verified: from local chunks and fetched ranges when a
    /// chunk index covers it, else (or if that fails) by the normal engine.
    async fn download(
        &self,
        sources: &[Source],
        desc: &Descriptor,
        part: &Path,
        name: &str,
    ) -> Result<(), TransferError> {
        if !self.assembled(desc, part, name).await {
            self.fetcher.download(sources, desc, part, name).await?;
        }
        Ok(())
    }

    /// Build the blob from local chunks and fetched ranges when a chunk index covers it;
    /// whether `part` now holds it, verified. Any failure leaves the normal download to do.
    async fn assembled(&self, desc: &Descriptor, part: &Path, name: &str) -> bool {
        let Some(delta) = self.delta.filter(|d| d.covers(desc)) else {
            return false;
        };
        match delta
            .assemble(self.source, desc, part, name, self.observer)
            .await
        {
            Ok(done) => {
                self.reused
                    .fetch_add(done.reused, std::sync::atomic::Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::warn!("{e}; downloading {name} whole");
                false
            }
        }
    }

    /// Stage each needed file of a verified blob: a raw layer is the blob itself (moved or
    /// linked), a tar layer is unpacked.
    async fn stage(
        &self,
        needed: &[(usize, &FileLayer)],
        blob: &Path,
        owned: bool,
        action: Action,
    ) -> Result<Vec<(usize, Vec<Staged>)>, TransferError> {
        let mut items = Vec::new();
        let last_raw = needed
            .iter()
            .rev()
            .find(|(_, l)| l.format == LayerFormat::Raw)
            .map(|(i, _)| *i);
        for &(index, layer) in needed {
            let staged = match layer.format {
                LayerFormat::Raw => {
                    // The pull's own download moves into the last file that uses it.
                    let placement = if owned && Some(index) == last_raw {
                        Placement::Move
                    } else if owned {
                        Placement::Link(LinkMode::Auto)
                    } else {
                        Placement::Link(self.opts.link_mode)
                    };
                    vec![Staged::File {
                        from: blob.to_path_buf(),
                        relative: layer.path.clone(),
                        mode: file_mode(layer),
                        placement,
                        digest: Some(layer.descriptor.digest.clone()),
                        link_target: None,
                    }]
                }
                format => {
                    let (staging, blob, layer_name) = (
                        self.staging.clone(),
                        blob.to_path_buf(),
                        layer.path.display().to_string(),
                    );
                    let (image, limits) = (self.image, self.opts.unpack);
                    tokio::task::spawn_blocking(move || {
                        staging.stage_tar(index, &blob, format, &layer_name, image, limits)
                    })
                    .await
                    .expect("unpack task does not panic")?
                }
            };
            items.push((index, staged));
            self.done(layer, action);
        }
        if owned && last_raw.is_none() {
            let _ = std::fs::remove_file(blob); // only tar layers used it, and they are unpacked
        }
        Ok(items)
    }

    fn done(&self, layer: &FileLayer, action: Action) {
        (self.observer)(&Event::Done {
            name: layer.path.display().to_string(),
            digest: layer.descriptor.digest.clone(),
            size: layer.descriptor.size,
            action,
        });
    }
}

/// Make sure the store holds `desc`, downloading it if needed under the blob's lock (so
/// concurrent pulls on a node fetch it once). Returns the blob's path and whether this call
/// downloaded it.
pub(crate) async fn fetch_into_store(
    fetcher: &Fetcher,
    sources: &[Source],
    store: &Store,
    desc: &Descriptor,
    name: &str,
) -> Result<(PathBuf, bool), TransferError> {
    into_store(store, desc, |part| async move {
        fetcher.download(sources, desc, &part, name).await
    })
    .await
}

/// [`fetch_into_store`] with the download given: `download(part)` leaves the verified
/// bytes in `part`.
async fn into_store<F, Fut>(
    store: &Store,
    desc: &Descriptor,
    download: F,
) -> Result<(PathBuf, bool), TransferError>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<(), TransferError>>,
{
    if let Some(path) = good_or_refetch(store, desc).await? {
        return Ok((path, false));
    }
    let _lock = store.lock_blob(&desc.digest).await?;
    if let Some(path) = good_or_refetch(store, desc).await? {
        return Ok((path, false)); // another pull fetched it meanwhile
    }
    let part = store.part_path(&desc.digest);
    download(part.clone()).await?;
    let (store, digest) = (store.clone(), desc.digest.clone());
    // Off the async workers: the stamp waits for the file clock's next tick.
    let path = tokio::task::spawn_blocking(move || store.commit_verified(&part, &digest))
        .await
        .expect("commit task does not panic")?;
    Ok((path, true))
}

/// Check a store blob before its bytes are used (see [`Store::check_blob`]), off the async
/// workers since it may hash.
pub(crate) async fn checked(store: &Store, desc: &Descriptor) -> Result<BlobCheck, TransferError> {
    let (store, digest, size) = (store.clone(), desc.digest.clone(), desc.size);
    Ok(
        tokio::task::spawn_blocking(move || store.check_blob(&digest, size))
            .await
            .expect("check task does not panic")?,
    )
}

/// A good cached blob's path; `None` when it must be fetched (absent, or found corrupt and
/// removed: the remote is known, so it is fetched again).
async fn good_or_refetch(
    store: &Store,
    desc: &Descriptor,
) -> Result<Option<PathBuf>, TransferError> {
    match checked(store, desc).await {
        Ok(BlobCheck::Good(path)) => Ok(Some(path)),
        Ok(BlobCheck::Missing) => Ok(None),
        Err(TransferError::Store(e @ crate::store::StoreError::Corrupt { .. })) => {
            tracing::warn!("{e}; fetching it again");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The permission bits recorded by the packer, else 0644.
fn file_mode(layer: &FileLayer) -> u32 {
    layer
        .descriptor
        .annotation(media::ANNOTATION_FILE_METADATA)
        .and_then(|m| serde_json::from_str::<FileMetadata>(m).ok())
        .map_or(0o644, |m| m.mode)
}

/// Is the file already there, a regular file with these exact bytes?
async fn already_in_place(staging: &Arc<Staging>, rel: &Path, digest: &Digest, size: u64) -> bool {
    let (staging, rel, digest) = (staging.clone(), rel.to_path_buf(), digest.clone());
    tokio::task::spawn_blocking(move || staging.holds(&rel, &digest, size))
        .await
        .unwrap_or(false)
}

/// Does the staged blob exist and hash to `digest`? A bad one is removed.
async fn staged_blob_is_good(path: &Path, digest: &Digest) -> bool {
    let (path, digest) = (path.to_path_buf(), digest.clone());
    tokio::task::spawn_blocking(move || {
        let meta = std::fs::symlink_metadata(&path);
        if !meta.is_ok_and(|m| m.is_file()) {
            let _ = std::fs::remove_file(&path);
            return false;
        }
        let good = Digest::of_file(&path).is_ok_and(|d| d == digest);
        if !good {
            let _ = std::fs::remove_file(&path);
        }
        good
    })
    .await
    .unwrap_or(false)
}
