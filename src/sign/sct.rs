//! Certificate Transparency for Fulcio certificates (RFC 6962): a Sigstore signing
//! certificate carries, embedded, the signed certificate timestamps (SCTs) that CT logs gave
//! for its precertificate. One of them, from a CT log of the trusted root valid at its time,
//! must verify, as Sigstore's clients require: a certificate a CA issued without logging it
//! publicly is refused, even though it chains.
//!
//! x509-parser parses the SCT list extension. What no crate here offers is the signed data:
//! the precertificate's TBSCertificate is the certificate's with the SCT list extension taken
//! out, so the TBS is re-encoded by hand below (a few DER headers around the kept parts,
//! walked with asn1-rs, which x509-parser re-exports).

use sha2::{Digest as _, Sha256};
use x509_parser::asn1_rs::{Any, FromDer};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::X509Certificate;

use super::{PublicKey, SignError};

/// The embedded SCT list extension's OID, 1.3.6.1.4.1.11129.2.4.2, as DER content bytes.
const OID_SCT_LIST: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0xd6, 0x79, 0x02, 0x04, 0x02];
/// At most this many SCTs are tried (Fulcio embeds one).
const MAX_SCTS: usize = 16;

/// A CT log of the trusted root: its log id (SHA-256 of its key), its key, and when valid.
pub struct CtLog {
    pub key_id: Vec<u8>,
    pub key: Option<PublicKey>,
    pub valid: Box<dyn Fn(i64) -> bool + Send + Sync>,
}

fn refused(why: &str) -> SignError {
    SignError::Sigstore(format!("its certificate: {why}"))
}

/// One SCT of `leaf` (DER) by a log of `logs` must verify for the precertificate issued by
/// the certificate whose key is `issuer_spki` (its SubjectPublicKeyInfo, DER).
pub fn verify(leaf: &[u8], issuer_spki: &[u8], logs: &[CtLog]) -> Result<(), SignError> {
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|_| refused("cannot be read"))?;
    let scts = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SCT(list) => Some(list),
            _ => None,
        })
        .ok_or_else(|| refused("it carries no signed certificate timestamp (never CT-logged)"))?;
    let tbs = precertificate_tbs(cert.tbs_certificate.as_ref())?;
    let issuer_key_hash = Sha256::digest(issuer_spki);
    let mut why = "no signed certificate timestamp of it is from a CT log of the trusted root";
    for sct in scts.iter().take(MAX_SCTS) {
        let Some(log) = logs.iter().find(|l| l.key_id == sct.id.key_id[..]) else {
            continue;
        };
        let Some(key) = &log.key else {
            why = "its CT log's key is of a type hoist does not check";
            continue;
        };
        let ms = i64::try_from(sct.timestamp).unwrap_or(i64::MAX);
        if !(log.valid)(ms / 1000) {
            why = "its CT log's key was not valid at the timestamp's time";
            continue;
        }
        let signed = signed_data(sct.timestamp, &issuer_key_hash, &tbs, sct.extensions.0)?;
        // ECDSA with SHA-256 (hash 4, signature 3): what Sigstore's CT logs sign with.
        let (hash, alg) = (sct.signature.hash_alg_id, sct.signature.sign_alg_id);
        if sct.version.0 == 0 && (hash, alg) == (4, 3) && key.verifies(&signed, sct.signature.data)
        {
            return Ok(());
        }
        why = "its signed certificate timestamp does not verify with its CT log's key";
    }
    Err(refused(why))
}

/// RFC 6962 §3.2's `digitally-signed` struct for a precertificate entry.
fn signed_data(
    timestamp_ms: u64,
    issuer_key_hash: &[u8],
    tbs: &[u8],
    extensions: &[u8],
) -> Result<Vec<u8>, SignError> {
    let (tbs_len, ext_len) = (tbs.len(), extensions.len());
    if tbs_len >= 1 << 24 || ext_len >= 1 << 16 {
        return Err(refused("its signed certificate timestamp is too large"));
    }
    let mut out = Vec::with_capacity(tbs_len + ext_len + 50);
    out.extend([0, 0]); // version v1, signature type certificate_timestamp
    out.extend(timestamp_ms.to_be_bytes());
    out.extend([0, 1]); // entry type precert_entry
    out.extend(issuer_key_hash);
    out.extend(&(tbs_len as u32).to_be_bytes()[1..]);
    out.extend(tbs);
    out.extend((ext_len as u16).to_be_bytes());
    out.extend(extensions);
    Ok(out)
}

/// The TBSCertificate `tbs` (DER) without its SCT list extension, re-encoded.
fn precertificate_tbs(tbs: &[u8]) -> Result<Vec<u8>, SignError> {
    let bad = || refused("its TBSCertificate cannot be re-encoded");
    let (_, seq) = Any::from_der(tbs).map_err(|_| bad())?;
    let mut fields = Vec::with_capacity(seq.data.len());
    for field in children(seq.data).ok_or_else(bad)? {
        let (_, any) = Any::from_der(field).map_err(|_| bad())?;
        // [3] EXPLICIT Extensions: the one context-specific, constructed field numbered 3.
        if field[0] != 0xa3 {
            fields.extend(field);
            continue;
        }
        let (_, list) = Any::from_der(any.data).map_err(|_| bad())?;
        let mut kept = Vec::with_capacity(list.data.len());
        for ext in children(list.data).ok_or_else(bad)? {
            if !is_sct_list(ext) {
                kept.extend(ext);
            }
        }
        fields.extend(tlv(0xa3, &tlv(0x30, &kept)));
    }
    Ok(tlv(0x30, &fields))
}

/// The whole encodings (header and content) of the DER elements that fill `content`.
fn children(mut content: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !content.is_empty() {
        let (rest, _) = Any::from_der(content).ok()?;
        let (element, after) = content.split_at(content.len() - rest.len());
        out.push(element);
        content = after;
    }
    Some(out)
}

/// Is this Extension (a SEQUENCE whose first element is its OID) the SCT list?
fn is_sct_list(ext: &[u8]) -> bool {
    Any::from_der(ext)
        .ok()
        .and_then(|(_, seq)| Any::from_der(seq.data).ok())
        .is_some_and(|(_, oid)| oid.data == OID_SCT_LIST)
}

/// A DER element: one-byte `tag`, definite length, `content`.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend(&bytes[skip..]);
    }
    out.extend(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_encoded_in_the_shortest_form() {
        assert_eq!(tlv(0x30, &[]), [0x30, 0]);
        assert_eq!(tlv(0x30, &[7; 0x7f])[..2], [0x30, 0x7f]);
        assert_eq!(tlv(0x30, &[7; 0x80])[..3], [0x30, 0x81, 0x80]);
        assert_eq!(tlv(0x30, &[7; 0x1234])[..4], [0x30, 0x82, 0x12, 0x34]);
    }

    #[test]
    fn a_tbs_without_the_extension_reencodes_to_itself() {
        // Any certificate without SCTs: its TBS must come back byte for byte.
        use base64::Engine as _;
        let root: serde_json::Value =
            serde_json::from_str(super::super::sigstore::PUBLIC_GOOD_ROOT).unwrap();
        let b64 = root["certificateAuthorities"][0]["certChain"]["certificates"][0]["rawBytes"]
            .as_str()
            .unwrap();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let tbs = cert.tbs_certificate.as_ref();
        assert_eq!(precertificate_tbs(tbs).unwrap(), tbs);
    }

    /// The OMS Sigstore vector against the public-good root with its CT logs edited: each
    /// edit refuses it with its reason, so the SCT is checked, not merely present.
    #[test]
    fn the_vector_needs_an_sct_from_a_ct_log_of_the_root() {
        use crate::sign::sigstore::{SigstoreTrust, TrustedRoot, PUBLIC_GOOD_ROOT};
        use crate::sign::{open, Trust};
        const VECTOR: &[u8] =
            include_bytes!("../../tests/data/model-signing-spec/v1.0/valid/sigstore.bundle.json");
        let verify = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut root: serde_json::Value = serde_json::from_str(PUBLIC_GOOD_ROOT).unwrap();
            edit(&mut root);
            let root = TrustedRoot::parse(&serde_json::to_vec(&root).unwrap()).unwrap();
            let trust = Trust {
                sigstore: Some(
                    SigstoreTrust::new(
                        root,
                        &["stefanb@us.ibm.com".into()],
                        &["https://sigstore.verify.ibm.com/oauth2".into()],
                    )
                    .unwrap(),
                ),
                ..Default::default()
            };
            open(VECTOR, &trust).map(|_| ()).map_err(|e| e.to_string())
        };
        assert_eq!(verify(&|_| {}), Ok(()));
        let other_key = serde_json::Value::String(
            // The same log's entry with the Rekor log's key in its place.
            serde_json::from_str::<serde_json::Value>(PUBLIC_GOOD_ROOT).unwrap()["tlogs"][0]
                ["publicKey"]["rawBytes"]
                .clone()
                .as_str()
                .unwrap()
                .into(),
        );
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: [(Edit, &str); 3] = [
            (
                Box::new(|r| r["ctlogs"] = serde_json::json!([])),
                "no signed certificate timestamp of it is from a CT log of the trusted root",
            ),
            (
                Box::new(move |r| {
                    for log in r["ctlogs"].as_array_mut().unwrap() {
                        log["publicKey"]["rawBytes"] = other_key.clone();
                    }
                }),
                "does not verify with its CT log's key",
            ),
            (
                Box::new(|r| {
                    for log in r["ctlogs"].as_array_mut().unwrap() {
                        log["publicKey"]["validFor"]["start"] = "2030-01-01T00:00:00Z".into();
                    }
                }),
                "not valid at the timestamp's time",
            ),
        ];
        for (edit, why) in cases {
            let err = verify(&*edit).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
