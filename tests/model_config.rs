//! The ModelPack config hoist computes from the model itself, checked against values computed
//! independently (python `safetensors` on the real MiniLM model), against the ModelPack
//! schema (tests/data, validated with python `jsonschema`), for a GGUF model, and with
//! `--config-file` and `--annotation` overrides.

mod common;

use common::{python, real_model, Hoist};

fn config_of(h: &Hoist, reference: &str) -> serde_json::Value {
    let out = h.run(&["inspect", reference, "--json"]).ok().stdout;
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    doc["config"].clone()
}

fn validate(config: &serde_json::Value) {
    let schema = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/modelpack-config.schema.json"
    );
    python(&format!(
        r#"
import json, jsonschema
schema = json.load(open({schema:?}))
jsonschema.Draft7Validator.check_schema(schema)
jsonschema.validate(json.loads({:?}), schema, format_checker=jsonschema.FormatChecker())
"#,
        config.to_string()
    ));
}

#[test]
fn real_model_config_matches_an_independent_reading() {
    let h = Hoist::new();
    let src = real_model();
    h.run(&["push", src.to_str().unwrap(), "minilm:v1"]).ok();
    let config = config_of(&h, "minilm:v1");
    validate(&config);
    // Computed here from the tensors' shapes and dtypes by the python safetensors package.
    let expected = python(&format!(
        r#"
import json
from safetensors import safe_open
n, by_dtype = 0, {{}}
with safe_open({:?}, "numpy") as f:
    for k in f.keys():
        s = f.get_slice(k)
        c = 1
        for d in s.get_shape(): c *= d
        n += c
        by_dtype[s.get_dtype()] = by_dtype.get(s.get_dtype(), 0) + c
cfg = json.load(open({:?}))
print(json.dumps({{"params": n, "dtype": max(by_dtype, key=by_dtype.get), "arch": cfg["architectures"][0], "layers": cfg["num_hidden_layers"]}}))
"#,
        src.join("model.safetensors"),
        src.join("config.json")
    ));
    let expected: serde_json::Value = serde_json::from_str(expected.trim()).unwrap();
    let params = expected["params"].as_u64().unwrap();
    assert!((22_000_000..23_500_000).contains(&params), "{params}");
    assert_eq!(
        config["config"]["paramSize"],
        format!("{:.1}m", params as f64 / 1e6)
    );
    assert_eq!(expected["dtype"], "F32");
    assert_eq!(config["config"]["precision"], "fp32");
    assert_eq!(config["config"]["architecture"], expected["arch"]);
    assert_eq!(config["config"]["architecture"], "BertModel");
    assert_eq!(config["config"]["format"], "safetensors");
    assert_eq!(
        config["config"]["transformerConfig"]["numLayers"],
        expected["layers"]
    );
    assert_eq!(config["descriptor"]["family"], "bert");
    assert_eq!(
        config["descriptor"]["licenses"],
        serde_json::json!(["apache-2.0"])
    );
    // Plain inspect says the same on one line, not only --json.
    let shown = h.run(&["inspect", "minilm:v1"]).ok().stdout;
    let line = format!(
        "Model:         BertModel, {} parameters, fp32, safetensors",
        config["config"]["paramSize"].as_str().unwrap()
    );
    assert!(shown.contains(&line), "{shown}");
}

/// A tiny GGUF v3 file: architecture, file type and two tensors.
fn gguf() -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    let s = |b: &mut Vec<u8>, v: &str| {
        b.extend((v.len() as u64).to_le_bytes());
        b.extend(v.as_bytes());
    };
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    s(&mut b, "qwen2");
    s(&mut b, "general.file_type");
    b.extend(4u32.to_le_bytes());
    b.extend(7u32.to_le_bytes());
    for (name, dims) in [
        ("token_embd.weight", [896u64, 151_936]),
        ("output.weight", [896, 151_936]),
    ] {
        s(&mut b, name);
        b.extend(2u32.to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(8u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
    }
    b.resize(b.len() + 4096, 0);
    b
}

#[test]
fn gguf_metadata_and_overrides_fill_the_config() {
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("model.gguf"), gguf()).unwrap();
    std::fs::write(
        src.path().join("README.md"),
        "---\nlicense:\n  - mit\n---\n# tiny\n",
    )
    .unwrap();
    h.run(&["push", src.path().to_str().unwrap(), "tiny:v1"])
        .ok();
    let config = config_of(&h, "tiny:v1");
    validate(&config);
    assert_eq!(config["config"]["architecture"], "qwen2");
    assert_eq!(config["config"]["quantization"], "Q8_0");
    assert_eq!(config["config"]["format"], "gguf");
    assert_eq!(config["config"]["paramSize"], "272.3m");
    assert_eq!(config["descriptor"]["licenses"], serde_json::json!(["mit"]));

    let over = src.path().join("over.json");
    std::fs::write(
        &over,
        r#"{"descriptor": {"vendor": "acme", "licenses": ["apache-2.0"]}, "config": {"paramSize": "0.5b"}}"#,
    )
    .unwrap();
    h.run(&[
        "push",
        src.path().to_str().unwrap(),
        "tiny:v2",
        "--config-file",
        over.to_str().unwrap(),
        "--annotation",
        "org.opencontainers.image.source=https://example.com/tiny",
    ])
    .ok();
    let config = config_of(&h, "tiny:v2");
    validate(&config);
    assert_eq!(config["descriptor"]["vendor"], "acme");
    assert_eq!(
        config["descriptor"]["licenses"],
        serde_json::json!(["apache-2.0"])
    );
    assert_eq!(config["config"]["paramSize"], "0.5b");
    assert_eq!(
        config["config"]["architecture"], "qwen2",
        "the rest is kept"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&h.run(&["inspect", "tiny:v2", "--json"]).ok().stdout).unwrap();
    assert_eq!(
        doc["manifest"]["annotations"]["org.opencontainers.image.source"],
        "https://example.com/tiny"
    );

    // A misspelt field is refused, not dropped.
    std::fs::write(&over, r#"{"config": {"paramsize": "1b"}}"#).unwrap();
    h.run(&[
        "push",
        src.path().to_str().unwrap(),
        "tiny:v3",
        "--config-file",
        over.to_str().unwrap(),
    ])
    .fails_with(2, "unknown field config.paramsize");
}
