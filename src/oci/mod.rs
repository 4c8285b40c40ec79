//! OCI and ModelPack data types: media types, descriptors, manifests, indexes, and the
//! mapping from a manifest's layers to the files they hold.
//!
//! The types are our own rather than `oci-spec`'s because that crate keeps annotations in a
//! `HashMap`, whose random iteration order would make the manifest digest change from run to
//! run; reproducible digests are a product requirement, so every map here is a `BTreeMap`.

pub mod files;
mod format;
pub mod manifest;
pub mod media;
pub mod modelpack;

pub use files::{FileLayer, LayerPlan};
pub use format::LayerFormat;
pub use manifest::{Descriptor, Index, Manifest, ManifestKind, Platform};

/// Manifests larger than this are refused, as distribution does, so a hostile registry cannot
/// make us buffer an unbounded document.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("manifest is not valid JSON for {media_type}: {source}")]
    InvalidManifest {
        media_type: String,
        source: serde_json::Error,
    },
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("layer {digest} has an unsafe path {path:?}: {why} (pass --allow-path-traversal to accept it)")]
    UnsafePath {
        digest: String,
        path: String,
        why: &'static str,
    },
    #[error("no files to pull: none of the layers has a file name (media types found: {0}); pass --raw to save the blobs by digest")]
    NoFiles(String),
    #[error("two layers write the same path {0:?}")]
    DuplicatePath(String),
    #[error("the referrer graph has more than {0} manifests; refusing to walk further")]
    TooManyReferrers(usize),
}
