//! One file of a source brought into the destination: streamed from the source (or, when
//! the destination has it already, read back from there) through a blocking task that
//! hashes it, cuts its chunks and reads its header, and, when the destination lacks it, into
//! the destination's upload. The last piece of an upload is held back until the whole file
//! matches the SHA-256 the source listed, so a registry never completes an upload of other
//! bytes.

use bytes::Bytes;
use sha1::Digest as _;
use tokio::sync::mpsc;

use super::source::{Check, FileReader, ImportError, ImportSource, SourceFile};
use crate::digest::Digest;
use crate::oci::modelpack::LayerKind;
use crate::oci::Descriptor;
use crate::pack::{self, BlobSource, EncodedLayer, ModelFile, WeightFacts};
use crate::transfer::BlobReader;
use crate::transfer::{Action, Event, Observer, Target, TransferError};

use super::look::{Lookers, Seen};
use super::PIPE;

pub struct Ctx<'a> {
    pub source: &'a dyn ImportSource,
    pub commit: &'a str,
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

pub async fn bring(
    ctx: &Ctx<'_>,
    file: &SourceFile,
    model: &ModelFile,
) -> Result<Brought, TransferError> {
    match &file.check {
        Check::Sha256(sha) => bring_streamed(ctx, file, model, sha).await,
        Check::GitBlob(oid) => bring_small(ctx, file, model, oid).await,
    }
}

/// A file kept in git (not LFS): small by the Hub's rules, so read whole, checked against
/// its git blob id, then sent.
async fn bring_small(
    ctx: &Ctx<'_>,
    file: &SourceFile,
    model: &ModelFile,
    expected: &str,
) -> Result<Brought, TransferError> {
    if too_big_to_hold(file) {
        return Err(held_whole(ctx.source, file).into());
    }
    let mut stream = ctx.source.open(ctx.commit, file).await?;
    let mut body = Vec::with_capacity(file.size as usize);
    while let Some(piece) = stream.next().await? {
        if body.len() + piece.len() > file.size as usize {
            return Err(more_than_listed(ctx.source, file).into());
        }
        body.extend_from_slice(&piece);
    }
    let body = Bytes::from(body);
    let oid = git_blob_id(&body);
    if oid != expected {
        return Err(ImportError::Mismatch {
            source_name: ctx.source.describe(),
            path: file.path.clone(),
            expected: format!("git blob {expected}"),
            actual: format!("git blob {oid}"),
        }
        .into());
    }
    let lookers = Lookers::start(model, ctx.chunker);
    lookers.send(&body).await;
    let seen = lookers.finish().await?;
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
        stream.resumed(),
    ))
}

/// A file checked by its git blob id is read whole into memory: one larger than
/// `pack::MAX_SMALL_FILE` is refused.
pub fn too_big_to_hold(file: &SourceFile) -> bool {
    matches!(file.check, Check::GitBlob(_)) && file.size > pack::MAX_SMALL_FILE
}

pub fn held_whole(source: &dyn ImportSource, file: &SourceFile) -> ImportError {
    ImportError::Refused {
        source_name: source.describe(),
        path: file.path.clone(),
        message: format!(
            "{} bytes outside LFS (hoist holds such files in memory, up to {})",
            file.size,
            pack::MAX_SMALL_FILE
        ),
    }
}

fn more_than_listed(source: &dyn ImportSource, file: &SourceFile) -> ImportError {
    ImportError::Refused {
        source_name: source.describe(),
        path: file.path.clone(),
        message: format!("more bytes than the {} it lists", file.size),
    }
}

/// A file with a SHA-256: streamed, checked against it on the way (`feed`).
async fn bring_streamed(
    ctx: &Ctx<'_>,
    file: &SourceFile,
    model: &ModelFile,
    expected: &Digest,
) -> Result<Brought, TransferError> {
    let expected = expected.clone();
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
    let origin = match have {
        true => Origin::Destination(ctx.dst.open_blob(&desc).await?),
        false => Origin::Listed(ctx.source.open(ctx.commit, file).await?),
    };
    let lookers = Lookers::start(model, ctx.chunker);
    let (up_tx, upload) = match have {
        true => (None, None),
        false => {
            let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(PIPE);
            (Some(tx), Some(ctx.dst.put_blob_stream(&desc, rx)))
        }
    };
    let fed = feed(ctx, (file, &expected), origin, lookers, UploadPipe(up_tx));
    let uploading = async move {
        match upload {
            Some(u) => u.await,
            None => Ok(()),
        }
    };
    let (fed, uploaded) = tokio::join!(fed, uploading);
    // A failed download or check is the cause of a failed upload, not the other way round.
    let fed = fed?;
    uploaded?;
    // An upload that stopped reading the file and still succeeded: the registry answered
    // before it had the bytes, and cannot hold them.
    let (seen, resumed) = fed.ok_or_else(|| ImportError::Refused {
        source_name: ctx.dst.describe(),
        path: file.path.clone(),
        message: "the destination accepted the upload before receiving the file".into(),
    })?;
    let action = if have {
        Action::Skipped
    } else {
        Action::Uploaded
    };
    Ok(done(ctx, file, seen, action, None, resumed))
}

/// The upload's end of the pipe, when the destination lacks the file.
struct UploadPipe(Option<mpsc::Sender<std::io::Result<Bytes>>>);

impl UploadPipe {
    /// Hand the upload a piece; `false` when it stopped reading.
    async fn send(&self, piece: Bytes) -> bool {
        match &self.0 {
            Some(tx) => tx.send(Ok(piece)).await.is_ok(),
            None => true,
        }
    }

    /// End the upload in an error: the destination never gets the whole file.
    async fn abort(&self, why: &dyn std::fmt::Display) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(Err(std::io::Error::other(why.to_string()))).await;
        }
    }
}

/// Hand each piece of `origin` to the hashing task and, one piece behind, to the upload;
/// the last piece goes to the upload only once the whole file is the one listed. `None`:
/// the upload stopped reading (its own error says why).
async fn feed(
    ctx: &Ctx<'_>,
    (file, expected): (&SourceFile, &Digest),
    mut origin: Origin,
    lookers: Lookers,
    upload: UploadPipe,
) -> Result<Option<(Seen, u32)>, TransferError> {
    let mut held: Option<Bytes> = None;
    let mut arrived = 0u64;
    while let Some(piece) = origin.next().await? {
        arrived += piece.len() as u64;
        if arrived > file.size {
            // Bounded as it arrives: a source that never stops is not streamed on.
            let e = more_than_listed(ctx.source, file);
            upload.abort(&e).await;
            return Err(e.into());
        }
        progress(ctx, file, piece.len() as u64);
        if !lookers.send(&piece).await {
            break; // a reader stopped: its error says why
        }
        if let Some(previous) = held.replace(piece) {
            if !upload.send(previous).await {
                return Ok(None);
            }
        }
    }
    let seen = match lookers.finish().await {
        Ok(seen) => seen,
        Err(e) => {
            upload.abort(&e).await;
            return Err(e);
        }
    };
    if let Err(e) = the_listed_bytes(ctx.source, file, expected, &seen) {
        upload.abort(&e).await;
        return Err(e.into());
    }
    if let Some(last) = held {
        upload.send(last).await;
    }
    Ok(Some((seen, origin.resumed())))
}

/// Are these the bytes the source lists: its SHA-256, its size?
fn the_listed_bytes(
    source: &dyn ImportSource,
    file: &SourceFile,
    expected: &Digest,
    seen: &Seen,
) -> Result<(), ImportError> {
    if seen.digest == *expected && seen.size == file.size {
        return Ok(());
    }
    Err(ImportError::Mismatch {
        source_name: source.describe(),
        path: file.path.clone(),
        expected: format!("{expected} ({} bytes)", file.size),
        actual: format!("{} ({} bytes)", seen.digest, seen.size),
    })
}

fn done(
    ctx: &Ctx<'_>,
    file: &SourceFile,
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

fn progress(ctx: &Ctx<'_>, file: &SourceFile, bytes: u64) {
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

/// Where a streamed file's bytes come from: the source, or the destination that has it.
enum Origin {
    Listed(Box<dyn FileReader>),
    Destination(BlobReader),
}

impl Origin {
    async fn next(&mut self) -> Result<Option<Bytes>, TransferError> {
        match self {
            Origin::Listed(s) => s.next().await,
            Origin::Destination(b) => b.next().await,
        }
    }

    fn resumed(&self) -> u32 {
        match self {
            Origin::Listed(s) => s.resumed(),
            Origin::Destination(_) => 0,
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
