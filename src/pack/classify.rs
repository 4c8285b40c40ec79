//! Which ModelPack kind a file is, and what the weights say about the model (format,
//! precision, parameter count) read from safetensors headers, never from tensor data.

use std::collections::BTreeMap;
use std::io::Read;

use super::ModelFile;
use crate::oci::modelpack::{LayerKind, ModelProperties};

const WEIGHT_EXTENSIONS: &[&str] = &[
    "safetensors",
    "bin",
    "gguf",
    "pt",
    "pth",
    "ckpt",
    "onnx",
    "h5",
    "msgpack",
    "tflite",
    "pb",
    "ot",
    "npz",
];
const CONFIG_EXTENSIONS: &[&str] = &[
    "json", "txt", "model", "yaml", "yml", "tiktoken", "jinja", "vocab", "spm",
];
const CODE_EXTENSIONS: &[&str] = &["py", "sh", "ipynb", "js", "ts", "rs", "go", "cpp", "c", "h"];
const DATASET_EXTENSIONS: &[&str] = &["parquet", "csv", "tsv", "jsonl", "arrow"];
const DOC_EXTENSIONS: &[&str] = &["md", "rst", "pdf", "html", "adoc"];
/// Files of unknown type above this size are taken as weights.
const LARGE_UNKNOWN: u64 = 64 * 1024 * 1024;

/// Classify by name and size; the bool says the kind is a guess (`mediatype.untested`).
pub fn classify(relative: &str, size: u64) -> (LayerKind, bool) {
    let name = relative.rsplit('/').next().unwrap_or(relative);
    let lower = name.to_ascii_lowercase();
    let ext = lower.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    let stem_is = |prefixes: &[&str]| prefixes.iter().any(|p| lower.starts_with(p));
    if WEIGHT_EXTENSIONS.contains(&ext) {
        (LayerKind::Weight, false)
    } else if stem_is(&[
        "readme",
        "license",
        "licence",
        "notice",
        "copying",
        "model_card",
        "modelcard",
    ]) || DOC_EXTENSIONS.contains(&ext)
    {
        (LayerKind::Doc, false)
    } else if CODE_EXTENSIONS.contains(&ext) {
        (LayerKind::Code, false)
    } else if DATASET_EXTENSIONS.contains(&ext) {
        (LayerKind::Dataset, false)
    } else if CONFIG_EXTENSIONS.contains(&ext) || lower == "merges.txt" {
        (LayerKind::WeightConfig, false)
    } else if size >= LARGE_UNKNOWN {
        (LayerKind::Weight, true)
    } else {
        (LayerKind::Doc, true)
    }
}

/// The `config` section and model family, from what the files say about themselves.
pub fn describe_model(files: &[ModelFile]) -> (ModelProperties, Option<String>) {
    let mut props = ModelProperties::default();
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
    let mut dtype_bytes: BTreeMap<String, u64> = BTreeMap::new();
    for f in weights
        .iter()
        .filter(|f| f.relative.ends_with(".safetensors"))
    {
        if let Some(tensors) = safetensors_header(&f.source) {
            for (dtype, count) in tensors {
                params += count;
                *dtype_bytes.entry(dtype).or_default() += count;
            }
        }
    }
    if params > 0 {
        props.param_size = Some(human_params(params));
        props.precision = dtype_bytes
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(d, _)| precision_name(&d));
    }
    let family = files
        .iter()
        .find(|f| f.relative == "config.json")
        .and_then(|f| std::fs::read(&f.source).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("model_type")?.as_str().map(str::to_string));
    (props, family)
}

/// (dtype, element count) per tensor from a safetensors header; `None` if it is not one.
fn safetensors_header(path: &std::path::Path) -> Option<Vec<(String, u64)>> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    if len > 100 * 1024 * 1024 {
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
                    .product();
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

fn human_params(n: u64) -> String {
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
    fn kinds() {
        assert_eq!(
            classify("model.safetensors", 10),
            (LayerKind::Weight, false)
        );
        assert_eq!(
            classify("1_Pooling/config.json", 10),
            (LayerKind::WeightConfig, false)
        );
        assert_eq!(classify("README.md", 10), (LayerKind::Doc, false));
        assert_eq!(classify("train_script.py", 10), (LayerKind::Code, false));
        assert_eq!(classify("blob", 1 << 30), (LayerKind::Weight, true));
        assert_eq!(classify("notes", 10), (LayerKind::Doc, true));
    }

    #[test]
    fn param_sizes() {
        assert_eq!(human_params(22_713_216), "22.7m");
        assert_eq!(human_params(8_000_000_000), "8b");
    }
}
