//! The import interface (`hoist::transfer::import::ImportSource`) through a test double: a
//! source that serves files from memory, in small pieces, and can lie about them. What
//! `import` promises for every source is tried here without the Hub: the artifact holds
//! every listed file byte for byte, one commit gives one digest, a file whose bytes are not
//! those listed is refused before anything is visible, and a file that would be held whole
//! past the bound is refused before anything is read.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use hoist::context::{Context, Settings};
use hoist::digest::Digest;
use hoist::reference::Reference;
use hoist::transfer::import::{Check, FileReader, ImportSource, SourceFile};
use hoist::transfer::{self, ImportOptions, PullOptions, Target, TransferError};

/// Files in memory, served `PIECE` bytes at a time.
struct Memory {
    files: Vec<(String, Bytes)>,
    /// A file whose listing names other bytes than the ones served (same size).
    lie_about: Option<&'static str>,
    /// Files listed as kept in git (checked by blob id) rather than by SHA-256.
    in_git: Vec<&'static str>,
    /// A size listed in place of the real one, for one file.
    listed_size: Option<(&'static str, u64)>,
    opened: Arc<AtomicUsize>,
}

const PIECE: usize = 7 * 1024;

impl Memory {
    fn new(files: Vec<(&str, Vec<u8>)>) -> Memory {
        Memory {
            files: files
                .into_iter()
                .map(|(p, b)| (p.to_string(), Bytes::from(b)))
                .collect(),
            lie_about: None,
            in_git: vec!["config.json"],
            listed_size: None,
            opened: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn listing(&self, path: &str, body: &Bytes) -> SourceFile {
        let mut listed = body.to_vec();
        if self.lie_about == Some(path) {
            listed[0] ^= 1;
        }
        let check = if self.in_git.contains(&path) {
            Check::GitBlob(git_blob_id(&listed))
        } else {
            Check::Sha256(Digest::of_bytes(&listed))
        };
        let size = match self.listed_size {
            Some((p, size)) if p == path => size,
            _ => body.len() as u64,
        };
        SourceFile {
            path: path.to_string(),
            size,
            check,
        }
    }
}

#[async_trait::async_trait]
impl ImportSource for Memory {
    fn describe(&self) -> String {
        "mem://example/model@main".into()
    }
    fn name(&self) -> String {
        "example/model".into()
    }
    fn page(&self) -> String {
        "https://models.example/example/model".into()
    }
    async fn commit(&self) -> Result<String, TransferError> {
        Ok("0123456789abcdef0123456789abcdef01234567".into())
    }
    async fn files(&self, _commit: &str) -> Result<Vec<SourceFile>, TransferError> {
        Ok(self
            .files
            .iter()
            .map(|(path, body)| self.listing(path, body))
            .collect())
    }
    async fn open(
        &self,
        _commit: &str,
        file: &SourceFile,
    ) -> Result<Box<dyn FileReader>, TransferError> {
        self.opened.fetch_add(1, Ordering::SeqCst);
        let body = self.files.iter().find(|(p, _)| *p == file.path).unwrap();
        Ok(Box::new(Pieces(body.1.clone())))
    }
}

struct Pieces(Bytes);

#[async_trait::async_trait]
impl FileReader for Pieces {
    async fn next(&mut self) -> Result<Option<Bytes>, TransferError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let n = PIECE.min(self.0.len());
        Ok(Some(self.0.split_to(n)))
    }
}

fn git_blob_id(content: &[u8]) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", content.len()).as_bytes());
    h.update(content);
    hex::encode(h.finalize())
}

/// A small valid safetensors file: one F32 tensor of `n` values.
fn safetensors(n: usize) -> Vec<u8> {
    let header = format!(
        r#"{{"w":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
        4 * n
    );
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend((0..n).flat_map(|i| (i as f32).to_le_bytes()));
    out
}

fn model() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "config.json",
            br#"{"model_type":"bert","hidden_size":4}"#.to_vec(),
        ),
        ("model.safetensors", safetensors(100_000)),
        ("tokenizer/vocab.txt", b"[PAD]\n[UNK]\nhello\n".repeat(500)),
        (".gitattributes", b"*.safetensors filter=lfs\n".to_vec()),
    ]
}

struct Dest {
    _dir: tempfile::TempDir,
    target: Target,
    store: std::path::PathBuf,
}

fn local_destination() -> Dest {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let ctx = Context::new(Settings {
        store: Some(store.clone()),
        ..Default::default()
    });
    let target = ctx
        .target(&Reference::parse("example/model:v1").unwrap())
        .unwrap();
    Dest {
        _dir: dir,
        target,
        store,
    }
}

async fn import(source: &Memory, dst: &Target) -> Result<transfer::ImportReport, TransferError> {
    let opts = ImportOptions::default();
    transfer::import(source, dst, &["v1".into()], &opts, Arc::new(|_| {})).await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_listed_file_arrives_byte_for_byte_and_one_commit_gives_one_digest() {
    let dst = local_destination();
    let source = Memory::new(model());
    let report = import(&source, &dst.target).await.unwrap();
    assert_eq!((report.files, report.uploaded, report.skipped), (3, 3, 0));
    assert_eq!(report.commit, "0123456789abcdef0123456789abcdef01234567");
    assert_eq!(report.source, "mem://example/model@main");

    let resolved = dst.target.resolve("v1").await.unwrap();
    assert_eq!(resolved.digest, report.digest);
    let notes = &resolved.manifest.annotations;
    assert_eq!(
        notes["org.opencontainers.image.revision"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(
        notes["org.opencontainers.image.source"],
        "https://models.example/example/model"
    );

    // Pulled back: every file the source listed (but the dot-file), every byte.
    let out = tempfile::tempdir().unwrap();
    let folder = out.path().join("model");
    transfer::pull(
        &dst.target,
        "v1",
        &folder,
        &PullOptions::default(),
        Arc::new(|_| {}),
    )
    .await
    .unwrap();
    for (path, body) in model() {
        let placed = folder.join(path);
        if path.starts_with('.') {
            assert!(!placed.exists(), "{path} is a dot-file: push leaves it out");
        } else {
            assert_eq!(std::fs::read(&placed).unwrap(), body, "{path}");
        }
    }

    // The same commit again: nothing sent, the same manifest.
    let again = import(&source, &dst.target).await.unwrap();
    assert_eq!((again.uploaded, again.skipped), (0, 3));
    assert_eq!(again.digest, report.digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_that_are_not_the_listed_ones_are_refused_and_nothing_is_visible() {
    for (liar, in_git) in [("model.safetensors", false), ("config.json", true)] {
        let dst = local_destination();
        let mut source = Memory::new(model());
        source.lie_about = Some(liar);
        if !in_git {
            source.in_git.clear();
        }
        let err = import(&source, &dst.target).await.unwrap_err();
        assert_eq!(
            hoist::error::transfer_code(&err) as i32,
            6,
            "{liar}: a verification failure is exit 6: {err}"
        );
        let message = err.to_string();
        assert!(
            message.contains(liar) && message.contains("mem://example/model@main lists"),
            "{message}"
        );
        assert!(dst.target.resolve("v1").await.is_err(), "{liar}: tagged");
        let served = &source.files.iter().find(|(p, _)| p == liar).unwrap().1;
        let blob = dst
            .target
            .local_store()
            .unwrap()
            .blob_path(&Digest::of_bytes(served));
        assert!(!blob.exists(), "{liar}: the served bytes reached the store");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_longer_than_listed_is_refused() {
    for file in ["config.json", "model.safetensors"] {
        let dst = local_destination();
        let mut source = Memory::new(model());
        source.listed_size = Some((file, 10));
        let err = import(&source, &dst.target).await.unwrap_err();
        assert!(err.to_string().contains(file), "{err}");
        assert!(dst.target.resolve("v1").await.is_err(), "{file}: tagged");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_held_whole_past_the_bound_is_refused_before_anything_is_read() {
    let dst = local_destination();
    let mut files = model();
    files.push(("big.json", vec![b' '; 17 << 20]));
    let mut source = Memory::new(files);
    source.in_git.push("big.json");
    let err = import(&source, &dst.target).await.unwrap_err();
    assert_eq!(hoist::error::transfer_code(&err) as i32, 8, "{err}");
    assert!(err.to_string().contains("big.json"), "{err}");
    assert_eq!(source.opened.load(Ordering::SeqCst), 0, "a file was opened");
    assert!(!dst.store.join("blobs").exists() || dst.target.resolve("v1").await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_selection_that_keeps_nothing_names_what_there_is() {
    let dst = local_destination();
    let source = Memory::new(model());
    let opts = ImportOptions {
        filter: transfer::LayerFilter {
            include: transfer::LayerFilter::globs(&["*.gguf".into()]).unwrap(),
            ..Default::default()
        },
        ..Default::default()
    };
    let err = transfer::import(
        &source,
        &dst.target,
        &["v1".into()],
        &opts,
        Arc::new(|_| {}),
    )
    .await
    .unwrap_err();
    assert_eq!(hoist::error::transfer_code(&err) as i32, 2, "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}
