//! The crate's error, and the exit code each failure class maps to. The codes are part of the
//! CLI's contract (an init container acts on them) and are listed in the README.

use crate::materialize::MaterializeError;
use crate::mount::MountError;
use crate::oci::OciError;
use crate::pack::PackError;
use crate::reference::ReferenceError;
use crate::registry::RegistryError;
use crate::store::StoreError;
use crate::transfer::TransferError;

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
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("{0}")]
    Usage(String),
    #[error("verification failed: {0}")]
    Verify(String),
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
        }
    }
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Reference(_) | Error::Usage(_) => ExitCode::Usage,
            Error::Verify(_) => ExitCode::Verification,
            Error::Pack(e) => pack_code(e),
            Error::Store(e) => store_code(e),
            Error::Registry(e) => registry_code(e),
            Error::Mount(e) => match e {
                MountError::Transfer(e) => transfer_code(e),
                MountError::NotRaw { .. } | MountError::PathClash(_) => ExitCode::InvalidContent,
                MountError::Fuse { .. } | MountError::Unmount { .. } => ExitCode::Failure,
                MountError::Io { .. } => ExitCode::Disk,
            },
            Error::Transfer(e) => transfer_code(e),
        }
    }
}

fn transfer_code(e: &TransferError) -> ExitCode {
    match e {
        TransferError::Registry(e) => registry_code(e),
        TransferError::Store(e) => store_code(e),
        TransferError::Oci(e) => oci_code(e),
        TransferError::Materialize(e) => materialize_code(e),
        TransferError::Pack(e) => pack_code(e),
        TransferError::DigestMismatch { .. } => ExitCode::Verification,
        TransferError::Io { .. } => ExitCode::Disk,
        TransferError::NoPlatform(_) => ExitCode::NotFound,
        TransferError::GaveUp { .. } => ExitCode::Network,
        TransferError::NothingSelected(_) => ExitCode::Usage,
        TransferError::Interrupted { source, .. } => transfer_code(source),
    }
}

fn pack_code(e: &PackError) -> ExitCode {
    match e {
        PackError::Read { .. } | PackError::Encode { .. } => ExitCode::Disk,
        _ => ExitCode::Usage,
    }
}

fn store_code(e: &StoreError) -> ExitCode {
    match e {
        StoreError::NotFound { .. } => ExitCode::NotFound,
        StoreError::DigestMismatch { .. } | StoreError::Corrupt { .. } => ExitCode::Verification,
        StoreError::Io { .. } | StoreError::CorruptIndex { .. } => ExitCode::Disk,
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
        | RegistryError::TimedOut { .. }
        | RegistryError::Transfer { .. }
        | RegistryError::Throttled { .. }
        | RegistryError::TokenService { .. }
        | RegistryError::Status { .. } => ExitCode::Network,
    }
}

fn oci_code(_: &OciError) -> ExitCode {
    ExitCode::InvalidContent
}

fn materialize_code(e: &MaterializeError) -> ExitCode {
    match e {
        MaterializeError::Io { .. } => ExitCode::Disk,
        MaterializeError::WouldOverwrite { .. } => ExitCode::Usage,
        // Out of room is the disk's doing, not the content's.
        MaterializeError::UnpackLimit { why, .. } if why.contains("free space") => ExitCode::Disk,
        _ => ExitCode::InvalidContent,
    }
}
