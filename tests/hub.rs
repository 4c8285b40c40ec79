//! `hoist copy hf://…`: the Hugging Face Hub to a registry in one streamed command, against
//! a Hub stand-in (tests/common/hub.rs) that the official `huggingface_hub` client reads.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::hub::{commit_of, files_of, hoist_for, HubFile, HubRepoSpec, HubStandIn};
use common::*;

const REPO: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// The real model as one repository at one commit (`main` and tag `v1` name it).
fn real_repo() -> HubRepoSpec {
    let commit = commit_of("real");
    let mut spec = HubRepoSpec::default();
    spec.refs.insert("main".into(), commit.clone());
    spec.refs.insert("v1".into(), commit.clone());
    spec.commits.insert(commit, files_of(&real_model()));
    spec
}

fn stand_in(repos: Vec<(&str, HubRepoSpec)>) -> HubStandIn {
    HubStandIn::start(repos.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn manifest(reg: &Registry, repo: &str, tag: &str) -> serde_json::Value {
    let (status, _, body) = curl(&[
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!("http://{}/v2/{repo}/manifests/{tag}", reg.addr),
    ]);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn blob_json(reg: &Registry, repo: &str, digest: &str) -> serde_json::Value {
    let (status, _, body) = curl(&[&format!("http://{}/v2/{repo}/blobs/{digest}", reg.addr)]);
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

/// Each layer of a manifest as (title, media type), in order.
fn layers(manifest: &serde_json::Value) -> Vec<(&str, &str)> {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["annotations"]["org.opencontainers.image.title"]
                    .as_str()
                    .unwrap(),
                l["mediaType"].as_str().unwrap(),
            )
        })
        .collect()
}

/// The titles of a manifest's layers, in order.
fn titles(manifest: &serde_json::Value) -> Vec<&str> {
    layers(manifest)
        .into_iter()
        .map(|(title, _)| title)
        .collect()
}

/// The files a model folder holds, as a pull or a download leaves them (hidden ones out).
fn visible(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    tree(dir, false)
}

#[test]
fn the_stand_in_serves_the_official_client() {
    let hub = stand_in(vec![(REPO, real_repo())]);
    let out = tempfile::tempdir().unwrap();
    python(&format!(
        r#"
import os
os.environ["HF_ENDPOINT"] = "{endpoint}"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HOME"] = "{out}/home"
from huggingface_hub import snapshot_download
snapshot_download("{REPO}", local_dir="{out}/local")
snapshot_download("{REPO}", revision="v1", cache_dir="{out}/cache")
"#,
        endpoint = hub.endpoint,
        out = out.path().display()
    ));
    let source = visible(&real_model());
    assert_eq!(visible(&out.path().join("local")), source);
    let snapshots = out
        .path()
        .join("cache/models--sentence-transformers--all-MiniLM-L6-v2/snapshots")
        .join(commit_of("real"));
    assert_eq!(
        visible(&snapshots),
        source,
        "the cache snapshot (links into blobs/)"
    );
    // The official client went to the CDN host for the LFS file, as with the real Hub.
    assert!(!hub.cdn_requests().is_empty());
}

#[test]
fn the_real_model_goes_from_the_hub_to_a_registry_and_back_identical() {
    let hub = stand_in(vec![(REPO, real_repo())]);
    let reg = Registry::start();
    let h = Hoist::new();
    let dest = reg.reference("hub/minilm");
    let first = run(hoist_for(&h, &hub)
        .env("HF_TOKEN", "hf_secret_token")
        .args(["copy", &format!("hf://{REPO}"), &dest, "--json"]))
    .ok();
    let report: serde_json::Value = serde_json::from_str(&first.stdout).unwrap();
    assert_eq!(report["commit"], commit_of("real"));
    let listed = visible(&real_model()).len();
    assert_eq!(report["files"], listed);
    assert_eq!(report["uploaded"], listed);

    // The artifact push makes: ModelPack, one titled layer per file, the model described
    // from its config.json and safetensors header, the source and commit recorded.
    let m = manifest(&reg, "hub/minilm", "latest");
    assert_eq!(
        m["artifactType"],
        "application/vnd.cncf.model.manifest.v1+json"
    );
    assert_eq!(
        m["annotations"]["org.opencontainers.image.source"],
        format!("{}/{REPO}", hub.endpoint)
    );
    assert_eq!(
        m["annotations"]["org.opencontainers.image.revision"],
        commit_of("real")
    );
    let config = blob_json(&reg, "hub/minilm", m["config"]["digest"].as_str().unwrap());
    assert_eq!(config["descriptor"]["name"], REPO);
    assert_eq!(config["config"]["paramSize"], "22.7m");
    assert_eq!(config["config"]["architecture"], "BertModel");
    assert!(
        report["chunk_index"].is_string(),
        "a chunk index is attached"
    );

    // Pulled back: the same files; and the model opens with safetensors.
    let out = tempfile::tempdir().unwrap();
    h.run(&["pull", &dest, "-o", out.path().to_str().unwrap()])
        .ok();
    assert_eq!(visible(out.path()), visible(&real_model()));
    python(&format!(
        "from safetensors import safe_open\nf = safe_open('{}/model.safetensors', 'np')\nassert f.get_tensor('embeddings.word_embeddings.weight').shape == (30522, 384)",
        out.path().display()
    ));

    // The token went to the Hub's API and never to the CDN host.
    let cdn = hub.cdn_requests();
    assert!(!cdn.is_empty(), "the LFS file came from the CDN host");
    assert!(cdn.iter().all(|s| s.authorization.is_none()), "{cdn:?}");
    assert!(hub
        .seen()
        .iter()
        .filter(|s| s.path.starts_with("/api/"))
        .all(|s| s.authorization.as_deref() == Some("Bearer hf_secret_token")));

    // Reproducible: the same commit, named by tag or by commit, gives the same digest; the
    // destination has every blob, so nothing is uploaded again or read from the CDN.
    let cdn_before = hub.cdn_requests().len();
    let again = run(hoist_for(&h, &hub).args([
        "copy",
        &format!("hf://{REPO}@{}", commit_of("real")),
        &reg.reference("hub/minilm:pinned"),
        "--json",
    ]))
    .ok();
    let again: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(again["digest"], report["digest"]);
    assert_eq!(again["uploaded"], 0);
    let cdn_after = hub.cdn_requests().len();
    assert_eq!(
        cdn_after, cdn_before,
        "the weights were read back from the registry"
    );
}

#[test]
fn a_hostile_file_list_is_refused_before_anything_is_sent() {
    let reg = Registry::start();
    let h = Hoist::new();
    for (path, size, lfs, needle) in [
        ("../escape.json", 10, false, "contains '..'"),
        ("/etc/passwd", 10, false, "is absolute"),
        ("a/./b.json", 10, false, "not in plain form"),
        ("big.json", 17 << 20, false, "outside LFS"),
    ] {
        let spec = HubRepoSpec::at_main(
            path,
            vec![
                HubFile::new("config.json", b"{}".to_vec(), false),
                HubFile::new(path, vec![b'x'; size], lfs),
            ],
        );
        let hub = stand_in(vec![("org/hostile", spec)]);
        run(hoist_for(&h, &hub).args([
            "copy",
            "hf://org/hostile",
            &reg.reference("org/hostile:v1"),
        ]))
        .fails_with(8, needle);
        let (status, _, _) = curl(&[&format!("http://{}/v2/org/hostile/manifests/v1", reg.addr)]);
        assert_eq!(status, 404, "{path}");
        assert_eq!(reg.upload_count(), 0, "{path}: nothing was sent");
    }
}

#[test]
fn revisions_pin_commits_and_a_wrong_one_is_not_found() {
    let (old, new) = (commit_of("old"), commit_of("new"));
    let file = |path: &str, bytes: &[u8], lfs: bool| HubFile::new(path, bytes.to_vec(), lfs);
    let mut spec = HubRepoSpec::default();
    spec.refs.insert("main".into(), new.clone());
    spec.refs.insert("v1.0".into(), old.clone());
    spec.commits.insert(
        old.clone(),
        vec![
            file("config.json", b"{\"model_type\":\"x\"}", false),
            file("w.bin", &noise(300_000, 1), true),
        ],
    );
    spec.commits.insert(
        new.clone(),
        vec![
            file("config.json", b"{\"model_type\":\"y\"}", false),
            file("w.bin", &noise(300_000, 2), true),
        ],
    );
    let hub = stand_in(vec![("org/model", spec)]);
    let reg = Registry::start();
    let h = Hoist::new();
    // A tag as revision: that commit's files, tagged with the revision's name.
    run(hoist_for(&h, &hub).args(["copy", "hf://org/model@v1.0", &reg.reference("org/model")]))
        .ok();
    let m = manifest(&reg, "org/model", "v1.0");
    assert_eq!(m["annotations"]["org.opencontainers.image.revision"], old);
    let out = tempfile::tempdir().unwrap();
    h.run(&[
        "pull",
        &reg.reference("org/model:v1.0"),
        "-o",
        out.path().to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        std::fs::read(out.path().join("w.bin")).unwrap(),
        noise(300_000, 1)
    );
    // No revision: main.
    run(hoist_for(&h, &hub).args(["copy", "hf://org/model", &reg.reference("org/model")])).ok();
    assert_eq!(
        manifest(&reg, "org/model", "latest")["annotations"]["org.opencontainers.image.revision"],
        new
    );
    // A revision the repository does not have: exit 4 with the Hub's words, nothing tagged.
    run(hoist_for(&h, &hub).args(["copy", "hf://org/model@v9", &reg.reference("org/model:v9")]))
        .fails_with(4, "Invalid rev id: v9");
    let (status, _, _) = curl(&[&format!("http://{}/v2/org/model/manifests/v9", reg.addr)]);
    assert_eq!(status, 404);
    run(hoist_for(&h, &hub).args(["copy", "hf://org/missing", &reg.reference("x/y")]))
        .fails_with(3, "Repository Not Found");
}

#[test]
fn a_gated_repository_needs_a_token_from_the_environment_or_the_token_file() {
    let mut spec = real_repo();
    spec.gated_token = Some("hf_granted".into());
    let hub = stand_in(vec![("meta/gated", spec)]);
    let reg = Registry::start();
    let h = Hoist::new();
    let dest = reg.reference("meta/gated:v1");
    let refused = run(hoist_for(&h, &hub).args(["copy", "hf://meta/gated", &dest]))
        .fails_with(3, "Access to model meta/gated is restricted");
    assert!(
        refused.error_line().contains("HF_TOKEN"),
        "{}",
        refused.stderr
    );
    run(hoist_for(&h, &hub)
        .env("HF_TOKEN", "hf_wrong")
        .args(["copy", "hf://meta/gated", &dest]))
    .fails_with(3, "restricted");
    run(hoist_for(&h, &hub)
        .env("HF_TOKEN", "hf_granted")
        .args(["copy", "hf://meta/gated", &dest]))
    .ok();
    // `hf auth login` saves the token as HF_HOME/token.
    let home = h.home.path().join("hf-home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("token"), "hf_granted\n").unwrap();
    run(hoist_for(&h, &hub).args(["copy", "hf://meta/gated", &reg.reference("meta/gated:v2")]))
        .ok();
    assert!(hub.cdn_requests().iter().all(|s| s.authorization.is_none()));
}

#[test]
fn a_broken_connection_resumes_and_throttling_is_waited_out() {
    let hub = stand_in(vec![(REPO, real_repo())]);
    let weights = std::fs::read(real_model().join("model.safetensors")).unwrap();
    hub.faults(|f| {
        f.cut = Some((common::hub::sha256_hex(&weights), 5_000_000));
        f.throttle_once = Some("/tree/".into());
    });
    let reg = Registry::start();
    let h = Hoist::new();
    let dest = reg.reference("hub/resumed");
    let copied =
        run(hoist_for(&h, &hub).args(["copy", &format!("hf://{REPO}"), &dest, "--json"])).ok();
    let report: serde_json::Value = serde_json::from_str(&copied.stdout).unwrap();
    assert!(
        report["resumed"].as_u64() >= Some(1),
        "a read taken up again: {report}"
    );
    // Not started over: one read from the start, every later one (one, unless a slow machine
    // made a read stall again) takes up where the bytes stopped.
    let cdn = hub.cdn_requests();
    assert_eq!(cdn[0].range_start(), 0, "{cdn:?}");
    assert!(cdn.len() >= 2, "{cdn:?}");
    assert!(
        cdn[1..].iter().all(|s| s.range_start() > 0),
        "the file was started over: {cdn:?}"
    );
    let out = tempfile::tempdir().unwrap();
    h.run(&["pull", &dest, "-o", out.path().to_str().unwrap()])
        .ok();
    assert_eq!(
        std::fs::read(out.path().join("model.safetensors")).unwrap(),
        weights
    );
}

#[test]
fn bytes_that_are_not_the_hubs_are_never_published() {
    let hub = stand_in(vec![(REPO, real_repo())]);
    hub.faults(|f| f.corrupt = Some("model.safetensors".into()));
    let reg = Registry::start();
    let h = Hoist::new();
    run(hoist_for(&h, &hub).args([
        "copy",
        &format!("hf://{REPO}"),
        &reg.reference("hub/bad:v1"),
    ]))
    .fails_with(6, "model.safetensors");
    let (status, _, _) = curl(&[&format!("http://{}/v2/hub/bad/manifests/v1", reg.addr)]);
    assert_eq!(status, 404, "no manifest");
    let weights = std::fs::read(real_model().join("model.safetensors")).unwrap();
    let digest = hoist::digest::Digest::of_bytes(&weights);
    for blob in [
        digest.to_string(),
        hoist::digest::Digest::of_bytes(&{
            let mut w = weights.clone();
            let last = w.len() - 1;
            w[last] ^= 0xff;
            w
        })
        .to_string(),
    ] {
        let (status, _, _) = curl(&[
            "-I",
            &format!("http://{}/v2/hub/bad/blobs/{blob}", reg.addr),
        ]);
        assert_eq!(status, 404, "no blob of the weights was completed");
    }
}

#[test]
fn globs_pick_files_and_datasets_are_dataset_layers() {
    let file = |path: &str, bytes: Vec<u8>| {
        HubFile::new(
            path,
            bytes,
            path.ends_with(".gguf") || path.ends_with(".parquet"),
        )
    };
    let model = HubRepoSpec::at_main(
        "gguf",
        vec![
            file("README.md", b"---\nlicense: mit\n---\n".to_vec()),
            file("model-Q4_K_M.gguf", noise(200_000, 3)),
            file("model-Q8_0.gguf", noise(300_000, 4)),
            file(".gitattributes", b"*.gguf filter=lfs".to_vec()),
        ],
    );
    let data = HubRepoSpec {
        dataset: true,
        ..HubRepoSpec::at_main(
            "data",
            vec![
                file("README.md", b"# a set".to_vec()),
                file("train/part-0.parquet", noise(100_000, 5)),
                file("labels.txt", b"a\nb\n".to_vec()),
            ],
        )
    };
    let hub = stand_in(vec![("org/gguf", model), ("org/set", data)]);
    let reg = Registry::start();
    let h = Hoist::new();
    run(hoist_for(&h, &hub).args([
        "copy",
        "hf://org/gguf",
        &reg.reference("org/gguf:q4"),
        "--include",
        "*Q4_K_M*",
        "--include",
        "README.md",
    ]))
    .ok();
    let m = manifest(&reg, "org/gguf", "q4");
    assert_eq!(
        titles(&m),
        ["README.md", "model-Q4_K_M.gguf"],
        "no .gitattributes, no Q8"
    );
    let config = blob_json(&reg, "org/gguf", m["config"]["digest"].as_str().unwrap());
    assert_eq!(config["descriptor"]["licenses"], serde_json::json!(["mit"]));
    run(hoist_for(&h, &hub).args([
        "copy",
        "hf://org/gguf",
        &reg.reference("org/gguf:none"),
        "--include",
        "*.safetensors",
    ]))
    .fails_with(2, "model-Q8_0.gguf");

    run(hoist_for(&h, &hub).args([
        "copy",
        "hf://datasets/org/set",
        &reg.reference("org/set:v1"),
    ]))
    .ok();
    let m = manifest(&reg, "org/set", "v1");
    let kinds: BTreeMap<&str, &str> = layers(&m).into_iter().collect();
    assert_eq!(kinds["README.md"], "application/vnd.cncf.model.doc.v1.raw");
    assert_eq!(
        kinds["train/part-0.parquet"],
        "application/vnd.cncf.model.dataset.v1.raw"
    );
    assert_eq!(
        kinds["labels.txt"],
        "application/vnd.cncf.model.dataset.v1.raw"
    );
    // Copied again without a chunk index: a file the registry has, and whose header says
    // nothing of the model, is not read back from it.
    let gets = reg.blob_get_count();
    run(hoist_for(&h, &hub).args([
        "copy",
        "hf://datasets/org/set",
        &reg.reference("org/set:v1b"),
        "--no-chunk-index",
    ]))
    .ok();
    assert_eq!(reg.blob_get_count(), gets, "nothing read back");
    // A model repository is not a dataset: the kinds must match, as on the Hub.
    run(hoist_for(&h, &hub).args(["copy", "hf://org/set", &reg.reference("org/set:v2")]))
        .fails_with(3, "Repository Not Found");
}

/// Run `cmd` and return its peak RSS. Started by a small Python parent, not by this test:
/// a child forked from this process (which holds the stand-in's 400 MiB) counts those
/// pages in its peak until it execs.
fn peak_of(cmd: &std::process::Command) -> (Run, u64) {
    let mut py = std::process::Command::new("python3");
    py.args([
        "-c",
        "import resource, subprocess, sys\n\
         r = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, capture_output=True)\n\
         sys.stdout.buffer.write(r.stdout)\n\
         sys.stderr.buffer.write(r.stderr)\n\
         print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
         sys.exit(r.returncode)",
    ])
    .arg(cmd.get_program())
    .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => py.env(k, v),
            None => py.env_remove(k),
        };
    }
    let mut out = run(&mut py);
    let last = out
        .stdout
        .trim_end()
        .rsplit('\n')
        .next()
        .unwrap_or("")
        .to_string();
    let kib: u64 = last
        .parse()
        .unwrap_or_else(|_| panic!("no peak in {:?}", out.stdout));
    out.stdout
        .truncate(out.stdout.trim_end().len() - last.len());
    (out, kib * 1024)
}

#[test]
fn memory_stays_bounded_while_a_large_file_streams() {
    let big = 400 << 20;
    let spec = HubRepoSpec::at_main(
        "big",
        vec![HubFile::new("weights.bin", noise(big, 9), true)],
    );
    let hub = stand_in(vec![("org/big", spec)]);
    let reg = Registry::start();
    let h = Hoist::new();
    let mut cmd = hoist_for(&h, &hub);
    cmd.args(["copy", "hf://org/big", &reg.reference("org/big:v1")]);
    let (run, rss) = peak_of(&cmd);
    let run = run.ok();
    assert!(run.stdout.contains("Digest: sha256:"), "{}", run.stdout);
    eprintln!("peak RSS of a {} MiB copy: {} MiB", big >> 20, rss >> 20);
    assert!(rss < 100 << 20, "peak RSS {} MiB", rss >> 20);
}

#[test]
fn hub_cache_and_local_dir_folders_push_as_they_are() {
    let hub = stand_in(vec![(REPO, real_repo())]);
    let dl = tempfile::tempdir().unwrap();
    python(&format!(
        r#"
import os
os.environ["HF_ENDPOINT"] = "{endpoint}"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
from huggingface_hub import snapshot_download
snapshot_download("{REPO}", cache_dir="{dl}/cache")
snapshot_download("{REPO}", local_dir="{dl}/local")
"#,
        endpoint = hub.endpoint,
        dl = dl.path().display()
    ));
    let reg = Registry::start();
    let h = Hoist::new();
    let snapshot = dl
        .path()
        .join("cache/models--sentence-transformers--all-MiniLM-L6-v2/snapshots")
        .join(commit_of("real"));
    assert!(
        std::fs::symlink_metadata(snapshot.join("model.safetensors"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    h.run(&[
        "push",
        snapshot.to_str().unwrap(),
        &reg.reference("hub/cache:v1"),
    ])
    .ok();
    assert!(dl.path().join("local/.cache/huggingface").exists());
    let local_dir = dl.path().join("local");
    h.run(&[
        "push",
        local_dir.to_str().unwrap(),
        &reg.reference("hub/local:v1"),
    ])
    .ok();
    // Even with hidden files asked for, the Hub client's bookkeeping stays out.
    h.run(&[
        "push",
        "--include-hidden",
        local_dir.to_str().unwrap(),
        &reg.reference("hub/local:hidden"),
    ])
    .ok();
    let hidden = manifest(&reg, "hub/local", "hidden");
    let titles = titles(&hidden);
    assert!(titles.contains(&".gitattributes"), "{titles:?}");
    assert!(
        !titles.iter().any(|t| t.starts_with(".cache/")),
        "{titles:?}"
    );
    // Both are the artifact `copy hf://` makes of that commit: the same config and layers.
    run(hoist_for(&h, &hub).args([
        "copy",
        &format!("hf://{REPO}"),
        &reg.reference("hub/copied:v1"),
    ]))
    .ok();
    let copied = manifest(&reg, "hub/copied", "v1");
    let cached = manifest(&reg, "hub/cache", "v1");
    assert_eq!(cached["layers"], copied["layers"]);
    assert_eq!(cached["config"], copied["config"]);
    let local = manifest(&reg, "hub/local", "v1");
    assert_eq!(
        local["layers"], copied["layers"],
        ".cache/huggingface left out"
    );
    // A link out of the Hub cache is still refused.
    let outside = dl.path().join("secret");
    std::fs::write(&outside, b"not the model's").unwrap();
    std::os::unix::fs::symlink(&outside, snapshot.join("leak.txt")).unwrap();
    h.run(&[
        "push",
        snapshot.to_str().unwrap(),
        &reg.reference("hub/cache:v2"),
    ])
    .fails_with(2, "outside the model folder");
}

/// A tree listed over more than 1,000 pages is refused (exit 8) before any upload: a Hub
/// that never stops paginating cannot keep a copy listing forever.
#[test]
fn a_file_list_without_end_is_refused() {
    let files = (0..1_001)
        .map(|i| HubFile::new(&format!("f{i:04}.txt"), b"x".to_vec(), false))
        .collect();
    let spec = HubRepoSpec::at_main("pages", files);
    let hub = stand_in(vec![("org/pages", spec)]);
    hub.page_size(1);
    let reg = Registry::start();
    let h = Hoist::new();
    run(hoist_for(&h, &hub).args(["copy", "hf://org/pages", &reg.reference("org/pages:v1")]))
        .fails_with(8, "more than 1000 pages");
    assert_eq!(reg.upload_count(), 0);
    // 1,000 pages are read to the end.
    let files = (0..1_000)
        .map(|i| HubFile::new(&format!("f{i:04}.txt"), format!("{i}").into_bytes(), false))
        .collect();
    let spec = HubRepoSpec::at_main("pages-ok", files);
    let hub = stand_in(vec![("org/pages", spec)]);
    hub.page_size(1);
    let copied = run(hoist_for(&h, &hub).args([
        "copy",
        "hf://org/pages",
        &reg.reference("org/pages:v2"),
        "--json",
    ]))
    .ok();
    let report: serde_json::Value = serde_json::from_str(&copied.stdout).unwrap();
    assert_eq!(report["files"], 1000);
}

/// A registry that checks nothing and counts the bytes each blob upload brought: a copy
/// holds the last bytes of a file back until they matched the Hub's SHA-256, so even a
/// registry that does not check digests never gets the whole of other bytes.
#[test]
fn a_registry_that_checks_nothing_never_gets_a_whole_tampered_file() {
    use std::io::{BufRead, BufReader, Read, Write};
    let size = 300_000;
    let spec = HubRepoSpec::at_main(
        "tamper",
        vec![HubFile::new("weights.bin", noise(size, 11), true)],
    );
    let hub = stand_in(vec![("org/tamper", spec)]);
    // The Hub sends the last 4 KiB of the tampered file only once the registry has the
    // upload's request in hand: the upload is surely under way when the copy finds the bytes
    // are not the Hub's (an event, not a race between the two).
    let put_started = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let gate = put_started.clone();
    let hold: common::hub::HoldFn = Arc::new(move || {
        let (started, cv) = &*gate;
        let guard = started.lock().unwrap();
        let _ = cv
            .wait_timeout_while(guard, std::time::Duration::from_secs(30), |s| !*s)
            .unwrap();
    });
    hub.faults(|f| {
        f.corrupt = Some("weights.bin".into());
        f.hold_last = Some((4096, hold));
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let received = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let got = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let got = got.clone();
            let put_started = put_started.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut length = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut out = stream;
                let answer = if line.starts_with("POST") {
                    "202 Accepted\r\nLocation: /v2/org/tamper/blobs/uploads/1"
                } else if line.starts_with("PUT") && line.contains("/blobs/uploads/") {
                    let (started, cv) = &*put_started;
                    *started.lock().unwrap() = true;
                    cv.notify_all();
                    let mut body = Vec::new();
                    let _ = (&mut reader).take(length as u64).read_to_end(&mut body);
                    got.lock().unwrap().push(body.len());
                    "201 Created"
                } else if line.starts_with("GET /v2/ ") {
                    "200 OK"
                } else {
                    "404 Not Found"
                };
                let _ = write!(
                    out,
                    "HTTP/1.1 {answer}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            });
        }
    });
    let h = Hoist::new();
    run(hoist_for(&h, &hub).args(["copy", "hf://org/tamper", &format!("{addr}/org/tamper:v1")]))
        .fails_with(6, "weights.bin");
    // The registry's thread may still be reading the cut upload when hoist has exited.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while received.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let got = received.lock().unwrap().clone();
    assert!(!got.is_empty(), "the weights' upload was started");
    assert!(
        got.iter().all(|n| *n < size),
        "an upload got every byte: {got:?}"
    );
}

/// By hand (`cargo test --release --test hub -- --ignored --nocapture`): a 1 GiB model from
/// the stand-in into distribution, `hoist copy hf://` against the two-step flow it replaces
/// (`huggingface_hub.snapshot_download` into a folder, then `hoist push`), medians of 3 with
/// the page cache dropped before each run when this runs as root.
#[test]
#[ignore = "a benchmark, run by hand"]
fn bench_copy_against_download_then_push() {
    let mut files = files_of(&real_model());
    files.push(HubFile::new("extra.safetensors", noise(1 << 30, 21), true));
    let spec = HubRepoSpec::at_main("bench", files);
    let hub = stand_in(vec![("org/bench", spec)]);
    let drop_caches = || {
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (mut copy, mut two_step) = (Vec::new(), Vec::new());
    for i in 0..3 {
        let reg = Registry::start();
        let h = Hoist::new();
        drop_caches();
        let t = std::time::Instant::now();
        run(hoist_for(&h, &hub).args([
            "copy",
            "hf://org/bench",
            &reg.reference(&format!("b/copy:{i}")),
        ]))
        .ok();
        copy.push(t.elapsed().as_secs_f64());

        let reg = Registry::start();
        let dl = tempfile::tempdir().unwrap();
        drop_caches();
        let t = std::time::Instant::now();
        python(&format!(
            "import os\nos.environ['HF_ENDPOINT'] = '{}'\nfrom huggingface_hub import snapshot_download\nsnapshot_download('org/bench', local_dir='{}/m')",
            hub.endpoint,
            dl.path().display()
        ));
        h.run(&[
            "push",
            dl.path().join("m").to_str().unwrap(),
            &reg.reference(&format!("b/push:{i}")),
        ])
        .ok();
        two_step.push(t.elapsed().as_secs_f64());
    }
    eprintln!("1.09 GiB model, stand-in Hub → distribution on loopback, median of 3:");
    eprintln!(
        "  hoist copy hf://                      {:6.2} s  (no disk copy)",
        median(copy)
    );
    eprintln!(
        "  snapshot_download + hoist push        {:6.2} s  (model written and read once more)",
        median(two_step)
    );
}
