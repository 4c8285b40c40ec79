//! The Hugging Face Hub as an [`ImportSource`]: `crate::hub`'s client (its revision, tree
//! and resumable file streams) seen through the interface `import` asks for. An LFS file
//! is checked by the SHA-256 the Hub lists for it; a file kept in git by its blob id.

use super::source::{Check, FileReader, ImportSource, SourceFile};
use crate::hub::{FileStream, HubClient, HubFile, HubRepo, RepoKind};
use crate::transfer::TransferError;

/// `hf://ORG/NAME[@REVISION]` (or `hf://datasets/…`) on the Hub `client` talks to.
pub struct HubSource {
    client: HubClient,
    repo: HubRepo,
}

impl HubSource {
    pub fn new(client: HubClient, repo: HubRepo) -> HubSource {
        HubSource { client, repo }
    }
}

#[async_trait::async_trait]
impl ImportSource for HubSource {
    fn describe(&self) -> String {
        self.repo.to_string()
    }

    fn name(&self) -> String {
        self.repo.id.clone()
    }

    fn page(&self) -> String {
        self.repo.page(&self.client.settings.endpoint)
    }

    fn default_tag(&self) -> String {
        self.repo.default_tag()
    }

    fn is_dataset(&self) -> bool {
        self.repo.kind == RepoKind::Dataset
    }

    async fn commit(&self) -> Result<String, TransferError> {
        Ok(self.client.commit(&self.repo).await?)
    }

    async fn files(&self, commit: &str) -> Result<Vec<SourceFile>, TransferError> {
        let listed = self.client.files(&self.repo, commit).await?;
        Ok(listed.into_iter().map(source_file).collect())
    }

    async fn open(
        &self,
        commit: &str,
        file: &SourceFile,
    ) -> Result<Box<dyn FileReader>, TransferError> {
        let url = self.client.file_url(&self.repo, commit, &file.path);
        Ok(Box::new(FileStream::new(
            self.client.clone(),
            url,
            hub_file(file),
        )))
    }
}

#[async_trait::async_trait]
impl FileReader for FileStream {
    async fn next(&mut self) -> Result<Option<bytes::Bytes>, TransferError> {
        Ok(FileStream::next(self).await?)
    }

    fn resumed(&self) -> u32 {
        self.resumed
    }
}

fn source_file(f: HubFile) -> SourceFile {
    let check = match &f.lfs_sha256 {
        Some(sha) => Check::Sha256(
            format!("sha256:{sha}")
                .parse()
                .expect("the Hub client checked the SHA-256's form"),
        ),
        None => Check::GitBlob(f.oid),
    };
    SourceFile {
        path: f.path,
        size: f.size,
        check,
    }
}

/// The file as the Hub's stream knows it: it checks an LFS file's ETag against its SHA-256.
fn hub_file(f: &SourceFile) -> HubFile {
    let (oid, lfs_sha256) = match &f.check {
        Check::Sha256(d) => (String::new(), Some(d.hex().to_string())),
        Check::GitBlob(oid) => (oid.clone(), None),
    };
    HubFile {
        path: f.path.clone(),
        size: f.size,
        oid,
        lfs_sha256,
    }
}
