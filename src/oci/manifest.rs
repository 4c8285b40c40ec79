//! Descriptors, image manifests and indexes, serialised in a fixed field order so that the
//! same content always yields the same bytes and therefore the same digest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{media, OciError};
use crate::digest::Digest;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            artifact_type: None,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// Bytes in the canonical form we push: compact JSON in the struct's field order.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifest serialises")
    }
    /// Every blob the manifest references (config first, then layers).
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }
    pub fn media_type(&self) -> &str {
        self.media_type.as_deref().unwrap_or(media::OCI_MANIFEST)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Platform {
    /// This host's platform, as OCI names it (`linux/amd64`, `linux/arm64`).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            architecture: architecture.into(),
            os: "linux".into(),
            variant: None,
        }
    }

    /// `os/architecture[/variant]`, as `--platform` takes it.
    pub fn parse(text: &str) -> Option<Platform> {
        let mut parts = text.split('/');
        let (os, architecture) = (parts.next()?, parts.next()?);
        let variant = parts.next().map(String::from);
        let name_ok =
            |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
        (parts.next().is_none()
            && name_ok(os)
            && name_ok(architecture)
            && variant.as_deref().is_none_or(name_ok))
        .then(|| Platform {
            architecture: architecture.into(),
            os: os.into(),
            variant,
        })
    }

    /// Does an index entry for `other` serve a request for this platform? A variant is
    /// compared only when this one names it.
    fn serves(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Index {
    /// The child to follow when a reference resolves to an index: the only child (when no
    /// platform is asked for), else the one built for `platform` (this host's when `None`).
    /// An index that lists the platform twice is ambiguous: which one a node mounts is up to
    /// its runtime, so no pick is made (`Err` says why).
    pub fn select(&self, platform: Option<&Platform>) -> Result<Option<&Descriptor>, String> {
        if platform.is_none() && self.manifests.len() == 1 {
            return Ok(self.manifests.first());
        }
        let want = platform.cloned().unwrap_or_else(Platform::host);
        let mut matching = self
            .manifests
            .iter()
            .filter(|d| d.platform.as_ref().is_some_and(|p| want.serves(p)));
        let first = matching.next();
        if first.is_some() && matching.next().is_some() {
            return Err(format!("the index lists {want} more than once"));
        }
        Ok(first)
    }
}

/// A fetched manifest document, already parsed by its media type.
#[derive(Debug, Clone)]
pub enum ManifestKind {
    Image(Box<Manifest>),
    Index(Box<Index>),
}

impl ManifestKind {
    /// Parse manifest bytes. The media type comes from the HTTP header or descriptor, falling
    /// back to the document's own `mediaType` field.
    pub fn parse(media_type: Option<&str>, bytes: &[u8]) -> Result<ManifestKind, OciError> {
        let declared = match media_type {
            Some(mt) if !mt.is_empty() && mt != "application/octet-stream" => mt.to_string(),
            _ => sniff_media_type(bytes),
        };
        let err = |source| OciError::InvalidManifest {
            media_type: declared.clone(),
            source,
        };
        if media::is_image_manifest(&declared) {
            Ok(ManifestKind::Image(
                serde_json::from_slice(bytes).map_err(err)?,
            ))
        } else if media::is_index(&declared) {
            Ok(ManifestKind::Index(
                serde_json::from_slice(bytes).map_err(err)?,
            ))
        } else {
            Err(OciError::UnsupportedMediaType(declared))
        }
    }
}

fn sniff_media_type(bytes: &[u8]) -> String {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe {
            media_type: Some(mt),
            ..
        }) => mt,
        Ok(Probe {
            manifests: Some(_), ..
        }) => media::OCI_INDEX.to_string(),
        _ => media::OCI_MANIFEST.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_serialise_in_sorted_order() {
        let mut d = Descriptor::new("x", Digest::of_bytes(b""), 0);
        d.annotations.insert("z".into(), "1".into());
        d.annotations.insert("a".into(), "2".into());
        let s = serde_json::to_string(&d).unwrap();
        assert!(s.find("\"a\"").unwrap() < s.find("\"z\"").unwrap());
    }

    #[test]
    fn sniffs_index_without_media_type() {
        let doc = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            ManifestKind::parse(None, doc).unwrap(),
            ManifestKind::Index(_)
        ));
    }
}
