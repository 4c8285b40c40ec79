//! A synthetic checkpoint shaped like a real one: bf16 safetensors shards with the entropy of
//! trained weights (random sign and mantissa, exponents clustered near 2⁻⁶, so zstd -1 gets
//! to about 0.8 of the size, as on real bf16 weights), an index, config and tokenizer files.
//! Deterministic from the seed, so every run benchmarks the same bytes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Elements per tensor (a 4096 × 2048 matrix, 16 MiB in bf16).
const TENSOR_ROWS: u64 = 4096;
const TENSOR_COLS: u64 = 2048;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Write a model of about `bytes` bytes in `shards` safetensors files into `dir`.
pub fn generate(dir: &Path, bytes: u64, shards: usize, seed: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let shards = shards.max(1);
    let per_shard = (bytes / shards as u64).max(1 << 16);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut weight_map = serde_json::Map::new();
    let mut tensor = 0usize;
    for s in 0..shards {
        let name = format!("model-{:05}-of-{:05}.safetensors", s + 1, shards);
        // Whole tensors of TENSOR_ROWS × cols, the last one narrower to fit the size.
        let elements = per_shard / 2;
        let mut shapes = Vec::new();
        let mut left = elements;
        while left > 0 {
            let cols = (left / TENSOR_ROWS).clamp(1, TENSOR_COLS);
            let rows = if left < TENSOR_ROWS {
                left
            } else {
                TENSOR_ROWS
            };
            shapes.push((format!("model.layers.{tensor}.mlp.weight"), rows, cols));
            left -= rows * cols;
            tensor += 1;
        }
        let mut header = serde_json::Map::new();
        let mut offset = 0u64;
        for (tname, rows, cols) in &shapes {
            let len = rows * cols * 2;
            header.insert(
                tname.clone(),
                serde_json::json!({"dtype": "BF16", "shape": [rows, cols], "data_offsets": [offset, offset + len]}),
            );
            weight_map.insert(tname.clone(), name.clone().into());
            offset += len;
        }
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        let mut json = serde_json::to_vec(&header)?;
        while json.len() % 8 != 0 {
            json.push(b' ');
        }
        let mut out = BufWriter::with_capacity(1 << 20, File::create(dir.join(&name))?);
        out.write_all(&(json.len() as u64).to_le_bytes())?;
        out.write_all(&json)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = offset;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            fill_bf16(&mut buf[..n], &mut rng);
            out.write_all(&buf[..n])?;
            left -= n as u64;
        }
        out.flush()?;
    }
    let index = serde_json::json!({"metadata": {"total_size": bytes}, "weight_map": weight_map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&index)?,
    )?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "torch_dtype": "bfloat16",
            "hidden_size": TENSOR_COLS,
            "num_hidden_layers": tensor,
            "vocab_size": 32000
        }))?,
    )?;
    std::fs::write(
        dir.join("generation_config.json"),
        br#"{"do_sample": true, "temperature": 0.6, "top_p": 0.9}"#,
    )?;
    let vocab: serde_json::Map<String, serde_json::Value> = (0..32000u32)
        .map(|i| (format!("tok{:x}{}", rng.next() % 4096, i), i.into()))
        .collect();
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_vec(
            &serde_json::json!({"version": "1.0", "model": {"type": "BPE", "vocab": vocab}}),
        )?,
    )?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        br#"{"bos_token": "<s>", "eos_token": "</s>", "model_max_length": 4096}"#,
    )?;
    Ok(())
}

/// bf16 little-endian: the low byte is one exponent bit and 7 mantissa bits (near random),
/// the high byte the sign and 7 exponent bits (few values: weights are small).
fn fill_bf16(buf: &mut [u8], rng: &mut Rng) {
    for pair in buf.chunks_exact_mut(8) {
        let r = rng.next();
        for (i, v) in pair.chunks_exact_mut(2).enumerate() {
            let bits = r >> (i * 16);
            // Exponent 2⁻⁶ … 2⁻¹³, smaller ones rarer (a rough half-normal).
            let exp = 121 - (bits >> 8 & 0xff).trailing_zeros().min(7) as u16;
            let value = ((bits >> 15 & 1) as u16) << 15 | exp << 7 | (bits & 0x7f) as u16;
            v.copy_from_slice(&value.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shaped_like_a_checkpoint_and_compresses_like_one() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), 8 << 20, 2, 7).unwrap();
        let shard = std::fs::read(dir.path().join("model-00001-of-00002.safetensors")).unwrap();
        let n = u64::from_le_bytes(shard[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&shard[8..8 + n]).unwrap();
        assert_eq!(header["model.layers.0.mlp.weight"]["dtype"], "BF16");
        let data = &shard[8 + n..];
        let ratio = zstd::bulk::compress(data, 1).unwrap().len() as f64 / data.len() as f64;
        assert!((0.7..0.9).contains(&ratio), "zstd -1 ratio {ratio}");
        // Deterministic.
        let again = tempfile::tempdir().unwrap();
        generate(again.path(), 8 << 20, 2, 7).unwrap();
        assert_eq!(
            shard,
            std::fs::read(again.path().join("model-00001-of-00002.safetensors")).unwrap()
        );
    }
}
