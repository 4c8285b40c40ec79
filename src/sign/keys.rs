//! The keys OpenSSF model signing uses: ECDSA on P-256, P-384 or P-521, PEM files, each
//! curve with its own hash (SHA-256, SHA-384, SHA-512), signatures DER-encoded. RustCrypto's
//! curve crates do the arithmetic; ring (already here for TLS) has no P-521.
//!
//! A key's *hint*, which a bundle carries, is the hex SHA-256 of the public key's PEM text
//! (SubjectPublicKeyInfo, 64-column base64, LF endings) as the reference implementation
//! writes it.

use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use sha2::{Digest as _, Sha256};

use super::SignError;

/// A public key that may vouch for a model.
#[derive(Clone)]
pub enum PublicKey {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    P521(p521::ecdsa::VerifyingKey),
}

/// A private key to sign with.
pub enum PrivateKey {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    P521(p521::ecdsa::SigningKey),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} key {}", self.curve(), self.hint())
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} private key <redacted>", self.public().curve())
    }
}

impl PublicKey {
    /// A PEM public key (`BEGIN PUBLIC KEY`) on one of the three curves.
    pub fn from_pem(pem: &str) -> Result<PublicKey, SignError> {
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::P256(k));
        }
        if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::P384(k));
        }
        if let Ok(k) = p521::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::P521(k));
        }
        Err(SignError::Key(
            "not a PEM public key on P-256, P-384 or P-521 (the curves model signing uses)".into(),
        ))
    }

    /// A DER SubjectPublicKeyInfo (a certificate's key) on one of the three curves.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, SignError> {
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(PublicKey::P256(k));
        }
        if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(PublicKey::P384(k));
        }
        if let Ok(k) = p521::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(PublicKey::P521(k));
        }
        Err(SignError::Certificate(
            "the certificate's key is not on P-256, P-384 or P-521 (the curves model signing uses)"
                .into(),
        ))
    }

    pub fn curve(&self) -> &'static str {
        match self {
            PublicKey::P256(_) => "P-256",
            PublicKey::P384(_) => "P-384",
            PublicKey::P521(_) => "P-521",
        }
    }

    /// The PEM text, as the reference implementation writes it.
    pub fn pem(&self) -> String {
        let pem = match self {
            PublicKey::P256(k) => k.to_public_key_pem(LineEnding::LF),
            PublicKey::P384(k) => k.to_public_key_pem(LineEnding::LF),
            PublicKey::P521(k) => k.to_public_key_pem(LineEnding::LF),
        };
        pem.expect("a valid key encodes")
    }

    /// The key's hint in a bundle: hex SHA-256 of its PEM text.
    pub fn hint(&self) -> String {
        hex::encode(Sha256::digest(self.pem().as_bytes()))
    }

    /// Does `der` (an ASN.1 ECDSA signature) sign a message whose hash (any of SHA-256/384/512,
    /// chosen by the signer's algorithm rather than the curve) is `prehash`?
    pub fn verifies_prehash(&self, prehash: &[u8], der: &[u8]) -> bool {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        match self {
            PublicKey::P256(k) => p256::ecdsa::Signature::from_der(der)
                .is_ok_and(|s| k.verify_prehash(prehash, &s).is_ok()),
            PublicKey::P384(k) => p384::ecdsa::Signature::from_der(der)
                .is_ok_and(|s| k.verify_prehash(prehash, &s).is_ok()),
            PublicKey::P521(k) => p521::ecdsa::Signature::from_der(der)
                .is_ok_and(|s| k.verify_prehash(prehash, &s).is_ok()),
        }
    }

    /// Does `der` (an ASN.1 ECDSA signature) sign `message` with this key, under the curve's
    /// hash?
    pub fn verifies(&self, message: &[u8], der: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier;
        match self {
            PublicKey::P256(k) => p256::ecdsa::DerSignature::from_bytes(der)
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
            PublicKey::P384(k) => p384::ecdsa::DerSignature::from_bytes(der)
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
            PublicKey::P521(k) => p521::ecdsa::DerSignature::from_bytes(der)
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
        }
    }
}

impl PrivateKey {
    /// A PEM private key: SEC1 (`BEGIN EC PRIVATE KEY`, what `openssl ecparam -genkey`
    /// writes) or PKCS#8 (`BEGIN PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<PrivateKey, SignError> {
        if let Ok(k) = p256::SecretKey::from_sec1_pem(pem) {
            return Ok(PrivateKey::P256(k.into()));
        }
        if let Ok(k) = p384::SecretKey::from_sec1_pem(pem) {
            return Ok(PrivateKey::P384(k.into()));
        }
        if let Ok(k) = p521::SecretKey::from_sec1_pem(pem) {
            return Ok(PrivateKey::P521(k.into()));
        }
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(PrivateKey::P256(k));
        }
        if let Ok(k) = p384::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(PrivateKey::P384(k));
        }
        if let Ok(k) = p521::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(PrivateKey::P521(k));
        }
        Err(SignError::Key(
            "not a PEM EC private key (SEC1 or PKCS#8) on P-256, P-384 or P-521".into(),
        ))
    }

    pub fn public(&self) -> PublicKey {
        match self {
            PrivateKey::P256(k) => PublicKey::P256(*k.verifying_key()),
            PrivateKey::P384(k) => PublicKey::P384(*k.verifying_key()),
            PrivateKey::P521(k) => PublicKey::P521(*k.verifying_key()),
        }
    }

    /// An ASN.1 DER ECDSA signature of `message` under the curve's hash.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer;
        match self {
            PrivateKey::P256(k) => {
                let s: p256::ecdsa::DerSignature = k.sign(message);
                s.as_bytes().to_vec()
            }
            PrivateKey::P384(k) => {
                let s: p384::ecdsa::DerSignature = k.sign(message);
                s.as_bytes().to_vec()
            }
            PrivateKey::P521(k) => {
                let s: p521::ecdsa::DerSignature = k.sign(message);
                s.as_bytes().to_vec()
            }
        }
    }
}
