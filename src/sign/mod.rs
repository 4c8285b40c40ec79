//! Model signatures in the OpenSSF model signing format (`model_signing` 1.x): a Sigstore
//! bundle whose signed statement lists every file of the model with its SHA-256.
//!
//! A raw layer's digest *is* its file's SHA-256, so hoist signs and verifies from the
//! manifest alone: no second read of the model. A pull with verification keys checks the
//! signature before any file is placed, and requires the signed files to be exactly the
//! manifest's files, digest for digest.
//!
//! | file        | owns                                                            |
//! |-------------|-----------------------------------------------------------------|
//! | `keys.rs`   | EC keys on P-256/384/521, their hints, ECDSA sign and verify     |
//! | `bundle.rs` | the bundle, its DSSE envelope and statement: written, and read with every check |
//! | `shape.rs`  | the fields a bundle may have: an unknown one is refused |
//! | `certs.rs`  | certificate chains to trusted roots (rustls-webpki), identities (subject, SAN) |
//! | `sigstore.rs` | Sigstore bundles offline: trusted root, Fulcio certificate, log entry, identity |
//! | `tlog.rs`   | a Rekor entry: inclusion proof, signed checkpoint (ECDSA or Ed25519), signed entry timestamp |
//! | `rekor.rs`  | a Rekor entry's body bound to the signature: `dsse` 0.0.1 (Rekor v1) and 0.0.2 (v2) |
//! | `sct.rs`    | a Fulcio certificate's embedded SCTs against the root's CT logs (RFC 6962) |
//! | `tsa.rs`    | RFC 3161 timestamps of a Sigstore bundle, against the root's timestamp authorities |
//! | `policy.rs` | what a pull requires: keys, roots, or a policy file per repository (enforce, warn, off) |

mod bundle;
mod certs;
mod keys;
mod policy;
mod rekor;
mod sct;
mod shape;
mod sigstore;
#[cfg(test)]
mod sigstore_tests;
mod tlog;
mod tsa;

use std::collections::BTreeMap;

pub use bundle::{describe, open, sign, Method, Signed, BUNDLE_MEDIA_TYPE, MAX_BUNDLE_BYTES};
pub use certs::{signing_chain, CertIdentity, CertTrust, MAX_CERT_BYTES, MAX_CHAIN};
pub use keys::{PrivateKey, PublicKey};
pub use policy::{Mode, Policy, Requirement, Trust, TrustOptions, Verification};
pub use sigstore::{Logged, SigstoreTrust, TrustedRoot, PUBLIC_GOOD_ROOT};

/// Where a verified pull writes the signature, inside the output folder: the reference
/// tool's `model_signing verify key OUT --signature OUT/model.sig` then checks the folder.
pub const SIGNATURE_FILE: &str = "model.sig";

/// A JSON string field's standard base64, decoded; `None` when missing or not base64.
fn base64_field(v: &serde_json::Value) -> Option<Vec<u8>> {
    use base64::Engine as _;
    v.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
}

/// Most signature referrers a pull looks at (the last the registry lists): a registry may
/// attach any number.
pub const MAX_CANDIDATES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("key: {0}")]
    Key(String),
    #[error("the signature bundle is refused: {0}")]
    Bundle(String),
    #[error("the signature bundle is over {0} bytes")]
    TooLarge(u64),
    #[error("the signature is a Sigstore bundle by {0}; checking it needs the signer's identity and OIDC issuer (--cert-identity, --cert-oidc-issuer)")]
    Keyless(String),
    #[error("the Sigstore signature is refused: {0}")]
    Sigstore(String),
    #[error("the transparency-log entry is refused: {0}")]
    Log(String),
    #[error("the signing certificate is refused: {0}")]
    Certificate(String),
    #[error("the signature is by certificate {0}, and no certificate roots were given to check it (--verify-cert-chain)")]
    NoRoots(String),
    #[error("the signature names key {0}, which is not one of the verification keys")]
    OtherKey(String),
    #[error("the signature does not verify with the verification key: the statement was changed or signed by another key")]
    BadSignature,
    #[error("the signed statement is refused: {0}")]
    Statement(String),
    #[error("the signature does not cover this model: {0}")]
    Mismatch(String),
    #[error("signature policy {0}")]
    Policy(String),
    #[error("the signature policy: {0}")]
    Uncovered(String),
    #[error("{reference} has no signature by a trusted signer ({why})")]
    Unsigned { reference: String, why: String },
}

/// Read the public keys in these PEM files.
pub fn load_public_keys(paths: &[std::path::PathBuf]) -> Result<Vec<PublicKey>, SignError> {
    paths
        .iter()
        .map(|p| PublicKey::from_pem(&read_key(p)?).map_err(|e| in_file(p, e)))
        .collect()
}

/// What a signer signs with: a key, and the certificate chain that names it (empty for a
/// raw key).
pub struct SigningKey {
    pub key: PrivateKey,
    pub chain: Vec<Vec<u8>>,
}

impl SigningKey {
    /// The key in `key`; with `cert`, its certificate (whose key must be this one) and the
    /// intermediates in `chain` after it.
    pub fn load(
        key: &std::path::Path,
        cert: Option<&std::path::Path>,
        chain: &[std::path::PathBuf],
    ) -> Result<SigningKey, SignError> {
        let key = load_private_key(key)?;
        let chain = match cert {
            Some(cert) => signing_chain(&key, cert, chain)?,
            None if !chain.is_empty() => {
                return Err(SignError::Key(
                    "a certificate chain was given without the signing certificate (--cert)".into(),
                ))
            }
            None => Vec::new(),
        };
        Ok(SigningKey { key, chain })
    }

    /// Who signs, in words: the key's hint or the certificate's names.
    pub fn describe(&self) -> String {
        match self.chain.first().map(|c| certs::identity_of(c)) {
            Some(Ok(identity)) => format!("certificate {identity}"),
            _ => format!("key {}", self.key.public().hint()),
        }
    }
}

/// Read the private key in this PEM file.
pub fn load_private_key(path: &std::path::Path) -> Result<PrivateKey, SignError> {
    PrivateKey::from_pem(&read_key(path)?).map_err(|e| in_file(path, e))
}

/// A key file's text, bounded: no key file is larger.
fn read_key(path: &std::path::Path) -> Result<String, SignError> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 << 10).read_to_string(&mut text))
        .map_err(|e| SignError::Key(format!("{}: {e}", path.display())))?;
    Ok(text)
}

fn in_file(path: &std::path::Path, e: SignError) -> SignError {
    match e {
        SignError::Key(why) => SignError::Key(format!("{}: {why}", path.display())),
        other => other,
    }
}

/// Require the signed files to be exactly `files` (path → SHA-256 hex): nothing missing,
/// nothing more, no digest different. The message lists the first few differences.
pub fn covers(signed: &Signed, files: &BTreeMap<String, String>) -> Result<(), SignError> {
    let mut differences = Vec::new();
    for (path, digest) in files {
        match signed.files.get(path) {
            None => differences.push(format!("{path} is not signed")),
            Some(d) if d != digest => {
                differences.push(format!("{path} has other bytes than signed"))
            }
            Some(_) => {}
        }
    }
    for path in signed.files.keys().filter(|p| !files.contains_key(*p)) {
        differences.push(format!("{path} is signed but not in the model"));
    }
    if differences.is_empty() {
        return Ok(());
    }
    let n = differences.len();
    differences.truncate(5);
    let more = if n > 5 {
        format!(" and {} more", n - 5)
    } else {
        String::new()
    };
    Err(SignError::Mismatch(format!(
        "{}{more}",
        differences.join("; ")
    )))
}

/// What hoist signs as ignored: its own files in an output folder, so that the reference
/// tool verifying a pulled folder looks past them. Only names a pull refuses as a model's
/// file (`.hoist-*`, `.referrers`): `current` is an ordinary name outside a versioned root,
/// and a signature that ignored it everywhere would pass files hidden under it.
pub fn own_paths() -> Vec<String> {
    [
        crate::reserved::RECORD_FILE,
        crate::reserved::STAGING_DIR,
        crate::reserved::VERSIONS_DIR,
        crate::reserved::REFERRERS_DIR,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_set_must_be_the_models_exactly() {
        let files = BTreeMap::from([
            ("a".to_string(), "11".repeat(32)),
            ("b".to_string(), "22".repeat(32)),
        ]);
        let signed = |f: BTreeMap<String, String>| Signed {
            method: Method::Key,
            key: String::new(),
            name: "m".into(),
            files: f,
            ignore_paths: Vec::new(),
        };
        assert!(covers(&signed(files.clone()), &files).is_ok());
        let mut fewer = files.clone();
        fewer.remove("b");
        assert!(covers(&signed(fewer), &files)
            .unwrap_err()
            .to_string()
            .contains("b is not signed"));
        let mut more = files.clone();
        more.insert("c".into(), "33".repeat(32));
        assert!(covers(&signed(more), &files)
            .unwrap_err()
            .to_string()
            .contains("c is signed but not in the model"));
        let mut other = files.clone();
        other.insert("a".into(), "44".repeat(32));
        assert!(covers(&signed(other), &files)
            .unwrap_err()
            .to_string()
            .contains("a has other bytes"));
    }
}
