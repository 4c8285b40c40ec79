//! Bad input and hostile content: each fails with one clear error line, a documented exit
//! code, and nothing half-written in the output folder.

mod common;

use std::io::{Read, Write};

use common::*;
use hoist::oci::media;

const USAGE: i32 = 2;
const NOT_FOUND: i32 = 4;
const NETWORK: i32 = 5;
const VERIFICATION: i32 = 6;
const DISK: i32 = 7;
const INVALID_CONTENT: i32 = 8;

#[test]
fn missing_empty_and_unreadable_folders() {
    let h = Hoist::new();
    h.run(&["push", "/definitely/not/here", "m:v1"])
        .fails_with(USAGE, "does not exist");
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join(".only-hidden"), b"x").unwrap();
    h.run(&["push", empty.path().to_str().unwrap(), "m:v1"])
        .fails_with(USAGE, "holds no files");
    let file = empty.path().join(".only-hidden");
    h.run(&["push", file.to_str().unwrap(), "m:v1"])
        .fails_with(USAGE, "is not a folder");

    // An unreadable file: root reads everything, so drop to `nobody` when we are root.
    let world = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let model = world.path().join("model");
    let home = world.path().join("home");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(model.join("ok.json"), b"{}").unwrap();
    std::fs::write(model.join("secret.bin"), b"weights").unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [world.path(), &model, &home] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::set_permissions(
        model.join("secret.bin"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if is_root {
        let mut c = std::process::Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_hoist"),
        ]);
        c
    } else {
        std::process::Command::new(env!("CARGO_BIN_EXE_hoist"))
    };
    cmd.env("HOIST_HOME", &home)
        .args(["push", model.to_str().unwrap(), "m:v1"]);
    let r = run(&mut cmd).fails_with(DISK, "secret.bin");
    assert!(
        r.error_line().contains("ermission denied"),
        "{}",
        r.error_line()
    );
}

#[test]
fn malformed_reference_unknown_host_registry_down_and_missing_tag() {
    let h = Hoist::new();
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("o");
    let o = o.to_str().unwrap();
    for bad in [
        "Upper/Case:v1",
        "repo:bad tag",
        "a//b",
        "host:/x",
        "m@sha256:short",
    ] {
        h.run(&["pull", bad, "-o", o])
            .fails_with(USAGE, "invalid reference");
    }
    // A name that does not resolve: one line, at once (no retry can mend a misspelling),
    // and no hint about plain HTTP, which has nothing to do with it.
    let r = h
        .run(&["pull", "no-such-host.invalid/m:v1", "-o", o])
        .fails_with(
            NETWORK,
            "registry host no-such-host.invalid does not resolve",
        );
    assert!(!r.stderr.contains("retrying"), "{}", r.stderr);
    assert!(!r.stderr.contains("--plain-http"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("Query {"),
        "a debug-format DNS error: {}",
        r.stderr
    );
    let port = free_port();
    h.run(&["pull", &format!("127.0.0.1:{port}/m:v1"), "-o", o])
        .fails_with(NETWORK, "Connection refused");
    let reg = Registry::start();
    h.run(&["pull", &reg.reference("nothing:here"), "-o", o])
        .fails_with(NOT_FOUND, "not found: manifest nothing:here");
    let r = h
        .run(&["pull", "not-in-store:v1", "-o", o])
        .fails_with(NOT_FOUND, "not in the local store");
    assert!(!r.stderr.contains("registry reference"), "{}", r.stderr);
    // The host left out of a registry reference: the local store is meant, and the error
    // says how a registry reference would look.
    h.run(&["pull", "team/tiny:v1", "-o", o]).fails_with(
        NOT_FOUND,
        "a registry reference starts with its host (e.g. registry.example.com/team/tiny:v1)",
    );
    assert!(
        !out.path().join("o").exists(),
        "failed pulls created the output folder"
    );
}

#[test]
fn unsafe_titles_are_refused_before_download() {
    let reg = Registry::start();
    let h = Hoist::new();
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("out");
    for (title, repo) in [
        ("../escape", "dotdot"),
        ("/etc/x-hoist-test", "absolute"),
        ("a/../../up", "nested"),
    ] {
        let reference = push_manifest(
            &reg,
            repo,
            vec![(title.into(), "application/octet-stream", b"evil".to_vec())],
        );
        h.run(&["pull", &reference, "-o", out.to_str().unwrap()])
            .fails_with(INVALID_CONTENT, "unsafe path");
        // Even the override keeps writes inside the folder.
        h.run(&[
            "pull",
            &reference,
            "-o",
            out.to_str().unwrap(),
            "--allow-path-traversal",
        ])
        .fails_with(INVALID_CONTENT, "never writes outside");
    }
    assert!(!parent.path().join("escape").exists());
    assert!(!std::path::Path::new("/etc/x-hoist-test").exists());
    assert!(!out.exists());
}

#[test]
fn hostile_tar_layers_are_refused() {
    let reg = Registry::start();
    let h = Hoist::new();
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("out");
    let tar_type = "application/vnd.cncf.model.weight.v1.tar";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "tar-dotdot",
            tar_with(&[("../evil", tar::EntryType::Regular, "", b"x")]),
            "contains '..'",
        ),
        (
            "tar-abs",
            tar_with(&[("/tmp/evil", tar::EntryType::Regular, "", b"x")]),
            "is absolute",
        ),
        (
            "tar-symlink",
            tar_with(&[
                ("link", tar::EntryType::Symlink, "/etc", b""),
                ("link/passwd", tar::EntryType::Regular, "", b"x"),
            ]),
            "leaves the output folder",
        ),
        (
            "tar-relsymlink",
            tar_with(&[("d/link", tar::EntryType::Symlink, "../..", b"")]),
            "leaves the output folder",
        ),
        (
            "tar-device",
            tar_with(&[("dev", tar::EntryType::Char, "", b"")]),
            "not allowed",
        ),
    ];
    for (repo, tar, why) in cases {
        let reference = push_manifest(&reg, repo, vec![("layer.tar".into(), tar_type, tar)]);
        h.run(&["pull", &reference, "-o", out.to_str().unwrap()])
            .fails_with(INVALID_CONTENT, why);
        assert!(!out.exists(), "{repo} left files behind");
    }
    assert!(!parent.path().join("evil").exists());
}

#[test]
fn tampered_blob_fails_verification_and_writes_nothing() {
    let reg = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let reference = reg.reference("tampered:v1");
    h.run(&["push", src.path().to_str().unwrap(), &reference])
        .ok();
    let doc: serde_json::Value =
        serde_json::from_str(&h.run(&["inspect", &reference, "--json"]).ok().stdout).unwrap();
    let weights = doc["manifest"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["annotations"]["org.opencontainers.image.title"] == "model.safetensors")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let data = reg.blob_data(&weights);
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[1_000_000] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();

    // Into a new folder: the folder is not even created.
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("out");
    h.run(&["pull", &reference, "-o", out.to_str().unwrap()])
        .fails_with(VERIFICATION, "verification failed for model.safetensors");
    assert!(!out.exists());
    // Into an existing folder: it stays as it was, no staging left.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"mine").unwrap();
    h.run(&["pull", &reference, "-o", out.to_str().unwrap()])
        .fails_with(VERIFICATION, &weights);
    assert_eq!(all_entries(&out), vec!["keep.txt"]);
}

/// Serve one canned HTTP response to every connection (a registry gone wrong).
fn fake_registry(body: Vec<u8>, with_length: bool) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let length = if with_length {
                format!("Content-Length: {}\r\n", body.len())
            } else {
                String::new()
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\n{length}Connection: close\r\n\r\n",
                media::OCI_MANIFEST
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    addr
}

#[test]
fn oversized_manifest_is_refused() {
    let h = Hoist::new();
    let mut body = br#"{"schemaVersion":2,"annotations":{"pad":""#.to_vec();
    body.extend(std::iter::repeat_n(b'x', 5 * 1024 * 1024));
    body.extend_from_slice(br#""}}"#);
    for with_length in [true, false] {
        let addr = fake_registry(body.clone(), with_length);
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("out");
        h.run(&[
            "pull",
            &format!("{addr}/big:v1"),
            "-o",
            out.to_str().unwrap(),
        ])
        .fails_with(INVALID_CONTENT, "over the 4194304-byte limit");
        assert!(!out.exists());
    }
}

/// Ollama and Docker Model Runner name their layers by media type only; hoist gives them the
/// file names those tools use.
#[test]
fn ollama_and_model_runner_layouts_get_sensible_file_names() {
    let reg = Registry::start();
    let h = Hoist::new();
    let gguf = noise(300_000, 21);
    // (repository, layers as (media type, bytes), the files expected)
    type Case<'a> = (&'a str, Vec<(&'a str, Vec<u8>)>, Vec<&'a str>);
    let cases: [Case; 2] = [
        (
            "ollama",
            vec![
                ("application/vnd.ollama.image.model", gguf.clone()),
                (
                    "application/vnd.ollama.image.template",
                    b"{{ .Prompt }}".to_vec(),
                ),
                (
                    "application/vnd.ollama.image.params",
                    br#"{"stop":["<|end|>"]}"#.to_vec(),
                ),
                ("application/vnd.ollama.image.license", b"MIT".to_vec()),
            ],
            vec!["LICENSE", "model.gguf", "params.json", "template"],
        ),
        (
            "dmr",
            vec![
                ("application/vnd.docker.ai.gguf.v3", gguf.clone()),
                ("application/vnd.docker.ai.license", b"Apache-2.0".to_vec()),
            ],
            vec!["LICENSE", "model.gguf"],
        ),
    ];
    for (repo, layers, files) in cases {
        let untitled = layers
            .into_iter()
            .map(|(mt, bytes)| (String::new(), mt, bytes))
            .collect();
        let reference = push_manifest(&reg, repo, untitled);
        let out = tempfile::tempdir().unwrap();
        h.run(&["pull", &reference, "-o", out.path().to_str().unwrap()])
            .ok();
        assert_eq!(visible_entries(out.path()), files, "{repo}");
        assert_eq!(std::fs::read(out.path().join("model.gguf")).unwrap(), gguf);
        // convert: the same files as a ModelPack artifact (weights typed as weights).
        let converted = reg.reference(&format!("{repo}-modelpack:v1"));
        h.run(&["convert", &reference, &converted]).ok();
        let again = tempfile::tempdir().unwrap();
        h.run(&["pull", &converted, "-o", again.path().to_str().unwrap()])
            .ok();
        assert_eq!(tree(again.path(), false), tree(out.path(), false), "{repo}");
        let doc: serde_json::Value =
            serde_json::from_str(&h.run(&["inspect", &converted, "--json"]).ok().stdout).unwrap();
        assert_eq!(doc["config"]["config"]["format"], "gguf", "{repo}");
    }
}

/// A plain container image (the seed's baseline) is unpacked layer by layer, honouring
/// whiteouts and opaque folders.
#[test]
fn container_images_are_unpacked_in_order_with_whiteouts() {
    use tar::EntryType::{Directory, Regular};
    let reg = Registry::start();
    let h = Hoist::new();
    let lower = image_layer(&[
        ("bin/", Directory, b""),
        ("bin/a", Regular, b"old tool"),
        ("etc/conf", Regular, b"v1"),
        ("models/x/old.bin", Regular, b"old weights"),
    ]);
    let upper = image_layer(&[
        ("bin/.wh.a", Regular, b""),
        ("etc/conf", Regular, b"v2"),
        ("models/.wh..wh..opq", Regular, b""),
        ("models/new.bin", Regular, b"new weights"),
    ]);
    let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
    let reference = push_manifest_with(
        &reg,
        "image",
        "application/vnd.oci.image.config.v1+json",
        vec![(String::new(), gz, lower), (String::new(), gz, upper)],
    );
    let out = tempfile::tempdir().unwrap();
    h.run(&["pull", &reference, "-o", out.path().to_str().unwrap()])
        .ok();
    let files = tree(out.path(), false);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["etc/conf", "models/new.bin"],
        "whiteouts and the opaque folder applied"
    );
    assert_eq!(files["etc/conf"], b"v2");
    assert!(
        out.path().join("bin").is_dir(),
        "the folder stays, its whited-out file goes"
    );
}

/// A KitOps ModelKit: its layers are tars of the Kitfile's paths, without title annotations;
/// each is unpacked at the root so the files land where the Kitfile puts them.
#[test]
fn kitops_modelkits_unpack_to_the_kitfile_paths() {
    use tar::EntryType::Regular;
    let reg = Registry::start();
    let h = Hoist::new();
    let gguf = noise(200_000, 5);
    let model = image_layer(&[("models/model.gguf", Regular, &gguf)]);
    let docs = image_layer(&[("README.md", Regular, b"# kit")]);
    let code = image_layer(&[("src/train.py", Regular, b"print(1)")]);
    let kit = "application/vnd.kitops.modelkit.";
    let reference = push_manifest_with(
        &reg,
        "kit",
        "application/vnd.kitops.modelkit.config.v1+json",
        vec![
            (String::new(), &format!("{kit}model.v1.tar+gzip"), model),
            (String::new(), &format!("{kit}code.v1.tar+gzip"), code),
            (String::new(), &format!("{kit}docs.v1.tar+gzip"), docs),
        ],
    );
    let out = tempfile::tempdir().unwrap();
    h.run(&["pull", &reference, "-o", out.path().to_str().unwrap()])
        .ok();
    let files = tree(out.path(), false);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(names, ["README.md", "models/model.gguf", "src/train.py"]);
    assert_eq!(files["models/model.gguf"], gguf);
}

/// Layers hoist cannot name: one error line listing the media types (each once), and
/// `--raw` saves the verified blobs by digest instead.
#[test]
fn unknown_layers_are_listed_and_raw_saves_them_by_digest() {
    let reg = Registry::start();
    let h = Hoist::new();
    let a = noise(70_000, 1);
    let b = noise(50, 2);
    let reference = push_manifest(
        &reg,
        "odd",
        vec![
            (String::new(), "application/vnd.example.weights", a.clone()),
            (String::new(), "application/vnd.example.notes", b.clone()),
            (String::new(), "application/vnd.example.weights", a.clone()),
        ],
    );
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("o");
    let run = h
        .run(&["pull", &reference, "-o", dir.to_str().unwrap()])
        .fails_with(
            INVALID_CONTENT,
            "application/vnd.example.weights, application/vnd.example.notes",
        );
    assert!(run.error_line().contains("--raw"));
    assert!(!dir.exists(), "nothing written on failure");
    h.run(&["pull", &reference, "-o", dir.to_str().unwrap(), "--raw"])
        .ok();
    let files = tree(&dir, false);
    let name = |bytes: &[u8]| {
        format!(
            "blobs/sha256/{}",
            hoist::digest::Digest::of_bytes(bytes).hex()
        )
    };
    assert_eq!(
        files.len(),
        2,
        "one file per distinct blob: {:?}",
        files.keys()
    );
    assert_eq!(files[&name(&a)], a);
    assert_eq!(files[&name(&b)], b);
}

/// Docker Model Runner config v0.2 names each file with `org.cncf.model.filepath` (several
/// safetensors shards of one media type, which v0.1's naming by type cannot tell apart).
#[test]
fn model_runner_v0_2_files_are_named_by_their_filepath() {
    let reg = Registry::start();
    let h = Hoist::new();
    let (one, two) = (noise(90_000, 7), noise(80_000, 8));
    let st = "application/vnd.docker.ai.safetensors";
    let reference = push_manifest_with(
        &reg,
        "dmr2",
        "application/vnd.docker.ai.model.config.v0.2+json",
        vec![
            (
                "filepath:model-00001-of-00002.safetensors".into(),
                st,
                one.clone(),
            ),
            (
                "filepath:model-00002-of-00002.safetensors".into(),
                st,
                two.clone(),
            ),
            (
                "filepath:LICENSE".into(),
                "application/vnd.docker.ai.license",
                b"MIT".to_vec(),
            ),
        ],
    );
    let out = tempfile::tempdir().unwrap();
    h.run(&["pull", &reference, "-o", out.path().to_str().unwrap()])
        .ok();
    let files = tree(out.path(), false);
    assert_eq!(files["model-00001-of-00002.safetensors"], one);
    assert_eq!(files["model-00002-of-00002.safetensors"], two);
    assert_eq!(files["LICENSE"], b"MIT");
    assert_eq!(files.len(), 3);
}

/// SECURITY.md, shared node, case 11: a system with no CA certificates (a `FROM scratch`
/// image holding only the binary) still pulls from a plain-HTTP registry (TLS would check
/// against the bundled Mozilla roots; the client is built with them here).
#[test]
fn no_ca_store_is_needed_for_plain_http_and_tls_falls_back_to_bundled_roots() {
    let reg = Registry::start();
    let h = Hoist::new();
    let reference = reg.reference("team/m:v1");
    push_small(&h, &reference);
    let empty = tempfile::tempdir().unwrap();
    let bundle = empty.path().join("empty.pem");
    std::fs::write(&bundle, b"").unwrap();
    let no_roots = |cmd: &mut std::process::Command| {
        cmd.env("SSL_CERT_FILE", &bundle)
            .env("SSL_CERT_DIR", empty.path().join("none"));
    };
    let out = empty.path().join("out");
    let mut cmd = h.cmd();
    no_roots(&mut cmd);
    run(cmd.args(["pull", &reference, "-o", out.to_str().unwrap()])).ok();
    assert!(out.join("config.json").is_file());
}
