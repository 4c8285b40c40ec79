//! Model signatures by certificate, both ways with the reference implementation (PyPI
//! `model-signing` 1.1.1) and a PKI made here with `openssl` (a root, an intermediate, a
//! code-signing leaf): `model_signing sign certificate` → `hoist attach` → `hoist pull
//! --verify-cert-chain` passes; `hoist sign --cert` → `model_signing verify certificate` passes
//! on the pulled folder. An expired or not-yet-valid leaf, a wrong root, a wrong identity, a
//! leaf without code-signing usage, a CA as the signer, a chain of 100 certificates or of 1 MiB
//! and a name with control characters: each exit 9 with one line, nothing placed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use common::pki::{rc_pki, write_leaf};
use common::{run, small_model, tree, Hoist, Registry};

const SIGNATURE: i32 = 9;
const BUNDLE_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PKI as an organisation makes one with openssl: root → intermediate → leaf, P-256.
struct Pki {
    root: PathBuf,
    intermediate: PathBuf,
    leaf_key: PathBuf,
    leaf: PathBuf,
}

fn openssl_pki(dir: &Path, name: &str) -> Pki {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    for key in ["root.key", "int.key", "leaf.key"] {
        openssl(
            &d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                key,
            ],
        );
    }
    openssl(
        &d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "root.key",
            "-subj",
            "/CN=Test Root CA/O=hoist tests",
            "-days",
            "3650",
            "-out",
            "root.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    std::fs::write(
        d.join("int.ext"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    std::fs::write(
        d.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=codeSigning\nsubjectAltName=email:ml-release@example.com\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    let issue = |key: &str, subj: &str, ca: &str, ext: &str, out: &str| {
        let csr = format!("{out}.csr");
        openssl(
            &d,
            &["req", "-new", "-key", key, "-subj", subj, "-out", &csr],
        );
        openssl(
            &d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "365",
                "-extfile",
                ext,
                "-out",
                out,
            ],
        );
    };
    issue(
        "int.key",
        "/CN=Test Intermediate/O=hoist tests",
        "root",
        "int.ext",
        "int.pem",
    );
    issue(
        "leaf.key",
        "/CN=ML Release/O=Example",
        "int",
        "leaf.ext",
        "leaf.pem",
    );
    Pki {
        root: d.join("root.pem"),
        intermediate: d.join("int.pem"),
        leaf_key: d.join("leaf.key"),
        leaf: d.join("leaf.pem"),
    }
}

fn model_signing(args: &[&str]) -> common::Run {
    run(Command::new("model_signing").args(args))
}

fn model(dir: &Path) -> PathBuf {
    let m = dir.join("minilm");
    small_model(&m);
    std::fs::remove_file(m.join(".hidden")).unwrap();
    m
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `hoist pull REF -o OUT --verify-cert-chain ROOT [--cert-identity I]...`
fn pull_cert(h: &Hoist, reference: &str, out: &Path, root: &Path, ids: &[&str]) -> common::Run {
    let mut args = vec![
        "pull",
        reference,
        "-o",
        s(out),
        "--verify-cert-chain",
        s(root),
    ];
    for id in ids {
        args.extend(["--cert-identity", id]);
    }
    h.run(&args)
}

fn nothing_placed(out: &Path) {
    assert!(
        common::visible_entries(out).is_empty(),
        "{:?}",
        common::all_entries(out)
    );
}

fn model_files(out: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = tree(out, false);
    assert!(files.remove("model.sig").is_some(), "no model.sig");
    files
}

#[test]
fn the_reference_tool_signs_with_a_certificate_and_hoist_verifies_the_chain() {
    let reg = Registry::start();
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let src = model(work.path());
    let pki = openssl_pki(work.path(), "pki");
    let reference = reg.reference("team/minilm:v1");
    h.run(&["push", s(&src), &reference]).ok();
    let sig = work.path().join("model.sig");
    let r = model_signing(&[
        "sign",
        "certificate",
        s(&src),
        "--signature",
        s(&sig),
        "--private_key",
        s(&pki.leaf_key),
        "--signing_certificate",
        s(&pki.leaf),
        "--certificate_chain",
        s(&pki.intermediate),
    ]);
    assert_eq!(r.code, 0, "model_signing sign certificate:\n{}", r.stderr);
    h.run(&[
        "attach",
        &reference,
        s(&sig),
        "--artifact-type",
        BUNDLE_TYPE,
    ])
    .ok();

    let out = work.path().join("out");
    pull_cert(&h, &reference, &out, &pki.root, &[]).ok();
    assert!(
        tree(&src, false) == model_files(&out),
        "the pulled files differ"
    );
    // The identity, by SAN or subject, exactly or as a glob.
    for (i, id) in [
        "ml-release@example.com",
        "*@example.com",
        "CN=ML Release, O=Example",
    ]
    .iter()
    .enumerate()
    {
        pull_cert(
            &h,
            &reference,
            &work.path().join(format!("id{i}")),
            &pki.root,
            &[id],
        )
        .ok();
    }
    // `hoist verify` offline, on the folder.
    let r = h
        .run(&["verify", s(&out), "--cert-chain", s(&pki.root)])
        .ok();
    assert!(
        r.stdout.contains("certificate CN=ML Release, O=Example"),
        "{}",
        r.stdout
    );

    // Another identity, another root, keys only: exit 9, nothing placed.
    let out = work.path().join("out-other-id");
    pull_cert(&h, &reference, &out, &pki.root, &["someone@example.org"])
        .fails_with(SIGNATURE, "none of the allowed identities");
    nothing_placed(&out);
    let other = openssl_pki(work.path(), "other-pki");
    let out = work.path().join("out-other-root");
    pull_cert(&h, &reference, &out, &other.root, &[])
        .fails_with(SIGNATURE, "does not reach the trusted roots");
    nothing_placed(&out);
    let key = work.path().join("k.pub");
    std::fs::write(&key, leaf_public_pem(&pki.leaf_key)).unwrap();
    let out = work.path().join("out-key-only");
    h.run(&["pull", &reference, "-o", s(&out), "--verify-key", s(&key)])
        .fails_with(SIGNATURE, "no certificate roots were given");
    nothing_placed(&out);
}

fn leaf_public_pem(key: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-in", s(key)])
        .output()
        .unwrap();
    out.stdout
}

#[test]
fn hoist_signs_with_a_certificate_and_the_reference_tool_verifies_it() {
    let reg = Registry::start();
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let src = model(work.path());
    let pki = openssl_pki(work.path(), "pki");
    let reference = reg.reference("team/minilm:v1");
    h.run(&["push", s(&src), &reference]).ok();
    let r = h
        .run(&[
            "sign",
            &reference,
            "--key",
            s(&pki.leaf_key),
            "--cert",
            s(&pki.leaf),
            "--cert-chain",
            s(&pki.intermediate),
        ])
        .ok();
    assert!(
        r.stdout.contains("certificate CN=ML Release"),
        "{}",
        r.stdout
    );
    let out = work.path().join("out");
    pull_cert(&h, &reference, &out, &pki.root, &["ml-release@example.com"]).ok();
    let r = model_signing(&[
        "verify",
        "certificate",
        s(&out),
        "--signature",
        s(&out.join("model.sig")),
        "--certificate_chain",
        s(&pki.root),
    ]);
    assert_eq!(
        r.code, 0,
        "model_signing verify certificate:\n{}\n{}",
        r.stdout, r.stderr
    );

    // push --sign with the certificate does the same in one step.
    let pushed = reg.reference("team/minilm:v2");
    h.run(&[
        "push",
        s(&src),
        &pushed,
        "--sign",
        s(&pki.leaf_key),
        "--cert",
        s(&pki.leaf),
        "--cert-chain",
        s(&pki.intermediate),
    ])
    .ok();
    pull_cert(&h, &pushed, &work.path().join("out2"), &pki.root, &[]).ok();

    // A certificate for another key than the signing key is refused before anything is sent.
    let other = openssl_pki(work.path(), "other");
    let r = h.run(&[
        "sign",
        &reference,
        "--key",
        s(&other.leaf_key),
        "--cert",
        s(&pki.leaf),
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("another key"), "{}", r.stderr);
}

/// Rewrite the certificate list of the newest `model.sig`-style bundle at `bundle`.
fn with_certificates(bundle: &Path, certs: Vec<String>) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle).unwrap()).unwrap();
    let list: Vec<serde_json::Value> = certs
        .into_iter()
        .map(|c| serde_json::json!({ "rawBytes": c }))
        .collect();
    v["verificationMaterial"]["x509CertificateChain"]["certificates"] = list.into();
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn invalid_and_hostile_certificate_chains_are_refused_and_nothing_is_placed() {
    let reg = Registry::start();
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let src = model(work.path());
    let pki = rc_pki();
    let root = work.path().join("root.pem");
    std::fs::write(&root, &pki.root_pem).unwrap();
    let past = rcgen::date_time_ymd(2020, 1, 1);
    type Edit = Box<dyn FnOnce(&mut rcgen::CertificateParams)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "expired",
            Box::new(move |p| {
                p.not_before = past;
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }),
            "had expired",
        ),
        (
            "not-yet-valid",
            Box::new(|p| p.not_before = rcgen::date_time_ymd(2090, 1, 1)),
            "not yet valid",
        ),
        (
            "server-auth",
            Box::new(|p| p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth]),
            "not for code signing",
        ),
        (
            "no-eku",
            Box::new(|p| p.extended_key_usages = vec![]),
            "not for code signing",
        ),
        (
            "ca-signer",
            Box::new(|p| p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)),
            "is a CA certificate",
        ),
        (
            "control-characters",
            Box::new(|p| {
                p.subject_alt_names = vec![rcgen::SanType::Rfc822Name(
                    "evil\n@example.com".try_into().unwrap(),
                )]
            }),
            "control characters",
        ),
    ];
    for (name, edit, why) in cases {
        let (key, cert) = write_leaf(&pki, work.path(), name, edit);
        let reference = reg.reference(&format!("neg/{name}:v1"));
        h.run(&["push", s(&src), &reference]).ok();
        // hoist signs what it is given; the verifier decides.
        h.run(&["sign", &reference, "--key", s(&key), "--cert", s(&cert)])
            .ok();
        let out = work.path().join(format!("out-{name}"));
        pull_cert(&h, &reference, &out, &root, &[]).fails_with(SIGNATURE, why);
        nothing_placed(&out);
    }

    // A good signature, then its bundle rewritten: 100 certificates, or one of 1 MiB.
    let (key, cert) = write_leaf(&pki, work.path(), "good", |_| {});
    let good = reg.reference("neg/good:v1");
    h.run(&["push", s(&src), &good]).ok();
    h.run(&["sign", &good, "--key", s(&key), "--cert", s(&cert)])
        .ok();
    let out = work.path().join("out-good");
    pull_cert(&h, &good, &out, &root, &["signer@example.com"]).ok();
    let bundle = out.join("model.sig");
    let b64 = base64::engine::general_purpose::STANDARD;
    let leaf_b64 = {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
        v["verificationMaterial"]["x509CertificateChain"]["certificates"][0]["rawBytes"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let hostile = [
        (
            "hundred",
            with_certificates(&bundle, vec![leaf_b64.clone(); 100]),
            "100 certificates",
        ),
        (
            "mebibyte",
            with_certificates(&bundle, vec![b64.encode(vec![0x30u8; 1 << 20])]),
            "over 32768 bytes",
        ),
    ];
    for (name, bytes, why) in hostile {
        let reference = reg.reference(&format!("neg/{name}:v1"));
        h.run(&["push", s(&src), &reference]).ok();
        let file = work.path().join(format!("{name}.sig"));
        std::fs::write(&file, bytes).unwrap();
        h.run(&[
            "attach",
            &reference,
            s(&file),
            "--artifact-type",
            BUNDLE_TYPE,
        ])
        .ok();
        let out = work.path().join(format!("out-{name}"));
        pull_cert(&h, &reference, &out, &root, &[]).fails_with(SIGNATURE, why);
        nothing_placed(&out);
    }
}
