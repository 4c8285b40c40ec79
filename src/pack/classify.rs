//! Which ModelPack kind a file is, from its name and size.

use crate::oci::modelpack::LayerKind;

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
}
