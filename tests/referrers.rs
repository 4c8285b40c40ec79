//! Attach and discover, against a registry with the referrers API (`hoist serve`), one
//! without it (distribution 2.8: the `sha256-<hex>` tag fallback) and the local store.

mod common;

use common::*;

fn graph_round(h: &Hoist, base: &str, tags_url: Option<String>, expect_fallback_tag: bool) {
    let src = push_small(h, &format!("{base}:v1"));
    drop(src);
    let files = tempfile::tempdir().unwrap();
    let sbom = files.path().join("sbom.spdx.json");
    std::fs::write(&sbom, br#"{"spdxVersion":"SPDX-2.3"}"#).unwrap();
    let sig = files.path().join("model.sig");
    std::fs::write(&sig, b"signature bytes").unwrap();
    let subject_ref = format!("{base}:v1");
    let sbom_digest = digest_line(
        &h.run(&[
            "attach",
            &subject_ref,
            sbom.to_str().unwrap(),
            "--artifact-type",
            "application/spdx+json",
            "-a",
            "org.example.tool=hoist",
        ])
        .ok()
        .stdout,
    );
    h.run(&[
        "attach",
        &subject_ref,
        sig.to_str().unwrap(),
        "--artifact-type",
        "application/vnd.dev.sigstore.bundle+json",
    ])
    .ok();
    // A signature of the SBOM: referrers of referrers.
    h.run(&[
        "attach",
        &format!("{base}@{sbom_digest}"),
        sig.to_str().unwrap(),
        "--artifact-type",
        "application/vnd.dev.sigstore.bundle+json",
    ])
    .ok();

    let tree = h.run(&["discover", &subject_ref]).ok().stdout;
    assert_eq!(tree.matches("application/spdx+json").count(), 1, "{tree}");
    assert_eq!(
        tree.matches("application/vnd.dev.sigstore.bundle+json")
            .count(),
        2,
        "{tree}"
    );
    assert!(tree.contains(&sbom_digest));
    let json: serde_json::Value = serde_json::from_str(
        &h.run(&[
            "discover",
            &subject_ref,
            "--format",
            "json",
            "--artifact-type",
            "application/spdx+json",
        ])
        .ok()
        .stdout,
    )
    .unwrap();
    let referrers = json["referrers"].as_array().unwrap();
    assert_eq!(referrers.len(), 1, "filtered by artifact type");
    assert_eq!(referrers[0]["annotations"]["org.example.tool"], "hoist");
    assert_eq!(
        referrers[0]["referrers"][0]["artifactType"], "application/vnd.dev.sigstore.bundle+json",
        "nested signature"
    );
    // pull --include-referrers brings the attachments beside the model, out of its way.
    let out = tempfile::tempdir().unwrap();
    h.run(&[
        "pull",
        &subject_ref,
        "-o",
        out.path().to_str().unwrap(),
        "--include-referrers",
    ])
    .ok();
    assert!(out.path().join("model.safetensors").is_file());
    let pulled = out.path().join(".referrers");
    let folders: Vec<_> = std::fs::read_dir(&pulled)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(folders.len(), 3, "two attachments and the SBOM's signature");
    let sbom_dir = pulled.join(sbom_digest.trim_start_matches("sha256:"));
    assert_eq!(
        std::fs::read(sbom_dir.join("sbom.spdx.json")).unwrap(),
        br#"{"spdxVersion":"SPDX-2.3"}"#
    );
    let about: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sbom_dir.join(".descriptor.json")).unwrap()).unwrap();
    assert_eq!(about["artifactType"], "application/spdx+json");
    if let Some(url) = tags_url {
        let (_, _, body) = curl(&[&url]);
        let has_fallback = body.contains("sha256-");
        assert_eq!(
            has_fallback, expect_fallback_tag,
            "fallback tag expected: {expect_fallback_tag}; tags: {body}"
        );
    }
}

#[test]
fn attach_and_discover_on_distribution_use_the_tag_fallback() {
    let reg = Registry::start();
    graph_round(
        &Hoist::new(),
        &reg.reference("graph/model"),
        Some(format!("http://{}/v2/graph/model/tags/list", reg.addr)),
        true,
    );
}

#[test]
fn attach_and_discover_on_hoist_serve_use_the_referrers_api() {
    let served = Served::start();
    graph_round(
        &Hoist::new(),
        &served.reference("graph/model"),
        Some(served.url("/v2/graph/model/tags/list")),
        false,
    );
}

#[test]
fn attach_and_discover_in_the_local_store() {
    graph_round(&Hoist::new(), "graph/model", None, false);
}

#[test]
fn copy_recursive_carries_attachments_between_registries() {
    let from = Registry::start();
    let to = Served::start();
    let h = Hoist::new();
    let base = from.reference("graph/model");
    graph_round(&h, &base, None, true);
    h.run(&[
        "copy",
        "-r",
        &format!("{base}:v1"),
        &to.reference("copied/model:v1"),
    ])
    .ok();
    let tree = h
        .run(&["discover", &to.reference("copied/model:v1")])
        .ok()
        .stdout;
    assert_eq!(tree.matches("application/spdx+json").count(), 1, "{tree}");
    assert_eq!(
        tree.matches("application/vnd.dev.sigstore.bundle+json")
            .count(),
        2,
        "nested ones too: {tree}"
    );
    // And into a registry without the referrers API (the tag fallback).
    let plain = Registry::start();
    h.run(&[
        "copy",
        "--recursive",
        &format!("{base}:v1"),
        &plain.reference("copied/model:v1"),
    ])
    .ok();
    let tree = h
        .run(&["discover", &plain.reference("copied/model:v1")])
        .ok()
        .stdout;
    assert_eq!(
        tree.matches("sha256:").count(),
        5,
        "subject + 3 referrers + the chunk index push attached: {tree}"
    );
}
