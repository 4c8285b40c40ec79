//! Sigstore (keyless) bundles, verified offline against a trusted root in Sigstore's
//! `trusted_root.json` format: the public-good instance's by default (the file sigstore-python
//! 4.5.1 ships, Apache-2.0, kept in `data/`), a private instance's by flag.
//!
//! What is checked, in order: the log entry (its log from the trusted root, by its key: ECDSA
//! for Rekor v1, Ed25519 for v2; the signed entry timestamp where there is one; the
//! inclusion proof up to the root hash and the checkpoint signed for it), the entry's body
//! (`rekor`: a `dsse` 0.0.1 or 0.0.2, or a `hashedrekord` 0.0.2 entry naming this envelope,
//! its signature and certificate), the signed times (the signed entry timestamp's, and each RFC 3161 timestamp's,
//! verified against the root's timestamp authorities by `tsa`; at least one, since Rekor v2
//! entries carry no signed entry timestamp), each inside the log key's and the certificate's
//! validity; the Fulcio certificate (chained by rustls-webpki to a certificate authority of
//! the trusted root valid at the first signed time, for code signing, and logged by a CT log
//! of the root: one of its embedded SCTs verifies, `sct`), the identity it names (a SAN and
//! the OIDC issuer, both as the verifier requires), and last the DSSE signature with the
//! certificate's key.

use std::path::Path;

use base64::Engine as _;
use serde_json::Value;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::certs::{globs, identity_of, CertIdentity};
use super::rekor::Dsse;
use super::sct::CtLog;
use super::tlog::{Entry, LogKey};
use super::{base64_field, PublicKey, SignError};

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
    key: Option<LogKey>,
    valid_for: Value,
}

struct Authority {
    chain: Vec<Vec<u8>>,
    valid_for: Value,
}

/// A trusted root: the transparency logs' keys, the certificate authorities and the
/// certificate transparency logs that must have logged their certificates.
pub struct TrustedRoot {
    logs: Vec<Log>,
    authorities: Vec<Authority>,
    ct_logs: Vec<CtLog>,
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

    pub(super) fn parse(bytes: &[u8]) -> Result<TrustedRoot, SignError> {
        let bad = |why: &str| SignError::Key(format!("not a Sigstore trusted root: {why}"));
        let v: Value = serde_json::from_slice(bytes).map_err(|_| bad("not JSON"))?;
        let media = v["mediaType"].as_str().unwrap_or_default();
        if !media.starts_with("application/vnd.dev.sigstore.trustedroot") {
            return Err(bad("its media type"));
        }
        let logs = listed(&v["tlogs"])
            .filter_map(log_key)
            .map(|(key_id, der, valid_for)| Log {
                key_id,
                // A key type hoist cannot check stays listed: an entry of that log is
                // refused by name rather than as unknown.
                key: der.and_then(|der| LogKey::from_spki_der(&der)),
                valid_for,
            })
            .collect();
        let ct_logs = listed(&v["ctlogs"])
            .filter_map(log_key)
            .map(|(key_id, der, valid_for)| CtLog {
                key_id,
                key: der.and_then(|der| PublicKey::from_spki_der(&der).ok()),
                valid: Box::new(move |t| valid_at(&valid_for, t)),
            })
            .collect();
        let authorities = listed(&v["certificateAuthorities"])
            .map(|c| Authority {
                chain: c["certChain"]["certificates"]
                    .as_array()
                    .map_or(&[][..], |a| a)
                    .iter()
                    .take(10)
                    .filter_map(|c| base64_field(&c["rawBytes"]))
                    .collect(),
                valid_for: c["validFor"].clone(),
            })
            .filter(|a| !a.chain.is_empty())
            .collect();
        let timestamp_authorities = listed(&v["timestampAuthorities"])
            .filter_map(|c| {
                let chain: Vec<Vec<u8>> = c["certChain"]["certificates"]
                    .as_array()?
                    .iter()
                    .take(10)
                    .filter_map(|c| base64_field(&c["rawBytes"]))
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
            ct_logs,
            timestamp_authorities,
        })
    }
}

/// The first 64 entries of a trusted root's list `v` (none when it is not a list).
fn listed(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().map_or(&[][..], |a| a).iter().take(64)
}

/// A transparency or CT log of a trusted root: its id, its key (DER, if base64), and the
/// `validFor` of that key.
fn log_key(l: &Value) -> Option<(Vec<u8>, Option<Vec<u8>>, Value)> {
    Some((
        base64_field(&l["logId"]["keyId"])?,
        base64_field(&l["publicKey"]["rawBytes"]),
        l["publicKey"]["validFor"].clone(),
    ))
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
    /// The signing time: the log's signed entry timestamp, else the first RFC 3161
    /// timestamp's (when verified); the time the log entry claims (when only read).
    pub signed_at: Option<i64>,
}

/// Verify `m` for the DSSE envelope `dsse` under `trust`; returns the key that
/// must then verify the signature, and who it is.
pub fn verify(
    m: &Material,
    dsse: &Dsse,
    trust: &SigstoreTrust,
) -> Result<(PublicKey, Logged), SignError> {
    let (log, mut times) = check_entry(&m.entry, &trust.root)?;
    super::rekor::check_body(&m.entry, &m.cert, dsse)?;
    let signature = dsse.signature;
    for token in &m.timestamps {
        let authorities = &trust.root.timestamp_authorities;
        times.push(super::tsa::verify(token, signature, authorities, valid_at)?);
    }
    let Some(&time) = times.first() else {
        return Err(refused(
            "it carries no signed time: no signed entry timestamp (a Rekor v2 entry has none) and no RFC 3161 timestamp",
        ));
    };
    for &t in &times {
        if !valid_at(&log.valid_for, t) {
            return Err(refused("its log's key was not valid at its signed time"));
        }
        if !cert_valid_at(&m.cert, t) {
            return Err(refused(
                "a signed time of it is outside its certificate's validity",
            ));
        }
    }
    let key = check_certificate(&m.cert, &trust.root, time)?;
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
            signed_at: Some(time),
        },
    ))
}

/// The entry checked against its log's key; returns the log and the time it signed for the
/// entry, if it did (a Rekor v1 signed entry timestamp).
fn check_entry<'r>(entry: &Entry, root: &'r TrustedRoot) -> Result<(&'r Log, Vec<i64>), SignError> {
    let log = root
        .logs
        .iter()
        .find(|l| l.key_id == entry.log_id)
        .ok_or_else(|| refused("its log entry is from a log the trusted root does not list"))?;
    let key = log
        .key
        .as_ref()
        .ok_or_else(|| refused("its log's key is of a type hoist does not check"))?;
    let signed = entry.signed_time(key)?;
    entry.check_proof(key, &log.key_id)?;
    Ok((log, signed.into_iter().collect()))
}

/// Was the certificate `der` valid at `t` (its own not-before and not-after)?
fn cert_valid_at(der: &[u8], t: i64) -> bool {
    X509Certificate::from_der(der).is_ok_and(|(_, c)| {
        let v = c.validity();
        v.not_before.timestamp() <= t && t <= v.not_after.timestamp()
    })
}

/// A certificate's SubjectPublicKeyInfo (DER).
fn spki_of(der: &[u8]) -> Result<Vec<u8>, SignError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c.public_key().raw.to_vec())
        .map_err(|_| refused("a certificate of the trusted root cannot be read"))
}

/// The Fulcio certificate chained to an authority of the trusted root valid at `time`, valid
/// itself at `time`, for code signing, and CT-logged (`sct`). Returns its key.
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
            Ok(key) => {
                // The leaf's issuer: the authority's first certificate (its intermediate,
                // or the anchor itself when the chain is one certificate long).
                let issuer = spki_of(&authority.chain[0])?;
                super::sct::verify(cert, &issuer, &root.ct_logs)?;
                return Ok(key);
            }
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
        crate::sign::sigstore_tests::every_flipped_bit_fails(VECTOR, 0..0, |b| {
            open(b, &trust).is_ok()
        });
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
