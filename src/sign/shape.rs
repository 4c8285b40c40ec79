//! The fields a bundle may have, as protobuf-JSON readers hold it: a field hoist does not know
//! is refused, not skipped, so a bundle carries nothing a verifier did not look at (a changed
//! field name is a refusal, as a changed value is).

use serde_json::Value;

use super::SignError;

/// The names allowed at each path (`[]` marks the elements of a list).
const FIELDS: &[(&str, &[&str])] = &[
    ("", &["mediaType", "verificationMaterial", "dsseEnvelope"]),
    ("/dsseEnvelope", &["payload", "payloadType", "signatures"]),
    ("/dsseEnvelope/signatures[]", &["sig", "keyid"]),
    (
        "/verificationMaterial",
        &[
            "publicKey",
            "x509CertificateChain",
            "certificate",
            "tlogEntries",
            "timestampVerificationData",
        ],
    ),
    ("/verificationMaterial/publicKey", &["hint"]),
    ("/verificationMaterial/certificate", &["rawBytes"]),
    (
        "/verificationMaterial/x509CertificateChain",
        &["certificates"],
    ),
    (
        "/verificationMaterial/x509CertificateChain/certificates[]",
        &["rawBytes"],
    ),
    (
        "/verificationMaterial/timestampVerificationData",
        &["rfc3161Timestamps"],
    ),
    (
        "/verificationMaterial/timestampVerificationData/rfc3161Timestamps[]",
        &["signedTimestamp"],
    ),
    (
        "/verificationMaterial/tlogEntries[]",
        &[
            "logIndex",
            "logId",
            "kindVersion",
            "integratedTime",
            "inclusionPromise",
            "inclusionProof",
            "canonicalizedBody",
        ],
    ),
    ("/verificationMaterial/tlogEntries[]/logId", &["keyId"]),
    (
        "/verificationMaterial/tlogEntries[]/kindVersion",
        &["kind", "version"],
    ),
    (
        "/verificationMaterial/tlogEntries[]/inclusionPromise",
        &["signedEntryTimestamp"],
    ),
    (
        "/verificationMaterial/tlogEntries[]/inclusionProof",
        &["logIndex", "rootHash", "treeSize", "hashes", "checkpoint"],
    ),
    (
        "/verificationMaterial/tlogEntries[]/inclusionProof/checkpoint",
        &["envelope"],
    ),
];

/// Refuse a bundle with a field (at any depth) that the format does not have.
pub fn check(bundle: &Value) -> Result<(), SignError> {
    walk(bundle, &mut String::new(), 0)
}

fn walk(v: &Value, path: &mut String, depth: usize) -> Result<(), SignError> {
    if depth > 8 {
        return Err(SignError::Bundle("it nests deeper than the format".into()));
    }
    match v {
        Value::Object(map) => {
            let allowed = FIELDS
                .iter()
                .find(|(p, _)| *p == path.as_str())
                .map(|(_, names)| *names)
                .ok_or_else(|| {
                    SignError::Bundle(format!(
                        "it has an object where the format has none ({path})"
                    ))
                })?;
            for (name, value) in map {
                if !allowed.contains(&name.as_str()) {
                    return Err(SignError::Bundle(format!(
                        "it has a field {:?} at {} that the format does not have",
                        name.escape_debug().to_string(),
                        if path.is_empty() { "the top" } else { path }
                    )));
                }
                let len = path.len();
                path.push('/');
                path.push_str(name);
                walk(value, path, depth + 1)?;
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            path.push_str("[]");
            for item in items {
                walk(item, path, depth + 1)?;
            }
            path.truncate(path.len() - 2);
        }
        _ => {}
    }
    Ok(())
}
