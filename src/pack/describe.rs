//! The ModelPack config from what the model says about itself, never from tensor data:
//! `config.json` (architectures, model_type, torch_dtype, transformer sizes), safetensors
//! headers (dtypes → precision, shapes → parameter count), GGUF metadata (architecture,
//! quantization, parameter count) and the licence in the model card's front matter.

use std::collections::BTreeMap;
use std::io::Read;

use super::ModelFile;
use crate::oci::modelpack::{LayerKind, ModelDescriptor, ModelProperties, TransformerConfig};

/// The most of a small file (`config.json`, the model card) read to describe a model.
pub const MAX_SMALL_FILE: u64 = 16 << 20;
/// The most of a weight file's start kept while its header is read from a stream.
pub const MAX_HEADER_READ: u64 = 64 << 20;

/// What a weight file's header says about the model.
#[derive(Debug, Clone, Default)]
pub struct WeightFacts {
    /// (dtype, element count) per tensor of a safetensors file.
    pub tensors: Vec<(String, u64)>,
    pub gguf: Option<super::gguf::GgufMeta>,
}

/// Where a model's files are read from to describe it: a folder on disk, or what a copy
/// kept while streaming them (`transfer::import`).
pub trait ModelSource: Sync {
    /// The header facts of a weight file; `None` when it has none that can be read.
    fn weight_facts(&self, file: &ModelFile) -> Option<WeightFacts>;
    /// A small file's bytes (at most [`MAX_SMALL_FILE`]); `None` when larger or unreadable.
    fn small_file(&self, file: &ModelFile) -> Option<Vec<u8>>;
}

/// The files of a folder on disk.
pub struct OnDisk;

impl ModelSource for OnDisk {
    fn weight_facts(&self, file: &ModelFile) -> Option<WeightFacts> {
        let f = std::fs::File::open(&file.source).ok()?;
        weight_facts(&file.relative, std::io::BufReader::new(f), file.size)
    }

    fn small_file(&self, file: &ModelFile) -> Option<Vec<u8>> {
        if file.size > MAX_SMALL_FILE {
            return None;
        }
        std::fs::read(&file.source).ok()
    }
}

/// The facts in the header at the start of weight file `relative` (`size` bytes), read
/// sequentially from `reader`: a safetensors header, or GGUF metadata. Reads only the header.
pub fn weight_facts(relative: &str, reader: impl Read, size: u64) -> Option<WeightFacts> {
    if relative.ends_with(".safetensors") {
        return Some(WeightFacts {
            tensors: safetensors_header(reader, size)?,
            gguf: None,
        });
    }
    if relative.ends_with(".gguf") {
        return Some(WeightFacts {
            tensors: Vec::new(),
            gguf: Some(super::gguf::read_from(reader)?),
        });
    }
    None
}

/// Fill `props` and the descriptor's family and licences from the files.
pub fn describe_model(
    files: &[ModelFile],
    source: &dyn ModelSource,
    props: &mut ModelProperties,
    desc: &mut ModelDescriptor,
) {
    let weights: Vec<&ModelFile> = files
        .iter()
        .filter(|f| f.kind == LayerKind::Weight)
        .collect();
    props.format = weights
        .iter()
        .filter_map(|f| {
            f.relative
                .rsplit_once('.')
                .map(|(_, e)| e.to_ascii_lowercase())
        })
        .max_by_key(|e| if e == "safetensors" { 2 } else { 1 });

    let mut params: u64 = 0;
    let mut dtype_counts: BTreeMap<String, u64> = BTreeMap::new();
    for facts in weights.iter().filter_map(|f| source.weight_facts(f)) {
        for (dtype, count) in facts.tensors {
            params += count;
            *dtype_counts.entry(dtype).or_default() += count;
        }
        if let Some(meta) = facts.gguf {
            params += meta.parameters;
            props.architecture = props.architecture.take().or(meta.architecture);
            props.quantization = props.quantization.take().or(meta.quantization);
        }
    }
    if params > 0 {
        props.param_size = Some(human_params(params));
    }
    props.precision = dtype_counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(d, _)| precision_name(&d));

    let hf = root_json(files, source, "config.json");
    if let Some(hf) = &hf {
        let text = |k: &str| hf.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let count = |k: &str| hf.get(k).and_then(|v| v.as_u64()).filter(|n| *n > 0);
        desc.family = text("model_type");
        if let Some(arch) = hf
            .get("architectures")
            .and_then(|a| a.as_array()?.first()?.as_str())
        {
            props.architecture = Some(arch.to_string());
        }
        if props.precision.is_none() {
            props.precision = text("torch_dtype").map(|d| torch_precision(&d));
        }
        let tc = TransformerConfig {
            num_layers: count("num_hidden_layers"),
            num_attention_heads: count("num_attention_heads"),
            num_kv_heads: count("num_key_value_heads"),
            hidden_size: count("hidden_size"),
            intermediate_size: count("intermediate_size"),
        };
        if tc != TransformerConfig::default() {
            props.transformer_config = Some(tc);
        }
    }
    desc.licenses = files
        .iter()
        .find(|f| f.relative.eq_ignore_ascii_case("README.md"))
        .and_then(|f| source.small_file(f))
        .map(|card| front_matter_licenses(&String::from_utf8_lossy(&card)))
        .unwrap_or_default();
}

fn root_json(
    files: &[ModelFile],
    source: &dyn ModelSource,
    name: &str,
) -> Option<serde_json::Value> {
    let f = files.iter().find(|f| f.relative == name)?;
    serde_json::from_slice(&source.small_file(f)?).ok()
}

/// `license:` in a Hugging Face model card's YAML front matter (a value or a list).
pub fn front_matter_licenses(card: &str) -> Vec<String> {
    let mut lines = card.lines();
    if lines.next().map(str::trim) != Some("---") {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut in_list = false;
    for line in lines {
        if line.trim() == "---" {
            break;
        }
        if in_list {
            match line.trim().strip_prefix("- ") {
                Some(item) => {
                    found.push(unquote(item));
                    continue;
                }
                None => in_list = false,
            }
        }
        if let Some(value) = line.strip_prefix("license:") {
            let value = value.trim();
            if value.is_empty() {
                in_list = true;
            } else {
                found.push(unquote(value));
            }
        }
    }
    found.retain(|l| !l.is_empty());
    found
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches(|c| c == '"' || c == '\'').to_string()
}

/// (dtype, element count) per tensor from a safetensors header at the start of `f` (a file
/// of `file_len` bytes); `None` if it is not one.
fn safetensors_header(mut f: impl Read, file_len: u64) -> Option<Vec<(String, u64)>> {
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    // Never allocate more than the file can hold (a hostile header may claim anything).
    if len > 100 * 1024 * 1024 || len > file_len.saturating_sub(8) {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).ok()?;
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header).ok()?;
    Some(
        map.iter()
            .filter(|(k, _)| k.as_str() != "__metadata__")
            .filter_map(|(_, v)| {
                let dtype = v.get("dtype")?.as_str()?.to_string();
                let count = v
                    .get("shape")?
                    .as_array()?
                    .iter()
                    .map(|d| d.as_u64().unwrap_or(0))
                    .fold(1u64, u64::saturating_mul);
                Some((dtype, count))
            })
            .collect(),
    )
}

fn precision_name(dtype: &str) -> String {
    match dtype {
        "F32" => "fp32".into(),
        "F16" => "fp16".into(),
        "F64" => "fp64".into(),
        "BF16" => "bf16".into(),
        other => other.to_ascii_lowercase(),
    }
}

fn torch_precision(dtype: &str) -> String {
    match dtype {
        "float32" => "fp32".into(),
        "float16" => "fp16".into(),
        "bfloat16" => "bf16".into(),
        other => other.to_string(),
    }
}

/// 22_713_216 → "22.7m"; 8e9 → "8b".
pub fn human_params(n: u64) -> String {
    let (value, unit) = match n {
        n if n >= 1_000_000_000 => (n as f64 / 1e9, "b"),
        n if n >= 1_000_000 => (n as f64 / 1e6, "m"),
        n if n >= 1_000 => (n as f64 / 1e3, "k"),
        n => (n as f64, ""),
    };
    let s = format!("{value:.1}");
    format!("{}{unit}", s.trim_end_matches(".0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_sizes() {
        assert_eq!(human_params(22_713_216), "22.7m");
        assert_eq!(human_params(8_000_000_000), "8b");
    }

    #[test]
    fn licences_from_front_matter() {
        assert_eq!(
            front_matter_licenses("---\nlanguage: en\nlicense: apache-2.0\n---\n# x"),
            ["apache-2.0"]
        );
        assert_eq!(
            front_matter_licenses("---\nlicense:\n- mit\n- 'cc-by-4.0'\ntags: []\n---\n"),
            ["mit", "cc-by-4.0"]
        );
        assert!(front_matter_licenses("# no front matter\nlicense: mit\n").is_empty());
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    proptest! {
        /// Any bytes: no panic, no allocation beyond the file.
        #[test]
        fn safetensors_headers_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), claim in any::<u64>(), use_claim in any::<bool>()) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("x.safetensors");
            let mut data = bytes.clone();
            if use_claim && data.len() >= 8 {
                data[..8].copy_from_slice(&claim.to_le_bytes());
            }
            std::fs::write(&p, &data).unwrap();
            let _ = super::safetensors_header(std::fs::File::open(&p).unwrap(), data.len() as u64);
        }

        /// A real header with arbitrary shapes: counts saturate instead of overflowing.
        #[test]
        fn safetensors_shapes(shape in proptest::collection::vec(any::<u64>(), 0..6)) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("x.safetensors");
            let header = serde_json::json!({"t": {"dtype": "F16", "shape": shape, "data_offsets": [0, 0]}}).to_string();
            let mut data = (header.len() as u64).to_le_bytes().to_vec();
            data.extend(header.as_bytes());
            std::fs::write(&p, &data).unwrap();
            let got = super::safetensors_header(std::fs::File::open(&p).unwrap(), data.len() as u64).unwrap();
            prop_assert_eq!(got.len(), 1);
        }
    }
}
