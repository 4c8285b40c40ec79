//! `pull --referrers`: what is attached to the artifact, pulled beside it.

use crate::digest::Digest;
use crate::transfer::referrers::{discover, Referrer};
use crate::transfer::{Target, TransferError};

/// Pull every artifact attached to `subject` (recursively) into `dir/<digest hex>/`, each
/// beside a `.descriptor.json` naming its type and annotations. Returns how many were pulled.
/// `dir` lies inside a pulled folder whose content came from the registry: no write here
/// goes through a symlink, whatever the pulled artifacts placed.
pub async fn pull_referrers(
    target: &Target,
    subject: &Digest,
    root: &std::path::Path,
    dir_name: &str,
    opts: &super::PullOptions,
) -> Result<usize, TransferError> {
    let tree = discover(target, subject, None, 8).await?;
    crate::materialize::ensure_dirs(root, std::path::Path::new(dir_name))?;
    let dir = root.join(dir_name);
    // hoist's own chunk index is metadata for the next pull, not an attachment for the user
    // (copy --recursive still carries it).
    let attachment =
        |r: &&Referrer| r.descriptor.artifact_type.as_deref() != Some(crate::chunks::INDEX_TYPE);
    let mut stack: Vec<&Referrer> = tree.iter().filter(attachment).collect();
    let mut pulled = 0;
    while let Some(r) = stack.pop() {
        stack.extend(r.referrers.iter().filter(attachment));
        let hex = r.descriptor.digest.hex();
        let out = dir.join(hex);
        let digest = r.descriptor.digest.as_str();
        match super::pull(target, digest, &out, opts, super::super::silent()).await {
            Ok(_) => {}
            // A signature or attestation without file names: keep its manifest, which is
            // what verifiers read.
            Err(TransferError::Oci(crate::oci::OciError::NoFiles(_))) => {
                let (_, bytes, _) = target.fetch_manifest(digest).await?;
                crate::materialize::ensure_dirs(&dir, std::path::Path::new(hex))?;
                write_inside(&out, "manifest.json", &bytes)?;
            }
            Err(e) => return Err(e),
        }
        write_inside(
            &out,
            ".descriptor.json",
            &serde_json::to_vec_pretty(&r.descriptor).expect("descriptor serialises"),
        )?;
        pulled += 1;
    }
    Ok(pulled)
}

/// Write `name` in `dir` by a temporary file and a rename, which replaces whatever is at the
/// name (a planted symlink included) instead of writing through it.
fn write_inside(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Result<(), TransferError> {
    let path = dir.join(name);
    crate::fsutil::write_atomic(&path, bytes, crate::fsutil::Replace::FAST)
        .map_err(TransferError::io(&path))
}
