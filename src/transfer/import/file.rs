//! One file of a Hub repository brought into the destination: streamed from the Hub (or,
//! when the destination has it already, read back from there) through a blocking task that
//! hashes it, cuts its chunks and reads its header, and, when the destination lacks it, into
//! the destination's upload. The last piece of an upload is held back until the whole file
//! matches the Hub's SHA-256, so a registry never completes an upload of other bytes.

use std::io::Read;

use bytes::Bytes;
use sha1::Digest as _;
use tokio::sync::mpsc;

use crate::digest::Digest;
use crate::hub::{FileStream, HubClient, HubError, HubFile};
use crate::oci::modelpack::LayerKind;
use crate::oci::Descriptor;
use crate::pack::{self, BlobSource, EncodedLayer, ModelFile, WeightFacts};
use crate::registry::UploadBody;
use crate::transfer::{Action, Event, Observer, Target, TransferError};

/// Pieces in flight between the download, the hashing task and the upload, each way: with
/// the pieces hyper hands over (≤ 64 KiB or so), a few MiB per file at most.
const PIPE: usize = 32;

pub struct Ctx<'a> {
    pub hub: &'a HubClient,
    pub url: url::Url,
    pub dst: &'a Target,
    pub observer: &'a Observer,
    /// The chunker for the chunk index, when one is made.
    pub chunker: Option<&'static str>,
}

/// A file in the destination, and what its bytes said.
pub struct Brought {
    pub path: String,
    pub layer: EncodedLayer,
    pub action: Action,
    pub facts: Option<WeightFacts>,
    /// The bytes of a small root file that describes the model (`config.json`, the card).
    pub small: Option<Bytes>,
    pub resumed: u32,
}

/// What the hashing task found in one file's bytes.
struct Seen {
    digest: Digest,
    size: u64,
    chunks: Option<crate::chunks::ChunkList>,
    facts: Option<WeightFacts>,
}

pub async fn bring(
    ctx: &Ctx<'_>,
    file: &HubFile,
    model: &ModelFile,
) -> Result<Brought, TransferError> {
    match &file.lfs_sha256 {
        Some(sha) => bring_lfs(ctx, file, model, sha).await,
        None => bring_small(ctx, file, model).await,
    }
}

/// A git (non-LFS) file: small by the Hub's rules, so read whole, checked against its git
/// blob id, then sent.
async fn bring_small(
    ctx: &Ctx<'_>,
    file: &HubFile,
    model: &ModelFile,
) -> Result<Brought, TransferError> {
    if file.size > pack::MAX_SMALL_FILE {
        return Err(outside_lfs(file).into());
    }
    let mut stream = FileStream::new(ctx.hub.clone(), ctx.url.clone(), file.clone());
    let mut body = Vec::with_capacity(file.size as usize);
    while let Some(piece) = stream.next().await? {
        body.extend_from_slice(&piece);
    }
    let body = Bytes::from(body);
    let oid = git_blob_id(&body);
    if oid != file.oid {
        return Err(HubError::Mismatch {
            path: file.path.clone(),
            expected: format!("git blob {}", file.oid),
            actual: format!("git blob {oid}"),
        }
        .into());
    }
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.send(Ok(body.clone())).await;
    drop(tx);
    let seen = look(rx, model.clone(), ctx.chunker).await?;
    let desc = Descriptor::new(media_type(model), seen.digest.clone(), seen.size);
    let action = if ctx.dst.has_blob(&desc).await? {
        Action::Skipped
    } else {
        ctx.dst
            .put_blob(&desc, &BlobSource::Bytes(body.clone()), None)
            .await?;
        Action::Uploaded
    };
    progress(ctx, file, seen.size);
    let describes = file.path == "config.json" || file.path.eq_ignore_ascii_case("README.md");
    Ok(done(
        ctx,
        file,
        seen,
        action,
        describes.then_some(body),
        stream.resumed,
    ))
}

/// A file outside LFS is read whole into memory: one larger than this is refused.
pub fn outside_lfs(file: &HubFile) -> HubError {
    HubError::Invalid {
        what: file.path.clone(),
        message: format!(
            "{} bytes outside LFS (hoist holds such files in memory, up to {})",
            file.size,
            pack::MAX_SMALL_FILE
        ),
    }
}

/// An LFS file: streamed, checked against the Hub's SHA-256 on the way.
async fn bring_lfs(
    ctx: &Ctx<'_>,
    file: &HubFile,
    model: &ModelFile,
    sha: &str,
) -> Result<Brought, TransferError> {
    let expected: Digest = format!("sha256:{sha}")
        .parse()
        .expect("a checked SHA-256 is a digest");
    let desc = Descriptor::new(media_type(model), expected.clone(), file.size);
    let have = ctx.dst.has_blob(&desc).await?;
    if have && ctx.chunker.is_none() && model.kind != LayerKind::Weight {
        // Neither chunks nor a header wanted: the destination's blob is all there is to it.
        let seen = Seen {
            digest: expected,
            size: file.size,
            chunks: None,
            facts: None,
        };
        return Ok(done(ctx, file, seen, Action::Skipped, None, 0));
    }
    let mut source = match have {
        true => Source::read_back(ctx.dst, &desc).await?,
        false => Source::Hub(Box::new(FileStream::new(
            ctx.hub.clone(),
            ctx.url.clone(),
            file.clone(),
        ))),
    };
    let (cut_tx, cut_rx) = mpsc::channel(PIPE);
    let looking = look(cut_rx, model.clone(), ctx.chunker);
    let (up_tx, upload) = match have {
        true => (None, None),
        false => {
            let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(PIPE);
            (Some(tx), Some(upload_stream(ctx.dst, &desc, rx)))
        }
    };
    let feed = async move {
        let mut held: Option<Bytes> = None;
        while let Some(piece) = source.next().await? {
            progress(ctx, file, piece.len() as u64);
            if cut_tx.send(Ok(piece.clone())).await.is_err() {
                break; // the hashing task stopped: its error says why
            }
            if let Some(tx) = &up_tx {
                if let Some(previous) = held.replace(piece) {
                    if tx.send(Ok(previous)).await.is_err() {
                        return Ok::<_, TransferError>(None); // the upload failed: its error says why
                    }
                }
            }
        }
        drop(cut_tx);
        let seen = looking.await?;
        if let Err(e) = the_hubs_bytes(file, &expected, &seen) {
            // The upload ends in an error: the registry never gets the whole file.
            if let Some(tx) = &up_tx {
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
            }
            return Err(e.into());
        }
        if let (Some(tx), Some(last)) = (&up_tx, held) {
            let _ = tx.send(Ok(last)).await;
        }
        Ok(Some((seen, source.resumed())))
    };
    let uploading = async move {
        match upload {
            Some(u) => u.await,
            None => Ok(()),
        }
    };
    let (fed, uploaded) = tokio::join!(feed, uploading);
    // A failed download or check is the cause of a failed upload, not the other way round.
    let fed = fed?;
    uploaded?;
    // An upload that stopped reading the file and still succeeded: the registry answered
    // before it had the bytes, and cannot hold them.
    let (seen, resumed) = fed.ok_or_else(|| HubError::Invalid {
        what: file.path.clone(),
        message: format!(
            "{} accepted the upload before receiving the file",
            ctx.dst.describe()
        ),
    })?;
    let action = if have {
        Action::Skipped
    } else {
        Action::Uploaded
    };
    Ok(done(ctx, file, seen, action, None, resumed))
}

/// Are these the bytes the Hub lists: its SHA-256, its size?
fn the_hubs_bytes(file: &HubFile, expected: &Digest, seen: &Seen) -> Result<(), HubError> {
    if seen.digest == *expected && seen.size == file.size {
        return Ok(());
    }
    Err(HubError::Mismatch {
        path: file.path.clone(),
        expected: format!("{expected} ({} bytes)", file.size),
        actual: format!("{} ({} bytes)", seen.digest, seen.size),
    })
}

fn done(
    ctx: &Ctx<'_>,
    file: &HubFile,
    seen: Seen,
    action: Action,
    small: Option<Bytes>,
    resumed: u32,
) -> Brought {
    (ctx.observer)(&Event::Done {
        name: file.path.clone(),
        digest: seen.digest.clone(),
        size: seen.size,
        action,
    });
    Brought {
        path: file.path.clone(),
        layer: EncodedLayer {
            diff_id: seen.digest.clone(),
            digest: seen.digest,
            size: seen.size,
            // The blob is in the destination already; nothing sends it again.
            source: BlobSource::Bytes(Bytes::new()),
            chunks: seen.chunks,
        },
        action,
        facts: seen.facts,
        small,
        resumed,
    }
}

fn progress(ctx: &Ctx<'_>, file: &HubFile, bytes: u64) {
    (ctx.observer)(&Event::Progress {
        name: file.path.clone(),
        bytes,
    });
}

fn media_type(model: &ModelFile) -> String {
    crate::oci::modelpack::layer_media_type(model.kind, crate::oci::LayerFormat::Raw)
}

/// `git hash-object`: SHA-1 of `blob <size>\0` and the content.
fn git_blob_id(content: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", content.len()).as_bytes());
    h.update(content);
    hex::encode(h.finalize())
}

/// Hash, cut and read the header of the pieces `rx` brings, on a blocking thread started
/// now (the pieces are sent before the result is awaited).
fn look(
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    model: ModelFile,
    chunker: Option<&'static str>,
) -> impl std::future::Future<Output = Result<Seen, TransferError>> {
    let path = model.relative.clone();
    let task = tokio::task::spawn_blocking(move || {
        let mut reader = Pieces::new(rx);
        if model.kind != LayerKind::Weight {
            return finish(reader, &model, chunker, None);
        }
        // The header is read first, kept, and read again by the hashing that follows.
        let mut head = Recording::new(&mut reader, pack::MAX_HEADER_READ);
        let facts = pack::weight_facts(&model.relative, &mut head, model.size);
        let seen = head.seen;
        finish(
            std::io::Cursor::new(seen).chain(reader),
            &model,
            chunker,
            facts,
        )
    });
    async move {
        task.await
            .expect("the hashing task does not panic")
            .map_err(|source| TransferError::Io {
                path: path.into(),
                source,
            })
    }
}

fn finish(
    reader: impl Read,
    model: &ModelFile,
    chunker: Option<&'static str>,
    facts: Option<WeightFacts>,
) -> std::io::Result<Seen> {
    let mut counted = Counted {
        inner: reader,
        n: 0,
    };
    let (digest, chunks) = match chunker {
        Some(chunker) => {
            let (digest, chunks) = crate::chunks::digest_and_chunks_of(
                &mut counted,
                model.size,
                chunker,
                crate::chunks::ChunkHash::NEW,
            )?;
            (digest, Some(crate::chunks::listed(chunks)))
        }
        None => {
            let mut hasher = crate::digest::Hasher::new();
            std::io::copy(&mut counted, &mut hasher)?;
            (hasher.finish(), None)
        }
    };
    Ok(Seen {
        digest,
        size: counted.n,
        chunks,
        facts,
    })
}

struct Counted<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// The pieces of a channel as a blocking reader (a piece that is an error fails the read).
struct Pieces {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl Pieces {
    fn new(rx: mpsc::Receiver<std::io::Result<Bytes>>) -> Pieces {
        Pieces {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(piece) => self.current = piece?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// A reader that keeps what it reads (a header, read again for hashing), up to a bound.
struct Recording<'r, R> {
    inner: &'r mut R,
    seen: Vec<u8>,
    limit: u64,
}

impl<'r, R: Read> Recording<'r, R> {
    fn new(inner: &'r mut R, limit: u64) -> Self {
        Recording {
            inner,
            seen: Vec::new(),
            limit,
        }
    }
}

impl<R: Read> Read for Recording<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let room = self.limit.saturating_sub(self.seen.len() as u64) as usize;
        if room == 0 {
            return Err(std::io::Error::other("header larger than the bound read"));
        }
        let want = buf.len().min(room);
        let n = self.inner.read(&mut buf[..want])?;
        self.seen.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// Where an LFS file's bytes come from: the Hub, or the destination that has it.
enum Source {
    Hub(Box<FileStream>),
    Registry(String, reqwest::Response),
    Local(std::fs::File),
}

impl Source {
    async fn read_back(dst: &Target, desc: &Descriptor) -> Result<Source, TransferError> {
        match dst {
            Target::Remote {
                client, repository, ..
            } => Ok(Source::Registry(
                client.registry().to_string(),
                client
                    .get_blob(repository, &desc.digest, None)
                    .await?
                    .response,
            )),
            Target::Local { store, .. } => {
                let path = store.blob_path(&desc.digest);
                std::fs::File::open(&path)
                    .map(Source::Local)
                    .map_err(TransferError::io(path))
            }
        }
    }

    async fn next(&mut self) -> Result<Option<Bytes>, TransferError> {
        match self {
            Source::Hub(s) => Ok(s.next().await?),
            Source::Registry(registry, r) => r.chunk().await.map_err(|e| {
                crate::registry::RegistryError::Transfer {
                    registry: registry.clone(),
                    context: "reading back a blob it has".into(),
                    detail: crate::registry::error_chain(&e),
                }
                .into()
            }),
            Source::Local(f) => {
                let mut buf = vec![0u8; 1 << 20];
                let n = tokio::task::block_in_place(|| f.read(&mut buf)).map_err(|source| {
                    TransferError::Io {
                        path: "store blob".into(),
                        source,
                    }
                })?;
                buf.truncate(n);
                Ok((n > 0).then(|| Bytes::from(buf)))
            }
        }
    }

    fn resumed(&self) -> u32 {
        match self {
            Source::Hub(s) => s.resumed,
            _ => 0,
        }
    }
}

/// Send what `rx` brings as one blob: a streaming PUT to a registry (which checks the
/// digest as well), or a verified file in the local store.
async fn upload_stream(
    dst: &Target,
    desc: &Descriptor,
    mut rx: mpsc::Receiver<std::io::Result<Bytes>>,
) -> Result<(), TransferError> {
    match dst {
        Target::Remote {
            client, repository, ..
        } => {
            let pieces = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            let body = reqwest::Body::wrap_stream(pieces);
            Ok(client
                .upload_blob(repository, desc, UploadBody::Stream(body), None)
                .await?)
        }
        Target::Local { store, .. } => {
            let (store, desc) = (store.clone(), desc.clone());
            tokio::task::spawn_blocking(move || {
                let name = std::path::PathBuf::from(desc.digest.as_str());
                store.put_reader(&desc, Pieces::new(rx), &name).map(drop)
            })
            .await
            .expect("the store task does not panic")?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn git_blob_ids_are_gits() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            super::git_blob_id(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }
}
