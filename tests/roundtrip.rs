//! Push and pull against the local store and a real registry: bytes, layouts, formats,
//! reproducibility and skipping what is already there.

mod common;

use common::*;

#[test]
fn local_store_round_trip_needs_no_registry() {
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let out = tempfile::tempdir().unwrap();
    h.run(&["push", src.path().to_str().unwrap(), "tiny:v1"])
        .ok();
    let list = h.run(&["list"]).ok();
    assert!(list.stdout.contains("tiny:v1"), "{}", list.stdout);
    h.run(&["pull", "tiny:v1", "-o", out.path().to_str().unwrap()])
        .ok();
    assert_eq!(tree(src.path(), false), tree(out.path(), false));
    assert!(
        !out.path().join(".hidden").exists(),
        "hidden files are skipped by default"
    );
    // The store is an OCI image layout any tool can read.
    assert!(h.home.path().join("oci-layout").exists());
    assert!(std::fs::read_to_string(h.home.path().join("index.json"))
        .unwrap()
        .contains("tiny:v1"));
}

#[test]
fn registry_round_trip_in_every_layer_format() {
    let reg = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    for format in ["raw", "tar", "tar+gzip", "tar+zstd"] {
        let tag = format.replace('+', "-");
        let reference = reg.reference(&format!("tiny:{tag}"));
        h.run(&[
            "push",
            src.path().to_str().unwrap(),
            &reference,
            "--layer-format",
            format,
        ])
        .ok();
        let inspect = h.run(&["inspect", &reference]).ok();
        assert!(
            inspect
                .stdout
                .contains(&format!("application/vnd.cncf.model.weight.v1.{format}")),
            "{}",
            inspect.stdout
        );
        assert!(inspect.stdout.contains("1_Pooling/config.json"));
        let out = tempfile::tempdir().unwrap();
        h.run(&["pull", &reference, "-o", out.path().to_str().unwrap()])
            .ok();
        assert_eq!(
            tree(src.path(), false),
            tree(out.path(), false),
            "format {format}"
        );
        assert_eq!(
            state_left(out.path()),
            Vec::<String>::new(),
            "staging left behind"
        );
    }
}

#[test]
fn manifest_is_modelpack_and_reproducible() {
    let reg = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let dir = src.path().to_str().unwrap();
    let a = digest_line(&h.run(&["push", dir, &reg.reference("m:a")]).ok().stdout);
    // Touching every file (new mtimes) must not change the digest.
    for name in ["model.safetensors", "config.json"] {
        let file = std::fs::File::options()
            .write(true)
            .open(src.path().join(name))
            .unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        file.set_modified(later).unwrap();
    }
    let b = digest_line(&h.run(&["push", dir, &reg.reference("m:b")]).ok().stdout);
    assert_eq!(a, b, "same folder, same digest");
    let with_time = h
        .cmd()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["push", dir, &reg.reference("m:c")])
        .output()
        .unwrap();
    assert!(with_time.status.success());
    assert_ne!(
        digest_line(&String::from_utf8_lossy(&with_time.stdout)),
        a,
        "SOURCE_DATE_EPOCH is recorded"
    );

    let json = h
        .run(&["inspect", &reg.reference("m:a"), "--json"])
        .ok()
        .stdout;
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let manifest = &doc["manifest"];
    assert_eq!(
        manifest["artifactType"],
        "application/vnd.cncf.model.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.cncf.model.config.v1+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    let kinds: std::collections::BTreeMap<String, String> = layers
        .iter()
        .map(|l| {
            (
                l["annotations"]["org.opencontainers.image.title"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                l["mediaType"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds["model.safetensors"],
        "application/vnd.cncf.model.weight.v1.raw"
    );
    assert_eq!(
        kinds["1_Pooling/config.json"],
        "application/vnd.cncf.model.weight.config.v1.raw"
    );
    assert_eq!(kinds["README.md"], "application/vnd.cncf.model.doc.v1.raw");
    assert_eq!(kinds["train.py"], "application/vnd.cncf.model.code.v1.raw");
    for l in layers {
        let ann = &l["annotations"];
        assert_eq!(
            ann["org.cncf.model.filepath"],
            ann["org.opencontainers.image.title"]
        );
        let meta: serde_json::Value =
            serde_json::from_str(ann["org.cncf.model.file.metadata+json"].as_str().unwrap())
                .unwrap();
        assert_eq!(meta["mtime"], "1970-01-01T00:00:00Z");
        assert_eq!(meta["typeflag"], 48);
    }
    let config = &doc["config"];
    let name = src.path().file_name().unwrap().to_str().unwrap();
    assert_eq!(config["descriptor"]["name"], name);
    assert_eq!(config["descriptor"]["family"], "bert");
    assert_eq!(config["modelfs"]["type"], "layers");
    let diff_ids: Vec<&str> = config["modelfs"]["diffIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    let digests: Vec<&str> = layers
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        diff_ids, digests,
        "raw layers: diffIds are the layer digests"
    );
}

#[test]
fn tar_layer_diff_ids_are_uncompressed_digests() {
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    h.run(&[
        "push",
        src.path().to_str().unwrap(),
        "z:v1",
        "--layer-format",
        "tar+zstd",
    ])
    .ok();
    let doc: serde_json::Value =
        serde_json::from_str(&h.run(&["inspect", "z:v1", "--json"]).ok().stdout).unwrap();
    let layers = doc["manifest"]["layers"].as_array().unwrap();
    let diff_ids = doc["config"]["modelfs"]["diffIds"].as_array().unwrap();
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        let blob = h.home.path().join("blobs/sha256").join(
            layer["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:"),
        );
        let tar = zstd::decode_all(std::fs::File::open(blob).unwrap()).unwrap();
        assert_eq!(
            hoist::digest::Digest::of_bytes(&tar).as_str(),
            diff_id.as_str().unwrap()
        );
    }
}

#[test]
fn second_push_uploads_nothing_and_repull_downloads_nothing() {
    let reg = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let dir = src.path().to_str().unwrap();
    let first = h
        .run(&["push", dir, &reg.reference("m:v1,latest"), "-t", "stable"])
        .ok();
    let uploads = reg.upload_count();
    assert_eq!(
        uploads, 9,
        "config + 6 files, each uploaded once, and the chunk index (its list and config): {}",
        first.stdout
    );
    let second = h.run(&["push", dir, &reg.reference("m:v2")]).ok();
    assert_eq!(
        reg.upload_count(),
        uploads,
        "second push opened upload sessions: {}",
        second.stdout
    );
    assert!(
        second.stdout.contains("0 of 7 blobs uploaded"),
        "{}",
        second.stdout
    );
    for tag in ["v1", "latest", "stable", "v2"] {
        h.run(&["inspect", &reg.reference(&format!("m:{tag}"))])
            .ok();
    }

    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    h.run(&["pull", &reg.reference("m:v1"), "-o", o]).ok();
    let gets = reg.blob_get_count();
    let again = h.run(&["pull", &reg.reference("m:v1"), "-o", o]).ok();
    assert_eq!(
        reg.blob_get_count(),
        gets,
        "re-pull downloaded blobs: {}",
        again.stdout
    );
    assert!(
        again.stdout.contains("6 already in place"),
        "{}",
        again.stdout
    );
    // A changed file is noticed and fetched again.
    std::fs::write(out.path().join("config.json"), b"changed").unwrap();
    h.run(&["pull", &reg.reference("m:v1"), "-o", o]).ok();
    assert_eq!(reg.blob_get_count(), gets + 1);
    assert_eq!(tree(src.path(), false), tree(out.path(), false));
}

#[test]
fn chunked_upload_round_trips() {
    let reg = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let reference = reg.reference("chunked:v1");
    h.run(&[
        "push",
        src.path().to_str().unwrap(),
        &reference,
        "--chunk-size",
        "1MiB",
    ])
    .ok();
    let patches = reg
        .log()
        .lines()
        .filter(|l| l.contains("\"PATCH /v2/chunked/blobs/uploads/"))
        .count();
    assert!(
        patches >= 4,
        "a 3 MiB file in 1 MiB chunks needs 4 PATCHes, saw {patches}"
    );
    pull_same(&h, &reference, src.path(), &[]);
}

#[test]
fn copy_between_registry_and_local_store() {
    let reg = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let digest = digest_line(
        &h.run(&["push", src.path().to_str().unwrap(), "local:v1"])
            .ok()
            .stdout,
    );
    h.run(&["copy", "local:v1", &reg.reference("copied:v1")])
        .ok();
    h.run(&[
        "copy",
        &reg.reference("copied:v1"),
        &reg.reference("again:v1"),
    ])
    .ok();
    let other = Hoist::new();
    other
        .run(&["copy", &reg.reference("again:v1"), "back:v1"])
        .ok();
    for (who, reference) in [
        (&h, reg.reference("copied:v1")),
        (&h, reg.reference("again:v1")),
        (&other, "back:v1".to_string()),
    ] {
        let inspect = who.run(&["inspect", &reference]).ok();
        assert!(
            inspect.stdout.contains(&digest),
            "{reference} changed digest: {}",
            inspect.stdout
        );
    }
    let out = tempfile::tempdir().unwrap();
    other
        .run(&["pull", "back:v1", "-o", out.path().to_str().unwrap()])
        .ok();
    assert_eq!(tree(src.path(), false), tree(out.path(), false));
    let uploads = reg.upload_count();
    h.run(&["copy", "local:v1", &reg.reference("copied:v2")])
        .ok();
    assert_eq!(
        reg.upload_count(),
        uploads,
        "copy skips blobs the registry has"
    );
}

#[test]
fn verify_against_the_manifest_lists_every_differing_file() {
    let reg = Registry::start();
    let h = Hoist::new();
    let reference = reg.reference("v:1");
    let src = push_small(&h, &reference);
    let out = pull_same(&h, &reference, src.path(), &[]);
    let dir = out.path().to_str().unwrap();
    let run = h.run(&["verify", dir, &reference]).ok();
    assert!(run.stdout.contains("Verified 6 files"), "{}", run.stdout);
    // One file changed (same size), one shortened, one gone.
    let weights = out.path().join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[1000] ^= 1;
    std::fs::remove_file(&weights).unwrap(); // a fresh inode: no verified mark
    std::fs::write(&weights, &bytes).unwrap();
    std::fs::remove_file(out.path().join("README.md")).unwrap();
    std::fs::remove_file(out.path().join("train.py")).unwrap();
    std::fs::write(out.path().join("train.py"), b"x").unwrap();
    let run = h
        .run(&["verify", dir, &reference])
        .fails_with(6, "3 of 6 files");
    let line = run.error_line();
    for needle in [
        "model.safetensors (digest",
        "README.md (missing)",
        "train.py (1 bytes",
    ] {
        assert!(line.contains(needle), "{line} lacks {needle}");
    }
}

/// `copy` within one registry mounts every blob from the source repository: no blob is
/// downloaded or uploaded, on distribution and on `hoist serve` alike.
#[test]
fn copy_within_a_registry_mounts_instead_of_uploading() {
    let h = Hoist::new();
    // distribution
    let reg = Registry::start();
    let src = push_small(&h, &reg.reference("team/a:v1"));
    let gets = reg.blob_get_count();
    h.run(&[
        "copy",
        &reg.reference("team/a:v1"),
        &reg.reference("team/b:v1"),
    ])
    .ok();
    assert_eq!(
        reg.blob_get_count(),
        gets,
        "a blob was downloaded to be copied"
    );
    let uploads_to_b = reg
        .log()
        .lines()
        .filter(|l| l.contains("\"PUT /v2/team/b/blobs/uploads/"))
        .count();
    assert_eq!(uploads_to_b, 0, "a blob was uploaded instead of mounted");
    pull_same(&h, &reg.reference("team/b:v1"), src.path(), &[]);
    // hoist serve: the mount links the blobs into the new repository, so they read back.
    let served = Served::start();
    let src = push_small(&h, &served.reference("team/a:v1"));
    h.run(&[
        "copy",
        &served.reference("team/a:v1"),
        &served.reference("team/b:v1"),
    ])
    .ok();
    pull_same(&h, &served.reference("team/b:v1"), src.path(), &[]);
}

/// The bytes the registry accepted into `repo` through uploads (`PUT …/blobs/uploads/…`
/// requests, with the size distribution logs for each).
fn uploaded_to(reg: &Registry, repo: &str) -> usize {
    reg.settled_log()
        .lines()
        .filter(|l| l.contains(&format!("\"PUT /v2/{repo}/blobs/uploads/")))
        .count()
}

/// `push` into another repository of the same registry mounts the files the registry holds
/// (from `--mount-from`, or from where this machine pushed them before) and uploads only
/// what is new; the report and the registry's own log agree.
#[test]
fn push_mounts_what_the_registry_already_holds() {
    let reg = Registry::start();
    let h = Hoist::new();
    push_small(&h, &reg.reference("team/v1:1"));
    // v2: the same files and one new one.
    let v2 = tempfile::tempdir().unwrap();
    small_model(v2.path());
    std::fs::write(v2.path().join("extra.bin"), noise(200_000, 9)).unwrap();
    // Remembered: this machine pushed those files to team/v1.
    let out = h
        .run(&[
            "push",
            v2.path().to_str().unwrap(),
            &reg.reference("team/v2:1"),
            "--json",
            // Mounts of the model's blobs are counted here; the index is new by nature.
            "--no-chunk-index",
        ])
        .ok();
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let blobs = report["blobs"].as_u64().unwrap();
    assert_eq!(
        report["uploaded"], 2,
        "the new file and the config: {report}"
    );
    assert_eq!(report["mounted"], blobs - 2, "every other file: {report}");
    let sent = report["uploaded_bytes"].as_u64().unwrap();
    assert!(
        (200_000..210_000).contains(&sent),
        "only the new file's bytes: {report}"
    );
    assert_eq!(uploaded_to(&reg, "team/v2"), 2, "{}", reg.log());
    pull_same(&h, &reg.reference("team/v2:1"), v2.path(), &[]);
    // Another machine (empty store) names the source repository.
    let other = Hoist::new();
    let out = other
        .run(&[
            "push",
            v2.path().to_str().unwrap(),
            &reg.reference("team/v3:1"),
            "--mount-from",
            "team/v2",
            "--json",
            "--no-chunk-index",
        ])
        .ok();
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        report["mounted"], blobs,
        "every blob, config included: {report}"
    );
    assert_eq!(report["uploaded"], 0, "{report}");
    assert_eq!(uploaded_to(&reg, "team/v3"), 0);
    pull_same(&other, &reg.reference("team/v3:1"), v2.path(), &[]);
    // Without the hint, another empty store uploads everything (the mount is not free luck).
    let third = Hoist::new();
    let out = third
        .run(&[
            "push",
            v2.path().to_str().unwrap(),
            &reg.reference("team/v4:1"),
            "--json",
            "--no-chunk-index",
        ])
        .ok();
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["mounted"], 0, "{report}");
    assert_eq!(uploaded_to(&reg, "team/v4") as u64, blobs);
    // A name that is no repository is refused up front.
    third
        .run(&[
            "push",
            v2.path().to_str().unwrap(),
            &reg.reference("team/v5:1"),
            "--mount-from",
            "../etc",
        ])
        .fails_with(2, "--mount-from");
}

/// Under bearer tokens a mount needs `pull` on the source repository in the same token:
/// `copy` asks for both scopes, so the blobs are mounted, not sent again.
#[test]
fn mounts_under_bearer_tokens_ask_for_pull_on_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("bob", "hunter22")]);
    let served = Served::start_free(&["--htpasswd", users.to_str().unwrap(), "--auth", "token"]);
    let h = Hoist::new();
    let bob = |args: &[&str]| {
        run(h
            .cmd()
            .env("DOCKER_CONFIG", dir.path())
            .env("HOIST_USERNAME", "bob")
            .env("HOIST_PASSWORD", "hunter22")
            .args(args))
    };
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    bob(&[
        "push",
        src.path().to_str().unwrap(),
        &served.reference("t/a:v1"),
    ])
    .ok();
    let out = bob(&[
        "copy",
        &served.reference("t/a:v1"),
        &served.reference("t/b:v1"),
    ])
    .ok();
    let mounted: usize = out
        .stdout
        .split("0 blobs copied (0 B), ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("a blob was sent, not mounted: {}", out.stdout));
    assert!(mounted >= 3, "{}", out.stdout);
    let o = tempfile::tempdir().unwrap();
    bob(&[
        "pull",
        &served.reference("t/b:v1"),
        "-o",
        o.path().to_str().unwrap(),
    ])
    .ok();
    assert_eq!(tree(src.path(), false), tree(o.path(), false));
}

/// `pull --versioned` from the CLI: the model is read through OUTPUT/current, a re-pull of
/// the same version switches nothing, and a `current` the user made is refused (exit 2)
/// and left as it was.
#[test]
fn versioned_pulls_switch_current_and_refuse_a_users_current() {
    let reg = Registry::start();
    let h = Hoist::new();
    let reference = reg.reference("ver/m:v1");
    let src = push_small(&h, &reference);
    let pull_versioned = |out: &std::path::Path| {
        h.run(&[
            "pull",
            &reference,
            "-o",
            out.to_str().unwrap(),
            "--versioned",
        ])
    };
    let root = tempfile::tempdir().unwrap();
    let r = pull_versioned(root.path()).ok();
    assert!(r.stderr.contains("now points to"), "{}", r.stderr);
    let current = root.path().join("current");
    assert!(std::fs::symlink_metadata(&current)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(tree(src.path(), false), tree(&current, false));
    let gets = reg.blob_get_count();
    pull_versioned(root.path()).ok();
    assert_eq!(
        reg.blob_get_count(),
        gets,
        "the same version is already in place"
    );
    h.run(&["verify", current.to_str().unwrap(), &reference, "--full"])
        .ok();

    let mine = tempfile::tempdir().unwrap();
    std::fs::create_dir(mine.path().join("current")).unwrap();
    std::fs::write(mine.path().join("current/notes.txt"), b"mine").unwrap();
    pull_versioned(mine.path()).fails_with(2, "current");
    assert_eq!(
        std::fs::read(mine.path().join("current/notes.txt")).unwrap(),
        b"mine"
    );
}
