//! The signature file of OpenSSF model signing (`model.sig`): a Sigstore bundle v0.3 holding a
//! DSSE envelope of an in-toto Statement v1 whose predicate lists every file of the model
//! with its SHA-256. Written and read here as plain JSON (serde_json): the bundle is small
//! and its fields are few; a protobuf stack would add much for nothing.
//!
//! Read from outside, everything is checked and bounded: the bundle's size and media type,
//! one signature exactly, the key it names, the statement's types, one subject whose digest
//! is the SHA-256 over the listed digests in order, and every listed name (relative, no `..`,
//! no repeats).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::keys::{PrivateKey, PublicKey};
use super::SignError;

pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
/// Most bytes a bundle may have (a model of 50,000 files lists about 5 MiB).
pub const MAX_BUNDLE_BYTES: u64 = 16 << 20;
/// Most files a statement may list.
pub const MAX_RESOURCES: usize = 100_000;

/// What a verified signature vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The hint of the key that signed.
    pub key: String,
    /// The subject's name (the signed folder's name).
    pub name: String,
    /// Each file's path and its SHA-256 (hex).
    pub files: BTreeMap<String, String>,
    /// Paths the signer left out on purpose.
    pub ignore_paths: Vec<String>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// DSSE's pre-authentication encoding: what the signature is over.
fn pae(payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {PAYLOAD_TYPE} {} ",
        PAYLOAD_TYPE.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// The bundle signing `files` (path → SHA-256 hex) of the model `name` with `key`; names in
/// `ignore_paths` are left out by verifiers that re-hash the folder.
pub fn sign(
    name: &str,
    files: &BTreeMap<String, String>,
    ignore_paths: &[String],
    key: &PrivateKey,
) -> Vec<u8> {
    let mut root = Sha256::new();
    let resources: Vec<Value> = files
        .iter()
        .map(|(path, hex)| {
            root.update(hex::decode(hex).expect("file digests are hex"));
            json!({"name": path, "algorithm": "sha256", "digest": hex})
        })
        .collect();
    let statement = json!({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": hex::encode(root.finalize())}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": false,
                "ignore_paths": ignore_paths,
            },
            "resources": resources,
        },
    });
    let payload = serde_json::to_vec(&statement).expect("statement serialises");
    let signature = key.sign(&pae(&payload));
    let bundle = json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": key.public().hint()},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": b64().encode(&payload),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": b64().encode(signature), "keyid": ""}],
        },
    });
    serde_json::to_vec_pretty(&bundle).expect("bundle serialises")
}

/// Check `bundle` against `keys` (any one may vouch) and read what it vouches for.
pub fn open(bundle: &[u8], keys: &[PublicKey]) -> Result<Signed, SignError> {
    let envelope = Envelope::read(bundle)?;
    let candidates: Vec<&PublicKey> = match envelope.hint.as_str() {
        "" => keys.iter().collect(),
        hint => keys.iter().filter(|k| k.hint() == hint).collect(),
    };
    if candidates.is_empty() {
        return Err(SignError::OtherKey(envelope.hint));
    }
    let message = pae(&envelope.payload);
    let key = candidates
        .into_iter()
        .find(|k| k.verifies(&message, &envelope.signature))
        .ok_or(SignError::BadSignature)?;
    let mut signed = statement(&envelope.payload)?;
    signed.key = key.hint();
    Ok(signed)
}

/// What `bundle` claims, read with every check but the signature's: for showing a signature
/// (`hoist inspect`), never for trusting one. `key` is the bundle's key hint.
pub fn describe(bundle: &[u8]) -> Result<Signed, SignError> {
    let envelope = Envelope::read(bundle)?;
    let mut claimed = statement(&envelope.payload)?;
    claimed.key = envelope.hint;
    Ok(claimed)
}

/// A bundle's DSSE envelope, its shape checked: the signed payload, its one signature and the
/// hint of the key that claims it.
struct Envelope {
    hint: String,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl Envelope {
    fn read(bundle: &[u8]) -> Result<Envelope, SignError> {
        if bundle.len() as u64 > MAX_BUNDLE_BYTES {
            return Err(SignError::TooLarge(MAX_BUNDLE_BYTES));
        }
        let bad = |why: &str| SignError::Bundle(why.to_string());
        let v: Value =
            serde_json::from_slice(bundle).map_err(|e| bad(&format!("not JSON ({e})")))?;
        let media_type = v["mediaType"].as_str().unwrap_or_default();
        if media_type != BUNDLE_MEDIA_TYPE {
            return Err(bad(&format!(
                "its media type is {media_type:?}, not {BUNDLE_MEDIA_TYPE}"
            )));
        }
        let material = &v["verificationMaterial"];
        if material.get("publicKey").is_none()
            && (material.get("certificate").is_some()
                || material.get("x509CertificateChain").is_some())
        {
            return Err(SignError::Keyless);
        }
        let envelope = &v["dsseEnvelope"];
        if envelope["payloadType"].as_str() != Some(PAYLOAD_TYPE) {
            return Err(bad("it holds no DSSE envelope of an in-toto statement"));
        }
        let signatures = envelope["signatures"].as_array().map_or(&[][..], |s| s);
        let [signature] = signatures else {
            return Err(bad(&format!(
                "its envelope has {} signatures; a model signature has exactly one",
                signatures.len()
            )));
        };
        let decode = |field: &Value, what: &str| {
            field
                .as_str()
                .and_then(|s| b64().decode(s).ok())
                .ok_or_else(|| bad(&format!("its {what} is not base64")))
        };
        Ok(Envelope {
            payload: decode(&envelope["payload"], "payload")?,
            signature: decode(&signature["sig"], "signature")?,
            hint: material["publicKey"]["hint"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        })
    }
}

/// The statement's files, after checking its types, subject and names.
fn statement(payload: &[u8]) -> Result<Signed, SignError> {
    let bad = |why: String| SignError::Statement(why);
    let s: Value = serde_json::from_slice(payload).map_err(|e| bad(format!("not JSON ({e})")))?;
    if s["_type"] != STATEMENT_TYPE {
        return Err(bad(format!(
            "its type is {}, not {STATEMENT_TYPE}",
            s["_type"]
        )));
    }
    if s["predicateType"] != PREDICATE_TYPE {
        return Err(bad(format!(
            "its predicate type is {}, not {PREDICATE_TYPE}",
            s["predicateType"]
        )));
    }
    let subjects = s["subject"].as_array().map_or(&[][..], |a| a);
    let [subject] = subjects else {
        return Err(bad(format!("it has {} subjects, not one", subjects.len())));
    };
    let root = subject["digest"]["sha256"].as_str().unwrap_or_default();
    let resources = s["predicate"]["resources"]
        .as_array()
        .ok_or_else(|| bad("it lists no resources".into()))?;
    if resources.len() > MAX_RESOURCES {
        return Err(bad(format!("it lists more than {MAX_RESOURCES} files")));
    }
    let mut files = BTreeMap::new();
    let mut hasher = Sha256::new();
    for r in resources {
        let (name, digest) = (
            r["name"].as_str().unwrap_or_default(),
            r["digest"].as_str().unwrap_or_default(),
        );
        if r["algorithm"] != "sha256" {
            return Err(bad(format!(
                "{name:?} is hashed with {}, not sha256",
                r["algorithm"]
            )));
        }
        let bytes = hex::decode(digest)
            .ok()
            .filter(|b| b.len() == 32 && digest.bytes().all(|c| !c.is_ascii_uppercase()))
            .ok_or_else(|| bad(format!("{name:?} has no SHA-256 digest")))?;
        if !safe_name(name) {
            return Err(bad(format!(
                "it names {name:?}: a file of the model is a relative path without `..`"
            )));
        }
        if files.insert(name.to_string(), digest.to_string()).is_some() {
            return Err(bad(format!("it names {name:?} twice")));
        }
        hasher.update(bytes);
    }
    let computed = hex::encode(hasher.finalize());
    if computed != root {
        return Err(bad(format!(
            "its subject's digest {root} is not that of the files it lists ({computed})"
        )));
    }
    let ignore_paths = s["predicate"]["serialization"]["ignore_paths"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok(Signed {
        key: String::new(),
        name: subject["name"].as_str().unwrap_or_default().to_string(),
        files,
        ignore_paths,
    })
}

fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\\')
        && !name.contains('\0')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PrivateKey {
        PrivateKey::P256(p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap())
    }

    fn files() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("a/config.json".to_string(), hex::encode([1u8; 32])),
            ("w.bin".to_string(), hex::encode([2u8; 32])),
        ])
    }

    /// Re-sign `statement` (edited) with `key`, as a forger holding the key could.
    fn forge(statement: Value, key: &PrivateKey) -> Vec<u8> {
        let payload = serde_json::to_vec(&statement).unwrap();
        let sig = key.sign(&pae(&payload));
        serde_json::to_vec(&json!({
            "mediaType": BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {"publicKey": {"hint": key.public().hint()}},
            "dsseEnvelope": {"payload": b64().encode(&payload), "payloadType": PAYLOAD_TYPE,
                "signatures": [{"sig": b64().encode(sig), "keyid": ""}]},
        }))
        .unwrap()
    }

    fn statement_of(bundle: &[u8]) -> Value {
        let v: Value = serde_json::from_slice(bundle).unwrap();
        let payload = b64()
            .decode(v["dsseEnvelope"]["payload"].as_str().unwrap())
            .unwrap();
        serde_json::from_slice(&payload).unwrap()
    }

    #[test]
    fn a_signed_bundle_opens_with_its_key_only() {
        let k = key();
        let bundle = sign("m", &files(), &[".hoist-record.json".into()], &k);
        let signed = open(&bundle, &[k.public()]).unwrap();
        assert_eq!(signed.files, files());
        assert_eq!(signed.name, "m");
        assert_eq!(signed.key, k.public().hint());
        let other = PrivateKey::P256(p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap());
        assert!(matches!(
            open(&bundle, &[other.public()]),
            Err(SignError::OtherKey(_))
        ));
    }

    #[test]
    fn hostile_statements_are_refused_even_when_signed() {
        let k = key();
        let good = statement_of(&sign("m", &files(), &[], &k));
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "subject's digest",
                Box::new(|s| s["subject"][0]["digest"]["sha256"] = json!(hex::encode([0u8; 32]))),
            ),
            (
                "relative path",
                Box::new(|s| s["predicate"]["resources"][0]["name"] = json!("../etc/passwd")),
            ),
            (
                "relative path",
                Box::new(|s| s["predicate"]["resources"][0]["name"] = json!("/etc/passwd")),
            ),
            (
                "twice",
                Box::new(|s| s["predicate"]["resources"][1]["name"] = json!("a/config.json")),
            ),
            (
                "predicate type",
                Box::new(|s| s["predicateType"] = json!("https://slsa.dev/provenance/v1")),
            ),
            ("subjects", Box::new(|s| s["subject"] = json!([]))),
            (
                "sha256",
                Box::new(|s| s["predicate"]["resources"][0]["algorithm"] = json!("md5")),
            ),
        ];
        for (why, edit) in cases {
            let mut s = good.clone();
            edit(&mut s);
            let err = open(&forge(s, &k), &[k.public()]).unwrap_err();
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn envelopes_and_bundles_out_of_shape_are_refused() {
        let k = key();
        let bundle = sign("m", &files(), &[], &k);
        let mut v: Value = serde_json::from_slice(&bundle).unwrap();
        v["mediaType"] = json!("application/vnd.dev.sigstore.bundle+json;version=0.1");
        assert!(open(&serde_json::to_vec(&v).unwrap(), &[k.public()])
            .unwrap_err()
            .to_string()
            .contains("media type"));
        // Two signatures, the first bad: refused, not searched for a good one.
        let mut v: Value = serde_json::from_slice(&bundle).unwrap();
        let good = v["dsseEnvelope"]["signatures"][0].clone();
        v["dsseEnvelope"]["signatures"] =
            json!([{"sig": b64().encode([0u8; 70]), "keyid": ""}, good]);
        assert!(open(&serde_json::to_vec(&v).unwrap(), &[k.public()])
            .unwrap_err()
            .to_string()
            .contains("exactly one"));
        // The payload changed after signing.
        let mut v: Value = serde_json::from_slice(&bundle).unwrap();
        let mut s = statement_of(&bundle);
        s["predicate"]["resources"][0]["digest"] = json!(hex::encode([3u8; 32]));
        v["dsseEnvelope"]["payload"] = json!(b64().encode(serde_json::to_vec(&s).unwrap()));
        assert!(matches!(
            open(&serde_json::to_vec(&v).unwrap(), &[k.public()]),
            Err(SignError::BadSignature)
        ));
        // Keyless.
        let mut v: Value = serde_json::from_slice(&bundle).unwrap();
        v["verificationMaterial"] = json!({"certificate": {"rawBytes": "AAAA"}});
        assert!(matches!(
            open(&serde_json::to_vec(&v).unwrap(), &[k.public()]),
            Err(SignError::Keyless)
        ));
        // Too large, before parsing.
        let huge = vec![b' '; (MAX_BUNDLE_BYTES + 1) as usize];
        assert!(matches!(
            open(&huge, &[k.public()]),
            Err(SignError::TooLarge(_))
        ));
    }

    #[test]
    fn a_key_on_another_curve_does_not_verify() {
        let k = key();
        let bundle = sign("m", &files(), &[], &k);
        let p384 = PrivateKey::P384(p384::ecdsa::SigningKey::from_slice(&[7u8; 48]).unwrap());
        let mut v: Value = serde_json::from_slice(&bundle).unwrap();
        v["verificationMaterial"]["publicKey"]["hint"] = json!(p384.public().hint());
        assert!(matches!(
            open(&serde_json::to_vec(&v).unwrap(), &[p384.public()]),
            Err(SignError::BadSignature)
        ));
    }
}
