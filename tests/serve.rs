//! `hoist serve` against every client we have (hoist, oras-py, skopeo) and curl for the
//! protocol's edge cases, section by section of the distribution spec: pull, push, content
//! discovery, content management.

mod common;

use common::*;

/// Open an upload session on repository `r`; its Location. Checks the spec's 202 answer.
fn start_upload(served: &Served) -> String {
    let (status, headers, _) = curl(&["-X", "POST", &served.url("/v2/r/blobs/uploads/")]);
    assert_eq!(status, 202);
    assert!(headers.contains("oci-chunk-min-length"), "{headers}");
    headers
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .expect("a Location")
        .trim()
        .to_string()
}

/// `PUT` a manifest file with curl: (status, headers, body).
fn put_manifest(file: &std::path::Path, url: &str) -> (u16, String, String) {
    curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "--data-binary",
        &format!("@{}", file.display()),
        url,
    ])
}

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
    pull_same(&h, &reference, src.path(), &["--range-size", "1MiB"]);
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
    let location = start_upload(&served);
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
    let location = start_upload(&served);
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
    let location = start_upload(&served);
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
    let location = start_upload(&served);
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
            "--no-chunk-index",
        ])
        .ok();
    }
    let subject = digest_line(
        &h.run(&[
            "push",
            src.path().to_str().unwrap(),
            &served.reference("m:a"),
            // The referrers listed below are the test's own.
            "--no-chunk-index",
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
    let (status, headers, _) = put_manifest(
        f.path(),
        &served.url(&format!("/v2/m/manifests/{sbom_digest}")),
    );
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
    let (status, _, body) = put_manifest(f.path(), &served.url("/v2/m/manifests/x"));
    assert_eq!(status, 400);
    assert!(body.contains("MANIFEST_BLOB_UNKNOWN"));
    std::fs::write(f.path(), &sbom).unwrap();
    let (status, _, body) = put_manifest(
        f.path(),
        &served.url(&format!("/v2/m/manifests/{cfg_digest}")),
    );
    assert_eq!(status, 400);
    assert!(body.contains("DIGEST_INVALID"));
    std::fs::write(f.path(), vec![b' '; 5 * 1024 * 1024]).unwrap();
    let (status, _, body) = put_manifest(f.path(), &served.url("/v2/m/manifests/huge"));
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

/// `hoist serve --upstream …` on a free port over a fresh store (stopped when dropped).
fn pull_through(upstream: &str, extra: &[&str]) -> Served {
    let mut args = vec!["--upstream", upstream];
    args.extend_from_slice(extra);
    Served::start_free(&args)
}

#[test]
fn pull_through_fetches_each_blob_once_and_serves_from_cache_when_upstream_is_down() {
    let upstream = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    large_model(src.path(), 16);
    small_model(&src.path().join("extra"));
    h.run(&[
        "push",
        src.path().to_str().unwrap(),
        &upstream.reference("cached/model:v1"),
    ])
    .ok();
    // A slow link between the cache and its upstream, so the two pulls overlap.
    let wan = Wan::start(
        &upstream.addr,
        hoist::wan::Link {
            rate: 20_000_000,
            ..Default::default()
        },
    );
    let server = pull_through(&wan.addr(), &[]);
    let addr = server.addr.clone();
    let reference = format!("{addr}/cached/model:v1");
    let gets_before = upstream.blob_get_count();
    let outs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    run_at_once(
        outs.iter()
            .map(|o| {
                let mut c = h.cmd();
                c.args(["pull", &reference, "-o", o.path().to_str().unwrap()]);
                c
            })
            .collect(),
    );
    for o in &outs {
        assert_eq!(tree(src.path(), false), tree(o.path(), false));
    }
    // Distinct non-empty files (pulls never fetch the config; empty files need no request).
    let blobs = tree(src.path(), false)
        .values()
        .filter(|b| !b.is_empty())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let fetched = upstream.blob_get_count() - gets_before;
    assert_eq!(
        fetched,
        blobs,
        "each blob is fetched from upstream once for two concurrent pulls:\n{}",
        upstream
            .log()
            .lines()
            .filter(|l| l.contains("/blobs/sha256:"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The upstream goes away: the cache still serves everything (tags served stale).
    drop(wan);
    drop(upstream);
    let third = tempfile::tempdir().unwrap();
    h.run(&["pull", &reference, "-o", third.path().to_str().unwrap()])
        .ok();
    assert_eq!(tree(src.path(), false), tree(third.path(), false));
    let (_, _, metrics) = curl(&[&format!("http://{addr}/metrics")]);
    assert!(
        metrics.contains("hoist_serve_cache_hits_total"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("hoist_serve_cache_misses_total 0"),
        "{metrics}"
    );
}

#[test]
fn the_cache_size_cap_evicts_least_recently_used_blobs() {
    let upstream = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    h.run(&[
        "push",
        src.path().to_str().unwrap(),
        &upstream.reference("capped:v1"),
    ])
    .ok();
    let server = pull_through(&upstream.addr, &["--cache-size", "1MiB"]);
    let addr = server.addr.clone();
    pull_same(&h, &format!("{addr}/capped:v1"), src.path(), &[]);
    let store = hoist::store::Store::open(server.root.path()).unwrap();
    let largest = 3 * 1024 * 1024 + 17;
    assert!(
        store.total_blob_bytes() <= (1 << 20) + largest,
        "the store grew past its cap: {}",
        store.total_blob_bytes()
    );
}

#[test]
fn gc_spares_a_push_in_progress_and_removes_what_no_tag_reaches() {
    let h = Hoist::new();
    let a = tempfile::tempdir().unwrap();
    small_model(a.path());
    let b = tempfile::tempdir().unwrap();
    std::fs::write(b.path().join("other.bin"), noise(500_000, 11)).unwrap();
    // Without chunk indexes: the blobs counted below are the models'.
    h.run(&[
        "push",
        a.path().to_str().unwrap(),
        "kept:v1",
        "--no-chunk-index",
    ])
    .ok();
    h.run(&[
        "push",
        b.path().to_str().unwrap(),
        "gone:v1",
        "--no-chunk-index",
    ])
    .ok();
    let store = hoist::store::Store::open(h.home.path()).unwrap();
    assert!(store.untag("gone", "v1").unwrap());
    // Just pushed: the unreferenced blobs are young, as a push under way would be.
    let r = h.run(&["gc"]).ok();
    assert!(r.stdout.contains("Removed 0"), "{}", r.stdout);
    let r = h.run(&["gc", "--grace", "0"]).ok();
    assert!(
        r.stdout.contains("Removed 3"),
        "manifest, config and other.bin: {}",
        r.stdout
    );
    pull_same(&h, "kept:v1", a.path(), &[]);
}

#[test]
fn access_control_with_basic_auth_tokens_and_anonymous_reads() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = htpasswd(dir.path(), &[("bob", "hunter22")]);
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    for mode in ["basic", "token"] {
        let served = Served::start_free(&[
            "--htpasswd",
            htpasswd.to_str().unwrap(),
            "--auth",
            mode,
            "--anonymous-read",
        ]);
        let h = Hoist::new();
        let reference = served.reference("secure/model:v1");
        let anon = |args: &[&str]| {
            run(h
                .cmd()
                .env("DOCKER_CONFIG", dir.path())
                .env_remove("HOIST_USERNAME")
                .args(args))
        };
        // Anonymous: no push, but reads are allowed.
        anon(&["push", src.path().to_str().unwrap(), &reference]).fails_with(3, "");
        let bob = |args: &[&str]| {
            run(h
                .cmd()
                .env("DOCKER_CONFIG", dir.path())
                .env("HOIST_USERNAME", "bob")
                .env("HOIST_PASSWORD", "hunter22")
                .args(args))
        };
        bob(&["push", src.path().to_str().unwrap(), &reference]).ok();
        let o = tempfile::tempdir().unwrap();
        anon(&["pull", &reference, "-o", o.path().to_str().unwrap()]).ok();
        assert_eq!(tree(src.path(), false), tree(o.path(), false), "{mode}");
        let wrong = run(h
            .cmd()
            .env("DOCKER_CONFIG", dir.path())
            .env("HOIST_USERNAME", "bob")
            .env("HOIST_PASSWORD", "nope")
            .args(["push", src.path().to_str().unwrap(), &reference]));
        wrong.fails_with(
            3,
            "rejected the credentials from HOIST_USERNAME/HOIST_PASSWORD",
        );
        let (status, headers, _) =
            curl(&["-X", "POST", &served.url("/v2/secure/model/blobs/uploads/")]);
        assert_eq!(status, 401);
        let expected = if mode == "basic" {
            "www-authenticate: basic"
        } else {
            "www-authenticate: bearer realm="
        };
        assert!(headers.contains(expected), "{mode}: {headers}");
    }
}

#[test]
fn tls_with_a_ca_file_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = tls_files(dir.path());
    let served = Served::start_free(&["--tls-cert", &cert, "--tls-key", &key]);
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let reference = served.reference("tls/model:v1");
    h.run(&[
        "push",
        src.path().to_str().unwrap(),
        &reference,
        "--ca-file",
        &ca,
    ])
    .ok();
    pull_same(&h, &reference, src.path(), &["--insecure"]);
    // Plain HTTP to a TLS server fails clearly, and writes nothing.
    let parent = tempfile::tempdir().unwrap();
    let o = parent.path().join("o");
    let r = h.run(&[
        "pull",
        &reference,
        "-o",
        o.to_str().unwrap(),
        "--retries",
        "1",
    ]);
    assert_ne!(r.code, 0);
    r.error_line();
    assert!(!o.exists());
}

/// A pull-through cache is read-only to anonymous clients: a push under a cached name is
/// refused (405 UNSUPPORTED, nothing stored) while pulls go on; `--allow-push` opens it, and
/// with `--htpasswd` the access policy decides instead.
#[test]
fn pull_through_cache_refuses_anonymous_pushes_unless_allowed() {
    let upstream = Registry::start();
    let h = Hoist::new();
    let src = push_small(&h, &upstream.reference("cached/model:v1"));
    let cache = pull_through(&upstream.addr, &[]);
    let reference = cache.reference("cached/model:v1");
    pull_same(&h, &reference, src.path(), &[]);
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("weights.bin"), b"another model").unwrap();
    let r = h.run(&["push", other.path().to_str().unwrap(), &reference]);
    assert_ne!(r.code, 0, "the push went through: {}", r.stdout);
    assert!(r.error_line().contains("read-only"), "{}", r.error_line());
    for (method, path) in [
        ("POST", "/v2/cached/model/blobs/uploads/"),
        ("PUT", "/v2/cached/model/manifests/v1"),
        ("DELETE", "/v2/cached/model/manifests/v1"),
    ] {
        let (status, _, body) = curl(&["-X", method, &cache.url(path)]);
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert!(body.contains("UNSUPPORTED"), "{body}");
    }
    pull_same(&h, &reference, src.path(), &[]);
    let open = pull_through(&upstream.addr, &["--allow-push"]);
    h.run(&[
        "push",
        other.path().to_str().unwrap(),
        &open.reference("mine/model:v1"),
    ])
    .ok();
}
