//! Upload sessions: one file per session under `ingest/uploads/`, its length the bytes
//! received so far. Sessions live on disk, so an upload interrupted by a server restart
//! continues where it stopped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::StatusCode;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::ApiError;
use crate::digest::Digest;
use crate::store::Store;

pub struct Uploads {
    dir: PathBuf,
    /// One lock per session: chunks of one upload are appended one at a time.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Uploads {
    pub fn open(store: &Store) -> std::io::Result<Uploads> {
        let dir = store.root().join("ingest/uploads");
        std::fs::create_dir_all(&dir)?;
        Ok(Uploads {
            dir,
            locks: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, id: &str) -> Result<PathBuf, ApiError> {
        // Only ids we made: a UUID cannot name a path outside the folder.
        uuid::Uuid::parse_str(id).map_err(|_| ApiError::upload_unknown(id))?;
        let path = self.dir.join(id);
        if !path.exists() {
            return Err(ApiError::upload_unknown(id));
        }
        Ok(path)
    }

    fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("uploads lock")
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    pub fn create(&self) -> Result<String, ApiError> {
        let id = uuid::Uuid::new_v4().to_string();
        std::fs::File::create(self.dir.join(&id))?;
        Ok(id)
    }

    /// Bytes received so far.
    pub fn len(&self, id: &str) -> Result<u64, ApiError> {
        Ok(std::fs::metadata(self.path(id)?)?.len())
    }

    /// Append a chunk. `start`, from `Content-Range`, must be where the upload stands.
    pub async fn append(&self, id: &str, start: Option<u64>, body: Body) -> Result<u64, ApiError> {
        let path = self.path(id)?;
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let current = std::fs::metadata(&path)?.len();
        if let Some(start) = start {
            if start != current {
                return Err(ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "BLOB_UPLOAD_INVALID",
                    format!("chunk starts at {start} but the upload has {current} bytes"),
                ));
            }
        }
        let mut file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .await?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "BLOB_UPLOAD_INVALID",
                    e.to_string(),
                )
            })?;
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok(std::fs::metadata(&path)?.len())
    }

    /// Close the session: the bytes must hash to `digest`, then the blob joins the store and
    /// `repository` holds it.
    pub async fn finish(
        &self,
        id: &str,
        digest: &Digest,
        store: &Store,
        repository: &str,
    ) -> Result<(), ApiError> {
        let path = self.path(id)?;
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let (check_path, store) = (path.clone(), store.clone());
        let actual = tokio::task::spawn_blocking(move || Digest::of_file(&check_path))
            .await
            .expect("hash task")?;
        if actual != *digest {
            let _ = std::fs::remove_file(&path);
            return Err(ApiError::digest_invalid(format!(
                "the upload hashes to {actual}, not {digest}"
            )));
        }
        if store.blob_size(digest).is_some() {
            std::fs::remove_file(&path)?;
        } else {
            // Off the async workers: the stamp waits for the file clock's next tick.
            let (committing, digest) = (store.clone(), digest.clone());
            tokio::task::spawn_blocking(move || committing.commit_verified(&path, &digest))
                .await
                .expect("commit task does not panic")?;
        }
        store.link(repository, crate::store::LinkKind::Blob, digest)?;
        self.locks.lock().expect("uploads lock").remove(id);
        Ok(())
    }

    pub fn cancel(&self, id: &str) -> Result<(), ApiError> {
        std::fs::remove_file(self.path(id)?)?;
        self.locks.lock().expect("uploads lock").remove(id);
        Ok(())
    }
}
