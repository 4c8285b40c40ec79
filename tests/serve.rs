//! `hoist serve` against every client we have (hoist, oras-py, skopeo) and curl for the
//! protocol's edge cases, section by section of the distribution spec: pull, push, content
//! discovery, content management.

mod common;

use common::*;

fn digest_of(bytes: &[u8]) -> String {
    hoist::digest::Digest::of_bytes(bytes).to_string()
}

#[test]
fn pull_and_push_with_hoist_oras_py_and_skopeo() {
    let served = Served::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    // hoist push and pull (ranged: 1 MiB ranges over the 3 MiB weights).
    let reference = served.reference("team/model:v1");
    let digest = digest_line(
        &h.run(&[
            "push",
            src.path().to_str().unwrap(),
            &reference,
            "--chunk-size",
            "1MiB",
        ])
        .ok()
        .stdout,
    );
    let out = tempfile::tempdir().unwrap();
    h.run(&[
        "pull",
        &reference,
        "-o",
        out.path().to_str().unwrap(),
        "--range-size",
        "1MiB",
    ])
    .ok();
    assert_eq!(tree(src.path(), false), tree(out.path(), false));
    // The store it serves is the local store: the same artifact under the same name.
    let local = Hoist {
        home: tempfile::tempdir().unwrap(),
    };
    std::fs::remove_dir_all(local.home.path()).unwrap();
    std::os::unix::fs::symlink(served.root.path(), local.home.path()).unwrap();
    assert!(local.run(&["list"]).ok().stdout.contains("team/model:v1"));
    assert!(local
        .run(&["inspect", "team/model:v1"])
        .ok()
        .stdout
        .contains(&digest));

    // oras-py pulls what hoist pushed, and pushes its own.
    let oras_out = tempfile::tempdir().unwrap();
    python(&format!(
        "import oras.client\nc = oras.client.OrasClient(insecure=True)\nc.pull(target={reference:?}, outdir={:?})",
        oras_out.path()
    ));
    assert_eq!(tree(src.path(), false), tree(oras_out.path(), false));
    let mine = tempfile::tempdir().unwrap();
    std::fs::write(mine.path().join("w.bin"), noise(1_500_000, 3)).unwrap();
    std::fs::write(mine.path().join("c.json"), b"{}").unwrap();
    let oras_ref = served.reference("from-oras:v1");
    python(&format!(
        "import os, oras.client\nos.chdir({:?})\nr = oras.client.OrasClient(insecure=True).push(target={oras_ref:?}, files=['w.bin', 'c.json'], disable_path_validation=True)\nassert r.status_code in (200, 201), r",
        mine.path()
    ));
    let back = tempfile::tempdir().unwrap();
    h.run(&["pull", &oras_ref, "-o", back.path().to_str().unwrap()])
        .ok();
    assert_eq!(tree(mine.path(), false), tree(back.path(), false));

    // skopeo copies in and out, unchanged.
    let layout = tempfile::tempdir().unwrap();
    let skopeo = |from: String, to: String| {
        let r = run(std::process::Command::new("skopeo").args([
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &from,
            &to,
        ]));
        assert_eq!(r.code, 0, "skopeo copy {from} {to}: {}", r.stderr);
    };
    skopeo(
        format!("docker://{reference}"),
        format!("oci:{}:v1", layout.path().display()),
    );
    skopeo(
        format!("oci:{}:v1", layout.path().display()),
        format!("docker://{}", served.reference("via-skopeo:v1")),
    );
    assert!(h
        .run(&["inspect", &served.reference("via-skopeo:v1")])
        .ok()
        .stdout
        .contains(&digest));
}

#[test]
fn blobs_ranges_and_chunked_uploads_follow_the_spec() {
    let served = Served::start();
    let data = noise(300_000, 5);
    let digest = digest_of(&data);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &data).unwrap();
    let f = file.path().to_str().unwrap();
    // Monolithic POST with a digest.
    let (status, headers, _) = curl(&[
        "-X",
        "POST",
        "--data-binary",
        &format!("@{f}"),
        "-H",
        "Content-Type: application/octet-stream",
        &served.url(&format!("/v2/r/blobs/uploads/?digest={digest}")),
    ]);
    assert_eq!(status, 201, "{headers}");
    assert!(headers.contains(&format!("docker-content-digest: {digest}")));
    // Ranges: 206 with the right bytes, suffix ranges, 416 past the end.
    let blob = served.url(&format!("/v2/r/blobs/{digest}"));
    let out = std::process::Command::new("curl")
        .args(["-s", "-r", "1000-1999", &blob])
        .output()
        .unwrap();
    assert_eq!(out.stdout, &data[1000..2000]);
    let (status, headers, _) = curl(&["-r", "-100", &blob]);
    assert_eq!(status, 206);
    assert!(
        headers.contains("content-range: bytes 299900-299999/300000"),
        "{headers}"
    );
    let (status, headers, body) = curl(&["-r", "400000-", &blob]);
    assert_eq!(status, 416);
    assert!(headers.contains("content-range: bytes */300000") && body.contains("RANGE_INVALID"));
    let (status, headers, _) = curl(&["-I", &blob]);
    assert_eq!(status, 200);
    assert!(headers.contains("content-length: 300000") && headers.contains("accept-ranges: bytes"));

    // Chunked upload: in order works, out of order is 416, status and cancel work.
    let (status, headers, _) = curl(&["-X", "POST", &served.url("/v2/r/blobs/uploads/")]);
    assert_eq!(status, 202);
    assert!(headers.contains("oci-chunk-min-length"));
    let location = headers
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .trim()
        .to_string();
    let first = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(first.path(), &data[..100_000]).unwrap();
    let rest = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(rest.path(), &data[100_000..]).unwrap();
    let patch = |path: &std::path::Path, range: &str| {
        curl(&[
            "-X",
            "PATCH",
            "--data-binary",
            &format!("@{}", path.display()),
            "-H",
            &format!("Content-Range: {range}"),
            "-H",
            "Content-Type: application/octet-stream",
            &served.url(&location),
        ])
    };
    let (status, _, body) = patch(rest.path(), "100000-299999");
    assert_eq!(status, 416, "an out-of-order chunk is refused: {body}");
    let (status, headers, _) = patch(first.path(), "0-99999");
    assert_eq!(status, 202);
    assert!(headers.contains("range: 0-99999"), "{headers}");
    let (status, headers, _) = curl(&[&served.url(&location)]);
    assert_eq!(status, 204);
    assert!(headers.contains("range: 0-99999"));
    assert_eq!(patch(rest.path(), "100000-299999").0, 202);
    let (status, _, _) = curl(&[
        "-X",
        "PUT",
        &served.url(&format!("{location}?digest={digest}")),
    ]);
    assert_eq!(status, 201);

    // A wrong digest is refused and nothing is stored under it.
    let (_, headers, _) = curl(&["-X", "POST", &served.url("/v2/r/blobs/uploads/")]);
    let location = headers
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .trim()
        .to_string();
    let wrong = digest_of(b"something else");
    let (status, _, body) = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        &format!("@{f}"),
        &served.url(&format!("{location}?digest={wrong}")),
    ]);
    assert_eq!(status, 400);
    assert!(body.contains("DIGEST_INVALID"));
    assert_eq!(
        curl(&["-I", &served.url(&format!("/v2/r/blobs/{wrong}"))]).0,
        404
    );
    // Cancel.
    let (_, headers, _) = curl(&["-X", "POST", &served.url("/v2/r/blobs/uploads/")]);
    let location = headers
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(curl(&["-X", "DELETE", &served.url(&location)]).0, 204);
    assert_eq!(curl(&[&served.url(&location)]).0, 404);
    // Cross-repository mount of a blob that is here.
    let (status, headers, _) = curl(&[
        "-X",
        "POST",
        &served.url(&format!("/v2/other/blobs/uploads/?mount={digest}&from=r")),
    ]);
    assert_eq!(status, 201);
    assert!(headers.contains(&format!("location: /v2/other/blobs/{digest}")));
    // Delete.
    assert_eq!(curl(&["-X", "DELETE", &blob]).0, 202);
    let (status, _, body) = curl(&[&blob]);
    assert_eq!(status, 404);
    assert!(body.contains("BLOB_UNKNOWN"));
}

#[test]
fn an_upload_survives_a_server_restart() {
    let served = Served::start();
    let data = noise(200_000, 7);
    let digest = digest_of(&data);
    let (_, headers, _) = curl(&["-X", "POST", &served.url("/v2/r/blobs/uploads/")]);
    let location = headers
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .trim()
        .to_string();
    let part = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(part.path(), &data[..50_000]).unwrap();
    assert_eq!(
        curl(&[
            "-X",
            "PATCH",
            "--data-binary",
            &format!("@{}", part.path().display()),
            "-H",
            "Content-Range: 0-49999",
            &served.url(&location)
        ])
        .0,
        202
    );
    let (root, port) = served.stop();
    let served = Served::start_on(root, port);
    let (status, headers, _) = curl(&[&served.url(&location)]);
    assert_eq!(status, 204);
    assert!(headers.contains("range: 0-49999"));
    std::fs::write(part.path(), &data[50_000..]).unwrap();
    let (status, _, body) = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        &format!("@{}", part.path().display()),
        "-H",
        "Content-Range: 50000-199999",
        &served.url(&format!("{location}?digest={digest}")),
    ]);
    assert_eq!(status, 201, "{body}");
    let out = std::process::Command::new("curl")
        .args(["-s", &served.url(&format!("/v2/r/blobs/{digest}"))])
        .output()
        .unwrap();
    assert_eq!(out.stdout, data);
}

#[test]
fn manifests_tags_referrers_and_errors() {
    let served = Served::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    for tag in ["a", "b", "c", "d"] {
        h.run(&[
            "push",
            src.path().to_str().unwrap(),
            &served.reference(&format!("m:{tag}")),
        ])
        .ok();
    }
    let subject = digest_line(
        &h.run(&[
            "push",
            src.path().to_str().unwrap(),
            &served.reference("m:a"),
        ])
        .ok()
        .stdout,
    );
    // Tag listing with pagination and a Link to the next page.
    let (status, headers, body) = curl(&[&served.url("/v2/m/tags/list?n=2")]);
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["tags"],
        serde_json::json!(["a", "b"])
    );
    assert!(
        headers.contains("link: </v2/m/tags/list?n=2&last=b>; rel=\"next\""),
        "{headers}"
    );
    let (_, _, body) = curl(&[&served.url("/v2/m/tags/list?n=2&last=b")]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["tags"],
        serde_json::json!(["c", "d"])
    );
    assert!(curl(&[&served.url("/v2/nope/tags/list")])
        .2
        .contains("NAME_UNKNOWN"));

    // A manifest with a subject: OCI-Subject on PUT, listed by the referrers API.
    let config = b"{}";
    let cfg_digest = digest_of(config);
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), config).unwrap();
    curl(&[
        "-X",
        "POST",
        "--data-binary",
        &format!("@{}", f.path().display()),
        &served.url(&format!("/v2/m/blobs/uploads/?digest={cfg_digest}")),
    ]);
    let size = curl(&["-I", &served.url(&format!("/v2/m/manifests/{subject}"))])
        .1
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse::<u64>()
        .unwrap();
    let sbom = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/spdx+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cfg_digest, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": cfg_digest, "size": 2}],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": size},
    })
    .to_string();
    std::fs::write(f.path(), &sbom).unwrap();
    let sbom_digest = digest_of(sbom.as_bytes());
    let (status, headers, _) = curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "--data-binary",
        &format!("@{}", f.path().display()),
        &served.url(&format!("/v2/m/manifests/{sbom_digest}")),
    ]);
    assert_eq!(status, 201);
    assert!(
        headers.contains(&format!("oci-subject: {subject}")),
        "{headers}"
    );
    let (_, _, body) = curl(&[&served.url(&format!("/v2/m/referrers/{subject}"))]);
    let index: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(index["manifests"][0]["digest"], sbom_digest);
    assert_eq!(
        index["manifests"][0]["artifactType"],
        "application/spdx+json"
    );
    let (_, headers, body) = curl(&[&served.url(&format!(
        "/v2/m/referrers/{subject}?artifactType=application/x-other"
    ))]);
    assert!(headers.contains("oci-filters-applied: artifacttype"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["manifests"],
        serde_json::json!([])
    );

    // Errors: unknown blobs named by a manifest, a digest that does not match, a huge
    // manifest, a name with `..`.
    let missing = sbom.replace(&cfg_digest, &digest_of(b"absent"));
    std::fs::write(f.path(), &missing).unwrap();
    let (status, _, body) = curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "--data-binary",
        &format!("@{}", f.path().display()),
        &served.url("/v2/m/manifests/x"),
    ]);
    assert_eq!(status, 400);
    assert!(body.contains("MANIFEST_BLOB_UNKNOWN"));
    std::fs::write(f.path(), &sbom).unwrap();
    let (status, _, body) = curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "--data-binary",
        &format!("@{}", f.path().display()),
        &served.url(&format!("/v2/m/manifests/{cfg_digest}")),
    ]);
    assert_eq!(status, 400);
    assert!(body.contains("DIGEST_INVALID"));
    std::fs::write(f.path(), vec![b' '; 5 * 1024 * 1024]).unwrap();
    let (status, _, body) = curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "--data-binary",
        &format!("@{}", f.path().display()),
        &served.url("/v2/m/manifests/huge"),
    ]);
    assert_eq!(status, 413);
    assert!(body.contains("MANIFEST_INVALID"));
    let (status, _, body) = curl(&["--path-as-is", &served.url("/v2/a/../b/tags/list")]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("NAME_INVALID"));
    assert!(served.root.path().join("index.json").exists());
    assert!(
        !std::fs::read_to_string(served.root.path().join("index.json"))
            .unwrap()
            .contains("huge")
    );

    // Deleting a tag, then a manifest by digest.
    assert_eq!(
        curl(&["-X", "DELETE", &served.url("/v2/m/manifests/d")]).0,
        202
    );
    assert_eq!(curl(&["-I", &served.url("/v2/m/manifests/d")]).0, 404);
    assert_eq!(
        curl(&[
            "-X",
            "DELETE",
            &served.url(&format!("/v2/m/manifests/{subject}"))
        ])
        .0,
        202
    );
    let (_, _, body) = curl(&[&served.url("/v2/m/tags/list")]);
    assert!(
        body.contains("NAME_UNKNOWN"),
        "every tag pointed at the deleted manifest: {body}"
    );
}
