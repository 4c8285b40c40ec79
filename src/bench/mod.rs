//! `hoist bench`: KAITO's published comparison (images against artifacts), on this machine. The same model is shipped in five
//! shapes (a single-layer tar+gzip image; multi-layer tar+gzip, tar and tar+zstd images; an
//! artifact with raw layers, and with tar+zstd layers), each built and pushed, then pulled to a
//! ready folder the way its consumer does it, cold and warm, optionally again through the WAN
//! emulator; peers (oras-py, skopeo, the ORAS CLI) pull the artifact where installed.
//!
//! | file        | owns                                                    |
//! |-------------|---------------------------------------------------------|
//! | `synth.rs`  | the synthetic checkpoint                                |
//! | `images.rs` | the model packed as a container image                   |
//! | `runner.rs` | building, pushing, timing pulls, checking the folders   |
//! | `report.rs` | the Markdown table, the JSON file and the chart         |

mod images;
pub mod report;
mod runner;
pub mod synth;

use std::path::PathBuf;

pub use runner::run;

use crate::oci::LayerFormat;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pack(#[from] crate::pack::PackError),
    #[error(transparent)]
    Transfer(#[from] crate::transfer::TransferError),
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("the folder pulled for {config} differs from the model: {detail}")]
    Mismatch { config: String, detail: String },
}

/// A bench failure as the CLI reports it ("bench failed: ...").
#[derive(Debug, thiserror::Error)]
#[error("bench failed: {0}")]
struct Failed(BenchError);

impl crate::error::Classified for Failed {
    fn exit_code(&self) -> crate::ExitCode {
        use crate::ExitCode;
        match &self.0 {
            BenchError::Io { .. } => ExitCode::Disk,
            BenchError::Pack(e) => crate::error::pack_code(e),
            BenchError::Transfer(e) => crate::error::transfer_code(e),
            BenchError::Command { .. } => ExitCode::Failure,
            BenchError::Mismatch { .. } => ExitCode::Verification,
        }
    }
}

impl From<BenchError> for crate::Error {
    fn from(e: BenchError) -> crate::Error {
        crate::Error::Feature(Box::new(Failed(e)))
    }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// One way to ship the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A container image; `per_weight` gives each weight file its own layer.
    Image {
        per_weight: bool,
        format: LayerFormat,
    },
    /// A ModelPack artifact, one layer per file.
    Artifact { format: LayerFormat },
}

impl Shape {
    /// The published comparison's five configurations (the artifact twice: raw and tar+zstd layers).
    pub fn all() -> Vec<Shape> {
        vec![
            Shape::Image {
                per_weight: false,
                format: LayerFormat::TarGzip,
            },
            Shape::Image {
                per_weight: true,
                format: LayerFormat::TarGzip,
            },
            Shape::Image {
                per_weight: true,
                format: LayerFormat::Tar,
            },
            Shape::Image {
                per_weight: true,
                format: LayerFormat::TarZstd,
            },
            Shape::Artifact {
                format: LayerFormat::Raw,
            },
            Shape::Artifact {
                format: LayerFormat::TarZstd,
            },
        ]
    }

    pub fn label(&self) -> String {
        match self {
            Shape::Image {
                per_weight: false,
                format,
            } => format!("image, single layer {}", format.suffix()),
            Shape::Image { format, .. } => format!("image, multi-layer {}", format.suffix()),
            Shape::Artifact { format } => format!("artifact, {} layers", format.suffix()),
        }
    }

    /// A short name for tags and chart labels.
    pub fn slug(&self) -> String {
        match self {
            Shape::Image {
                per_weight: false,
                format,
            } => format!("img-1-{}", format.suffix().replace('+', "-")),
            Shape::Image { format, .. } => format!("img-n-{}", format.suffix().replace('+', "-")),
            Shape::Artifact { format } => format!("art-{}", format.suffix().replace('+', "-")),
        }
    }
}

/// What to benchmark and where.
#[derive(Clone)]
pub struct BenchOptions {
    /// A real model folder; `None` generates a synthetic one of `synthetic_bytes`.
    pub model: Option<PathBuf>,
    pub synthetic_bytes: u64,
    /// A registry client and repository prefix; `None` starts an embedded `hoist serve`.
    pub registry: Option<(crate::registry::RegistryClient, String)>,
    /// Per-connection cap (bytes/s) and latency of a second, emulated-WAN round.
    pub link: Option<(u64, std::time::Duration)>,
    pub runs: usize,
    pub out: PathBuf,
    /// This program, to run `hoist pull` as a consumer would.
    pub hoist: PathBuf,
    /// Where the model, pulls and scratch files go.
    pub work: PathBuf,
    pub peers: bool,
}
