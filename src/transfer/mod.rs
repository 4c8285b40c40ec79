//! Transfer: moving blobs and manifests between a model folder, the local store and
//! registries. The engines here schedule work and verify bytes; they print nothing and report
//! through [`Event`]s that the CLI renders as progress or JSON lines.

pub mod chunk_index;
mod convert;
mod copy;
mod delta;
pub mod fetch;
pub mod import;
pub mod inspect;
mod publish;
mod pull;
mod push;
mod referrers;
pub mod signature;
mod target;
pub mod tensors;
pub mod verify;
mod versions;
mod volume;
#[cfg(feature = "mount")]
pub(crate) use volume::check_diff_ids;

#[cfg(all(test, feature = "serve"))]
mod tests;

pub use convert::{convert, index_artifact, ConvertTo};
pub use copy::{copy, copy_referrers, CopyReport};
pub use import::{import, ImportOptions, ImportReport};
pub use publish::{folder_name, publish, PublishOptions, Published};
pub use pull::{pull, pull_referrers, LayerFilter, PlacedFile, PullOptions, PullReport};
pub use push::{push, push_folder, PushOptions, PushReport};
pub use referrers::{attach, discover, Referrer};
pub use target::{BlobReader, Resolved, Target};
pub use verify::{verify_folder, verify_marker, ReadyMarker, Verified, VerifyError};
pub use versions::{pull_versioned, Versioned};
pub use volume::{
    find_volume_form, push_image_volume, push_volume, push_volume_beside, volume_tag, VolumeForm,
};

use std::path::PathBuf;
use std::sync::Arc;

use crate::digest::Digest;
use crate::materialize::MaterializeError;
use crate::oci::OciError;
use crate::registry::RegistryError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Materialize(#[from] MaterializeError),
    #[error(transparent)]
    Pack(#[from] crate::pack::PackError),
    #[error("verification failed for {what}: expected {expected}, got {actual} ({size} bytes); the registry's copy is corrupt or was tampered with, nothing was written")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("download of {what} failed after {attempts} attempts: {last}; check the network and run the pull again (it resumes)")]
    GaveUp {
        what: String,
        attempts: u32,
        last: String,
    },
    #[error("no file matches the --include/--exclude/--kind selection; the artifact has: {0}")]
    NothingSelected(String),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Signature(#[from] crate::sign::SignError),
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    #[error(transparent)]
    Import(#[from] import::ImportError),
    /// A safetensors file whose header hoist will not map (exit 8).
    #[error("{0}")]
    Tensors(String),
    #[error("the image's layers are not those its config names ({0}); containerd would refuse to mount it, nothing was written")]
    DiffIds(String),
    #[error("{0} resolves to an index with no manifest for this platform")]
    NoPlatform(String),
    /// An index that lists the platform asked for more than once: which one a runtime
    /// would take is not ours to guess (exit 8).
    #[error("{0}: nothing was written")]
    AmbiguousPlatform(String),
    /// Options that cannot go together, refused before anything is sent (exit 2).
    #[error("{0}")]
    Refused(String),
    /// A pull that failed but kept its verified and partial downloads for the next run.
    #[error("{source}; {kept_bytes} bytes kept in {} for the next pull to resume (delete it to start over)", kept.display())]
    Interrupted {
        source: Box<TransferError>,
        kept: PathBuf,
        kept_bytes: u64,
    },
}

impl TransferError {
    /// Is a pull that failed like this worth resuming? Network and disk trouble are; bad
    /// bytes or hostile content are not, so their state is wiped.
    pub fn is_resumable(&self) -> bool {
        match self {
            TransferError::Registry(e) => e.is_transient(),
            TransferError::GaveUp { .. }
            | TransferError::Io { .. }
            | TransferError::Interrupted { .. } => true,
            TransferError::Materialize(MaterializeError::WouldOverwrite { .. }) => true,
            TransferError::Store(StoreError::Io { .. }) => true,
            TransferError::Materialize(MaterializeError::Io { .. }) => true,
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TransferError {
        let path = path.into();
        move |source| TransferError::Io { path, source }
    }
}

/// What happened to one blob or file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Uploaded,
    Downloaded,
    /// The destination already had it.
    Skipped,
    /// Materialised from the local store without a download.
    Linked,
    /// Mounted from another repository of the same registry: no byte sent.
    Mounted,
}

/// Progress reports from the engines.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start {
        reference: String,
        files: usize,
        bytes: u64,
    },
    /// Bytes of a file arrived (sent often; renderers aggregate).
    Progress { name: String, bytes: u64 },
    Done {
        name: String,
        digest: Digest,
        size: u64,
        action: Action,
    },
}

/// Receives events; cheap to clone into tasks.
pub type Observer = Arc<dyn Fn(&Event) + Send + Sync>;

pub fn silent() -> Observer {
    Arc::new(|_| {})
}
