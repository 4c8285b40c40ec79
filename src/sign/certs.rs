//! Certificates: a model signed with a key whose X.509 certificate chains to roots the
//! verifier trusts (the reference tool's `certificate` method: the bundle's
//! `x509CertificateChain` holds the signing certificate first, then the intermediates).
//!
//! Crates, and why each: **rustls-webpki** (already here for TLS, audited, used by every
//! rustls client) builds and checks the chain — every signature up to a trusted root, the
//! validity of each certificate at the verification time, CA basic constraints and path
//! length, name constraints, the code-signing extended key usage — with its own budget on
//! signature checks and path building, so a hostile chain cannot make it work without end.
//! **x509-parser** reads what webpki does not expose: the subject, the SANs, key usage and
//! the public key, for the identity check and for showing a signature. Hand-written here:
//! only the bounds on what a bundle may carry, and the identity rule.
//!
//! The bundle records no signing time for this method, so validity is checked at the time
//! of verification (the reference tool checks at the leaf's own `notBefore`, which accepts an
//! expired certificate; hoist does not).

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{PublicKey, SignError};

/// Most certificates a bundle's chain may hold (leaf, intermediates): real chains have 2–4.
pub const MAX_CHAIN: usize = 10;
/// Largest certificate accepted, DER.
pub const MAX_CERT_BYTES: usize = 32 << 10;
/// Most roots and identity patterns a verifier is given.
const MAX_ROOTS: usize = 1000;
const MAX_ROOTS_FILE: u64 = 4 << 20;

/// id-kp-codeSigning, 1.3.6.1.5.5.7.3.3 (the OID's DER value bytes).
const EKU_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// Who a certificate names: its subject (RFC 4514 form) and its subject alternative names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
}

impl std::fmt::Display for CertIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.sans.first() {
            Some(san) if self.subject.is_empty() => write!(f, "{san}"),
            Some(san) => write!(f, "{} ({san})", self.subject),
            None => write!(f, "{}", self.subject),
        }
    }
}

/// What a verifier trusts certificates by: root CAs, and the identities (subject or SAN,
/// exact or glob) a signing certificate must name; no identity given means any the roots
/// vouch for.
#[derive(Debug)]
pub struct CertTrust {
    roots: Vec<Vec<u8>>,
    identities: Vec<(String, globset::GlobMatcher)>,
}

impl CertTrust {
    /// The roots in these PEM files and the identity patterns.
    pub fn load(roots: &[PathBuf], identities: &[String]) -> Result<CertTrust, SignError> {
        let mut all = Vec::new();
        for path in roots {
            all.extend(read_roots(path)?);
        }
        if all.is_empty() || all.len() > MAX_ROOTS {
            return Err(SignError::Key(format!(
                "the certificate roots hold {} certificates (1 to {MAX_ROOTS})",
                all.len()
            )));
        }
        // Each root must be usable as a trust anchor now, not at the first signature.
        for root in &all {
            webpki::anchor_from_trusted_cert(&CertificateDer::from(root.as_slice()))
                .map_err(|e| SignError::Key(format!("a certificate root cannot anchor: {e:?}")))?;
        }
        let identities = globs(identities, "identity")?;
        Ok(CertTrust {
            roots: all,
            identities,
        })
    }

    /// Check `chain` (DER, signing certificate first) at `time`: it must reach a root, every
    /// certificate valid then, the leaf for code signing and naming an allowed identity.
    /// Returns the leaf's key (to check the signature with) and who it names.
    pub fn verify(
        &self,
        chain: &[Vec<u8>],
        time: std::time::SystemTime,
    ) -> Result<(PublicKey, CertIdentity), SignError> {
        let key = verify_chain(chain, &self.roots, time)?;
        let identity = identity_of(&chain[0])?;
        self.allow(&identity)?;
        Ok((key, identity))
    }

    fn allow(&self, identity: &CertIdentity) -> Result<(), SignError> {
        if self.identities.is_empty() {
            return Ok(());
        }
        let names = std::iter::once(&identity.subject).chain(&identity.sans);
        for name in names {
            if self.identities.iter().any(|(_, g)| g.is_match(name)) {
                return Ok(());
            }
        }
        let allowed: Vec<&str> = self.identities.iter().map(|(p, _)| p.as_str()).collect();
        Err(refused(format!(
            "the signing certificate names {identity}, none of the allowed identities {allowed:?}"
        )))
    }
}

/// Identity and issuer patterns, exact or glob (`*` crosses `/`: URIs are names here), each
/// kept with its text for error lines; empty ones (an unset variable) are none.
pub(super) fn globs(
    patterns: &[String],
    what: &str,
) -> Result<Vec<(String, globset::GlobMatcher)>, SignError> {
    patterns
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            globset::Glob::new(p)
                .map(|g| (p.clone(), g.compile_matcher()))
                .map_err(|e| SignError::Key(format!("{what} pattern {p:?}: {e}")))
        })
        .collect()
}

fn refused(why: String) -> SignError {
    SignError::Certificate(why)
}

/// webpki's reasons, in the words a user acts on.
fn chain_error(e: &webpki::Error) -> String {
    use webpki::Error as E;
    match e {
        E::CertExpired { .. } => {
            "a certificate of the chain had expired at the time checked".into()
        }
        E::CertNotValidYet { .. } => {
            "a certificate of the chain was not yet valid at the time checked".into()
        }
        E::UnknownIssuer => "the certificate chain does not reach the trusted roots".into(),
        // An issuer of the same name whose key did not make the signature: another CA.
        E::InvalidSignatureForPublicKey => {
            "the certificate chain does not reach the trusted roots (a signature in it does not verify)".into()
        }
        E::RequiredEkuNotFoundContext(_) => {
            "the signing certificate is not for code signing (extended key usage)".into()
        }
        E::CaUsedAsEndEntity => "the signing certificate is a CA certificate".into(),
        E::MaximumSignatureChecksExceeded
        | E::MaximumPathBuildCallsExceeded
        | E::MaximumPathDepthExceeded => "the certificate chain is too long to check".into(),
        other => format!("the certificate chain is refused ({other:?})"),
    }
}

/// The leaf's public key (one of the three curves model signing uses), once its usages
/// allow signing code: the code-signing extended key usage, and digital signatures if it
/// lists key usages.
fn leaf_key(der: &[u8]) -> Result<PublicKey, SignError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| refused(format!("the signing certificate cannot be read ({e})")))?;
    let code_signing = matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.code_signing);
    if !code_signing {
        return Err(refused(
            "the signing certificate is not for code signing (extended key usage)".into(),
        ));
    }
    if let Ok(Some(usage)) = cert.key_usage() {
        if !usage.value.digital_signature() {
            return Err(refused(
                "the signing certificate's key usage does not allow digital signatures".into(),
            ));
        }
    }
    PublicKey::from_spki_der(cert.public_key().raw)
}

/// Who a certificate names (subject, issuer, SANs), read without trusting it.
pub fn identity_of(der: &[u8]) -> Result<CertIdentity, SignError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| refused(format!("a certificate cannot be read ({e})")))?;
    let mut sans = Vec::new();
    let listed = cert.subject_alternative_name().map_err(|e| {
        refused(format!(
            "the certificate's alternative names cannot be read ({e})"
        ))
    })?;
    for name in listed.iter().flat_map(|ext| &ext.value.general_names) {
        match name {
            GeneralName::RFC822Name(s) | GeneralName::DNSName(s) | GeneralName::URI(s) => {
                sans.push(s.to_string())
            }
            _ => {}
        }
    }
    let identity = CertIdentity {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans,
    };
    let names = std::iter::once(&identity.subject)
        .chain(std::iter::once(&identity.issuer))
        .chain(&identity.sans);
    for name in names {
        if name.chars().any(char::is_control) {
            return Err(refused(format!(
                "the certificate names {:?}, with control characters",
                name.escape_debug().to_string()
            )));
        }
    }
    Ok(identity)
}

/// The certificates of a PEM file, bounded.
pub fn read_pem_certs(path: &Path) -> Result<Vec<Vec<u8>>, SignError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_ROOTS_FILE).read_to_end(&mut bytes))
        .map_err(|e| SignError::Key(format!("{}: {e}", path.display())))?;
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&bytes)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| SignError::Key(format!("{}: not PEM certificates ({e})", path.display())))?;
    if certs.is_empty() {
        return Err(SignError::Key(format!(
            "{}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_roots(path: &Path) -> Result<Vec<Vec<u8>>, SignError> {
    read_pem_certs(path)
}

/// `chain` (DER, signing certificate first) checked by webpki at `time` against `roots`, and
/// its leaf for code signing; returns the leaf's key.
pub fn verify_chain(
    chain: &[Vec<u8>],
    roots: &[Vec<u8>],
    time: std::time::SystemTime,
) -> Result<PublicKey, SignError> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| refused("the certificate chain is empty".into()))?;
    let roots: Vec<CertificateDer<'_>> = roots
        .iter()
        .map(|r| CertificateDer::from(r.as_slice()))
        .collect();
    let anchors: Vec<_> = roots
        .iter()
        .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
        .collect();
    let leaf_der = CertificateDer::from(leaf.as_slice());
    let end_entity = webpki::EndEntityCert::try_from(&leaf_der)
        .map_err(|e| refused(format!("the signing certificate cannot be read ({e})")))?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let since_epoch = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            UnixTime::since_unix_epoch(since_epoch),
            // Intermediates rarely list usages: a certificate of the path that does must
            // allow code signing; the leaf must list it (checked in `leaf_key`).
            webpki::KeyUsage::required_if_present(EKU_CODE_SIGNING),
            None,
            None,
        )
        .map_err(|e| refused(chain_error(&e)))?;
    leaf_key(leaf)
}

/// The chain a signer puts in its bundle: its certificate (whose key must be the signing
/// key's) and the intermediates after it.
pub fn signing_chain(
    key: &super::PrivateKey,
    cert: &Path,
    chain: &[PathBuf],
) -> Result<Vec<Vec<u8>>, SignError> {
    let mut all = read_pem_certs(cert)?;
    all.truncate(1);
    let (_, leaf) = X509Certificate::from_der(&all[0])
        .map_err(|e| SignError::Key(format!("{}: {e}", cert.display())))?;
    let public = PublicKey::from_spki_der(leaf.public_key().raw)?;
    if public.hint() != key.public().hint() {
        return Err(SignError::Key(format!(
            "{}: the certificate is for another key than the signing key",
            cert.display()
        )));
    }
    for path in chain {
        all.extend(read_pem_certs(path)?);
    }
    if all.len() > MAX_CHAIN {
        return Err(SignError::Key(format!(
            "the certificate chain has {} certificates (at most {MAX_CHAIN})",
            all.len()
        )));
    }
    Ok(all)
}
