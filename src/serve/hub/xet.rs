//! Xet downloads for the Hub routes: the storage protocol `huggingface_hub` switches to when a
//! file's `HEAD` carries `X-Xet-Hash`. Its client, `hf_xet`, is Rust, installed with
//! `huggingface_hub` by default, and fetches on every core; the plain `GET /resolve/…` is read
//! by the interpreter (~430 MB/s a stream here, GIL-bound), which is why a snapshot through
//! `/resolve` ran at half of `hoist pull` from the same server.
//!
//! The protocol (the Xet CAS API):
//! - `GET /api/{models,datasets}/{repo}/xet-read-token/{rev}`, authorized as every Hub route,
//!   answers a read token for that repository in `X-Xet-Access-Token` and
//!   `X-Xet-Token-Expiration`, with the CAS base URL in `X-Xet-Cas-Url` ([`CAS_PREFIX`]).
//! - `GET {cas}/v2/reconstructions/{file}` (and `v1`, older clients) with the token as bearer:
//!   which chunks of which xorbs make the file (or a `Range` of it), with a signed URL per xorb.
//! - `GET {url}` with `Range`: those chunks, each behind an 8-byte chunk header.
//!
//! Nothing is converted or stored twice. A blob is served as *virtual xorbs*: xorb `k` is its
//! bytes `[k·64 MiB, (k+1)·64 MiB)` cut in 128 KiB chunks (the largest the client takes), sent
//! uncompressed behind their headers, read from the blob file as they go out. A file's id is
//! its blob's SHA-256 — the client passes it back and never recomputes it (Xet's own ids hash
//! content-defined chunks for deduplicated uploads, which a read API has no use for). A xorb's
//! id is a SHA-256 of (blob, index, layout), so a client's chunk cache never mixes layouts.
//!
//! Trust: a token is an HMAC over (repository, expiry) with a key made at start (a restart
//! ends every token; the client asks the refresh route again). A file is reconstructed only
//! for a repository that holds its blob; a xorb URL carries an HMAC over (blob, index,
//! expiry), so only a granted reconstruction makes one. The client checks no hash of what it
//! receives: only blobs whose stamps say they are whole are served, as on the OCI routes.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

/// Data bytes in a chunk: the client's limit (`MAX_CHUNK_SIZE`, 2 × its 64 KiB target).
pub const CHUNK: u64 = 128 << 10;
/// Data bytes in a xorb: the client's `MAX_XORB_BYTES`.
pub const XORB: u64 = 16 << 20;
/// A chunk header: version, compressed length (3 bytes LE), scheme (0: none), length (3 bytes).
pub const HEADER: u64 = 8;
/// How long a token and the URLs made under it are good for.
pub const TOKEN_SECONDS: u64 = 600;
/// Where the CAS routes live: under `/api/`, beside `models` and `datasets`, so no
/// repository path can be one.
pub const CAS_PREFIX: &str = "/api/xet-cas";

/// The key tokens and xorb URLs are signed with, made at start.
pub struct XetKeys {
    key: [u8; 32],
}

impl Default for XetKeys {
    fn default() -> Self {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        XetKeys { key }
    }
}

impl XetKeys {
    fn mac(&self, what: &str, parts: &[&str]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(what.as_bytes());
        for part in parts {
            // Each part is length-prefixed: no two lists of parts sign the same bytes.
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }

    /// A read token for `repository` (an OCI name), and when it ends (Unix seconds).
    pub fn token(&self, repository: &str, now: u64) -> (String, u64) {
        let exp = now + TOKEN_SECONDS;
        let claims = format!("{exp}:{repository}");
        let sig = self.mac("token", &[&claims]).finalize().into_bytes();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        (format!("{}.{}", b64.encode(&claims), hex::encode(sig)), exp)
    }

    /// The repository a token grants, if it is one of ours and has not ended.
    pub fn repository(&self, token: &str, now: u64) -> Option<String> {
        let (claims, sig) = token.split_once('.')?;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = String::from_utf8(b64.decode(claims).ok()?).ok()?;
        let sig = hex::decode(sig).ok()?;
        self.mac("token", &[&claims]).verify_slice(&sig).ok()?;
        let (exp, repository) = claims.split_once(':')?;
        (exp.parse::<u64>().ok()? > now).then(|| repository.to_string())
    }

    /// The signature of a xorb URL.
    pub fn xorb_sig(&self, blob: &str, index: u64, exp: u64) -> String {
        let mac = self.mac("xorb", &[blob, &index.to_string(), &exp.to_string()]);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Is `sig` ours for this xorb, and `exp` not past?
    pub fn xorb_ok(&self, blob: &str, index: u64, exp: u64, sig: &str, now: u64) -> bool {
        let Ok(sig) = hex::decode(sig) else {
            return false;
        };
        let mac = self.mac("xorb", &[blob, &index.to_string(), &exp.to_string()]);
        exp > now && mac.verify_slice(&sig).is_ok()
    }
}

/// Xorb `index` of a blob: where its data starts in the blob, and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Xorb {
    pub start: u64,
    pub len: u64,
}

impl Xorb {
    /// `None` past the blob's end.
    pub fn of(size: u64, index: u64) -> Option<Xorb> {
        let start = index.checked_mul(XORB)?;
        (start < size).then(|| Xorb {
            start,
            len: (size - start).min(XORB),
        })
    }

    pub fn chunks(&self) -> u64 {
        self.len.div_ceil(CHUNK)
    }

    /// The length of its served form (data and a header per chunk).
    pub fn framed_len(&self) -> u64 {
        self.len + HEADER * self.chunks()
    }

    /// Where chunk `c` (≤ `chunks()`) starts in the served form.
    pub fn framed_offset(&self, c: u64) -> u64 {
        (c * (CHUNK + HEADER)).min(self.framed_len())
    }

    /// Data bytes of chunk `c`.
    pub fn chunk_len(&self, c: u64) -> u64 {
        (self.len - c * CHUNK).min(CHUNK)
    }

    /// Data bytes of chunks `[c0, c1)`.
    pub fn data_len(&self, c0: u64, c1: u64) -> u64 {
        (c1 * CHUNK).min(self.len) - c0 * CHUNK
    }
}

/// The header of an uncompressed chunk of `len` (≤ [`CHUNK`]) bytes.
pub fn chunk_header(len: u64) -> [u8; HEADER as usize] {
    let l = (len as u32).to_le_bytes();
    [0, l[0], l[1], l[2], 0, l[0], l[1], l[2]]
}

/// One term of a reconstruction: chunks `[c0, c1)` of xorb `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    pub index: u64,
    pub chunks: (u64, u64),
    /// Data bytes the chunks hold.
    pub unpacked: u64,
    /// Where they are in the xorb's served form, inclusive (an HTTP range).
    pub bytes: (u64, u64),
}

/// How bytes `[start, end)` of a blob of `size` bytes are made: the terms, and how far into
/// the first one the range starts. `None` when `start` is at or past the end.
pub fn plan(size: u64, start: u64, end: u64) -> Option<(u64, Vec<Term>)> {
    let end = end.min(size);
    if start >= end {
        return None;
    }
    let terms = (start / XORB..=(end - 1) / XORB)
        .filter_map(|index| {
            let xorb = Xorb::of(size, index)?;
            let from = start.max(xorb.start) - xorb.start;
            let to = end.min(xorb.start + xorb.len) - xorb.start;
            let (c0, c1) = (from / CHUNK, to.div_ceil(CHUNK));
            let unpacked = xorb.data_len(c0, c1);
            let first = xorb.framed_offset(c0);
            Some(Term {
                index,
                chunks: (c0, c1),
                unpacked,
                bytes: (first, first + unpacked + HEADER * (c1 - c0) - 1),
            })
        })
        .collect();
    Some((start % CHUNK, terms))
}

/// The id of xorb `index` of `blob` (hex SHA-256), as the client knows it.
pub fn xorb_id(blob: &str, index: u64) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "hoist virtual xorb\0{blob}\0{index}\0{CHUNK}\0{XORB}"
    ));
    hex::encode(h.finalize())
}

/// The reconstruction answer for `blob`, in the shape of API `version` (1 or 2); `url`
/// makes the signed URL of a xorb by index.
pub fn reconstruction_json(
    version: u8,
    blob: &str,
    offset: u64,
    terms: &[Term],
    url: impl Fn(u64) -> String,
) -> Value {
    let range = |a: u64, b: u64| json!({ "start": a, "end": b });
    let mut fetch = Map::new();
    let terms_json: Vec<Value> = terms
        .iter()
        .map(|t| {
            let id = xorb_id(blob, t.index);
            let chunks = range(t.chunks.0, t.chunks.1);
            let bytes = range(t.bytes.0, t.bytes.1);
            let entry = if version == 1 {
                json!([{ "range": chunks, "url": url(t.index), "url_range": bytes }])
            } else {
                json!([{ "url": url(t.index), "ranges": [{ "chunks": chunks, "bytes": bytes }] }])
            };
            fetch.insert(id.clone(), entry);
            json!({ "hash": id, "unpacked_length": t.unpacked, "range": chunks })
        })
        .collect();
    let key = if version == 1 { "fetch_info" } else { "xorbs" };
    json!({ "offset_into_first_range": offset, "terms": terms_json, key: fetch })
}

/// A CAS request, parsed from the path after [`CAS_PREFIX`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasRoute {
    /// `/v1|v2/reconstructions/{file}`: `file` is a blob's hex SHA-256.
    Reconstruction { version: u8, blob: String },
    /// `/xorbs/{blob}/{index}`.
    Xorb { blob: String, index: u64 },
    /// Anything else under the prefix (the client's telemetry posts, for one).
    Other,
}

/// `None`: not a CAS path.
pub fn parse(path: &str) -> Option<CasRoute> {
    let rest = path.strip_prefix(CAS_PREFIX)?.strip_prefix('/')?;
    let hex64 = |s: &str| {
        (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_lowercase())
    };
    let segs: Vec<&str> = rest.split('/').collect();
    Some(match segs[..] {
        [v @ ("v1" | "v2"), "reconstructions", file] => match hex64(file) {
            Some(blob) => CasRoute::Reconstruction {
                version: if v == "v1" { 1 } else { 2 },
                blob,
            },
            None => CasRoute::Other,
        },
        ["xorbs", blob, index] => match (hex64(blob), index.parse::<u64>()) {
            // The plain decimal form only: one URL per xorb.
            (Some(blob), Ok(i)) if i.to_string() == index => CasRoute::Xorb { blob, index: i },
            _ => CasRoute::Other,
        },
        _ => CasRoute::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOB: &str = "aa00000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn a_token_grants_its_repository_until_it_ends_and_nothing_else() {
        let keys = XetKeys::default();
        let (token, exp) = keys.token("team/model", 1000);
        assert_eq!(exp, 1000 + TOKEN_SECONDS);
        assert_eq!(keys.repository(&token, 1000).as_deref(), Some("team/model"));
        assert_eq!(keys.repository(&token, exp), None, "ended");
        assert_eq!(
            XetKeys::default().repository(&token, 1000),
            None,
            "another key"
        );
        let (claims, sig) = token.split_once('.').unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forged = b64.encode(format!("{exp}:team/other"));
        assert_eq!(keys.repository(&format!("{forged}.{sig}"), 1000), None);
        assert_eq!(keys.repository(claims, 1000), None);
        assert_eq!(keys.repository("", 1000), None);
    }

    #[test]
    fn a_xorb_signature_holds_for_its_blob_index_and_time_only() {
        let keys = XetKeys::default();
        let sig = keys.xorb_sig(BLOB, 3, 2000);
        assert!(keys.xorb_ok(BLOB, 3, 2000, &sig, 1999));
        assert!(!keys.xorb_ok(BLOB, 3, 2000, &sig, 2000), "ended");
        assert!(!keys.xorb_ok(BLOB, 4, 2000, &sig, 1000));
        assert!(!keys.xorb_ok(BLOB, 3, 2001, &sig, 1000));
        assert!(!keys.xorb_ok(&BLOB.replace("aa", "ab"), 3, 2000, &sig, 1000));
        assert!(!keys.xorb_ok(BLOB, 3, 2000, "zz", 1000));
    }

    /// The served form of a xorb, made the slow way: header, data, header, data…
    fn framed(data: &[u8], xorb: Xorb) -> Vec<u8> {
        let mut out = Vec::new();
        for c in 0..xorb.chunks() {
            let at = (xorb.start + c * CHUNK) as usize;
            let len = xorb.chunk_len(c) as usize;
            out.extend_from_slice(&chunk_header(len as u64));
            out.extend_from_slice(&data[at..at + len]);
        }
        out
    }

    /// What a client rebuilds from a plan: each term's chunks unframed, joined, the first
    /// term's offset skipped and the end cut at the range's end.
    fn rebuild(data: &[u8], start: u64, end: u64) -> Vec<u8> {
        let size = data.len() as u64;
        let (offset, terms) = plan(size, start, end).unwrap();
        let mut out = Vec::new();
        for t in &terms {
            let xorb = Xorb::of(size, t.index).unwrap();
            let served = framed(data, xorb);
            let mut part = &served[t.bytes.0 as usize..=t.bytes.1 as usize];
            let mut unpacked = Vec::new();
            while !part.is_empty() {
                let len = u32::from_le_bytes([part[5], part[6], part[7], 0]) as usize;
                assert_eq!(part[1..4], part[5..8], "compressed length is the length");
                unpacked.extend_from_slice(&part[8..8 + len]);
                part = &part[8 + len..];
            }
            assert_eq!(unpacked.len() as u64, t.unpacked);
            out.extend_from_slice(&unpacked);
        }
        out.drain(..offset as usize);
        out.truncate((end.min(size) - start) as usize);
        out
    }

    #[test]
    fn every_range_of_a_blob_is_rebuilt_from_its_plan() {
        let size = 2 * XORB + 3 * CHUNK + 17;
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let ranges = [
            (0, size),
            (0, 1),
            (5, CHUNK + 3),
            (XORB - 1, XORB + 1),
            (XORB, 2 * XORB),
            (2 * XORB + CHUNK, size + 100),
            (size - 1, size),
        ];
        for (start, end) in ranges {
            let got = rebuild(&data, start, end);
            let want = &data[start as usize..end.min(size) as usize];
            assert!(got == want, "range {start}..{end}");
        }
        assert_eq!(plan(size, size, size + 1), None);
        assert_eq!(plan(0, 0, 10), None);
    }

    #[test]
    fn a_plan_stays_within_the_clients_limits() {
        let size = 3 * XORB;
        let (_, terms) = plan(size, 0, size).unwrap();
        assert_eq!(terms.len(), 3);
        for t in terms {
            assert!(t.unpacked <= XORB && t.chunks.1 - t.chunks.0 <= 8192);
        }
        assert_eq!(chunk_header(CHUNK), [0, 0, 0, 2, 0, 0, 0, 2]);
    }

    #[test]
    fn cas_paths_are_parsed_strictly() {
        let p = |s: &str| parse(&format!("{CAS_PREFIX}{s}"));
        assert_eq!(
            p(&format!("/v2/reconstructions/{}", BLOB.to_uppercase())),
            Some(CasRoute::Reconstruction {
                version: 2,
                blob: BLOB.into()
            })
        );
        assert_eq!(
            p(&format!("/xorbs/{BLOB}/12")),
            Some(CasRoute::Xorb {
                blob: BLOB.into(),
                index: 12
            })
        );
        for bad in [
            "/v3/reconstructions/x".to_string(),
            format!("/v2/reconstructions/{BLOB}/.."),
            format!("/v2/reconstructions/..%2f{BLOB}"),
            format!("/xorbs/{BLOB}/012"),
            format!("/xorbs/{BLOB}/+1"),
            format!("/xorbs/{BLOB}/99999999999999999999999"),
            "/v1/telemetry".to_string(),
        ] {
            assert_eq!(p(&bad), Some(CasRoute::Other), "{bad}");
        }
        assert_eq!(parse("/api/models/x"), None);
        assert_eq!(parse("/api/xet-casx/v2"), None);
    }

    #[test]
    fn both_answer_shapes_name_each_xorb_once_with_its_url() {
        let size = XORB + 10;
        let (offset, terms) = plan(size, 0, size).unwrap();
        for version in [1, 2] {
            let v = reconstruction_json(version, BLOB, offset, &terms, |i| format!("u{i}"));
            assert_eq!(v["terms"].as_array().unwrap().len(), 2);
            let key = if version == 1 { "fetch_info" } else { "xorbs" };
            let fetch = v[key].as_object().unwrap();
            assert_eq!(fetch.len(), 2);
            let id = xorb_id(BLOB, 1);
            assert_eq!(fetch[&id][0]["url"], "u1");
            assert_eq!(v["terms"][1]["unpacked_length"], 10);
        }
    }
}
