//! The trust model, tried as an attacker would: a hostile registry (real distribution
//! serving hand-made manifests, or a fake registry whose every answer the test chooses) and
//! hostile files on disk. Each test names the finding it guards (SECURITY.md lists them).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::fake::{Body, FakeRegistry, Request, Response};
use common::*;
use hoist::digest::Digest;
use hoist::oci::media;

const USAGE: i32 = 2;
const VERIFICATION: i32 = 6;
const INVALID_CONTENT: i32 = 8;

const TAR: &str = "application/vnd.cncf.model.weight.v1.tar";
const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const GZ_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A parent folder holding a sibling model and an output folder with a file of the user's.
fn victim() -> (tempfile::TempDir, std::path::PathBuf) {
    let parent = tempfile::tempdir().unwrap();
    std::fs::create_dir(parent.path().join("sibling")).unwrap();
    std::fs::write(parent.path().join("sibling/model.bin"), b"other model").unwrap();
    let out = parent.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), b"mine").unwrap();
    (parent, out)
}

fn assert_victim_intact(parent: &Path, out: &Path) {
    assert_eq!(
        std::fs::read(parent.join("sibling/model.bin")).unwrap(),
        b"other model"
    );
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"mine");
    assert_eq!(
        state_left(out),
        Vec::<String>::new(),
        "state left in {out:?}"
    );
}

/// Finding 1: `.wh..` and `.wh...` named the output folder and its parent.
#[test]
fn whiteout_names_never_remove_the_output_or_its_parent() {
    use tar::EntryType::Regular;
    let reg = Registry::start();
    let h = Hoist::new();
    for (repo, name) in [
        ("wh-dot", ".wh.."),
        ("wh-dotdot", ".wh..."),
        ("wh-sub", "x/.wh.."),
    ] {
        let (parent, out) = victim();
        let layer = image_layer(&[("file", Regular, b"ok"), (name, Regular, b"")]);
        let reference = push_manifest_with(
            &reg,
            repo,
            IMAGE_CONFIG,
            vec![(String::new(), GZ_LAYER, layer)],
        );
        h.run(&["pull", &reference, "-o", s(&out)])
            .fails_with(INVALID_CONTENT, "a whiteout must name one file");
        assert_victim_intact(parent.path(), &out);
        assert!(
            !out.join("file").exists(),
            "{repo}: a refused pull placed files"
        );
    }
    // A valid whiteout of a file this pull did not create leaves that file alone.
    let (parent, out) = victim();
    let layer = image_layer(&[("file", Regular, b"ok"), (".wh.notes.txt", Regular, b"")]);
    let reference = push_manifest_with(
        &reg,
        "wh-user",
        IMAGE_CONFIG,
        vec![(String::new(), GZ_LAYER, layer)],
    );
    h.run(&["pull", &reference, "-o", s(&out)]).ok();
    assert_victim_intact(parent.path(), &out);
    // In a model (not image) layer a `.wh.` name is an ordinary file: nothing is removed.
    let (parent, out) = victim();
    let layer = tar_with(&[(".wh.notes.txt", Regular, "", b"plain")]);
    let reference = push_manifest(&reg, "wh-model", vec![("l.tar".into(), TAR, layer)]);
    h.run(&["pull", &reference, "-o", s(&out)]).ok();
    assert_eq!(std::fs::read(out.join(".wh.notes.txt")).unwrap(), b"plain");
    std::fs::remove_file(out.join(".wh.notes.txt")).unwrap();
    assert_victim_intact(parent.path(), &out);
}

/// Finding 2: each link was checked alone and lexically.
#[test]
fn symlink_chains_cannot_lead_out() {
    use tar::EntryType::{Directory, Symlink};
    let reg = Registry::start();
    let h = Hoist::new();
    let mut entries: Vec<(String, tar::EntryType, String)> = vec![
        ("d".into(), Directory, String::new()),
        ("d/u1".into(), Symlink, "..".into()),
    ];
    for i in 2..=14 {
        entries.push((format!("d/u{i}"), Symlink, format!("u{}/..", i - 1)));
    }
    entries.push(("tokenizer.json".into(), Symlink, "d/u14/etc/passwd".into()));
    let refs: Vec<(&str, tar::EntryType, &str, &[u8])> = entries
        .iter()
        .map(|(n, k, l)| (n.as_str(), *k, l.as_str(), &b""[..]))
        .collect();
    let reference = push_manifest(&reg, "chain", vec![("l.tar".into(), TAR, tar_with(&refs))]);
    let (parent, out) = victim();
    h.run(&["pull", &reference, "-o", s(&out)])
        .fails_with(INVALID_CONTENT, "resolved through the other links");
    assert_victim_intact(parent.path(), &out);
    assert!(!out.join("tokenizer.json").exists() && !out.join("d").exists());

    // A link on disk counts too: `up -> ..` left by someone else, then `x -> up/etc`.
    let (parent, out) = victim();
    std::os::unix::fs::symlink("..", out.join("up")).unwrap();
    let layer = tar_with(&[("x", Symlink, "up/sibling", b"")]);
    let reference = push_manifest(&reg, "ondisk", vec![("l.tar".into(), TAR, layer)]);
    h.run(&["pull", &reference, "-o", s(&out)])
        .fails_with(INVALID_CONTENT, "leaves the output folder");
    assert!(!out.join("x").exists());
    assert_victim_intact(parent.path(), &out);
}

/// Finding 3: `.referrers` and `.descriptor.json` were written through planted links.
#[test]
fn include_referrers_never_writes_through_a_planted_link() {
    let reg = Registry::start();
    let h = Hoist::new();
    let reference = reg.reference("withref:v1");
    push_small(&h, &reference);
    let files = tempfile::tempdir().unwrap();
    let sbom = files.path().join("sbom.json");
    std::fs::write(&sbom, b"{}").unwrap();
    h.run(&[
        "attach",
        &reference,
        s(&sbom),
        "--artifact-type",
        "application/spdx+json",
    ])
    .ok();
    let (parent, out) = victim();
    let elsewhere = parent.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out.join(".referrers")).unwrap();
    h.run(&["pull", &reference, "-o", s(&out), "--include-referrers"])
        .fails_with(INVALID_CONTENT, "a symlink is in the path");
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "wrote through the link"
    );
    // Without the planted link the same pull works and writes inside.
    std::fs::remove_file(out.join(".referrers")).unwrap();
    h.run(&["pull", &reference, "-o", s(&out), "--include-referrers"])
        .ok();
    let dirs: Vec<_> = std::fs::read_dir(out.join(".referrers")).unwrap().collect();
    assert_eq!(dirs.len(), 1);
}

/// A fake registry serving `manifest` for every manifest request, blobs from `blobs`.
fn serving(manifest: Vec<u8>, blobs: Vec<(Digest, Vec<u8>)>) -> FakeRegistry {
    FakeRegistry::start(move |r: &Request| {
        if r.path == "/v2/" {
            return Response::new(200);
        }
        if r.path.contains("/manifests/") {
            return Response::json(200, media::OCI_MANIFEST, manifest.clone());
        }
        if r.path.contains("/referrers/") {
            return Response::json(
                200,
                media::OCI_INDEX,
                r#"{"schemaVersion":2,"manifests":[]}"#,
            );
        }
        for (d, b) in &blobs {
            if r.path.ends_with(d.as_str()) {
                return Response::new(200).body(b.clone());
            }
        }
        Response::new(404)
    })
}

fn manifest_json(config: (&Digest, u64), layers: &[(&Digest, u64, &str)]) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(d, size, title)| {
            serde_json::json!({"mediaType": "application/octet-stream", "digest": d.as_str(),
                "size": size, "annotations": {"org.opencontainers.image.title": title}})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": config.0.as_str(), "size": config.1},
        "layers": layers,
    }))
    .unwrap()
}

/// Finding 4: copy, copy --recursive and attach accepted a manifest that was not the digest.
#[test]
fn manifests_fetched_by_digest_are_checked_in_every_verb() {
    let h = Hoist::new();
    let (cfg, layer) = (b"{}".to_vec(), b"weights".to_vec());
    let (cd, ld) = (Digest::of_bytes(&cfg), Digest::of_bytes(&layer));
    let manifest = manifest_json((&cd, 2), &[(&ld, 7, "w.bin")]);
    let fake = serving(manifest, vec![(cd, cfg), (ld, layer)]);
    let pinned = format!(
        "{}/x@{}",
        fake.addr,
        Digest::of_bytes(b"what the user pinned")
    );
    let files = tempfile::tempdir().unwrap();
    let f = files.path().join("f");
    std::fs::write(&f, b"x").unwrap();
    let out = files.path().join("out");
    for args in [
        vec!["pull", &pinned, "-o", s(&out)],
        vec!["copy", &pinned, "copied:v1"],
        vec!["copy", "--recursive", &pinned, "copied:v2"],
        vec!["inspect", &pinned],
        vec!["attach", &pinned, s(&f), "--artifact-type", "application/x"],
        vec!["discover", &pinned],
    ] {
        h.run(&args)
            .fails_with(VERIFICATION, "verification failed for manifest");
    }
    assert!(!out.exists());
    assert!(h
        .run(&["list"])
        .ok()
        .stdout
        .lines()
        .all(|l| !l.contains("copied")));
}

/// Finding 5: blob storage answering 401 with its own realm received the password.
#[test]
fn credentials_never_reach_a_redirect_host() {
    // The redirect target (blob storage) asks for a token from a realm of its own.
    let evil = FakeRegistry::start_on(
        "127.0.0.1:0",
        std::sync::Arc::new(|r: &Request| {
            if r.path.starts_with("/token") {
                return Response::json(200, "application/json", r#"{"token":"t"}"#);
            }
            Response::new(401)
        }),
    );
    let evil_addr = evil.addr.clone();
    let storage = FakeRegistry::start(move |_r: &Request| {
        Response::new(401).header(
            "WWW-Authenticate",
            &format!("Bearer realm=\"http://{evil_addr}/token\",service=\"evil\""),
        )
    });
    let (cfg, layer) = (b"{}".to_vec(), b"weights".to_vec());
    let (cd, ld) = (Digest::of_bytes(&cfg), Digest::of_bytes(&layer));
    let manifest = manifest_json((&cd, 2), &[(&ld, 7, "w.bin")]);
    let storage_addr = storage.addr.clone();
    let registry = FakeRegistry::start(move |r: &Request| {
        if r.authorization.is_none() {
            return Response::new(401).header("WWW-Authenticate", "Basic realm=\"registry\"");
        }
        if r.path == "/v2/" {
            return Response::new(200);
        }
        if r.path.contains("/manifests/") {
            return Response::json(200, media::OCI_MANIFEST, manifest.clone());
        }
        if r.path.ends_with(cd.as_str()) {
            return Response::new(200).body(cfg.clone());
        }
        Response::new(307).header("Location", &format!("http://{storage_addr}/blob"))
    });
    let h = Hoist::new();
    let out = tempfile::tempdir().unwrap();
    let r = run(h
        .cmd()
        .env("HOIST_USERNAME", "alice")
        .env("HOIST_PASSWORD", "s3cret")
        .args([
            "pull",
            &format!("{}/m:v1", registry.addr),
            "-o",
            s(out.path()),
        ])
        .args(["--retries", "1"]));
    assert_ne!(r.code, 0, "the blob never arrived, yet: {}", r.stderr);
    assert!(
        registry
            .requests()
            .iter()
            .any(|q| q.authorization.is_some()),
        "the registry itself did get the credentials"
    );
    assert!(!storage.requests().is_empty(), "the redirect was followed");
    for q in evil.requests().iter().chain(storage.requests().iter()) {
        assert!(q.authorization.is_none(), "credentials leaked: {q:?}");
    }
}

/// Finding 6: a layer titled `.hoist-partial/<hex>.blob` replaced a verified staged blob.
#[test]
fn titles_cannot_reach_the_staging_area() {
    let reg = Registry::start();
    let h = Hoist::new();
    let good = b"the real weights".to_vec();
    let hex = Digest::of_bytes(&good).hex().to_string();
    for title in [
        format!(".hoist-partial/{hex}.blob"),
        ".hoist-record.json".into(),
    ] {
        let reference = push_manifest(
            &reg,
            "stage",
            vec![
                ("w.bin".into(), "application/octet-stream", good.clone()),
                (title, "application/octet-stream", b"evil bytes".to_vec()),
            ],
        );
        let (parent, out) = victim();
        h.run(&["pull", &reference, "-o", s(&out)])
            .fails_with(INVALID_CONTENT, "reserved for hoist");
        assert_victim_intact(parent.path(), &out);
        assert!(!out.join("w.bin").exists());
    }
}

/// Every name hoist keeps in an output folder is refused as a model's file, from one list:
/// a file titled `.hoist-versions/sha256-<digest>/...` was placed by a plain pull, and a later
/// `pull --versioned` of that digest into the folder then refused to run.
#[test]
fn every_name_hoist_keeps_is_refused_as_a_title() {
    let reg = Registry::start();
    let h = Hoist::new();
    let model = push_manifest(
        &reg,
        "kept",
        vec![(
            "w.bin".into(),
            "application/octet-stream",
            b"weights".to_vec(),
        )],
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let pulled = h
        .run(&["pull", &model, "-o", s(elsewhere.path())])
        .ok()
        .stdout;
    let hex = pulled
        .split("Digest: sha256:")
        .nth(1)
        .expect("the pull names its digest")
        .trim()
        .to_string();
    let root = tempfile::tempdir().unwrap();
    for title in [
        format!(".hoist-versions/sha256-{hex}/w.bin"),
        ".hoist-versions".into(),
        ".hoist-ready".into(),
        ".hoist-next-current".into(),
        ".referrers/sha256-00/x".into(),
    ] {
        let planted = push_manifest(
            &reg,
            "planted",
            vec![
                (
                    "w.bin".into(),
                    "application/octet-stream",
                    b"other".to_vec(),
                ),
                (title.clone(), "application/octet-stream", b"evil".to_vec()),
            ],
        );
        h.run(&["pull", &planted, "-o", s(root.path())])
            .fails_with(INVALID_CONTENT, "reserved for hoist");
        let first = title.split('/').next().unwrap();
        assert!(!root.path().join(first).exists(), "{title} was placed");
        assert!(!root.path().join("w.bin").exists(), "{title}: w.bin placed");
    }
    // The folder is still one versioned pulls can use.
    h.run(&["pull", &model, "-o", s(root.path()), "--versioned"])
        .ok();
    assert_eq!(
        std::fs::read(root.path().join("current/w.bin")).unwrap(),
        b"weights"
    );
    // Where versioned pulls run, `current` is theirs too; elsewhere it is a model's name.
    let current = push_manifest(
        &reg,
        "current",
        vec![("current".into(), "application/octet-stream", b"x".to_vec())],
    );
    h.run(&["pull", &current, "-o", s(root.path())])
        .fails_with(INVALID_CONTENT, "versioned pulls switch");
    assert_eq!(
        std::fs::read(root.path().join("current/w.bin")).unwrap(),
        b"weights"
    );
    let plain = tempfile::tempdir().unwrap();
    h.run(&["pull", &current, "-o", s(plain.path())]).ok();
    assert_eq!(std::fs::read(plain.path().join("current")).unwrap(), b"x");
}

/// A gzip or zstd tar holding one file of `n` zero bytes, made without holding it in memory.
fn zero_bomb(n: u64, zstd: bool) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_path("zeros.bin").unwrap();
    header.set_size(n);
    header.set_mode(0o644);
    header.set_cksum();
    let zeros = std::io::Read::take(std::io::repeat(0), n);
    if zstd {
        let mut b = tar::Builder::new(zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap());
        b.append(&header, zeros).unwrap();
        b.into_inner().unwrap().finish().unwrap()
    } else {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::best(),
        ));
        b.append(&header, zeros).unwrap();
        b.into_inner().unwrap().finish().unwrap()
    }
}

/// Finding 7: a 1 MiB gzip layer wrote 1.1 GiB; a zstd layer ran until the disk was full.
#[test]
fn decompression_bombs_are_bounded_and_cleaned_up() {
    let reg = Registry::start();
    let h = Hoist::new();
    for (zstd, mt) in [
        (false, "application/vnd.cncf.model.weight.v1.tar+gzip"),
        (true, "application/vnd.cncf.model.weight.v1.tar+zstd"),
    ] {
        let bomb = zero_bomb(600 << 20, zstd);
        assert!(bomb.len() < 1 << 20, "a bomb is small: {}", bomb.len());
        let reference = push_manifest(&reg, "bomb", vec![("l.tar".into(), mt, bomb)]);
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("out");
        h.run(&["pull", &reference, "-o", s(&out)])
            .fails_with(INVALID_CONTENT, "decompression bomb");
        assert!(
            !out.exists(),
            "the refused pull left {:?}",
            all_entries(&out)
        );
    }
    // The bound is a ratio with a floor: a layer that unpacks within it is fine.
    let fine = zero_bomb(100 << 20, false);
    let reference = push_manifest(
        &reg,
        "fine",
        vec![(
            "l.tar".into(),
            "application/vnd.cncf.model.weight.v1.tar+gzip",
            fine,
        )],
    );
    let out = tempfile::tempdir().unwrap();
    h.run(&["pull", &reference, "-o", s(out.path())]).ok();
    assert_eq!(
        std::fs::metadata(out.path().join("zeros.bin"))
            .unwrap()
            .len(),
        100 << 20
    );
}

/// Finding 8: a config declared as 7 bytes but sent as 768 MiB, a referrers list, an error
/// body and a token answer were read whole into memory.
#[test]
fn bodies_are_read_up_to_a_bound() {
    const HUGE: u64 = 768 << 20;
    let cfg = b"{\"a\":1}".to_vec();
    let cd = Digest::of_bytes(&cfg);
    let ld = Digest::of_bytes(b"w");
    let manifest = manifest_json((&cd, 7), &[(&ld, 1, "w.bin")]);
    let fake = FakeRegistry::start(move |r: &Request| {
        if r.path == "/v2/" {
            return Response::new(200);
        }
        if r.path.contains("/manifests/v1") {
            return Response::json(200, media::OCI_MANIFEST, manifest.clone());
        }
        let endless = |status| Response {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Endless(b' ', HUGE),
        };
        if r.path.contains("/referrers/") {
            return endless(200);
        }
        if r.path.contains("/blobs/") {
            return endless(200);
        }
        endless(404)
    });
    let h = Hoist::new();
    let started = Instant::now();
    let mut peak = 0;
    let mut hoist = |args: &[&str]| {
        let (run, rss) = run_peak(h.cmd().args(args));
        peak = peak.max(rss);
        run
    };
    let inspect = hoist(&["inspect", &format!("{}/x:v1", fake.addr), "--json"]).ok();
    assert!(inspect.stdout.contains("\"config\""), "{}", inspect.stdout);
    hoist(&["discover", &format!("{}/x:v1", fake.addr)]).fails_with(INVALID_CONTENT, "over the");
    let missing = hoist(&["inspect", &format!("{}/x:missing", fake.addr)]);
    assert_ne!(missing.code, 0);
    // The token answer: a registry asking for a token from an endless realm.
    let realm = fake.addr.clone();
    let tokened = FakeRegistry::start(move |_r: &Request| {
        Response::new(401).header(
            "WWW-Authenticate",
            &format!("Bearer realm=\"http://{realm}/token\",service=\"s\""),
        )
    });
    let r = hoist(&["inspect", &format!("{}/x:v1", tokened.addr)]);
    assert_ne!(r.code, 0);
    assert!(peak > 0, "no peak measured");
    assert!(
        peak < 256 << 20,
        "a hoist process peaked at {} MiB",
        peak >> 20
    );
    assert!(started.elapsed() < Duration::from_secs(120));
}

/// Finding 9: A→B→A with fan-out made discover run for ever.
#[test]
fn referrer_cycles_end() {
    let (cfg, layer) = (b"{}".to_vec(), b"w".to_vec());
    let (cd, ld) = (Digest::of_bytes(&cfg), Digest::of_bytes(&layer));
    let manifest = manifest_json((&cd, 2), &[(&ld, 1, "w.bin")]);
    let subject = Digest::of_bytes(&manifest);
    let nodes: Vec<Digest> = (0..3)
        .map(|i| Digest::of_bytes(format!("n{i}").as_bytes()))
        .collect();
    let mut listed: Vec<serde_json::Value> = nodes
        .iter()
        .map(|d| serde_json::json!({"mediaType": media::OCI_MANIFEST, "digest": d.as_str(), "size": 10, "artifactType": "application/x"}))
        .collect();
    listed.push(serde_json::json!({"mediaType": media::OCI_MANIFEST, "digest": subject.as_str(), "size": 10}));
    let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": listed})).unwrap();
    let fake = FakeRegistry::start(move |r: &Request| {
        if r.path == "/v2/" {
            return Response::new(200);
        }
        if r.path.contains("/manifests/") {
            return Response::json(200, media::OCI_MANIFEST, manifest.clone());
        }
        if r.path.contains("/referrers/") {
            return Response::json(200, media::OCI_INDEX, index.clone());
        }
        Response::new(404)
    });
    let h = Hoist::new();
    let started = Instant::now();
    let out = h
        .run(&[
            "discover",
            &format!("{}/x:v1", fake.addr),
            "--depth",
            "64",
            "--format",
            "json",
        ])
        .ok()
        .stdout;
    assert!(started.elapsed() < Duration::from_secs(30));
    let count = out.matches("\"digest\"").count();
    assert_eq!(count, 4, "the subject, then each referrer once: {out}");
}

/// Finding 10: clashing paths, overlong names and a folder in the way left files placed.
#[test]
fn a_plan_that_cannot_be_placed_places_nothing() {
    let reg = Registry::start();
    let h = Hoist::new();
    let long = "n".repeat(300);
    type Layers<'a> = Vec<(String, &'a str, Vec<u8>)>;
    let cases: Vec<(&str, Layers, &str)> = vec![
        (
            "clash",
            vec![
                ("a".into(), "application/octet-stream", b"file".to_vec()),
                ("a/b".into(), "application/octet-stream", b"under".to_vec()),
            ],
            "both a file and a folder",
        ),
        (
            "long",
            vec![
                (
                    "first.bin".into(),
                    "application/octet-stream",
                    b"1".to_vec(),
                ),
                (long.clone(), "application/octet-stream", b"2".to_vec()),
            ],
            "longer than the filesystem allows",
        ),
        (
            "deep",
            vec![
                (
                    "first.bin".into(),
                    "application/octet-stream",
                    b"1".to_vec(),
                ),
                (
                    vec!["d"; 2100].join("/"),
                    "application/octet-stream",
                    b"2".to_vec(),
                ),
            ],
            "longer than the system allows",
        ),
    ];
    for (repo, layers, why) in cases {
        let reference = push_manifest(&reg, repo, layers);
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("out");
        h.run(&["pull", &reference, "-o", s(&out)])
            .fails_with(INVALID_CONTENT, why);
        assert!(!out.exists(), "{repo}: left {:?}", all_entries(&out));
    }
    // A folder in the way of the last file: not one file of the model appears.
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let reference = reg.reference("inway:v1");
    h.run(&["push", s(src.path()), &reference]).ok();
    let (parent, out) = victim();
    std::fs::create_dir(out.join("train.py")).unwrap();
    h.run(&["pull", &reference, "-o", s(&out)])
        .fails_with(INVALID_CONTENT, "a folder is in the way");
    assert_victim_intact(parent.path(), &out);
    assert_eq!(visible_entries(&out), vec!["notes.txt", "train.py"]);
}

/// The permission bits of a placed file.
fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Finding 11: modes were applied as given.
#[test]
fn modes_never_grant_group_or_world_write() {
    let reg = Registry::start();
    let h = Hoist::new();
    let mut header = tar::Header::new_gnu();
    header.set_path("run.sh").unwrap();
    header.set_size(2);
    header.set_mode(0o6777);
    header.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&header, &b"hi"[..]).unwrap();
    let reference = push_manifest(
        &reg,
        "modes",
        vec![("l.tar".into(), TAR, b.into_inner().unwrap())],
    );
    let out = tempfile::tempdir().unwrap();
    h.run(&["pull", &reference, "-o", s(out.path())]).ok();
    let mode = mode_of(&out.path().join("run.sh"));
    assert_eq!(mode, 0o755, "{mode:o}");
    // A raw layer whose file metadata asks for 0777.
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("tool.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        src.path().join("tool.sh"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let reference = reg.reference("modes-raw:v1");
    h.run(&["push", s(src.path()), &reference]).ok();
    let out = tempfile::tempdir().unwrap();
    h.run(&["pull", &reference, "-o", s(out.path())]).ok();
    let mode = mode_of(&out.path().join("tool.sh"));
    assert_eq!(mode & 0o022, 0, "{mode:o}");
}

/// Finding 12 (folder): the verified mark trusted size and mtime only.
#[test]
fn a_same_size_edit_with_the_mtime_restored_is_caught() {
    let reg = Registry::start();
    let h = Hoist::new();
    let reference = reg.reference("edit:v1");
    let src = push_small(&h, &reference);
    let out = pull_same(&h, &reference, src.path(), &[]);
    let weights = out.path().join("model.safetensors");
    let mtime = std::fs::metadata(&weights).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[4096] ^= 0x55;
    std::fs::write(&weights, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    h.run(&["verify", s(out.path()), &reference])
        .fails_with(VERIFICATION, "model.safetensors (digest");
    // A re-pull puts the right bytes back (the file was placed by a pull, so it may).
    h.run(&["pull", &reference, "-o", s(out.path())]).ok();
    assert_eq!(tree(src.path(), false), tree(out.path(), false));
    let verified = h.run(&["verify", s(out.path()), &reference]).ok();
    // The whole reference is named, not only its tag.
    assert!(
        verified.stdout.contains(&format!(" of {reference} (")),
        "{}",
        verified.stdout
    );
    let json = h.run(&["verify", s(out.path()), &reference, "--json"]).ok();
    let doc: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(doc["reference"], reference.as_str());
    // Extra files are reported, and a link out of the folder is never followed.
    std::fs::write(out.path().join("injected.py"), b"import os").unwrap();
    h.run(&["verify", s(out.path()), &reference])
        .fails_with(VERIFICATION, "injected.py");
    std::fs::remove_file(out.path().join("injected.py")).unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::copy(&weights, outside.path().join("w")).unwrap();
    std::fs::remove_file(&weights).unwrap();
    std::os::unix::fs::symlink(outside.path().join("w"), &weights).unwrap();
    h.run(&["verify", s(out.path()), &reference])
        .fails_with(VERIFICATION, "not a regular file");
    // A folder swapped for a link to an identical copy elsewhere is not followed either.
    let pooling = outside.path().join("1_Pooling");
    std::fs::create_dir(&pooling).unwrap();
    std::fs::copy(
        out.path().join("1_Pooling/config.json"),
        pooling.join("config.json"),
    )
    .unwrap();
    std::fs::remove_dir_all(out.path().join("1_Pooling")).unwrap();
    std::os::unix::fs::symlink(&pooling, out.path().join("1_Pooling")).unwrap();
    h.run(&["verify", s(out.path()), &reference]).fails_with(
        VERIFICATION,
        "1_Pooling/config.json (a symlink is in the path",
    );
}

/// Finding 13: a second pull into the same folder failed on the first one's lock.
#[test]
fn two_pulls_into_one_folder_both_succeed() {
    let reg = Registry::start();
    let h = Hoist::new();
    let reference = reg.reference("twice:v1");
    let src = tempfile::tempdir().unwrap();
    large_model(src.path(), 64);
    h.run(&["push", s(src.path()), &reference]).ok();
    let out = tempfile::tempdir().unwrap();
    let cmd = || {
        let mut c = h.cmd();
        c.args(["pull", &reference, "-o", s(out.path())]);
        c
    };
    run_at_once(vec![cmd(), cmd(), cmd()]);
    assert_eq!(tree(src.path(), false), tree(out.path(), false));
    assert_eq!(state_left(out.path()), Vec::<String>::new());
}

/// Finding 14: `hoist pull REF` in a folder holding the user's own files replaced them.
#[test]
fn files_no_pull_placed_are_not_overwritten() {
    let reg = Registry::start();
    let h = Hoist::new();
    let reference = reg.reference("mine:v1");
    let src = push_small(&h, &reference);
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("README.md"), b"my own readme").unwrap();
    std::fs::write(out.path().join("config.json"), b"{\"mine\":true}").unwrap();
    let r = h
        .run(&["pull", &reference, "-o", s(out.path())])
        .fails_with(USAGE, "--overwrite");
    let line = r.error_line();
    assert!(
        line.contains("README.md") && line.contains("config.json"),
        "{line}"
    );
    assert_eq!(
        std::fs::read(out.path().join("README.md")).unwrap(),
        b"my own readme"
    );
    assert_eq!(
        visible_entries(out.path()),
        vec!["README.md", "config.json"]
    );
    // Refused before the download, not after it: no blob fetched, no state left behind.
    assert_eq!(reg.blob_get_count(), 0, "the refused pull downloaded blobs");
    assert_eq!(state_left(out.path()), Vec::<String>::new());
    // A file of the user's that already holds the model's bytes is no conflict.
    let same = tempfile::tempdir().unwrap();
    std::fs::copy(src.path().join("README.md"), same.path().join("README.md")).unwrap();
    h.run(&["pull", &reference, "-o", s(same.path())]).ok();
    assert_eq!(tree(src.path(), false), tree(same.path(), false));
    h.run(&["pull", &reference, "-o", s(out.path()), "--overwrite"])
        .ok();
    assert_eq!(tree(src.path(), false), tree(out.path(), false));
    // Files an earlier pull placed are the pull's to replace.
    std::fs::write(out.path().join("config.json"), b"{}").unwrap();
    h.run(&["pull", &reference, "-o", s(out.path())]).ok();
    assert_eq!(tree(src.path(), false), tree(out.path(), false));
}

/// Edit a file in place, same size, and put its modification time back.
fn sneaky_edit(path: &Path, at: usize) {
    let meta = std::fs::metadata(path).unwrap();
    let mtime = meta.modified().unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x55;
    std::fs::write(path, &bytes).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(mtime).unwrap();
    std::fs::set_permissions(path, meta.permissions()).unwrap();
}

/// Finding 12 (store): a hard-linked cache file edited in place corrupted later pulls.
#[test]
fn an_edited_cache_blob_is_detected_and_fetched_again() {
    let reg = Registry::start();
    let h = Hoist::new();
    let reference = reg.reference("cached:v1");
    let src = push_small(&h, &reference);
    let pull = |extra: &[&str]| {
        let out = tempfile::tempdir().unwrap();
        let mut args = vec!["pull", &reference, "-o", s(out.path()), "--cache"];
        args.extend_from_slice(extra);
        let r = h.run(&args);
        (out, r)
    };
    let (first, r) = pull(&["--link-mode", "hardlink"]);
    r.ok();
    sneaky_edit(&first.path().join("model.safetensors"), 100);
    let gets = reg.blob_get_count();
    // The store's copy is the same inode: the next pull notices and fetches it again.
    let (second, r) = pull(&["--link-mode", "copy"]);
    r.ok();
    assert_eq!(tree(src.path(), false), tree(second.path(), false));
    assert!(
        reg.blob_get_count() > gets,
        "the corrupt blob was fetched again"
    );
    // A warm pull with nothing changed fetches nothing.
    let gets = reg.blob_get_count();
    let (third, r) = pull(&["--link-mode", "hardlink"]);
    r.ok();
    assert_eq!(tree(src.path(), false), tree(third.path(), false));
    assert_eq!(reg.blob_get_count(), gets);

    // The local store as the source: no remote to fetch from, so a clear error and the fix.
    let local = tempfile::tempdir().unwrap();
    small_model(local.path());
    h.run(&["push", s(local.path()), "tiny:v1"]).ok();
    let out = tempfile::tempdir().unwrap();
    h.run(&[
        "pull",
        "tiny:v1",
        "-o",
        s(out.path()),
        "--link-mode",
        "hardlink",
    ])
    .ok();
    sneaky_edit(&out.path().join("model.safetensors"), 7);
    let again = tempfile::tempdir().unwrap();
    h.run(&["pull", "tiny:v1", "-o", s(again.path())])
        .fails_with(VERIFICATION, "is corrupt");
    assert!(visible_entries(again.path()).is_empty());
    let gc = h.run(&["gc", "--verify"]).ok();
    assert!(gc.stdout.contains("Checked"), "{}", gc.stdout);
}

/// Finding 10 (resume state): a server that declared 2 GiB and sent 10 bytes left 2 GiB
/// reserved on disk. What a failed pull keeps is what it downloaded, and the error says where.
#[test]
fn a_failed_pull_keeps_only_what_it_downloaded() {
    let (cfg, small) = (b"{}".to_vec(), b"0123456789".to_vec());
    let cd = Digest::of_bytes(&cfg);
    let big = Digest::of_bytes(b"two gibibytes, supposedly");
    let manifest = manifest_json((&cd, 2), &[(&big, 2 << 30, "big.bin")]);
    let fake = FakeRegistry::start(move |r: &Request| {
        if r.path == "/v2/" {
            return Response::new(200);
        }
        if r.path.contains("/manifests/") {
            return Response::json(200, media::OCI_MANIFEST, manifest.clone());
        }
        Response::new(200).body(small.clone())
    });
    let h = Hoist::new();
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("out");
    let r = h.run(&[
        "pull",
        &format!("{}/x:v1", fake.addr),
        "-o",
        s(&out),
        "--retries",
        "1",
    ]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    let allocated = |dir: &Path| -> u64 {
        let mut total = 0;
        for e in walk_all(dir) {
            total +=
                std::os::unix::fs::MetadataExt::blocks(&std::fs::symlink_metadata(&e).unwrap())
                    * 512;
        }
        total
    };
    assert!(
        !out.exists() || allocated(&out) < 1 << 20,
        "a failed pull left {} bytes allocated",
        allocated(&out)
    );
}

fn walk_all(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                out.extend(walk_all(&p));
            }
            out.push(p);
        }
    }
    out
}

/// A 206 whose `Content-Range` starts at another byte than the one asked for is refused:
/// its bytes never land at the wrong offset, the pull fails with a network error and
/// nothing is placed.
#[test]
fn a_range_answered_from_another_offset_is_refused() {
    let cfg = b"{}".to_vec();
    let blob: Vec<u8> = (0..40u32 << 20).map(|i| (i % 251) as u8).collect();
    let (cd, bd) = (Digest::of_bytes(&cfg), Digest::of_bytes(&blob));
    let manifest = manifest_json((&cd, 2), &[(&bd, blob.len() as u64, "w.bin")]);
    let bd_path = format!("/blobs/{bd}");
    let fake = FakeRegistry::start(move |r: &Request| {
        if r.path == "/v2/" {
            return Response::new(200);
        }
        if r.path.contains("/manifests/v1") {
            return Response::json(200, media::OCI_MANIFEST, manifest.clone());
        }
        if r.path.ends_with(&bd_path) {
            // Whatever was asked: a range shifted by one byte.
            let size = blob.len();
            return Response::new(206)
                .header("Content-Range", &format!("bytes 1-{}/{size}", size - 1))
                .body(blob[1..].to_vec());
        }
        Response::json(200, "application/json", cfg.clone())
    });
    let h = Hoist::new();
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("o");
    let r = h.run(&[
        "pull",
        &format!("{}/x:v1", fake.addr),
        "-o",
        out.to_str().unwrap(),
        "--retries",
        "2",
    ]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(
        r.error_line().contains("answered a Range from byte")
            && r.error_line().contains("with other bytes"),
        "{}",
        r.stderr
    );
    assert!(!out.join("w.bin").exists());
}
