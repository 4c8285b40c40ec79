//! Interop with real peers: the real model, oras-py (PyPI `oras`), skopeo, and the python
//! `safetensors` loader as a consumer.

mod common;

use common::*;

#[test]
fn real_model_round_trips_and_loads_with_safetensors() {
    let model = real_model();
    let reg = Registry::start();
    let h = Hoist::new();
    let reference = reg.reference("all-minilm-l6-v2:v1");
    h.run(&[
        "push",
        model.to_str().unwrap(),
        &reference,
        "--include-hidden",
    ])
    .ok();
    let out = tempfile::tempdir().unwrap();
    h.run(&["pull", &reference, "-o", out.path().to_str().unwrap()])
        .ok();
    let (want, got) = (tree(&model, true), tree(out.path(), true));
    assert_eq!(
        want.len(),
        13,
        "the real model has 13 files: {:?}",
        want.keys()
    );
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    assert!(want == got, "byte-identical round trip");
    assert!(got.contains_key("1_Pooling/config.json"));
    let loaded = python(&format!(
        "from safetensors.numpy import load_file\nt = load_file({:?})\nprint(len(t), sum(v.size for v in t.values()))",
        out.path().join("model.safetensors")
    ));
    let mut parts = loaded.split_whitespace();
    let tensors: usize = parts.next().unwrap().parse().unwrap();
    let params: u64 = parts.next().unwrap().parse().unwrap();
    assert!(
        tensors > 100 && params > 22_000_000,
        "safetensors loaded {tensors} tensors, {params} values"
    );
    // The config says what the weights are.
    let doc: serde_json::Value =
        serde_json::from_str(&h.run(&["inspect", &reference, "--json"]).ok().stdout).unwrap();
    assert_eq!(doc["config"]["config"]["format"], "safetensors");
    assert_eq!(doc["config"]["config"]["precision"], "fp32");
    assert_eq!(doc["config"]["config"]["paramSize"], "22.7m");
}

/// `reference` has a chunk index attached (`hoist discover` lists it).
fn assert_has_chunk_index(h: &Hoist, reference: &str) {
    let found = h.run(&["discover", reference, "--json"]).ok();
    assert!(
        found
            .stdout
            .contains("application/vnd.hoist.chunk-index.v1+json"),
        "{}",
        found.stdout
    );
}

#[test]
fn oras_py_pulls_what_hoist_pushes() {
    let reg = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let reference = reg.reference("for-oras:v1");
    // With a chunk index beside it (push's default): the manifest, and what other tools
    // read, do not change.
    let plain_ref = reg.reference("plain:v1");
    let plain = digest_line(
        &h.run(&[
            "push",
            src.path().to_str().unwrap(),
            &plain_ref,
            "--no-chunk-index",
        ])
        .ok()
        .stdout,
    );
    let none = h.run(&["discover", &plain_ref, "--json"]).ok();
    assert!(!none.stdout.contains("chunk-index"), "{}", none.stdout);
    let indexed = digest_line(
        &h.run(&["push", src.path().to_str().unwrap(), &reference])
            .ok()
            .stdout,
    );
    assert_eq!(plain, indexed, "the chunk index changed the manifest");
    assert_has_chunk_index(&h, &reference);
    let out = tempfile::tempdir().unwrap();
    python(&format!(
        "import oras.client\nc = oras.client.OrasClient(insecure=True)\nc.pull(target={reference:?}, outdir={:?})",
        out.path()
    ));
    assert_eq!(
        tree(src.path(), false),
        tree(out.path(), false),
        "oras-py sees the same files, nested paths included"
    );
}

#[test]
fn hoist_pulls_what_oras_py_pushes() {
    let reg = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("weights.bin"), noise(2_000_000, 9)).unwrap();
    std::fs::write(src.path().join("config.json"), b"{}").unwrap();
    std::fs::write(src.path().join("empty.txt"), b"").unwrap();
    let reference = reg.reference("from-oras:v1");
    python(&format!(
        "import os, oras.client\nos.chdir({:?})\nc = oras.client.OrasClient(insecure=True)\nr = c.push(target={reference:?}, files=['weights.bin', 'config.json', 'empty.txt'], disable_path_validation=True)\nassert r.status_code in (200, 201), r",
        src.path()
    ));
    pull_same(&h, &reference, src.path(), &[]);
    // An artifact pushed by another tool gets a chunk index afterwards.
    let r = h.run(&["index", &reference]).ok();
    assert!(r.stdout.contains("Indexed"), "{}", r.stdout);
    assert_has_chunk_index(&h, &reference);
}

#[test]
fn skopeo_copies_what_hoist_pushes_unchanged() {
    let reg = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let reference = reg.reference("for-skopeo:v1");
    let digest = digest_line(
        &h.run(&["push", src.path().to_str().unwrap(), &reference])
            .ok()
            .stdout,
    );
    let copied = reg.reference("skopeo-copy:v1");
    let layout = tempfile::tempdir().unwrap();
    for dest in [
        format!("docker://{copied}"),
        format!("oci:{}:v1", layout.path().display()),
    ] {
        let out = run(std::process::Command::new("skopeo").args([
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{reference}"),
            &dest,
        ]));
        assert_eq!(out.code, 0, "skopeo copy to {dest} failed: {}", out.stderr);
    }
    let inspect = h.run(&["inspect", &copied]).ok();
    assert!(
        inspect.stdout.contains(&digest),
        "skopeo changed the manifest: {}",
        inspect.stdout
    );
    let index = std::fs::read_to_string(layout.path().join("index.json")).unwrap();
    assert!(
        index.contains(&digest),
        "skopeo's OCI layout holds another manifest: {index}"
    );
    pull_same(&h, &copied, src.path(), &[]);
}

/// convert: an ORAS artifact pushed by oras-py becomes ModelPack, and back to ORAS; the
/// files' blobs are reused (uploaded once), and each result pulls to the same files.
#[test]
fn convert_between_oras_and_modelpack_reuses_blobs() {
    let reg = Registry::start();
    let h = Hoist::new();
    // oras-py titles layers by base name: a flat folder.
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("model.safetensors"), noise(3_000_000, 3)).unwrap();
    std::fs::write(src.path().join("config.json"), br#"{"model_type":"bert"}"#).unwrap();
    std::fs::write(src.path().join("README.md"), b"# m").unwrap();
    std::fs::write(src.path().join("empty.txt"), b"").unwrap();
    let oras_ref = reg.reference("conv/model:oras");
    python(&format!(
        r#"
import os, oras.client
os.chdir({:?})
files = [os.path.join(dp, f)[2:] for dp, _, fs in os.walk(".") for f in fs if not f.startswith(".")]
oras.client.OrasClient(insecure=True).push(target={oras_ref:?}, files=files, disable_path_validation=True)
"#,
        src.path()
    ));
    let uploads = reg.upload_count();
    let mp_ref = reg.reference("conv/model:modelpack");
    h.run(&["convert", &oras_ref, &mp_ref]).ok();
    assert_eq!(
        reg.upload_count() - uploads,
        2,
        "only the ModelPack config and the chunk index's list are new: every file blob was already there"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&h.run(&["inspect", &mp_ref, "--json"]).ok().stdout).unwrap();
    assert_eq!(
        doc["manifest"]["artifactType"],
        "application/vnd.cncf.model.manifest.v1+json"
    );
    assert_eq!(doc["config"]["descriptor"]["name"], "model");
    pull_same(&h, &mp_ref, src.path(), &[]);

    // Back to ORAS, read by oras-py itself.
    let back = reg.reference("conv/model:back");
    h.run(&["convert", &mp_ref, &back, "--to", "oras"]).ok();
    let out = tempfile::tempdir().unwrap();
    python(&format!(
        "import oras.client; oras.client.OrasClient(insecure=True).pull(target={back:?}, outdir={:?})",
        out.path()
    ));
    assert_eq!(tree(out.path(), false), tree(src.path(), false));
    // To ModelPack with tar+zstd layers, which pulls to the same files.
    let zst = reg.reference("conv/model:zstd");
    h.run(&["convert", &oras_ref, &zst, "--layer-format", "tar+zstd"])
        .ok();
    pull_same(&h, &zst, src.path(), &[]);
}
