//! Checking a pulled folder, and the ready marker a pull writes for that check: against an
//! artifact's manifest (every raw layer's file with its size and digest, nothing else), or
//! offline against the marker (the same list, recorded when the pull ended).

use std::path::{Path, PathBuf};

use super::{PlacedFile, PullReport, Target, TransferError};
use crate::digest::Digest;
use crate::materialize::verify::{check_folder, Expected, FolderCheck};
use crate::oci::{LayerFormat, LayerPlan};

/// Why a folder did not pass.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("no ready marker at {path} ({source}): the pull has not finished")]
    NoMarker {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a hoist ready marker: {detail}")]
    BadMarker { path: PathBuf, detail: String },
    #[error("{dir} does not exist or is not a folder: nothing was pulled there")]
    NoFolder { dir: PathBuf },
    #[error("verification failed: {}", describe(.dir, .what, .check))]
    Differs {
        dir: PathBuf,
        what: String,
        check: FolderCheck,
    },
}

/// One line listing every differing and every unexpected file.
fn describe(dir: &Path, what: &str, check: &FolderCheck) -> String {
    let mut parts = Vec::new();
    if !check.differ.is_empty() {
        parts.push(format!(
            "{} of {} files in {} differ from {what}: {}",
            check.differ.len(),
            check.checked,
            dir.display(),
            check.differ.join("; ")
        ));
    }
    if !check.extra.is_empty() {
        parts.push(format!(
            "{} holds {} files that {what} does not: {}",
            dir.display(),
            check.extra.len(),
            check.extra.join(", ")
        ));
    }
    parts.join("; ")
}

/// A folder that passed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verified {
    pub reference: String,
    pub digest: Digest,
    pub dir: PathBuf,
    /// Files checked (present, right size, right digest).
    pub checked: usize,
    /// Tar layers: their files have no digests of their own and are not checked one by one.
    pub unchecked_tar_layers: usize,
}

/// The ready marker: what a finished pull put in the folder, so another container can check
/// it offline (`hoist verify --marker`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ReadyMarker {
    pub reference: String,
    pub digest: Digest,
    pub completed_at: String,
    pub pull_seconds: f64,
    /// Bytes reused from an interrupted earlier pull.
    pub resumed_bytes: u64,
    pub files: Vec<PlacedFile>,
}

/// Markers are small: a bound on what `verify --marker` reads from a file it is pointed at.
const MAX_MARKER_BYTES: u64 = 64 << 20;

impl ReadyMarker {
    pub fn new(reference: &str, report: &PullReport, seconds: f64) -> ReadyMarker {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        ReadyMarker {
            reference: reference.to_string(),
            digest: report.digest.clone(),
            completed_at: crate::pack::rfc3339(now),
            pull_seconds: (seconds * 1000.0).round() / 1000.0,
            resumed_bytes: report.resumed_bytes,
            files: report.placed.clone(),
        }
    }

    /// Write the marker (its folder created), atomically and durably: a reader never sees
    /// half of it, and it survives a crash once this returns.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = serde_json::to_vec_pretty(self).expect("marker serialises");
        crate::fsutil::write_atomic(path, &bytes, crate::fsutil::Replace::DURABLE)
    }

    pub fn read(path: &Path) -> Result<ReadyMarker, VerifyError> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|source| VerifyError::NoMarker {
            path: path.to_path_buf(),
            source,
        })?;
        let mut text = Vec::new();
        let bad = |detail: String| VerifyError::BadMarker {
            path: path.to_path_buf(),
            detail,
        };
        file.take(MAX_MARKER_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(|e| bad(e.to_string()))?;
        if text.len() as u64 > MAX_MARKER_BYTES {
            return Err(bad(format!("over {MAX_MARKER_BYTES} bytes")));
        }
        serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))
    }
}

/// Check `dir` offline against the ready marker at `marker`: every file it lists with a
/// digest, and (when every file has one) nothing else. `full`: hash even files the pull's
/// record vouches for.
pub fn verify_marker(dir: &Path, marker: &Path, full: bool) -> Result<Verified, VerifyError> {
    let ready = ReadyMarker::read(marker)?;
    require_folder(dir)?;
    let expected: Vec<Expected> = ready
        .files
        .iter()
        .filter(|f| f.digest.is_some())
        .map(|f| Expected {
            path: f.path.clone(),
            size: f.size,
            digest: f.digest.clone(),
        })
        .collect();
    let all_raw = expected.len() == ready.files.len();
    // A marker kept inside the folder is not one of the model's files.
    let ignore: Vec<PathBuf> = marker
        .strip_prefix(dir)
        .map(|p| vec![p.to_path_buf()])
        .unwrap_or_default();
    let check = check_folder(dir, &expected, full, all_raw, &ignore);
    passed(dir, &ready.reference, check)?;
    Ok(Verified {
        checked: expected.len(),
        reference: ready.reference,
        digest: ready.digest,
        dir: dir.to_path_buf(),
        unchecked_tar_layers: 0,
    })
}

/// Check `dir` against its signature `dir/model.sig` (OpenSSF model signing): the signature
/// must verify with one of `keys`, and the folder must hold exactly the signed files with
/// their digests (those the pull's record vouches for are not hashed again unless `full`).
/// A signature bundle alone (a `model.sig` anywhere) checked under `trust`: what it vouches
/// for and who signed. The files it lists are not looked at.
pub fn verify_bundle(
    path: &Path,
    trust: &crate::sign::Trust,
) -> Result<crate::sign::Signed, TransferError> {
    let bundle = read_bundle(path)?;
    Ok(crate::sign::open(&bundle, trust)?)
}

/// A bundle file's bytes, at most one over the largest bundle (which `open` then refuses).
fn read_bundle(path: &Path) -> Result<Vec<u8>, TransferError> {
    use std::io::Read;
    let mut bundle = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(crate::sign::MAX_BUNDLE_BYTES + 1)
                .read_to_end(&mut bundle)
        })
        .map_err(TransferError::io(path))?;
    Ok(bundle)
}

/// How a verified signature names its signer, for a line of output.
pub fn signer_words(signed: &crate::sign::Signed) -> String {
    match &signed.method {
        crate::sign::Method::Key => format!("key {}", signed.key),
        crate::sign::Method::Certificate(who) => format!("certificate {who}"),
        crate::sign::Method::Sigstore(logged) => format!(
            "Sigstore certificate {} (issuer {}){}",
            logged.identity,
            logged.issuer,
            logged
                .signed_at
                .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
                .and_then(|t| t
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok())
                .map(|t| format!(", signed at {t}"))
                .unwrap_or_default()
        ),
    }
}

/// The signer's ignored paths and hoist's own files aside.
pub fn verify_signature(
    dir: &Path,
    trust: &crate::sign::Trust,
    full: bool,
) -> Result<Verified, TransferError> {
    require_folder(dir)?;
    let path = dir.join(crate::sign::SIGNATURE_FILE);
    let mut bundle = Vec::new();
    use std::io::Read;
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        // An unsigned folder is a verdict on the model, not a fault of the disk.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(crate::sign::SignError::Unsigned {
                reference: dir.display().to_string(),
                why: format!("no {}", path.display()),
            }
            .into())
        }
        Err(e) => return Err(TransferError::io(&path)(e)),
    };
    file.take(crate::sign::MAX_BUNDLE_BYTES + 1)
        .read_to_end(&mut bundle)
        .map_err(TransferError::io(&path))?;
    let signed = crate::sign::open(&bundle, trust)?;
    let mut expected = Vec::with_capacity(signed.files.len());
    for (name, hex) in &signed.files {
        let digest: Digest = format!("sha256:{hex}")
            .parse()
            .expect("a signed digest is 64 hex digits");
        let rel = PathBuf::from(name);
        // The statement carries no sizes: the digest decides.
        let size = std::fs::symlink_metadata(dir.join(&rel)).map_or(0, |m| m.len());
        expected.push(Expected {
            path: rel,
            size,
            digest: Some(digest),
        });
    }
    let mut ignore: Vec<PathBuf> = signed
        .ignore_paths
        .iter()
        .map(PathBuf::from)
        .filter(|p| ignorable_here(dir, p))
        .collect();
    ignore.push(PathBuf::from(crate::sign::SIGNATURE_FILE));
    let check = check_folder(dir, &expected, full, true, &ignore);
    let what = format!("the signature by {}", signer_words(&signed));
    passed(dir, &what, check)?;
    Ok(Verified {
        reference: format!("{} ({what})", signed.name),
        digest: Digest::of_bytes(&bundle),
        dir: dir.to_path_buf(),
        checked: expected.len(),
        unchecked_tar_layers: 0,
    })
}

/// Does a path the signer ignored stay out of the check in `dir`? `current` only where
/// hoist keeps it: the link of a versioned root into its versions. Elsewhere it is an
/// ordinary name (earlier releases of `push --sign` listed it, which would pass any file
/// hidden under a folder of that name). Every other ignored path is the signer's word.
fn ignorable_here(dir: &Path, ignored: &Path) -> bool {
    if ignored != Path::new(crate::reserved::CURRENT) {
        return true;
    }
    crate::reserved::is_versioned_root(dir)
        && std::fs::symlink_metadata(dir.join(ignored)).is_ok_and(|m| m.file_type().is_symlink())
}

/// Check `dir` against the files `reference` holds in `source`: each raw layer's file must be
/// there with its size and digest, and nothing else (unless tar layers bring unlisted files).
pub async fn verify_folder(
    source: &Target,
    reference: &str,
    dir: &Path,
    full: bool,
) -> Result<Verified, TransferError> {
    require_folder(dir)?;
    let resolved = source.resolve(reference).await?;
    let plan = LayerPlan::from_manifest(&resolved.manifest, false)?;
    let expected: Vec<Expected> = plan
        .layers
        .iter()
        .filter(|l| l.format == LayerFormat::Raw)
        .map(|l| Expected {
            path: l.path.clone(),
            size: l.descriptor.size,
            digest: Some(l.descriptor.digest.clone()),
        })
        .collect();
    // A tar layer's files carry no digest of their own and are not listed in the manifest.
    let unchecked = plan.layers.len() - expected.len();
    // The signature a verified pull wrote beside the files is not one of the model's.
    let ignore = [PathBuf::from(crate::sign::SIGNATURE_FILE)];
    let ignore = if expected.iter().any(|e| e.path == ignore[0]) {
        &[][..]
    } else {
        &ignore[..]
    };
    let check = check_folder(dir, &expected, full, unchecked == 0, ignore);
    let name = source.name_of(reference);
    passed(dir, &name, check)?;
    Ok(Verified {
        reference: name,
        digest: resolved.digest,
        dir: dir.to_path_buf(),
        checked: expected.len(),
        unchecked_tar_layers: unchecked,
    })
}

/// A missing folder is one error, not every expected file listed as missing.
fn require_folder(dir: &Path) -> Result<(), VerifyError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        _ => Err(VerifyError::NoFolder {
            dir: dir.to_path_buf(),
        }),
    }
}

fn passed(dir: &Path, what: &str, check: FolderCheck) -> Result<(), VerifyError> {
    if check.is_clean() {
        return Ok(());
    }
    Err(VerifyError::Differs {
        dir: dir.to_path_buf(),
        what: what.to_string(),
        check,
    })
}
