//! Rekor v2 bundles as sigstore-python's tests hold them (`tests/data/sigstore-python`,
//! Apache-2.0): a DSSE envelope logged in the staging instance's Ed25519 logs, as a `dsse`
//! 0.0.2 entry (2025) and as a `hashedrekord` 0.0.2 entry (2026), each timed by the
//! instance's timestamp authority (no signed entry timestamp), verified offline against that
//! instance's trusted root. Their statement is SLSA provenance, not a model signature, so the
//! envelope's signer is checked alone (`bundle::verify_signer`), as `open` checks it after
//! the statement.

use serde_json::{json, Value};

use super::bundle::{verify_signer, Envelope};
use super::sigstore::{SigstoreTrust, TrustedRoot, PUBLIC_GOOD_ROOT};
use super::{Method, Trust};

const DSSE: &[u8] = include_bytes!("../../tests/data/sigstore-python/dsse-0.0.2.sigstore.json");
const HASHEDREKORD: &[u8] =
    include_bytes!("../../tests/data/sigstore-python/dsse-as-hashedrekord-0.0.2.sigstore.json");
const BUNDLES: [&[u8]; 2] = [DSSE, HASHEDREKORD];
const STAGING_ROOT: &[u8] =
    include_bytes!("../../tests/data/sigstore-python/staging_trusted_root.json");
const ENTRY: &str = "/verificationMaterial/tlogEntries/0";

fn trust(root: &[u8], identity: &str, issuer: &str) -> Trust {
    let root = TrustedRoot::parse(root).unwrap();
    let policy = SigstoreTrust::new(root, &[identity.into()], &[issuer.into()]).unwrap();
    Trust {
        sigstore: Some(policy),
        ..Default::default()
    }
}

/// Any identity: these tests are about the log, the time and the bytes, not the signer.
fn staging() -> Trust {
    trust(STAGING_ROOT, "*", "*")
}

fn check(bundle: &[u8], trust: &Trust) -> Result<Method, String> {
    let envelope = Envelope::read(bundle).map_err(|e| e.to_string())?;
    verify_signer(&envelope, trust)
        .map(|(method, _)| method)
        .map_err(|e| e.to_string())
}

fn edited(bundle: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(bundle).unwrap();
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn rekor_v2_bundles_verify_against_their_instances_root() {
    for bundle in BUNDLES {
        let method = check(bundle, &staging()).expect("the staging bundle verifies");
        let Method::Sigstore(logged) = method else {
            panic!("{method:?}")
        };
        // The signer and its issuer, exactly, are allowed; another signer or issuer is not.
        let (who, issuer) = (logged.identity.sans[0].as_str(), logged.issuer.as_str());
        assert!(check(bundle, &trust(STAGING_ROOT, who, issuer)).is_ok());
        let err = check(bundle, &trust(STAGING_ROOT, "a@example.com", issuer)).unwrap_err();
        assert!(err.contains("none of the allowed identities"), "{err}");
        let err = check(bundle, &trust(STAGING_ROOT, who, "https://example.com")).unwrap_err();
        assert!(err.contains("none of the allowed issuers"), "{err}");
        // The signing time is the timestamp authority's (2025 or later), not the log's.
        assert!(logged.signed_at.unwrap() > 1_735_689_600, "{logged:?}");
    }
}

#[test]
fn a_rekor_v2_bundle_is_refused_for_each_reason() {
    for bundle in BUNDLES {
        refused_for_each_reason(bundle);
    }
}

fn refused_for_each_reason(bundle: &[u8]) {
    assert!(check(bundle, &staging()).is_ok(), "unedited, it verifies");
    let public_good = trust(PUBLIC_GOOD_ROOT.as_bytes(), "*", "*");
    let cases: [(Vec<u8>, &Trust, &str); 4] = [
        // The public-good root does not list the staging logs.
        (
            bundle.to_vec(),
            &public_good,
            "a log the trusted root does not list",
        ),
        // Rekor v2 gives no signed entry timestamp: without the TSA's there is no time.
        (
            edited(bundle, |v| {
                v["verificationMaterial"]["timestampVerificationData"] = json!({})
            }),
            &staging(),
            "it carries no signed time",
        ),
        // A checkpoint whose signature line names another log.
        (
            edited(bundle, |v| {
                let cp = v
                    .pointer_mut(&format!("{ENTRY}/inclusionProof/checkpoint/envelope"))
                    .unwrap();
                let text = cp
                    .as_str()
                    .unwrap()
                    .replace(".rekor.sigstage.dev 8w1am", ".rekor.sigstage.example 8w1am");
                *cp = text
                    .replace(".rekor.sigstage.dev 09OnD", ".rekor.sigstage.example 09OnD")
                    .into();
            }),
            &staging(),
            "checkpoint is not signed by the log's key",
        ),
        // Another version of entry than its body says.
        (
            edited(bundle, |v| {
                *v.pointer_mut(&format!("{ENTRY}/kindVersion/version"))
                    .unwrap() = "0.0.1".into()
            }),
            &staging(),
            "for another kind of entry",
        ),
    ];
    for (edited, trust, why) in cases {
        let err = check(&edited, trust).unwrap_err();
        assert!(err.contains(why), "{why}: {err}");
    }
}

/// One flipped bit anywhere in the file — envelope, certificate, Ed25519 checkpoint, proof,
/// body, RFC 3161 timestamp — fails it. Except in a witness's cosignature line of the
/// checkpoint: a signed note may carry signatures by keys its verifier does not know, which
/// it skips (as sigstore-python does); hoist trusts the log's signature alone.
#[test]
fn one_flipped_bit_anywhere_in_a_rekor_v2_bundle_fails_it() {
    let trust = staging();
    for bundle in BUNDLES {
        assert!(check(bundle, &trust).is_ok(), "unflipped, it verifies");
        every_flipped_bit_fails(bundle, witness_line(bundle), |b| check(b, &trust).is_ok());
    }
}

/// Flip the lowest bit (a digit, a base64 letter, a quote become another) and the case bit of
/// each byte of `bytes` outside `skip`: `verifies` must refuse every one.
pub(super) fn every_flipped_bit_fails(
    bytes: &[u8],
    skip: std::ops::Range<usize>,
    verifies: impl Fn(&[u8]) -> bool,
) {
    for i in (0..bytes.len()).filter(|i| !skip.contains(i)) {
        for bit in [0x01, 0x20] {
            let mut flipped = bytes.to_vec();
            flipped[i] ^= bit;
            assert!(
                !verifies(&flipped),
                "bit {bit:#x} flipped at byte {i} ({:?}) still verifies",
                String::from_utf8_lossy(&bytes[i.saturating_sub(20)..(i + 20).min(bytes.len())])
            );
        }
    }
}

/// The bytes of a checkpoint's witness line (`— witness.… …`), if there is one.
fn witness_line(bundle: &[u8]) -> std::ops::Range<usize> {
    let text = std::str::from_utf8(bundle).unwrap();
    let Some(start) = text.find("\u{2014} witness.") else {
        return 0..0;
    };
    let end = start + text[start..].find('"').unwrap();
    start..end
}
