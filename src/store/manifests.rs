//! The one way a manifest enters the store, for a local push or copy, a client pushing to
//! `hoist serve`, and a pull-through cache filling itself: check the document, store it,
//! link it to its repository, tag it, and index it as a referrer of its subject.

use super::{LinkKind, Store, StoreError};
use crate::digest::Digest;
use crate::oci::{media, Descriptor, ManifestKind};

/// What the blobs a manifest names must be when it is put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// Each already linked to the repository (the distribution API: a client pushes the
    /// blobs into a repository before the manifest that names them).
    Linked,
    /// Each in the store; they are linked to the repository with the manifest (a local push
    /// or copy, whose blobs were written straight into the store).
    Stored,
    /// Fetched later, when asked for (a pull-through cache stores a manifest first).
    Later,
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestRejected {
    #[error("the manifest is not valid: {0}")]
    Invalid(String),
    #[error("the manifest hashes to {actual}, not {expected}")]
    Digest { expected: Digest, actual: Digest },
    #[error("blob {0} is not here; push it first")]
    BlobUnknown(Digest),
}

/// A manifest that was put.
#[derive(Debug, Clone)]
pub struct PutManifest {
    pub descriptor: Descriptor,
    /// The subject it was indexed under as a referrer.
    pub subject: Option<Digest>,
}

/// The media type to store a manifest under: the declared one, else what the document says.
pub fn manifest_media_type(declared: &str, bytes: &[u8]) -> String {
    if !declared.is_empty() {
        return declared.to_string();
    }
    match ManifestKind::parse(None, bytes) {
        Ok(ManifestKind::Index(i)) => i.media_type.unwrap_or_else(|| media::OCI_INDEX.into()),
        Ok(ManifestKind::Image(m)) => m.media_type().to_string(),
        Err(_) => media::OCI_MANIFEST.into(),
    }
}

impl Store {
    /// Put the manifest `bytes` into `repository` under `reference` (a tag, or the digest
    /// the bytes must hash to). `declared`: the media type the sender gave ("" if none).
    pub fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        declared: &str,
        bytes: &[u8],
        holding: Holding,
    ) -> Result<PutManifest, StoreError> {
        let reject = |r: ManifestRejected| StoreError::Manifest(r);
        // A pull-through cache keeps what its upstream serves, even a kind of manifest hoist
        // does not read (its clients may): it only cannot check its blobs or subject.
        let parsed = match ManifestKind::parse((!declared.is_empty()).then_some(declared), bytes) {
            Ok(parsed) => Some(parsed),
            Err(_) if holding == Holding::Later => None,
            Err(e) => return Err(reject(ManifestRejected::Invalid(e.to_string()))),
        };
        let digest = Digest::of_bytes(bytes);
        let by_digest = reference.parse::<Digest>().ok();
        if let Some(expected) = by_digest.clone().filter(|e| *e != digest) {
            return Err(reject(ManifestRejected::Digest {
                expected,
                actual: digest,
            }));
        }
        let named: Vec<(LinkKind, &Descriptor)> = match &parsed {
            Some(ManifestKind::Image(m)) => m.blobs().map(|d| (LinkKind::Blob, d)).collect(),
            Some(ManifestKind::Index(i)) => i
                .manifests
                .iter()
                .map(|d| (LinkKind::Manifest, d))
                .collect(),
            None => Vec::new(),
        };
        for (kind, d) in &named {
            let present = self.blob_size(&d.digest).is_some();
            let ok = match holding {
                Holding::Linked => present && self.is_linked(repository, *kind, &d.digest),
                Holding::Stored => present,
                Holding::Later => true,
            };
            if !ok {
                return Err(reject(ManifestRejected::BlobUnknown(d.digest.clone())));
            }
        }
        let desc = Descriptor::new(
            manifest_media_type(declared, bytes),
            digest.clone(),
            bytes.len() as u64,
        );
        if self.blob_size(&digest).is_none() {
            self.put_bytes(&desc, bytes)?;
        }
        match holding {
            // The repository now holds the manifest and what it names: `hoist serve` serves
            // a repository only what it holds.
            Holding::Stored => self.link_closure(repository, &digest)?,
            Holding::Linked | Holding::Later => {
                self.link(repository, LinkKind::Manifest, &digest)?
            }
        }
        if by_digest.is_none() {
            self.tag(repository, reference, &desc)?;
        }
        let subject = match &parsed {
            Some(parsed) => self.index_subject(parsed, &desc)?,
            None => None,
        };
        Ok(PutManifest {
            descriptor: desc,
            subject,
        })
    }

    /// Images and indexes alike may name a subject: list them as its referrers.
    fn index_subject(
        &self,
        parsed: &ManifestKind,
        desc: &Descriptor,
    ) -> Result<Option<Digest>, StoreError> {
        let about = match parsed {
            ManifestKind::Image(m) => m.subject.as_ref().map(|s| {
                let kind = m
                    .artifact_type
                    .clone()
                    .unwrap_or_else(|| m.config.media_type.clone());
                (s, kind, m.annotations.clone())
            }),
            ManifestKind::Index(i) => i.subject.as_ref().map(|s| {
                let kind = i.artifact_type.clone().unwrap_or_default();
                (s, kind, i.annotations.clone())
            }),
        };
        let Some((subject, artifact_type, annotations)) = about else {
            return Ok(None);
        };
        let mut referrer = desc.clone();
        referrer.artifact_type = (!artifact_type.is_empty()).then_some(artifact_type);
        referrer.annotations = annotations;
        self.add_referrer(&subject.digest, &referrer)?;
        Ok(Some(subject.digest.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_naming(layer: &Descriptor) -> Vec<u8> {
        let config = Descriptor::new(media::OCI_EMPTY, Digest::of_bytes(b"{}"), 2);
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": config,
            "layers": [layer],
        }))
        .unwrap()
    }

    #[test]
    fn each_holding_rule_refuses_what_it_must() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let config = Descriptor::new(media::OCI_EMPTY, Digest::of_bytes(b"{}"), 2);
        store.put_bytes(&config, b"{}").unwrap();
        let layer = Descriptor::new("application/octet-stream", Digest::of_bytes(b"w"), 1);
        let bytes = manifest_naming(&layer);
        let unknown = |r: Result<PutManifest, StoreError>| {
            matches!(
                r,
                Err(StoreError::Manifest(ManifestRejected::BlobUnknown(_)))
            )
        };
        // The layer is nowhere: only a pull-through cache may store the manifest.
        assert!(unknown(store.put_manifest(
            "r",
            "v1",
            "",
            &bytes,
            Holding::Stored
        )));
        assert!(unknown(store.put_manifest(
            "r",
            "v1",
            "",
            &bytes,
            Holding::Linked
        )));
        store.put_bytes(&layer, b"w").unwrap();
        // In the store but not linked to "r": a client of the server must push it there.
        assert!(unknown(store.put_manifest(
            "r",
            "v1",
            "",
            &bytes,
            Holding::Linked
        )));
        let put = store
            .put_manifest("r", "v1", "", &bytes, Holding::Stored)
            .unwrap();
        assert!(store.is_linked("r", LinkKind::Blob, &layer.digest));
        assert_eq!(
            store.resolve("r", "v1").unwrap().digest,
            put.descriptor.digest
        );
        // Now linked: the server's rule passes too. A digest reference must match.
        store
            .put_manifest("r", "v2", "", &bytes, Holding::Linked)
            .unwrap();
        let wrong = Digest::of_bytes(b"other").to_string();
        assert!(matches!(
            store.put_manifest("r", &wrong, "", &bytes, Holding::Stored),
            Err(StoreError::Manifest(ManifestRejected::Digest { .. }))
        ));
        assert!(matches!(
            store.put_manifest("r", "v3", "", b"not json", Holding::Stored),
            Err(StoreError::Manifest(ManifestRejected::Invalid(_)))
        ));
        // A pull-through cache keeps a manifest it cannot read, by its digest.
        let odd = br#"{"schemaVersion":1,"name":"x"}"#;
        let kept = store
            .put_manifest(
                "r",
                "v4",
                "application/vnd.example+json",
                odd,
                Holding::Later,
            )
            .unwrap();
        assert_eq!(kept.descriptor.digest, Digest::of_bytes(odd));
    }
}
