//! Fetching a blob into the local store (the node cache): once per digest across concurrent
//! pulls (a lock per blob), verified before it is committed, and checked again before use.

use std::path::PathBuf;

use super::{Fetcher, Source};
use crate::oci::Descriptor;
use crate::store::{BlobCheck, Store};
use crate::transfer::TransferError;

/// Make sure the store holds `desc`, downloading it if needed under the blob's lock (so
/// concurrent pulls on a node fetch it once). Returns the blob's path and whether this call
/// downloaded it.
pub(crate) async fn fetch_into_store(
    fetcher: &Fetcher,
    sources: &[Source],
    store: &Store,
    desc: &Descriptor,
    name: &str,
) -> Result<(PathBuf, bool), TransferError> {
    into_store(store, desc, |part| async move {
        fetcher.download(sources, desc, &part, name).await
    })
    .await
}

/// [`fetch_into_store`] with the download given: `download(part)` leaves the verified
/// bytes in `part`.
pub(crate) async fn into_store<F, Fut>(
    store: &Store,
    desc: &Descriptor,
    download: F,
) -> Result<(PathBuf, bool), TransferError>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<(), TransferError>>,
{
    if let Some(path) = good_or_refetch(store, desc).await? {
        return Ok((path, false));
    }
    let _lock = store.lock_blob(&desc.digest).await?;
    if let Some(path) = good_or_refetch(store, desc).await? {
        return Ok((path, false)); // another pull fetched it meanwhile
    }
    let part = store.part_path(&desc.digest);
    download(part.clone()).await?;
    let (store, digest) = (store.clone(), desc.digest.clone());
    // Off the async workers: the stamp waits for the file clock's next tick.
    let path = tokio::task::spawn_blocking(move || store.commit_verified(&part, &digest))
        .await
        .expect("commit task does not panic")?;
    Ok((path, true))
}

/// Check a store blob before its bytes are used (see [`Store::check_blob`]), off the async
/// workers since it may hash.
pub(crate) async fn checked(store: &Store, desc: &Descriptor) -> Result<BlobCheck, TransferError> {
    let (store, digest, size) = (store.clone(), desc.digest.clone(), desc.size);
    Ok(
        tokio::task::spawn_blocking(move || store.check_blob(&digest, size))
            .await
            .expect("check task does not panic")?,
    )
}

/// A good cached blob's path; `None` when it must be fetched (absent, or found corrupt and
/// removed: the remote is known, so it is fetched again).
async fn good_or_refetch(
    store: &Store,
    desc: &Descriptor,
) -> Result<Option<PathBuf>, TransferError> {
    match checked(store, desc).await {
        Ok(BlobCheck::Good(path)) => Ok(Some(path)),
        Ok(BlobCheck::Missing) => Ok(None),
        Err(TransferError::Store(e @ crate::store::StoreError::Corrupt { .. })) => {
            tracing::warn!("{e}; fetching it again");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
