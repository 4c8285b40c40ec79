//! A transparency-log entry (Rekor v1 or v2), checked offline: the inclusion proof against
//! the root hash it names (RFC 9162 §2.1.3.2), the signed checkpoint that vouches for that
//! root, and the signed entry timestamp where there is one (the log's promise of the entry
//! and its time; Rekor v2 gives none, its entries' time comes from RFC 3161 timestamps).
//!
//! Written here rather than taken from sigstore-rs: that crate brings its own TLS, OAuth and
//! TUF stacks for what is, offline, about 150 lines of hashing and three signature checks
//! with the key types hoist already has (ECDSA through `keys`; Ed25519, the key of Rekor v2
//! logs, through ring, already here for TLS).

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::{PublicKey, SignError};

/// Most proof hashes: a log of 2^64 entries needs 64.
const MAX_PROOF_HASHES: usize = 64;
/// Largest checkpoint note and entry body accepted.
const MAX_CHECKPOINT: usize = 4 << 10;
const MAX_BODY: usize = 256 << 10;

/// One log entry of a bundle, decoded and bounded; nothing in it is trusted yet.
#[derive(Debug, Clone)]
pub struct Entry {
    pub log_index: u64,
    pub log_id: Vec<u8>,
    pub kind: String,
    pub version: String,
    /// The time the log says it took the entry; trusted only with the signed entry timestamp.
    pub integrated_time: Option<i64>,
    pub body: Vec<u8>,
    pub set: Option<Vec<u8>>,
    pub proof: Option<Proof>,
}

#[derive(Debug, Clone)]
pub struct Proof {
    pub log_index: u64,
    pub tree_size: u64,
    pub root_hash: Vec<u8>,
    pub hashes: Vec<Vec<u8>>,
    pub checkpoint: String,
}

fn refused(why: impl Into<String>) -> SignError {
    SignError::Log(why.into())
}

fn b64(v: &Value, what: &str, max: usize) -> Result<Vec<u8>, SignError> {
    let text = v
        .as_str()
        .ok_or_else(|| refused(format!("its {what} is missing")))?;
    if text.len() > max * 4 / 3 + 4 {
        return Err(refused(format!("its {what} is over {max} bytes")));
    }
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| refused(format!("its {what} is not base64")))
}

/// Protobuf's JSON form writes 64-bit integers as strings; either form is read.
fn int(v: &Value, what: &str) -> Result<i64, SignError> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| refused(format!("its {what} is not an integer")))
}

fn uint(v: &Value, what: &str) -> Result<u64, SignError> {
    u64::try_from(int(v, what)?).map_err(|_| refused(format!("its {what} is negative")))
}

impl Entry {
    pub fn read(v: &Value) -> Result<Entry, SignError> {
        let proof = match v.get("inclusionProof") {
            None => None,
            Some(p) => {
                let hashes = p["hashes"].as_array().map_or(&[][..], |h| h);
                if hashes.len() > MAX_PROOF_HASHES {
                    return Err(refused(format!(
                        "its inclusion proof has {} hashes (at most {MAX_PROOF_HASHES})",
                        hashes.len()
                    )));
                }
                let checkpoint = p["checkpoint"]["envelope"].as_str().unwrap_or_default();
                if checkpoint.len() > MAX_CHECKPOINT {
                    return Err(refused("its checkpoint is over 4 KiB"));
                }
                Some(Proof {
                    log_index: uint(&p["logIndex"], "proof's log index")?,
                    tree_size: uint(&p["treeSize"], "proof's tree size")?,
                    root_hash: b64(&p["rootHash"], "proof's root hash", 64)?,
                    hashes: hashes
                        .iter()
                        .map(|h| b64(h, "proof hash", 64))
                        .collect::<Result<_, _>>()?,
                    checkpoint: checkpoint.to_string(),
                })
            }
        };
        let set = match v["inclusionPromise"].get("signedEntryTimestamp") {
            Some(s) => Some(b64(s, "signed entry timestamp", 1024)?),
            None => None,
        };
        Ok(Entry {
            log_index: uint(&v["logIndex"], "log index")?,
            log_id: b64(&v["logId"]["keyId"], "log id", 64)?,
            kind: v["kindVersion"]["kind"].as_str().unwrap_or_default().into(),
            version: v["kindVersion"]["version"]
                .as_str()
                .unwrap_or_default()
                .into(),
            integrated_time: match v.get("integratedTime") {
                Some(t) => Some(int(t, "integrated time")?),
                None => None,
            },
            body: b64(&v["canonicalizedBody"], "body", MAX_BODY)?,
            set,
            proof,
        })
    }

    /// The log's signed entry timestamp, where the entry has one (Rekor v1): its signature
    /// over the entry's body, time, index and log id, in the canonical JSON Rekor signs.
    /// Returns the time it vouches for.
    pub fn signed_time(&self, key: &LogKey) -> Result<Option<i64>, SignError> {
        let Some(set) = &self.set else {
            return Ok(None);
        };
        let time = self
            .integrated_time
            .ok_or_else(|| refused("its signed entry timestamp has no integrated time"))?;
        let signed = format!(
            r#"{{"body":"{}","integratedTime":{},"logID":"{}","logIndex":{}}}"#,
            base64::engine::general_purpose::STANDARD.encode(&self.body),
            time,
            hex::encode(&self.log_id),
            self.log_index
        );
        if !key.verifies(signed.as_bytes(), set) {
            return Err(refused(
                "its signed entry timestamp does not verify with the log's key",
            ));
        }
        Ok(Some(time))
    }

    /// The inclusion proof: the entry's leaf hashed up to the root hash it names, and a
    /// checkpoint signed by the log's key for that root and tree size.
    pub fn check_proof(&self, key: &LogKey, origin_key_id: &[u8]) -> Result<(), SignError> {
        let proof = self
            .proof
            .as_ref()
            .ok_or_else(|| refused("it has no inclusion proof"))?;
        // Rekor v1 numbers entries across its shards (the signed entry timestamp covers that
        // number) and proofs within one; an entry without the timestamp (Rekor v2) has one tree,
        // so its index is the proof's or nothing vouches for it.
        if self.set.is_none() && proof.log_index != self.log_index {
            return Err(refused(
                "its inclusion proof is for another index than the entry's",
            ));
        }
        let leaf = leaf_hash(&self.body);
        let root = root_from_proof(proof.log_index, proof.tree_size, &leaf, &proof.hashes)?;
        if root != proof.root_hash {
            return Err(refused(
                "its inclusion proof does not lead to the root hash it names (another body, or another tree)",
            ));
        }
        let note = Checkpoint::read(&proof.checkpoint)?;
        note.check(key, origin_key_id)?;
        if note.tree_size != proof.tree_size || note.root_hash != proof.root_hash {
            return Err(refused(
                "its checkpoint is for another tree than its inclusion proof",
            ));
        }
        Ok(())
    }
}

/// A transparency log's key: ECDSA (Rekor v1) or Ed25519 (Rekor v2).
#[derive(Debug, Clone)]
pub enum LogKey {
    Ecdsa(PublicKey),
    Ed25519(Vec<u8>),
}

impl LogKey {
    /// A DER SubjectPublicKeyInfo: Ed25519 (RFC 8410), or ECDSA as `keys` reads it.
    pub fn from_spki_der(der: &[u8]) -> Option<LogKey> {
        const ED25519_SPKI: [u8; 12] = [
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        match der.strip_prefix(&ED25519_SPKI[..]) {
            Some(raw) if raw.len() == 32 => Some(LogKey::Ed25519(raw.to_vec())),
            Some(_) => None,
            None => PublicKey::from_spki_der(der).ok().map(LogKey::Ecdsa),
        }
    }

    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            LogKey::Ecdsa(key) => key.verifies(message, signature),
            LogKey::Ed25519(raw) => {
                ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, raw)
                    .verify(message, signature)
                    .is_ok()
            }
        }
    }
}

/// RFC 9162 leaf hash.
fn leaf_hash(body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(body);
    h.finalize().to_vec()
}

fn node_hash(left: &[u8], right: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().to_vec()
}

/// The root an inclusion proof leads to (RFC 9162 §2.1.3.2); a proof of the wrong length
/// for the index and size is refused.
pub fn root_from_proof(
    index: u64,
    size: u64,
    leaf: &[u8],
    hashes: &[Vec<u8>],
) -> Result<Vec<u8>, SignError> {
    if index >= size {
        return Err(refused(format!(
            "its inclusion proof places entry {index} in a tree of {size}"
        )));
    }
    let wrong_length = || refused("its inclusion proof has the wrong number of hashes");
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = leaf.to_vec();
    for p in hashes {
        if p.len() != 32 {
            return Err(refused("a hash of its inclusion proof is not 32 bytes"));
        }
        if snode == 0 {
            return Err(wrong_length());
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(wrong_length());
    }
    Ok(r)
}

/// A signed note (the checkpoint): `origin\nsize\nbase64(root)\n[…]\n\n— name base64(keyhint‖sig)\n`.
struct Checkpoint {
    /// The log's name: the origin line up to ` - ` (Rekor's `rekor.sigstore.dev - <tree id>`).
    origin: String,
    text: String,
    tree_size: u64,
    root_hash: Vec<u8>,
    signatures: Vec<(String, Vec<u8>)>,
}

impl Checkpoint {
    fn read(note: &str) -> Result<Checkpoint, SignError> {
        let bad = || refused("its checkpoint is not a signed note");
        let (text, sigs) = note.split_once("\n\n").ok_or_else(bad)?;
        let text = format!("{text}\n");
        let mut lines = text.lines();
        let (origin, size, root) = (lines.next(), lines.next(), lines.next());
        let origin = origin.ok_or_else(bad)?;
        let origin = origin.split(" - ").next().unwrap_or(origin).to_string();
        let tree_size = size.and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let root_hash = root
            .and_then(|r| base64::engine::general_purpose::STANDARD.decode(r).ok())
            .ok_or_else(bad)?;
        let mut signatures = Vec::new();
        for line in sigs.lines().filter(|l| !l.is_empty()).take(16) {
            let rest = line.strip_prefix("\u{2014} ").ok_or_else(bad)?;
            let (name, sig) = rest.rsplit_once(' ').ok_or_else(bad)?;
            let sig = base64::engine::general_purpose::STANDARD
                .decode(sig)
                .map_err(|_| bad())?;
            signatures.push((name.to_string(), sig));
        }
        Ok(Checkpoint {
            origin,
            text,
            tree_size,
            root_hash,
            signatures,
        })
    }

    /// Signed by the log: a signature line naming the note's origin, whose key hint (the
    /// first 4 bytes of the log id) is the log's, verifying over the note's text.
    fn check(&self, key: &LogKey, log_id: &[u8]) -> Result<(), SignError> {
        let hint = &log_id[..4.min(log_id.len())];
        let signed = self.signatures.iter().any(|(name, sig)| {
            *name == self.origin
                && sig.len() > 4
                && &sig[..4] == hint
                && key.verifies(self.text.as_bytes(), &sig[4..])
        });
        if !signed {
            return Err(refused("its checkpoint is not signed by the log's key"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> Vec<u8> {
        leaf_hash(&[n])
    }

    /// The root of leaves 0..n built the slow way (RFC 9162's MTH).
    fn mth(leaves: &[Vec<u8>]) -> Vec<u8> {
        if leaves.len() == 1 {
            return leaves[0].clone();
        }
        let k = leaves.len().next_power_of_two() / 2;
        let k = if k == leaves.len() { k / 2 } else { k };
        node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
    }

    /// The audit path of leaf m (RFC 9162's PATH).
    fn path(m: usize, leaves: &[Vec<u8>]) -> Vec<Vec<u8>> {
        if leaves.len() == 1 {
            return Vec::new();
        }
        let k = leaves.len().next_power_of_two() / 2;
        let k = if k == leaves.len() { k / 2 } else { k };
        if m < k {
            let mut p = path(m, &leaves[..k]);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = path(m - k, &leaves[k..]);
            p.push(mth(&leaves[..k]));
            p
        }
    }

    #[test]
    fn every_leaf_of_every_small_tree_proves_into_its_root_and_nothing_else_does() {
        for size in 1..=17usize {
            let leaves: Vec<Vec<u8>> = (0..size as u8).map(h).collect();
            let root = mth(&leaves);
            for m in 0..size {
                let p = path(m, &leaves);
                let got = root_from_proof(m as u64, size as u64, &leaves[m], &p).unwrap();
                assert_eq!(got, root, "leaf {m} of {size}");
                // Another leaf, one hash short or long: refused or another root.
                let other = root_from_proof(m as u64, size as u64, &h(200), &p).unwrap();
                assert_ne!(other, root);
                if !p.is_empty() {
                    assert!(root_from_proof(m as u64, size as u64, &leaves[m], &p[1..]).is_err());
                }
                let mut long = p.clone();
                long.push(h(1));
                assert!(root_from_proof(m as u64, size as u64, &leaves[m], &long).is_err());
            }
        }
        assert!(root_from_proof(5, 5, &h(0), &[]).is_err());
    }
}
