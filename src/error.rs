//! The crate's error, and the exit code each failure class maps to. The codes are part of the
//! CLI's contract (an init container acts on them) and are listed in the README.
//!
//! Where it sits: above the library's data path (it names the errors of reference, pack,
//! store, registry, transfer, materialize) and below the features built on that path
//! (`mount`, `bench`, `serve`), which use `Context` and so return this error themselves. It
//! therefore does not name their error types: that would make it import the modules above it
//! (a circle `error → bench → serve → error`). A feature's error implements [`Classified`],
//! choosing its exit code next to its variants, and converts into [`Error::Feature`]; the
//! codes of everything below are chosen here.

use crate::materialize::MaterializeError;
use crate::oci::OciError;
use crate::pack::PackError;
use crate::reference::ReferenceError;
use crate::registry::auth::config::ConfigError;
use crate::registry::mirrors::MirrorError;
use crate::registry::RegistryError;
use crate::store::StoreError;
use crate::transfer::{TransferError, VerifyError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A failure of a feature above the library (`mount`, `bench`): see [`Classified`].
    #[error("{0}")]
    Feature(Box<dyn Classified>),
    /// Credentials could not be read, or a credential helper failed.
    #[error(transparent)]
    Credentials(#[from] ConfigError),
    /// A mirror setting or mirrors file that cannot be used.
    #[error(transparent)]
    Mirrors(#[from] MirrorError),
    /// A file hoist writes for the user (a ready marker, a statistics file, a log) could not
    /// be written.
    #[error("cannot write {what} {}: {source}", path.display())]
    Write {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// `hoist serve` or the WAN emulator could not listen, or stopped on an error.
    #[error("{what}: {source}")]
    Server {
        what: String,
        source: std::io::Error,
    },
    /// A background process hoist started (`mount --daemon`) failed with this exit code.
    #[error("{what}")]
    Child { what: String, code: u8 },
    /// The user stopped the command (Ctrl-C or SIGTERM).
    #[error("interrupted; run the same command again to continue{}", resume_hint(.kept))]
    Interrupted { kept: Option<String> },
    /// Flags or arguments that cannot work together, or a value hoist cannot use.
    #[error("{0}")]
    Usage(String),
}

fn resume_hint(kept: &Option<String>) -> String {
    kept.as_ref()
        .map(|k| format!(" (it resumes from {k})"))
        .unwrap_or_default()
}

impl From<VerifyError> for Error {
    fn from(e: VerifyError) -> Error {
        Error::Transfer(e.into())
    }
}

/// Process exit codes, one per failure class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    Ok = 0,
    Failure = 1,
    Usage = 2,
    Auth = 3,
    NotFound = 4,
    Network = 5,
    Verification = 6,
    Disk = 7,
    InvalidContent = 8,
    /// A model signature required by `--verify-key` is missing, invalid or does not cover
    /// the model: nothing was placed.
    Signature = 9,
    /// Stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
    Interrupted = 130,
}

impl ExitCode {
    /// The `reason` label of `kaito_model_download_failures_total`.
    pub fn reason(self) -> &'static str {
        match self {
            ExitCode::Ok => "none",
            ExitCode::Failure => "other",
            ExitCode::Usage => "usage",
            ExitCode::Auth => "auth",
            ExitCode::NotFound => "not_found",
            ExitCode::Network => "network",
            ExitCode::Verification => "verification",
            ExitCode::Disk => "disk",
            ExitCode::InvalidContent => "invalid_content",
            ExitCode::Signature => "signature",
            ExitCode::Interrupted => "interrupted",
        }
    }

    /// The class of a numeric exit code (a child process's), `Failure` for unknown codes.
    pub fn from_code(code: i32) -> ExitCode {
        [
            ExitCode::Ok,
            ExitCode::Failure,
            ExitCode::Usage,
            ExitCode::Auth,
            ExitCode::NotFound,
            ExitCode::Network,
            ExitCode::Verification,
            ExitCode::Disk,
            ExitCode::InvalidContent,
            ExitCode::Signature,
            ExitCode::Interrupted,
        ]
        .into_iter()
        .find(|c| *c as i32 == code)
        .unwrap_or(ExitCode::Failure)
    }
}

/// The error of a feature built above the library, with the exit code it maps to (see the
/// module comment for why these are not variants of [`Error`]).
pub trait Classified: std::error::Error + Send + Sync + 'static {
    fn exit_code(&self) -> ExitCode;
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Reference(_) | Error::Usage(_) | Error::Mirrors(_) => ExitCode::Usage,
            Error::Credentials(ConfigError::Incomplete(_)) => ExitCode::Usage,
            Error::Credentials(_) => ExitCode::Auth,
            Error::Write { .. } => ExitCode::Disk,
            Error::Feature(e) => e.exit_code(),
            Error::Server { .. } => ExitCode::Failure,
            Error::Child { code, .. } => ExitCode::from_code(i32::from(*code)),
            Error::Interrupted { .. } => ExitCode::Interrupted,
            Error::Pack(e) => pack_code(e),
            Error::Store(e) => store_code(e),
            Error::Registry(e) => registry_code(e),
            Error::Transfer(e) => transfer_code(e),
        }
    }
}

/// The exit code of a transfer failure (also what a feature's error wrapping one maps to).
pub fn transfer_code(e: &TransferError) -> ExitCode {
    match e {
        TransferError::Registry(e) => registry_code(e),
        TransferError::Store(e) => store_code(e),
        TransferError::Oci(e) => oci_code(e),
        TransferError::Materialize(e) => materialize_code(e),
        TransferError::Pack(e) => pack_code(e),
        TransferError::DigestMismatch { .. } | TransferError::DiffIds(_) => ExitCode::Verification,
        TransferError::Io { .. } => ExitCode::Disk,
        TransferError::NoPlatform(_) => ExitCode::NotFound,
        TransferError::AmbiguousPlatform(_) => ExitCode::InvalidContent,
        TransferError::GaveUp { .. } => ExitCode::Network,
        TransferError::NothingSelected(_) | TransferError::Refused(_) => ExitCode::Usage,
        TransferError::Verify(e) => verify_code(e),
        TransferError::Interrupted { source, .. } => transfer_code(source),
        TransferError::Signature(
            crate::sign::SignError::Key(_) | crate::sign::SignError::Policy(_),
        ) => ExitCode::Usage,
        TransferError::Signature(_) => ExitCode::Signature,
        TransferError::Hub(e) => hub_code(e),
        TransferError::Import(e) => import_code(e),
        TransferError::Tensors(_) => ExitCode::InvalidContent,
    }
}

/// The exit code of an import's refusal, whichever the source.
pub fn import_code(e: &crate::transfer::import::ImportError) -> ExitCode {
    use crate::transfer::import::ImportError;
    match e {
        ImportError::Mismatch { .. } => ExitCode::Verification,
        ImportError::Refused { .. } => ExitCode::InvalidContent,
    }
}

/// The exit code of a failure talking to the Hugging Face Hub.
pub fn hub_code(e: &crate::hub::HubError) -> ExitCode {
    use crate::hub::HubError;
    match e {
        HubError::Spec(_) | HubError::TokenFile { .. } => ExitCode::Usage,
        HubError::Denied { .. } => ExitCode::Auth,
        HubError::NotFound { .. } => ExitCode::NotFound,
        HubError::Unavailable { .. } => ExitCode::Network,
        HubError::Status { .. } => ExitCode::Failure,
        HubError::Invalid { .. } => ExitCode::InvalidContent,
        HubError::Mismatch { .. } => ExitCode::Verification,
    }
}

pub fn pack_code(e: &PackError) -> ExitCode {
    match e {
        PackError::Read { .. } | PackError::Encode { .. } => ExitCode::Disk,
        _ => ExitCode::Usage,
    }
}

fn store_code(e: &StoreError) -> ExitCode {
    match e {
        StoreError::NotFound { .. } | StoreError::Missing { .. } => ExitCode::NotFound,
        StoreError::DigestMismatch { .. } | StoreError::Corrupt { .. } => ExitCode::Verification,
        StoreError::Io { .. } | StoreError::CorruptIndex { .. } => ExitCode::Disk,
        StoreError::Manifest(crate::store::ManifestRejected::Digest { .. }) => {
            ExitCode::Verification
        }
        StoreError::Manifest(_) => ExitCode::InvalidContent,
    }
}

fn registry_code(e: &RegistryError) -> ExitCode {
    match e {
        RegistryError::Unauthorized { .. } | RegistryError::Denied { .. } => ExitCode::Auth,
        RegistryError::NotFound { .. } => ExitCode::NotFound,
        RegistryError::ManifestTooLarge { .. } | RegistryError::BodyTooLarge { .. } => {
            ExitCode::InvalidContent
        }
        RegistryError::ManifestDigest { .. } => ExitCode::Verification,
        RegistryError::UnsafeRealm { .. } => ExitCode::Auth,
        RegistryError::Tls(_) | RegistryError::InvalidName(_) => ExitCode::Usage,
        RegistryError::Status { status, .. } if *status < 500 && *status != 429 => {
            ExitCode::Failure
        }
        RegistryError::Connect { .. }
        | RegistryError::Unresolved { .. }
        | RegistryError::TimedOut { .. }
        | RegistryError::Transfer { .. }
        | RegistryError::Throttled { .. }
        | RegistryError::TokenService { .. }
        | RegistryError::Status { .. } => ExitCode::Network,
    }
}

fn verify_code(e: &VerifyError) -> ExitCode {
    match e {
        // The pull has not finished, or the path given is not a marker: the caller's input.
        VerifyError::NoMarker { .. } | VerifyError::BadMarker { .. } => ExitCode::Usage,
        VerifyError::NoFolder { .. } | VerifyError::Differs { .. } => ExitCode::Verification,
    }
}

fn oci_code(_: &OciError) -> ExitCode {
    ExitCode::InvalidContent
}

fn materialize_code(e: &MaterializeError) -> ExitCode {
    match e {
        MaterializeError::Io { .. } | MaterializeError::Output { .. } => ExitCode::Disk,
        MaterializeError::NotAFolder { .. } => ExitCode::Usage,
        MaterializeError::WouldOverwrite { .. } => ExitCode::Usage,
        // Out of room is the disk's doing, not the content's.
        MaterializeError::UnpackLimit { why, .. } if why.contains("free space") => ExitCode::Disk,
        _ => ExitCode::InvalidContent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The features' errors keep their codes and messages now that they classify themselves.
    #[cfg(all(feature = "mount", feature = "bench"))]
    #[test]
    fn feature_errors_keep_their_codes_and_messages() {
        let corrupt = Error::from(crate::mount::MountError::Corrupt {
            files: vec!["w.bin".into()],
        });
        assert_eq!(corrupt.exit_code(), ExitCode::Verification);
        assert!(corrupt
            .to_string()
            .starts_with("verification failed: 1 did not match"));
        let gone = Error::from(crate::mount::MountError::NotMounted {
            path: "/m".into(),
            why: String::new(),
        });
        assert_eq!(gone.exit_code(), ExitCode::NotFound);
        let bench = Error::from(crate::bench::BenchError::Mismatch {
            config: "raw".into(),
            detail: "w.bin".into(),
        });
        assert_eq!(bench.exit_code(), ExitCode::Verification);
        assert_eq!(
            bench.to_string(),
            "bench failed: the folder pulled for raw differs from the model: w.bin"
        );
        let transfer = Error::from(crate::bench::BenchError::Transfer(TransferError::GaveUp {
            what: "w.bin".into(),
            attempts: 3,
            last: "reset".into(),
        }));
        assert_eq!(transfer.exit_code(), ExitCode::Network);
    }
}
