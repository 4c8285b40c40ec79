//! Sigstore (keyless) bundles, verified offline against a trusted root in Sigstore's
//! `trusted_root.json` format: the public-good instance's by default (the file sigstore-python
//! 4.5.1 ships, Apache-2.0, kept in `data/`), a private instance's by flag.
//!
//! What is checked, in order: the log entry (its log's key from the trusted root, valid at
//! the entry's time; the signed entry timestamp, whose time is then the signing time; the
//! inclusion proof up to the root hash and the checkpoint signed for it), the entry's body
//! (a `dsse` 0.0.1 entry naming this envelope's payload hash, signature and certificate), the
//! Fulcio certificate (chained by rustls-webpki to a certificate authority of the trusted
//! root that was valid then, valid itself then, for code signing), the identity it names
//! (a SAN and the OIDC issuer, both as the verifier requires), and last the DSSE signature
//! with the certificate's key. The signing time is the log's signed entry timestamp (a bundle
//! without one is refused); the bundle's RFC 3161 timestamps, where present, must each verify
//! against the root's timestamp authorities (`tsa`) and fall inside the certificate's validity.

use std::path::Path;

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::certs::{globs, identity_of, CertIdentity};
use super::tlog::Entry;
use super::{PublicKey, SignError};

/// The public-good Sigstore instance's trusted root, as Sigstore clients ship it.
pub const PUBLIC_GOOD_ROOT: &str = include_str!("data/trusted_root.json");
const MAX_ROOT_FILE: u64 = 1 << 20;

/// Fulcio's OIDC issuer extensions: v1 (the raw string), v2 (a DER UTF8String).
const OID_ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";
const OID_ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";

fn refused(why: impl Into<String>) -> SignError {
    SignError::Sigstore(why.into())
}

/// Seconds since the epoch of an RFC 3339 time.
fn unix(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// `[start, end)` from a `validFor`; no end is open.
fn valid_at(valid_for: &Value, t: i64) -> bool {
    let start = valid_for["start"].as_str().and_then(unix);
    let end = valid_for["end"].as_str().and_then(unix);
    start.is_some_and(|s| s <= t) && end.is_none_or(|e| t < e)
}

struct Log {
    key_id: Vec<u8>,
    key: Option<PublicKey>,
    valid_for: Value,
}

struct Authority {
    chain: Vec<Vec<u8>>,
    valid_for: Value,
}

/// A trusted root: the transparency logs' keys and the certificate authorities.
pub struct TrustedRoot {
    logs: Vec<Log>,
    authorities: Vec<Authority>,
    timestamp_authorities: Vec<super::tsa::Authority>,
}

impl std::fmt::Debug for TrustedRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TrustedRoot({} logs, {} authorities)",
            self.logs.len(),
            self.authorities.len()
        )
    }
}

impl TrustedRoot {
    pub fn public_good() -> TrustedRoot {
        TrustedRoot::parse(PUBLIC_GOOD_ROOT.as_bytes()).expect("the bundled trusted root parses")
    }

    pub fn load(path: &Path) -> Result<TrustedRoot, SignError> {
        use std::io::Read;
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_ROOT_FILE).read_to_end(&mut bytes))
            .map_err(|e| SignError::Key(format!("{}: {e}", path.display())))?;
        TrustedRoot::parse(&bytes).map_err(|e| SignError::Key(format!("{}: {e}", path.display())))
    }

    fn parse(bytes: &[u8]) -> Result<TrustedRoot, SignError> {
        let bad = |why: &str| SignError::Key(format!("not a Sigstore trusted root: {why}"));
        let v: Value = serde_json::from_slice(bytes).map_err(|_| bad("not JSON"))?;
        let media = v["mediaType"].as_str().unwrap_or_default();
        if !media.starts_with("application/vnd.dev.sigstore.trustedroot") {
            return Err(bad("its media type"));
        }
        let decode = |v: &Value| {
            v.as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        };
        let logs = v["tlogs"]
            .as_array()
            .map_or(&[][..], |a| a)
            .iter()
            .take(64)
            .filter_map(|l| {
                Some(Log {
                    key_id: decode(&l["logId"]["keyId"])?,
                    // A key type hoist cannot check (Ed25519 of the newer logs) stays listed:
                    // an entry of that log is refused by name rather than as unknown.
                    key: decode(&l["publicKey"]["rawBytes"])
                        .and_then(|der| PublicKey::from_spki_der(&der).ok()),
                    valid_for: l["publicKey"]["validFor"].clone(),
                })
            })
            .collect();
        let authorities = v["certificateAuthorities"]
            .as_array()
            .map_or(&[][..], |a| a)
            .iter()
            .take(64)
            .map(|c| Authority {
                chain: c["certChain"]["certificates"]
                    .as_array()
                    .map_or(&[][..], |a| a)
                    .iter()
                    .take(10)
                    .filter_map(|c| decode(&c["rawBytes"]))
                    .collect(),
                valid_for: c["validFor"].clone(),
            })
            .filter(|a| !a.chain.is_empty())
            .collect();
        let timestamp_authorities = v["timestampAuthorities"]
            .as_array()
            .map_or(&[][..], |a| a)
            .iter()
            .take(64)
            .filter_map(|c| {
                let chain: Vec<Vec<u8>> = c["certChain"]["certificates"]
                    .as_array()?
                    .iter()
                    .take(10)
                    .filter_map(|c| decode(&c["rawBytes"]))
                    .collect();
                Some(super::tsa::Authority {
                    cert: chain.first()?.clone(),
                    chain,
                    valid_for: c["validFor"].clone(),
                })
            })
            .collect();
        Ok(TrustedRoot {
            logs,
            authorities,
            timestamp_authorities,
        })
    }
}

/// What a verifier requires of a Sigstore signature: the trusted root, the identities (SAN,
/// exact or glob) and the OIDC issuers (exact or glob) a certificate must name.
#[derive(Debug)]
pub struct SigstoreTrust {
    pub root: TrustedRoot,
    identities: Vec<(String, globset::GlobMatcher)>,
    issuers: Vec<(String, globset::GlobMatcher)>,
}

impl SigstoreTrust {
    /// Both an identity and an issuer are required, as cosign and `model_signing verify
    /// sigstore` require them: a Fulcio certificate vouches for whoever logged in.
    pub fn new(
        root: TrustedRoot,
        identities: &[String],
        issuers: &[String],
    ) -> Result<SigstoreTrust, SignError> {
        let (identities, issuers) = (globs(identities, "identity")?, globs(issuers, "issuer")?);
        if identities.is_empty() || issuers.is_empty() {
            return Err(SignError::Key(
                "Sigstore verification needs the signer's identity (--cert-identity) and its OIDC issuer (--cert-oidc-issuer)".into(),
            ));
        }
        Ok(SigstoreTrust {
            root,
            identities,
            issuers,
        })
    }
}

/// A Sigstore bundle's material: the signing certificate, its one log entry, and the RFC
/// 3161 timestamps (DER) it carries.
#[derive(Debug, Clone)]
pub struct Material {
    pub cert: Vec<u8>,
    pub entry: Entry,
    pub timestamps: Vec<Vec<u8>>,
}

impl Material {
    pub fn read(material: &Value) -> Result<Material, SignError> {
        let cert = material["certificate"]["rawBytes"]
            .as_str()
            .filter(|s| s.len() <= 48 << 10)
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .ok_or_else(|| refused("its certificate is not base64 (or over 32 KiB)"))?;
        let entries = material["tlogEntries"].as_array().map_or(&[][..], |e| e);
        let [entry] = entries else {
            return Err(refused(format!(
                "it has {} transparency-log entries; hoist checks bundles with exactly one",
                entries.len()
            )));
        };
        Ok(Material {
            cert,
            entry: Entry::read(entry)?,
            timestamps: timestamps(&material["timestampVerificationData"])?,
        })
    }

    /// Who the certificate names and which OIDC issuer vouched, read without trusting it.
    pub fn claims(&self) -> Result<(CertIdentity, String), SignError> {
        Ok((identity_of(&self.cert)?, oidc_issuer(&self.cert)?))
    }
}

/// The RFC 3161 timestamps of a bundle, decoded and bounded.
fn timestamps(data: &Value) -> Result<Vec<Vec<u8>>, SignError> {
    use super::tsa::{MAX_TOKEN, MAX_TOKENS};
    let listed = data["rfc3161Timestamps"].as_array().map_or(&[][..], |t| t);
    if listed.len() > MAX_TOKENS {
        return Err(refused(format!(
            "it has {} RFC 3161 timestamps (at most {MAX_TOKENS})",
            listed.len()
        )));
    }
    listed
        .iter()
        .map(|t| {
            t["signedTimestamp"]
                .as_str()
                .filter(|s| s.len() <= MAX_TOKEN * 4 / 3 + 4)
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .ok_or_else(|| {
                    refused("an RFC 3161 timestamp of it is not base64 (or over 64 KiB)")
                })
        })
        .collect()
}

/// The certificate's OIDC issuer extension (v2, else v1).
fn oidc_issuer(der: &[u8]) -> Result<String, SignError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| refused(format!("its certificate cannot be read ({e})")))?;
    let mut v1 = None;
    for ext in cert.extensions() {
        match ext.oid.to_id_string().as_str() {
            OID_ISSUER_V2 => {
                // A DER UTF8String: tag 0x0c, a short or one-byte long length.
                let value = ext.value;
                let body = match value {
                    [0x0c, n, rest @ ..] if (*n as usize) == rest.len() => rest,
                    [0x0c, 0x81, n, rest @ ..] if (*n as usize) == rest.len() => rest,
                    _ => return Err(refused("its certificate's OIDC issuer is malformed")),
                };
                return clean(String::from_utf8_lossy(body).into_owned());
            }
            OID_ISSUER_V1 => v1 = Some(String::from_utf8_lossy(ext.value).into_owned()),
            _ => {}
        }
    }
    v1.map(clean).unwrap_or_else(|| {
        Err(refused(
            "its certificate names no OIDC issuer (not from Fulcio)",
        ))
    })
}

fn clean(s: String) -> Result<String, SignError> {
    if s.chars().any(char::is_control) {
        return Err(refused(format!(
            "its certificate names the issuer {:?}, with control characters",
            s.escape_debug().to_string()
        )));
    }
    Ok(s)
}

/// What a verified Sigstore signature tells: who, vouched by which issuer, logged when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub identity: CertIdentity,
    pub issuer: String,
    pub integrated_time: i64,
}

/// Verify `m` for the DSSE `payload` and `signature` under `trust`; returns the key that
/// must then verify the signature, and who it is.
pub fn verify(
    m: &Material,
    payload: &[u8],
    signature: &[u8],
    trust: &SigstoreTrust,
) -> Result<(PublicKey, Logged), SignError> {
    let time = check_entry(&m.entry, &trust.root)?;
    check_body(&m.entry, &m.cert, payload, signature)?;
    let key = check_certificate(&m.cert, &trust.root, time)?;
    for token in &m.timestamps {
        let stamped = super::tsa::verify(
            token,
            signature,
            &trust.root.timestamp_authorities,
            valid_at,
        )?;
        if !cert_valid_at(&m.cert, stamped) {
            return Err(refused(
                "its RFC 3161 timestamp is outside its certificate's validity",
            ));
        }
    }
    let (identity, issuer) = m.claims()?;
    let names_allowed = identity
        .sans
        .iter()
        .any(|san| trust.identities.iter().any(|(_, g)| g.is_match(san)));
    if !names_allowed {
        let allowed: Vec<&str> = trust.identities.iter().map(|(p, _)| p.as_str()).collect();
        return Err(refused(format!(
            "the certificate names {identity}, none of the allowed identities {allowed:?}"
        )));
    }
    if !trust.issuers.iter().any(|(_, g)| g.is_match(&issuer)) {
        let allowed: Vec<&str> = trust.issuers.iter().map(|(p, _)| p.as_str()).collect();
        return Err(refused(format!(
            "the certificate was issued for an identity of {issuer:?}, none of the allowed issuers {allowed:?}"
        )));
    }
    Ok((
        key,
        Logged {
            identity,
            issuer,
            integrated_time: time,
        },
    ))
}

/// The entry checked against its log's key; returns the time the log signed for it.
fn check_entry(entry: &Entry, root: &TrustedRoot) -> Result<i64, SignError> {
    let log = root
        .logs
        .iter()
        .find(|l| l.key_id == entry.log_id)
        .ok_or_else(|| refused("its log entry is from a log the trusted root does not list"))?;
    let key = log.key.as_ref().ok_or_else(|| {
        refused("its log's key is of a type hoist does not check (Ed25519: a Rekor v2 log)")
    })?;
    if !valid_at(&log.valid_for, entry.integrated_time) {
        return Err(refused("its log's key was not valid at the entry's time"));
    }
    entry.check_set(key)?;
    entry.check_proof(key, &log.key_id)?;
    Ok(entry.integrated_time)
}

/// The entry's body must be this signature: a `dsse` 0.0.1 entry whose payload hash is this
/// payload's, whose one signature is this signature, by this certificate.
fn check_body(
    entry: &Entry,
    cert: &[u8],
    payload: &[u8],
    signature: &[u8],
) -> Result<(), SignError> {
    let other = |what: &str| refused(format!("its log entry is for another {what}"));
    if (entry.kind.as_str(), entry.version.as_str()) != ("dsse", "0.0.1") {
        return Err(refused(format!(
            "its log entry is of kind {} {}; hoist checks dsse 0.0.1",
            entry.kind, entry.version
        )));
    }
    let body: Value = serde_json::from_slice(&entry.body)
        .map_err(|_| refused("its log entry's body is not JSON"))?;
    if body["kind"] != "dsse" || body["apiVersion"] != "0.0.1" {
        return Err(other("kind of entry"));
    }
    let spec = &body["spec"];
    if spec["payloadHash"]["algorithm"] != "sha256"
        || spec["payloadHash"]["value"].as_str() != Some(&hex::encode(Sha256::digest(payload)))
    {
        return Err(other("payload"));
    }
    let signatures = spec["signatures"].as_array().map_or(&[][..], |s| s);
    let [logged] = signatures else {
        return Err(other("number of signatures"));
    };
    let logged_sig = logged["signature"]
        .as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok());
    if logged_sig.as_deref() != Some(signature) {
        return Err(other("signature"));
    }
    let verifier = logged["verifier"]
        .as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .and_then(|pem| CertificateDer::from_pem_slice(&pem).ok());
    if verifier.as_deref() != Some(cert) {
        return Err(other("certificate"));
    }
    Ok(())
}

/// Was the certificate `der` valid at `t` (its own not-before and not-after)?
fn cert_valid_at(der: &[u8], t: i64) -> bool {
    X509Certificate::from_der(der).is_ok_and(|(_, c)| {
        let v = c.validity();
        v.not_before.timestamp() <= t && t <= v.not_after.timestamp()
    })
}

/// The Fulcio certificate chained to an authority of the trusted root valid at `time`, valid
/// itself at `time`, for code signing. Returns its key.
fn check_certificate(cert: &[u8], root: &TrustedRoot, time: i64) -> Result<PublicKey, SignError> {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(time.max(0) as u64);
    let mut last = None;
    for authority in root
        .authorities
        .iter()
        .filter(|a| valid_at(&a.valid_for, time))
    {
        let (anchor, intermediates) = authority.chain.split_last().expect("non-empty");
        let mut chain = vec![cert.to_vec()];
        chain.extend(intermediates.iter().cloned());
        match super::certs::verify_chain(&chain, std::slice::from_ref(anchor), at) {
            Ok(key) => return Ok(key),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(SignError::Certificate(why)) => refused(format!("its certificate: {why}")),
        Some(e) => e,
        None => {
            refused("no certificate authority of the trusted root was valid at the entry's time")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::{open, Trust};

    const VECTOR: &[u8] =
        include_bytes!("../../tests/data/model-signing-spec/v1.0/valid/sigstore.bundle.json");

    fn trust() -> Trust {
        let policy = SigstoreTrust::new(
            TrustedRoot::public_good(),
            &["stefanb@us.ibm.com".into()],
            &["https://sigstore.verify.ibm.com/oauth2".into()],
        )
        .unwrap();
        Trust {
            sigstore: Some(policy),
            ..Default::default()
        }
    }

    /// The OMS Sigstore vector verifies, and a flipped bit in any byte of its file — JSON,
    /// base64, the log entry, the checkpoint, the RFC 3161 timestamp — fails it.
    #[test]
    fn one_flipped_bit_anywhere_in_the_spec_vector_fails_it() {
        let trust = trust();
        let signed = open(VECTOR, &trust).expect("the vector verifies");
        assert!(matches!(signed.method, crate::sign::Method::Sigstore(_)));
        for i in 0..VECTOR.len() {
            // The lowest bit (a digit, a base64 letter, a quote become another) and the case bit.
            for bit in [0x01, 0x20] {
                let mut flipped = VECTOR.to_vec();
                flipped[i] ^= bit;
                assert!(
                    open(&flipped, &trust).is_err(),
                    "bit {bit:#x} flipped at byte {i} ({:?}) still verifies",
                    String::from_utf8_lossy(
                        &VECTOR[i.saturating_sub(20)..(i + 20).min(VECTOR.len())]
                    )
                );
            }
        }
    }

    /// The same inside the decoded RFC 3161 timestamp, every byte of it.
    #[test]
    fn one_flipped_bit_anywhere_in_the_timestamp_fails_it() {
        let trust = trust();
        let mut v: Value = serde_json::from_slice(VECTOR).unwrap();
        let field =
            "/verificationMaterial/timestampVerificationData/rfc3161Timestamps/0/signedTimestamp";
        let b64 = base64::engine::general_purpose::STANDARD;
        let token = b64
            .decode(v.pointer(field).unwrap().as_str().unwrap())
            .unwrap();
        for i in 0..token.len() {
            let mut flipped = token.clone();
            flipped[i] ^= 1;
            *v.pointer_mut(field).unwrap() = Value::String(b64.encode(&flipped));
            let bundle = serde_json::to_vec(&v).unwrap();
            assert!(
                open(&bundle, &trust).is_err(),
                "a flipped bit at token byte {i} still verifies"
            );
        }
    }
}
