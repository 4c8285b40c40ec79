//! The pull engine: a reference becomes verified files in a folder.
//!
//! Each distinct blob is obtained once, from the first place that has it: the output folder
//! itself (a file already there with the right digest), the node cache (the local store,
//! with `--cache`), a download resumed from the state folder, or a fresh ranged download.
//! Nothing appears in the output folder until every blob is verified (see `materialize`).
//!
//! This file runs the steps in order; each lives in its own file: `plan` (the files, and
//! what is refused before any download), `obtain` (one blob from the first place that has
//! it; the delta step is `transfer::delta`, called here, never calling back), `commit`
//! (placement, chunk lists and stamps), `referrers` (`--include-referrers`).

mod commit;
mod obtain;
mod plan;
mod referrers;

pub use referrers::pull_referrers;

use commit::{commit, give_up, remember_chunks, restamp_links};
use obtain::{Ctx, JobResult};
use plan::{blob_jobs, bytes_to_fetch, plan_for, refuse_foreign_files};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{stream, StreamExt, TryStreamExt};

use super::fetch::{FetchOptions, Fetcher};
use super::{Action, Event, Observer, Target, TransferError};
use crate::chunks::ChunkIndex;
use crate::digest::Digest;
use crate::materialize::{LinkMode, Staging, UnpackLimits};
use crate::oci::modelpack::{kind_of_media_type, LayerKind};
use crate::oci::{FileLayer, LayerFormat, LayerPlan};
use crate::store::Store;

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
    /// Require a signature (by these keys, or as the policy says for the repository)
    /// covering the manifest's files, checked before any file is placed; the bundle is then
    /// written as `OUT/model.sig`.
    pub verify: Option<crate::sign::Verification>,
    /// From an index, this platform's manifest (this host's when `None`).
    pub platform: Option<crate::oci::Platform>,
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
            verify: None,
            platform: None,
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
    /// The set matching any of `patterns` (`*` crosses `/`, as `--include` promises);
    /// `None` for no pattern.
    pub fn globs(patterns: &[String]) -> Result<Option<globset::GlobSet>, globset::Error> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let mut set = globset::GlobSetBuilder::new();
        for p in patterns {
            set.add(
                globset::GlobBuilder::new(p)
                    .literal_separator(false)
                    .build()?,
            );
        }
        set.build().map(Some)
    }

    pub fn is_empty(&self) -> bool {
        self.include.is_none() && self.exclude.is_none() && self.kinds.is_none()
    }

    /// Whether `path` passes `--include` and `--exclude` (kinds aside).
    pub fn keeps_path(&self, path: impl AsRef<std::path::Path>) -> bool {
        let path = path.as_ref();
        self.include.as_ref().is_none_or(|g| g.is_match(path))
            && !self.exclude.as_ref().is_some_and(|g| g.is_match(path))
    }

    pub fn keeps(&self, layer: &FileLayer) -> bool {
        self.keeps_path(&layer.path)
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
    /// The platform whose manifest an index led to (`None`: the reference named a manifest).
    pub platform: Option<crate::oci::Platform>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PlacedFile {
    pub path: PathBuf,
    pub size: u64,
    /// The file's own digest (raw layers); `None` for files unpacked from tar layers.
    pub digest: Option<Digest>,
}

/// Pull what `reference` names from `source` into `out`: resolve, plan, check what must be
/// checked before a byte is fetched, obtain every blob (from the folder, the cache, earlier
/// versions or the network), then commit them all at once.
pub async fn pull(
    source: &Target,
    reference: &str,
    out: &Path,
    opts: &PullOptions,
    observer: Observer,
) -> Result<PullReport, TransferError> {
    let resolved = source.resolve_on(reference, opts.platform.as_ref()).await?;
    if let Some(platform) = &resolved.platform {
        tracing::info!("{reference}: the index's manifest for {platform}");
    }
    let plan = plan_for(&resolved.manifest, out, opts)?;
    let (signature, image) = check_before_download(source, &resolved, opts).await?;
    observer(&Event::Start {
        reference: format!("{}:{reference}", source.describe()),
        files: plan.layers.len(),
        bytes: plan.total_size(),
    });
    let staging = open_staging(out, &plan, opts).await?;
    let fetcher = Fetcher::new(opts.fetch.clone(), observer.clone());
    let reuse = Reuse::find(source, out, &plan, opts, &resolved.manifest_digest).await;
    let reused = std::sync::atomic::AtomicU64::new(0);
    let ctx = Ctx {
        image,
        source,
        staging: &staging,
        fetcher: &fetcher,
        opts,
        observer: &observer,
        delta: reuse.delta.as_ref(),
        reused: &reused,
    };
    let late_lookup = reuse.late_lookup(source, &resolved.manifest_digest);
    let (results, late_index) = match obtain_all(&ctx, &plan, opts, late_lookup).await {
        Ok(done) => done,
        // Unpacking tasks of other layers may still hold the staging: abort through the
        // shared handle rather than waiting for them.
        Err(e) => return Err(give_up(staging, e).await),
    };
    let index = reuse
        .delta
        .as_ref()
        .map(|d| d.index())
        .or(late_index.as_ref());
    if let Some(index) = index {
        remember_chunks(index, &plan, &staging, opts.cache.as_ref()).await;
    }
    let version = whole_version(&plan, opts);
    let stale_signature = leaves_a_stale_signature(&plan, &results, &signature, &version);
    let linked_by = commit(staging, &results, opts.overwrite, version).await?;
    restamp_links(source, opts, &results).await;
    settle_signature(out, signature.as_deref(), stale_signature)?;
    let outcome = Outcome {
        results: &results,
        fetcher: &fetcher,
        reused: reused.into_inner(),
        linked_by,
        signature: signature.as_deref(),
    };
    Ok(outcome.report(resolved, &plan))
}

/// What is checked before any blob is fetched: the signature a verification requires (the
/// bundle, to be placed last), and an image's layers against its config's `diff_ids`.
/// Whether the artifact is a container image comes back too.
async fn check_before_download(
    source: &Target,
    resolved: &super::target::Resolved,
    opts: &PullOptions,
) -> Result<(Option<Vec<u8>>, bool), TransferError> {
    let signature = match &opts.verify {
        Some(verification) => super::signature::check(source, resolved, verification).await?,
        None => None,
    };
    let image = crate::oci::files::is_image_config(&resolved.manifest.config.media_type);
    if image {
        super::volume::check_diff_ids(source, &resolved.manifest).await?;
    }
    Ok((signature, image))
}

/// The output folder's staging area, after refusing (without `--overwrite`) to replace
/// files no earlier pull placed.
async fn open_staging(
    out: &Path,
    plan: &LayerPlan,
    opts: &PullOptions,
) -> Result<Arc<Staging>, TransferError> {
    let out_owned = out.to_path_buf();
    let staging = tokio::task::spawn_blocking(move || Staging::open(&out_owned))
        .await
        .expect("staging task does not panic")?;
    let staging = Arc::new(staging);
    if !opts.overwrite {
        if let Err(e) = refuse_foreign_files(&staging, plan).await {
            return Err(give_up(staging, e).await);
        }
    }
    Ok(staging)
}

/// What earlier versions can give this pull: the delta (chunk index and the bytes this
/// machine has), and whether the index is to be looked up only to be remembered.
struct Reuse {
    delta: Option<super::delta::Delta>,
    remember: bool,
}

impl Reuse {
    async fn find(
        source: &Target,
        out: &Path,
        plan: &LayerPlan,
        opts: &PullOptions,
        manifest: &Digest,
    ) -> Reuse {
        // Enough to download that reuse could pay for the index lookup: look for the index,
        // and for the chunks this machine has.
        let worth_it = bytes_to_fetch(out, plan, opts.cache.as_ref()).await >= MIN_DELTA_BYTES;
        let earlier = match source.is_remote() && worth_it {
            true => earlier_bytes(out, opts).await,
            false => super::delta::Earlier::none(),
        };
        // With earlier bytes the index is needed before the first blob; without, it is
        // only remembered for the next version, and looked up while the download runs.
        let delta = match earlier.is_empty() {
            false => match super::chunk_index::lookup(source, manifest).await {
                Some(index) => {
                    super::delta::Delta::new(index, earlier, opts.fetch.stall_timeout).await
                }
                None => None,
            },
            true => None,
        };
        // Not through mirrors: the cache tiers do not pass referrers on, and N nodes asking
        // the origin around them for an index they only remember would undo what the tiers
        // save. Nor for a filtered pull (small files, usually).
        let remember = source.is_direct() && opts.filter.is_empty() && worth_it;
        Reuse { delta, remember }
    }

    /// The index looked up beside the downloads, when it is only to be remembered.
    async fn late_lookup(&self, source: &Target, manifest: &Digest) -> Option<ChunkIndex> {
        match (self.remember, &self.delta) {
            (true, None) => super::chunk_index::lookup(source, manifest).await,
            _ => None,
        }
    }
}

/// The bytes earlier versions left on this machine: the output folder, `--reuse-from`
/// folders and the cache.
async fn earlier_bytes(out: &Path, opts: &PullOptions) -> super::delta::Earlier {
    let mut folders = vec![out.to_path_buf()];
    folders.extend(opts.reuse_from.iter().cloned());
    let cache = opts.cache.clone();
    tokio::task::spawn_blocking(move || super::delta::Earlier::find(&folders, cache.as_ref()))
        .await
        .expect("earlier-bytes task does not panic")
}

/// Every blob obtained, `concurrency` at once, and the chunk index if `late_lookup` found it.
/// The late lookup may not hold up a pull whose downloads are done: a short grace, then the
/// pull goes on without remembering.
async fn obtain_all(
    ctx: &Ctx<'_>,
    plan: &LayerPlan,
    opts: &PullOptions,
    late_lookup: impl std::future::Future<Output = Option<ChunkIndex>>,
) -> Result<(Vec<JobResult>, Option<ChunkIndex>), TransferError> {
    let jobs = blob_jobs(plan);
    // The futures are made first (they start only when polled): with a closure inside the
    // stream's type, rustc cannot prove the pull's future `Send` for every lifetime of the
    // closure's argument, and a pull could not be spawned as a task.
    let obtains: Vec<_> = jobs.iter().map(|job| ctx.obtain(job)).collect();
    let downloads = stream::iter(obtains)
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect::<Vec<JobResult>>();
    use futures_util::future::{select, Either};
    let (result, index) = match select(std::pin::pin!(downloads), std::pin::pin!(late_lookup)).await
    {
        Either::Left((result, late)) => {
            let index = tokio::time::timeout(LATE_LOOKUP_GRACE, late).await;
            (result, index.ok().flatten())
        }
        Either::Right((index, downloads)) => (downloads.await, index),
    };
    Ok((result?, index))
}

/// A whole version (no filter) replaces what an earlier pull placed: the raw files it
/// places, so that files the new version lacks go.
fn whole_version(plan: &LayerPlan, opts: &PullOptions) -> Option<BTreeSet<PathBuf>> {
    opts.filter.is_empty().then(|| {
        plan.layers
            .iter()
            .filter(|l| l.format == LayerFormat::Raw)
            .map(|l| l.path.clone())
            .collect()
    })
}

/// A pull that is not verified leaves no earlier pull's signature behind once it changed a
/// file (a whole version replaces them all; a filtered one may change any of them): the
/// signature would claim to vouch for files it never saw.
fn leaves_a_stale_signature(
    plan: &LayerPlan,
    results: &[JobResult],
    signature: &Option<Vec<u8>>,
    version: &Option<BTreeSet<PathBuf>>,
) -> bool {
    let changed_files = version.is_some() || results.iter().any(|r| r.action != Action::Skipped);
    changed_files
        && signature.is_none()
        && !plan
            .layers
            .iter()
            .any(|l| l.path == Path::new(crate::sign::SIGNATURE_FILE))
}

/// The verified signature written last, after every file (the reference tool can check the
/// folder against it), or a stale one removed.
fn settle_signature(
    out: &Path,
    signature: Option<&[u8]>,
    stale: bool,
) -> Result<(), TransferError> {
    let path = out.join(crate::sign::SIGNATURE_FILE);
    if let Some(bundle) = signature {
        crate::fsutil::write_atomic(&path, bundle, crate::fsutil::Replace::DURABLE)
            .map_err(TransferError::io(&path))?;
    } else if stale {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(TransferError::io(&path)(e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// What the pull did, to be told in its report.
struct Outcome<'a> {
    results: &'a [JobResult],
    fetcher: &'a Fetcher,
    reused: u64,
    linked_by: crate::materialize::LinkCounts,
    signature: Option<&'a [u8]>,
}

impl Outcome<'_> {
    fn report(self, resolved: super::target::Resolved, plan: &LayerPlan) -> PullReport {
        let results = self.results;
        let count = |a: Action| results.iter().filter(|r| r.action == a).count();
        let downloaded: u64 = results
            .iter()
            .filter(|r| r.action == Action::Downloaded)
            .map(|r| r.size)
            .sum();
        PullReport {
            platform: resolved.platform,
            digest: resolved.digest,
            files: plan.layers.len(),
            bytes: plan.total_size(),
            // What came over the network this time: an earlier run's bytes are counted apart.
            downloaded_bytes: downloaded
                .saturating_sub(self.fetcher.resumed_bytes())
                .saturating_sub(self.reused),
            reused_bytes: self.reused,
            skipped: results.iter().map(|r| r.skipped_files).sum(),
            cache_hits: count(Action::Linked),
            cache_misses: count(Action::Downloaded),
            resumed_bytes: self.fetcher.resumed_bytes(),
            linked_by: self.linked_by,
            placed: placed_files(plan, self.signature),
        }
    }
}

/// Every file placed. The signature is one too: the ready marker lists it, so a check
/// against the marker expects it (and its bytes) rather than calling it a stray file.
fn placed_files(plan: &LayerPlan, signature: Option<&[u8]>) -> Vec<PlacedFile> {
    plan.layers
        .iter()
        .map(|l| PlacedFile {
            path: l.path.clone(),
            size: l.descriptor.size,
            digest: (l.format == LayerFormat::Raw).then(|| l.descriptor.digest.clone()),
        })
        .chain(signature.map(|bundle| PlacedFile {
            path: PathBuf::from(crate::sign::SIGNATURE_FILE),
            size: bundle.len() as u64,
            digest: Some(Digest::of_bytes(bundle)),
        }))
        .collect()
}
