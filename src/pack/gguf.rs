//! Reading a GGUF file's header (v2 and v3): the metadata key-values and tensor infos, for
//! the architecture, the quantization and the parameter count. Written by hand because the
//! header is a few dozen lines of little-endian fields and no small crate reads just that.

use std::io::{BufReader, Read};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct GgufMeta {
    pub architecture: Option<String>,
    pub quantization: Option<String>,
    pub parameters: u64,
}

/// Limits that keep a hostile header from allocating without bound.
const MAX_STRING: u64 = 1 << 20;
const MAX_ITEMS: u64 = 1 << 24;
const MAX_DIMS: u32 = 8;

pub fn read(path: &Path) -> Option<GgufMeta> {
    read_from(BufReader::new(std::fs::File::open(path).ok()?))
}

/// The header from the start of a GGUF file, read sequentially (a file on disk or a download
/// as it arrives); only the header is read.
pub fn read_from(mut r: impl Read) -> Option<GgufMeta> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic).ok()?;
    if &magic != b"GGUF" {
        return None;
    }
    let version = u32_of(&mut r)?;
    if !(2..=3).contains(&version) {
        return None;
    }
    let tensors = u64_of(&mut r)?;
    let kvs = u64_of(&mut r)?;
    if tensors > MAX_ITEMS || kvs > MAX_ITEMS {
        return None;
    }
    let mut meta = GgufMeta {
        architecture: None,
        quantization: None,
        parameters: 0,
    };
    for _ in 0..kvs {
        let key = string(&mut r)?;
        let kind = u32_of(&mut r)?;
        match (key.as_str(), kind) {
            ("general.architecture", 8) => meta.architecture = Some(string(&mut r)?),
            ("general.file_type", 4) => meta.quantization = file_type(u32_of(&mut r)?),
            _ => skip_value(&mut r, kind)?,
        }
    }
    for _ in 0..tensors {
        string(&mut r)?;
        let dims = u32_of(&mut r)?;
        if dims > MAX_DIMS {
            return None;
        }
        let mut count = 1u64;
        for _ in 0..dims {
            count = count.checked_mul(u64_of(&mut r)?)?;
        }
        u32_of(&mut r)?; // type
        u64_of(&mut r)?; // offset
        meta.parameters = meta.parameters.checked_add(count)?;
    }
    Some(meta)
}

fn u32_of(r: &mut impl Read) -> Option<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).ok()?;
    Some(u32::from_le_bytes(b))
}

fn u64_of(r: &mut impl Read) -> Option<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

fn string(r: &mut impl Read) -> Option<String> {
    let len = u64_of(r)?;
    if len > MAX_STRING {
        return None;
    }
    let mut b = vec![0u8; len as usize];
    r.read_exact(&mut b).ok()?;
    String::from_utf8(b).ok()
}

fn skip(r: &mut impl Read, n: u64) -> Option<()> {
    let copied = std::io::copy(&mut r.take(n), &mut std::io::sink()).ok()?;
    (copied == n).then_some(())
}

fn skip_value(r: &mut impl Read, kind: u32) -> Option<()> {
    match kind {
        0 | 1 | 7 => skip(r, 1),
        2 | 3 => skip(r, 2),
        4..=6 => skip(r, 4),
        10..=12 => skip(r, 8),
        8 => string(r).map(|_| ()),
        9 => {
            let item = u32_of(r)?;
            let n = u64_of(r)?;
            if n > MAX_ITEMS || item == 9 {
                return None;
            }
            (0..n).try_for_each(|_| skip_value(r, item))
        }
        _ => None,
    }
}

/// llama.cpp's `general.file_type` values.
fn file_type(t: u32) -> Option<String> {
    let name = match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    };
    Some(name.into())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal GGUF v3 file: two metadata keys (one an array), two tensors.
    pub fn sample() -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(2u64.to_le_bytes()); // tensors
        b.extend(3u64.to_le_bytes()); // kvs
        let s = |b: &mut Vec<u8>, v: &str| {
            b.extend((v.len() as u64).to_le_bytes());
            b.extend(v.as_bytes());
        };
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "tokenizer.ggml.scores");
        b.extend(9u32.to_le_bytes());
        b.extend(6u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(1f32.to_le_bytes());
        b.extend(2f32.to_le_bytes());
        s(&mut b, "general.file_type");
        b.extend(4u32.to_le_bytes());
        b.extend(15u32.to_le_bytes());
        for (name, dims) in [("tok_embd", vec![4096u64, 32000]), ("norm", vec![4096])] {
            s(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(12u32.to_le_bytes());
            b.extend(0u64.to_le_bytes());
        }
        b
    }

    #[test]
    fn reads_architecture_quantization_and_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, sample()).unwrap();
        let meta = read(&path).unwrap();
        assert_eq!(meta.architecture.as_deref(), Some("llama"));
        assert_eq!(meta.quantization.as_deref(), Some("Q4_K_M"));
        assert_eq!(meta.parameters, 4096 * 32000 + 4096);
        // Truncated or foreign files give nothing, never a panic.
        let bytes = sample();
        for cut in [3, 10, 40, bytes.len() - 5] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(read(&path).is_none(), "cut at {cut}");
        }
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    proptest! {
        /// Any bytes after a valid magic and version: no panic, bounded allocation (strings
        /// and arrays are capped before anything is allocated).
        #[test]
        fn gguf_headers_on_arbitrary_bytes(tail in proptest::collection::vec(any::<u8>(), 0..1024), version in 2u32..4) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("x.gguf");
            let mut data = b"GGUF".to_vec();
            data.extend(version.to_le_bytes());
            data.extend(tail);
            std::fs::write(&p, &data).unwrap();
            let _ = super::read(&p);
        }

        /// The sample file with bytes flipped anywhere: no panic.
        #[test]
        fn gguf_sample_mutated(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut data = super::tests::sample();
            let i = at.index(data.len());
            data[i] = byte;
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("x.gguf");
            std::fs::write(&p, &data).unwrap();
            let _ = super::read(&p);
        }
    }
}
