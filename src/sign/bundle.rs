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

use super::certs::{identity_of, CertIdentity, MAX_CERT_BYTES, MAX_CHAIN};
use super::keys::PrivateKey;
use super::sigstore::{self, Logged, Material};
use super::{SignError, Trust};

pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
/// Most bytes a bundle may have (a model of 50,000 files lists about 5 MiB).
pub const MAX_BUNDLE_BYTES: u64 = 16 << 20;
/// Most files a statement may list.
pub const MAX_RESOURCES: usize = 100_000;

/// How a signature names its signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// A raw key, named by its hint.
    Key,
    /// A certificate chain (the reference tool's `certificate` method): who the signing
    /// certificate names.
    Certificate(CertIdentity),
    /// Sigstore (keyless): a Fulcio certificate and a transparency-log entry.
    Sigstore(Logged),
}

impl Method {
    /// `key`, `certificate` or `sigstore`.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Key => "key",
            Method::Certificate(_) => "certificate",
            Method::Sigstore(_) => "sigstore",
        }
    }
}

/// What a verified signature vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// How the signer is named.
    pub method: Method,
    /// The hint of the key that signed (empty for a certificate).
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
/// `ignore_paths` are left out by verifiers that re-hash the folder. With a certificate
/// `chain` (DER, the key's certificate first) the bundle carries it in place of the key's hint.
pub fn sign(
    name: &str,
    files: &BTreeMap<String, String>,
    ignore_paths: &[String],
    key: &PrivateKey,
    chain: &[Vec<u8>],
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
    let material = if chain.is_empty() {
        json!({"publicKey": {"hint": key.public().hint()}, "tlogEntries": []})
    } else {
        let certificates: Vec<Value> = chain
            .iter()
            .map(|der| json!({"rawBytes": b64().encode(der)}))
            .collect();
        json!({"x509CertificateChain": {"certificates": certificates}, "tlogEntries": []})
    };
    let bundle = json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": material,
        "dsseEnvelope": {
            "payload": b64().encode(&payload),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": b64().encode(signature), "keyid": ""}],
        },
    });
    serde_json::to_vec_pretty(&bundle).expect("bundle serialises")
}

/// Check `bundle` against what `trust` holds (any key may vouch; a certificate chain must
/// reach its roots) and read what it vouches for.
pub fn open(bundle: &[u8], trust: &Trust) -> Result<Signed, SignError> {
    let envelope = Envelope::read(bundle)?;
    // The statement is read first: a refusal then names what is wrong with it, whoever signed.
    let mut signed = statement(&envelope.payload)?;
    (signed.method, signed.key) = verify_signer(&envelope, trust)?;
    Ok(signed)
}

/// The envelope's signature checked against what `trust` holds: how it was signed, and the
/// key's hint for a key signature.
pub(super) fn verify_signer(
    envelope: &Envelope,
    trust: &Trust,
) -> Result<(Method, String), SignError> {
    let message = pae(&envelope.payload);
    Ok(match &envelope.signer {
        Signer::Key(hint) => {
            let candidates: Vec<_> = match hint.as_str() {
                "" => trust.keys.iter().collect(),
                hint => trust.keys.iter().filter(|k| k.hint() == hint).collect(),
            };
            if candidates.is_empty() {
                return Err(SignError::OtherKey(hint.clone()));
            }
            let key = candidates
                .into_iter()
                .find(|k| k.verifies(&message, &envelope.signature))
                .ok_or(SignError::BadSignature)?;
            (Method::Key, key.hint())
        }
        Signer::Chain(chain) => {
            let Some(certs) = &trust.certs else {
                return Err(SignError::NoRoots(identity_of(&chain[0])?.to_string()));
            };
            let (key, identity) = certs.verify(chain, std::time::SystemTime::now())?;
            if !key.verifies(&message, &envelope.signature) {
                return Err(SignError::BadSignature);
            }
            (Method::Certificate(identity), String::new())
        }
        Signer::Sigstore(material) => {
            let Some(policy) = &trust.sigstore else {
                return Err(SignError::Keyless(claimed_signer(material)));
            };
            let (key, logged) = sigstore::verify(material, &envelope.dsse(&message), policy)?;
            if !key.verifies(&message, &envelope.signature) {
                return Err(SignError::BadSignature);
            }
            (Method::Sigstore(logged), String::new())
        }
    })
}

/// What `bundle` claims, read with every check but the signature's: for showing a signature
/// (`hoist inspect`), never for trusting one. `key` is the bundle's key hint; a certificate's
/// names are read as written.
pub fn describe(bundle: &[u8]) -> Result<Signed, SignError> {
    let envelope = Envelope::read(bundle)?;
    let mut claimed = statement(&envelope.payload)?;
    match envelope.signer {
        Signer::Key(hint) => claimed.key = hint,
        Signer::Chain(chain) => claimed.method = Method::Certificate(identity_of(&chain[0])?),
        Signer::Sigstore(material) => {
            let (identity, issuer) = material.claims()?;
            claimed.method = Method::Sigstore(Logged {
                identity,
                issuer,
                signed_at: material.entry.integrated_time,
            });
        }
    }
    Ok(claimed)
}

/// Who a Sigstore bundle says signed, for an error line (unverified).
fn claimed_signer(material: &Material) -> String {
    match material.claims() {
        Ok((identity, issuer)) => format!("{identity} (issuer {issuer})"),
        Err(e) => format!("an unreadable certificate ({e})"),
    }
}

/// Who a bundle says signed: a key (by its hint, maybe empty) or a certificate chain (DER,
/// signing certificate first, bounded in count and size).
enum Signer {
    Key(String),
    Chain(Vec<Vec<u8>>),
    Sigstore(Box<Material>),
}

impl Signer {
    fn read(material: &Value) -> Result<Signer, SignError> {
        let bad = |why: String| SignError::Bundle(why);
        if !material.is_object() {
            return Err(bad("it has no verification material".into()));
        }
        if material.get("certificate").is_some() {
            return Ok(Signer::Sigstore(Box::new(Material::read(material)?)));
        }
        let Some(chain) = material.get("x509CertificateChain") else {
            let hint = material["publicKey"]["hint"].as_str().unwrap_or_default();
            return Ok(Signer::Key(hint.to_string()));
        };
        if material.get("publicKey").is_some() {
            return Err(bad("it names both a key and a certificate chain".into()));
        }
        let listed = chain["certificates"].as_array().map_or(&[][..], |c| c);
        if listed.is_empty() || listed.len() > MAX_CHAIN {
            return Err(bad(format!(
                "its certificate chain has {} certificates (1 to {MAX_CHAIN})",
                listed.len()
            )));
        }
        let mut certs = Vec::with_capacity(listed.len());
        for cert in listed {
            let text = cert["rawBytes"].as_str().unwrap_or_default();
            // Base64 is 4/3 of the bytes: refuse a large one before decoding it.
            if text.len() > MAX_CERT_BYTES * 4 / 3 + 4 {
                return Err(bad(format!(
                    "a certificate of its chain is over {MAX_CERT_BYTES} bytes"
                )));
            }
            let der = b64()
                .decode(text)
                .map_err(|_| bad("a certificate of its chain is not base64".into()))?;
            certs.push(der);
        }
        Ok(Signer::Chain(certs))
    }
}

/// A bundle's DSSE envelope, its shape checked: the signed payload, its one signature and the
/// hint of the key that claims it.
pub(super) struct Envelope {
    signer: Signer,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl Envelope {
    /// Its parts a log entry names, with `pae`, the bytes the signature is over.
    fn dsse<'a>(&'a self, pae: &'a [u8]) -> super::rekor::Dsse<'a> {
        super::rekor::Dsse {
            payload: &self.payload,
            pae,
            signature: &self.signature,
        }
    }

    pub(super) fn read(bundle: &[u8]) -> Result<Envelope, SignError> {
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
        super::shape::check(&v)?;
        let signer = Signer::read(&v["verificationMaterial"])?;
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
            signer,
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
        method: Method::Key,
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

    fn keys(keys: &[crate::sign::PublicKey]) -> Trust {
        Trust {
            keys: keys.to_vec(),
            ..Default::default()
        }
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
        let bundle = sign("m", &files(), &[".hoist-record.json".into()], &k, &[]);
        let signed = open(&bundle, &keys(&[k.public()])).unwrap();
        assert_eq!(signed.files, files());
        assert_eq!(signed.name, "m");
        assert_eq!(signed.key, k.public().hint());
        let other = PrivateKey::P256(p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap());
        assert!(matches!(
            open(&bundle, &keys(&[other.public()])),
            Err(SignError::OtherKey(_))
        ));
    }

    #[test]
    fn hostile_statements_are_refused_even_when_signed() {
        let k = key();
        let good = statement_of(&sign("m", &files(), &[], &k, &[]));
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
            let err = open(&forge(s, &k), &keys(&[k.public()])).unwrap_err();
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn envelopes_and_bundles_out_of_shape_are_refused() {
        let k = key();
        let bundle = sign("m", &files(), &[], &k, &[]);
        let mut v: Value = serde_json::from_slice(&bundle).unwrap();
        v["mediaType"] = json!("application/vnd.dev.sigstore.bundle+json;version=0.1");
        assert!(open(&serde_json::to_vec(&v).unwrap(), &keys(&[k.public()]))
            .unwrap_err()
            .to_string()
            .contains("media type"));
        // Two signatures, the first bad: refused, not searched for a good one.
        let mut v: Value = serde_json::from_slice(&bundle).unwrap();
        let good = v["dsseEnvelope"]["signatures"][0].clone();
        v["dsseEnvelope"]["signatures"] =
            json!([{"sig": b64().encode([0u8; 70]), "keyid": ""}, good]);
        assert!(open(&serde_json::to_vec(&v).unwrap(), &keys(&[k.public()]))
            .unwrap_err()
            .to_string()
            .contains("exactly one"));
        // The payload changed after signing.
        let mut v: Value = serde_json::from_slice(&bundle).unwrap();
        let mut s = statement_of(&bundle);
        s["subject"][0]["name"] = json!("another model");
        v["dsseEnvelope"]["payload"] = json!(b64().encode(serde_json::to_vec(&s).unwrap()));
        assert!(matches!(
            open(&serde_json::to_vec(&v).unwrap(), &keys(&[k.public()])),
            Err(SignError::BadSignature)
        ));
        // Keyless.
        let mut v: Value = serde_json::from_slice(&bundle).unwrap();
        v["verificationMaterial"] = json!({"certificate": {"rawBytes": "AAAA"}});
        assert!(matches!(
            open(&serde_json::to_vec(&v).unwrap(), &keys(&[k.public()])),
            Err(SignError::Sigstore(_))
        ));
        // Too large, before parsing.
        let huge = vec![b' '; (MAX_BUNDLE_BYTES + 1) as usize];
        assert!(matches!(
            open(&huge, &keys(&[k.public()])),
            Err(SignError::TooLarge(_))
        ));
    }

    #[test]
    fn a_key_on_another_curve_does_not_verify() {
        let k = key();
        let bundle = sign("m", &files(), &[], &k, &[]);
        let p384 = PrivateKey::P384(p384::ecdsa::SigningKey::from_slice(&[7u8; 48]).unwrap());
        let mut v: Value = serde_json::from_slice(&bundle).unwrap();
        v["verificationMaterial"]["publicKey"]["hint"] = json!(p384.public().hint());
        assert!(matches!(
            open(&serde_json::to_vec(&v).unwrap(), &keys(&[p384.public()])),
            Err(SignError::BadSignature)
        ));
    }
}
