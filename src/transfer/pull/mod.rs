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
use crate::digest::Digest;
use crate::materialize::{LinkMode, Staging, UnpackLimits};
use crate::oci::modelpack::{kind_of_media_type, LayerKind};
use crate::oci::{FileLayer, LayerFormat};
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
    let signature = match &opts.verify {
        Some(verification) => super::signature::check(source, &resolved, verification).await?,
        None => None,
    };
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
        false => match super::chunk_index::lookup(source, manifest_digest).await {
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
            (true, None) => super::chunk_index::lookup(source, manifest_digest).await,
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
    // The futures are made first (they start only when polled): with a closure inside the
    // stream's type, rustc cannot prove the pull's future `Send` for every lifetime of the
    // closure's argument, and a pull could not be spawned as a task.
    let obtains: Vec<_> = jobs.iter().map(|job| ctx.obtain(job)).collect();
    let downloads = stream::iter(obtains)
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
    // A pull that is not verified leaves no earlier pull's signature behind once it changed
    // a file (a whole version replaces them all; a filtered one may change any of them): the
    // signature would claim to vouch for files it never saw.
    let changed_files = version.is_some() || results.iter().any(|r| r.action != Action::Skipped);
    let stale_signature = changed_files
        && signature.is_none()
        && !plan
            .layers
            .iter()
            .any(|l| l.path == Path::new(crate::sign::SIGNATURE_FILE));
    let linked_by = commit(staging, &results, opts.overwrite, version).await?;
    restamp_links(source, opts, &results).await;
    let path = out.join(crate::sign::SIGNATURE_FILE);
    if let Some(bundle) = &signature {
        // Last, after every file: the reference tool can check the folder against it.
        crate::fsutil::write_atomic(&path, bundle, crate::fsutil::Replace::DURABLE)
            .map_err(TransferError::io(&path))?;
    } else if stale_signature {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(TransferError::io(&path)(e))
            }
            _ => {}
        }
    }
    let count = |a: Action| results.iter().filter(|r| r.action == a).count();
    let reused = reused.into_inner();
    Ok(PullReport {
        platform: resolved.platform.clone(),
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
            // The signature is placed too: the ready marker lists it, so a check against
            // the marker expects it (and its bytes) rather than calling it a stray file.
            .chain(signature.as_ref().map(|bundle| PlacedFile {
                path: PathBuf::from(crate::sign::SIGNATURE_FILE),
                size: bundle.len() as u64,
                digest: Some(Digest::of_bytes(bundle)),
            }))
            .collect(),
    })
}
