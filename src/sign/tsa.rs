//! RFC 3161 timestamps in a Sigstore bundle (`timestampVerificationData`), verified offline
//! against the timestamp authorities of the trusted root: the TimeStampResp granted, the CMS
//! SignedData of exactly the shape a TSA writes (versions, one signer, no unsigned or
//! revocation data), its embedded certificates byte for byte the trusted TSA's, the signer
//! named by that certificate, the `messageDigest` attribute the hash of the TSTInfo, the TSA's
//! signature over the signed attributes, the TSTInfo's message imprint the hash of the DSSE
//! signature, and its time inside the authority's and its certificate's validity.
//!
//! Parsed with asn1-rs (through x509-parser, already here) as plain DER elements: the `cms`
//! crate would bring a second `der` generation for the dozen fields read here.

use sha2::Digest as _;
use x509_parser::asn1_rs::{Any, Class, FromDer};
use x509_parser::prelude::X509Certificate;

use super::{PublicKey, SignError};

/// Largest timestamp accepted, and most timestamps in a bundle.
pub const MAX_TOKEN: usize = 64 << 10;
pub const MAX_TOKENS: usize = 4;

const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const OID_TST_INFO: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x01, 0x04,
];
const OID_CONTENT_TYPE: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x03];
const OID_MESSAGE_DIGEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const OID_SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const OID_ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const OID_ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];

const SEQUENCE: u32 = 16;
const SET: u32 = 17;
const INTEGER: u32 = 2;
const OID: u32 = 6;
const OCTETS: u32 = 4;
const GENERALIZED_TIME: u32 = 24;

fn refused(why: impl Into<String>) -> SignError {
    SignError::Sigstore(format!("its RFC 3161 timestamp {}", why.into()))
}

/// One DER element: its bytes whole, and what it holds.
#[derive(Clone, Copy)]
struct El<'a> {
    raw: &'a [u8],
    any_class: Class,
    tag: u32,
    data: &'a [u8],
}

impl<'a> El<'a> {
    fn universal(&self, tag: u32) -> bool {
        self.any_class == Class::Universal && self.tag == tag
    }

    fn context(&self, tag: u32) -> bool {
        self.any_class == Class::ContextSpecific && self.tag == tag
    }

    fn expect(self, tag: u32, what: &str) -> Result<El<'a>, SignError> {
        if self.universal(tag) {
            Ok(self)
        } else {
            Err(refused(format!("is malformed ({what})")))
        }
    }

    fn children(&self) -> Result<Vec<El<'a>>, SignError> {
        elements(self.data)
    }
}

fn elements(mut input: &[u8]) -> Result<Vec<El<'_>>, SignError> {
    let mut out = Vec::new();
    while !input.is_empty() {
        if out.len() >= 64 {
            return Err(refused("has too many elements"));
        }
        let (rest, any) = Any::from_der(input).map_err(|_| refused("is not DER"))?;
        let raw = &input[..input.len() - rest.len()];
        out.push(El {
            raw,
            any_class: any.header.class(),
            tag: any.header.tag().0,
            data: any.data,
        });
        input = rest;
    }
    Ok(out)
}

fn one<'a>(input: &'a [u8], tag: u32, what: &str) -> Result<El<'a>, SignError> {
    match elements(input)?.as_slice() {
        [el] => el.expect(tag, what),
        _ => Err(refused(format!("is malformed ({what})"))),
    }
}

fn digest(oid: &[u8], bytes: &[u8]) -> Result<Vec<u8>, SignError> {
    Ok(match oid {
        OID_SHA256 => sha2::Sha256::digest(bytes).to_vec(),
        OID_SHA384 => sha2::Sha384::digest(bytes).to_vec(),
        OID_SHA512 => sha2::Sha512::digest(bytes).to_vec(),
        _ => return Err(refused("uses a hash hoist does not know")),
    })
}

/// The OID of an AlgorithmIdentifier (parameters absent or NULL).
fn algorithm<'a>(el: &El<'a>) -> Result<&'a [u8], SignError> {
    let parts = el.expect(SEQUENCE, "algorithm")?.children()?;
    match parts.as_slice() {
        [oid] | [oid, _] if oid.universal(OID) => Ok(oid.data),
        _ => Err(refused("is malformed (algorithm)")),
    }
}

/// A timestamp authority of the trusted root: its certificate (the chain's first) and when
/// the root trusts it.
pub struct Authority {
    pub cert: Vec<u8>,
    pub chain: Vec<Vec<u8>>,
    pub valid_for: serde_json::Value,
}

/// Verify `token` (a DER TimeStampResp) for the DSSE `signature` against `authorities`;
/// returns the time it vouches for (seconds since the epoch).
pub fn verify(
    token: &[u8],
    signature: &[u8],
    authorities: &[Authority],
    valid_at: impl Fn(&serde_json::Value, i64) -> bool,
) -> Result<i64, SignError> {
    let signed_data = signed_data(token)?;
    let mut last = refused("names no timestamp authority of the trusted root");
    for authority in authorities {
        match verify_with(&signed_data, signature, authority) {
            Ok(time) if valid_at(&authority.valid_for, time) => return Ok(time),
            Ok(_) => last = refused("is from a time its authority was not trusted"),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The SignedData of a granted TimeStampResp.
fn signed_data(token: &[u8]) -> Result<Vec<El<'_>>, SignError> {
    let resp = one(token, SEQUENCE, "response")?.children()?;
    let [status, content_info] = resp.as_slice() else {
        return Err(refused("is not a granted response with a token"));
    };
    let status = status.expect(SEQUENCE, "status")?.children()?;
    match status.as_slice() {
        [code] if code.universal(INTEGER) && code.data == [0] => {}
        _ => return Err(refused("was not granted")),
    }
    let ci = content_info.expect(SEQUENCE, "token")?.children()?;
    let [kind, content] = ci.as_slice() else {
        return Err(refused("is malformed (token)"));
    };
    if !kind.universal(OID) || kind.data != OID_SIGNED_DATA || !content.context(0) {
        return Err(refused("is not CMS signed data"));
    }
    one(content.data, SEQUENCE, "signed data")?.children()
}

fn verify_with(sd: &[El<'_>], signature: &[u8], authority: &Authority) -> Result<i64, SignError> {
    let (version, algorithms, encap, rest) = match sd {
        [v, a, e, rest @ ..] => (v, a, e, rest),
        _ => return Err(refused("is malformed (signed data)")),
    };
    if !version.universal(INTEGER) || version.data != [3] {
        return Err(refused("has a signed-data version other than 3"));
    }
    let algorithms = algorithms.expect(SET, "digest algorithms")?.children()?;
    let (certs, signer_infos) = match rest {
        [certs, infos] if certs.context(0) => (Some(certs), infos),
        [infos] => (None, infos),
        _ => {
            return Err(refused(
                "carries revocation data or other fields hoist does not read",
            ))
        }
    };
    // Embedded certificates are only the trusted authority's own.
    if let Some(certs) = certs {
        for cert in elements(certs.data)? {
            if !authority.chain.iter().any(|c| c.as_slice() == cert.raw) {
                return Err(refused(
                    "embeds a certificate the trusted root does not list",
                ));
            }
        }
    }
    let tst = tst_info(encap)?;
    let infos = signer_infos.expect(SET, "signer infos")?.children()?;
    let [info] = infos.as_slice() else {
        return Err(refused("has other than one signer"));
    };
    check_signer(info, &algorithms, tst, authority)?;
    read_tst_info(tst, signature)
}

/// The TSTInfo bytes of the encapsulated content.
fn tst_info<'a>(encap: &El<'a>) -> Result<&'a [u8], SignError> {
    let parts = encap.expect(SEQUENCE, "content")?.children()?;
    let [kind, content] = parts.as_slice() else {
        return Err(refused("is malformed (content)"));
    };
    if !kind.universal(OID) || kind.data != OID_TST_INFO || !content.context(0) {
        return Err(refused("holds no TSTInfo"));
    }
    Ok(one(content.data, OCTETS, "TSTInfo")?.data)
}

/// The one signer: named by the authority's certificate, its attributes naming the TSTInfo
/// and its hash, signed by the authority's key.
fn check_signer(
    info: &El<'_>,
    algorithms: &[El<'_>],
    tst: &[u8],
    authority: &Authority,
) -> Result<(), SignError> {
    let parts = info.expect(SEQUENCE, "signer")?.children()?;
    let [version, sid, digest_alg, attrs, sig_alg, sig] = parts.as_slice() else {
        return Err(refused(
            "has a signer of another shape (unsigned attributes?)",
        ));
    };
    let (_, cert) = X509Certificate::from_der(&authority.cert)
        .map_err(|_| refused("authority's certificate cannot be read"))?;
    let names_it = match version.data {
        [1] => {
            let pair = sid.expect(SEQUENCE, "signer id")?.children()?;
            matches!(pair.as_slice(), [issuer, serial]
                if issuer.raw == cert.tbs_certificate.issuer.as_raw()
                    && serial.universal(INTEGER)
                    && serial.data == cert.tbs_certificate.raw_serial())
        }
        [3] => sid.context(0) && ski(&cert).is_some_and(|k| k == sid.data),
        _ => false,
    };
    if !version.universal(INTEGER) || !names_it {
        return Err(refused("is signed by another than the trusted authority"));
    }
    if !algorithms.iter().any(|a| a.raw == digest_alg.raw) {
        return Err(refused("is malformed (digest algorithm not listed)"));
    }
    let hash = algorithm(digest_alg)?;
    if !attrs.context(0) {
        return Err(refused("has no signed attributes"));
    }
    check_attributes(attrs, hash, tst)?;
    let key = PublicKey::from_spki_der(cert.public_key().raw)
        .map_err(|_| refused("authority's key is of a type hoist does not check"))?;
    let sig_hash = match algorithm(sig_alg)? {
        OID_ECDSA_SHA256 => OID_SHA256,
        OID_ECDSA_SHA384 => OID_SHA384,
        OID_ECDSA_SHA512 => OID_SHA512,
        _ => return Err(refused("is signed with an algorithm hoist does not check")),
    };
    // The signature is over the attributes as a SET (RFC 5652 §5.4), not as the [0] they
    // are written with.
    let mut signed = attrs.raw.to_vec();
    signed[0] = 0x31;
    let prehash = digest(sig_hash, &signed)?;
    if !sig.universal(OCTETS) || !key.verifies_prehash(&prehash, sig.data) {
        return Err(refused("does not verify with the authority's key"));
    }
    Ok(())
}

fn ski<'a>(cert: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
            _ => None,
        })
}

/// The signed attributes name the TSTInfo as content and carry its hash.
fn check_attributes(attrs: &El<'_>, hash: &[u8], tst: &[u8]) -> Result<(), SignError> {
    let (mut content_type, mut message_digest) = (false, false);
    for attr in elements(attrs.data)? {
        let parts = attr.expect(SEQUENCE, "attribute")?.children()?;
        let [oid, values] = parts.as_slice() else {
            return Err(refused("is malformed (attribute)"));
        };
        let values = values.expect(SET, "attribute")?;
        // Other attributes (signing time, the signing certificate's hash) are covered by
        // the signature and not read.
        match oid.data {
            OID_CONTENT_TYPE => {
                content_type = one(values.data, OID, "content type")?.data == OID_TST_INFO
            }
            OID_MESSAGE_DIGEST => {
                message_digest = one(values.data, OCTETS, "message digest")?.data
                    == digest(hash, tst)?.as_slice()
            }
            _ => {}
        }
    }
    if !(content_type && message_digest) {
        return Err(refused("signs another content than its TSTInfo"));
    }
    Ok(())
}

/// The TSTInfo's message imprint must be the hash of `signature`; returns its time.
fn read_tst_info(tst: &[u8], signature: &[u8]) -> Result<i64, SignError> {
    let parts = one(tst, SEQUENCE, "TSTInfo")?.children()?;
    let [version, _policy, imprint, _serial, time, ..] = parts.as_slice() else {
        return Err(refused("is malformed (TSTInfo)"));
    };
    if !version.universal(INTEGER) || version.data != [1] {
        return Err(refused("has a TSTInfo version other than 1"));
    }
    let imprint = imprint.expect(SEQUENCE, "imprint")?.children()?;
    let [alg, hashed] = imprint.as_slice() else {
        return Err(refused("is malformed (imprint)"));
    };
    if !hashed.universal(OCTETS) || hashed.data != digest(algorithm(alg)?, signature)?.as_slice() {
        return Err(refused("is for another signature"));
    }
    let time = time.expect(GENERALIZED_TIME, "time")?;
    generalized_time(time.data).ok_or_else(|| refused("has an unreadable time"))
}

/// `YYYYMMDDHHMMSS[.f…]Z` → seconds since the epoch.
fn generalized_time(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?.strip_suffix('Z')?;
    let whole = text.split('.').next()?;
    if whole.len() != 14 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |a: usize, b: usize| whole[a..b].parse::<u8>().ok();
    let year: i32 = whole[..4].parse().ok()?;
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(n(4, 6)?).ok()?, n(6, 8)?)
            .ok()?;
    let t = time::Time::from_hms(n(8, 10)?, n(10, 12)?, n(12, 14)?).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn generalized_times_are_read_and_bad_ones_refused() {
        assert_eq!(
            super::generalized_time(b"20251010021220Z"),
            Some(1760062340)
        );
        assert_eq!(
            super::generalized_time(b"20251010021220.123Z"),
            Some(1760062340)
        );
        for bad in [
            &b"20251310021220Z"[..],
            b"2025101002122Z",
            b"20251010021220",
            b"x",
        ] {
            assert_eq!(super::generalized_time(bad), None, "{bad:?}");
        }
    }
}
