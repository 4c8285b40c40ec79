//! The OpenSSF model signing specification's test vectors (`tests/data/model-signing-spec`,
//! Apache-2.0): every valid bundle is read and shown with its method and signer by `hoist
//! inspect`; every invalid one is refused with its reason; the Sigstore bundle verifies
//! offline against the public-good trusted root (`hoist verify --bundle`: its files are not
//! published, so they are reported as not checked), and a changed byte in any part it is
//! verified by — envelope, certificate, log entry body, signed entry timestamp, inclusion
//! proof, checkpoint, indexes and times — fails it. Hostile log entries: another body, a
//! checkpoint signed by an unknown key, a proof of the wrong length.

mod common;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use common::{small_model, Hoist, Registry};
use serde_json::{json, Value};

const SIGNATURE: i32 = 9;
const BUNDLE_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const IDENTITY: &str = "stefanb@us.ibm.com";
const ISSUER: &str = "https://sigstore.verify.ibm.com/oauth2";

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/model-signing-spec/v1.0")
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn sigstore_bundle() -> Value {
    serde_json::from_slice(&std::fs::read(vectors().join("valid/sigstore.bundle.json")).unwrap())
        .unwrap()
}

/// `hoist verify --bundle FILE` with the vector's identity and issuer.
fn verify_bundle(h: &Hoist, dir: &Path, name: &str, bundle: &Value, extra: &[&str]) -> common::Run {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec(bundle).unwrap()).unwrap();
    let mut args = vec![
        "verify",
        "--bundle",
        path.to_str().unwrap(),
        "--cert-identity",
        IDENTITY,
        "--cert-oidc-issuer",
        ISSUER,
    ];
    args.extend(extra);
    h.run(&args)
}

#[test]
fn the_sigstore_vector_verifies_offline_and_any_changed_part_fails() {
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let good = sigstore_bundle();
    let r = verify_bundle(&h, work.path(), "good", &good, &[]).ok();
    assert!(
        r.stdout.contains(&format!(
            "Sigstore certificate {IDENTITY} (issuer {ISSUER})"
        )) && r.stdout.contains("2 listed files are not checked"),
        "{}",
        r.stdout
    );

    // One flipped bit in each decoded part, one changed number in each integer.
    type Edit = Box<dyn Fn(&mut Value)>;
    let flip = |pointer: &'static str, at: usize| -> Edit {
        Box::new(move |v: &mut Value| {
            let field = v.pointer_mut(pointer).unwrap();
            let mut bytes = b64().decode(field.as_str().unwrap()).unwrap();
            let i = at.min(bytes.len() - 1);
            bytes[i] ^= 1;
            *field = json!(b64().encode(bytes));
        })
    };
    let bump = |pointer: &'static str| -> Edit {
        Box::new(move |v: &mut Value| {
            let field = v.pointer_mut(pointer).unwrap();
            let n: i64 = field.as_str().unwrap().parse().unwrap();
            *field = json!((n + 1).to_string());
        })
    };
    let entry = "/verificationMaterial/tlogEntries/0";
    let cases: Vec<(&str, Edit)> = vec![
        (
            "payload",
            Box::new(|v: &mut Value| {
                // Still a well-formed statement: only the signed folder's name changes.
                let field = v.pointer_mut("/dsseEnvelope/payload").unwrap();
                let text =
                    String::from_utf8(b64().decode(field.as_str().unwrap()).unwrap()).unwrap();
                assert!(text.contains("v1.1.0-sigstore"));
                *field = json!(b64().encode(text.replace("v1.1.0-sigstore", "v1.1.0-sigstorf")));
            }),
        ),
        ("signature", flip("/dsseEnvelope/signatures/0/sig", 20)),
        (
            "certificate",
            flip("/verificationMaterial/certificate/rawBytes", 300),
        ),
        (
            "body",
            flip("/verificationMaterial/tlogEntries/0/canonicalizedBody", 50),
        ),
        (
            "set",
            flip(
                "/verificationMaterial/tlogEntries/0/inclusionPromise/signedEntryTimestamp",
                20,
            ),
        ),
        (
            "proof hash",
            flip(
                "/verificationMaterial/tlogEntries/0/inclusionProof/hashes/0",
                3,
            ),
        ),
        (
            "root hash",
            flip(
                "/verificationMaterial/tlogEntries/0/inclusionProof/rootHash",
                3,
            ),
        ),
        (
            "log id",
            flip("/verificationMaterial/tlogEntries/0/logId/keyId", 10),
        ),
        (
            "log index",
            bump("/verificationMaterial/tlogEntries/0/logIndex"),
        ),
        (
            "integrated time",
            bump("/verificationMaterial/tlogEntries/0/integratedTime"),
        ),
        (
            "proof index",
            bump("/verificationMaterial/tlogEntries/0/inclusionProof/logIndex"),
        ),
        (
            "tree size",
            bump("/verificationMaterial/tlogEntries/0/inclusionProof/treeSize"),
        ),
        (
            "checkpoint",
            Box::new(move |v: &mut Value| {
                let cp = v
                    .pointer_mut(&format!("{entry}/inclusionProof/checkpoint/envelope"))
                    .unwrap();
                let text = cp.as_str().unwrap().replacen("476246825", "476246826", 1);
                *cp = json!(text);
            }),
        ),
    ];
    for (name, edit) in cases {
        let mut v = good.clone();
        edit(&mut v);
        assert_ne!(v, good, "{name}: the edit changed nothing");
        let r = verify_bundle(&h, work.path(), name, &v, &[]);
        assert_eq!(r.code, SIGNATURE, "{name}: {}\n{}", r.stdout, r.stderr);
        let line = r.error_line();
        if name == "payload" {
            assert!(line.contains("another payload"), "{line}");
        }
    }

    // Who may sign: another identity or issuer is refused.
    let path = work.path().join("good.json");
    for (flags, why) in [
        (
            [
                "--cert-identity",
                "someone@example.com",
                "--cert-oidc-issuer",
                ISSUER,
            ],
            "none of the allowed identities",
        ),
        (
            [
                "--cert-identity",
                IDENTITY,
                "--cert-oidc-issuer",
                "https://accounts.google.com",
            ],
            "none of the allowed issuers",
        ),
    ] {
        let mut args = vec!["verify", "--bundle", path.to_str().unwrap()];
        args.extend(flags);
        h.run(&args).fails_with(SIGNATURE, why);
    }
    // Given only a key, a Sigstore bundle is refused, naming who it claims signed.
    let key = public_key(work.path());
    h.run(&[
        "verify",
        "--bundle",
        path.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ])
    .fails_with(SIGNATURE, &format!("Sigstore bundle by {IDENTITY}"));
}

/// A P-256 public key (PEM) that signed none of the vectors.
fn public_key(dir: &Path) -> PathBuf {
    use p256::pkcs8::EncodePublicKey;
    let key = dir.join("k.pub");
    let private = p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).unwrap();
    let pem = private
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    std::fs::write(&key, pem).unwrap();
    key
}

#[test]
fn hostile_log_entries_are_refused_with_one_line() {
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let good = sigstore_bundle();
    let entry = "/verificationMaterial/tlogEntries/0";
    // Another body: a well-formed dsse entry for other bytes (the log never signed it).
    let mut other_body = good.clone();
    let body = other_body
        .pointer_mut(&format!("{entry}/canonicalizedBody"))
        .unwrap();
    let mut parsed: Value =
        serde_json::from_slice(&b64().decode(body.as_str().unwrap()).unwrap()).unwrap();
    parsed["spec"]["payloadHash"]["value"] = json!("00".repeat(32));
    *body = json!(b64().encode(serde_json::to_vec(&parsed).unwrap()));
    verify_bundle(&h, work.path(), "other-body", &other_body, &[])
        .fails_with(SIGNATURE, "signed entry timestamp does not verify");
    // A checkpoint signed by a key the log does not have (same key hint, another signature).
    let mut unknown = good.clone();
    let cp = unknown
        .pointer_mut(&format!("{entry}/inclusionProof/checkpoint/envelope"))
        .unwrap();
    let text = cp.as_str().unwrap().to_string();
    let (note, sigline) = text.split_once("\n\n").unwrap();
    let (prefix, sig) = sigline.trim_end().rsplit_once(' ').unwrap();
    let mut raw = b64().decode(sig).unwrap();
    let key = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
    let forged: p256::ecdsa::DerSignature =
        p256::ecdsa::signature::Signer::sign(&key, format!("{note}\n").as_bytes());
    raw.truncate(4);
    raw.extend_from_slice(forged.as_bytes());
    *cp = json!(format!("{note}\n\n{prefix} {}\n", b64().encode(raw)));
    verify_bundle(&h, work.path(), "unknown-key", &unknown, &[])
        .fails_with(SIGNATURE, "checkpoint is not signed by the log's key");
    // An inclusion proof one hash short, and one hash long.
    for (name, change) in [("short", -1i32), ("long", 1)] {
        let mut v = good.clone();
        let hashes = v
            .pointer_mut(&format!("{entry}/inclusionProof/hashes"))
            .unwrap()
            .as_array_mut()
            .unwrap();
        if change < 0 {
            hashes.pop();
        } else {
            hashes.push(json!(b64().encode([7u8; 32])));
        }
        verify_bundle(&h, work.path(), name, &v, &[])
            .fails_with(SIGNATURE, "wrong number of hashes");
    }
    // 65 proof hashes: refused before any hashing.
    let mut v = good.clone();
    *v.pointer_mut(&format!("{entry}/inclusionProof/hashes"))
        .unwrap() = json!(vec![b64().encode([7u8; 32]); 65]);
    verify_bundle(&h, work.path(), "many", &v, &[]).fails_with(SIGNATURE, "65 hashes");
    // Two log entries.
    let mut v = good.clone();
    let e = v.pointer(entry).unwrap().clone();
    *v.pointer_mut("/verificationMaterial/tlogEntries").unwrap() = json!([e.clone(), e]);
    verify_bundle(&h, work.path(), "two", &v, &[])
        .fails_with(SIGNATURE, "2 transparency-log entries");
}

#[test]
fn every_valid_vector_shows_its_method_and_signer_and_every_invalid_one_is_refused() {
    let reg = Registry::start();
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("m");
    small_model(&src);
    let reference = reg.reference("vectors/m:v1");
    h.run(&["push", src.to_str().unwrap(), &reference]).ok();
    for name in ["key", "certificate", "sigstore"] {
        let file = vectors().join(format!("valid/{name}.bundle.json"));
        h.run(&[
            "attach",
            &reference,
            file.to_str().unwrap(),
            "--artifact-type",
            BUNDLE_TYPE,
        ])
        .ok();
    }
    let r = h.run(&["inspect", &reference, "--json"]).ok();
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    let claims = doc["signatures"]["claims"].as_array().unwrap();
    let methods: Vec<&str> = claims
        .iter()
        .map(|c| c["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["sigstore", "certificate", "key"], "{claims:?}");
    assert_eq!(claims[0]["identity"], IDENTITY);
    assert_eq!(claims[0]["issuer"], ISSUER);
    assert!(
        claims[1]["identity"].as_str().unwrap().contains("CN="),
        "{}",
        claims[1]
    );
    assert!(claims[2]["keyHint"].is_string(), "{}", claims[2]);
    for c in claims {
        // The vectors sign other files than these: each says so.
        assert!(c["problem"].is_string(), "{c}");
    }
    // With the issuer and identity given, inspect says the Sigstore one would verify (but
    // for the files) — as a claim, not a placement.
    let r = h
        .run(&[
            "inspect",
            &reference,
            "--json",
            "--cert-identity",
            IDENTITY,
            "--cert-oidc-issuer",
            ISSUER,
        ])
        .ok();
    let doc: Value = serde_json::from_str(&r.stdout).unwrap();
    let verdict = doc["signatures"]["claims"][0]["verdict"].as_str().unwrap();
    assert!(verdict.contains("does not cover this model"), "{verdict}");

    // Invalid bundles and payloads: refused with the reason, by `verify --bundle`.
    let key = public_key(work.path());
    let invalid = [
        ("invalid/empty.bundle.json", "not JSON"),
        ("invalid/missing-envelope.bundle.json", "no DSSE envelope"),
        (
            "invalid/missing-tlog-entries.bundle.json",
            "0 transparency-log entries",
        ),
        (
            "invalid/missing-verification-material.bundle.json",
            "no verification material",
        ),
        (
            "invalid-payload/wrong-predicate.bundle.json",
            "predicate type",
        ),
    ];
    for (file, why) in invalid {
        let path = vectors().join(file);
        h.run(&[
            "verify",
            "--bundle",
            path.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ])
        .fails_with(SIGNATURE, why);
    }
}
