//! Model signatures both ways with the reference implementation (PyPI `model-signing`
//! 1.1.1): hoist signs, `model_signing verify` passes on the pulled folder; `model_signing
//! sign` signs, the bundle is attached, `hoist pull --verify-key` passes. A wrong key, an
//! unsigned model, a signature of other files and an oversized bundle stop the pull with
//! exit 9 and nothing placed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, small_model, tree, Hoist, Registry};

const SIGNATURE: i32 = 9;
const BUNDLE_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// An EC key pair on `curve` (openssl's name): (private, public) PEM files.
fn key_pair(dir: &Path, name: &str, curve: &str) -> (PathBuf, PathBuf) {
    let (private, public) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.pub.pem")),
    );
    let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
    ok(Command::new("openssl")
        .args(["ecparam", "-genkey", "-noout", "-name", curve, "-out"])
        .arg(&private));
    ok(Command::new("openssl")
        .args(["ec", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .stderr(std::process::Stdio::null()));
    (private, public)
}

fn model_signing(args: &[&str]) -> common::Run {
    run(Command::new("model_signing").args(args))
}

/// A model folder without hidden files (the reference tool signs those; hoist's push
/// leaves them out).
fn model(dir: &Path) -> PathBuf {
    let m = dir.join("minilm");
    small_model(&m);
    std::fs::remove_file(m.join(".hidden")).unwrap();
    m
}

fn pull(h: &Hoist, reference: &str, out: &Path, keys: &[&Path]) -> common::Run {
    let mut args = vec![
        "pull".to_string(),
        reference.into(),
        "-o".into(),
        out.display().to_string(),
    ];
    for k in keys {
        args.push("--verify-key".into());
        args.push(k.display().to_string());
    }
    let marker = out.with_extension("ready");
    args.push("--ready-marker".into());
    args.push(marker.display().to_string());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    h.run(&refs)
}

/// The model's files in a pulled folder: all but the signature hoist wrote beside them.
fn model_files(out: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = tree(out, false);
    assert!(
        files.remove("model.sig").is_some(),
        "no model.sig in {}",
        out.display()
    );
    files
}

/// Nothing of the model in `out`, and no ready marker.
fn nothing_placed(out: &Path) {
    assert!(
        common::visible_entries(out).is_empty(),
        "{:?}",
        common::all_entries(out)
    );
    assert!(
        !out.with_extension("ready").exists(),
        "a ready marker was written"
    );
}

#[test]
fn hoist_signs_and_the_reference_tool_verifies_the_pulled_folder() {
    let reg = Registry::start();
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let src = model(work.path());
    for curve in ["prime256v1", "secp384r1", "secp521r1"] {
        let (key, public) = key_pair(work.path(), curve, curve);
        let reference = reg.reference(&format!("signed/{curve}:v1"));
        h.run(&[
            "push",
            src.to_str().unwrap(),
            &reference,
            "--sign",
            key.to_str().unwrap(),
        ])
        .ok();
        let out = work.path().join(format!("out-{curve}"));
        pull(&h, &reference, &out, &[&public]).ok();
        assert!(
            tree(&src, false) == model_files(&out),
            "the pulled files differ"
        );
        let sig = out.join("model.sig");
        assert!(sig.is_file());
        let r = model_signing(&[
            "verify",
            "key",
            out.to_str().unwrap(),
            "--signature",
            sig.to_str().unwrap(),
            "--public_key",
            public.to_str().unwrap(),
        ]);
        assert_eq!(
            r.code, 0,
            "{curve}: model_signing verify failed:\n{}\n{}",
            r.stdout, r.stderr
        );
        // The signature is the pull's own: a check against the ready marker (as the server
        // container of deploy/overlays/signed runs it) or the registry passes with it there.
        let marker = out.with_extension("ready");
        let marker_check = || {
            run(h.cmd().args([
                "verify",
                out.to_str().unwrap(),
                "--marker",
                marker.to_str().unwrap(),
                "--full",
            ]))
        };
        let r = marker_check();
        assert_eq!(r.code, 0, "{}", r.stderr);
        h.run(&["verify", out.to_str().unwrap(), &reference]).ok();
        // inspect shows the signature as its bundle claims: the key's hint, all files.
        let shown = h.run(&["inspect", &reference]).ok().stdout;
        let hint = sha256_hex(&std::fs::read(&public).unwrap());
        assert!(
            shown.contains("Signatures:    1 (claims, not verified here")
                && shown.contains(&format!(
                    " key {hint} \"minilm\" 6 files: covers these files"
                )),
            "{shown}"
        );
        if curve == "prime256v1" {
            // The marker lists the signature with its digest: other bytes there are caught.
            let mut bundle = std::fs::read(&sig).unwrap();
            bundle.push(b' ');
            std::fs::write(&sig, bundle).unwrap();
            marker_check().fails_with(6, "model.sig");
            // A later pull without a key into the same folder leaves no signature behind
            // to vouch for files it never saw.
            let plain = reg.reference("unsigned/minilm:v1");
            h.run(&["push", src.to_str().unwrap(), &plain]).ok();
            pull(&h, &plain, &out, &[]).ok();
            assert!(!sig.exists(), "a stale model.sig stayed");
            marker_check().ok();
        }
    }
}

#[test]
fn the_reference_tool_signs_and_hoist_verifies_before_placing() {
    let reg = Registry::start();
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let src = model(work.path());
    let (key, public) = key_pair(work.path(), "k", "prime256v1");
    let reference = reg.reference("team/minilm:v1");
    h.run(&["push", src.to_str().unwrap(), &reference]).ok();
    let sig_dir = work.path().join("sig");
    std::fs::create_dir(&sig_dir).unwrap();
    let sig = sig_dir.join("model.sig");
    let r = model_signing(&[
        "sign",
        "key",
        src.to_str().unwrap(),
        "--private_key",
        key.to_str().unwrap(),
        "--signature",
        sig.to_str().unwrap(),
    ]);
    assert_eq!(
        r.code, 0,
        "model_signing sign failed:\n{}\n{}",
        r.stdout, r.stderr
    );
    // Unsigned yet: refused, nothing placed.
    let out = work.path().join("out-unsigned");
    pull(&h, &reference, &out, &[&public]).fails_with(SIGNATURE, "no signature is attached");
    nothing_placed(&out);

    h.run(&[
        "attach",
        &reference,
        sig.to_str().unwrap(),
        "--artifact-type",
        BUNDLE_TYPE,
    ])
    .ok();
    let out = work.path().join("out");
    pull(&h, &reference, &out, &[&public]).ok();
    assert!(
        tree(&src, false) == model_files(&out),
        "the pulled files differ"
    );
    assert_eq!(
        std::fs::read(out.join("model.sig")).unwrap(),
        std::fs::read(&sig).unwrap()
    );

    // Another key: refused with the key named, nothing placed.
    let (_, other) = key_pair(work.path(), "other", "prime256v1");
    let out = work.path().join("out-other");
    pull(&h, &reference, &out, &[&other]).fails_with(SIGNATURE, "not one of the verification keys");
    nothing_placed(&out);
    // Any one of several keys may vouch.
    let out = work.path().join("out-either");
    pull(&h, &reference, &out, &[&other, &public]).ok();
    // HOIST_VERIFY_KEY, as an init container sets it.
    let out = work.path().join("out-env");
    run(h.cmd().env("HOIST_VERIFY_KEY", &public).args([
        "pull",
        &reference,
        "-o",
        out.to_str().unwrap(),
    ]))
    .ok();
    assert!(out.join("model.sig").is_file());
}

#[test]
fn a_signature_of_other_files_or_too_large_places_nothing() {
    let reg = Registry::start();
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let src = model(work.path());
    let (key, public) = key_pair(work.path(), "k", "prime256v1");
    let v1 = reg.reference("team/minilm:v1");
    h.run(&["push", src.to_str().unwrap(), &v1]).ok();
    let sig = work.path().join("model.sig");
    let r = model_signing(&[
        "sign",
        "key",
        src.to_str().unwrap(),
        "--private_key",
        key.to_str().unwrap(),
        "--signature",
        sig.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // v2: one file changed. v1's valid signature attached to v2 must not vouch for it.
    std::fs::write(src.join("config.json"), br#"{"model_type":"bert","v":2}"#).unwrap();
    let v2 = reg.reference("team/minilm:v2");
    h.run(&["push", src.to_str().unwrap(), &v2]).ok();
    h.run(&[
        "attach",
        &v2,
        sig.to_str().unwrap(),
        "--artifact-type",
        BUNDLE_TYPE,
    ])
    .ok();
    let out = work.path().join("out");
    let metrics = work.path().join("metrics.prom");
    let gets_before = reg.blob_get_count();
    let r = run(h.cmd().args([
        "pull",
        &v2,
        "-o",
        out.to_str().unwrap(),
        "--verify-key",
        public.to_str().unwrap(),
        "--metrics-file",
        metrics.to_str().unwrap(),
    ]));
    let r = r.fails_with(SIGNATURE, "config.json has other bytes than signed");
    assert_eq!(r.stderr.lines().count(), 1, "one error line: {}", r.stderr);
    nothing_placed(&out);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(text.contains("reason=\"signature\"} 1"), "{text}");
    // No blob of the model was fetched (it has seven): only the signature's bundle.
    assert!(reg.blob_get_count() - gets_before <= 1, "{}", reg.log());
    // inspect names the same mismatch; v1, never signed, has none.
    let shown = h.run(&["inspect", &v2]).ok().stdout;
    assert!(
        shown.contains("6 files: the signature does not cover this model: config.json has other bytes than signed"),
        "{shown}"
    );
    let shown = h.run(&["inspect", &v1]).ok().stdout;
    assert!(shown.contains("Signatures:    none"), "{shown}");

    // A bundle over 16 MiB is refused before it is read.
    let v3 = reg.reference("team/minilm:v3");
    std::fs::write(src.join("config.json"), br#"{"model_type":"bert","v":3}"#).unwrap();
    h.run(&["push", src.to_str().unwrap(), &v3]).ok();
    let huge = work.path().join("huge").join("model.sig");
    std::fs::create_dir_all(huge.parent().unwrap()).unwrap();
    std::fs::write(&huge, vec![b' '; 17 << 20]).unwrap();
    h.run(&[
        "attach",
        &v3,
        huge.to_str().unwrap(),
        "--artifact-type",
        BUNDLE_TYPE,
    ])
    .ok();
    let out = work.path().join("out3");
    pull(&h, &v3, &out, &[&public]).fails_with(SIGNATURE, "over 16777216 bytes");
    nothing_placed(&out);
    let shown = h.run(&["inspect", &v3, "--json"]).ok().stdout;
    let doc: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let claims = &doc["signatures"]["claims"];
    assert_eq!(doc["signatures"]["total"], 1, "{shown}");
    assert!(
        claims[0]["problem"]
            .as_str()
            .unwrap()
            .contains("over 16777216 bytes")
            && claims[0].get("keyHint").is_none(),
        "{shown}"
    );
    // What a bundle says reaches the terminal without control characters: a key hint that
    // is not hex is not shown as one.
    let mut bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sig).unwrap()).unwrap();
    bundle["verificationMaterial"]["publicKey"]["hint"] = "\u{1b}[2Jowned".into();
    let hostile = work.path().join("hostile").join("model.sig");
    std::fs::create_dir_all(hostile.parent().unwrap()).unwrap();
    std::fs::write(&hostile, serde_json::to_vec(&bundle).unwrap()).unwrap();
    h.run(&[
        "attach",
        &v1,
        hostile.to_str().unwrap(),
        "--artifact-type",
        BUNDLE_TYPE,
    ])
    .ok();
    let shown = h.run(&["inspect", &v1]).ok().stdout;
    assert!(
        !shown.contains('\u{1b}')
            && !shown.contains(" key ")
            && shown.contains("6 files: covers these files"),
        "{shown:?}"
    );
    // A bad key file is a usage error, before anything.
    std::fs::write(work.path().join("bad.pem"), b"not a key").unwrap();
    let out = work.path().join("out4");
    pull(&h, &v1, &out, &[&work.path().join("bad.pem")]).fails_with(2, "bad.pem");
}

/// `hoist verify DIR --key`: a folder checked offline against its own `model.sig`, whether
/// the reference tool signed it in place or hoist's pull wrote it; a changed, missing or
/// added file is exit 6 with the file named, another key exit 9.
#[test]
fn hoist_verify_checks_a_folder_against_its_signature() {
    let reg = Registry::start();
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let src = model(work.path());
    let (key, public) = key_pair(work.path(), "k", "prime256v1");
    let (_, other) = key_pair(work.path(), "other", "prime256v1");
    let verify = |dir: &Path, key: &Path, full: bool| {
        let mut args = vec![
            "verify",
            dir.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ];
        if full {
            args.push("--full");
        }
        h.run(&args)
    };

    // Signed in place by the reference tool (it leaves its own signature file out).
    let sig = src.join("model.sig");
    let r = model_signing(&[
        "sign",
        "key",
        src.to_str().unwrap(),
        "--private_key",
        key.to_str().unwrap(),
        "--signature",
        sig.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = verify(&src, &public, false).ok();
    assert!(r.stdout.contains("Verified 6 files"), "{}", r.stdout);
    verify(&src, &other, false).fails_with(SIGNATURE, "not one of the verification keys");

    // Pulled with --verify-key: the folder's model.sig checks, from the record and in full.
    std::fs::remove_file(&sig).unwrap();
    let reference = reg.reference("team/minilm:v1");
    h.run(&[
        "push",
        src.to_str().unwrap(),
        &reference,
        "--sign",
        key.to_str().unwrap(),
    ])
    .ok();
    let out = work.path().join("out");
    pull(&h, &reference, &out, &[&public]).ok();
    verify(&out, &public, false).ok();
    verify(&out, &public, true).ok();

    // One byte changed, same size: found by --full even where the record vouches.
    let config = out.join("config.json");
    let mut bytes = std::fs::read(&config).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&config, &bytes).unwrap();
    verify(&out, &public, true).fails_with(6, "config.json");
    verify(&out, &public, false).fails_with(6, "config.json");
    bytes[0] ^= 1;
    std::fs::write(&config, &bytes).unwrap();
    verify(&out, &public, true).ok();
    // A file added, a file removed.
    std::fs::write(out.join("extra.bin"), b"x").unwrap();
    verify(&out, &public, false).fails_with(6, "extra.bin");
    std::fs::remove_file(out.join("extra.bin")).unwrap();
    std::fs::remove_file(out.join("README.md")).unwrap();
    verify(&out, &public, false).fails_with(6, "README.md (missing)");
    // No signature at all.
    std::fs::remove_file(out.join("model.sig")).unwrap();
    verify(&out, &public, false).fails_with(9, "model.sig");
}

/// A registry that lists 10,000 signature referrers, none valid: hoist looks at the newest
/// 16 only, refuses with exit 9, places nothing, in bounded time.
#[test]
fn ten_thousand_signature_referrers_are_a_bounded_refusal() {
    use common::fake::{FakeRegistry, Request, Response};
    use hoist::digest::Digest;
    use std::collections::HashMap;
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    let manifest_of = |config: &Digest, layers: serde_json::Value| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                       "digest": config.as_str(), "size": 2},
            "layers": layers,
        }))
        .unwrap()
    };
    let empty = Digest::of_bytes(b"{}");
    let weights = b"weights".to_vec();
    let wd = Digest::of_bytes(&weights);
    let model = manifest_of(
        &empty,
        serde_json::json!([{"mediaType": "application/octet-stream", "digest": wd.as_str(),
            "size": weights.len(), "annotations": {"org.opencontainers.image.title": "w.bin"}}]),
    );
    let subject = Digest::of_bytes(&model);
    // Each referrer a distinct manifest (fetched by digest, so it must hash right) whose
    // layer is a bundle that is not one.
    let bundle = b"{\"not\":\"a bundle\"}".to_vec();
    let bd = Digest::of_bytes(&bundle);
    let mut manifests: HashMap<String, Vec<u8>> = HashMap::new();
    let mut listed = Vec::new();
    for i in 0..10_000 {
        let m = manifest_of(
            &empty,
            serde_json::json!([{"mediaType": BUNDLE_TYPE, "digest": bd.as_str(),
                "size": bundle.len(), "annotations": {"n": i.to_string()}}]),
        );
        let d = Digest::of_bytes(&m);
        listed.push(
            serde_json::json!({"mediaType": MANIFEST, "digest": d.as_str(),
            "size": m.len(), "artifactType": BUNDLE_TYPE}),
        );
        manifests.insert(d.as_str().to_string(), m);
    }
    let index = serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": listed}),
    )
    .unwrap();
    let blobs: HashMap<String, Vec<u8>> = [
        (empty.as_str().to_string(), b"{}".to_vec()),
        (wd.as_str().to_string(), weights),
        (bd.as_str().to_string(), bundle),
    ]
    .into();
    let subject_hex = subject.hex().to_string();
    let fake = FakeRegistry::start(move |r: &Request| {
        let last = r.path.rsplit('/').next().unwrap_or("");
        let last = last.split('?').next().unwrap_or("");
        if r.path == "/v2/" {
            Response::new(200)
        } else if r.path.contains("/referrers/") {
            Response::json(200, INDEX, index.clone())
        } else if r.path.contains("/manifests/") {
            match manifests.get(last) {
                Some(m) => Response::json(200, MANIFEST, m.clone()),
                None if last == "v1" || last == subject.as_str() => {
                    Response::json(200, MANIFEST, model.clone())
                }
                None => Response::new(404),
            }
        } else if r.path.contains("/blobs/") {
            match blobs.get(last) {
                Some(b) => Response::new(200).body(b.clone()),
                None => Response::new(404),
            }
        } else {
            Response::new(404)
        }
    });
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let (_, public) = key_pair(work.path(), "k", "prime256v1");
    let out = work.path().join("out");
    let started = std::time::Instant::now();
    let r = pull(&h, &format!("{}/x:v1", fake.addr), &out, &[&public]);
    let r = r.fails_with(SIGNATURE, "no signature by a trusted signer");
    assert_eq!(r.stderr.lines().count(), 1, "one error line: {}", r.stderr);
    nothing_placed(&out);
    let looked_at = fake
        .requests()
        .iter()
        .filter(|r| r.path.contains("/manifests/sha256:") && !r.path.ends_with(&subject_hex))
        .count();
    assert!(
        (1..=16).contains(&looked_at),
        "{looked_at} signature manifests fetched"
    );
    assert!(!fake
        .requests()
        .iter()
        .any(|r| r.path.ends_with(wd.as_str())));
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    // inspect is bounded the same way: it counts them all, reads the newest 16.
    let before = fake.requests().len();
    let shown = h
        .run(&["inspect", &format!("{}/x:v1", fake.addr)])
        .ok()
        .stdout;
    assert!(
        shown.contains("Signatures:    10000, the newest 16 shown (claims, not verified here")
            && shown.matches(": the signature bundle is refused: ").count() == 16,
        "{shown}"
    );
    let fetched = fake.requests()[before..]
        .iter()
        .filter(|r| r.path.contains("/manifests/sha256:") && !r.path.ends_with(&subject_hex))
        .count();
    assert!(fetched <= 16, "{fetched} signature manifests fetched");
}

/// `hoist pull --verify-policy POLICY.toml`: each repository as the first rule that matches
/// it says. `enforce` places only a model signed by the rule's keys; `warn` places an
/// unsigned model with one warning line and no `model.sig`; `off` checks nothing; a
/// repository no rule covers is refused before any blob is fetched; key paths are relative
/// to the policy file; a policy out of shape is a usage error.
#[test]
fn a_policy_file_decides_per_repository() {
    let reg = Registry::start();
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let src = model(work.path());
    let policy_dir = work.path().join("policy");
    std::fs::create_dir_all(policy_dir.join("keys")).unwrap();
    let (key, _) = key_pair(&policy_dir.join("keys"), "team", "prime256v1");
    key_pair(&policy_dir.join("keys"), "other", "prime256v1");
    let registry = reg.reference("x");
    let registry = registry.trim_end_matches("/x");
    let push = |reference: &str, signed: bool| {
        let mut args = vec!["push", src.to_str().unwrap(), reference];
        if signed {
            args.extend(["--sign", key.to_str().unwrap()]);
        }
        h.run(&args).ok();
    };
    let [prod, prod_unsigned, scratch, public, elsewhere] = [
        "prod/minilm:v1",
        "prod/unsigned:v1",
        "scratch/minilm:v1",
        "public/minilm:v1",
        "elsewhere/minilm:v1",
    ]
    .map(|r| reg.reference(r));
    push(&prod, true);
    for r in [&prod_unsigned, &scratch, &public, &elsewhere] {
        push(r, false);
    }
    let write_policy = |name: &str, prod_key: &str| {
        let path = policy_dir.join(name);
        std::fs::write(
            &path,
            format!(
                r#"
[[rule]]
repositories = "{registry}/public/*"
mode = "off"
[[rule]]
repositories = "{registry}/scratch/*"
keys = ["keys/team.pub.pem"]
mode = "warn"
[[rule]]
repositories = "{registry}/prod/*"
keys = ["keys/{prod_key}.pub.pem"]
"#
            ),
        )
        .unwrap();
        path
    };
    let policy = write_policy("policy.toml", "team");
    let pull_with = |reference: &str, out: &str, policy: &Path| {
        let out = work.path().join(out);
        let r = run(h.cmd().args([
            "pull",
            reference,
            "-o",
            out.to_str().unwrap(),
            "--verify-policy",
            policy.to_str().unwrap(),
        ]));
        (r, out)
    };

    // enforce, signed by the rule's key: placed with its signature.
    let (r, out) = pull_with(&prod, "prod", &policy);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(tree(&src, false) == model_files(&out));
    // enforce, unsigned: refused, nothing placed.
    let (r, out) = pull_with(&prod_unsigned, "prod-unsigned", &policy);
    r.fails_with(SIGNATURE, "no signature by a trusted signer");
    nothing_placed(&out);
    // warn, unsigned: placed, one warning line, no signature beside it.
    let (r, out) = pull_with(&scratch, "scratch", &policy);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("warning") && r.stderr.contains("placed unverified"),
        "no warning: {}",
        r.stderr
    );
    assert!(
        tree(&src, false) == tree(&out, false),
        "model.sig or other files"
    );
    // off: placed, nothing said.
    let (r, out) = pull_with(&public, "public", &policy);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    assert!(tree(&src, false) == tree(&out, false));
    // No rule covers it: refused before a blob is fetched.
    let gets_before = reg.blob_get_count();
    let (r, out) = pull_with(&elsewhere, "elsewhere", &policy);
    let r = r.fails_with(SIGNATURE, &format!("no rule of {}", policy.display()));
    assert_eq!(r.stderr.lines().count(), 1, "one error line: {}", r.stderr);
    nothing_placed(&out);
    assert_eq!(reg.blob_get_count(), gets_before, "{}", reg.log());
    // The same signed model under a policy that trusts another key: refused.
    let other = write_policy("other.toml", "other");
    let (r, out) = pull_with(&prod, "prod-other", &other);
    r.fails_with(SIGNATURE, "no signature by a trusted signer");
    nothing_placed(&out);
    // From the environment, as a Deployment sets it.
    let out = work.path().join("prod-env");
    let r = run(h.cmd().env("HOIST_VERIFY_POLICY", &policy).args([
        "pull",
        &prod_unsigned,
        "-o",
        out.to_str().unwrap(),
    ]));
    r.fails_with(SIGNATURE, "no signature");
    nothing_placed(&out);
    // A policy out of shape, or both ways at once: usage errors before anything.
    let bad = policy_dir.join("bad.toml");
    std::fs::write(&bad, "[[rule]]\nrepositories = \"**\"\nmode = \"audit\"\n").unwrap();
    let (r, out) = pull_with(&prod, "bad", &bad);
    let r = r.fails_with(2, "bad.toml");
    assert_eq!(r.stderr.lines().count(), 1, "one error line: {}", r.stderr);
    nothing_placed(&out);
    let out = work.path().join("both");
    run(h.cmd().args([
        "pull",
        &prod,
        "-o",
        out.to_str().unwrap(),
        "--verify-policy",
        policy.to_str().unwrap(),
        "--verify-key",
        policy_dir.join("keys/team.pub.pem").to_str().unwrap(),
    ]))
    .fails_with(2, "cannot be used with");
}

/// A registry that will not list referrers leaves inspect's signatures unknown, with the
/// reason, rather than failing the inspect.
#[test]
fn inspect_says_signatures_are_unknown_when_the_registry_will_not_list_them() {
    use common::fake::{FakeRegistry, Request, Response};
    use hoist::digest::Digest;
    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    let weights = b"weights".to_vec();
    let model = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": Digest::of_bytes(b"{}").as_str(), "size": 2},
        "layers": [{"mediaType": "application/octet-stream",
                    "digest": Digest::of_bytes(&weights).as_str(), "size": weights.len(),
                    "annotations": {"org.opencontainers.image.title": "w.bin"}}],
    }))
    .unwrap();
    let fake = FakeRegistry::start(move |r: &Request| {
        if r.path == "/v2/" {
            Response::new(200)
        } else if r.path.contains("/referrers/") {
            Response::json(
                403,
                "application/json",
                br#"{"errors":[{"code":"DENIED"}]}"#.to_vec(),
            )
        } else if r.path.contains("/manifests/") {
            Response::json(200, MANIFEST, model.clone())
        } else if r.path.contains("/blobs/") {
            Response::new(200).body(b"{}".to_vec())
        } else {
            Response::new(404)
        }
    });
    let h = Hoist::new();
    let reference = format!("{}/x:v1", fake.addr);
    let r = h.run(&["inspect", &reference]).ok();
    assert!(
        r.stdout.contains("Signatures:    unknown (") && r.stdout.contains("w.bin"),
        "{}",
        r.stdout
    );
    let r = h.run(&["inspect", &reference, "--json"]).ok();
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(doc["signatures"]["unknown"].is_string(), "{}", r.stdout);
}

/// SECURITY.md, shared node, case 6: a policy's rule holds for every spelling of its
/// registry (case, port, IP literal, `localhost`), and a permissive rule after it is warned
/// of when the policy loads.
#[test]
fn a_policy_rule_holds_for_every_spelling_of_its_registry() {
    let reg = Registry::start();
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let src = model(work.path());
    let (_, public) = key_pair(work.path(), "k", "prime256v1");
    let port = reg.addr.rsplit_once(':').unwrap().1.to_string();
    h.run(&[
        "push",
        src.to_str().unwrap(),
        &format!("127.0.0.1:{port}/secure/m:v1"),
    ])
    .ok();
    let policy = common::enforce_then_off_policy(work.path(), &port, &public);
    for host in [
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:0{port}"),
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("127.1:{port}"),
        format!("127.000.000.001:{port}"),
    ] {
        let out = work.path().join("out");
        let r = run(h.cmd().args([
            "pull",
            &format!("{host}/secure/m:v1"),
            "-o",
            out.to_str().unwrap(),
            "--verify-policy",
            policy.to_str().unwrap(),
        ]));
        assert_eq!(r.code, SIGNATURE, "{host}: {}", r.stderr);
        assert!(
            r.stderr.contains("follows the enforce rule"),
            "{host}: {}",
            r.stderr
        );
        assert!(
            !out.exists() || common::visible_entries(&out).is_empty(),
            "{host}"
        );
    }
}

/// Case 7: a file under a folder named `current` is one of the model's like any other:
/// `push --sign` no longer ignores it, and `hoist verify` ignores a signer's `current` only
/// where hoist keeps it (a versioned root's link), so a file the signature does not name
/// fails verification — with hoist and with the reference tool.
#[test]
fn files_hidden_under_current_fail_verification() {
    let reg = Registry::start();
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let src = model(work.path());
    let (key, public) = key_pair(work.path(), "k", "prime256v1");
    let reference = reg.reference("team/signed:v1");
    h.run(&[
        "push",
        src.to_str().unwrap(),
        &reference,
        "--sign",
        key.to_str().unwrap(),
    ])
    .ok();
    let out = work.path().join("out");
    pull(&h, &reference, &out, &[&public]).ok();
    std::fs::create_dir(out.join("current")).unwrap();
    std::fs::write(
        out.join("current/modeling_x.py"),
        b"import os; os.system('id')",
    )
    .unwrap();
    let verify = |dir: &Path| {
        h.run(&[
            "verify",
            dir.to_str().unwrap(),
            "--key",
            public.to_str().unwrap(),
        ])
    };
    verify(&out).fails_with(6, "current/modeling_x.py");
    let sig = out.join("model.sig");
    let r = model_signing(&[
        "verify",
        "key",
        out.to_str().unwrap(),
        "--signature",
        sig.to_str().unwrap(),
        "--public_key",
        public.to_str().unwrap(),
    ]);
    assert_ne!(
        r.code, 0,
        "the reference tool passed a file hidden under current/"
    );

    // A signature that lists `current` among its ignored paths (as earlier releases of
    // push --sign wrote): hoist still checks what is under an ordinary `current` folder.
    let folder = work.path().join("legacy");
    let files = model(&folder);
    let legacy_sig = folder.join("legacy.sig");
    let r = model_signing(&[
        "sign",
        "key",
        files.to_str().unwrap(),
        "--private_key",
        key.to_str().unwrap(),
        "--signature",
        legacy_sig.to_str().unwrap(),
        "--ignore-paths",
        files.join("current").to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    std::fs::rename(&legacy_sig, files.join("model.sig")).unwrap();
    let bundle = std::fs::read_to_string(files.join("model.sig")).unwrap();
    verify(&files).ok();
    std::fs::create_dir(files.join("current")).unwrap();
    std::fs::write(files.join("current/modeling_x.py"), b"x").unwrap();
    verify(&files).fails_with(6, "current/modeling_x.py");
    // The legacy signature does list it (so the reference tool would pass this folder).
    use base64::Engine as _;
    let bundle: serde_json::Value = serde_json::from_str(&bundle).unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(bundle["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    let ignored = statement["predicate"]["serialization"]["ignore_paths"].to_string();
    assert!(ignored.contains("current"), "{ignored}");
}

/// Case 8: a pull without verification that changes a file the folder's signature covers
/// removes that signature, filtered or not; one that changes nothing keeps it.
#[test]
fn a_filtered_unverified_pull_that_changes_a_signed_file_removes_the_signature() {
    let reg = Registry::start();
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let src = model(work.path());
    let (key, public) = key_pair(work.path(), "k", "prime256v1");
    let v1 = reg.reference("team/m:v1");
    h.run(&[
        "push",
        src.to_str().unwrap(),
        &v1,
        "--sign",
        key.to_str().unwrap(),
    ])
    .ok();
    std::fs::write(src.join("config.json"), b"{\"changed\": true}").unwrap();
    let v2 = reg.reference("team/m:v2");
    h.run(&["push", src.to_str().unwrap(), &v2]).ok();
    let out = work.path().join("out");
    pull(&h, &v1, &out, &[&public]).ok();
    let sig = out.join("model.sig");
    let verify = || {
        h.run(&[
            "verify",
            out.to_str().unwrap(),
            "--key",
            public.to_str().unwrap(),
        ])
    };
    let filtered = |reference: &str| {
        h.run(&[
            "pull",
            reference,
            "-o",
            out.to_str().unwrap(),
            "--include",
            "config.json",
        ])
    };
    filtered(&v1).ok();
    assert!(
        sig.exists(),
        "a pull that changed nothing keeps the signature"
    );
    verify().ok();
    filtered(&v2).ok();
    assert_eq!(
        std::fs::read(out.join("config.json")).unwrap(),
        b"{\"changed\": true}"
    );
    assert!(
        !sig.exists(),
        "a stale model.sig stayed after config.json changed"
    );
    verify().fails_with(SIGNATURE, "model.sig");
}
