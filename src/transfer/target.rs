//! A place artifacts live: the local store or a registry repository. The engines are written
//! once against this and work for every pair (push, pull, copy).

use bytes::Bytes;

use super::TransferError;
use crate::digest::Digest;
use crate::oci::{Descriptor, Manifest, ManifestKind, MAX_MANIFEST_BYTES};
use crate::registry::mirrors::Mirror;
use crate::registry::{RegistryClient, UploadBody};
use crate::store::{Holding, Store};

#[derive(Clone)]
pub enum Target {
    Local {
        store: Store,
        repository: String,
    },
    Remote {
        client: RegistryClient,
        repository: String,
        /// Tried before `client` for reads, in order (`--mirror`, the mirrors file). Their
        /// clients fail fast (`RegistryClient::fail_fast`): `client` is behind them.
        mirrors: Vec<Mirror>,
    },
}

/// A reference resolved to an image manifest (following an index to this host's platform).
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Digest of what the reference names (the index, if it was one).
    pub digest: Digest,
    pub manifest: Manifest,
    pub manifest_digest: Digest,
    pub manifest_bytes: Bytes,
    /// The platform whose manifest an index led to (`None`: the reference named a manifest).
    pub platform: Option<crate::oci::Platform>,
}

impl Target {
    /// The manifest's config as JSON when it is small (≤ 1 MiB) JSON whose bytes match its
    /// digest; `null` otherwise (a model's config is informational: its absence is no error).
    pub async fn config_json(&self, manifest: &Manifest) -> serde_json::Value {
        self.small_blob(&manifest.config, 1 << 20)
            .await
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// A blob of at most `limit` bytes, in memory, when it can be read and matches its
    /// digest; `None` otherwise (too large, missing, or other bytes).
    pub async fn small_blob(&self, desc: &Descriptor, limit: u64) -> Option<Vec<u8>> {
        if desc.size > limit {
            return None;
        }
        let bytes = match self {
            Target::Local { store, .. } => store.read_blob(&desc.digest, limit).ok(),
            Target::Remote {
                client, repository, ..
            } => match client.get_blob(repository, &desc.digest, None).await {
                // At most the size the descriptor declares: a server may send more.
                Ok(b) => client.read_content(b.response, desc.size).await,
                Err(_) => None,
            },
        };
        bytes.filter(|b| Digest::of_bytes(b) == desc.digest)
    }

    /// The local store this target is, if it is one.
    pub fn local_store(&self) -> Option<&Store> {
        match self {
            Target::Local { store, .. } => Some(store),
            Target::Remote { .. } => None,
        }
    }

    /// The registry and repository this target is, if it is one.
    pub fn registry(&self) -> Option<(&RegistryClient, &str)> {
        match self {
            Target::Remote {
                client, repository, ..
            } => Some((client, repository)),
            Target::Local { .. } => None,
        }
    }

    /// Where a push's temporary files go: beside a local store (always writable, there even
    /// in a scratch image with no /tmp); the temporary folder for a registry.
    pub fn scratch_parent(&self) -> std::path::PathBuf {
        match self {
            Target::Local { store, .. } => store.root().to_path_buf(),
            Target::Remote { .. } => std::env::temp_dir(),
        }
    }

    /// The same target without its mirrors: what the registry itself answers.
    pub fn without_mirrors(self) -> Target {
        match self {
            Target::Remote {
                client, repository, ..
            } => Target::Remote {
                client,
                repository,
                mirrors: Vec::new(),
            },
            local => local,
        }
    }

    /// The repository `other` is, when both are repositories of one registry: a blob may
    /// be mounted from it, with no byte sent.
    pub fn same_registry_as<'o>(&self, other: &'o Target) -> Option<&'o str> {
        match (self, other) {
            (
                Target::Remote { client, .. },
                Target::Remote {
                    client: from,
                    repository,
                    ..
                },
            ) if client.registry() == from.registry() => Some(repository),
            _ => None,
        }
    }

    /// The name a policy's patterns match: `REGISTRY/REPOSITORY` with the registry in its
    /// one canonical spelling (the repository alone for the local store), so `LOCALHOST:05930`
    /// or `127.1:5930` meet the rules written for `127.0.0.1:5930`.
    pub fn policy_name(&self) -> String {
        match self {
            Target::Local { repository, .. } => repository.clone(),
            Target::Remote {
                client, repository, ..
            } => format!(
                "{}/{repository}",
                crate::reference::canonical_registry(client.registry())
            ),
        }
    }

    /// A registry (not the local store).
    pub fn is_remote(&self) -> bool {
        matches!(self, Target::Remote { .. })
    }

    /// A registry reached without mirrors: what it is asked, it answers itself.
    pub fn is_direct(&self) -> bool {
        matches!(self, Target::Remote { mirrors, .. } if mirrors.is_empty())
    }

    pub fn repository(&self) -> &str {
        match self {
            Target::Local { repository, .. } | Target::Remote { repository, .. } => repository,
        }
    }

    /// `reference` (a tag or digest) in full, as a user writes it: `host/repo:tag`,
    /// `host/repo@sha256:…`, or `repo:tag` for the local store.
    pub fn name_of(&self, reference: &str) -> String {
        let sep = if reference.parse::<Digest>().is_ok() {
            '@'
        } else {
            ':'
        };
        match self {
            Target::Local { repository, .. } => format!("{repository}{sep}{reference}"),
            Target::Remote {
                client, repository, ..
            } => format!("{}/{repository}{sep}{reference}", client.registry()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Local { repository, .. } => format!("local store {repository}"),
            Target::Remote {
                client, repository, ..
            } => format!("{}/{repository}", client.registry()),
        }
    }

    /// Where the blob or manifest `key` (a digest) can be read from: mirrors first (each
    /// mirror's replicas with the key's home first), then the registry itself.
    pub fn sources(&self, key: &str) -> Vec<super::fetch::Source> {
        match self {
            Target::Local { .. } => Vec::new(),
            Target::Remote {
                client,
                repository,
                mirrors,
            } => mirrors
                .iter()
                .flat_map(|m| m.order_for(key))
                .chain(std::iter::once(client))
                .map(|c| super::fetch::Source {
                    client: c.clone(),
                    repository: repository.clone(),
                })
                .collect(),
        }
    }

    /// A manifest document by tag or digest: (media type, bytes, digest).
    pub async fn fetch_manifest(
        &self,
        reference: &str,
    ) -> Result<(String, Bytes, Digest), TransferError> {
        match self {
            Target::Remote {
                client,
                repository,
                mirrors,
            } => {
                for mirror in mirrors.iter().flat_map(|m| m.order_for(reference)) {
                    match mirror.get_manifest(repository, reference).await {
                        Ok(found) => return Ok(found),
                        Err(e) => tracing::warn!(
                            "mirror {} failed for {repository}:{reference} ({e}); trying the next",
                            mirror.registry()
                        ),
                    }
                }
                Ok(client.get_manifest(repository, reference).await?)
            }
            Target::Local { store, repository } => {
                let (digest, media_type) = match reference.parse::<Digest>() {
                    Ok(d) => (d, None),
                    Err(_) => {
                        let d = store.resolve(repository, reference)?;
                        (d.digest, Some(d.media_type))
                    }
                };
                if store.blob_size(&digest).is_none() {
                    return Err(crate::store::StoreError::NotFound {
                        reference: format!("{repository}@{digest}"),
                        root: store.root().to_path_buf(),
                    }
                    .into());
                }
                let bytes = Bytes::from(store.read_blob(&digest, MAX_MANIFEST_BYTES)?);
                Ok((media_type.unwrap_or_default(), bytes, digest))
            }
        }
    }

    /// Resolve a tag or digest to an image manifest (this host's, from an index).
    pub async fn resolve(&self, reference: &str) -> Result<Resolved, TransferError> {
        self.resolve_on(reference, None).await
    }

    /// Resolve a tag or digest to an image manifest; from an index, `platform`'s (this
    /// host's when `None`).
    pub async fn resolve_on(
        &self,
        reference: &str,
        platform: Option<&crate::oci::Platform>,
    ) -> Result<Resolved, TransferError> {
        let (media_type, bytes, digest) = self.fetch_manifest(reference).await?;
        if let Ok(expected) = reference.parse::<Digest>() {
            verify_manifest(&expected, &digest)?;
        }
        match ManifestKind::parse(Some(&media_type), &bytes)? {
            ManifestKind::Image(manifest) => Ok(Resolved {
                manifest_digest: digest.clone(),
                digest,
                manifest: *manifest,
                manifest_bytes: bytes,
                platform: None,
            }),
            ManifestKind::Index(index) => {
                let name = || format!("{}:{reference}", self.repository());
                let child = index
                    .select(platform)
                    .map_err(|why| TransferError::AmbiguousPlatform(format!("{}: {why}", name())))?
                    .ok_or_else(|| TransferError::NoPlatform(name()))?;
                let picked = child.platform.clone();
                let (child_type, child_bytes, child_digest) =
                    self.fetch_manifest(child.digest.as_str()).await?;
                verify_manifest(&child.digest, &child_digest)?;
                let media = if child_type.is_empty() {
                    child.media_type.clone()
                } else {
                    child_type
                };
                match ManifestKind::parse(Some(&media), &child_bytes)? {
                    ManifestKind::Image(manifest) => Ok(Resolved {
                        digest,
                        manifest: *manifest,
                        manifest_digest: child_digest,
                        manifest_bytes: child_bytes,
                        platform: picked,
                    }),
                    ManifestKind::Index(_) => Err(crate::oci::OciError::UnsupportedMediaType(
                        "nested index".into(),
                    )
                    .into()),
                }
            }
        }
    }

    pub async fn has_blob(&self, desc: &Descriptor) -> Result<bool, TransferError> {
        match self {
            Target::Local { store, .. } => Ok(store.blob_size(&desc.digest) == Some(desc.size)),
            Target::Remote {
                client, repository, ..
            } => Ok(client
                .blob_exists(repository, &desc.digest)
                .await?
                .is_some()),
        }
    }

    /// Mount `desc` into this repository from the first of `repositories` (of the same
    /// registry) that holds it. `false` for a local store, or when none would.
    pub async fn mount_from_any(
        &self,
        desc: &Descriptor,
        repositories: &[String],
    ) -> Result<bool, TransferError> {
        let Target::Remote {
            client, repository, ..
        } = self
        else {
            return Ok(false);
        };
        for from in repositories.iter().filter(|r| *r != repository) {
            if client.mount_blob(repository, &desc.digest, from).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Store a blob whose bytes are in a local file or in memory.
    pub async fn put_blob(
        &self,
        desc: &Descriptor,
        source: &crate::pack::BlobSource,
        chunk_size: Option<u64>,
    ) -> Result<(), TransferError> {
        use crate::pack::BlobSource;
        match self {
            Target::Remote {
                client, repository, ..
            } => {
                let body = match source {
                    BlobSource::File(p) => UploadBody::File(p.clone()),
                    BlobSource::Bytes(b) => UploadBody::Bytes(b.clone()),
                };
                Ok(client
                    .upload_blob(repository, desc, body, chunk_size)
                    .await?)
            }
            Target::Local { store, .. } => {
                let (store, desc, source) = (store.clone(), desc.clone(), source.clone());
                tokio::task::spawn_blocking(move || match source {
                    BlobSource::File(p) => store.put_file(&desc, &p).map(drop),
                    BlobSource::Bytes(b) => store.put_bytes(&desc, &b).map(drop),
                })
                .await
                .expect("store task does not panic")?;
                Ok(())
            }
        }
    }

    /// Store a manifest document under a tag (or only by digest when `tag` is `None`).
    pub async fn put_manifest(
        &self,
        tag: Option<&str>,
        media_type: &str,
        bytes: &Bytes,
    ) -> Result<(), TransferError> {
        let digest = Digest::of_bytes(bytes);
        match self {
            Target::Remote {
                client, repository, ..
            } => {
                let reference = tag.map_or_else(|| digest.to_string(), str::to_string);
                Ok(client
                    .put_manifest(repository, &reference, media_type, bytes.clone())
                    .await?)
            }
            Target::Local { store, repository } => {
                let reference = tag.map_or_else(|| digest.to_string(), str::to_string);
                store.put_manifest(repository, &reference, media_type, bytes, Holding::Stored)?;
                Ok(())
            }
        }
    }
}

/// Referrers and blobs as streams: what the engines that index, copy and import need of a
/// target beyond whole blobs.
impl Target {
    /// The referrers of `subject` as the target indexes them: the store's index, or the
    /// registry's referrers API; `None` when the registry has no such API (the caller falls
    /// back to the `sha256-…` tag).
    pub async fn indexed_referrers(
        &self,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Vec<Descriptor>>, TransferError> {
        match self {
            Target::Local { store, .. } => Ok(Some(store.referrers(subject)?)),
            Target::Remote {
                client, repository, ..
            } => Ok(client.referrers(repository, subject, artifact_type).await?),
        }
    }

    /// The first `n` bytes of a blob (at most its size): a ranged read; the answer of a
    /// registry that ignores the range is cut after `n`.
    pub async fn read_blob_prefix(
        &self,
        desc: &Descriptor,
        n: u64,
    ) -> Result<Vec<u8>, TransferError> {
        let n = n.min(desc.size);
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(n as usize);
        let mut blob = match self {
            Target::Local { store, .. } => {
                use std::os::unix::fs::FileExt;
                let path = store.blob_path(&desc.digest);
                let file = std::fs::File::open(&path).map_err(TransferError::io(&path))?;
                out.resize(n as usize, 0);
                file.read_exact_at(&mut out, 0)
                    .map_err(TransferError::io(&path))?;
                return Ok(out);
            }
            Target::Remote {
                client, repository, ..
            } => {
                client
                    .get_blob(repository, &desc.digest, Some((0, n - 1)))
                    .await?
                    .response
            }
        };
        while (out.len() as u64) < n {
            let Some(piece) =
                blob.chunk()
                    .await
                    .map_err(|e| crate::registry::RegistryError::Transfer {
                        registry: self.describe(),
                        context: "reading the start of a blob".into(),
                        detail: crate::registry::error_chain(&e),
                    })?
            else {
                return Err(TransferError::Refused(format!(
                    "{}: the registry sent {} of the first {n} bytes",
                    desc.digest,
                    out.len()
                )));
            };
            let room = n as usize - out.len();
            out.extend_from_slice(&piece[..piece.len().min(room)]);
        }
        Ok(out)
    }

    /// A blob the target holds, to be read a piece at a time.
    pub async fn open_blob(&self, desc: &Descriptor) -> Result<BlobReader, TransferError> {
        match self {
            Target::Remote {
                client, repository, ..
            } => Ok(BlobReader::Registry(
                client.registry().to_string(),
                client
                    .get_blob(repository, &desc.digest, None)
                    .await?
                    .response,
            )),
            Target::Local { store, .. } => {
                let path = store.blob_path(&desc.digest);
                std::fs::File::open(&path)
                    .map(BlobReader::Local)
                    .map_err(TransferError::io(path))
            }
        }
    }

    /// Store as one blob what `rx` brings: a streaming PUT to a registry (which checks the
    /// digest), or a verified file in the local store. A piece that is an error fails it.
    pub async fn put_blob_stream(
        &self,
        desc: &Descriptor,
        mut rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> Result<(), TransferError> {
        match self {
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
                    store
                        .put_reader(&desc, ChannelReader::new(rx), &name)
                        .map(drop)
                })
                .await
                .expect("the store task does not panic")?;
                Ok(())
            }
        }
    }
}

/// A blob's bytes from a registry or the local store, a piece at a time.
pub enum BlobReader {
    Registry(String, reqwest::Response),
    Local(std::fs::File),
}

impl BlobReader {
    /// The next piece; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, TransferError> {
        match self {
            BlobReader::Registry(registry, r) => r.chunk().await.map_err(|e| {
                crate::registry::RegistryError::Transfer {
                    registry: registry.clone(),
                    context: "reading back a blob it has".into(),
                    detail: crate::registry::error_chain(&e),
                }
                .into()
            }),
            BlobReader::Local(f) => {
                use std::io::Read;
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
}

/// The pieces of a channel as a blocking reader (a piece that is an error fails the read).
pub(crate) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>) -> ChannelReader {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl std::io::Read for ChannelReader {
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

fn verify_manifest(expected: &Digest, actual: &Digest) -> Result<(), TransferError> {
    if expected != actual {
        return Err(TransferError::DigestMismatch {
            what: "manifest".into(),
            expected: expected.clone(),
            actual: actual.clone(),
            size: 0,
        });
    }
    Ok(())
}
