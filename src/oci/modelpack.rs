//! The CNCF ModelPack model config (`application/vnd.cncf.model.config.v1+json`) and the
//! per-file metadata annotation, as in modelpack/model-spec v0.0.7.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// The kinds of layer ModelPack defines; the kind is part of the layer media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    Weight,
    #[serde(rename = "weight.config")]
    WeightConfig,
    Doc,
    Code,
    Dataset,
}

impl LayerKind {
    /// A kind as `--kind` takes it: weight, config (weight.config), doc, code, dataset
    /// (plurals accepted).
    pub fn parse(s: &str) -> Option<LayerKind> {
        Some(match s {
            "weight" | "weights" => LayerKind::Weight,
            "config" | "weight.config" => LayerKind::WeightConfig,
            "doc" | "docs" => LayerKind::Doc,
            "code" => LayerKind::Code,
            "dataset" => LayerKind::Dataset,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LayerKind::Weight => "weight",
            LayerKind::WeightConfig => "weight.config",
            LayerKind::Doc => "doc",
            LayerKind::Code => "code",
            LayerKind::Dataset => "dataset",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub descriptor: ModelDescriptor,
    pub config: ModelProperties,
    pub modelfs: ModelFs,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelDescriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub licenses: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "docURL")]
    pub doc_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "sourceURL")]
    pub source_url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param_size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// GGUF quantization (e.g. `Q4_K_M`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transformer_config: Option<TransformerConfig>,
}

/// Sizes of a transformer, from the model's `config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransformerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_layers: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_attention_heads: Option<u64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "numKVHeads"
    )]
    pub num_kv_heads: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate_size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

impl Default for ModelFs {
    fn default() -> Self {
        ModelFs {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        }
    }
}

/// Value of the `org.cncf.model.file.metadata+json` layer annotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileMetadata {
    pub name: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: String,
    pub typeflag: u8,
}

/// `application/vnd.cncf.model.<kind>.v1.<format>`
pub fn layer_media_type(kind: LayerKind, format: super::LayerFormat) -> String {
    format!(
        "{}{}.v1.{}",
        super::media::MODELPACK_LAYER_PREFIX,
        kind.as_str(),
        format.suffix()
    )
}

/// Parse the kind out of a ModelPack layer media type (also the older `vnd.cnai` prefix).
pub fn kind_of_media_type(media_type: &str) -> Option<LayerKind> {
    let rest = media_type
        .strip_prefix(super::media::MODELPACK_LAYER_PREFIX)
        .or_else(|| media_type.strip_prefix("application/vnd.cnai.model."))?;
    let kind = rest.split(".v1.").next()?;
    Some(match kind {
        "weight" => LayerKind::Weight,
        "weight.config" => LayerKind::WeightConfig,
        "doc" => LayerKind::Doc,
        "code" => LayerKind::Code,
        "dataset" => LayerKind::Dataset,
        _ => return None,
    })
}
