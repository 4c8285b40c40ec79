//! A safetensors header, read strictly: it comes from a registry, and the arrays a caller
//! gets are views at the offsets it names. Every tensor's dtype must be known and its
//! shape's bytes exactly its span; the tensors must tile the data from its first byte to the
//! file's last, with no hole and no overlap (the format's own rule); counts, lengths and
//! products are bounded and checked for overflow. A header that breaks any of these is
//! refused before the memory for the tensors is taken.
//!
//! Written here rather than taken from the `safetensors` crate: it parses a whole buffer
//! already in memory, and this runs on the first bytes of a blob before it is downloaded.

use std::collections::BTreeMap;

/// The largest header accepted (the `safetensors` crate's own bound).
pub const MAX_HEADER: u64 = 100 << 20;
/// The most tensors one file may name.
const MAX_TENSORS: usize = 1 << 20;
/// The most dimensions one tensor may have.
const MAX_RANK: usize = 64;

/// One tensor: where its bytes are in the file (`start..end`, absolute).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub start: u64,
    pub end: u64,
}

/// What a header says: the tensors in file order, and the free-form metadata.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Header {
    pub tensors: Vec<Tensor>,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HeaderError(String);

fn refuse<T>(why: impl Into<String>) -> Result<T, HeaderError> {
    Err(HeaderError(why.into()))
}

/// The header's length from a file's first 8 bytes, checked against the file's size.
pub fn header_len(first8: &[u8], file_size: u64) -> Result<u64, HeaderError> {
    let Ok(bytes) = <[u8; 8]>::try_from(first8) else {
        return refuse(format!(
            "{file_size} bytes is too short for a safetensors file"
        ));
    };
    let n = u64::from_le_bytes(bytes);
    if n > MAX_HEADER {
        return refuse(format!("a {n}-byte header (at most {MAX_HEADER})"));
    }
    if 8 + n > file_size {
        return refuse(format!(
            "a {n}-byte header in a {file_size}-byte file: it would run past the end"
        ));
    }
    Ok(n)
}

/// The bytes of one element of `dtype`; `None` for a dtype not known here.
pub fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Parse the header `json` (`header_len` bytes) of a `file_size`-byte file.
pub fn parse(json: &[u8], header_len: u64, file_size: u64) -> Result<Header, HeaderError> {
    if json.len() as u64 != header_len {
        return refuse("the header is shorter than its length says");
    }
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json)
        .map_err(|e| HeaderError(format!("the header is not a JSON object: {e}")))?;
    if map.len() > MAX_TENSORS {
        return refuse(format!("more than {MAX_TENSORS} tensors"));
    }
    let data_start = 8 + header_len;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(map.len());
    for (name, entry) in &map {
        if name == "__metadata__" {
            metadata = parse_metadata(entry)?;
            continue;
        }
        tensors.push(parse_tensor(name, entry, data_start)?);
    }
    tensors.sort_by_key(|t| (t.start, t.end));
    check_tiling(&tensors, data_start, file_size)?;
    Ok(Header { tensors, metadata })
}

fn parse_metadata(entry: &serde_json::Value) -> Result<BTreeMap<String, String>, HeaderError> {
    let Some(object) = entry.as_object() else {
        return refuse("__metadata__ is not an object");
    };
    object
        .iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.clone(), s.to_string())),
            None => refuse(format!("__metadata__ {k:?} is not a string")),
        })
        .collect()
}

fn parse_tensor(
    name: &str,
    entry: &serde_json::Value,
    data_start: u64,
) -> Result<Tensor, HeaderError> {
    let bad = |why: &str| HeaderError(format!("tensor {name:?}: {why}"));
    let dtype = entry
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or_else(|| bad("no dtype"))?;
    let elem = dtype_size(dtype).ok_or_else(|| bad(&format!("dtype {dtype:?} is not known")))?;
    let shape = entry
        .get("shape")
        .and_then(|s| s.as_array())
        .filter(|s| s.len() <= MAX_RANK)
        .ok_or_else(|| bad(&format!("no shape of at most {MAX_RANK} dimensions")))?
        .iter()
        .map(|d| d.as_u64().ok_or_else(|| bad("a dimension is not a count")))
        .collect::<Result<Vec<u64>, _>>()?;
    let offsets = entry
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .filter(|o| o.len() == 2)
        .ok_or_else(|| bad("data_offsets is not [begin, end]"))?;
    let (Some(begin), Some(end)) = (offsets[0].as_u64(), offsets[1].as_u64()) else {
        return Err(bad("data_offsets are not byte counts"));
    };
    if begin > end {
        return Err(bad("data_offsets end before they begin"));
    }
    let bytes = shape
        .iter()
        .try_fold(elem, |n, d| n.checked_mul(*d))
        .ok_or_else(|| bad("its shape overflows"))?;
    if bytes != end - begin {
        return Err(bad(&format!(
            "its shape and dtype make {bytes} bytes, its offsets span {}",
            end - begin
        )));
    }
    let at = |o: u64| {
        data_start
            .checked_add(o)
            .ok_or_else(|| bad("offsets overflow"))
    };
    Ok(Tensor {
        name: name.to_string(),
        dtype: dtype.to_string(),
        shape,
        start: at(begin)?,
        end: at(end)?,
    })
}

/// Sorted tensors cover `data_start..file_size` exactly: no hole, no overlap, nothing after.
fn check_tiling(tensors: &[Tensor], data_start: u64, file_size: u64) -> Result<(), HeaderError> {
    let mut next = data_start;
    for t in tensors {
        if t.start != next {
            let what = if t.start < next {
                "overlaps"
            } else {
                "leaves a hole before"
            };
            return refuse(format!(
                "tensor {:?} {what} the tensor before it (at byte {}, expected {next})",
                t.name, t.start
            ));
        }
        next = t.end;
    }
    if next != file_size {
        return refuse(format!(
            "the tensors end at byte {next}, the file at {file_size}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> (Vec<u8>, u64) {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend(std::iter::repeat_n(0u8, data));
        let size = out.len() as u64;
        (out, size)
    }

    fn check(header: &str, data: usize) -> Result<Header, HeaderError> {
        let (bytes, size) = file(header, data);
        let n = header_len(&bytes[..8], size)?;
        parse(&bytes[8..8 + n as usize], n, size)
    }

    #[test]
    fn a_well_formed_header_gives_its_tensors_in_file_order() {
        let h = check(
            r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}"#,
            12,
        )
        .unwrap();
        let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(h.metadata["format"], "pt");
        let base = h.tensors[0].start;
        assert_eq!(
            (h.tensors[1].start - base, h.tensors[1].end - base),
            (4, 12)
        );
    }

    #[test]
    fn every_lie_is_refused() {
        for (header, data, why) in [
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}}"#,
                12,
                "shape",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                12,
                "end at",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
                "hole",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
                "overlaps",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                4,
                "end at",
            ),
            (
                r#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}"#,
                8,
                "not known",
            ),
            (
                r#"{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#,
                8,
                "overflows",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
                8,
                "before",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
                4,
                "count",
            ),
            (r#"{"a":{"dtype":"F32","shape":[1]}}"#, 4, "data_offsets"),
            (r#"[1,2]"#, 0, "JSON object"),
            (r#"{"__metadata__":{"k":1}}"#, 0, "not a string"),
        ] {
            let err = check(header, data).unwrap_err().to_string();
            assert!(err.contains(why), "{header}: {err}");
        }
    }

    #[test]
    fn a_header_length_past_the_file_or_the_bound_is_refused() {
        assert!(header_len(&(100u64).to_le_bytes(), 50).is_err());
        assert!(header_len(&(MAX_HEADER + 1).to_le_bytes(), u64::MAX).is_err());
        assert!(header_len(&[1, 2, 3], 3).is_err());
        assert_eq!(header_len(&(10u64).to_le_bytes(), 18).unwrap(), 10);
    }
}
