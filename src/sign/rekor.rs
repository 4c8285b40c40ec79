//! What a Rekor entry's body must say of the DSSE signature it logs: its hash, its one
//! signature and the signing certificate. Three forms:
//! - `dsse` 0.0.1 (Rekor v1): the payload's hash in hex, the certificate as PEM;
//! - `dsse` 0.0.2 (early Rekor v2, protobuf JSON `DSSELogEntryV002`): the payload's hash in
//!   base64, the certificate as DER;
//! - `hashedrekord` 0.0.2 (Rekor v2 since its specification's §6.1.4, how sigstore-python
//!   logs DSSE now): the hash of the envelope's PAE, the signature, the certificate as DER.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::tlog::Entry;
use super::{base64_field as base64, SignError};

fn refused(why: impl Into<String>) -> SignError {
    SignError::Sigstore(why.into())
}

fn other(what: &str) -> SignError {
    refused(format!("its log entry is for another {what}"))
}

/// A DSSE envelope's parts a log entry names: its payload, the bytes its signature is over
/// (the PAE of type and payload), and the signature.
pub struct Dsse<'a> {
    pub payload: &'a [u8],
    pub pae: &'a [u8],
    pub signature: &'a [u8],
}

/// The entry's body must be this signature, by `cert` (DER).
pub fn check_body(entry: &Entry, cert: &[u8], dsse: &Dsse) -> Result<(), SignError> {
    let body: Value = serde_json::from_slice(&entry.body)
        .map_err(|_| refused("its log entry's body is not JSON"))?;
    if body["kind"] != entry.kind.as_str() || body["apiVersion"] != entry.version.as_str() {
        return Err(other("kind of entry"));
    }
    let spec = &body["spec"];
    let logged = match (entry.kind.as_str(), entry.version.as_str()) {
        ("dsse", "0.0.1") => v1(spec, &Sha256::digest(dsse.payload))?,
        ("dsse", "0.0.2") => v2(&spec["dsseV002"], &Sha256::digest(dsse.payload))?,
        ("hashedrekord", "0.0.2") => hashedrekord_v2(&spec["hashedRekordV002"], dsse)?,
        (kind, version) => {
            return Err(refused(format!(
                "its log entry is of kind {kind} {version}; hoist checks dsse 0.0.1 and 0.0.2, hashedrekord 0.0.2"
            )))
        }
    };
    if logged.signature.as_deref() != Some(dsse.signature) {
        return Err(other("signature"));
    }
    if logged.cert.as_deref() != Some(cert) {
        return Err(other("certificate"));
    }
    Ok(())
}

/// The one signature an entry logs and the certificate it names (DER), as read.
struct Logged {
    signature: Option<Vec<u8>>,
    cert: Option<Vec<u8>>,
}

/// The one element of a list that must have exactly one.
fn only(list: &Value) -> Result<&Value, SignError> {
    match list.as_array().map_or(&[][..], |s| s) {
        [one] => Ok(one),
        _ => Err(other("number of signatures")),
    }
}

/// `dsse` 0.0.1: `payloadHash {algorithm: sha256, value: hex}`, `signatures[{signature,
/// verifier: base64(PEM)}]`.
fn v1(spec: &Value, hash: &[u8]) -> Result<Logged, SignError> {
    let named = &spec["payloadHash"];
    if named["algorithm"] != "sha256" || named["value"].as_str() != Some(&hex::encode(hash)) {
        return Err(other("payload"));
    }
    let one = only(&spec["signatures"])?;
    Ok(Logged {
        signature: base64(&one["signature"]),
        cert: base64(&one["verifier"])
            .and_then(|pem| CertificateDer::from_pem_slice(&pem).ok())
            .map(|der| der.to_vec()),
    })
}

/// `dsse` 0.0.2: `payloadHash {algorithm: SHA2_256, digest: base64}`, `signatures[{content,
/// verifier: {x509Certificate: {rawBytes: base64(DER)}}}]`.
fn v2(spec: &Value, hash: &[u8]) -> Result<Logged, SignError> {
    let named = &spec["payloadHash"];
    if named["algorithm"] != "SHA2_256" || base64(&named["digest"]).as_deref() != Some(hash) {
        return Err(other("payload"));
    }
    let one = only(&spec["signatures"])?;
    Ok(Logged {
        signature: base64(&one["content"]),
        cert: base64(&one["verifier"]["x509Certificate"]["rawBytes"]),
    })
}

/// `hashedrekord` 0.0.2 of a DSSE envelope: `data {algorithm: SHA2_256, digest: base64 of the
/// PAE's SHA-256}`, `signature {content, verifier: {x509Certificate: {rawBytes}}}`.
fn hashedrekord_v2(spec: &Value, dsse: &Dsse) -> Result<Logged, SignError> {
    let named = &spec["data"];
    let hash = Sha256::digest(dsse.pae);
    if named["algorithm"] != "SHA2_256" || base64(&named["digest"]).as_deref() != Some(&hash[..]) {
        return Err(other("payload"));
    }
    let one = &spec["signature"];
    Ok(Logged {
        signature: base64(&one["content"]),
        cert: base64(&one["verifier"]["x509Certificate"]["rawBytes"]),
    })
}
