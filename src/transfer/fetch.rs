//! Downloading one blob into a file while hashing it, so verification costs no second read.

use std::path::Path;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::TransferError;
use crate::digest::{Digest, Hasher};
use crate::oci::Descriptor;
use crate::registry::{RegistryClient, RegistryError};

/// Download `desc` into `path` (created or truncated). Returns only when the bytes on disk
/// match the descriptor's digest and size; `what` names the file in errors.
pub async fn download_verified(
    client: &RegistryClient,
    repository: &str,
    desc: &Descriptor,
    path: &Path,
    what: &str,
) -> Result<(), TransferError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(TransferError::io(path))?;
    let (actual, size) = download_into(client, repository, desc, &mut file, path).await?;
    if actual != desc.digest || size != desc.size {
        let _ = tokio::fs::remove_file(path).await;
        return Err(TransferError::DigestMismatch {
            what: what.to_string(),
            expected: desc.digest.clone(),
            actual,
            size,
        });
    }
    Ok(())
}

/// Stream a blob into an open file, hashing as it goes: (digest, size) of what arrived.
/// The caller compares them with the descriptor before the bytes are used.
pub async fn download_into(
    client: &RegistryClient,
    repository: &str,
    desc: &Descriptor,
    file: &mut tokio::fs::File,
    path: &Path,
) -> Result<(Digest, u64), TransferError> {
    let blob = client.get_blob(repository, &desc.digest, None).await?;
    let mut hasher = Hasher::new();
    let mut stream = blob.response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| RegistryError::Transfer {
            registry: client.registry().to_string(),
            context: format!("downloading {}", desc.digest),
            detail: crate::registry::error_chain(&e),
        })?;
        // Stop early on a server that sends more than the descriptor says: the digest
        // would fail anyway, and the disk is not ours to fill.
        if hasher.len() + chunk.len() as u64 > desc.size {
            hasher.update(&chunk);
            break;
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(TransferError::io(path))?;
    }
    file.flush().await.map_err(TransferError::io(path))?;
    let size = hasher.len();
    Ok((hasher.finish(), size))
}
