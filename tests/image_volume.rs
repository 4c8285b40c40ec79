//! The image-volume form (`push --image-volume`, `convert --to image-volume`): real containerd
//! (Debian's package) pulls and mounts it as Kubernetes image volumes do, on amd64 and arm64,
//! and the mounted tree is the model's, file by file; hoist pulls it back as files; what
//! containerd would refuse, hoist refuses too.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;

const VERIFICATION: i32 = 6;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A containerd of this test's own: its socket, root and state in a temporary folder, no CRI
/// plugin, stopped by its PID when dropped (with every mount it made undone).
struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    mounts: Vec<PathBuf>,
}

impl Containerd {
    /// `None` (after saying why) when this machine cannot run one; under `CI` that fails.
    fn start() -> Option<Containerd> {
        if !rustix::process::geteuid().is_root() {
            cannot_run("containerd needs root (mounts and snapshots)");
            return None;
        }
        if Command::new("containerd")
            .arg("--version")
            .output()
            .is_err()
            || Command::new("ctr").arg("--version").output().is_err()
        {
            cannot_run("containerd is not installed (scripts/setup installs Debian's containerd)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("hoist-ctd-")
            .tempdir()
            .unwrap();
        let d = dir.path().display();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/ctd.sock\"\n[ttrpc]\n  address = \"{d}/ctd.sock.ttrpc\"\n\
                 [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let ctd = Containerd {
            dir,
            child,
            mounts: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ctd.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                std::fs::read_to_string(ctd.dir.path().join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(ctd)
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("ctd.sock"))
            .args(args)
            .output()
            .unwrap()
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr images pull` then `ctr images mount` for `platform`, as the kubelet's image
    /// volume asks of containerd; the mounted folder.
    fn pull_and_mount(&mut self, reference: &str, platform: &str) -> PathBuf {
        self.ctr_ok(&[
            "images",
            "pull",
            "--plain-http",
            "--platform",
            platform,
            reference,
        ]);
        let target = self.dir.path().join(format!("mnt-{}", self.mounts.len()));
        std::fs::create_dir(&target).unwrap();
        self.ctr_ok(&[
            "images",
            "mount",
            "--platform",
            platform,
            reference,
            s(&target),
        ]);
        self.mounts.push(target.clone());
        target
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = self.ctr(&["images", "unmount", "--rm", s(m)]);
            let _ = rustix::mount::unmount(m, rustix::mount::UnmountFlags::DETACH);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every entry under `dir`: relative path → (kind, mode bits, bytes of a file).
fn listing(dir: &Path) -> std::collections::BTreeMap<String, (char, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(rel, ('d', mode, Vec::new()));
                stack.push(e.path());
            } else if meta.is_file() {
                out.insert(rel, ('f', mode, std::fs::read(e.path()).unwrap()));
            } else {
                out.insert(rel, ('?', mode, Vec::new()));
            }
        }
    }
    out
}

/// The mounted tree is the model's: the same files with the same bytes, nothing else but
/// the folders that hold them; files readable by all, folders 0755.
fn assert_same_model(model: &Path, mounted: &Path, what: &str) {
    assert_eq!(
        tree(model, false),
        tree(mounted, true),
        "{what}: files differ"
    );
    for (path, (kind, mode, _)) in listing(mounted) {
        match kind {
            'f' => assert!(
                mode & 0o444 == 0o444 && mode & 0o022 == 0,
                "{what}: {path} has mode {mode:o}"
            ),
            'd' => assert_eq!(mode, 0o755, "{what}: folder {path}"),
            _ => panic!("{what}: {path} is neither a file nor a folder"),
        }
    }
}

/// The done-when of the volume form: the real model, pushed with `--image-volume` and
/// converted with `--to image-volume`, is mounted by containerd with exactly its files on
/// amd64 and arm64; the ModelPack artifact beside it is the one a plain push makes.
#[test]
fn containerd_mounts_the_real_model_on_amd64_and_arm64() {
    let Some(mut ctd) = Containerd::start() else {
        return;
    };
    let reg = Registry::start();
    let h = Hoist::new();
    let model = real_model();
    let plain = h
        .run(&["push", s(&model), &reg.reference("plain/minilm:v1")])
        .ok();
    // The references the Pods in deploy/image-volume/ name, on this test's registry: the
    // containerd Pod's is the volume form of the CRI-O Pod's.
    let named = |file: &str| {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/image-volume")
                .join(file),
        )
        .unwrap();
        let line = text
            .lines()
            .find(|l| l.trim().starts_with("reference:"))
            .unwrap();
        let r = line.trim().trim_start_matches("reference:").trim();
        reg.reference(r.trim_start_matches("registry.example.com/"))
    };
    let reference = named("pod-cri-o.yaml");
    let pushed = h
        .run(&["push", s(&model), &reference, "--image-volume"])
        .ok();
    assert_eq!(
        digest_line(&plain.stdout),
        digest_line(&pushed.stdout),
        "--image-volume changed the ModelPack artifact"
    );
    let volume_ref = format!("{reference}-volume");
    assert_eq!(volume_ref, named("pod-containerd.yaml"));
    assert!(
        pushed
            .stdout
            .contains(&format!("Image volume: {volume_ref} ")),
        "push prints the reference for the Pod spec: {}",
        pushed.stdout
    );
    for platform in ["linux/amd64", "linux/arm64"] {
        let mounted = ctd.pull_and_mount(&volume_ref, platform);
        assert_same_model(
            &model,
            &mounted,
            &format!("push --image-volume, {platform}"),
        );
    }
    // From the ModelPack artifact (any shape hoist pulls) to the volume form.
    let converted = reg.reference("converted/minilm:v1");
    h.run(&["convert", &reference, &converted, "--to", "image-volume"])
        .ok();
    for platform in ["linux/amd64", "linux/arm64"] {
        let mounted = ctd.pull_and_mount(&converted, platform);
        assert_same_model(&model, &mounted, &format!("convert, {platform}"));
    }
    // The real consumer loads the weights from the mounted volume.
    let mounted = ctd.mounts[0].join("model.safetensors");
    let shape = python(&format!(
        "from safetensors.numpy import load_file\n\
         t = load_file({:?})\nprint(len(t))",
        s(&mounted)
    ));
    assert!(shape.trim().parse::<usize>().unwrap() > 0);
}

/// A model with odd names and shapes: nested and empty folders, an empty file, a link inside
/// the folder, spaces, non-ASCII, a path past tar's 100-byte name field. containerd mounts
/// exactly what a pull of the ModelPack form gives.
#[test]
fn containerd_mounts_odd_names_and_shapes() {
    let Some(mut ctd) = Containerd::start() else {
        return;
    };
    let reg = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    let d = src.path();
    let deep = format!("{}/{}", "a".repeat(60), "ß".repeat(40));
    std::fs::create_dir_all(d.join(&deep)).unwrap();
    std::fs::create_dir_all(d.join("empty folder")).unwrap();
    std::fs::create_dir_all(d.join("日本語")).unwrap();
    std::fs::write(d.join(format!("{deep}/weights.bin")), noise(70_000, 3)).unwrap();
    std::fs::write(d.join("zero bytes.txt"), b"").unwrap();
    std::fs::write(d.join("日本語/トークナイザー.json"), b"{\"v\":1}").unwrap();
    std::fs::write(d.join("config.json"), b"{}").unwrap();
    std::os::unix::fs::symlink("config.json", d.join("link.json")).unwrap();
    // Modes a volume must not carry as they are: owner-only (a server of another uid could
    // not read it), world-writable with setuid.
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(d.join("private.json"), b"{}").unwrap();
    std::fs::set_permissions(
        d.join("private.json"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(d.join("tool.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(d.join("tool.sh"), std::fs::Permissions::from_mode(0o4777)).unwrap();
    let reference = reg.reference("odd:v1");
    h.run(&["push", s(d), &reference, "--image-volume"]).ok();
    let pulled = tempfile::tempdir().unwrap();
    h.run(&["pull", &reference, "-o", s(pulled.path())]).ok();
    let mounted = ctd.pull_and_mount(&format!("{reference}-volume"), "linux/amd64");
    assert_eq!(tree(pulled.path(), false), tree(&mounted, true));
    assert_eq!(std::fs::read(mounted.join("link.json")).unwrap(), b"{}");
    let mode = |p: &str| {
        std::fs::metadata(mounted.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("private.json"), 0o644);
    assert_eq!(mode("tool.sh"), 0o755);
    assert_same_model(pulled.path(), &mounted, "odd model");
}

/// A shard past tar's 8 GiB octal size field (a sparse file: no disk for its zeros, but
/// every byte is packed, pushed and mounted). Slow: `cargo test -- --ignored`.
#[test]
#[ignore = "slow: packs, pushes and mounts a 9 GiB file"]
fn containerd_mounts_a_file_past_8_gib() {
    let Some(mut ctd) = Containerd::start() else {
        return;
    };
    let reg = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    let size: u64 = 9 << 30;
    let f = std::fs::File::create(src.path().join("big.gguf")).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    std::fs::write(src.path().join("config.json"), b"{}").unwrap();
    let reference = reg.reference("big:v1");
    h.run(&["push", s(src.path()), &reference, "--image-volume"])
        .ok();
    let mounted = ctd.pull_and_mount(&format!("{reference}-volume"), "linux/amd64");
    assert_eq!(
        std::fs::metadata(mounted.join("big.gguf")).unwrap().len(),
        size
    );
    let out = Command::new("cmp")
        .arg(src.path().join("big.gguf"))
        .arg(mounted.join("big.gguf"))
        .status()
        .unwrap();
    assert!(out.success(), "the mounted 9 GiB file differs");
}

/// hoist reads its volume form back as the model's files (not tar files), and says in
/// `inspect` where the volume form of a ModelPack tag is and whether it is current.
#[test]
fn hoist_pulls_and_inspects_the_volume_form() {
    let reg = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let reference = reg.reference("small:v1");
    h.run(&["inspect", &reference]).fails_with(4, "");
    h.run(&["push", s(src.path()), &reference]).ok();
    let before = h.run(&["inspect", &reference]).ok();
    assert!(
        before.stdout.contains("Image volume:  none"),
        "{}",
        before.stdout
    );
    let pushed = h
        .run(&["push", s(src.path()), &reference, "--image-volume"])
        .ok();
    let volume_ref = format!("{reference}-volume");
    pull_same(&h, &volume_ref, src.path(), &[]);
    let inspected = h.run(&["inspect", &reference]).ok();
    assert!(
        inspected
            .stdout
            .contains(&format!("Image volume:  {volume_ref} (holds these files)")),
        "{}",
        inspected.stdout
    );
    let of_volume = h.run(&["inspect", &volume_ref]).ok();
    assert!(
        of_volume.stdout.contains("Image volume:  yes"),
        "{}",
        of_volume.stdout
    );
    let json: serde_json::Value =
        serde_json::from_str(&h.run(&["inspect", &reference, "--json"]).ok().stdout).unwrap();
    assert_eq!(json["imageVolume"]["tag"], "v1-volume");
    assert_eq!(json["imageVolume"]["current"], true);
    assert_eq!(
        json["manifestDigest"].as_str().unwrap(),
        digest_line(&pushed.stdout)
    );
    // A new version of the model under the same tag: the old volume form is named stale.
    std::fs::write(src.path().join("config.json"), b"{\"v\":2}").unwrap();
    h.run(&["push", s(src.path()), &reference]).ok();
    let stale = h.run(&["inspect", &reference]).ok();
    assert!(
        stale.stdout.contains("made from another version"),
        "{}",
        stale.stdout
    );
}

/// No bytes twice: a ModelPack artifact pushed with tar layers shares every layer with its
/// volume form (only the small configs are uploaded for it), and a second push sends none.
#[test]
fn volume_form_shares_tar_layers_with_the_modelpack_form() {
    let reg = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let reference = reg.reference("shared:v1");
    let push = || {
        let out = h
            .run(&[
                "push",
                s(src.path()),
                &reference,
                "--layer-format",
                "tar",
                "--no-chunk-index",
                "--image-volume",
                "--json",
            ])
            .ok();
        serde_json::from_str::<serde_json::Value>(out.stdout.trim()).unwrap()
    };
    let doc = push();
    let files = 6; // small_model's files (the hidden one is skipped)
    assert_eq!(doc["modelpack"]["uploaded"], files + 1);
    assert_eq!(
        doc["imageVolume"]["uploaded"].as_u64().unwrap() as usize,
        hoist::pack::volume::DEFAULT_ARCHITECTURES.len(),
        "only the per-platform configs are new: {doc}"
    );
    let doc = push();
    assert_eq!(doc["modelpack"]["uploaded"], 0);
    assert_eq!(doc["imageVolume"]["uploaded"], 0);
}

/// What containerd refuses (`mismatched image rootfs and manifest layers`), hoist pull
/// refuses with exit 6 and writes nothing: diff_ids that name other layers, or too few.
#[test]
fn pull_refuses_a_volume_form_whose_diff_ids_do_not_match() {
    use hoist::digest::Digest;
    let reg = Registry::start();
    let h = Hoist::new();
    let layer = tar_with(&[("model.bin", tar::EntryType::Regular, "", b"weights")]);
    let layer_digest = Digest::of_bytes(&layer);
    let other = Digest::of_bytes(b"another layer");
    for (repo, ids) in [
        ("wrong-id", vec![other.clone()]),
        ("too-few", vec![]),
        ("too-many", vec![layer_digest.clone(), other.clone()]),
    ] {
        let reference = put_volume_layer_with(&reg, repo, &layer, "model.bin", 7, &ids);
        let out = tempfile::tempdir().unwrap();
        h.run(&["pull", &reference, "-o", s(out.path())])
            .fails_with(VERIFICATION, "rootfs.diff_ids");
        assert!(
            visible_entries(out.path()).is_empty(),
            "{repo}: a refused pull placed files"
        );
    }
}

/// SECURITY.md, shared node, case 9: the diff_ids check fails closed. An image config that
/// is missing (404), is not its digest's bytes, or is over 1 MiB is no config to check the
/// layers against: exit 6, nothing placed. `hoist mount` checks diff_ids as `pull` does.
#[test]
fn the_diff_ids_check_fails_closed_and_mount_makes_it_too() {
    use hoist::digest::Digest;
    use hoist::oci::{media, Descriptor, Manifest};
    let reg = Registry::start();
    let h = Hoist::new();
    let layer_bytes = tar_with(&[("model.bin", tar::EntryType::Regular, "", b"weights")]);
    let swapped = vec![Digest::of_bytes(b"another layer")];
    let config_of = |ids: &[Digest], pad: usize| {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ids},
            "config": {"Labels": {"pad": "x".repeat(pad)}},
        }))
        .unwrap()
    };
    let mut layer = Descriptor::new(
        media::OCI_LAYER_TAR,
        Digest::of_bytes(&layer_bytes),
        layer_bytes.len() as u64,
    );
    layer
        .annotations
        .insert(media::ANNOTATION_FILEPATH.into(), "model.bin".into());
    let manifest_with = |config: &Descriptor| Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        artifact_type: None,
        config: config.clone(),
        layers: vec![layer.clone()],
        subject: None,
        annotations: Default::default(),
    };
    // (repository, the config uploaded, the config's descriptor in the manifest)
    let small = config_of(&swapped, 0);
    let big = config_of(&swapped, 1 << 20);
    let desc = |bytes: &[u8]| {
        Descriptor::new(
            media::OCI_IMAGE_CONFIG,
            Digest::of_bytes(bytes),
            bytes.len() as u64,
        )
    };
    let mut short = desc(&small);
    short.size -= 1; // what a registry sends stops before the digest's bytes end
    for (repo, uploaded, declared, why) in [
        ("missing", &small, desc(&small), "is missing"),
        (
            "short",
            &small,
            short,
            "is missing or is not the bytes of its digest",
        ),
        ("oversized", &big, desc(&big), "is over 1 MiB"),
    ] {
        let full = desc(uploaded);
        let blobs: Vec<(&Descriptor, &[u8])> = vec![(&layer, &layer_bytes), (&full, uploaded)];
        put_raw(&reg, repo, "v1", &blobs, &manifest_with(&declared));
        if repo == "missing" {
            // The registry loses the config after the manifest was accepted: a 404.
            let url = format!("http://{}/v2/{repo}/blobs/{}", reg.addr, full.digest);
            let (code, _, body) = curl(&["-X", "DELETE", &url]);
            assert_eq!(code, 202, "{body}");
        }
        let out = tempfile::tempdir().unwrap();
        h.run(&[
            "pull",
            &reg.reference(&format!("{repo}:v1")),
            "-o",
            s(out.path()),
        ])
        .fails_with(VERIFICATION, why);
        assert!(
            visible_entries(out.path()).is_empty(),
            "{repo}: files placed"
        );
    }

    // hoist mount: swapped diff_ids are refused before anything is mounted.
    let fuse = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    if !fuse && cannot_run("/dev/fuse cannot be opened here, so hoist mount's check is not run") {
        return;
    }
    let reference = put_volume_layer_with(&reg, "swapped", &layer_bytes, "model.bin", 7, &swapped);
    let point = tempfile::tempdir().unwrap();
    let mut child = h
        .cmd()
        .args(["mount", &reference, s(point.path())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
            let _ = Command::new("umount").arg("-l").arg(point.path()).status();
            panic!("hoist mount served a volume form whose diff_ids do not match");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(VERIFICATION), "{stderr}");
    assert!(stderr.contains("rootfs.diff_ids"), "{stderr}");
}

/// SECURITY.md, shared node, case 10: a volume form whose platforms list other layers is
/// pulled by the node's platform (or `--platform`), saying which; an index that lists a
/// platform twice is refused; inspect compares every platform's layers, not the annotation.
#[test]
fn a_volume_form_whose_platforms_disagree_is_pulled_by_platform_and_named_by_inspect() {
    use hoist::digest::Digest;
    let reg = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let reference = reg.reference("small:v1");
    h.run(&["push", s(src.path()), &reference, "--image-volume"])
        .ok();
    let index_url = format!("http://{}/v2/small/manifests/v1-volume", reg.addr);
    let accept = format!("Accept: {}", hoist::oci::media::OCI_INDEX);
    let (code, _, body) = curl(&["-H", &accept, &index_url]);
    assert_eq!(code, 200, "{body}");
    let mut index: serde_json::Value = serde_json::from_str(&body).unwrap();

    // Another image (one file, other bytes) in the same repository, for arm64's entry.
    let layer = tar_with(&[("other.bin", tar::EntryType::Regular, "", b"arm64 only")]);
    let other_ref = put_volume_layer_with(
        &reg,
        "small",
        &layer,
        "other.bin",
        10,
        &[Digest::of_bytes(&layer)],
    );
    let (_, _, other_body) = curl(&[
        "-H",
        &format!("Accept: {}", hoist::oci::media::OCI_MANIFEST),
        &format!("http://{}/v2/small/manifests/v1", reg.addr),
    ]);
    let other_digest = Digest::of_bytes(other_body.as_bytes()).to_string();
    let other_size = other_body.len();
    assert!(other_ref.ends_with("small:v1"));
    for entry in index["manifests"].as_array_mut().unwrap() {
        if entry["platform"]["architecture"] == "arm64" {
            entry["digest"] = other_digest.clone().into();
            entry["size"] = other_size.into();
        }
    }
    let put_index = |tag: &str, index: &serde_json::Value| {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), serde_json::to_vec(index).unwrap()).unwrap();
        let (code, _, body) = curl(&[
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {}", hoist::oci::media::OCI_INDEX),
            "--data-binary",
            &format!("@{}", file.path().display()),
            &format!("http://{}/v2/small/manifests/{tag}", reg.addr),
        ]);
        assert_eq!(code, 201, "{body}");
    };
    put_index("v1-volume", &index);
    // The ModelPack tag again (put_volume_layer_with moved small:v1).
    h.run(&["push", s(src.path()), &reference]).ok();

    let volume_ref = format!("{reference}-volume");
    let host = hoist::oci::Platform::host().to_string();
    let out = tempfile::tempdir().unwrap();
    let pulled = h.run(&["pull", &volume_ref, "-o", s(out.path())]).ok();
    assert!(
        pulled.stdout.contains(&format!("Platform: {host}")),
        "{}",
        pulled.stdout
    );
    let arm = tempfile::tempdir().unwrap();
    let pulled = h
        .run(&[
            "pull",
            &volume_ref,
            "-o",
            s(arm.path()),
            "--platform",
            "linux/arm64",
        ])
        .ok();
    assert!(
        pulled.stdout.contains("Platform: linux/arm64"),
        "{}",
        pulled.stdout
    );
    assert_eq!(
        std::fs::read(arm.path().join("other.bin")).unwrap(),
        b"arm64 only"
    );
    assert!(!arm.path().join("config.json").exists());
    h.run(&[
        "pull",
        &volume_ref,
        "-o",
        s(arm.path()),
        "--platform",
        "linux",
    ])
    .fails_with(2, "not a platform");

    let json: serde_json::Value =
        serde_json::from_str(&h.run(&["inspect", &reference, "--json"]).ok().stdout).unwrap();
    assert_eq!(json["imageVolume"]["platformsAgree"], false, "{json}");
    assert_eq!(json["imageVolume"]["current"], false, "{json}");
    let text = h.run(&["inspect", &reference]).ok().stdout;
    assert!(text.contains("do not list the same layers"), "{text}");

    // The host's platform listed twice: no pick is made.
    let entries = index["manifests"].as_array().unwrap().clone();
    let mine = entries
        .iter()
        .find(|e| e["platform"]["architecture"] == host.split('/').nth(1).unwrap())
        .unwrap()
        .clone();
    let mut twice = index.clone();
    twice["manifests"].as_array_mut().unwrap().push(mine);
    put_index("twice", &twice);
    let out = tempfile::tempdir().unwrap();
    h.run(&["pull", &reg.reference("small:twice"), "-o", s(out.path())])
        .fails_with(8, "more than once");
    assert!(visible_entries(out.path()).is_empty());
}
