//! Obtaining each blob of the plan, once, from the first place that has it: the output
//! folder, the node cache, the delta step (local chunks plus ranges), or a download; then
//! staging its files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::plan::BlobJob;
use crate::digest::Digest;
use crate::materialize::{LinkMode, Placement, Staged, Staging};
use crate::oci::modelpack::FileMetadata;
use crate::oci::{media, Descriptor, FileLayer, LayerFormat};
use crate::store::BlobCheck;
use crate::transfer::fetch::{checked, into_store};
use crate::transfer::fetch::{Fetcher, Source};
use crate::transfer::{Action, Event, Observer, PullOptions, Target, TransferError};

pub(super) struct JobResult {
    pub(super) digest: Digest,
    pub(super) action: Action,
    pub(super) size: u64,
    pub(super) skipped_files: usize,
    pub(super) items: Vec<(usize, Vec<Staged>)>,
}

pub(super) struct Ctx<'a> {
    /// The artifact is a container image (whiteouts in its layers are honoured).
    pub(super) image: bool,
    pub(super) source: &'a Target,
    pub(super) staging: &'a Arc<Staging>,
    pub(super) fetcher: &'a Fetcher,
    pub(super) opts: &'a PullOptions,
    pub(super) observer: &'a Observer,
    /// Chunks an earlier pull left in the folder, when the artifact has a chunk index.
    pub(super) delta: Option<&'a super::super::delta::Delta>,
    /// Bytes taken from those chunks instead of the network.
    pub(super) reused: &'a std::sync::atomic::AtomicU64,
}

impl Ctx<'_> {
    /// One blob: skip the files already in place, get the verified bytes (store, cache or
    /// network), and stage every file that comes from it.
    pub(super) async fn obtain(&self, job: &BlobJob<'_>) -> Result<JobResult, TransferError> {
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
        if let Some(store) = self.source.local_store() {
            return match checked(store, desc).await? {
                BlobCheck::Good(path) => Ok((path, false, Action::Linked)),
                BlobCheck::Missing => Err(crate::store::StoreError::NotFound {
                    reference: format!(
                        "{} blob {} ({name})",
                        self.source.repository(),
                        desc.digest
                    ),
                    root: store.root().to_path_buf(),
                }
                .into()),
            };
        }
        match &self.opts.cache {
            Some(cache) => {
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
            None => {
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

/// The permission bits recorded by the packer, else 0644.
pub(super) fn file_mode(layer: &FileLayer) -> u32 {
    layer
        .descriptor
        .annotation(media::ANNOTATION_FILE_METADATA)
        .and_then(|m| serde_json::from_str::<FileMetadata>(m).ok())
        .map_or(0o644, |m| m.mode)
}

/// Is the file already there, a regular file with these exact bytes?
pub(super) async fn already_in_place(
    staging: &Arc<Staging>,
    rel: &Path,
    digest: &Digest,
    size: u64,
) -> bool {
    let (staging, rel, digest) = (staging.clone(), rel.to_path_buf(), digest.clone());
    tokio::task::spawn_blocking(move || staging.holds(&rel, &digest, size))
        .await
        .unwrap_or(false)
}

/// Does the staged blob exist and hash to `digest`? A bad one is removed.
pub(super) async fn staged_blob_is_good(path: &Path, digest: &Digest) -> bool {
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
