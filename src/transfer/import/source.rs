//! What `import` asks of a place models come from: a commit, the files at it (each with how
//! its bytes are checked), and a stream of one file. The Hugging Face Hub (`hub.rs`) is the
//! first; a new one (`s3://`, `modelscope://`) implements [`ImportSource`] and is named in
//! the one place that dispatches on the scheme, `Context::import_source`.
//!
//! Everything else is `import`'s, the same for every source: the include/exclude filter,
//! hashing, chunking and header reading on a blocking task, the check of every byte against
//! what the source listed *before* the destination's upload may complete, skipping what the
//! destination holds, and the artifact `push` would make of the same files.
//!
//! A worked example, a source that serves files from memory (the tests keep a fuller one
//! in `tests/import_source.rs`):
//!
//! ```
//! use bytes::Bytes;
//! use hoist::transfer::import::{Check, FileReader, ImportSource, SourceFile};
//! use hoist::transfer::TransferError;
//!
//! struct Memory(Vec<(String, Bytes)>);
//!
//! #[async_trait::async_trait]
//! impl ImportSource for Memory {
//!     fn describe(&self) -> String { "mem://example".into() }
//!     fn name(&self) -> String { "example".into() }
//!     fn page(&self) -> String { "https://example.com/models/example".into() }
//!     async fn commit(&self) -> Result<String, TransferError> { Ok("1".into()) }
//!     async fn files(&self, _commit: &str) -> Result<Vec<SourceFile>, TransferError> {
//!         Ok(self.0.iter().map(|(path, body)| SourceFile {
//!             path: path.clone(),
//!             size: body.len() as u64,
//!             check: Check::Sha256(hoist::digest::Digest::of_bytes(body)),
//!         }).collect())
//!     }
//!     async fn open(&self, _commit: &str, file: &SourceFile)
//!         -> Result<Box<dyn FileReader>, TransferError> {
//!         let body = self.0.iter().find(|(p, _)| *p == file.path).unwrap().1.clone();
//!         Ok(Box::new(Some(body)))
//!     }
//! }
//! ```

use bytes::Bytes;

use crate::digest::Digest;
use crate::transfer::TransferError;

/// A repository somewhere that `hoist copy SCHEME://…` imports.
///
/// Methods that talk to the source are `async` (boxed by `async_trait`, so a source is a
/// `dyn ImportSource` the front ends hold without knowing which it is). Their errors are
/// the source's own, converted into [`TransferError`] (the Hub's are `TransferError::Hub`),
/// so each keeps its exit code.
#[async_trait::async_trait]
pub trait ImportSource: Send + Sync {
    /// The source as the user named it, revision included (`hf://org/name@main`): reports
    /// and error messages say this.
    fn describe(&self) -> String;
    /// The artifact's name (`org/name`): its title in the config, as `push` names a folder.
    fn name(&self) -> String;
    /// Where a person reads about it: the artifact's `org.opencontainers.image.source`.
    fn page(&self) -> String;
    /// The tag a copy gets when its destination names none.
    fn default_tag(&self) -> String {
        "latest".into()
    }
    /// A dataset's files are `dataset` layers (its card stays a `doc`); a model's are
    /// classified by name and size as `push` does.
    fn is_dataset(&self) -> bool {
        false
    }
    /// The revision asked for, fixed to one commit: every file is read at it, and the
    /// artifact records it (`org.opencontainers.image.revision`).
    async fn commit(&self) -> Result<String, TransferError>;
    /// Every file at `commit`, with its size and how its bytes are checked. Paths are
    /// `/`-separated and relative; the source checks them (no `..`, no absolute paths).
    async fn files(&self, commit: &str) -> Result<Vec<SourceFile>, TransferError>;
    /// The bytes of one listed file, in order. A stream that survives a broken connection
    /// takes it up where it stopped and says so in [`FileReader::resumed`].
    async fn open(
        &self,
        commit: &str,
        file: &SourceFile,
    ) -> Result<Box<dyn FileReader>, TransferError>;
}

/// One file as its source lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: String,
    pub size: u64,
    pub check: Check,
}

/// How `import` knows the bytes are the ones listed. The check runs as the bytes stream,
/// before the destination may complete its upload: a file that fails it is never visible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The SHA-256 of the content (an LFS file's, an object store's checksum): streamed,
    /// and the blob's digest besides.
    Sha256(Digest),
    /// The git blob id (SHA-1 of `blob <size>\0` and the content), for files kept in git
    /// itself: read whole (up to `pack::MAX_SMALL_FILE`), then checked.
    GitBlob(String),
}

/// The bytes of one file, a piece at a time.
#[async_trait::async_trait]
pub trait FileReader: Send {
    /// The next piece; `None` at the end.
    async fn next(&mut self) -> Result<Option<Bytes>, TransferError>;
    /// Reads taken up again after a broken connection, reported to the user.
    fn resumed(&self) -> u32 {
        0
    }
}

/// A file already in memory: one piece, then the end.
#[async_trait::async_trait]
impl FileReader for Option<Bytes> {
    async fn next(&mut self) -> Result<Option<Bytes>, TransferError> {
        Ok(self.take())
    }
}

/// Why `import` refused what a source sent, whichever source it was.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The bytes that arrived are not those listed (exit 6).
    #[error("verification failed for {path}: {source_name} lists {expected}, the bytes that arrived give {actual}; nothing was published")]
    Mismatch {
        source_name: String,
        path: String,
        expected: String,
        actual: String,
    },
    /// A file `import` will not take as listed (exit 8).
    #[error("{path} in {source_name} is refused: {message}")]
    Refused {
        source_name: String,
        path: String,
        message: String,
    },
}
